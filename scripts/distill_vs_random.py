"""Does distillation initialisation help? Two runs of one recipe that differ only in ``teacher.init``.

Both runs distil from the same teacher with the same data, seed and number of steps; one student starts from the
teacher's weights (``init_from_teacher``), the other from random init. Prints the held-out MLM and hidden-state KD
losses at every evaluation of both runs, and writes ``comparison.md`` / ``comparison.json`` to ``--out``.

    python scripts/distill_vs_random.py [--recipe recipes/cpu-smoke.yaml] [--steps 200] [--out runs/distill-vs-random]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from modernalbert.training.recipe import Recipe
from modernalbert.training.trainer import pretrain


def evals(run_dir: Path) -> dict[int, dict[str, float]]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "eval_mlm" in rec:
            out[rec["step"]] = rec
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/cpu-smoke.yaml")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--out", default="runs/distill-vs-random")
    ap.add_argument("overrides", nargs="*", help="further recipe overrides for both runs")
    args = ap.parse_args()
    out = Path(args.out)
    results = {}
    for name, init in (("distill-init", True), ("random-init", False)):
        shutil.rmtree(out / name, ignore_errors=True)  # a fresh pair of runs each time (pretraining never overwrites)
        recipe = Recipe.load(args.recipe, [*args.overrides, f"teacher.init={str(init).lower()}",
                                           f"train.steps={args.steps}", f"train.eval_every={args.eval_every}",
                                           f"train.save_every={args.steps}", f"output_dir={out / name}",
                                           "train.resume=never"])
        pretrain(recipe)
        results[name] = evals(out / name)
    steps = sorted(results["distill-init"])
    lines = [f"# Distillation init vs random init ({args.recipe}, {args.steps} steps)", "",
             "| step | MLM (distill-init) | MLM (random-init) | hidden KD (distill-init) | hidden KD (random-init) |",
             "|---|---|---|---|---|"]
    for s in steps:
        d, r = results["distill-init"][s], results["random-init"][s]
        lines.append(f"| {s} | {d['eval_mlm']:.4f} | {r['eval_mlm']:.4f} | {d.get('eval_hidden', float('nan')):.4f} | "
                     f"{r.get('eval_hidden', float('nan')):.4f} |")
    table = "\n".join(lines)
    (out / "comparison.md").write_text(table + "\n")
    (out / "comparison.json").write_text(json.dumps({k: {str(s): v for s, v in r.items()}
                                                     for k, r in results.items()}, indent=2))
    print(table)


if __name__ == "__main__":
    main()
