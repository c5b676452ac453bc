"""``modernalbert finetune SUITE ...``: fine-tune and evaluate on GLUE, SQuAD-v2, BEIR or a real stand-in."""

from __future__ import annotations

import argparse

from .suites import add_suites


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_suites(parser, "finetune")


def run(args: argparse.Namespace) -> int:
    return int(args._suite_run(args) or 0)
