"""Deployment throughput on CPU: HF ModernBERT fp32 PyTorch against ModernAlbert's deployment path, on one stream of
real text, interleaved round by round in one process, with the accuracy of the fast path checked on real text.

Rows (every row turns the same stream of token sequences into (n, d) mean-pooled sentence embeddings, in input order):

* ``HF, input order``: ``transformers.ModernBertModel`` fp32 (SDPA), randomly initialised at the geometry below,
  batches of ``--batch-size`` consecutive sequences (what a user of HF does) — baseline 1;
* ``HF, our batching``: the same model given our batching (the stream sorted by length and cut by a budget of
  ``--max-tokens`` padded tokens per batch, :func:`~modernalbert.model.batching.length_bucketed_batches`; outputs put
  back in input order) — baseline 2: the ratio against it is what the graph and the int8 recipe gain alone;
* ``ours PyTorch``: the ModernAlbert encoder, eager fp32, our batching;
* ``ours ONNX fp32``: its deployment graph (:mod:`modernalbert.export.ort_graph`, ONNX Runtime), our batching;
* ``ours ONNX int8``: that graph with per-channel dynamic int8, our batching.

Padding of every batch is done before the timed region, for every row alike; a timed call runs all batches and
writes every row back at its input position. Ratios are per-round paired throughput ratios (median, bootstrap 95 %
interval, smallest and largest) from ``benchmarks/common.py``. ONNX Runtime sessions use ``--threads`` intra-op
threads without spinning, PyTorch ``torch.set_num_threads(--threads)``.

Geometry ``full``: d 768, f 1152, 12 heads, 4 layers, vocabulary 50,368, 512 positions, no embedding factorisation,
one layer per block (G = 1), plain GeGLU (a merged and folded model's form); ``tiny``: d 64, f 96, 4 heads, 2 layers
(the smoke test's). Attention pattern (``--pattern``), the same on both sides: ``global`` (every layer global, HF
``global_attn_every_n_layers=1``) or ``modernbert`` (ModernBERT's: global every third layer, the others a 128-token
sliding window, RoPE bases 160,000 / 10,000). ``--model`` names a fine-tuned ModernAlbert sequence classifier of the
benchmark's geometry (its encoder is timed, its pattern replaced by ``--pattern``); without it a randomly initialised
classifier is used, and the prediction agreement it reports is that of a random decision function.

Workloads: ``variable``: ``--n`` sequences with lengths ~ N(256, 64) rounded and clamped to [16, 512] (ModernBERT's
variable-length protocol); ``fixed``: ``--n-fixed`` sequences of ``--fixed-length`` tokens. The text: RT test-split
review sentences (shuffled, seed 0), tokenised with the model's tokenizer and concatenated to each length, with the
tokenizer's ``[CLS] ... [SEP]`` around.

Accuracy (untimed): sentence-embedding cosine of each of our rows against our fp32 PyTorch on the benchmark stream;
and on the RT test sentences (``--rt-sentences``, default all), the classifier's deployment graphs (fp32, int8)
against the classifier in fp32 PyTorch: share of identical predicted labels, accuracy, and sentence-embedding cosine.
The acceptance lines: int8 cosine >= 0.99 and >= 99 % identical predictions.

    python benchmarks/deploy.py --model CLASSIFIER --json deploy.json   # 64 + 16 sequences, 4 rounds: ~11 min
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # waiting OpenMP threads sleep: the machine is shared

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import paired_ratios, time_interleaved
from encoder import variable_lengths
from modernalbert import ModernAlbertConfig
from modernalbert.export.ort_graph import quantize_deployment_graph, write_deployment_graph
from modernalbert.inference.runners import onnx_runner, torch_runner
from modernalbert.model.batching import length_bucketed_batches, pad_batch
from modernalbert.model.modeling import ModernAlbertForSequenceClassification

GEOMETRIES = {
    "full": dict(hidden_size=768, intermediate_size=1152, num_attention_heads=12, num_hidden_layers=4,
                 vocab_size=50368, max_position_embeddings=512),
    "tiny": dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_hidden_layers=2, vocab_size=50368,
                 max_position_embeddings=512),
}
PATTERNS = {"global": 1, "modernbert": 3}  # HF's global_attn_every_n_layers
LOCAL_ATTENTION = 128
BASELINES = ("HF, input order", "HF, our batching")


def pattern_types(pattern: str, layers: int) -> list[str]:
    every = PATTERNS[pattern]
    return ["full_attention" if i % every == 0 else "sliding_attention" for i in range(layers)]


def load_models(args: argparse.Namespace, tokenizer: Any) -> tuple[Any, Any]:
    """(our fine-tuned or random classifier with ``--pattern``, HF ModernBERT at its geometry and pattern)."""
    from transformers import ModernBertConfig, ModernBertModel

    torch.manual_seed(0)
    if args.model:
        clf = ModernAlbertForSequenceClassification.from_pretrained(args.model, attn_implementation="sdpa")
    else:
        cfg = ModernAlbertConfig(**GEOMETRIES[args.geometry], embedding_size=None, group_depth=1, mol_groups=[],
                                 num_labels=2, pad_token_id=tokenizer.pad_token_id, attn_implementation="sdpa")
        clf = ModernAlbertForSequenceClassification(cfg)
    clf = clf.float().eval()
    cfg = clf.config
    types = pattern_types(args.pattern, cfg.num_hidden_layers)
    clf.model.set_attention_pattern(types, LOCAL_ATTENTION, None)
    hf = ModernBertModel(ModernBertConfig(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_attention_heads=cfg.num_attention_heads, num_hidden_layers=cfg.num_hidden_layers,
        vocab_size=cfg.vocab_size, max_position_embeddings=cfg.max_position_embeddings,
        global_attn_every_n_layers=PATTERNS[args.pattern], local_attention=LOCAL_ATTENTION,
        pad_token_id=tokenizer.pad_token_id, attn_implementation="sdpa")).eval()
    return clf, hf


def rt_stream(tokenizer: Any, lengths: list[int], sentences: list[str]) -> list[list[int]]:
    """Token sequences of the given lengths: consecutive RT sentences (shuffled, seed 0), tokenised without special
    tokens, concatenated, cut to ``length - 2`` and wrapped in the tokenizer's [CLS] ... [SEP]."""
    sentences = list(sentences)
    random.Random(0).shuffle(sentences)
    pieces = tokenizer(sentences, add_special_tokens=False)["input_ids"]
    out, j = [], 0
    for n in lengths:
        body: list[int] = []
        while len(body) < n - 2:
            body += pieces[j % len(pieces)]
            j += 1
        out.append([tokenizer.cls_token_id, *body[: n - 2], tokenizer.sep_token_id])
    return out


