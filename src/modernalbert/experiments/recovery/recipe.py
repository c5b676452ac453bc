"""The recovery recipe: an ablation recipe (:class:`~modernalbert.experiments.ablation.AblationRecipe`) whose
teacher is a full-parameter reference built by the study, plus the ``recovery`` section: the reference's pretraining
recipe, the primary metric (named before running), the two ends of the gap and the discrimination criterion."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ...utils.config import check_keys, from_mapping, load_yaml, typed_config
from ..ablation import AblationRecipe, Metric, study_metrics
from .reference import load_reference_recipe

DISTANCE = Metric("distance.final", "hidden distance to reference ↓", False, 1.0, 4)


@typed_config(prefix="recovery")
@dataclass
class RecoverySpec:
    """What makes an ablation a recovery study (every value our choice).

    Attributes:
        reference_recipe: The pretraining recipe (YAML) of the full-parameter reference; its ``final`` folder is
            every student's teacher, and it is built (or resumed) before the first run.
        reference_overrides: Dotted ``section.key=value`` overrides of that recipe.
        primary_metric: The metric the regime is judged on, named before running: ``held_out_mlm``,
            ``distance.final``, ``ood.<source>``, ``rt.validation`` or ``rt.<test split>``.
        lower: The variant at 0 of the gap (the ALBERT-style recursive model).
        upper: The variant at 1 of the gap (the reference trained the same way: the upper bound).
        min_discrimination: The smallest gap, in units of the larger seed spread, at which the regime counts as
            discriminating.
        summary_json: Where the machine-readable summary goes (besides ``OUTPUT_DIR/recovery.json``).
        attempts_json: The ledger of every setting tried (pilots and full studies) and its discrimination ratio.
        held_out_blocks: How many blocks of the reference corpus's held-out split every model is measured on (held-out
            MLM loss and hidden distance); 0: all of them.
        held_out_mask_seed: The seed of those blocks' MLM masks, the same for every variant and seed, so that a
            seed's spread is the training's and not the masks' (as the out-of-domain text is measured). None: each
            run's own seed, as the trainer's held-out evaluation (the ablation's measure).
        flat_within: When the reference counts as flattened: the largest held-out MLM gain (nats, on the study's
            held-out text) over the next smaller reference budget recorded in the ledger, as a fraction of the
            ALBERT-style -> reference gap on held-out MLM. 0.25: more reference training moves the reference by at
            most a quarter of the cost of sharing the study measures.
    """

    reference_recipe: str = "recipes/recovery-reference.yaml"
    reference_overrides: list[str] = field(default_factory=list)
    primary_metric: str = "held_out_mlm"
    lower: str = "albert"
    upper: str = "full"
    min_discrimination: float = 3.0
    summary_json: str | None = None
    attempts_json: str | None = None
    held_out_blocks: int = 0
    held_out_mask_seed: int | None = 0
    flat_within: float = 0.25

    def validate_held_out(self) -> None:
        if self.held_out_blocks < 0:
            raise ValueError(f"recovery.held_out_blocks={self.held_out_blocks!r} is invalid: expected a number of "
                             "blocks >= 0 (0: the whole held-out split).")

    def validate_flat_within(self) -> None:
        if not self.flat_within > 0:
            raise ValueError(f"recovery.flat_within={self.flat_within!r} is invalid: expected a fraction of the gap "
                             "> 0, e.g. 0.25.")

    def validate_ratio(self) -> None:
        if self.min_discrimination <= 0:
            raise ValueError(f"recovery.min_discrimination={self.min_discrimination!r} is invalid: expected a "
                             "number > 0, e.g. 3.")


def recovery_metrics(study: AblationRecipe) -> list[Metric]:
    """The study's metrics: held-out and out-of-domain MLM, hidden distance to the reference (final layer), RT
    accuracy (validation, test)."""
    base = study_metrics(study)
    mlm = [m for m in base if not m.key.startswith("rt.")]
    return [*mlm, DISTANCE, *[m for m in base if m.key.startswith("rt.")]]


@dataclass
class RecoveryRecipe:
    """A recovery study: ``study`` (the ablation recipe, its teacher the reference's final folder), ``recovery``
    (:class:`RecoverySpec`) and ``reference`` (the reference's pretraining recipe, loaded)."""

    study: AblationRecipe
    recovery: RecoverySpec
    reference: Any

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RecoveryRecipe:
        """Build and validate a recovery recipe from a nested mapping.

        Raises:
            ValueError: Fewer than 2 seeds, a missing or invalid ``recovery`` section, a ``teacher.name`` (the
                reference is the teacher), inits other than ``[distill]``, gap ends that are not variants, an
                ``upper`` that is not the exempt full-parameter model, a primary metric the study does not measure,
                or a student geometry of another depth or width than the reference's.
        """
        if not isinstance(values, dict):
            raise ValueError(f"A recovery recipe must be a mapping, got {type(values).__name__}.")
        values = copy.deepcopy(values)
        check_keys(values, [f.name for f in fields(AblationRecipe)] + ["recovery"],
                   "Unknown key(s) {keys} in recovery recipe (top level)")
        spec = from_mapping(RecoverySpec, values.pop("recovery", None),
                            unknown="Unknown key(s) {keys} in recovery recipe section 'recovery'", prefix="recovery")
        try:
            reference = load_reference_recipe(spec.reference_recipe, spec.reference_overrides)
        except (FileNotFoundError, ValueError) as e:  # say which field named the file
            raise type(e)(f"recovery.reference_recipe={spec.reference_recipe!r}: {e}") from e
        teacher = values.setdefault("teacher", {})
        if not isinstance(teacher, dict) or teacher.get("name"):
            raise ValueError("teacher.name is set by the study (the reference's final folder, from "
                             "recovery.reference_recipe): drop it; teacher may hold mapping and layer_assignment.")
        teacher["name"] = str(Path(reference.output_dir) / "final")
        values.setdefault("inits", ["distill"])
        study = AblationRecipe.from_dict(values)
        recipe = cls(study, spec, reference)
        recipe.validate()
        return recipe

    @classmethod
    def load(cls, path: str | os.PathLike, overrides: Sequence[str] | None = None) -> RecoveryRecipe:
        """Read a YAML recovery recipe with dotted ``key=value`` overrides (e.g. ``seeds=[0]``,
        ``pretrain.train.steps=20``, ``model.overrides.group_depth=3``, ``recovery.primary_metric=rt.test``).

        Raises:
            FileNotFoundError: No such recipe (or reference recipe).
            ValueError: Malformed YAML or override, unknown keys, invalid values.
        """
        return cls.from_dict(load_yaml(path, list(overrides or []), kind="Recovery recipe",
                                       example="pretrain.train.steps=20 or seeds=[0]"))

    def validate(self) -> None:
        """Cross-section checks (each section validated its own fields already)."""
        from ...model.configuration import ModernAlbertConfig

        study, spec = self.study, self.recovery
        if len(study.seeds) < 2:
            raise ValueError(f"seeds={study.seeds!r}: a recovery study needs at least 2 seeds (3 for the criterion to "
                             "mean much): the gap is judged against the seed spread, e.g. seeds=[0,1,2].")
        if study.inits != ["distill"]:
            raise ValueError(f"inits={study.inits!r} is invalid for a recovery study: every student is initialised "
                             "from the reference, inits must be [distill].")
        lower, upper = study.variant(spec.lower, "recovery.lower"), study.variant(spec.upper, "recovery.upper")
        if spec.lower == spec.upper:
            raise ValueError("recovery.lower and recovery.upper name the same variant: the gap would be empty.")
        if not upper.exempt or lower.exempt:
            raise ValueError(f"recovery.upper={spec.upper!r} must be the exempt full-parameter variant and "
                             f"recovery.lower={spec.lower!r} a budgeted recursive one.")
        keys = [m.key for m in recovery_metrics(study)]
        if spec.primary_metric not in keys:
            raise ValueError(f"recovery.primary_metric={spec.primary_metric!r} is not measured by this study: "
                             f"choose one of {keys}.")
        ref = ModernAlbertConfig.from_preset(self.reference.model.preset, **self.reference.model.overrides)
        for v in study.variants:
            cfg = ModernAlbertConfig.from_preset(study.model["preset"], **study.variant_overrides(v))
            if (cfg.num_hidden_layers, cfg.hidden_size) != (ref.num_hidden_layers, ref.hidden_size):
                raise ValueError(f"variants.{v.name}: {cfg.num_hidden_layers} layers of width {cfg.hidden_size}, "
                                 f"the reference {ref.num_hidden_layers} of width {ref.hidden_size}: students are "
                                 "compared with the reference layer by layer, so depth and width must match.")

    @property
    def primary(self) -> Metric:
        """The primary metric."""
        return next(m for m in recovery_metrics(self.study) if m.key == self.recovery.primary_metric)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a plain mapping (recorded in ``results.json``)."""
        return {**self.study.to_dict(), "recovery": asdict(self.recovery)}


__all__ = ["DISTANCE", "RecoveryRecipe", "RecoverySpec", "recovery_metrics"]
