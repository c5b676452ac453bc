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
configuration (``--force`` starts over), and regenerates the report. Every choice here is ours, not the paper's.

Modules: :mod:`~.recipe` (the typed recipe), :mod:`~.budget` (budget solver), :mod:`~.statistics` (tie rule,
metrics), :mod:`~.measures` (MLM losses, adapter effect, routing), :mod:`~.speed`, :mod:`~.report`, :mod:`~.plots`,
:mod:`~.study` (running and resuming).
"""

from .budget import BudgetRow, budget_table, format_count, plan_budget, vocab_size
from .measures import adapter_effect, held_out_batches, mlm_loss, ood_batches, read_metrics, routing_ema
from .plots import figure
from .recipe import (
    INITS,
    MATCH_KNOBS,
    AblationRecipe,
    BudgetSpec,
    FinetuneSpec,
    MergeSpec,
    OODSpec,
    ReportSpec,
    SpeedSpec,
    VariantSpec,
    merge_name,
    merge_overrides,
    variant_overrides,
)
from .report import (
    READING_END,
    READING_START,
    comparison_rows,
    comparison_table,
    cost_table,
    extract_reading,
    merge_table,
    render_report,
    results_table,
    verdict_cell,
)
from .speed import measure_speed
from .statistics import (
    Comparison,
    Metric,
    compare,
    format_mean_std,
    metric_values,
    run_groups,
    run_key,
    study_metrics,
)
from .study import FORMAT, RESULTS_FILE, AblationStudy, elapsed, run_ablation, start_timer

__all__ = [
    "FORMAT",
    "INITS",
    "MATCH_KNOBS",
    "READING_END",
    "READING_START",
    "RESULTS_FILE",
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
    "adapter_effect",
    "budget_table",
    "compare",
    "comparison_rows",
    "comparison_table",
    "cost_table",
    "elapsed",
    "extract_reading",
    "figure",
    "format_count",
    "format_mean_std",
    "held_out_batches",
    "measure_speed",
    "merge_name",
    "merge_overrides",
    "merge_table",
    "metric_values",
    "mlm_loss",
    "ood_batches",
    "plan_budget",
    "read_metrics",
    "render_report",
    "results_table",
    "routing_ema",
    "run_ablation",
    "run_groups",
    "run_key",
    "start_timer",
    "study_metrics",
    "variant_overrides",
    "verdict_cell",
    "vocab_size",
]