def batch_plans(lengths: list[int], args: argparse.Namespace) -> dict[str, list[list[int]]]:
    return {"input": [list(range(i, min(i + args.batch_size, len(lengths))))
                      for i in range(0, len(lengths), args.batch_size)],
            "bucket": length_bucketed_batches(lengths, max_tokens=args.max_tokens)}


def stream_fn(fn: Any, seqs: list[list[int]], plan: list[list[int]], pad_id: int, d: int):
    """A call that runs ``fn(ids, mask) -> (B, d)`` over pre-padded batches and writes rows back in input order."""
    batches = [(idx, *(t.numpy() for t in pad_batch([seqs[i] for i in idx], pad_id))) for idx in plan]

    def run() -> np.ndarray:
        out = np.empty((len(seqs), d), dtype=np.float32)
        for idx, ids, mask in batches:
            out[idx] = fn(ids, mask)
        return out

    return run


def hf_embed(hf: Any):
    def fn(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            m = torch.from_numpy(mask)
            h = hf(input_ids=torch.from_numpy(ids), attention_mask=m).last_hidden_state  # (B, L, d)
            w = m.to(h.dtype)[..., None]
            return ((h * w).sum(1) / w.sum(1).clamp(min=1)).numpy()  # (B, d) mean over real tokens

    return fn


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def run_workload(name: str, seqs: list[list[int]], rows: dict[str, tuple[Any, str]], args: argparse.Namespace,
                 pad_id: int, d: int) -> dict[str, Any]:
    lengths = [len(s) for s in seqs]
    plans = batch_plans(lengths, args)
    fns = {row: stream_fn(fn, seqs, plans[plan], pad_id, d) for row, (fn, plan) in rows.items()}
    real = sum(lengths)
    padded = {p: sum(len(b) * max(lengths[i] for i in b) for b in plan) for p, plan in plans.items()}
    print(f"\n{name}: {len(seqs)} sequences, {real} real tokens, lengths {min(lengths)}-{max(lengths)}; "
          f"real share of padded tokens: input order {real / padded['input']:.1%}, "
          f"our batching {real / padded['bucket']:.1%}", flush=True)
    reference = fns["ours PyTorch"]()
    accuracy = {}
    for row in rows:
        if row.startswith("ours") and row != "ours PyTorch":
            c = cosines(reference, fns[row]())
            accuracy[row] = {"cosine_min": float(c.min()), "cosine_mean": float(c.mean())}
    start = time.perf_counter()
    times, _ = time_interleaved(fns, args.warmup, args.rounds)
    result = {"sequences": len(seqs), "real_tokens": real, "padded_tokens": padded, "seconds": {}, "rows": {}}
    for row, ts in times.items():
        result["rows"][row] = {"tokens_per_s": real / float(np.median(ts)), **accuracy.get(row, {}),
                               **{f"vs {b}": paired_ratios(times[b], ts, speedup=True) for b in BASELINES}}
    result["seconds"] = time.perf_counter() - start
    return result


def rt_accuracy(clf: Any, graphs: dict[str, Path], tokenizer: Any, n: int | None) -> dict[str, Any]:
    """The classifier's deployment graphs against it in fp32 PyTorch on RT test sentences (untimed)."""
    from modernalbert.data.rotten_tomatoes import sentiment_splits
    from modernalbert.inference.streaming import bucketed_in_order

    test = sentiment_splits(seed=0)["test"][:n]
    seqs = tokenizer([r["sentence"] for r in test], truncation=True, max_length=512)["input_ids"]
    labels = np.array([r["label"] for r in test])
    pad = tokenizer.pad_token_id

    def outputs(runner: Any) -> np.ndarray:
        def run(batch: list[list[int]]) -> np.ndarray:
            return runner(*(t.numpy() for t in pad_batch(batch, pad)))

        return np.stack([r for _, r in bucketed_in_order(seqs, len, run, max_tokens=4096)])

    ref_logits = outputs(torch_runner(clf, "logits"))
    ref_emb = outputs(torch_runner(clf, "sentence_embedding"))
    ref_pred = ref_logits.argmax(-1)
    report = {"sentences": len(seqs), "ours PyTorch": {"accuracy": float(np.mean(ref_pred == labels))}}
    for name, path in graphs.items():
        pred = outputs(onnx_runner(path, clf.config, "logits", threads=None)).argmax(-1)
        cos = cosines(ref_emb, outputs(onnx_runner(path, clf.config, "sentence_embedding", threads=None)))
        report[name] = {"agreement": float(np.mean(pred == ref_pred)), "accuracy": float(np.mean(pred == labels)),
                        "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}
    return report


def print_table(result: dict[str, Any]) -> None:
    print(f"{'row':22s} {'tok/s':>8s}  " + "  ".join(f"{'vs ' + b:>32s}" for b in BASELINES) + "  cosine min")
    for row, r in result["rows"].items():
        cells = [f"{r[f'vs {b}']['ratio']:5.2f}x [{r[f'vs {b}']['ci'][0]:.2f}-{r[f'vs {b}']['ci'][1]:.2f}] "
                 f"({r[f'vs {b}']['range'][0]:.2f}-{r[f'vs {b}']['range'][1]:.2f})" for b in BASELINES]
        cos = f"{r['cosine_min']:.5f}" if "cosine_min" in r else ""
        print(f"{row:22s} {r['tokens_per_s']:8.0f}  " + "  ".join(f"{c:>32s}" for c in cells) + f"  {cos}",
              flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="fine-tuned ModernAlbert sequence classifier folder (default: random, --geometry)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model's, else the packaged all-MiniLM-L6-v2)")
    p.add_argument("--geometry", choices=list(GEOMETRIES), default="full", help="without --model (default full)")
    p.add_argument("--pattern", choices=list(PATTERNS), default="global", help="attention pattern of both sides")
    p.add_argument("--workloads", default="variable,fixed", help="comma-separated: variable, fixed")
    p.add_argument("--n", type=int, default=64, help="sequences of the variable workload (default 64)")
    p.add_argument("--n-fixed", type=int, default=16, help="sequences of the fixed workload (default 16)")
    p.add_argument("--fixed-length", type=int, default=512, help="length of the fixed workload (default 512)")
    p.add_argument("--batch-size", type=int, default=32, help="rows per batch in input order (default 32)")
    p.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per bucketed batch (default 4096)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rt-sentences", type=int, default=None, help="RT test sentences for accuracy (default all)")
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from modernalbert.data.rotten_tomatoes import sentiment_splits
    from modernalbert.data.sources import fetch

    tok_path = args.tokenizer or (args.model if args.model and (Path(args.model) / "tokenizer_config.json").exists()
                                  else fetch("all-MiniLM-L6-v2"))
    tokenizer = AutoTokenizer.from_pretrained(tok_path)
    clf, hf = load_models(args, tokenizer)
    d, pad = clf.config.hidden_size, tokenizer.pad_token_id
    report: dict[str, Any] = {"command": " ".join(sys.argv), "date": datetime.datetime.now(datetime.UTC).isoformat(),
                              "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {args.threads} threads",
                              "args": vars(args), "layer_types": clf.config.layer_types, "workloads": {}}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        enc_fp32 = write_deployment_graph(clf.model, Path(tmp) / "encoder.onnx")
        enc_int8 = quantize_deployment_graph(enc_fp32, Path(tmp) / "encoder.int8.onnx")
        clf_fp32 = write_deployment_graph(clf, Path(tmp) / "classifier.onnx")
        clf_int8 = quantize_deployment_graph(clf_fp32, Path(tmp) / "classifier.int8.onnx")
        print(f"deployment graphs written and quantised in {time.perf_counter() - t0:.1f}s", flush=True)
        ours = torch_runner(clf.model, "sentence_embedding")
        rows = {"HF, input order": (hf_embed(hf), "input"), "HF, our batching": (hf_embed(hf), "bucket"),
                "ours PyTorch": (ours, "bucket"),
                "ours ONNX fp32": (onnx_runner(enc_fp32, clf.config, "sentence_embedding", args.threads), "bucket"),
                "ours ONNX int8": (onnx_runner(enc_int8, clf.config, "sentence_embedding", args.threads), "bucket")}
        sentences = [r["sentence"] for r in sentiment_splits(seed=0)["test"]]
        for workload in args.workloads.split(","):
            if workload == "variable":
                lengths = variable_lengths(args.n, 256, 64, 16, 512, seed=1)
            elif workload == "fixed":
                lengths = [args.fixed_length] * args.n_fixed
            else:
                raise SystemExit(f"unknown workload {workload!r}: use variable, fixed")
            result = run_workload(workload, rt_stream(tokenizer, lengths, sentences), rows, args, pad, d)
            print_table(result)
            report["workloads"][workload] = result
        report["rt"] = rt_accuracy(clf, {"ONNX fp32": clf_fp32, "ONNX int8": clf_int8}, tokenizer,
                                   args.rt_sentences)
    rt = report["rt"]
    print(f"\nRT test sentences ({rt['sentences']}): PyTorch fp32 accuracy {rt['ours PyTorch']['accuracy']:.4f}")
    for name in ("ONNX fp32", "ONNX int8"):
        r = rt[name]
        print(f"  {name}: same prediction {r['agreement']:.2%}, accuracy {r['accuracy']:.4f}, sentence-embedding "
              f"cosine min {r['cosine_min']:.5f} mean {r['cosine_mean']:.6f}")
    int8 = rt["ONNX int8"]
    report["acceptance"] = {"int8 cosine >= 0.99": int8["cosine_min"] >= 0.99,
                            "int8 same predictions >= 99%": int8["agreement"] >= 0.99}
    print("acceptance: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in report["acceptance"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
