"""The evaluation suites of ``modernalbert finetune`` and ``modernalbert evaluate``.

Each suite module exposes ``add_finetune_arguments(parser, suite)`` / ``run_finetune(args)`` and, when the suite
can score a saved model by itself, ``add_evaluate_arguments(parser, suite)`` / ``run_evaluate(args)``. The Rotten
Tomatoes stand-ins have their own names: they are not the benchmarks they stand in for. The file tasks
(``classification``, ``regression``, ``token-classification``) fine-tune on a user's own files and score them with
``--validation`` / ``--test``.
"""

from __future__ import annotations

import argparse
import importlib

# suite -> (module, one-line help)
SUITES: dict[str, tuple[str, str]] = {
    "glue": ("modernalbert.cli.suites.glue", "GLUE (nine tasks, official metrics, MNLI start, seeds, grid)"),
    "rt-sentiment": ("modernalbert.cli.suites.glue",
                     "Rotten Tomatoes sentence sentiment (a real stand-in for SST-2, split by movie)"),
    "squad": ("modernalbert.cli.suites.squad", "SQuAD-v2 (sliding windows, n-best, official metric)"),
    "beir": ("modernalbert.cli.suites.beir", "BEIR retrieval (nDCG@10 via pytrec_eval; contrastive fine-tuning)"),
    "rt-review-plot": ("modernalbert.cli.suites.beir",
                       "RT review→plot retrieval (a real stand-in in BEIR layout, not BEIR)"),
    "classification": ("modernalbert.cli.suites.files",
                       "your own labelled files: text (or text pair) classification (accuracy, macro-F1)"),
    "regression": ("modernalbert.cli.suites.files",
                   "your own labelled files: one score per text or pair (Pearson, Spearman, MSE)"),
    "token-classification": ("modernalbert.cli.suites.files",
                             "your own labelled files: one tag per word, e.g. NER (seqeval entity F1, accuracy)"),
}


def add_suites(parser: argparse.ArgumentParser, verb: str) -> None:
    """One sub-parser per suite that has ``add_<verb>_arguments``; ``args._suite_run`` runs it."""
    sub = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for name, (module, help_text) in SUITES.items():
        mod = importlib.import_module(module)
        if not hasattr(mod, f"add_{verb}_arguments"):
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        getattr(mod, f"add_{verb}_arguments")(p, name)
        p.set_defaults(_suite_run=getattr(mod, f"run_{verb}"))


__all__ = ["SUITES", "add_suites"]
