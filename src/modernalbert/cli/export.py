"""``modernalbert export onnx IN OUT``: export a saved model to ONNX (and int8), checked with ONNX Runtime.

OUT becomes a self-describing folder: ``model.onnx`` (fp32, dynamic batch/sequence axes), ``model.int8.onnx`` with
``--int8``, with ``--deploy`` the deployment graph ``model.deploy.onnx`` (:mod:`modernalbert.export.ort_graph`: ONNX
Runtime's fused CPU kernels, for a merged encoder, sequence or token classifier; ``model.deploy.int8.onnx`` with
``--int8``), and the model's ``config.json`` plus its tokenizer files when IN has a tokenizer. The graph takes the
inputs the tokenizer returns (``token_type_ids`` too for BERT-family tokenizers: accepted and ignored), so
``session.run(None, dict(tokenizer(texts, return_tensors="np")))`` works as it is. Every graph is checked with
``onnx.checker`` and ONNX Runtime before it is moved into place, and each stage prints its progress and duration on
standard error (an export takes tens of seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from ..export.onnx import DEFAULT_OPSET, INPUT_DTYPES, POOLINGS
from ..utils.timing import Stages


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``onnx`` format and its options to the ``export`` subcommand's parser."""
    sub = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    p = sub.add_parser("onnx", help="ONNX graph with dynamic batch and sequence axes (plus int8 with --int8)",
                       description="Export IN to OUT/model.onnx and check it against PyTorch with ONNX Runtime.")
    p.add_argument("input", metavar="IN", help="saved ModernAlbert folder (any head; merged or with MoL groups)")
    p.add_argument("output", metavar="OUT", help="folder to write model.onnx (and model.int8.onnx) to")
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (dynamic int8 quantisation)")
    p.add_argument("--pooling", choices=POOLINGS, default=None,
                   help="base model only: add a sentence_embedding output (mean over real tokens, or cls)")
    p.add_argument("--opset", type=int, default=None,
                   help=f"ONNX opset, {DEFAULT_OPSET} or higher (default {DEFAULT_OPSET})")
    p.add_argument("--input-dtype", choices=list(INPUT_DTYPES), default="int64",
                   help="element type of the graph's inputs (default int64, what tokenizers return)")
    p.add_argument("--token-type-ids", choices=("auto", "yes", "no"), default="auto",
                   help="take a token_type_ids input (accepted and ignored); auto: when IN's tokenizer returns one")
    p.add_argument("--deploy", action="store_true",
                   help="also write model.deploy.onnx, the fast CPU graph (ONNX Runtime's fused attention, RoPE, "
                        "LayerNorm, GELU; a merged model; with --int8 also model.deploy.int8.onnx, per-channel)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the ONNX Runtime vs PyTorch check on synthetic padded batches")


def _wants_token_type_ids(choice: str, tokenizer: object) -> bool:
    if choice != "auto":
        return choice == "yes"
    return tokenizer is not None and "token_type_ids" in (getattr(tokenizer, "model_input_names", None) or ())


