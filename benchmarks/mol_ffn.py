"""MoL FFN vs plain GeGLU FFN forward time, both mixing rules, at the FFN geometry of every preset (CPU fp32 default).

The geometries are those our models have: each distinct (d, f, E, k, r) of the paper's presets (``tiny``: d = 768,
f = 1152, E = 4; ``medium`` / ``base`` / ``large``: d = 1024, f = 2624, E = 8; k = 2, r = 16 in all), plus one
off-preset row, tiny's widths with E = 8, where the dense executor's FLOP ratio (1.243x) sits next to the 1.25x
target. ``--geometry d,f,E`` adds more rows. Each row times the plain GeGLU and the two MoL executors interleaved
with a rotating order, in the same process on the same input; a ratio is the median over rounds of the per-round
ratio of times, with a bootstrap 95 % confidence interval of that median and the smallest and largest per-round
ratio beside it (the machines are shared and noisy: ratios, not absolute times, are the result).

    python benchmarks/mol_ffn.py [--tokens 4096] [--threads 2] [--rounds 30] [--geometry 768,1152,8] [--json out]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

# OpenMP threads that wait passively (sleep) instead of spinning: must be set before torch loads OpenMP. On a shared,
# oversubscribed machine spinning threads steal the time slices of working ones; measured here, 2-thread runs then
# ran slower than 1-thread runs and ratios swung with the load. An explicit OMP_WAIT_POLICY is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from common import paired_ratios, time_interleaved
from modernalbert import PRESETS, ModernAlbertConfig
from modernalbert.model.modeling import GeGLU, MoLGeGLU
from modernalbert.training.memory import keep_freed_memory

PAPER_PRESETS = ("tiny", "medium", "base", "large")
GEOMETRY_KEYS = ("hidden_size", "intermediate_size", "num_experts", "num_experts_per_tok", "lora_rank", "lora_alpha")


def preset_geometries(extra: list[str], k: int, rank: int) -> dict[str, dict[str, Any]]:
    """Label -> FFN geometry: every distinct geometry of the paper's presets, the off-preset row, then ``extra``."""
    rows: dict[tuple, list[str]] = {}
    for name in PAPER_PRESETS:
        rows.setdefault(tuple(PRESETS[name][key] for key in GEOMETRY_KEYS), []).append(name)
    geometries = {"/".join(names): dict(zip(GEOMETRY_KEYS, values)) for values, names in rows.items()}
    tiny = geometries["tiny"]
    geometries["off-preset: tiny's d, f with E = 8"] = {**tiny, "num_experts": 8}
    for spec in extra:
        try:
            d, f, experts = (int(v) for v in spec.split(","))
        except ValueError:
            raise SystemExit(f"--geometry {spec!r}: expected three integers d,f,E (e.g. 768,1152,8)") from None
        geometries[f"d={d}, f={f}, E={experts}"] = dict(
            hidden_size=d, intermediate_size=f, num_experts=experts, num_experts_per_tok=k, lora_rank=rank,
            lora_alpha=2.0 * rank,
        )
    return geometries


def build(mixing: str, geometry: dict[str, Any]) -> MoLGeGLU:
    """One MoL FFN with trained-looking experts (B != 0; the cost does not depend on the values)."""
    d = geometry["hidden_size"]
    cfg = ModernAlbertConfig(
        vocab_size=128, embedding_size=None, num_attention_heads=max(1, d // 64), num_hidden_layers=1,
        group_depth=1, mol_groups=[0], mol_mixing=mixing, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        cls_token_id=1, sep_token_id=2, mask_token_id=3, **geometry,
    )
    module = MoLGeGLU(cfg).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.02)
    return module


