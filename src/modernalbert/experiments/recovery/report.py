"""The recovery study's outputs: the machine-readable summary (``recovery.json``), the ledger of attempts, the
markdown report (``recovery.md``) and its plots."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...evaluation.common import markdown_table, mean_std
from ...utils.io import write_json, write_text
from ..ablation import (
    READING_END,
    READING_START,
    BudgetRow,
    Metric,
    budget_table,
    compare,
    comparison_table,
    cost_table,
    extract_reading,
    format_count,
    format_mean_std,
    merge_name,
    merge_table,
    metric_values,
    run_key,
    verdict_cell,
)
from .gap import measure_gap, seed_fractions
from .plots import plot_gap_fractions, plot_layer_distance, plot_reference_curve
from .recipe import RecoveryRecipe, recovery_metrics

SUMMARY_FILE = "recovery.json"
REPORT_FILE = "recovery.md"
READING_PLACEHOLDER = ("(Not written yet: say which of the paper's claims these numbers support, contradict or "
                       "cannot decide; differences within the spread are ties.)")


# ================================================================================================ summary


def _records(results: dict[str, Any], name: str, seeds: Sequence[int]) -> list[dict[str, Any]]:
    runs = results.get("runs", {})
    return [runs[k] for s in seeds if (k := run_key(name, "distill", s)) in runs]


def _by_seed(records: Sequence[dict[str, Any]], metric: Metric) -> dict[int, float]:
    return {int(r["seed"]): x for r in records if (x := metric.get(r)) is not None and math.isfinite(x)}


def _stats(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "std": None, "values": []}
    m, s = mean_std(values)
    return {"mean": m, "std": s, "values": list(values)}


def _entry(records: Sequence[dict[str, Any]], metrics: Sequence[Metric], ends: dict[str, dict[str, dict[int, float]]],
           gaps: dict[str, Any]) -> dict[str, Any]:
    """Every metric (mean, std, per-seed values) and its gap fraction for one set of per-seed records."""
    out: dict[str, Any] = {"seeds": [int(r["seed"]) for r in records], "metrics": {}, "gap_fraction": {}}
    for m in metrics:
        values = _by_seed(records, m)
        out["metrics"][m.key] = _stats(list(values.values()))
        if m.key in gaps and values:
            fr = seed_fractions(values, ends["lower"][m.key], ends["upper"][m.key])
            out["gap_fraction"][m.key] = {**_stats(fr), "resolved": gaps[m.key]["resolved"]}
    layers = [r["distance"]["layers"] for r in records if r.get("distance")]
    if layers:
        out["distance_layers"] = torch.tensor(layers, dtype=torch.float64).mean(0).tolist()
    return out


def build_summary(results: dict[str, Any], recipe: RecoveryRecipe, attempts: Sequence[dict[str, Any]] = (),
                  command: str = "") -> dict[str, Any]:
    """The machine-readable summary (``recovery.json``): per variant (and merged MoL variant) every metric's mean,
    std and per-seed values, its gap fraction, seeds, tokens and parameters; the gap per metric; the primary metric
    and its discrimination ratio; the reference; the attempts; the costs."""
    study, spec = recipe.study, recipe.recovery
    metrics = recovery_metrics(study)
    seeds = study.seeds
    lower, upper = _records(results, spec.lower, seeds), _records(results, spec.upper, seeds)
    ends = {"lower": {m.key: _by_seed(lower, m) for m in metrics},
            "upper": {m.key: _by_seed(upper, m) for m in metrics}}
    gaps: dict[str, Any] = {}
    for m in metrics:
        lo, up = list(ends["lower"][m.key].values()), list(ends["upper"][m.key].values())
        if len(lo) >= 2 and len(up) >= 2:
            gaps[m.key] = measure_gap(lo, up).__dict__
    budget = {r["name"]: r for r in results.get("budget", [])}
    variants, merged = {}, {}
    for v in study.variants:
        recs = _records(results, v.name, seeds)
        if not recs:
            continue
        b = budget.get(v.name, {})
        variants[v.name] = {"label": v.label, "init": "distill: from the reference (init_from_teacher)",
                            "tokens": study.tokens_per_run, "unique_parameters": b.get("unique"),
                            "unique_non_embedding": b.get("non_embedding"), "effective_parameters": b.get("effective"),
                            "knob": {b["knob"]: b["knob_value"]} if b.get("knob") else None,
                            **_entry(recs, metrics, ends, gaps)}
        for option in study.merge.options:
            name = merge_name(option)
            mrecs = [{**r["merged"][name], "seed": r["seed"]} for r in recs if name in r.get("merged", {})]
            if mrecs:
                merged[f"{v.name}+{name}"] = {"label": f"{v.label}, merged ({name})", "variant": v.name, "merge": name,
                                              "tokens": study.tokens_per_run,
                                              "parameters_after": mrecs[0].get("parameters"),
                                              **_entry(mrecs, metrics, ends, gaps)}
    primary = recipe.primary
    disc = gaps.get(primary.key, {}).get("discrimination")
    # the reference must be better than the ALBERT-style model, not just far from it
    upper_better = None if disc is None else (gaps[primary.key]["gap"] > 0) == primary.higher_is_better
    ref = results.get("reference", {})
    runs = results.get("runs", {}).values()
    run_cost = {"runs": len(results.get("runs", {})), "wall_s": sum(r["cost"]["total"]["wall_s"] for r in runs),
                "cpu_s": sum(r["cost"]["total"]["cpu_s"] for r in runs)}
    ref_cost = ref.get("cost", {})
    return {
        "title": study.report.title, "command": command,
        "primary_metric": {"key": primary.key, "label": primary.label, "higher_is_better": primary.higher_is_better},
        "discrimination": None if disc is None else (disc if math.isfinite(disc) else "inf"),
        "min_discrimination": spec.min_discrimination,
        "upper_better": upper_better,
        "discriminates": None if disc is None else bool(upper_better and disc >= spec.min_discrimination),
        "gap_ends": {"lower": spec.lower, "upper": spec.upper}, "gap": gaps,
        "seeds": list(seeds), "tokens_per_run": study.tokens_per_run, "tie_rule": "|Δ mean| <= max(std): tie",
        "reference": {"recipe": spec.reference_recipe, "final_dir": ref.get("final_dir"), "steps": ref.get("steps"),
                      "tokens": ref.get("tokens"), "held_out_mlm": ref.get("held_out_mlm"),
                      "flatness": ref.get("flatness"), "cost": ref_cost,
                      "distinctness": [{"layer": d["layer"], "group": d["group"], "mean": d["mean"]}
                                       for d in ref.get("distinctness", [])]},
        "variants": variants, "merged": merged, "attempts": list(attempts),
        "cost": {"reference": ref_cost, "runs": run_cost,
                 "total": {"wall_s": ref_cost.get("wall_s", 0.0) + run_cost["wall_s"],
                           "cpu_s": ref_cost.get("cpu_s", 0.0) + run_cost["cpu_s"]}},
    }


# ================================================================================================ attempts


def attempt_record(summary: dict[str, Any], recipe: RecoveryRecipe, overrides: Sequence[str], pilot: bool,
                   results: dict[str, Any]) -> dict[str, Any] | None:
    """The ledger entry of this setting (None until the gap's two ends have at least two seeds each)."""
    from ...model.configuration import ModernAlbertConfig

    study, spec = recipe.study, recipe.recovery
    gap = summary["gap"].get(spec.primary_metric)
    if gap is None:
        return None
    cfg = ModernAlbertConfig.from_preset(study.model["preset"], **study.variant_overrides(study.variant(spec.lower)))
    tr = study.pretrain.get("train", {})
    ends = [r for r in results.get("runs", {}).values() if r["variant"] in (spec.lower, spec.upper)]
    return {"output_dir": study.output_dir, "kind": "pilot" if pilot else "study",
            "overrides": [o for o in overrides if not o.startswith("--")],
            "layers": cfg.num_hidden_layers, "group_depth": cfg.group_depth, "groups": cfg.num_hidden_groups,
            "steps": tr.get("steps"), "tokens_per_run": study.tokens_per_run, "seeds": list(study.seeds),
            "held_out": {"blocks": spec.held_out_blocks or "all", "mask_seed": spec.held_out_mask_seed},
            "primary_metric": spec.primary_metric, "lower": gap["lower"], "upper": gap["upper"], "gap": gap["gap"],
            "spread": gap["spread"], "discrimination": summary["discrimination"],
            "passes": bool(summary["discriminates"]),
            "reference": {k: summary["reference"].get(k) for k in ("steps", "tokens", "held_out_mlm")}
            | {"flatness": (summary["reference"].get("flatness") or {}).get("eval_mlm")},
            "gap_fractions": gap_fractions_of(summary),
            "cost": {"runs": len(ends), "wall_s": round(sum(r["cost"]["total"]["wall_s"] for r in ends), 1),
                     "cpu_s": round(sum(r["cost"]["total"]["cpu_s"] for r in ends), 1)}}


def gap_fractions_of(summary: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per variant and merged variant (``"mol+router-deltas-fold"``), per metric: the gap fraction's mean, std and
    whether that metric's gap is resolved; what the ledger keeps to compare studies anchored on other references."""
    entries = {**summary.get("variants", {}), **summary.get("merged", {})}
    return {name: {k: {"mean": fr["mean"], "std": fr["std"], "resolved": fr["resolved"]}
                   for k, fr in e.get("gap_fraction", {}).items() if fr.get("mean") is not None}
            for name, e in entries.items()}


def update_ledger(path: str | os.PathLike, record: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Read the ledger of attempts, replace (or append) the entry of ``record``'s setting (output folder, overrides,
    seeds and tokens), write it back; returns the entries."""
    path = Path(path)
    entries = json.loads(path.read_text()) if path.is_file() else []
    if record is not None:
        entries = [e for e in entries if _setting(e) != _setting(record)]
        entries.append(record)
        write_json(path, entries)
    return entries


def _setting(entry: dict[str, Any]) -> tuple[str, ...]:
    """What makes two ledger entries the same setting: the students' (folder, overrides, seeds, tokens, sharing,
    held-out text) and the reference's budget."""
    keys = ("output_dir", "overrides", "seeds", "tokens_per_run", "group_depth", "held_out")
    return (*(str(entry.get(k)) for k in keys), str((entry.get("reference") or {}).get("tokens")))


# Overrides that choose where a study runs or which reference it is anchored on, not how its students train.
ANCHOR_OVERRIDES = ("output_dir=", "recovery.reference_overrides=")
# Ledger fields two attempts share when their references are compared for flatness (the held-out text they are
# measured on, and the students they anchor) ...
REFERENCE_FIELDS = ("group_depth", "tokens_per_run", "held_out")
# ... and when their students' gap fractions are compared across references (the same students, trained the same way).
STUDENT_FIELDS = (*REFERENCE_FIELDS, "kind", "seeds", "overrides")


def _same(a: dict[str, Any], b: dict[str, Any], fields: Sequence[str]) -> bool:
    """Whether two ledger entries agree on ``fields`` (``overrides`` compared without :data:`ANCHOR_OVERRIDES`)."""
    def value(entry: dict[str, Any], k: str) -> str:
        if k == "overrides":
            return str([o for o in entry.get(k) or [] if not o.startswith(ANCHOR_OVERRIDES)])
        return str(entry.get(k))

    return all(value(a, k) == value(b, k) for k in fields)


def reference_flat(record: dict[str, Any] | None, attempts: Sequence[dict[str, Any]], mlm_gap: float | None,
                   within: float) -> dict[str, Any]:
    """Whether the reference's held-out losses have flattened: the held-out MLM (the study's held-out text) of this
    attempt's reference (``record``, from :func:`attempt_record`) against the reference of the next smaller budget
    in the ledger for the same students' setting (sharing, tokens per run, held-out text), the gain compared with
    ``within`` x ``mlm_gap``, the ALBERT-style -> reference gap on held-out MLM.

    Returns:
        ``{"flat": bool | None, "gain", "allowed", "within", "previous": {"steps", "tokens", "held_out_mlm"}}``;
        ``flat`` is None, with a ``reason``, when it cannot be judged (no gap yet, or no smaller budget recorded).
    """
    ref = (record or {}).get("reference") or {}
    if ref.get("held_out_mlm") is None or mlm_gap is None:
        return {"flat": None, "reason": "no gap yet"}
    smaller = [(a.get("reference") or {}) for a in attempts if _same(a, record, REFERENCE_FIELDS)]
    smaller = [r for r in smaller if r.get("held_out_mlm") is not None and r["tokens"] < ref["tokens"]]
    if not smaller:
        return {"flat": None, "reason": "no smaller reference budget recorded for this setting"}
    prev = max(smaller, key=lambda r: r["tokens"])
    gain, allowed = prev["held_out_mlm"] - ref["held_out_mlm"], within * abs(mlm_gap)
    return {"flat": bool(gain <= allowed), "gain": gain, "allowed": allowed, "within": within,
            "previous": {k: prev.get(k) for k in ("steps", "tokens", "held_out_mlm")}}


def reference_sensitivity(record: dict[str, Any] | None, attempts: Sequence[dict[str, Any]],
                          metric_keys: Sequence[str]) -> dict[str, Any]:
    """How each variant's gap fractions move with the reference's budget.

    The studies compared are the ledger entries of this attempt's students' setting (kind, sharing, tokens per run,
    seeds, held-out text, and the overrides other than ``output_dir`` and ``recovery.reference_overrides``) that
    recorded gap fractions, one per reference budget in tokens (of two at the same budget, the later entry),
    smallest first. A variant's fraction *moves* when the first and the last budget that measured it with a
    resolved gap differ by more than the larger of their per-seed stds (the tie rule applied to fractions: a
    statement about the fractions, not one of the report's verdicts, which compare raw values).

    Args:
        record: This attempt's ledger entry (:func:`attempt_record`); None compares nothing.
        attempts: The ledger's entries.
        metric_keys: The metrics to compare (the report passes those whose gap is resolved in this attempt).

    Returns:
        ``{"steps": [reference steps, ...], "tokens": [reference tokens, ...], "variants": {name: {metric:
        {"fractions": [{"mean", "std"} | None, ...], "resolved": [bool | None, ...], "moves": bool | None}}}}``,
        one list item per budget; ``moves`` is None with fewer than two resolved budgets.
    """
    by_tokens: dict[int, dict[str, Any]] = {}
    for a in attempts:
        ref = a.get("reference") or {}
        if (record is not None and _same(a, record, STUDENT_FIELDS) and a.get("gap_fractions")
                and ref.get("tokens") is not None):
            by_tokens[ref["tokens"]] = a
    studies = [by_tokens[t] for t in sorted(by_tokens)]
    names = list(dict.fromkeys(n for a in studies for n in a["gap_fractions"]))
    variants: dict[str, Any] = {}
    for name in names:
        variants[name] = {}
        for key in metric_keys:
            cells = [a["gap_fractions"].get(name, {}).get(key) for a in studies]
            measured = [c for c in cells if c is not None and c.get("resolved")]
            moves = None
            if len(measured) >= 2:
                first, last = measured[0], measured[-1]
                moves = abs(last["mean"] - first["mean"]) > max(first["std"], last["std"])
            variants[name][key] = {"fractions": [None if c is None else {"mean": c["mean"], "std": c["std"]}
                                                 for c in cells],
                                   "resolved": [None if c is None else c.get("resolved") for c in cells],
                                   "moves": moves}
    return {"steps": [(a["reference"] or {}).get("steps") for a in studies],
            "tokens": [a["reference"]["tokens"] for a in studies], "variants": variants}


# ================================================================================================ markdown


def _cell(stats: dict[str, Any] | None, metric: Metric) -> str:
    if not stats or stats.get("mean") is None:
        return "—"
    return format_mean_std(stats["values"], metric.scale, metric.digits)


def _fraction_cell(fr: dict[str, Any] | None) -> str:
    if not fr or fr.get("mean") is None:
        return "—"
    text = format_mean_std(fr["values"], 1.0, 2)
    return text if fr.get("resolved") else f"({text}: gap within spread)"


def gap_table(summary: dict[str, Any], metrics: Sequence[Metric], merged: bool = False) -> str:
    """Per variant: every metric's gap fraction (mean ± std over seeds; 0 = ALBERT-style, 1 = reference)."""
    entries = summary["merged" if merged else "variants"]
    rows = [[e["label"], len(e["seeds"]), *[_fraction_cell(e["gap_fraction"].get(m.key)) for m in metrics]]
            for e in entries.values()]
    return markdown_table(["model", "n", *[f"{m.label.rstrip(' ↓↑')} gap closed" for m in metrics]], rows)


def metric_table(summary: dict[str, Any], metrics: Sequence[Metric]) -> str:
    """Per variant: parameters and every metric as mean ± std over seeds."""
    rows = []
    for e in summary["variants"].values():
        params = format_count(e["unique_non_embedding"]) if e.get("unique_non_embedding") else "—"
        rows.append([e["label"], len(e["seeds"]), params, *[_cell(e["metrics"].get(m.key), m) for m in metrics]])
    return markdown_table(["variant", "n", "unique w/o emb.", *[m.label for m in metrics]], rows)


def layer_table(summary: dict[str, Any]) -> str:
    """Per variant: the hidden distance to the reference at every effective layer (mean over seeds)."""
    rows = [[e["label"], *[f"{x:.4f}" for x in e["distance_layers"]]]
            for e in summary["variants"].values() if e.get("distance_layers")]
    if not rows:
        return ""
    return markdown_table(["variant", *[f"layer {i + 1}" for i in range(len(rows[0]) - 1)]], rows)


def end_verdicts(results: dict[str, Any], recipe: RecoveryRecipe, metrics: Sequence[Metric]) -> str:
    """Every variant against the two ends of the gap, with the tie rule, per metric."""
    study, spec = recipe.study, recipe.recovery
    ends = {n: _records(results, n, study.seeds) for n in (spec.lower, spec.upper)}
    rows = []
    for v in study.variants:
        recs = _records(results, v.name, study.seeds)
        for end in (spec.lower, spec.upper):
            if v.name == end or (v.name == spec.lower and end == spec.upper) or not recs or not ends[end]:
                continue  # no end against itself; the lower end against the upper is shown the other way round
            cells = []
            for m in metrics:
                a, b = metric_values(recs, m), metric_values(ends[end], m)
                cells.append(verdict_cell(compare(a, b, m.higher_is_better), m, "variant") if a and b else "—")
            rows.append([f"{v.label} vs {study.variant(end).label}", *cells])
    return markdown_table(["comparison (Δ = variant − other)", *[m.label for m in metrics]], rows)


def attempts_table(attempts: Sequence[dict[str, Any]]) -> str:
    """Every setting tried, with its gap on the primary metric and its discrimination ratio."""
    rows = []
    for a in attempts:
        setting = ", ".join(a.get("overrides") or []) or "the recipe as written"
        held = a.get("held_out") or {}
        masks = "each run's seed" if held.get("mask_seed") is None else f"seed {held['mask_seed']} for every run"
        measured = f"{held.get('blocks', '?')} blocks, masks of {masks}"
        ratio = a["discrimination"]
        ref_steps = (a.get("reference") or {}).get("steps")
        rows.append([a["kind"], f"`{a['output_dir']}`", setting, "—" if ref_steps is None else ref_steps,
                     f"L = {a['layers']}, G = {a['group_depth']}, K = "
                     f"{a['groups']}", f"{a['steps']} / {a['tokens_per_run']:,}", len(a["seeds"]),
                     measured, f"{a['primary_metric']}: {a['lower']:.3f} → {a['upper']:.3f}", f"{a['gap']:+.3f}",
                     f"{a['spread']:.3f}", ratio if isinstance(ratio, str) else f"{ratio:.1f}",
                     "yes" if a["passes"] else "no", f"{a['cost']['wall_s'] / 60:.0f} / {a['cost']['cpu_s'] / 60:.0f}"])
    return markdown_table(["kind", "output", "overrides", "reference steps", "sharing", "steps / tokens per run",
                           "seeds", "held-out text measured", "lower → upper (mean)", "gap", "larger std",
                           "discrimination", "≥ criterion", "gap runs' min (wall / CPU)"], rows)


def _reference_lines(summary: dict[str, Any], results: dict[str, Any], recipe: RecoveryRecipe,
                     images: dict[str, str | None]) -> list[str]:
    ref = results.get("reference", {})
    r = ref.get("recipe", {})
    tr, data, dist = r.get("train", {}), r.get("data", {}), r.get("distill", {})
    flat = ref.get("flatness", {})
    lines = ["### The full-parameter reference", "",
             f"`{recipe.recovery.reference_recipe}` (built by `modernalbert pretrain "
             f"{recipe.recovery.reference_recipe}` or on demand by this command; cached in `{r.get('output_dir')}`): "
             f"preset `{r.get('model', {}).get('preset')}` with `{json.dumps(r.get('model', {}).get('overrides'))}` "
             f"(G = 1: one block per layer, nothing shared), initialised from and distilled from "
             f"`{r.get('teacher', {}).get('name')}` on `{json.dumps(data.get('corpus'))}`: {tr.get('steps')} steps × "
             f"batch {tr.get('batch_size')} × block {data.get('block_size')} = {ref.get('tokens', 0):,} tokens, loss "
             f"weights MLM {dist.get('mlm_weight')}, hidden ({dist.get('hidden_loss')}) {dist.get('hidden_weight')}. "
             f"Built in {ref.get('cost', {}).get('wall_s', 0) / 60:.1f} min wall, "
             f"{ref.get('cost', {}).get('cpu_s', 0) / 60:.1f} min CPU.", ""]
    if images.get("reference"):
        lines += [f"![reference training curve]({images['reference']})", "",
                  "Training (lines) and held-out (markers) losses of the reference: MLM (left) and hidden-state "
                  "cosine distance to the MiniLM teacher (right).", ""]
    if flat:
        lines += ["*Within the run*: relative change of the held-out losses over the last quarter of training: "
                  + ", ".join(f"{k.removeprefix('eval_')} {100 * v:+.1f} %" for k, v in flat.items() if v is not None)
                  + " (the schedule decays the learning rate to 0 over its last "
                  f"{r.get('optim', {}).get('decay_steps')} steps, and the loss falls most as it does).", ""]
    lines += _flat_lines(summary, results, recipe)
    lines += sensitivity_lines(summary, recipe)
    dist_rows = ref.get("distinctness", [])
    if dist_rows:
        rows = [[d["layer"], d["group"], *[f"{x:.3f}" for x in d["matrices"].values()], f"{d['mean']:.3f}"]
                for d in dist_rows]
        names = list(dist_rows[0]["matrices"])
        lines += ["*Distinct layers*: what averaging each student group's chunk of reference layers loses, "
                  "‖W_j − mean_chunk W‖ / ‖W_j‖ per block matrix (0: identical layers, sharing would lose nothing; "
                  "about 0.71 for independent random matrices in a chunk of two):", "",
                  markdown_table(["reference layer", "student group", *names, "mean"], rows), ""]
    return lines


def _flat_lines(summary: dict[str, Any], results: dict[str, Any], recipe: RecoveryRecipe) -> list[str]:
    ref = summary["reference"]
    if ref.get("held_out_mlm") is None:
        return []
    upper = summary["variants"].get(recipe.recovery.upper, {}).get("metrics", {}).get("held_out_mlm")
    lines = [f"*Held-out MLM of the reference as built*, measured as every student is: **{ref['held_out_mlm']:.4f}**"
             + (f" (`{recipe.recovery.upper}`, the same model after the students' training: {upper['mean']:.4f} ± "
                f"{upper['std']:.4f})" if upper else "") + ".", ""]
    budgets = [a for a in summary["attempts"] if (a.get("reference") or {}).get("held_out_mlm") is not None]
    if budgets:
        rows = [[a["kind"], a["output_dir"], a["reference"]["steps"], f"{a['reference']['tokens']:,}",
                 f"{a['reference']['held_out_mlm']:.4f}",
                 "—" if a["reference"].get("flatness") is None else f"{100 * a['reference']['flatness']:+.1f} %",
                 f"{a['gap']:+.4f}", f"{a['discrimination']:.1f}×" if isinstance(a["discrimination"], float) else "—"]
                for a in budgets]
        lines += ["References of every budget tried (from the ledger), with the study each one anchored:", "",
                  markdown_table(["kind", "output", "reference steps", "reference tokens", "reference held-out MLM",
                                  "its last quarter", "students' gap (primary)", "discrimination"], rows), ""]
    fl = ref.get("flat") or {}
    if fl.get("flat") is None:
        verdict = f"cannot be judged yet ({fl.get('reason', 'not measured')})"
    else:
        prev = fl["previous"]
        verdict = (f"**{'yes' if fl['flat'] else 'no'}**: {ref['steps']} steps instead of {prev['steps']} lowered "
                   f"the reference's held-out MLM by {fl['gain']:.4f} nats ({prev['held_out_mlm']:.4f} → "
                   f"{ref['held_out_mlm']:.4f}), against at most {fl['allowed']:.4f} allowed "
                   f"({fl['within']:g} × the ALBERT-style → reference gap on held-out MLM)")
    lines += [f"*Flattened* (criterion `recovery.flat_within`, ours: more reference training moves the reference by "
              f"at most a fraction of the cost of sharing measured): {verdict}.", ""]
    return lines


def sensitivity_lines(summary: dict[str, Any], recipe: RecoveryRecipe) -> list[str]:
    """The gap fractions of every variant under each reference budget the ledger holds for these students (from
    :func:`reference_sensitivity`), one table per metric compared; nothing with fewer than two budgets or no
    variant besides the gap's two ends (a pilot)."""
    sens = summary["reference"].get("sensitivity") or {}
    steps, tokens = sens.get("steps", []), sens.get("tokens", [])
    if len(tokens) < 2:
        return []
    spec, study = recipe.recovery, recipe.study
    labels = {v.name: v.label for v in study.variants}
    metrics = {m.key: m for m in recovery_metrics(study)}
    columns = [f"reference {s:,} steps" if s is not None else f"reference {t:,} tokens"
               for s, t in zip(steps, tokens, strict=True)]
    tables = []
    for key in dict.fromkeys(k for v in sens["variants"].values() for k in v):
        rows = []
        for name, per_metric in sens["variants"].items():
            base, _, merge = name.partition("+")
            if base in (spec.lower, spec.upper) or key not in per_metric:
                continue
            cell = per_metric[key]
            # three decimals: these fractions are compared with each other, many of them near 0
            texts = ["—" if fr is None else (f"{fr['mean']:+.3f} ± {fr['std']:.3f}" if res else
                                             f"({fr['mean']:+.3f} ± {fr['std']:.3f})")
                     for fr, res in zip(cell["fractions"], cell["resolved"], strict=True)]
            moves = "—" if cell["moves"] is None else "**moves**" if cell["moves"] else "stable"
            rows.append([labels.get(base, base) + (f", merged ({merge})" if merge else ""), *texts, moves])
        if rows:
            label = metrics[key].label.rstrip(" ↓↑") if key in metrics else key
            tables += [f"{label} gap closed:", "",
                       markdown_table(["model", *columns, "first → last"], rows), ""]
    if not tables:
        return []
    return ["*The gap fractions under each reference budget* (the same students' setting, from the ledger): a "
            "variant's fraction *moves* when the first and the last budget with a resolved gap differ by more than "
            "the larger of their per-seed stds. That compares fractions, whose per-seed stds are small; it is not "
            "one of the verdicts above, which compare raw values. In parentheses, fractions of a gap that was within "
            "the spread (left out of the comparison).", "", *tables]


def _setup_lines(summary: dict[str, Any], results: dict[str, Any], recipe: RecoveryRecipe) -> list[str]:
    study = recipe.study
    pre = study.run_recipe(study.variants[0], {}, "distill", study.seeds[0], Path(".")).to_dict()
    tr, data, optim, dist = pre["train"], pre["data"], pre["optim"], pre["distill"]
    ft = study.finetune
    spec = recipe.recovery
    held_text = (f"{spec.held_out_blocks or 'all'} blocks of {data['block_size']} tokens, "
                 + ("each run masked with its own seed" if spec.held_out_mask_seed is None else
                    f"masked once (seed {spec.held_out_mask_seed}): the same masked text for every model and seed"))
    rows = [BudgetRow(**r) for r in results.get("budget", [])]
    return [
        "### The students", "",
        f"- Geometry: preset `{study.model['preset']}` with `{json.dumps(study.model.get('overrides', {}))}`; "
        "each variant's FFN placement and budget knob in the table below.",
        f"- Init (the paper's distillation-based init, from the reference): group g of K takes its chunk of reference "
        f"layers, {study.teacher.get('layer_assignment', 'pick')}d tensor by tensor (`init_from_teacher`, ModernAlbert "
        "mapping, one to one); the ALBERT-style model's wider FFN keeps the averaged units and adds units with zero "
        "output weights (same function at step 0; our choice); RRT's per-position LoRAs start from the truncated SVD "
        "of each reference layer's FFN minus the shared one (Relaxed Recursive Transformers' init, `rrt_svd_init`); "
        "MoL experts and MoA adapters start as no-ops (B = 0); the full-parameter model starts as the reference.",
        f"- Training, identical for every run (one token budget): MLM + hidden-state KD to the frozen reference, "
        f"{tr['steps']} steps × batch {tr['batch_size']} × block {data['block_size']} = "
        f"**{study.tokens_per_run:,} tokens**, corpus `{json.dumps(data['corpus'])}`, AdamW lr {optim['lr']}, warmup "
        f"{optim['warmup_steps']}, decay {optim['decay_steps']}; loss weights MLM {dist['mlm_weight']}, hidden "
        f"({dist['hidden_loss']}, every layer to the same reference layer) {dist['hidden_weight']}, logits "
        f"{dist['logit_weight']}. Seeds {', '.join(map(str, study.seeds))} (data order, MLM masks, fine-tuning "
        "shuffles; the init is the reference's, the same for every seed).",
        f"- Measures on held-out text (the reference corpus's held-out documents: {held_text}): MLM loss; hidden "
        "distance to the reference, mean 1 − cos over real tokens of "
        f"the unmasked text, per effective layer and after the final norm; MLM loss on out-of-domain "
        f"{', '.join(study.ood.sources)}; `{ft.task}` accuracy (Rotten Tomatoes review snippets, fresh vs rotten, "
        f"split by movie: a stand-in, not SST-2) after the same fine-tuning for every model "
        f"`{json.dumps(ft.config)}`, {ft.max_train_examples} training and {ft.max_eval_examples} evaluation examples.",
        f"- Budget: unique non-embedding parameters of every recursive variant within ±"
        f"{100 * study.budget.tolerance:.0f}% of `{study.budget.reference}` (knobs solved); the full-parameter "
        "model is the exempt upper bound.",
        "- **Tie rule** (ours): mean ± sample std over seeds; a difference of means no larger than the larger std "
        "is a *tie*.", "",
        budget_table(rows, study) if rows else "(budgets not planned yet)", ""]


def render(summary: dict[str, Any], results: dict[str, Any], recipe: RecoveryRecipe, images: dict[str, str | None],
           reading: str | None) -> str:
    """The markdown report."""
    study, spec = recipe.study, recipe.recovery
    metrics = recovery_metrics(study)
    primary = recipe.primary
    disc = summary["discrimination"]
    gap = summary["gap"].get(primary.key)
    cost = summary["cost"]
    expected = len(study.variants) * len(study.seeds)
    lines = [f"# {study.report.title}", "", "Regenerate (the reference is built first when its folder is missing; "
             "finished runs are skipped):", "", "```bash", summary["command"], "```", "",
             f"Generated by `modernalbert.experiments.recovery` on {platform.machine()} with torch "
             f"{torch.__version__}, {torch.get_num_threads()} threads. Runs recorded: {cost['runs']['runs']} of "
             f"{expected}. Whole study (reference + runs): {cost['total']['wall_s'] / 60:.1f} min wall, "
             f"{cost['total']['cpu_s'] / 60:.1f} min CPU (see *Costs*).", "", *study.report.notes, "",
             "## The question", "",
             "The paper claims that conditional weight-space modulation (MoL) restores the expressivity lost under "
             "parameter sharing, better than RRT's fixed per-position LoRA and MoA's routed adapters after the FFN. "
             f"Here that loss is measured, not assumed: the gap between the ALBERT-style recursive model "
             f"(`{spec.lower}`, 0) and the full-parameter reference trained the same way (`{spec.upper}`, 1), and "
             "for every variant the fraction of it that it closes.", "",
             f"**Primary metric** (named in the recipe before running): **{primary.label}** (`{primary.key}`). "
             f"The regime counts as discriminating when the gap on it is at least {spec.min_discrimination:g}× the "
             "larger seed spread of its two ends."]
    if gap is not None:
        verdict = "**discriminates**" if summary["discriminates"] else "**does not discriminate**"
        if not summary["upper_better"]:
            verdict += f" ({spec.upper} is worse than {spec.lower}: there is no cost of sharing to recover)"
        lines += ["", f"Here: {gap['lower']:.4f} ± {gap['lower_std']:.4f} ({spec.lower}) → {gap['upper']:.4f} ± "
                  f"{gap['upper_std']:.4f} ({spec.upper}), gap {gap['gap']:+.4f} = "
                  f"{disc if isinstance(disc, str) else f'{disc:.1f}'}× the larger spread: the regime {verdict}."]
    lines += ["", "## The regime", ""]
    lines += _reference_lines(summary, results, recipe, images)
    lines += _setup_lines(summary, results, recipe)
    lines += ["## Discrimination: what was tried", "",
              "Every setting run (pilots run only the gap's two ends, for every seed), its gap on the primary metric "
              "and the gap in units of the larger seed spread:", "",
              attempts_table(summary["attempts"]) if summary["attempts"] else "(none recorded yet)", ""]
    lines += ["## Results", "", "### Every metric (mean ± std over seeds)", "", metric_table(summary, metrics), "",
              "### Fraction of the ALBERT-style → reference gap closed", "",
              "Per seed against the same seed's two ends, then mean ± std over seeds; 0 = ALBERT-style, 1 = the "
              "reference, < 0 worse than ALBERT-style. In parentheses: metrics whose gap is itself within the spread "
              "(a tie), where the fraction means nothing.", "", gap_table(summary, metrics), ""]
    if images.get("gap"):
        lines += [f"![gap fractions]({images['gap']})", ""]
    lines += ["### Against the two ends (tie rule)", "", end_verdicts(results, recipe, metrics), "",
              "### MoL against the alternatives (tie rule)", "", comparison_table(results, study, metrics), ""]
    lt = layer_table(summary)
    if lt:
        lines += ["### Hidden distance to the reference per layer (mean over seeds)", "", lt, ""]
        if images.get("layers"):
            lines += [f"![distance per layer]({images['layers']})", ""]
    mt = merge_table(results, study, metrics)
    if mt:
        lines += ["## Merged MoL (deployment)", "",
                  "Each MoL model merged after training (`merge_experts`): the pretrained MaskedLM for the MLM losses "
                  "and the hidden distance, the fine-tuned classifier for RT accuracy. Cells: merged value — verdict "
                  "against the same models unmerged.", "", mt, "", "Gap closed by the merged models:", "",
                  gap_table(summary, metrics, merged=True), ""]
    lines += ["## Reading", "", READING_START, reading or READING_PLACEHOLDER, READING_END, ""]
    lines += _cost_lines(summary, results, recipe)
    return "\n".join(lines)


def _cost_lines(summary: dict[str, Any], results: dict[str, Any], recipe: RecoveryRecipe) -> list[str]:
    cost = summary["cost"]
    ref = cost["reference"]
    loads = [r["cost"]["load_avg"] for r in results.get("runs", {}).values() if "load_avg" in r["cost"]]
    load = (f" The machine's 1-minute load average at the end of each run: {min(loads):.1f} to {max(loads):.1f} "
            f"(mean {sum(loads) / len(loads):.1f}) on {os.cpu_count()} cores." if loads else "")
    return ["## Costs", "", cost_table(results, recipe.study), "",
            f"Per-run wall and CPU seconds by stage (CPU: process time of all threads). The reference: "
            f"{ref.get('wall_s', 0) / 60:.1f} min wall, {ref.get('cpu_s', 0) / 60:.1f} min CPU ({ref.get('steps', 0)} "
            f"steps timed). Runs: {cost['runs']['runs']}, {cost['runs']['wall_s'] / 60:.1f} min wall, "
            f"{cost['runs']['cpu_s'] / 60:.1f} min CPU. **Whole study: {cost['total']['wall_s'] / 60:.1f} min wall, "
            f"{cost['total']['cpu_s'] / 60:.1f} min CPU.** The last invocation took "
            f"{results.get('last_invocation_s', 0) / 60:.1f} min wall, "
            f"{results.get('last_invocation_cpu_s', 0) / 60:.1f} min CPU.{load}", ""]


# ================================================================================================ publishing


def publish_report(study: Any) -> Path:
    """Write the summary, the ledger entry, the plots and the report of a :class:`RecoveryStudy`; returns the
    published report's path (the output folder's own for a pilot or without ``report.results_md``)."""
    recipe: RecoveryRecipe = study.recovery
    out: Path = study.out
    spec = recipe.recovery
    results = study.results
    command = study.command()
    ledger = Path(spec.attempts_json) if spec.attempts_json else out / "attempts.json"
    summary = build_summary(results, recipe, command=command)
    record = attempt_record(summary, recipe, study.overrides, study.pilot, results)
    attempts = update_ledger(ledger, record)
    summary["attempts"] = attempts
    mlm_gap = summary["gap"].get("held_out_mlm", {}).get("gap")
    summary["reference"]["flat"] = reference_flat(record, attempts, mlm_gap, spec.flat_within)
    resolved = [k for k, g in summary["gap"].items() if g.get("resolved")]
    summary["reference"]["sensitivity"] = reference_sensitivity(record, attempts, resolved)
    write_json(out / SUMMARY_FILE, summary)
    pngs = {"reference": out / "reference_curve.png", "gap": out / "gap_fractions.png",
            "layers": out / "layer_distance.png"}
    made = {"reference": plot_reference_curve(results.get("reference", {}), pngs["reference"]),
            "gap": plot_gap_fractions(summary, recovery_metrics(recipe.study), pngs["gap"]),
            "layers": plot_layer_distance(summary, pngs["layers"])}
    images = {k: (pngs[k].name if made[k] else None) for k in pngs}
    target = Path(recipe.study.report.results_md) if recipe.study.report.results_md and not study.pilot else None
    own = out / REPORT_FILE
    existing = (target.read_text() if target is not None and target.is_file()
                else own.read_text() if own.is_file() else None)
    reading = extract_reading(existing)
    write_text(own, render(summary, results, recipe, images, reading))
    if target is None:
        return own
    if spec.summary_json:
        write_json(spec.summary_json, summary)
    assets = Path(recipe.study.report.assets_dir) if recipe.study.report.assets_dir else target.parent / "results"
    assets.mkdir(parents=True, exist_ok=True)
    prefix = target.stem + "_"
    for key, png in pngs.items():
        if made[key]:
            shutil.copyfile(png, assets / (prefix + png.name))
    rel = os.path.relpath(assets, target.parent)
    published = {k: (f"{rel}/{prefix}{pngs[k].name}" if made[k] else None) for k in pngs}
    return write_text(target, render(summary, results, recipe, published, reading))


__all__ = ["READING_PLACEHOLDER", "REPORT_FILE", "SUMMARY_FILE", "attempt_record", "attempts_table", "build_summary",
           "end_verdicts", "gap_fractions_of", "gap_table", "layer_table", "metric_table", "publish_report",
           "reference_flat", "reference_sensitivity", "render", "sensitivity_lines", "update_ledger"]
