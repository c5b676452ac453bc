"""Fine-tuning and scoring GLUE tasks: label checks, new heads, seeds and grids, results files."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed

from ...model.loading import load_config, load_model, load_tokenizer, pad_token_id, save_model
from ...utils.config import field_kind
from ...utils.io import write_json
from ..common import finetune, mean_std, model_inputs, predict
from ..config import FinetuneConfig
from .data import encode, load_split, subsample
from .metrics import compute_metrics, main_score, majority_baseline
from .tasks import GlueTask, get_task, resolve_split


def _label_names(config: Any) -> list[str]:
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(config.num_labels)]


def check_model_labels(path: str | os.PathLike, task: str | GlueTask, *, fine_tuned: bool) -> Any:
    """Check that a model folder fits the task's labels; returns its config.

    Args:
        path: Model folder or hub name.
        task: The task.
        fine_tuned: ``True`` to evaluate (the folder must be a sequence classifier for this task's labels);
            ``False`` to fine-tune (a pre-trained encoder, or a classifier of the same labels to train further).

    Raises:
        ValueError: A label-count or label-name mismatch, or (``fine_tuned``) a folder without a classifier.
    """
    spec = task if isinstance(task, GlueTask) else get_task(task)
    try:
        config = load_config(path)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ValueError(f"Could not open the model config of {path} ({err}); give a saved model folder (a hub "
                         "name needs the hub or its local cache).") from err
    archs = config.architectures or []
    is_classifier = any(a.endswith("ForSequenceClassification") for a in archs)
    if fine_tuned and not is_classifier:
        raise ValueError(f"{path} is not a fine-tuned sequence classifier (architectures {archs}); fine-tune it "
                         f"first: `modernalbert finetune ... {path}`.")
    if not is_classifier:
        return config
    names = _label_names(config)
    generic = all(re.fullmatch(r"LABEL_\d+", n) for n in names)
    if config.num_labels != spec.num_labels:
        kind = "regression (1 output)" if spec.is_regression else f"{spec.num_labels} labels {list(spec.labels)}"
        fix = ("evaluate it on the task it was fine-tuned for" if fine_tuned
               else f"start from its encoder with a new head: init_from={str(path)!r} (--init-from)")
        raise ValueError(f"{path} was saved with num_labels={config.num_labels} {names} but {spec.display} is "
                         f"{kind}; {fix}.")
    if not spec.is_regression and not generic and names != list(spec.labels):
        fix = ("evaluate it on the task it was fine-tuned for" if fine_tuned
               else f"start from its encoder with a new head: init_from={str(path)!r} (--init-from)")
        raise ValueError(f"{path} was fine-tuned for labels {names}, not the {spec.display} labels "
                         f"{list(spec.labels)}; {fix}.")
    return config


def _head_kwargs(spec: GlueTask) -> dict[str, Any]:
    if spec.is_regression:
        return {"num_labels": 1, "problem_type": "regression"}
    return {"num_labels": spec.num_labels, "problem_type": "single_label_classification",
            "id2label": dict(enumerate(spec.labels)), "label2id": {n: i for i, n in enumerate(spec.labels)}}


def new_classifier(model: torch.nn.Module, seed: int) -> None:
    # "New head" for init_from: the final projection is drawn afresh even when its shape matches (from_pretrained
    # only re-initialises mismatched sizes). N(0, initializer_range) as in BERT; our choice for other families.
    layer = getattr(model, "classifier", None)
    if isinstance(getattr(layer, "out_proj", None), torch.nn.Linear):  # RoBERTa-style heads
        layer = layer.out_proj
    if isinstance(layer, torch.nn.Sequential):
        layer = next((m for m in reversed(layer) if isinstance(m, torch.nn.Linear)), None)
    if not isinstance(layer, torch.nn.Linear):
        return
    gen = torch.Generator().manual_seed(seed)
    std = float(getattr(model.config, "initializer_range", 0.02))
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * std)
        if layer.bias is not None:
            layer.bias.zero_()


def _logits_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
    inputs = {k: v for k, v in model_inputs(model, batch).items() if k != "labels"}
    return list(model(**inputs).logits.float().cpu().numpy())


def _score(model: torch.nn.Module, spec: GlueTask, features: list[dict[str, Any]], *, batch_size: int,
           tokenizer: Any, precision: str, desc: str) -> dict[str, float]:
    logits = np.stack(predict(model, features, _logits_fn, batch_size=batch_size, tokenizer=tokenizer, desc=desc,
                              precision=precision))
    preds = logits[:, 0] if spec.is_regression else logits.argmax(axis=-1)
    return compute_metrics(spec, preds, [f["labels"] for f in features])


def _json_safe(obj: Any) -> Any:
    # NaN (an undefined correlation) becomes null: strict JSON has no NaN.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_results(path: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Write results as JSON (atomic; NaN as ``null``)."""
    return write_json(path, _json_safe(results))


def finetune_task(model_path: str, task: str, cfg: FinetuneConfig, *, data: str | None = None,
                  output_dir: str | None = None, init_from: str | None = None,
                  max_train_examples: int | None = None, max_eval_examples: int | None = None,
                  save: bool = True) -> dict:
    """Fine-tune ``model_path`` (or ``init_from``'s encoder) on ``task`` and score it on the dev split(s).

    Args:
        model_path: A pre-trained model folder or hub name (ModernAlbert or any Hugging Face encoder; a
            classifier folder for the same labels continues training).
        task: A task name (:data:`TASKS`).
        cfg: Hyper-parameters (``cfg.seed`` seeds the new head, shuffling and dropout).
        data: See the module notes.
        output_dir: When given: the fine-tuned model and tokenizer go to ``output_dir/model`` and the results to
            ``output_dir/results.json``.
        init_from: Start from this fine-tuned folder's encoder with a new head (sizes of the old classifier are
            ignored), e.g. the MNLI model for RTE, MRPC and STS-B (the ModernBERT protocol). Its tokenizer is used.
        max_train_examples: Train on a fixed subsample of this many examples (``None``: all).
        max_eval_examples: Score a fixed subsample of each dev split (``None``: all).
        save: Save the model into ``output_dir/model`` (``False``: results only).

    Returns:
        ``{"task", "model", "init_from", "seed", "config", "metrics": {split: {metric: value}}, "main_score",
        "baselines", "history", "model_dir", "train_examples", "eval_examples", "steps", "seconds", "stand_in",
        "description"}``.

    Raises:
        ValueError: Unknown task, label mismatch with the model folder, bad or empty data.
        FileNotFoundError: Missing model or data.
    """
    spec = get_task(task)
    start = time.perf_counter()
    source = init_from or model_path
    if not init_from:
        check_model_labels(source, spec, fine_tuned=False)
    try:
        tokenizer = load_tokenizer(source)
    except ValueError:
        if not init_from:
            raise
        tokenizer = load_tokenizer(model_path)  # an init_from folder saved without its tokenizer
    pad_token_id(tokenizer)  # a tokenizer that cannot pad fails now, not after the data is read
    train = subsample(load_split(spec, "train", data), max_train_examples)
    devs = {s: subsample(load_split(spec, s, data), max_eval_examples) for s in spec.dev_splits}
    train_features = encode(train, tokenizer, cfg.max_length)
    dev_features = {s: encode(ex, tokenizer, cfg.max_length) for s, ex in devs.items()}
    set_seed(cfg.seed)  # the new head's initialisation
    extra = {"ignore_mismatched_sizes": True} if init_from else {}
    model = load_model(source, "sequence-classification", **_head_kwargs(spec), **extra)
    if init_from:
        new_classifier(model, cfg.seed)
    model.config.finetuning_task = spec.name  # saved with the model: what its head was trained for
    history = finetune(model, train_features, cfg, tokenizer=tokenizer, desc=f"{spec.name} seed {cfg.seed}")
    metrics = {s: _score(model, spec, feats, batch_size=cfg.eval_batch_size, tokenizer=tokenizer,
                         precision=cfg.precision, desc=f"{spec.name} {s}") for s, feats in dev_features.items()}
    model_dir = None
    if output_dir is not None and save:
        model_dir = str(save_model(model, tokenizer, Path(output_dir) / "model"))
    result = {
        "task": spec.name,
        "description": spec.description,
        "stand_in": spec.stand_in,
        "model": str(model_path),
        "init_from": None if init_from is None else str(init_from),
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "metrics": metrics,
        "main_score": main_score(metrics),
        "baselines": {} if spec.is_regression else
        {s: majority_baseline(spec, [e["label"] for e in ex]) for s, ex in devs.items()},
        "history": history.records,
        "steps": history.steps,
        "model_dir": model_dir,
        "train_examples": len(train),
        "eval_examples": {s: len(ex) for s, ex in devs.items()},
        "seconds": time.perf_counter() - start,
    }
    if output_dir is not None:
        write_results(Path(output_dir) / "results.json", result)
    return result


def evaluate_task(model_path: str, task: str, *, data: str | None = None, split: str | None = None,
                  batch_size: int = 128, max_length: int = 128, max_examples: int | None = None) -> dict:
    """Score a fine-tuned classifier folder on ``task``.

    Args:
        model_path: A folder saved by :func:`finetune_task` (or any sequence classifier for the task's labels).
        task: A task name.
        data: See the module notes.
        split: One split (``validation``, MNLI ``validation_matched`` …, ``test`` for ``rt-sentiment``);
            ``None``: the dev split(s).
        batch_size: Examples per prediction batch.
        max_length: Token limit per example.
        max_examples: Score a fixed subsample of this many examples per split (``None``: all).

    Returns:
        ``{"task", "model", "metrics": {split: {metric: value}}, "main_score", "baselines", "examples",
        "seconds", "stand_in", "description"}``.

    Raises:
        ValueError: Unknown task or split, a folder that is not a classifier for the task's labels, bad data.
    """
    spec = get_task(task)
    start = time.perf_counter()
    splits = spec.dev_splits if split is None else (resolve_split(spec, split),)
    check_model_labels(model_path, spec, fine_tuned=True)
    tokenizer = load_tokenizer(model_path)
    pad_token_id(tokenizer)
    examples = {s: subsample(load_split(spec, s, data), max_examples) for s in splits}
    model = load_model(model_path, "sequence-classification").eval()
    metrics = {s: _score(model, spec, encode(ex, tokenizer, max_length), batch_size=batch_size, tokenizer=tokenizer,
                         precision="auto", desc=f"{spec.name} {s}") for s, ex in examples.items()}
    return {
        "task": spec.name,
        "description": spec.description,
        "stand_in": spec.stand_in,
        "model": str(model_path),
        "metrics": metrics,
        "main_score": main_score(metrics),
        "baselines": {} if spec.is_regression else
        {s: majority_baseline(spec, [e["label"] for e in ex]) for s, ex in examples.items()},
        "examples": {s: len(ex) for s, ex in examples.items()},
        "seconds": time.perf_counter() - start,
    }


def _aggregate(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    metrics: dict[str, dict[str, Any]] = {}
    for split, values in runs[0]["metrics"].items():
        metrics[split] = {}
        for name in values:
            vals = [r["metrics"][split][name] for r in runs]
            mean, std = mean_std(vals)
            metrics[split][name] = {"mean": mean, "std": std, "values": vals}
    vals = [r["main_score"] for r in runs]
    mean, std = mean_std(vals)
    return metrics, {"mean": mean, "std": std, "values": vals}


def run_seeds(model_path: str, task: str, cfg: FinetuneConfig, seeds: list[int], **kw: Any) -> dict:
    """Fine-tune once per seed and aggregate (mean and sample standard deviation of every metric).

    Args:
        model_path: As :func:`finetune_task`.
        task: A task name.
        cfg: Hyper-parameters (its ``seed`` is replaced by each of ``seeds``).
        seeds: Training seeds (the data split never depends on them).
        **kw: Passed to :func:`finetune_task` (``data``, ``init_from``, ``max_train_examples`` …); with
            ``output_dir``, seed ``s`` writes into ``output_dir/seed-s`` and the summary into
            ``output_dir/results.json``.

    Returns:
        ``{"task", "model", "config", "seeds", "metrics": {split: {metric: {"mean", "std", "values"}}},
        "main_score": {"mean", "std", "values"}, "runs": [finetune_task results]}``.
    """
    if not seeds:
        raise ValueError("run_seeds needs at least one seed (e.g. seeds=[0, 1, 2]).")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"Seeds repeat in {seeds}: give distinct seeds.")
    output_dir = kw.pop("output_dir", None)
    runs = []
    for seed in seeds:
        out = None if output_dir is None else str(Path(output_dir) / f"seed-{seed}")
        runs.append(finetune_task(model_path, task, dataclasses.replace(cfg, seed=seed), output_dir=out, **kw))
    metrics, score = _aggregate(runs)
    config = cfg.to_dict()
    config.pop("seed")
    result = {"task": runs[0]["task"], "description": runs[0]["description"], "stand_in": runs[0]["stand_in"],
              "model": str(model_path), "init_from": runs[0]["init_from"], "config": config, "seeds": list(seeds),
              "metrics": metrics, "main_score": score, "baselines": runs[0]["baselines"], "runs": runs}
    if output_dir is not None:
        write_results(Path(output_dir) / "results.json", result)
    return result


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """Parse ``["learning_rate=1e-5,3e-5", "batch_size=16,32"]`` into ``{name: [values]}`` (FinetuneConfig fields).

    Raises:
        ValueError: Malformed item, unknown field, ``seed`` (use seeds), a value of the wrong type.
    """
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not values.strip():
            raise ValueError(f"Grid item {item!r} is not NAME=V1,V2 (e.g. learning_rate=1e-5,3e-5).")
        if name == "seed":
            raise ValueError("Seeds are not a grid axis: give them with --seeds (every grid point runs every seed).")
        if name not in fields:
            raise ValueError(f"Unknown grid field {name!r}: use FinetuneConfig fields "
                             f"{sorted(n for n in fields if n != 'seed')}.")
        kind = field_kind(FinetuneConfig, name)[0]
        parsed = []
        for raw in values.split(","):
            raw = raw.strip()
            try:
                if kind is int:
                    number = float(raw)
                    if not number.is_integer():
                        raise ValueError(raw)
                    value: Any = int(number)
                else:
                    value = kind(raw)
                FinetuneConfig(**{name: value})  # range checks now, not after hours of training
            except ValueError:
                raise ValueError(f"Grid item {item!r}: {raw!r} is not a valid {kind.__name__} value for "
                                 f"{name}.") from None
            parsed.append(value)
        if name in grid:
            raise ValueError(f"Grid field {name!r} is given twice.")
        grid[name] = parsed
    return grid


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values (the empty grid gives one point: no change)."""
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def run_grid(model_path: str, task: str, cfg: FinetuneConfig, grid: dict[str, list[Any]], seeds: list[int],
             **kw: Any) -> dict:
    """:func:`run_seeds` for every grid point; the best is the one with the highest mean main score (NaN last).

    With ``output_dir`` in ``kw``, grid point ``i`` writes into ``output_dir/config-i``.

    Returns:
        ``{"task", "model", "grid", "seeds", "configs": [{"params", **run_seeds result}], "best": index,
        "best_params"}``.
    """
    output_dir = kw.pop("output_dir", None)
    configs = []
    points = grid_points(grid)
    for i, params in enumerate(points):
        out = None if output_dir is None else str(Path(output_dir) / (f"config-{i}" if len(points) > 1 else ""))
        point_cfg = dataclasses.replace(cfg, **params)
        configs.append({"params": params, **run_seeds(model_path, task, point_cfg, seeds, output_dir=out, **kw)})

    def key(i: int) -> float:
        v = configs[i]["main_score"]["mean"]
        return -math.inf if math.isnan(v) else v

    best = max(range(len(configs)), key=key)
    return {"task": configs[0]["task"], "model": str(model_path), "grid": grid, "seeds": list(seeds),
            "configs": configs, "best": best, "best_params": configs[best]["params"]}


__all__ = ["check_model_labels", "evaluate_task", "finetune_task", "grid_points", "new_classifier", "parse_grid",
           "run_grid", "run_seeds", "write_results"]
