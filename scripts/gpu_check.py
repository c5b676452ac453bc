"""Checks that need a CUDA GPU (not part of CI, which has none): run by ``scripts/gpu_check.sh``.

1. Parity with HF ModernBERT at its default configuration (local layers, both RoPE bases; 22 layers, rows longer
   than the window, padded) on CUDA: fp32 sdpa and eager within 1e-5 on non-pad tokens (TF32 off), and both models
   in bf16 (reported with the logit scale: bf16 has 8 bits of mantissa).
2. bf16 autocast training on CUDA: a few AdamW MLM steps of every FFN variant from one initialisation in fp32 and
   under bf16 autocast; the loss curves are reported side by side (largest relative difference) and must be finite.
3. ``transformers.Trainer(bf16=True)`` trains a ModernAlbert sequence classifier for a few steps on CUDA.
4. FlashAttention varlen against sdpa on non-pad tokens, when ``flash_attn`` is installed (reported otherwise).

Writes a JSON summary to ``--out`` and prints it. Every check records its error instead of stopping the others.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests' fixtures


def non_pad_diff(a: torch.Tensor, b: torch.Tensor, real: torch.Tensor) -> float:
    return float((a[real].float() - b[real].float()).abs().max())


def parity(dev: torch.device) -> dict:
    from tests.model.test_parity_modernbert import default_teacher_config, long_batch, student_config
    from transformers import ModernBertForMaskedLM

    from modernalbert import ModernAlbertForMaskedLM, load_modernbert_weights

    ids, mask = (t.to(dev) for t in long_batch())
    real, res = mask.bool(), {}
    for attn in ("sdpa", "eager"):
        torch.manual_seed(0)
        teacher = ModernBertForMaskedLM(default_teacher_config(attn_implementation=attn)).eval()
        student = ModernAlbertForMaskedLM(student_config(num_hidden_layers=teacher.config.num_hidden_layers,
                                                         attn_implementation=attn, max_position_embeddings=8192))
        load_modernbert_weights(student, teacher)
        teacher, student = teacher.to(dev), student.eval().to(dev)
        with torch.no_grad():
            t_out = teacher(ids, attention_mask=mask, output_hidden_states=True)
            s_out = student(ids, attention_mask=mask, output_hidden_states=True)
        res[f"fp32 {attn}: max |hidden diff|"] = max(non_pad_diff(s, t, real) for s, t in
                                                     zip(s_out.hidden_states, t_out.hidden_states))
        res[f"fp32 {attn}: max |logit diff|"] = non_pad_diff(s_out.logits, t_out.logits, real)
        with torch.no_grad():
            t16 = teacher.to(torch.bfloat16)(ids, attention_mask=mask).logits
            s16 = student.to(torch.bfloat16)(ids, attention_mask=mask).logits
        res[f"bf16 {attn}: max |logit diff| vs HF bf16"] = non_pad_diff(s16, t16, real)
        res[f"bf16 {attn}: logit scale"] = float(t_out.logits[real].abs().max())
    res["fp32 within 1e-5"] = all(v <= 1e-5 for k, v in res.items() if k.startswith("fp32"))
    return res


def autocast_training(dev: torch.device, steps: int = 20) -> dict:
    from tests.conftest import small_config
    from tests.model.test_precision import VARIANTS

    from modernalbert.model import modeling as M

    res = {}
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (8, 64), generator=g)  # (B, L) random tokens, no padding
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.15, ids, -100)
    ids, labels = ids.to(dev), labels.to(dev)
    for variant, (overrides, form) in VARIANTS.items():
        if form:
            continue  # merged forms are deployment forms: the 16-bit matrix covers them
        curves = {}
        for mode in ("fp32", "bf16-autocast"):
            torch.manual_seed(0)
            model = M.ModernAlbertForMaskedLM(small_config(vocab_size=1000, **overrides)).to(dev).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            losses = []
            for _ in range(steps):
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode != "fp32"):
                    out = model(input_ids=ids, labels=labels)
                out.loss.backward()
                opt.step()
                opt.zero_grad()
                losses.append(out.loss.item())
            curves[mode] = losses
        worst = max(abs(a - b) / abs(b) for a, b in zip(curves["bf16-autocast"], curves["fp32"]))
        res[variant] = {"fp32 first/last": [curves["fp32"][0], curves["fp32"][-1]],
                        "bf16 first/last": [curves["bf16-autocast"][0], curves["bf16-autocast"][-1]],
                        "max relative difference": worst,
                        "finite": all(map(lambda x: x == x and abs(x) < float("inf"), curves["bf16-autocast"]))}
    return res


def trainer_bf16(dev: torch.device) -> dict:
    import tempfile

    from tests.conftest import small_config
    from transformers import Trainer, TrainingArguments

    from modernalbert.model import modeling as M

    torch.manual_seed(0)
    model = M.ModernAlbertForSequenceClassification(small_config(vocab_size=1000, num_labels=2))
    g = torch.Generator().manual_seed(1)
    rows = [{"input_ids": torch.randint(5, 1000, (16,), generator=g).tolist(), "labels": i % 2} for i in range(64)]
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(tmp, bf16=True, max_steps=8, per_device_train_batch_size=8, report_to=[],
                                 logging_steps=1, save_strategy="no")
        trainer = Trainer(model=model, args=args, train_dataset=rows)  # a list of dicts is a Dataset
        out = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"device": str(next(model.parameters()).device), "steps": out.global_step, "losses": losses}


def flash(dev: torch.device) -> dict:
    if importlib.util.find_spec("flash_attn") is None:
        return {"skipped": "flash_attn is not installed on this machine"}
    from tests.conftest import padded_batch, small_config

    from modernalbert.model import modeling as M

    ids, mask = (t.to(dev) for t in padded_batch(lengths=(300, 170, 1, 250)))
    torch.manual_seed(0)
    ref = M.ModernAlbertModel(small_config(max_position_embeddings=512)).eval().to(dev, torch.bfloat16)
    fa = M.ModernAlbertModel(small_config(max_position_embeddings=512, attn_implementation="flash_attention_2"))
    fa.load_state_dict(ref.state_dict())
    fa = fa.eval().to(dev, torch.bfloat16)
    with torch.no_grad():
        a = fa(ids, attention_mask=mask).last_hidden_state
        b = ref(ids, attention_mask=mask).last_hidden_state
    return {"bf16 max |hidden diff| flash vs sdpa": non_pad_diff(a, b, mask.bool()),
            "scale": float(b[mask.bool()].abs().max())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 parity means fp32 GEMMs
    dev = torch.device("cuda")
    res = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
    for name, check in (("parity", parity), ("autocast_training", autocast_training), ("trainer_bf16", trainer_bf16),
                        ("flash", flash)):
        try:
            res[name] = check(dev)
        except Exception:  # a check that fails is a result too; the others still run
            res[name] = {"error": traceback.format_exc()}
        print(name, json.dumps(res[name], indent=1), flush=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
