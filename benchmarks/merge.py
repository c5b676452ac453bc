"""Inference speed of every deployment form of a MoL model, measured interleaved in one run (CPU fp32 default).

Variants, all with the same backbone weights: the plain backbone (no MoL: the baseline), MoL with weight mixing,
MoL with output mixing, merged low-rank adapter, merged and folded (a plain backbone again), and the folded model in
ONNX Runtime fp32 and int8 (dynamic quantisation). Batches hold padded sequences of varied length; tokens/s counts
real tokens. Ratios of times against the plain backbone's, paired round by round in the same process on the same
inputs (median, bootstrap 95 % confidence interval, range; ``benchmarks/common.py``), are the result (the machines
are shared and noisy).

    python benchmarks/merge.py [--preset tiny] [--batch 16] [--max-len 128] [--threads 2] [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

# OpenMP threads that wait passively (sleep) instead of spinning: must be set before torch loads OpenMP. On a shared,
# oversubscribed machine spinning threads steal the time slices of working ones; measured here, 2-thread runs then
# ran slower than 1-thread runs and ratios swung with the load. An explicit OMP_WAIT_POLICY is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from common import paired_ratios, time_interleaved
from modernalbert import ModernAlbertConfig, ModernAlbertModel, merge_experts
from modernalbert.training.memory import keep_freed_memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15, help="timed rounds")
    ap.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime variants")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    keep_freed_memory()  # freed tensors stay in the heap: page faults would otherwise dominate CPU timings
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = ModernAlbertConfig.from_preset(args.preset, mol_mixing="weight")
    mol_weight = ModernAlbertModel(cfg).eval()
    with torch.no_grad():  # trained-looking experts (B != 0); the cost does not depend on the values
        for name, p in mol_weight.named_parameters():
            if name.endswith(("lora_B1", "lora_B2")):
                p.normal_(0, 0.02)
    state = mol_weight.state_dict()
    mol_output = ModernAlbertModel(ModernAlbertConfig.from_preset(args.preset, mol_mixing="output")).eval()
    mol_output.load_state_dict(state)
    plain = ModernAlbertModel(ModernAlbertConfig.from_preset(args.preset, mol_groups=[])).eval()
    plain.load_state_dict({k: v for k, v in state.items() if k in plain.state_dict()})
    lowrank = merge_experts(mol_weight, form="lowrank").eval()
    folded = merge_experts(mol_weight, form="fold").eval()

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(args.max_len // 4, args.max_len + 1, (args.batch,), generator=g)
    lengths[0] = args.max_len
    ids = torch.randint(5, cfg.vocab_size, (args.batch, args.max_len), generator=g)
    mask = (torch.arange(args.max_len)[None] < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, cfg.pad_token_id)
    real_tokens = int(mask.sum())

    runs = {
        "plain backbone": lambda: plain(ids, attention_mask=mask),
        "MoL weight mixing": lambda: mol_weight(ids, attention_mask=mask),
        "MoL output mixing": lambda: mol_output(ids, attention_mask=mask),
        "merged low-rank": lambda: lowrank(ids, attention_mask=mask),
        "merged folded": lambda: folded(ids, attention_mask=mask),
    }
    tmp = tempfile.TemporaryDirectory()
    if not args.no_onnx:
        import onnxruntime as ort

        from modernalbert.export import export_onnx, quantize_int8

        fp32 = export_onnx(folded, Path(tmp.name) / "model.onnx")
        int8 = quantize_int8(fp32, Path(tmp.name) / "model.int8.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        feeds = {"input_ids": ids.numpy().astype(np.int64), "attention_mask": mask.numpy().astype(np.int64)}
        for name, path in (("ONNX Runtime fp32 (folded)", fp32), ("ONNX Runtime int8 (folded)", int8)):
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            runs[name] = lambda sess=sess: sess.run(None, feeds)

    with torch.inference_mode():  # interleaved, rotating order: drifts in machine load hit every variant alike
        times, _ = time_interleaved(runs, 1, args.repeats, torch.device("cpu"))
    tmp.cleanup()

    print(f"Deployment benchmark: preset {args.preset!r} (d={cfg.hidden_size}, L={cfg.num_hidden_layers}, "
          f"G={cfg.group_depth}, MoL groups {cfg.mol_groups}, E={cfg.num_experts}, k={cfg.num_experts_per_tok}, "
          f"r={cfg.lora_rank}), batch {args.batch} x {args.max_len} with {real_tokens} real tokens, CPU fp32, "
          f"{args.threads} threads, {args.repeats} rounds, torch {torch.__version__}")
    print("| variant | tokens/s | time vs plain backbone | 95% CI | range |")
    print("|---|---|---|---|---|")
    results = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        st = paired_ratios(times["plain backbone"], ts, speedup=False)
        (lo, hi), (clo, chi) = st["range"], st["ci"]
        results[name] = {"tokens_per_s": real_tokens / med, "ratio": st["ratio"], "ratio_ci": st["ci"],
                         "ratio_range": st["range"], "times_s": ts}
        print(f"| {name} | {real_tokens / med:,.0f} | **{st['ratio']:.3f}x** | {clo:.3f}-{chi:.3f} | "
              f"{lo:.2f}-{hi:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
