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

TABLE_HEADER = ("model", "data", "split", "queries", "docs", "nDCG@10", "Recall@100", "MAP", "seconds")


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
    parser.add_argument("--pooling", choices=("mean", "cls"), default=None,
                        help="default: the sentence-transformers folder's own pooling, else mean")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                        help="L2-normalise embeddings (default: as the folder says, else no)")
    parser.add_argument("--score", choices=("cos", "dot"), default="cos", help="similarity (default cos)")
    parser.add_argument("--max-length", type=int, default=256,
                        help="token limit of queries and documents in evaluation (default 256)")
    parser.add_argument("--top-k", type=int, default=100, help="hits kept per query (default 100)")
    parser.add_argument("--chunk-size", type=int, default=50000,
                        help="documents embedded and scored at once (bounded memory; default 50000)")
    parser.add_argument("--faiss", action="store_true", help="search with faiss IndexFlatIP (pip install "
                        "'modernalbert[faiss]')")
    parser.add_argument("--keep-identical-ids", action="store_true",
                        help="keep hits whose doc id equals the query id (BEIR drops them by default)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="auto: bf16 autocast on a capable GPU, fp32 otherwise; bf16 / fp16: autocast "
                             "(fp16 fine-tuning needs a GPU)")
    if training:
        parser.add_argument("--output-dir", type=Path, required=True,
                            help="folder for finetune.json and the model (OUTPUT_DIR/model)")
    else:
        parser.add_argument("--output-dir", type=Path, default=Path("runs") / suite,
                            help=f"folder for evaluate-SPLIT.json (default runs/{suite})")


def add_evaluate_arguments(parser: argparse.ArgumentParser, suite: str) -> None:
    """Arguments of ``modernalbert evaluate {beir,rt-review-plot}``."""
    _add_common(parser, suite, training=False)
    parser.add_argument("--split", default="test", help="qrels split (default test)")
    parser.add_argument("--batch-size", type=int, default=128, help="texts per forward pass (default 128)")
    parser.add_argument("--max-queries", type=int, default=None,
                        help="evaluate a seeded sample of this many queries (the whole corpus is searched)")
    parser.add_argument("--per-query", action="store_true", help="include per-query metrics in the JSON")


def add_finetune_arguments(parser: argparse.ArgumentParser, suite: str) -> None:
    """Arguments of ``modernalbert finetune {beir,rt-review-plot}`` (contrastive fine-tuning, then evaluation)."""
    _add_common(parser, suite, training=True)
    parser.add_argument("--split", default="train", help="training qrels split (default train)")
    parser.add_argument("--eval-split", default="test", help="evaluation split after training ('none' to skip)")
    parser.add_argument("--eval-max-queries", type=int, default=None, help="evaluate a seeded query sample")
    # Contrastive defaults (our choice): sentence-transformers' usual learning rate and batch size, one epoch.
    parser.add_argument("--learning-rate", type=float, default=2e-5, help="default 2e-5")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per step = in-batch negatives + 1 "
                        "(default 32)")
    parser.add_argument("--eval-batch-size", type=int, default=128, help="default 128")
    parser.add_argument("--epochs", type=float, default=1.0, help="default 1")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--warmup-ratio", type=float, default=0.1, help="default 0.1")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="default 0.01")
    parser.add_argument("--train-max-length", type=int, default=128,
                        help="token limit of training texts (default 128)")
    parser.add_argument("--log-every", type=int, default=10, help="steps between loss records (default 10)")
    parser.add_argument("--hard-negatives", type=int, default=0,
                        help="hard negatives per pair, mined from the model's own top-k (default 0: in-batch only)")
    parser.add_argument("--hard-negatives-file", type=Path, default=None,
                        help="TSV query-id<TAB>corpus-id of given hard negatives (instead of mining)")
    parser.add_argument("--mine-top-k", type=int, default=30, help="mine from each query's top-k (default 30)")
    parser.add_argument("--scale", type=float, default=20.0,
                        help="inverse temperature of the InfoNCE loss (default 20 = temperature 0.05)")
    parser.add_argument("--symmetric", action="store_true", help="add the document→query direction to the loss")


