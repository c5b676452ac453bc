"""``python -m modernalbert.cli.main COMMAND ...`` (what ``accelerate launch -m`` and ``torchrun -m`` run): the same
entry point as the ``modernalbert`` command (:mod:`modernalbert_cli`)."""

from __future__ import annotations

import sys

from modernalbert_cli import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
