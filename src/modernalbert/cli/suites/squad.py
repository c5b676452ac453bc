"""``modernalbert finetune squad MODEL --data ...`` and ``modernalbert evaluate squad MODEL --data ...``.

    modernalbert finetune squad MODEL --data train-v2.0.json --eval-data dev-v2.0.json --output-dir runs/squad
    modernalbert finetune squad MODEL --data rajpurkar/squad_v2 --output-dir runs/squad   (online or cached)
    modernalbert evaluate squad runs/squad/model --data dev-v2.0.json --output-dir runs/squad-eval

Both print a markdown table of the SQuAD-v2 metrics and write into ``--output-dir``: ``results.json`` (settings,
metrics, and for fine-tuning the loss history), ``predictions.json`` (question id -> answer, "" for no answer) and
``na_probs.json`` (question id -> no-answer probability): the two files the official ``evaluate-v2.0.py`` reads.
Fine-tuning also saves the model with its tokenizer in ``--output-dir/model``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ...evaluation.config import PRECISIONS, FinetuneConfig
from ...evaluation.squad import (
    BATCH_SIZE,
    EPOCHS,
    EVAL_BATCH_SIZE,
    LEARNING_RATE,
    MAX_ANSWER_LENGTH,
    MAX_LENGTH,
    N_BEST,
    STRIDE,
)
from ..arguments import add_config_arguments, config_from_args

# SQuAD's fine-tuning defaults (our choice) and run_qa's window length, over FinetuneConfig's general ones.
FINETUNE_DEFAULTS = {"learning_rate": LEARNING_RATE, "batch_size": BATCH_SIZE, "epochs": EPOCHS,
                     "eval_batch_size": EVAL_BATCH_SIZE, "max_length": MAX_LENGTH}

_DATA_HELP = ("a SQuAD JSON file (official layout, e.g. {split}-v2.0.json), a .jsonl file in the Hugging Face "
              "layout, or a hub name such as rajpurkar/squad_v2 (split '{split_name}'; NAME:SPLIT picks another; "
              "needs the network or the datasets cache)")


def _add_windows(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stride", type=int, default=None,
                        help=f"tokens shared by consecutive windows, run_qa's doc_stride (default max-length // 3: "
                             f"{STRIDE} at {MAX_LENGTH})")
    parser.add_argument("--n-best", type=int, default=N_BEST,
                        help=f"start / end candidates per window (default {N_BEST})")
    parser.add_argument("--max-answer-length", type=int, default=MAX_ANSWER_LENGTH,
                        help=f"longest answer in tokens (default {MAX_ANSWER_LENGTH})")


def add_finetune_arguments(parser: argparse.ArgumentParser, suite: str = "squad") -> None:
    """Arguments of ``modernalbert finetune squad``: the data, then one flag per
    :class:`~modernalbert.evaluation.config.FinetuneConfig` field (``--max-length`` is the window length), then the
    windows.

    Args:
        parser: The suite's sub-parser.
        suite: The suite name it is registered under.
    """
    parser.add_argument("model", metavar="MODEL",
                        help="a ModernAlbert folder or any Hugging Face encoder (folder or hub name) with a fast "
                             "tokenizer; a fresh QA head is added")
    parser.add_argument("--data", required=True, help="training data: " + _DATA_HELP.format(split="train",
                                                                                            split_name="train"))
    parser.add_argument("--eval-data", default=None,
                        help="evaluation data, same forms (default: the validation split of a hub-name --data; "
                             "none for a file)")
    parser.add_argument("--output-dir", required=True,
                        help="where the model (OUTPUT_DIR/model), results.json, predictions.json and na_probs.json "
                             "are written")
    add_config_arguments(parser, FinetuneConfig, key="ft", defaults=FINETUNE_DEFAULTS)
    _add_windows(parser)


def add_evaluate_arguments(parser: argparse.ArgumentParser, suite: str = "squad") -> None:
    """Arguments of ``modernalbert evaluate squad``.

    Args:
        parser: The suite's sub-parser.
        suite: The suite name it is registered under.
    """
    parser.add_argument("model", metavar="FINETUNED_MODEL", help="a fine-tuned QA model folder (or hub name)")
    parser.add_argument("--data", required=True, help="evaluation data: " + _DATA_HELP.format(
        split="dev", split_name="validation"))
    parser.add_argument("--output-dir", default=None,
                        help="where results.json, predictions.json and na_probs.json are written (default: print "
                             "only)")
    parser.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE,
                        help=f"windows per prediction batch, length-bucketed (default {EVAL_BATCH_SIZE})")
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH,
                        help=f"tokens per window (default {MAX_LENGTH}, as Hugging Face's run_qa)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 autocast on a GPU that supports it, fp32 otherwise (default auto); "
                             "bf16 / fp16: autocast")
    _add_windows(parser)


_ROWS = ("exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact", "NoAns_f1",
         "NoAns_total", "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh")


def _report(result: dict[str, Any], output_dir: str | None) -> None:
    from ...evaluation.common import is_main_process, markdown_table
    from ...utils.io import write_json

    if not is_main_process():
        return
    metrics = result.get("metrics")
    if metrics:
        print(markdown_table(["SQuAD-v2 metric", "value"], [(k, metrics[k]) for k in _ROWS if k in metrics]))
    if output_dir is None:
        return
    out = Path(output_dir)
    write_json(out / "results.json", {k: v for k, v in result.items() if k not in ("predictions", "na_probs")})
    if "predictions" in result:
        write_json(out / "predictions.json", result["predictions"])
        write_json(out / "na_probs.json", result["na_probs"])
    print(f"Results written to {out}")


def run_finetune(args: argparse.Namespace) -> int:
    """Fine-tune, evaluate when there is evaluation data, print the table and write the files."""
    from ...evaluation.common import is_main_process
    from ...evaluation.squad import finetune_squad

    cfg = config_from_args(FinetuneConfig, args, key="ft")
    result = finetune_squad(args.model, cfg, data=args.data, eval_data=args.eval_data, output_dir=args.output_dir,
                            stride=args.stride, n_best=args.n_best, max_answer_length=args.max_answer_length)
    _report(result, args.output_dir)
    if is_main_process():
        print(f"Fine-tuned {result['steps']} steps on {result['train_features']} windows of "
              f"{result['train_examples']} questions; model saved to {result['model_dir']}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a fine-tuned model, print the table and write the files."""
    from ...evaluation.squad import evaluate_squad

    stride = args.stride if args.stride is not None else args.max_length // 3
    result = evaluate_squad(args.model, data=args.data, batch_size=args.batch_size, max_length=args.max_length,
                            stride=stride, n_best=args.n_best, max_answer_length=args.max_answer_length,
                            precision=args.precision)
    _report(result, args.output_dir)
    return 0