def _data(args: argparse.Namespace) -> str:
    if args.data is not None:
        return str(args.data)
    if args.suite != "rt-review-plot":
        raise ValueError("--data is required: a BEIR folder or hub name.")
    from ..data.rotten_tomatoes import write_review_plot_beir
    from ..data.sources import cache_dir

    folder = cache_dir() / "rt-review-plot" / f"seed-{args.seed}"
    if not (folder / "corpus.jsonl").is_file():  # written atomically: a present corpus means a complete folder
        print(f"Building the RT review→plot folder in {folder}")
        write_review_plot_beir(folder, seed=args.seed)
    return str(folder)


def _check_faiss(args: argparse.Namespace) -> None:
    if args.faiss:
        from .beir import _faiss

        try:
            _faiss()
        except ImportError as err:  # the CLI reports bad set-ups as one line
            raise ValueError(str(err)) from err


def _row(result: dict[str, Any], model: str) -> list[Any]:
    m = result["metrics"]
    data = Path(result["data"])  # the last two parts name a dataset folder (e.g. rt-review-plot/seed-0)
    return [model, "/".join(data.parts[-2:]) or result["data"], result["split"], result["num_queries"],
            result["num_docs"], m.get("ndcg_cut_10", float("nan")), m.get("recall_100", float("nan")), m["map"],
            f"{result['seconds']['total']:.1f}"]


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate MODEL; print a markdown table; write ``OUTPUT_DIR/evaluate-<split>.json``."""
    from .beir import evaluate_retrieval
    from .common import markdown_table, write_json

    _check_faiss(args)
    result = evaluate_retrieval(
        args.model, _load(args, args.split), split=args.split, pooling=args.pooling, normalize=args.normalize,
        score=args.score, batch_size=args.batch_size, max_length=args.max_length, max_queries=args.max_queries,
        top_k=args.top_k, chunk_size=args.chunk_size, use_faiss=args.faiss,
        ignore_identical_ids=not args.keep_identical_ids, seed=args.seed, per_query=args.per_query,
        precision=args.precision)
    result = {"suite": args.suite, **result}
    path = write_json(args.output_dir / f"evaluate-{args.split}.json", result)
    print(markdown_table(TABLE_HEADER, [_row(result, args.model)]))
    print(f"Wrote {path}")
    return 0


def _load(args: argparse.Namespace, split: str) -> Any:
    from .beir import load_beir

    return load_beir(_data(args), split, qrels_name=getattr(args, "qrels_name", None))


def run_finetune(args: argparse.Namespace) -> int:
    """Contrastive fine-tuning of MODEL, saved to ``OUTPUT_DIR/model`` (a sentence-transformers folder), then
    evaluation; print a markdown table; write ``OUTPUT_DIR/finetune.json``."""
    from .beir import finetune_retrieval
    from .common import FinetuneConfig, markdown_table, write_json

    _check_faiss(args)
    cfg = FinetuneConfig(learning_rate=args.learning_rate, batch_size=args.batch_size,
                         eval_batch_size=args.eval_batch_size, epochs=args.epochs, max_steps=args.max_steps,
                         warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
                         max_length=args.train_max_length, seed=args.seed, precision=args.precision,
                         log_every=args.log_every)
    eval_split = None if str(args.eval_split).lower() == "none" else args.eval_split
    train = _load(args, args.split)
    evaluation = _load(args, eval_split) if eval_split else None
    result = finetune_retrieval(
        args.model, train, cfg, split=args.split, output_dir=args.output_dir / "model",
        hard_negatives=args.hard_negatives, hard_negatives_file=args.hard_negatives_file, mine_top_k=args.mine_top_k,
        pooling=args.pooling, normalize=args.normalize, score=args.score, scale=args.scale, symmetric=args.symmetric,
        max_length=args.max_length, eval_data=evaluation, eval_split=eval_split,
        eval_max_queries=args.eval_max_queries, top_k=args.top_k, use_faiss=args.faiss)
    result = {"suite": args.suite, **result}
    path = write_json(args.output_dir / "finetune.json", result)
    train_info = result["train"]
    last = train_info["history"][-1]["loss"] if train_info["history"] else float("nan")
    print(f"Trained {train_info['steps']} steps on {train_info['pairs']} pairs (final loss {last:.4f}, "
          f"{train_info['seconds']['total']:.1f} s); model saved to {result['output_dir']}")
    if result["eval"] is not None:
        print(markdown_table(TABLE_HEADER, [_row(result["eval"], str(result["output_dir"]))]))
    print(f"Wrote {path}")
    return 0


__all__ = ["add_evaluate_arguments", "add_finetune_arguments", "run_evaluate", "run_finetune"]
