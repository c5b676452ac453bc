"""``modernalbert finetune SUITE ...`` and ``modernalbert evaluate SUITE ...``.

Each suite module exposes ``add_finetune_arguments(parser)`` / ``run_finetune(args)`` and
``add_evaluate_arguments(parser)`` / ``run_evaluate(args)``; this table maps suite names to them. The Rotten
Tomatoes stand-ins have their own names: they are not the benchmarks they stand in for.
"""

from __future__ import annotations

import argparse
import importlib

# suite -> (module, one-line help)
SUITES: dict[str, tuple[str, str]] = {
    "glue": ("modernalbert.evaluation.glue_cli", "GLUE (nine tasks, official metrics, MNLI start, seeds, grid)"),
    "rt-sentiment": ("modernalbert.evaluation.glue_cli",
                     "Rotten Tomatoes sentence sentiment (a real stand-in for SST-2, split by movie)"),
    "squad": ("modernalbert.evaluation.squad_cli", "SQuAD-v2 (sliding windows, n-best, official metric)"),
    "beir": ("modernalbert.evaluation.beir_cli", "BEIR retrieval (nDCG@10 via pytrec_eval; contrastive fine-tuning)"),
    "rt-review-plot": ("modernalbert.evaluation.beir_cli",
                       "RT review→plot retrieval (a real stand-in in BEIR layout, not BEIR)"),
}


def _add(parser: argparse.ArgumentParser, verb: str) -> None:
    sub = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for name, (module, help_text) in SUITES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        getattr(mod, f"add_{verb}_arguments")(p, name)
        p.set_defaults(_suite_run=getattr(mod, f"run_{verb}"))


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    _add(parser, "finetune")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    _add(parser, "evaluate")


def run(args: argparse.Namespace) -> int:
    return int(args._suite_run(args) or 0)
