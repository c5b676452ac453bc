"""``modernalbert encode MODEL FILE``: sentence embeddings of every row of FILE, in input order, to ``.npy`` or
Parquet (:func:`modernalbert.inference.encode`). Pooling follows the model folder's sentence-transformers settings
when it has them, else mean pooling; an ONNX folder's graph pools as it was exported.
"""

from __future__ import annotations

import argparse

from .predict import add_input_arguments, common_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument("--pooling", choices=("mean", "cls"), default=None,
                        help="default: the folder's sentence-transformers pooling, else mean")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                        help="L2-normalise the embeddings (default: as the folder says, else no)")


def run(args: argparse.Namespace) -> int:
    from ..inference import encode

    n = encode(args.model, args.file, args.output, pooling=args.pooling, normalize=args.normalize,
               **common_options(args))
    print(f"{n} embeddings written to {args.output}")
    return 0
