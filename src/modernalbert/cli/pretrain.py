"""``modernalbert pretrain RECIPE [section.key=value ...]``: run or resume a pretraining recipe."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="YAML recipe (see recipes/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="recipe overrides, e.g. train.steps=50 optim.lr=5e-4 output_dir=runs/x")


def run(args: argparse.Namespace) -> int:
    from ..training.recipe import Recipe
    from ..training.trainer import pretrain

    recipe = Recipe.load(args.recipe, args.overrides)
    result = pretrain(recipe)
    print(f"final model: {result.final_dir}")
    if result.last_eval:
        print("held-out: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(result.last_eval.items())))
    return 0
