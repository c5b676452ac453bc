"""The full-parameter reference of the recovery study: a G = 1 ModernAlbert built (or resumed) by the pretraining
machinery from a pretraining recipe (``recipes/recovery-reference.yaml``), cached in that recipe's output folder, its
build cost recorded; and what the study reports about it: how distinct its layers are and how flat its held-out
losses have become.

``modernalbert pretrain RECIPE`` builds the same folder; the study builds it on demand (:func:`build_reference`),
resumes it from its last checkpoint when interrupted, and skips it once ``final/`` holds the model of that recipe.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...utils.io import write_json

COST_FILE = "build_cost.json"
# Matrices compared for layer distinctness (a ModernBERT-style block; norms are vectors and left out).
BLOCK_MATRICES = ("attn.Wqkv.weight", "attn.Wo.weight", "mlp.Wi.weight", "mlp.Wo.weight")


@dataclass
class ReferenceBuild:
    """A built reference: its pretraining recipe, final model folder and the build cost summed over invocations
    (``{"wall_s", "cpu_s", "steps"}``; ``steps`` trained while the cost was recorded)."""

    recipe: Any
    final_dir: Path
    built_now: bool
    cost: dict[str, float] = field(default_factory=dict)


def load_reference_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Any:
    """The reference's pretraining :class:`~modernalbert.training.recipe.Recipe`, checked to be a full-parameter
    model (``group_depth`` 1, plain GeGLU FFNs).

    Raises:
        FileNotFoundError: No such recipe.
        ValueError: An invalid recipe, or one whose model shares blocks or has adapters.
    """
    from ...model.configuration import ModernAlbertConfig
    from ...training.recipe import Recipe

    recipe = Recipe.load(path, list(overrides))
    cfg = ModernAlbertConfig.from_preset(recipe.model.preset, **recipe.model.overrides)
    if cfg.group_depth != 1 or any(v != "glu" for v in cfg.ffn_variants):
        raise ValueError(f"Reference recipe {path}: the reference must be a full-parameter model "
                         f"(group_depth: 1, plain GeGLU FFNs), got group_depth={cfg.group_depth}, "
                         f"ffn_variants={cfg.ffn_variants}.")
    return recipe


def reference_ready(recipe: Any) -> bool:
    """Whether ``OUTPUT_DIR/final`` holds the finished model of ``recipe``.

    Raises:
        ValueError: The folder holds a reference trained with another recipe.
    """
    out = Path(recipe.output_dir)
    recorded = out / "recipe.json"
    if recorded.is_file() and json.loads(recorded.read_text()) != json.loads(json.dumps(recipe.to_dict())):
        raise ValueError(f"{out} holds a reference trained with another recipe ({recorded} differs): delete the "
                         "folder, or give the reference recipe another output_dir.")
    return (out / "final" / "model.safetensors").is_file() and recorded.is_file()


def read_cost(output_dir: str | Path) -> dict[str, float]:
    """The recorded build cost of a reference folder (zeros when none was recorded)."""
    path = Path(output_dir) / COST_FILE
    return json.loads(path.read_text()) if path.is_file() else {"wall_s": 0.0, "cpu_s": 0.0, "steps": 0}


def build_reference(recipe: Any, log: Callable[[str], None] = print) -> ReferenceBuild:
    """Build the reference, resume it from its last checkpoint, or find it finished.

    The wall and CPU seconds of every invocation are added to ``OUTPUT_DIR/build_cost.json`` as training goes (every
    ``train.log_every`` steps), so an interrupted build still counts what it spent.

    Raises:
        ValueError: The output folder holds a reference trained with another recipe.
    """
    from ...training.trainer import pretrain

    out = Path(recipe.output_dir)
    if reference_ready(recipe):
        log(f"[recovery] reference: {out / 'final'} is built, skipped")
        return ReferenceBuild(recipe, out / "final", False, read_cost(out))
    log(f"[recovery] reference: building {out} ({recipe.train.steps} steps; resumes from its last checkpoint)")
    base = read_cost(out)
    start = (time.perf_counter(), time.process_time())
    first: list[int] = []

    def record(step: int, _losses: dict[str, float] | None = None) -> None:
        if not first:
            first.append(step - 1)
        if _losses is None or step % recipe.train.log_every == 0:
            write_json(out / COST_FILE, {"wall_s": round(base["wall_s"] + time.perf_counter() - start[0], 1),
                                         "cpu_s": round(base["cpu_s"] + time.process_time() - start[1], 1),
                                         "steps": int(base["steps"]) + step - first[0]})

    result = pretrain(recipe, on_step_end=record)
    if first:
        record(recipe.train.steps)  # the final save counted too
    return ReferenceBuild(recipe, Path(result.final_dir), True, read_cost(out))


def reference_curve(output_dir: str | Path) -> dict[str, list[list[float]]]:
    """The reference's training curve from its ``metrics.jsonl``: every logged (step, value) of the training MLM
    and hidden losses and of the held-out ``eval_*`` losses (a resumed run's repeated steps: the last wins)."""
    by_step: dict[int, dict[str, Any]] = {}
    path = Path(output_dir) / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        rec = json.loads(line)
        by_step.setdefault(int(rec["step"]), {}).update(rec)
    curves: dict[str, list[list[float]]] = {}
    for step, rec in sorted(by_step.items()):
        for key in ("mlm", "hidden", "eval_mlm", "eval_hidden"):
            if key in rec:
                curves.setdefault(key, []).append([step, float(rec[key])])
    return curves


def flatness(curve: Sequence[Sequence[float]], fraction: float = 0.25) -> float | None:
    """Relative change of a held-out curve over its last ``fraction`` of steps: ``(v_end - v_start) / v_start``
    between the evaluation nearest to ``(1 - fraction)`` of the last step and the last one (our measure of whether
    the losses have flattened; None with fewer than two evaluations)."""
    if len(curve) < 2:
        return None
    last_step = curve[-1][0]
    start = min(curve[:-1], key=lambda p: abs(p[0] - (1 - fraction) * last_step))
    return (curve[-1][1] - start[1]) / abs(start[1])


@torch.no_grad()
def layer_distinctness(model: Any, groups: int) -> list[dict[str, Any]]:
    """How much averaging each chunk of the reference's layers into one shared block loses: per layer j of the
    chunk that group g of a K-group student takes (:func:`~modernalbert.model.conversion.layer_chunks`), the
    relative distance ``||W_j - mean_chunk(W)||_F / ||W_j||_F`` of each block matrix (attention Wqkv and Wo, FFN
    Wi and Wo), and their mean. 0: identical layers (sharing loses nothing); about 0.71 for independent random
    matrices of one scale in a chunk of two.

    Args:
        model: The full-parameter reference (a G = 1 ModernAlbert model or head model).
        groups: K, the number of shared blocks of the students.

    Returns:
        One row per reference layer: ``{"layer", "group", "matrices": {name: distance}, "mean"}``.
    """
    from ...model.conversion import layer_chunks

    blocks = model.base_model.groups
    rows = []
    for g, chunk in enumerate(layer_chunks(len(blocks), groups)):
        params = [dict(blocks[j].named_parameters()) for j in chunk]
        means = {m: torch.stack([p[m].double() for p in params]).mean(0) for m in BLOCK_MATRICES}
        for j, p in zip(chunk, params):
            dist = {m: float((p[m].double() - means[m]).norm() / p[m].double().norm()) for m in BLOCK_MATRICES}
            rows.append({"layer": j, "group": g, "matrices": dist, "mean": sum(dist.values()) / len(dist)})
    return rows


__all__ = ["BLOCK_MATRICES", "COST_FILE", "ReferenceBuild", "build_reference", "flatness", "layer_distinctness",
           "load_reference_recipe", "read_cost", "reference_curve", "reference_ready"]
