"""``modernalbert {finetune,evaluate} {beir,rt-review-plot} MODEL ...``: dense retrieval suites.

Examples::

    modernalbert evaluate beir MODEL --data scifact/ --output-dir runs/scifact        (a local BEIR folder)
    modernalbert evaluate beir MODEL --data BeIR/scifact                               (online or cached)
    modernalbert finetune beir MODEL --data msmarco/ --eval-split dev --hard-negatives 1 --output-dir runs/msmarco
    modernalbert evaluate rt-review-plot MODEL
    modernalbert finetune rt-review-plot MODEL --output-dir runs/rt-review-plot

``beir`` reads ``--data`` (a BEIR folder or a hub name such as ``BeIR/scifact``). ``rt-review-plot`` is the real
"RT review→plot" stand-in (Rotten Tomatoes reviews as queries, plot synopses as the corpus; not BEIR): without
``--data`` its BEIR-layout folder is built once in the cache (``$MODERNALBERT_CACHE/rt-review-plot/seed-N``).
Both print a markdown table and write JSON into ``--output-dir``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ...evaluation.config import PRECISIONS, ContrastiveConfig, FinetuneConfig, RetrievalConfig
from ..arguments import add_config_arguments, config_from_args

TABLE_HEADER = ("model", "data", "split", "queries", "docs", "nDCG@10", "Recall@100", "MAP", "seconds")
# Contrastive fine-tuning defaults (our choice): sentence-transformers' usual learning rate and batch size, one epoch.
FINETUNE_DEFAULTS = {"learning_rate": 2e-5, "batch_size": 32, "epochs": 1.0}


def _add_common(parser: argparse.ArgumentParser, suite: str, *, training: bool) -> None:
    parser.add_argument("model", metavar="MODEL", help="model folder (ModernAlbert, any HF encoder, or a "
                        "sentence-transformers folder) or hub name")
    if suite == "beir":
        parser.add_argument("--data", required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/*.tsv) "
                            "or hub name such as BeIR/scifact")
        parser.add_argument("--qrels-name", default=None, help="hub dataset with the qrels (default DATA-qrels)")
    else:
        parser.add_argument("--data", default=None, help="an RT review→plot folder (default: built in the cache)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the RT movie split, the query sample and "
                        "training (default 0)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 autocast on a capable GPU, fp32 otherwise; bf16 / fp16: autocast "
                             "(fp16 fine-tuning needs a GPU)")
    if training:
        parser.add_argument("--output-dir", type=Path, required=True,
                            help="folder for finetune.json and the model (OUTPUT_DIR/model)")
    else:
        parser.add_argument("--output-dir", type=Path, default=Path("runs") / suite,
                            help=f"folder for evaluate-SPLIT.json (default runs/{suite})")


def add_evaluate_arguments(parser: argparse.ArgumentParser, suite: str) -> None:
    """Arguments of ``modernalbert evaluate {beir,rt-review-plot}``: the data, then one flag per
    :class:`~modernalbert.evaluation.config.RetrievalConfig` field."""
    _add_common(parser, suite, training=False)
    parser.add_argument("--split", default="test", help="qrels split (default test)")
    add_config_arguments(parser, RetrievalConfig, key="retrieval", skip=("seed", "precision"))


def add_finetune_arguments(parser: argparse.ArgumentParser, suite: str) -> None:
    """Arguments of ``modernalbert finetune {beir,rt-review-plot}`` (contrastive fine-tuning, then evaluation): one
    flag per field of :class:`~modernalbert.evaluation.config.FinetuneConfig` (``--train-max-length`` truncates
    training texts; ``--eval-batch-size`` is the retrieval batch), ``ContrastiveConfig`` and ``RetrievalConfig``."""
    _add_common(parser, suite, training=True)
    parser.add_argument("--split", default="train", help="training qrels split (default train)")
    parser.add_argument("--eval-split", default="test", help="evaluation split after training ('none' to skip)")
    add_config_arguments(parser, FinetuneConfig, key="ft", skip=("seed", "precision"),
                         names={"max_length": "train-max-length"}, defaults=FINETUNE_DEFAULTS)
    add_config_arguments(parser, ContrastiveConfig, key="contrastive")
    add_config_arguments(parser, RetrievalConfig, key="retrieval", skip=("seed", "precision", "batch_size",
                                                                        "per_query"),
                         names={"max_queries": "eval-max-queries"})


def _data(args: argparse.Namespace) -> str:
    if args.data is not None:
        return str(args.data)
    if args.suite != "rt-review-plot":
        raise ValueError("--data is required: a BEIR folder or hub name.")
    from ...data.rotten_tomatoes import write_review_plot_beir
    from ...data.sources import cache_dir

    folder = cache_dir() / "rt-review-plot" / f"seed-{args.seed}"
    if not (folder / "corpus.jsonl").is_file():  # written atomically: a present corpus means a complete folder
        print(f"Building the RT review→plot folder in {folder}")
        write_review_plot_beir(folder, seed=args.seed)
    return str(folder)


def _retrieval(args: argparse.Namespace, **fixed: Any) -> RetrievalConfig:
    cfg = config_from_args(RetrievalConfig, args, key="retrieval", seed=args.seed, precision=args.precision, **fixed)
    if cfg.use_faiss:
        from ...evaluation.beir import import_faiss

        try:
            import_faiss()
        except ImportError as err:  # the CLI reports bad set-ups as one line
            raise ValueError(str(err)) from err
    return cfg


def _row(result: dict[str, Any], model: str) -> list[Any]:
    m = result["metrics"]
    data = Path(result["data"])  # the last two parts name a dataset folder (e.g. rt-review-plot/seed-0)
    return [model, "/".join(data.parts[-2:]) or result["data"], result["split"], result["num_queries"],
            result["num_docs"], m.get("ndcg_cut_10", float("nan")), m.get("recall_100", float("nan")), m["map"],
            f"{result['seconds']['total']:.1f}"]


def _semantics_note(result: dict[str, Any]) -> str:
    """One line under a results table: how the means treat judged queries without hits, and identical ids."""
    m = result["metrics"]
    how = ("BEIR's semantics: judged queries without hits are left out of the means" if
           result["metric_semantics"] == "beir" else "trec_eval -c semantics: judged queries without hits count as 0")
    return (f"Metrics over {m['num_queries']} of {m['num_judged_queries']} judged queries ({how}; "
            f"{m['judged_queries_without_hits']} without hits); ignore_identical_ids="
            f"{'on' if result['ignore_identical_ids'] else 'off'}.")


def _load(args: argparse.Namespace, split: str) -> Any:
    from ...evaluation.beir import load_beir

    return load_beir(_data(args), split, qrels_name=getattr(args, "qrels_name", None))


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate MODEL; print a markdown table; write ``OUTPUT_DIR/evaluate-<split>.json``."""
    from ...evaluation.beir import evaluate_retrieval
    from ...evaluation.common import markdown_table
    from ...utils.io import write_json

    cfg = _retrieval(args)
    result = {"suite": args.suite, **evaluate_retrieval(args.model, _load(args, args.split), cfg, split=args.split)}
    path = write_json(args.output_dir / f"evaluate-{args.split}.json", result)
    print(markdown_table(TABLE_HEADER, [_row(result, args.model)]))
    print(_semantics_note(result))
    print(f"Wrote {path}")
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    """Contrastive fine-tuning of MODEL, saved to ``OUTPUT_DIR/model`` (a sentence-transformers folder), then
    evaluation; print a markdown table; write ``OUTPUT_DIR/finetune.json``."""
    from ...evaluation.beir import finetune_retrieval
    from ...evaluation.common import markdown_table
    from ...utils.io import write_json

    cfg = config_from_args(FinetuneConfig, args, key="ft", seed=args.seed, precision=args.precision)
    retrieval = _retrieval(args, batch_size=cfg.eval_batch_size)
    contrastive = config_from_args(ContrastiveConfig, args, key="contrastive")
    eval_split = None if str(args.eval_split).lower() == "none" else args.eval_split
    train = _load(args, args.split)
    evaluation = _load(args, eval_split) if eval_split else None
    result = finetune_retrieval(args.model, train, cfg, retrieval, contrastive, split=args.split,
                                output_dir=args.output_dir / "model", eval_data=evaluation, eval_split=eval_split)
    result = {"suite": args.suite, **result}
    path = write_json(args.output_dir / "finetune.json", result)
    train_info = result["train"]
    last = train_info["history"][-1]["loss"] if train_info["history"] else float("nan")
    print(f"Trained {train_info['steps']} steps on {train_info['pairs']} pairs (final loss {last:.4f}, "
          f"{train_info['seconds']['total']:.1f} s); model saved to {result['output_dir']}")
    if result["eval"] is not None:
        print(markdown_table(TABLE_HEADER, [_row(result["eval"], str(result["output_dir"]))]))
        print(_semantics_note(result["eval"]))
    print(f"Wrote {path}")
    return 0


__all__ = ["add_evaluate_arguments", "add_finetune_arguments", "run_evaluate", "run_finetune"]
