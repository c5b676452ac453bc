"""``report.md`` of the main job: results table, parameter counts, speed, stage times and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils.io import atomic_path, write_text

if TYPE_CHECKING:
    from .pipeline import Quickstart


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def attention_pattern(config: dict[str, Any]) -> str:
    """The attention pattern of a saved ModernAlbert ``config.json``, in words."""
    types = config.get("layer_types") or []
    local = [i for i, t in enumerate(types) if t == "sliding_attention"]
    if not local:
        return "global attention in every layer"
    glob = [i for i, t in enumerate(types) if t == "full_attention"]
    return (f"global attention at layers {', '.join(map(str, glob)) or 'none'}, a "
            f"{config['local_attention']}-token sliding window at the others")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _counts(job: Quickstart) -> dict[str, tuple[int, int]]:
    """Unique / effective parameters of each model (a plain encoder's effective count equals its unique count)."""
    from ..model import count_parameters
    from ..model.loading import load_model, load_pretrained

    ft = job.result("finetune")
    out = {}
    for name, path in (("student", ft["student"]["model_dir"]), ("merged", job.result("merge")["model_dir"])):
        c = count_parameters(load_pretrained(path))
        out[name] = (c.unique, c.effective)
    teacher = load_model(ft["teacher"]["model_dir"], "sequence-classification")
    n = sum(p.numel() for p in teacher.parameters())
    out["teacher"] = (n, n)
    return out


def _plot(job: Quickstart, path: Path) -> None:
    """Loss curves: distillation (train and held-out parts) and fine-tuning (student vs teacher)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = _read_jsonl(Path(job.result("distill")["model_dir"]).parent / "metrics.jsonl")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    train = [r for r in records if "lr" in r]
    held = [r for r in records if any(k.startswith("eval_") for k in r)]
    for key in ("mlm", "hidden"):
        pts = [(r["step"], r[key]) for r in train if key in r]
        if pts:
            ax1.plot(*zip(*pts), label=f"train {key}")
        pts = [(r["step"], r[f"eval_{key}"]) for r in held if f"eval_{key}" in r]
        if pts:
            ax1.plot(*zip(*pts), "o--", label=f"held-out {key}")
    ax1.set(title="Distillation (MLM + hidden-state KD)", xlabel="step", ylabel="loss")
    ax1.legend()
    for name, res in job.result("finetune").items():
        pts = [(r["step"], r["loss"]) for r in res["history"]]
        if pts:
            ax2.plot(*zip(*pts), label=name)
    ax2.set(title="Fine-tuning on RT sentiment", xlabel="step", ylabel="cross-entropy")
    ax2.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_report(job: Quickstart) -> tuple[Path, str]:
    """Write ``report.md`` (and ``loss_curves.png``); returns its path and the results table."""
    out = job.output_dir
    _plot(job, out / "loss_curves.png")
    ft, merge, onnx, speed = (job.result(s) for s in ("finetune", "merge", "onnx", "speed"))
    counts = _counts(job)
    acc = {"student": ft["student"]["test"]["accuracy"], "merged": merge["test"]["accuracy"]}

    def m(n: int) -> str:
        return f"{n / 1e6:.2f}M"

    rows = [
        ("majority class", "–", "–", _pct(ft["student"]["test"]["majority_accuracy"])),
        ("all-MiniLM-L6-v2 teacher, fine-tuned", m(counts["teacher"][0]), m(counts["teacher"][1]),
         _pct(ft["teacher"]["test"]["accuracy"])),
        ("ModernAlbert MoL student, fine-tuned", m(counts["student"][0]), m(counts["student"][1]),
         _pct(acc["student"])),
        ("… experts merged (folded)", m(counts["merged"][0]), m(counts["merged"][1]), _pct(acc["merged"])),
        ("… merged, ONNX Runtime", m(counts["merged"][0]), m(counts["merged"][1]), _pct(onnx["accuracy"])),
    ]
    table = "\n".join(["| model | unique params | effective params | RT sentiment test accuracy (%) |",
                       "|---|---|---|---|"] + ["| " + " | ".join(r) + " |" for r in rows])
    gap = 100 * (acc["merged"] - acc["student"])
    merge_line = (f"Merging changed test accuracy by {gap:+.1f} points (within 1 point)." if abs(gap) <= 1.0 else
                  f"Merging changed test accuracy by {gap:+.1f} points: **more than 1 point**.")
    speed_rows = "\n".join(f"| {name} | {v['tokens_per_s']:.0f} | {v['speedup_vs_mol']:.2f}× |"
                           for name, v in speed.items() if isinstance(v, dict))
    stages = "\n".join(f"| {name} | {s['seconds']:.0f} |" for name, s in job.state["stages"].items())
    distill = job.result("distill")
    held = ", ".join(f"{k} {v:.3f}" for k, v in sorted(distill["held_out"].items()))
    n_test = onnx["examples"]
    attention = attention_pattern(json.loads((job.output_dir / "merged" / "config.json").read_text()))
    text = f"""# ModernAlbert quickstart report ({job.profile_name} profile)

Teacher: the packaged sentence-transformers **all-MiniLM-L6-v2** (BERT, 6 layers, d = 384). Student: a `mini`-preset
ModernAlbert (recursive, shared blocks, MoL in the last group; {attention}) initialised from the teacher and
distilled for {distill['steps']} steps on King James Bible text (MLM + hidden-state KD). Held-out distillation
losses: {held}.

Downstream task: **RT sentiment**, Rotten Tomatoes review snippets (fresh vs rotten), split by movie with seed 0
— a real stand-in for SST-2, *not* SST-2. Both models are fine-tuned the same way (one epoch, lr 1e-4, batch 32;
our choices). Accuracy on {n_test} test sentences:

{table}

{merge_line} ONNX Runtime agrees with PyTorch on {_pct(onnx['agreement_with_pytorch'])} % of test predictions;
largest absolute output difference {max(onnx['max_abs_diff'].values()):.2e}.

## Inference speed (CPU, {speed['threads']} threads, {speed['tokens']} tokens of RT test sentences, batches of 32)

| model | tokens/s | vs MoL |
|---|---|---|
{speed_rows}

## Plots

![loss curves](loss_curves.png)

Expert usage per effective layer (router top-k shares on validation reviews):

![expert usage](routing/routing.png)

## Stage times (seconds)

| stage | s |
|---|---|
{stages}

Rerun `modernalbert quickstart` to resume (finished stages are skipped); `--force` starts over.
"""
    return write_text(out / "report.md", text), table


__all__ = ["write_report"]
