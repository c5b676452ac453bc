"""``modernalbert experiment ablation|recovery RECIPE [--output-dir DIR] [--force] [key=value ...]``: run (or
resume) a study of a recipe and regenerate its report (see :mod:`modernalbert.experiments.ablation` and
:mod:`modernalbert.experiments.recovery`)."""

from __future__ import annotations

import argparse


def _common(p: argparse.ArgumentParser, recipes: str) -> None:
    p.add_argument("recipe", help=f"YAML recipe ({recipes})")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="recipe overrides, e.g. seeds=[0] pretrain.train.steps=20 finetune.max_train_examples=200")
    p.add_argument("--output-dir", default=None, help="replaces the recipe's output_dir; the report stays in "
                   "that folder (the recipe's published report and summary are left alone)")
    p.add_argument("--force", action="store_true", help="delete the recorded runs of the output folder, start over")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``experiment``'s sub-commands on ``parser``."""
    sub = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    p = sub.add_parser("ablation", help="MoL against full / ALBERT / RRT / MoA under equal budgets, merged too",
                       description="Pretrain every variant of a recipe for every init and seed under the same token "
                                   "and unique-parameter budgets, fine-tune on RT sentiment, merge the MoL models, "
                                   "measure speed, and write results.json, results.md and plots. Finished runs are "
                                   "recorded and skipped on the next call.")
    _common(p, "recipes/ablation-cpu.yaml, recipes/ablation-gpu.yaml")
    p = sub.add_parser("recovery", help="how much of the cost of sharing each variant recovers, from a "
                                        "full-parameter reference",
                       description="Build (or resume) the full-parameter reference, initialise every recursive "
                                   "variant from it, distil them to it under one token budget, measure held-out MLM, "
                                   "hidden distance to the reference and RT accuracy, and write the fraction of the "
                                   "ALBERT-style -> reference gap each closes (recovery.md, recovery.json). Finished "
                                   "runs are recorded and skipped on the next call.")
    _common(p, "recipes/recovery-cpu.yaml")
    p.add_argument("--pilot", action="store_true",
                   help="run only the gap's two ends (ALBERT-style and reference) and record the setting's "
                        "discrimination ratio in the ledger of attempts")


def run(args: argparse.Namespace) -> int:
    """Run the chosen experiment; returns the exit code."""
    if args.experiment == "recovery":
        from ..experiments.recovery import run_recovery

        results = run_recovery(args.recipe, args.overrides, output_dir=args.output_dir, pilot=args.pilot,
                               force=args.force)
    else:
        from ..experiments.ablation import run_ablation

        results = run_ablation(args.recipe, args.overrides, output_dir=args.output_dir, force=args.force)
    print(f"results: {len(results['runs'])} runs recorded in {results['recipe']['output_dir']}/results.json")
    return 0
