"""MoL FFN vs plain GeGLU FFN forward time, both mixing rules, measured in one run (CPU fp32 by default).

Geometry (issue defaults): d = 768, f = 1152, E = 8, k = 2, r = 16, 4096 tokens. Prints the ratio of each MoL
executor's median time to the plain GeGLU's, measured interleaved in the same process on the same input (the
machines are shared and noisy: ratios, not absolute times, are the result).

    python benchmarks/mol_ffn.py [--tokens 4096] [--threads 2] [--repeats 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

# OpenMP threads that wait passively (sleep) instead of spinning: must be set before torch loads OpenMP. On a shared,
# oversubscribed machine spinning threads steal the time slices of working ones; measured here, 2-thread runs then
# ran slower than 1-thread runs and ratios swung with the load. An explicit OMP_WAIT_POLICY is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from modernalbert import ModernAlbertConfig
from modernalbert.model.modeling import GeGLU, ModernAlbertModel, MoLGeGLU
from modernalbert.training.memory import keep_freed_memory


def build(mixing: str, args) -> MoLGeGLU:
    cfg = ModernAlbertConfig(
        vocab_size=128, embedding_size=None, hidden_size=args.d, num_attention_heads=12,
        intermediate_size=args.f, num_hidden_layers=1, group_depth=1, mol_groups=[0], num_experts=args.experts,
        num_experts_per_tok=args.k, lora_rank=args.rank, lora_alpha=2.0 * args.rank, mol_mixing=mixing,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, mask_token_id=3,
    )
    module = ModernAlbertModel(cfg).groups[0].mlp.eval()
    with torch.no_grad():  # trained-looking experts: B != 0 (the cost does not depend on it)
        for p in (module.lora_B1, module.lora_B2):
            p.normal_(0, 0.02)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--f", type=int, default=1152)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    keep_freed_memory()  # freed tensors stay in the heap: page faults would otherwise dominate CPU timings
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    dev = torch.device(args.device)

    mol = {m: build(m, args).to(dev, dtype) for m in ("weight", "output")}
    plain = GeGLU(mol["weight"].config).eval().to(dev, dtype)
    plain.load_state_dict({"Wi.weight": mol["weight"].Wi.weight, "Wo.weight": mol["weight"].Wo.weight})
    x = torch.randn(args.tokens, args.d, device=dev, dtype=dtype)
    fns = {"plain GeGLU": lambda: plain(x), "MoL weight mixing": lambda: mol["weight"](x),
           "MoL output mixing": lambda: mol["output"](x)}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for fn in fns.values():  # warm-up
            for _ in range(3):
                fn()
        for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every variant alike
            for name, fn in fns.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)

    base = statistics.median(times["plain GeGLU"])
    flops_plain = 2 * args.tokens * 3 * args.d * args.f
    er = args.experts * args.rank
    flops_lora = 2 * args.tokens * er * (2 * args.d + 3 * args.f)
    print(f"MoL FFN benchmark: {args.tokens} tokens, d={args.d}, f={args.f}, E={args.experts}, k={args.k}, "
          f"r={args.rank}, {args.device} {args.dtype}, {args.threads} threads, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    print(f"(dense-executor FLOP ratio for weight mixing: {(flops_plain + flops_lora) / flops_plain:.3f}x)")
    print("| FFN | median ms | ratio vs plain GeGLU |")
    print("|---|---|---|")
    results = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        results[name] = {"median_ms": med * 1e3, "ratio": med / base}
        print(f"| {name} | {med * 1e3:.2f} | {med / base:.3f}x |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
