"""The recovery study: how much of the cost of parameter sharing does each variant recover?
(``modernalbert experiment recovery RECIPE``)

The paper's claim is that MoL "restores the expressivity lost under parameter sharing", better than RRT and MoA. A
study can only decide that where sharing costs something. This one builds that regime with the paper's own
pipeline at CPU scale:

1. **A full-parameter reference in our own architecture** (:mod:`~.reference`): a G = 1 ModernAlbert (ModernBERT's
   structure: one block per layer) initialised from and distilled from the packaged all-MiniLM-L6-v2 on packaged
   text until its held-out losses flatten, built by the pretraining machinery from a pretraining recipe
   (``recipes/recovery-reference.yaml``), cached and resumable; its training curve, the flatness of its held-out
   losses and how distinct its layers are go into the report.
2. **Recursive students from it** by the distillation-based init (:func:`~modernalbert.distill.init_from_teacher`:
   each group is its chunk of reference layers, averaged; the ALBERT-style model's wider FFN widened without changing
   its function; RRT's LoRAs from the truncated SVD of each layer's residual,
   :func:`~modernalbert.distill.rrt_svd_init`), then MLM + hidden-state KD to the reference, one token budget for
   all: ALBERT-style, RRT, MoA, MoL with each mixing rule, and the reference itself trained the same way (the upper
   bound). Unique-parameter budgets matched as in the ablation (:mod:`modernalbert.experiments.ablation`).
3. **Measures** on held-out text (:mod:`~.measures`): hidden-state distance to the reference per layer and final,
   MLM loss, out-of-domain MLM loss, RT-sentiment accuracy after the same fine-tuning; for every variant (and every
   merged MoL variant) the fraction of the ALBERT-style -> reference gap it closes, over >= 3 seeds (:mod:`~.gap`).

The recipe names the **primary metric** before anything runs; the regime *discriminates* when the reference vs
ALBERT-style gap on it is at least ``min_discrimination`` (3) times the larger seed spread. The reference counts as
*flattened* when, against the next smaller reference budget in the ledger, its held-out MLM gained at most
``flat_within`` of that gap (:func:`~.report.reference_flat`); the report also shows how every variant's gap
fractions move between the reference budgets the ledger holds (:func:`~.report.reference_sensitivity`). Pilots
(``--pilot``: only the gap's two ends) record each setting's ratio in a ledger of attempts that the report shows.
Every run is recorded as it finishes and skipped on the next invocation (the ablation harness's resumability); the
reference resumes from its last checkpoint. Every choice here is ours, not the paper's.

Modules: :mod:`~.recipe`, :mod:`~.reference`, :mod:`~.measures`, :mod:`~.gap`, :mod:`~.report`, :mod:`~.plots`,
:mod:`~.study`.
"""

from .gap import Gap, gap_fraction, measure_gap, seed_fractions
from .measures import clean_inputs, hidden_distance
from .recipe import DISTANCE, RecoveryRecipe, RecoverySpec, recovery_metrics
from .reference import (
    ReferenceBuild,
    build_reference,
    flatness,
    layer_distinctness,
    load_reference_recipe,
    reference_curve,
    reference_ready,
)
from .report import (
    SUMMARY_FILE,
    attempt_record,
    build_summary,
    publish_report,
    reference_flat,
    reference_sensitivity,
    render,
    update_ledger,
)
from .study import RecoveryStudy, run_recovery

__all__ = [
    "DISTANCE",
    "SUMMARY_FILE",
    "Gap",
    "RecoveryRecipe",
    "RecoverySpec",
    "RecoveryStudy",
    "ReferenceBuild",
    "attempt_record",
    "build_reference",
    "build_summary",
    "clean_inputs",
    "flatness",
    "gap_fraction",
    "hidden_distance",
    "layer_distinctness",
    "load_reference_recipe",
    "measure_gap",
    "publish_report",
    "recovery_metrics",
    "reference_curve",
    "reference_flat",
    "reference_ready",
    "reference_sensitivity",
    "render",
    "run_recovery",
    "seed_fractions",
    "update_ledger",
]
