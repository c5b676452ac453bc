"""``modernalbert quickstart [--quick] [--force]``: the main job (resumable), ending with a printed table."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default=None,
                        help="where to write (default runs/quickstart, or runs/quickstart-quick with --quick)")
    parser.add_argument("--quick", action="store_true", help="a ~3-minute first look (less data, fewer steps)")
    parser.add_argument("--force", action="store_true", help="redo every stage instead of resuming")
    parser.add_argument("--seed", type=int, default=0, help="seed of distillation and fine-tuning (default 0)")


def run(args: argparse.Namespace) -> int:
    from ..quickstart.pipeline import run_quickstart

    state = run_quickstart(args.output_dir, quick=args.quick, force=args.force, seed=args.seed)
    print(f"report: {state['stages']['report']['result']['path']}")
    return 0
