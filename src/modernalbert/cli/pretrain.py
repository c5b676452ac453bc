"""``modernalbert pretrain RECIPE [section.key=value ...]``: run or resume a pretraining recipe."""

from __future__ import annotations

import argparse
import errno
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="YAML recipe (see recipes/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="recipe overrides, e.g. train.steps=50 optim.lr=5e-4 output_dir=runs/x")


def run(args: argparse.Namespace) -> int:
    """Run the recipe; returns 0, or 1 with one line when the run cannot go on (the output folder is in use, the
    run diverged, the disk is full). Invalid recipes and checkpoints are ValueErrors (one line, exit code 2)."""
    from ..training.recipe import Recipe
    from ..training.trainer import pretrain
    from ..utils.locking import FolderLockedError

    recipe = Recipe.load(args.recipe, args.overrides)
    try:
        result = pretrain(recipe)
    except (FolderLockedError, FloatingPointError) as err:
        print(f"modernalbert pretrain: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        print(f"modernalbert pretrain: error: {err.strerror}", file=sys.stderr)
        return 1
    print(f"final model: {result.final_dir}")
    if result.last_eval:
        print("held-out: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(result.last_eval.items())))
    return 0
