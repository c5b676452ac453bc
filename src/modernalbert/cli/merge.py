"""``modernalbert merge IN OUT``: merge the MoL experts of a saved model and save the merged model."""

from __future__ import annotations

import argparse
import json

from ..export.merge import FORMS, SPACES, WEIGHTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="saved ModernAlbert folder with MoL groups")
    parser.add_argument("output", metavar="OUT", help="folder to write the merged model to")
    parser.add_argument("--weights", choices=WEIGHTS, default="uniform",
                        help="per-expert weights: uniform, or router (moving average kept in training, or "
                             "--calibration text)")
    parser.add_argument("--space", choices=SPACES, default="deltas", help="average weight deltas or LoRA factors")
    parser.add_argument("--form", choices=FORMS, default="lowrank",
                        help="exact low-rank adapter, truncated SVD (--rank), or folded into the FFN weight")
    parser.add_argument("--rank", type=int, default=None,
                        help="target rank for --form svd (required: at full rank svd equals lowrank)")
    parser.add_argument("--calibration", nargs="+", metavar="FILE",
                        help="text files (one text per line) to measure router weights on")
    parser.add_argument("--tokenizer", help="tokenizer for calibration text (default: the one saved with IN)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)


def run(args: argparse.Namespace) -> int:
    from ..data.text import read_texts
    from ..export.merge import merge_experts
    from ..model.loading import load_pretrained, load_tokenizer, save_model

    if args.form == "svd" and args.rank is None:
        raise ValueError("--form svd needs --rank R, the rank to truncate the merged adapter to (at full rank an "
                         "SVD merge equals --form lowrank, which is exact).")
    model = load_pretrained(args.input)
    tokenizer = load_tokenizer(args.tokenizer or args.input, optional=args.tokenizer is None)
    calibration = read_texts(args.calibration) if args.calibration else None
    if calibration is not None and tokenizer is None:
        raise ValueError(f"No tokenizer saved with {args.input}: pass --tokenizer for the calibration text.")
    merged = merge_experts(model, weights=args.weights, space=args.space, form=args.form, rank=args.rank,
                           calibration=calibration, tokenizer=tokenizer, batch_size=args.batch_size,
                           max_length=args.max_length)
    save_model(merged, tokenizer, args.output)  # atomically: a failed merge leaves no half-written folder
    info = merged.config.merge_info
    print(json.dumps({k: info[k] for k in ("weights", "weights_source", "space", "form", "adapter_rank",
                                           "merged_groups", "parameters_before", "parameters_after")}))
    print(f"merged model written to {args.output}")
    return 0
