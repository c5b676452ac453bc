"""Running (or resuming) a recovery study: the reference first (built, resumed or found), then every
(variant, seed) run through the ablation harness with the hidden-state distance to the reference measured on every
model, then the report, the machine-readable summary and the ledger of attempts.

A *pilot* (``pilot=True``) runs only the two ends of the gap, for every seed: enough to read the discrimination
ratio of a setting before paying for the whole study. Its runs are ordinary runs of the study (same fingerprints),
so a pilot of the final setting is the start of the full study.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..ablation import AblationStudy, VariantSpec
from .measures import hidden_distance
from .recipe import RecoveryRecipe
from .reference import build_reference, flatness, layer_distinctness, reference_curve


class RecoveryStudy(AblationStudy):
    """A recovery study (see :mod:`modernalbert.experiments.recovery`).

    Args:
        recipe: The study.
        pilot: Run only the gap's two variants (``recovery.lower`` and ``recovery.upper``).
        force: Delete earlier runs of this output folder and start over (the reference is kept: it is the
            reference recipe's own folder).
        log: Where progress lines go.
        recipe_path: The recipe file (shown in the regenerating command).
        overrides: The command-line overrides (shown in the regenerating command and recorded with the attempt).
    """

    def __init__(self, recipe: RecoveryRecipe, *, pilot: bool = False, force: bool = False,
                 log: Callable[[str], None] = print, recipe_path: str | None = None, overrides: Sequence[str] = ()):
        super().__init__(recipe.study, force=force, log=log, recipe_path=recipe_path, overrides=overrides)
        self.recovery = recipe
        self.pilot = pilot
        self._reference: Any = None

    # ------------------------------------------------------------------------------------------- steps
    def prepare(self) -> None:
        """Build (or resume, or find) the reference and record what the report says about it."""
        from ...model.configuration import ModernAlbertConfig
        from ...model.loading import load_pretrained

        self.results["recipe"] = self.recovery.to_dict()
        build = build_reference(self.recovery.reference, log=self.log)
        ref = self.recovery.reference
        curve = reference_curve(ref.output_dir)
        model = load_pretrained(build.final_dir)
        base = self.recipe.variant(self.recovery.recovery.lower)
        groups = ModernAlbertConfig.from_preset(self.recipe.model["preset"],
                                                **self.recipe.variant_overrides(base)).num_hidden_groups
        tr = ref.train
        self.results["reference"] = {
            "final_dir": str(build.final_dir), "recipe": ref.to_dict(), "cost": build.cost,
            "steps": tr.steps, "tokens": tr.steps * tr.batch_size * tr.grad_accum * ref.data.block_size,
            "curve": curve, "flatness": {k: flatness(curve[k]) for k in ("eval_mlm", "eval_hidden") if k in curve},
            "held_out_mlm": self._reference_held_out_mlm(model, build.final_dir, base),
            "distinctness": layer_distinctness(model, groups), "groups": groups}
        self._save()

    def _reference_held_out_mlm(self, model: Any, final_dir: Path, variant: VariantSpec) -> float:
        """The reference as built, measured as every student is (the same held-out blocks and masks): where the
        ``upper`` variant starts, and what references of other budgets are compared on."""
        from ...model.loading import load_tokenizer
        from ..ablation import mlm_loss

        run = self.recipe.run_recipe(variant, {}, self.recipe.inits[0], self.recipe.seeds[0], self.out)
        held = self.held_out(run, load_tokenizer(final_dir))
        return mlm_loss(model.eval(), held)

    def plan(self) -> list[tuple[VariantSpec, str, int]]:
        """Seed-major, the gap's two ends first in every seed; a pilot runs only those."""
        spec = self.recovery.recovery
        ends = [self.recipe.variant(spec.lower), self.recipe.variant(spec.upper)]
        rest = [] if self.pilot else [v for v in self.recipe.variants if v.name not in (spec.lower, spec.upper)]
        return [(v, init, seed) for seed in self.recipe.seeds for init in self.recipe.inits for v in ends + rest]

    def fingerprint_extra(self) -> Any:
        """The reference's recipe (a run depends on the model it starts from and is distilled to) and the held-out
        text it is measured on."""
        spec = self.recovery.recovery
        return {"reference": self.recovery.reference.to_dict(),
                "held_out": {"blocks": spec.held_out_blocks, "mask_seed": spec.held_out_mask_seed}}

    def held_out(self, recipe: Any, tokenizer: Any) -> list[dict[str, torch.Tensor]]:
        """``recovery.held_out_blocks`` held-out blocks with the masks of ``recovery.held_out_mask_seed``: with a
        fixed seed, the same masked text for every variant and seed."""
        from ..ablation import held_out_batches

        spec = self.recovery.recovery
        return held_out_batches(recipe, tokenizer, blocks=spec.held_out_blocks, mask_seed=spec.held_out_mask_seed)

    def measure_model(self, model: Any, held: list[dict[str, torch.Tensor]], tokenizer: Any, recipe: Any, *,
                      merged: bool = False) -> dict[str, Any]:
        """The ablation's measures plus the hidden-state distance to the reference on the held-out text."""
        out = super().measure_model(model, held, tokenizer, recipe, merged=merged)
        out["distance"] = hidden_distance(model, self.reference_model(next(model.parameters()).device), held)
        return out

    def reference_model(self, device: torch.device | str = "cpu") -> Any:
        """The frozen reference (loaded once)."""
        from ...model.loading import load_pretrained

        if self._reference is None:
            self._reference = load_pretrained(self.results["reference"]["final_dir"]).eval()
        return self._reference.to(device)

    # ------------------------------------------------------------------------------------------ report
    def write_report(self) -> Path:
        """Write ``recovery.md``, ``recovery.json`` and the plots into the output folder, record the attempt in the
        ledger, and (except for a pilot) publish the report and summary to ``report.results_md`` and
        ``recovery.summary_json``."""
        from .report import publish_report

        return publish_report(self)

    def command(self) -> str:
        """The command that regenerates this report."""
        if self.recipe.report.command:
            return self.recipe.report.command
        parts = ["modernalbert experiment recovery", self.recipe_path or "RECIPE", *self.overrides]
        return " ".join(parts + (["--pilot"] if self.pilot else []))


def run_recovery(recipe: RecoveryRecipe | str | os.PathLike, overrides: Sequence[str] = (), *,
                 output_dir: str | None = None, pilot: bool = False, force: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) a recovery study, or a pilot of one.

    Args:
        recipe: A :class:`RecoveryRecipe` or the path of a YAML recovery recipe.
        overrides: Dotted ``key=value`` overrides (with a path).
        output_dir: Replaces the recipe's ``output_dir``; the report, summary and ledger then stay in that folder
            (``report.results_md``, ``recovery.summary_json`` and ``recovery.attempts_json`` are not written: a study
            elsewhere must not replace the published one).
        pilot: Run only the gap's two variants and record the setting's discrimination ratio.
        force: Start over (delete the recorded runs of the output folder; the reference is kept).
        log: Where progress lines go.

    Returns:
        The results (also written to ``OUTPUT_DIR/results.json``).

    Raises:
        ValueError: An invalid recipe, a budget that cannot be met, a reference folder of another recipe, or
            recorded runs of another configuration.
    """
    path = None
    if not isinstance(recipe, RecoveryRecipe):
        path = str(recipe)
        recipe = RecoveryRecipe.load(recipe, list(overrides))
    if output_dir is not None:
        recipe.study.output_dir = str(output_dir)
        recipe.study.report.results_md = recipe.recovery.summary_json = recipe.recovery.attempts_json = None
    extra = [*overrides] + ([f"--output-dir {output_dir}"] if output_dir else [])
    return RecoveryStudy(recipe, pilot=pilot, force=force, log=log, recipe_path=path, overrides=extra).run()


__all__ = ["RecoveryStudy", "run_recovery"]
