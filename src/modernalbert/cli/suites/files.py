"""``modernalbert finetune classification|regression|token-classification MODEL --train FILE ...``: fine-tune on
your own labelled files (CSV, TSV, JSON Lines, Parquet, CoNLL, datasets folders or cached Hub names).

    modernalbert finetune classification MODEL --train train.csv --validation dev.csv --output-dir runs/reviews
    modernalbert finetune classification MODEL --train pairs.jsonl --text-column premise \\
        --text-pair-column hypothesis --label-column label --labels entailment,neutral,contradiction --output-dir ...
    modernalbert finetune regression MODEL --train scores.parquet --label-column score --output-dir runs/scores
    modernalbert finetune token-classification MODEL --train ner.conll --validation dev.conll --output-dir runs/ner

Writes ``--output-dir``/``model`` (the fine-tuned model with ``id2label``, and its tokenizer) and
``--output-dir``/``results.json``; prints the metrics table. See :mod:`modernalbert.evaluation.files`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...evaluation.config import FileDataConfig, FinetuneConfig
from ..arguments import add_config_arguments, config_from_args


def add_finetune_arguments(parser: argparse.ArgumentParser, suite: str) -> None:
    """Register ``finetune classification|regression|token-classification`` arguments on ``parser``."""
    parser.add_argument("model", help="pre-trained model folder, packaged model or hub name (ModernAlbert or any HF "
                                      "encoder)")
    parser.add_argument("--train", required=True, metavar="FILE",
                        help="training data: .csv, .tsv, .jsonl, .parquet, .conll (optionally .gz/.bz2/.xz), a "
                             "folder saved with `datasets`, or a cached Hugging Face dataset name")
    parser.add_argument("--validation", default=None, metavar="FILE", help="data scored after training")
    parser.add_argument("--test", default=None, metavar="FILE", help="data scored after training")
    parser.add_argument("--output-dir", required=True, help="folder for the model (model/) and results.json")
    add_config_arguments(parser, FileDataConfig, key="data")
    parser.add_argument("--labels", default=None, metavar="A,B,...",
                        help="class names (or tags) in id order, comma-separated (default: a dataset's ClassLabel "
                             "names, else the training labels sorted)")
    add_config_arguments(parser, FinetuneConfig, key="ft")
    parser.add_argument("--no-save", action="store_true", help="write the results only, not the model")


def run_finetune(args: argparse.Namespace) -> int:
    """Fine-tune on the files; print the metrics and where the model and results went."""
    from ...evaluation.common import markdown_table
    from ...evaluation.files import finetune_on_files

    labels = None
    if args.labels is not None:
        labels = tuple(n.strip() for n in args.labels.split(","))
        if not all(labels):
            raise ValueError(f"--labels {args.labels!r} has an empty name: give comma-separated names (e.g. neg,pos).")
    data = config_from_args(FileDataConfig, args, key="data", labels=labels)
    cfg = config_from_args(FinetuneConfig, args, key="ft")
    output = Path(args.output_dir)
    res = finetune_on_files(args.model, args.suite, args.train, validation=args.validation, test=args.test,
                            data=data, cfg=cfg, output_dir=str(output), save=not args.no_save)
    rows = [[split, metric, value, res["eval_examples"][split]] for split, metrics in res["metrics"].items()
            for metric, value in metrics.items()]
    rows += [[split, f"majority class accuracy ({b['majority_label']})", b["majority_accuracy"],
              res["eval_examples"][split]] for split, b in res["baselines"].items()]
    if rows:
        print(markdown_table(["split", "metric", "value", "examples"], rows))
    print(f"{res['task']}: {res['train_examples']} training examples, {res['steps']} steps, "
          f"{len(res['labels']) if res['labels'] else 'no'} labels, {res['seconds']:.1f} s")
    if res["model_dir"]:
        print(f"model: {res['model_dir']}")
    print(f"results: {output / 'results.json'}")
    return 0