def run(args: argparse.Namespace) -> int:
    """Export, verify and (with ``--int8``) quantise; returns 0, or 1 when the export or its check fails.

    Raises:
        FileNotFoundError: IN does not exist.
        ValueError: OUT is a file, IN is not a ModernAlbert model (or is incomplete or damaged), or an option does
            not fit the model.
    """
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"OUT must be a folder, but {out} is a file.")
    verify = not args.no_verify
    per_graph = 1 + verify + args.int8 * (1 + verify)  # write, verify, quantise, compare
    stages = Stages("export", 1 + per_graph * (1 + args.deploy))
    with stages.stage("load the model"):
        import torch

        from ..export.onnx import (
            OnnxExportError,
            OnnxMismatchError,
            export_onnx,
            quantize_int8,
            synthetic_batches,
        )
        from ..model.loading import load_pretrained, load_tokenizer
        from ..model.modeling import ModernAlbertModel

        # fp32 and SDPA whatever the checkpoint was saved with: ONNX Runtime's CPU kernels are exact in fp32, and
        # the FlashAttention kernel cannot be traced.
        model = load_pretrained(args.input, dtype=torch.float32, attn_implementation="sdpa").eval()
        tokenizer = load_tokenizer(args.input, optional=True)
    if args.pooling and not isinstance(model, ModernAlbertModel):
        # Sentence embeddings come from the encoder: a head checkpoint (e.g. MaskedLM) exports its encoder.
        print(f"--pooling {args.pooling}: exporting the encoder of {type(model).__name__} with a sentence embedding")
        model = model.base_model
    if args.deploy:  # refuse before anything is written (e.g. routed experts: merge first)
        from ..export.ort_graph import check_deployable

        check_deployable(model, args.pooling or "mean", args.input_dtype)
    token_type_ids = _wants_token_type_ids(args.token_type_ids, tokenizer)
    report: dict[str, dict] = {}
    batches = synthetic_batches(model)
    try:
        fp32 = out / "model.onnx"
        report.update(_graph_and_int8(
            model, stages, batches, verify,
            ("export to ONNX (torch.export, ONNX translation, weight folding)",
             lambda: export_onnx(model, fp32, opset=args.opset, pooling=args.pooling, token_type_ids=token_type_ids,
                                 input_dtype=args.input_dtype)),
            ("quantise to int8 and check the graph", lambda: quantize_int8(fp32, out / "model.int8.onnx"))
            if args.int8 else None))
        report[fp32.name]["inputs"] = _inputs(fp32)
        if args.deploy:
            report.update(_deploy(model, out, args, stages, batches, verify, token_type_ids))
    except (OnnxExportError, OnnxMismatchError) as err:
        print(f"modernalbert export: error: {err}", file=sys.stderr)
        return 1
    model.config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    report["seconds"] = stages.seconds
    print(json.dumps(report))
    shapes = [tuple(b["input_ids"].shape) for b in batches]
    if verify:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in report[fp32.name]["max_abs_diff"].items())
        print(f"model.onnx matches PyTorch on batches {shapes}: max |diff| {diffs}")
    if args.int8 and verify:
        cos = ", ".join(f"{k} {v['min_cosine']:.5f}" for k, v in report["model.int8.onnx"].items())
        print(f"model.int8.onnx vs model.onnx: min cosine {cos}")
    print(f"ONNX export written to {out} (inputs: {', '.join(report[fp32.name]['inputs'])})")
    return 0


def _deploy(model, out: Path, args: argparse.Namespace, stages: Stages, batches: list, verify: bool,
            token_type_ids: bool) -> dict:
    """Write (and check) model.deploy.onnx and, with --int8, model.deploy.int8.onnx; their report entries."""
    from ..export.ort_graph import quantize_deployment_graph, write_deployment_graph

    deploy = out / "model.deploy.onnx"
    return _graph_and_int8(
        model, stages, batches, verify,
        ("write the deployment graph (ONNX Runtime contrib operators)",
         lambda: write_deployment_graph(model, deploy, pooling=args.pooling or "mean", input_dtype=args.input_dtype,
                                        token_type_ids=token_type_ids)),
        ("quantise the deployment graph to int8 (per channel) and check it",
         lambda: quantize_deployment_graph(deploy, out / "model.deploy.int8.onnx")) if args.int8 else None)


def _graph_and_int8(model, stages: Stages, batches: list, verify: bool, write: tuple[str, Callable[[], Path]],
                    quantize: tuple[str, Callable[[], Path]] | None) -> dict:
    """One graph and its optional int8 form, each a stage: write it (and verify it against PyTorch), quantise it
    (and compare the int8 graph with it). Returns their report entries, keyed by file name."""
    from ..export.onnx import compare_onnx, verify_onnx

    with stages.stage(write[0]):
        graph = write[1]()
    report: dict[str, dict] = {graph.name: {"verified": verify}}
    if verify:
        with stages.stage(f"verify {graph.name} against PyTorch (ONNX Runtime)"):
            report[graph.name]["max_abs_diff"] = verify_onnx(model, graph, batches)
    if quantize is not None:
        with stages.stage(quantize[0]):
            int8 = quantize[1]()
        report[int8.name] = {}
        if verify:
            with stages.stage(f"compare {int8.name} with {graph.name}"):
                report[int8.name] = compare_onnx(graph, int8, batches)
    return report


def _inputs(path: Path) -> list[str]:
    """``name (type)`` of each input of a written graph."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [f"{i.name} ({onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)})" for i in graph.input]

