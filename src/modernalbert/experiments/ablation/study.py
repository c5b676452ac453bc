"""Running (or resuming) a study: budgets, every (variant, init, seed) run, speed, report.

``results.json`` in the output folder records every finished run with a fingerprint of everything that determines
it; a rerun skips finished runs, refuses runs recorded with another configuration (``force`` starts over), and
regenerates the report. One process runs the study; for parallel runs, give each invocation its own output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ...utils.io import write_json, write_text
from .budget import BudgetRow, budget_table, plan_budget
from .measures import adapter_effect, held_out_batches, mlm_loss, ood_batches, read_metrics, routing_ema
from .plots import plot_expert_usage, plot_loss_curves
from .recipe import AblationRecipe, VariantSpec, merge_name
from .report import extract_reading, render_report
from .speed import measure_speed
from .statistics import run_key

RESULTS_FILE = "results.json"
FORMAT = 1


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def start_timer() -> tuple[float, float]:
    """The wall and CPU (process, all threads) clocks now, for :func:`elapsed`."""
    return time.perf_counter(), time.process_time()


def elapsed(start: tuple[float, float]) -> dict[str, float]:
    """Wall and CPU seconds since ``start`` (:func:`start_timer`): ``{"wall_s", "cpu_s"}``."""
    return {"wall_s": round(time.perf_counter() - start[0], 2), "cpu_s": round(time.process_time() - start[1], 2)}


def _device() -> torch.device:
    """Where the harness's own evaluations run: the GPU when there is one (fp32 everywhere: exact comparisons)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class AblationStudy:
    """Runs (or resumes) a study and writes its report.

    Studies built on this one (e.g. :class:`~modernalbert.experiments.recovery.RecoveryStudy`) extend it through
    its public steps: :meth:`prepare` (before budgets are planned), :meth:`plan` (which runs, in which order),
    :meth:`fingerprint_extra` (what else determines a run), :meth:`measure_model` (what is measured on a pretrained
    or merged model) and :meth:`write_report`.

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
                raise ValueError(f"{self.results_path} was written by another version of the harness: pass --force.")
        else:
            self.results = {"format": FORMAT, "runs": {}}
        self.results["recipe"] = self.recipe.to_dict()

    def _save(self) -> None:
        write_json(self.results_path, self.results)

    # ---------------------------------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        """Plan budgets, run every unfinished (variant, init, seed), measure speed, write the report.

        Returns:
            The results (also in ``OUTPUT_DIR/results.json``).
        """
        self._load()
        start = start_timer()
        self.prepare()
        rows = plan_budget(self.recipe)
        self.rows = {r.name: r for r in rows}
        self.results["budget"] = [asdict(r) for r in rows]
        self.results["tokens_per_run"] = self.recipe.tokens_per_run
        self.log(f"[ablation] budget (basis {self.recipe.budget.basis}, ±{100 * self.recipe.budget.tolerance:.0f}% "
                 f"of {self.recipe.budget.reference!r}; every run sees {self.recipe.tokens_per_run:,} tokens):\n"
                 + budget_table(rows, self.recipe))
        plan = self.plan()
        for i, (v, init, seed) in enumerate(plan, start=1):
            key = run_key(v.name, init, seed)
            fp = self._run_fingerprint(v, init, seed)
            done = self.results["runs"].get(key)
            if done is not None:
                if done.get("fingerprint") != fp:
                    raise ValueError(f"{self.results_path} holds run {key} made with another configuration (recipe, "
                                     "budget or harness changed): pass --force to start over, or use another "
                                     "--output-dir.")
                self.log(f"[ablation {i}/{len(plan)}] {key}: done earlier, skipped")
                continue
            self.log(f"[ablation {i}/{len(plan)}] {key} ...")
            record = {**self._run_one(v, init, seed), "fingerprint": fp}
            self.results["runs"][key] = record
            self._save()  # recorded at once: an interruption loses at most the current run
            cost = record["cost"]["total"]
            self.log(f"[ablation {i}/{len(plan)}] {key}: held-out MLM {record['held_out_mlm']:.4f}, RT val "
                     f"{100 * record['rt']['validation']:.1f}%, {cost['wall_s']:.0f} s wall / {cost['cpu_s']:.0f} s "
                     "CPU")
        if self.recipe.speed.enabled:
            self._speed()
        spent = elapsed(start)
        self.results["last_invocation_s"], self.results["last_invocation_cpu_s"] = spent["wall_s"], spent["cpu_s"]
        self._save()
        path = self.write_report()
        self.log(f"[ablation] report: {path}")
        return self.results

    # ------------------------------------------------------------------------------------- extension steps
    def prepare(self) -> None:
        """Called once per invocation after the results are loaded and before budgets are planned (nothing here)."""

    def plan(self) -> list[tuple[VariantSpec, str, int]]:
        """Every ``(variant, init, seed)`` to run, in order: seed-major, so that an interrupted study still has
        whole seeds."""
        return [(v, init, seed) for seed in self.recipe.seeds for init in self.recipe.inits
                for v in self.recipe.variants]

    def fingerprint_extra(self) -> Any:
        """What else determines every run, besides its recipe (nothing here)."""
        return None

    def held_out(self, recipe: Any, tokenizer: Any) -> list[dict[str, torch.Tensor]]:
        """The masked held-out batches every model of a run is measured on: the trainer's own held-out evaluation,
        rebuilt (:func:`held_out_batches`)."""
        return held_out_batches(recipe, tokenizer)

    def measure_model(self, model: Any, held: list[dict[str, torch.Tensor]], tokenizer: Any, recipe: Any, *,
                      merged: bool = False) -> dict[str, Any]:
        """Measures of a pretrained MaskedLM (``merged``: a merged one): held-out and out-of-domain MLM losses,
        and for unmerged models the routing moving averages and the adapters' effect."""
        out: dict[str, Any] = {"held_out_mlm": mlm_loss(model, held),
                               "ood": {name: mlm_loss(model, b) for name, b in self._ood(tokenizer, recipe).items()}}
        if not merged:
            out.update(routing_ema=routing_ema(model), adapter_effect=adapter_effect(model, held[:1]))
        return out

    def _run_fingerprint(self, v: VariantSpec, init: str, seed: int) -> str:
        recipe = self.recipe.run_recipe(v, self.rows[v.name].overrides, init, seed, Path("."))
        d = recipe.to_dict()
        d.pop("output_dir")
        merge = {"options": self._merge_options(v), "rt_splits": self.recipe.merge.rt_splits}
        extra = self.fingerprint_extra()
        return _fingerprint({"pretrain": d, "finetune": asdict(self.recipe.finetune), "merge": merge,
                             "ood": asdict(self.recipe.ood), "format": FORMAT,
                             **({"extra": extra} if extra is not None else {})})

    def _mergeable(self, v: VariantSpec) -> bool:
        if v.merge is not None:
            return bool(v.merge)
        return "mol" in self.rows[v.name].ffn_variants

    def _merge_options(self, v: VariantSpec) -> list[dict[str, Any]]:
        return self.recipe.merge.options if self._mergeable(v) else []

    def _run_one(self, v: VariantSpec, init: str, seed: int) -> dict[str, Any]:
        """Pretrain, score the MLM, fine-tune and score RT, merge: one run's record."""
        from ...model.loading import load_pretrained, load_tokenizer
        from ...training.checkpoint import latest_checkpoint
        from ...training.trainer import pretrain

        folder = self.out / "runs" / run_key(v.name, init, seed)
        recipe = self.recipe.run_recipe(v, self.rows[v.name].overrides, init, seed, folder / "pretrain")
        cost: dict[str, Any] = {}
        t_all = t = start_timer()
        if latest_checkpoint(folder / "pretrain") is None:  # a fresh start: drop the log of an interrupted attempt
            (folder / "pretrain" / "metrics.jsonl").unlink(missing_ok=True)
        result = pretrain(recipe)
        cost["pretrain"] = elapsed(t)
        final = Path(result.final_dir)
        curves, usage, tokens_seen = read_metrics(folder / "pretrain" / "metrics.jsonl")
        if tokens_seen != self.recipe.tokens_per_run:
            raise ValueError(f"Run {folder.name} saw {tokens_seen:,} tokens, not the budgeted "
                             f"{self.recipe.tokens_per_run:,} (was it resumed with another recipe?): delete its "
                             "folder or pass --force.")
        t = start_timer()
        tokenizer = load_tokenizer(final)
        held = self.held_out(recipe, tokenizer)
        mlm_model = load_pretrained(final).eval().to(_device())
        record = self.measure_model(mlm_model, held, tokenizer, recipe)
        cost["mlm_eval"] = elapsed(t)
        ft, rt, cfg = self._finetune(final, folder, seed, cost)
        merged: dict[str, Any] = {}
        t = start_timer()
        for option in self._merge_options(v):
            merged[merge_name(option)] = self._merged(option, mlm_model, held, tokenizer, recipe, ft["model_dir"],
                                                      cfg, folder)
        if merged:
            cost["merges"] = elapsed(t)
        cost["total"] = elapsed(t_all)
        cost["threads"] = torch.get_num_threads()  # CPU seconds are comparable across machines only per thread count
        cost["load_avg"] = round(os.getloadavg()[0], 2)  # the machine's 1-minute load: what the wall time shared
        shutil.rmtree(folder / "pretrain" / "checkpoints", ignore_errors=True)  # optimizer state: not needed now
        if not self.recipe.keep_models:
            shutil.rmtree(final, ignore_errors=True)
            shutil.rmtree(ft["model_dir"], ignore_errors=True)
        return {"variant": v.name, "init": init, "seed": seed, "tokens_seen": tokens_seen, "steps": result.steps,
                **record, "held_out_mlm_trainer": result.last_eval.get("eval_mlm"), "rt": rt, "merged": merged,
                "curves": curves, "expert_usage": usage, "finetune_history": ft.get("history"),
                "model_dir": str(final), "classifier_dir": ft["model_dir"], "cost": cost}

    def _finetune(self, final: Path, folder: Path, seed: int,
                  cost: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float], Any]:
        """Fine-tune the run's pretrained model on the downstream task; its RT accuracies per split."""
        from ...evaluation.glue import evaluate_task, finetune_task

        ft_spec = self.recipe.finetune
        cfg = ft_spec.make_config(seed)
        t = start_timer()
        ft = finetune_task(str(final), ft_spec.task, cfg, data=ft_spec.data,
                           output_dir=str(folder / "finetune"), max_train_examples=ft_spec.max_train_examples,
                           max_eval_examples=ft_spec.max_eval_examples)
        rt = {"validation": float(ft["metrics"]["validation"]["accuracy"])}
        cost["finetune"] = elapsed(t)
        t = start_timer()
        if ft_spec.test_split:
            res = evaluate_task(ft["model_dir"], ft_spec.task, data=ft_spec.data, split=ft_spec.test_split,
                                batch_size=cfg.eval_batch_size, max_length=cfg.max_length,
                                max_examples=ft_spec.max_eval_examples)
            rt[ft_spec.test_split] = float(res["metrics"][ft_spec.test_split]["accuracy"])
        cost["rt_eval"] = elapsed(t)
        return ft, rt, cfg

    def _merged(self, option: dict[str, Any], mlm_model: Any, held: list[dict[str, torch.Tensor]], tokenizer: Any,
                recipe: Any, clf_dir: str, cfg: Any, folder: Path) -> dict[str, Any]:
        """Held-out / OOD MLM of the merged MaskedLM and RT accuracy of the merged classifier."""
        from ...evaluation.glue import evaluate_task
        from ...export.merge import merge_experts
        from ...model.loading import load_pretrained, load_tokenizer, save_model

        kw = {k: option[k] for k in ("weights", "space", "form", "rank") if option.get(k) is not None}
        merged_lm = merge_experts(mlm_model, **kw).eval()
        out: dict[str, Any] = {**self.measure_model(merged_lm, held, tokenizer, recipe, merged=True),
                               "parameters": merged_lm.config.merge_info["parameters_after"]}
        del merged_lm
        ft = self.recipe.finetune
        clf = load_pretrained(clf_dir).eval()
        tmp = save_model(merge_experts(clf, **kw), load_tokenizer(clf_dir), folder / f"merged-{merge_name(option)}")
        try:
            rt = {}
            for split in self.recipe.merge.rt_splits:
                if split:
                    res = evaluate_task(str(tmp), ft.task, data=ft.data, split=split, batch_size=cfg.eval_batch_size,
                                        max_length=cfg.max_length, max_examples=ft.max_eval_examples)
                    rt[split] = float(res["metrics"][split]["accuracy"])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # only the numbers are kept: merging again is cheap
        out["rt"] = rt
        return out

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
        models = {v.name: self.results["runs"][keys[v.name]]["model_dir"] for v in self.recipe.variants}
        mergeable = [v.name for v in self.recipe.variants if self._mergeable(v)]
        self.results["speed"] = {"fingerprint": fp, "init": init, "seed": seed,
                                 **measure_speed(models, self.recipe, mergeable)}
        self._save()

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
        reading = extract_reading(existing)
        write_text(path, render_report(self.results, self.recipe, images, self._command(), reading=reading))
        if target is None:
            return path
        assets = Path(self.recipe.report.assets_dir) if self.recipe.report.assets_dir else target.parent / target.stem
        assets.mkdir(parents=True, exist_ok=True)
        rel = os.path.relpath(assets, target.parent)
        for png in (loss_png, usage_png if has_usage else None):
            if png is not None:
                shutil.copyfile(png, assets / png.name)
        published = {k: (f"{rel}/{v}" if v else None) for k, v in images.items()}
        return write_text(target, render_report(self.results, self.recipe, published, self._command(),
                                                reading=reading))

    def _command(self) -> str:
        if self.recipe.report.command:
            return self.recipe.report.command
        parts = ["modernalbert experiment ablation", self.recipe_path or "RECIPE", *self.overrides]
        return " ".join(parts)


def run_ablation(recipe: AblationRecipe | str | os.PathLike, overrides: Sequence[str] = (), *,
                 output_dir: str | None = None, force: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) an ablation study.

    Args:
        recipe: An :class:`AblationRecipe` or the path of a YAML recipe.
        overrides: Dotted ``key=value`` overrides (with a path).
        output_dir: Replaces the recipe's ``output_dir``; the report then stays in that folder (``report.results_md``
            is not written: a study elsewhere must not replace the published one).
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
        recipe.report.results_md = None
    extra = [*overrides] + ([f"--output-dir {output_dir}"] if output_dir else [])
    return AblationStudy(recipe, force=force, log=log, recipe_path=path, overrides=extra).run()


__all__ = ["FORMAT", "RESULTS_FILE", "AblationStudy", "elapsed", "run_ablation", "start_timer"]
