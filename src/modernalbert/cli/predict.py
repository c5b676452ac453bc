"""``modernalbert predict MODEL FILE``: labels and scores (sequence classification, regression) or entity spans (token
classification) of every row of FILE, in input order, to JSON Lines or CSV (:func:`modernalbert.inference.predict`).

MODEL is a fine-tuned model folder or a folder written by ``modernalbert export onnx`` (``--graph`` picks one of its
graphs, e.g. ``model.deploy.int8.onnx``). Rows are read a chunk at a time, bucketed by length, and written back in
input order: memory stays bounded whatever FILE's size.
"""

from __future__ import annotations

import argparse

from ..inference.streaming import DEFAULT_CHUNK, DEFAULT_MAX_TOKENS


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL FILE and the options ``predict`` and ``encode`` share."""
    parser.add_argument("model", metavar="MODEL", help="model folder (PyTorch) or exported ONNX folder")
    parser.add_argument("file", metavar="FILE", help="CSV, TSV, JSON Lines or Parquet file, or a datasets folder")
    parser.add_argument("--output", "-o", required=True, help="output file (its suffix picks the format)")
    parser.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    parser.add_argument("--format", default=None, help="FILE's format when its suffix does not say it")
    parser.add_argument("--split", default=None, help="split of a datasets folder")
    parser.add_argument("--graph", default=None,
                        help="ONNX folders: graph to run (default model.deploy.onnx, else model.onnx)")
    parser.add_argument("--max-length", type=int, default=None, help="truncate rows to this many tokens")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                        help=f"padded tokens per length-bucketed batch (default {DEFAULT_MAX_TOKENS})")
    parser.add_argument("--batch-size", type=int, default=None, help="most rows per batch (default: no limit)")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK,
                        help=f"rows read, bucketed and written together (default {DEFAULT_CHUNK})")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def common_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``predict`` / ``encode`` that :func:`add_input_arguments` parsed."""
    return dict(text_column=args.text_column, graph=args.graph, max_length=args.max_length,
                max_tokens=args.max_tokens, batch_size=args.batch_size, chunk_size=args.chunk_size,
                format=args.format, split=args.split, threads=args.threads, progress=not args.no_progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument("--text-pair-column", default=None, help="column of the second text (sentence pairs)")


def run(args: argparse.Namespace) -> int:
    from ..inference import predict

    n = predict(args.model, args.file, args.output, text_pair_column=args.text_pair_column, **common_options(args))
    print(f"{n} predictions written to {args.output}")
    return 0