def dense_flop_ratio(geometry: dict[str, Any]) -> float:
    """FLOPs of the dense weight-mixing executor over the plain GeGLU's, per token: the plain FFN multiplies by
    Wi (d x 2f) and Wo (f x d); the executor adds all E*r ranks of A1 (d), B1 (2f), A2 (f) and B2 (d), whatever
    the top-k (the router's d x E is counted too)."""
    d, f = geometry["hidden_size"], geometry["intermediate_size"]
    er = geometry["num_experts"] * geometry["lora_rank"]
    plain = 3 * d * f
    return (plain + er * (2 * d + 3 * f) + d * geometry["num_experts"]) / plain


def measure(geometry: dict[str, Any], args: argparse.Namespace, dev: torch.device,
            dtype: torch.dtype) -> dict[str, dict[str, Any]]:
    """Time the plain GeGLU and both MoL executors on the same tokens; ratios are paired per round."""
    torch.manual_seed(0)
    mol = {m: build(m, geometry).to(dev, dtype) for m in ("weight", "output")}
    mol["output"].load_state_dict(mol["weight"].state_dict())
    plain = GeGLU(mol["weight"].config).eval().to(dev, dtype)
    plain.load_state_dict({"Wi.weight": mol["weight"].Wi.weight, "Wo.weight": mol["weight"].Wo.weight})
    x = torch.randn(args.tokens, geometry["hidden_size"], device=dev, dtype=dtype)
    fns = {"plain GeGLU": lambda: plain(x), "MoL weight mixing": lambda: mol["weight"](x),
           "MoL output mixing": lambda: mol["output"](x)}
    with torch.inference_mode():
        times, _ = time_interleaved(fns, 2, args.rounds, dev)
    results = {}
    for name, ts in times.items():
        st = paired_ratios(times["plain GeGLU"], ts, speedup=False)
        results[name] = {"median_ms": statistics.median(ts) * 1e3, "ratio": st["ratio"], "ratio_ci": st["ci"],
                         "ratio_range": st["range"], "times_s": ts}
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--geometry", action="append", default=[], metavar="D,F,E",
                    help="add a geometry (k and r from --k, --rank); repeatable")
    ap.add_argument("--only", action="append", metavar="LABEL", help="run only this row (repeatable; default: all)")
    ap.add_argument("--k", type=int, default=2, help="routed experts per token of --geometry rows")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank of --geometry rows")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--json", help="also write the results (raw times included) here")
    args = ap.parse_args()
    keep_freed_memory()  # freed tensors stay in the heap: page faults would otherwise dominate CPU timings
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    dev = torch.device(args.device)

    geometries = preset_geometries(args.geometry, args.k, args.rank)
    if args.only:
        wanted = args.only
        unknown = [w for w in wanted if w not in geometries]
        if unknown:
            raise SystemExit(f"--only: unknown label(s) {unknown}; known: {list(geometries)}")
        geometries = {w: geometries[w] for w in wanted}

    print(f"MoL FFN benchmark: {args.tokens} tokens, {args.device} {args.dtype}, {args.threads} threads, "
          f"{args.rounds} rounds, torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print("| geometry | d | f | E | k | r | FFN | median ms | time vs plain GeGLU | 95% CI | range "
          "| dense FLOP ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    report: dict[str, Any] = {"args": vars(args), "torch": torch.__version__, "rows": {}}
    for label, geo in geometries.items():
        results = measure(geo, args, dev, dtype)
        floor = dense_flop_ratio(geo)
        report["rows"][label] = {"geometry": geo, "dense_flop_ratio": floor, "results": results}
        for name, r in results.items():
            (lo, hi), (clo, chi) = r["ratio_range"], r["ratio_ci"]
            floor_cell = f"{floor:.3f}x" if name == "MoL weight mixing" else ("1x" if name == "plain GeGLU" else "–")
            print(f"| {label} | {geo['hidden_size']} | {geo['intermediate_size']} | {geo['num_experts']} | "
                  f"{geo['num_experts_per_tok']} | {geo['lora_rank']} | {name} | {r['median_ms']:.1f} | "
                  f"**{r['ratio']:.3f}x** | {clo:.3f}-{chi:.3f} | {lo:.2f}-{hi:.2f} | {floor_cell} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
