"""Training-step throughput: ModernAlbert against ModernBERT of identical geometry, plus the ``tiny`` MoL preset.

Three lines, measured interleaved in one process on the same inputs (the machines are shared and noisy: the ratio
against ModernBERT is the result, absolute times drift; it is the median of the per-round paired ratios, with a
bootstrap 95 % confidence interval and the range, ``benchmarks/common.py``):

* ``ModernBERT``: ``transformers.ModernBertForMaskedLM``, global attention in every layer
  (``global_attn_every_n_layers=1``), no biases, dropout 0.
* ``ModernAlbert G=1``: ``ModernAlbertForMaskedLM`` with the same d / f / heads / depth / vocabulary, one layer per
  block (``group_depth=1``: no sharing), no MoL (``mol_groups=[]``), no embedding factorisation
  (``embedding_size=None``). Same parameter count up to the MLM head's details (printed).
* ``ModernAlbert tiny (MoL)``: the ``tiny`` preset as published (d=768, L=16, G=2, MoL at groups 5 and 6,
  E=4, k=2, r=16) with the benchmark's vocabulary so that the inputs and decoder size are shared.

A step is forward + backward + ``AdamW.step`` + ``zero_grad``. Inputs are packed MLM batches (fixed length, no
padding, CLS first, ~30 % of positions labelled with the 80/10/10 replacement), synthetic token ids: the cost does
not depend on which tokens they are. Both MaskedLM heads use sparse prediction (``sparse_prediction=True`` in both
configs: logits only at labelled positions; ``--dense`` for full logits in both). Attention is SDPA for all. CPU
fp32 by default; ``--device cuda --dtype bfloat16`` runs bf16 autocast over fp32 weights on a GPU. On Linux, freed
tensors stay in the process heap (see :func:`keep_freed_memory`; ``--no-keep-memory`` to compare): otherwise page
faults, not arithmetic, dominate CPU step times on virtual machines. Page faults per step are reported.

    python benchmarks/train_step.py [--d 384 --layers 6 --heads 12 --f 768 --vocab 30522 --batch 8 --seq 128]
                                    [--rounds 10 --warmup 3 --threads 2 --no-tiny --json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import statistics
from collections.abc import Callable

import torch
from transformers import ModernBertConfig, ModernBertForMaskedLM

from common import paired_ratios, time_interleaved
from modernalbert import ModernAlbertConfig, ModernAlbertForMaskedLM
from modernalbert.training.memory import keep_freed_memory

PAD, CLS, SEP, MASK = 0, 1, 2, 3


def make_batch(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """One packed MLM batch: (B, L) ids with CLS first, ~``mask_prob`` labelled positions, 80/10/10 replacement."""
    g = torch.Generator().manual_seed(0)
    B, L = args.batch, args.seq
    ids = torch.randint(5, args.vocab, (B, L), generator=g)
    ids[:, 0] = CLS
    chosen = torch.rand(B, L, generator=g) < args.mask_prob
    chosen[:, 0] = False  # never a special token
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    u = torch.rand(B, L, generator=g)
    inputs = torch.where(chosen & (u < 0.8), torch.full_like(ids, MASK), ids)
    random_ids = torch.randint(5, args.vocab, (B, L), generator=g)
    inputs = torch.where(chosen & (u >= 0.8) & (u < 0.9), random_ids, inputs)
    return {"input_ids": inputs, "attention_mask": torch.ones_like(ids), "labels": labels}


def build_models(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    """The variants, in a fixed order, all with SDPA attention and the same sparse/dense prediction."""
    tokens = dict(vocab_size=args.vocab, pad_token_id=PAD, cls_token_id=CLS, sep_token_id=SEP, bos_token_id=CLS,
                  eos_token_id=SEP)
    sparse = not args.dense
    bert_cfg = ModernBertConfig(
        **tokens, hidden_size=args.d, intermediate_size=args.f, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, global_attn_every_n_layers=1, max_position_embeddings=max(512, args.seq),
        sparse_prediction=sparse, attn_implementation="sdpa",
    )
    albert_cfg = ModernAlbertConfig(
        **tokens, mask_token_id=MASK, hidden_size=args.d, intermediate_size=args.f, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, embedding_size=None, group_depth=1, mol_groups=[],
        max_position_embeddings=max(512, args.seq), sparse_prediction=sparse, attn_implementation="sdpa",
    )
    models: dict[str, torch.nn.Module] = {
        "ModernBERT": ModernBertForMaskedLM(bert_cfg),
        "ModernAlbert G=1": ModernAlbertForMaskedLM(albert_cfg),
    }
    if not args.no_tiny:
        tiny_cfg = ModernAlbertConfig.from_preset("tiny", **tokens, mask_token_id=MASK, sparse_prediction=sparse,
                                                  attn_implementation="sdpa")
        models["ModernAlbert tiny (MoL)"] = ModernAlbertForMaskedLM(tiny_cfg)
    return models


def make_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], args: argparse.Namespace,
              dev: torch.device) -> Callable[[], float]:
    model.to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    batch = {k: v.to(dev) for k, v in batch.items()}
    use_autocast = args.dtype == "bfloat16"

    def step() -> float:
        ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if use_autocast else contextlib.nullcontext()
        with ctx:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()  # also a host sync, so the step's work is inside the timed region

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=384, help="hidden size")
    ap.add_argument("--layers", type=int, default=6, help="effective depth")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--f", type=int, default=768, help="GeGLU width (Wi: d -> 2f)")
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--mask-prob", type=float, default=0.3)
    ap.add_argument("--dense", action="store_true", help="full logits in both heads instead of sparse prediction")
    ap.add_argument("--no-tiny", action="store_true", help="leave out the tiny MoL preset")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    ap.add_argument("--rounds", type=int, default=10, help="timed rounds (one step of every variant each)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="bfloat16 = autocast over fp32 weights (GPU)")
    ap.add_argument("--no-keep-memory", action="store_true",
                    help="let glibc return freed tensors to the OS (every step then pays page faults)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    kept = False if args.no_keep_memory else keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)

    batch = make_batch(args)
    models = build_models(args)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    steps = {name: make_step(m, batch, args, dev) for name, m in models.items()}

    losses: dict[str, float] = {}
    faults: dict[str, list[int]] = {name: [] for name in steps}

    def counted(name: str):
        # The step's loss and the page faults it took (freed memory returned to the OS shows up here).
        def run() -> None:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            losses[name] = steps[name]()
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        return run

    times, _ = time_interleaved({name: counted(name) for name in steps}, args.warmup, args.rounds, dev)
    faults = {name: f[args.warmup:] for name, f in faults.items()}  # the timed rounds only

    tokens = args.batch * args.seq
    labelled = int((batch["labels"] != -100).sum())
    print(f"Training step (fwd + bwd + AdamW): batch {args.batch} x {args.seq} packed tokens, {labelled} labelled "
          f"({labelled / tokens:.1%}), {'dense' if args.dense else 'sparse'} prediction, SDPA, {args.device} "
          f"{args.dtype}, {args.threads} threads, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    print(f"Geometry: d={args.d}, L={args.layers}, h={args.heads}, f={args.f}, vocab={args.vocab}; "
          f"{args.warmup} warm-up steps, {args.rounds} interleaved rounds, freed memory kept in the heap: {kept}")
    print("| model | parameters | median step ms | train tokens/s | throughput vs ModernBERT | 95% CI | range "
          "| page faults/step |")
    print("|---|---|---|---|---|---|---|---|")
    results = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        # Paired by round (the steps of one round run back to back), so slow drifts in machine load cancel.
        st = paired_ratios(times["ModernBERT"], ts, speedup=True)
        (lo, hi), (clo, chi) = st["range"], st["ci"]
        results[name] = {"parameters": params[name], "median_ms": med * 1e3, "tokens_per_s": tokens / med,
                         "throughput_vs_modernbert": st["ratio"], "ratio_ci": st["ci"], "ratio_range": st["range"],
                         "step_ms": [t * 1e3 for t in ts], "last_loss": losses[name], "page_faults": faults[name]}
        print(f"| {name} | {params[name] / 1e6:.2f}M | {med * 1e3:.1f} | {tokens / med:,.0f} | "
              f"**{st['ratio']:.3f}x** | {clo:.3f}-{chi:.3f} | {lo:.2f}-{hi:.2f} "
              f"| {statistics.median(faults[name]):,.0f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "labelled_tokens": labelled, "freed_memory_kept": kept,
                       "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
