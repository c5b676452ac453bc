"""Encoder throughput, side by side: ModernAlbert against Hugging Face ModernBERT at identical geometry, and the
``tiny`` preset against ALBERT-base and BERT-base shapes; inference and a training step, fixed-length and
variable-length batches (ModernBERT's efficiency protocol), tokens/s, peak memory and model-FLOPs utilisation.

Every model of a section runs in this process on the same inputs, interleaved round by round with a rotating order
(the machines are shared and noisy: the ratios against each section's baseline are the result; absolute times
drift). A ratio is the median over rounds of the per-round ratio of the baseline's time to the model's (the calls
of one round run back to back), printed with a bootstrap 95 % confidence interval of that median and the smallest
and largest per-round value (``benchmarks/common.py``); a ratio whose interval holds 1 is a tie. Models are randomly
initialised (nothing is downloaded); dropout is 0 everywhere.

Sections:

* ``geometry``: ``transformers.ModernBertModel`` (the baseline) against ``ModernAlbertModel`` with the same d / f /
  heads / depth / vocabulary, one layer per block (G = 1), no MoL, no embedding factorisation; both with global
  attention in every layer (``global_attn_every_n_layers=1``: at these lengths, <= 512, the comparison is of the
  layers, not of the attention pattern, which the ``long`` section measures). ``--compile`` adds ``torch.compile``
  of ours.
* ``tiny``: randomly initialised ``BertModel`` with BERT-base shapes (the baseline) and ``AlbertModel`` with
  ALBERT-base shapes (d = 768, 12 layers, 12 heads, f = 3072; ALBERT: e = 128, one shared layer), against the
  ``tiny`` preset as published (d = 768, L = 16, G = 2, MoL at groups 5 and 6), and for inference the same model
  with its experts merged and folded into the FFN weights (the deployment form). Poolers are left out.
* ``mfu``: the encoder forward of both geometry models at batch 32 x 128, against a matmul peak re-measured in
  every round (the median of the per-round MFUs is reported), with a profile of ours that says where the time goes
  (matmul, attention kernel, the rest) and how fast its matmuls run against the peak.
* ``long``: ModernBERT's long-context workloads at the geometry section's shapes, both models at ModernBERT's default
  attention pattern (global attention every ``--long-every`` = 3rd layer from layer 0, a ``--long-window`` = 128-token
  sliding window elsewhere, RoPE bases 160,000 global / 10,000 local): ``transformers.ModernBertModel`` (the
  baseline; a dense sliding-window mask over the padded batch) against ``ModernAlbertModel`` (G = 1, no MoL, no
  factorisation; global layers per sequence, local layers blocked in O(N w)). Workloads: ``fixed`` =
  ``--long-fixed-batch`` rows of ``--long-seq`` = 8,192 tokens; ``variable`` = ``--long-var-batch`` rows with lengths
  ~ N(4096, 1024), rounded and clamped to [``--long-min-len``, ``--long-seq``] (seeded), right-padded. Run it alone
  with ``--sections long``.

Workloads: ``fixed`` = batches of ``--seq`` (512) real tokens per row; ``variable`` = lengths ~ N(256, 64) rounded
and clamped to [16, 512], right-padded to the batch's longest row (the same padded batch goes to every model).
Tokens/s counts real tokens. A training step is forward + backward of a loss on the real tokens' last hidden
states (mean square) + ``AdamW.step`` + ``zero_grad``.

Model FLOPs, counted analytically on real tokens only (identical for every model of the same shapes, so MFU ratios
equal throughput ratios; padding is never counted as useful work):

    forward FLOPs = sum over sequences of  2 * P * l  +  4 * d * (n_global * l^2 + n_local * pairs(l, w))

where l is a sequence's real length, pairs(l, w) the (query, key) pairs at most w positions apart in it (a local
layer's useful scores, w its half-window; n_local = 0 outside the ``long`` section), P the parameters a token is
multiplied by in matmuls (attention Wqkv and Wo, FFN, the factorised embedding's projection; for MoL the router and
the k routed experts' LoRA factors: *active* parameters, not the dense executor's E experts) and 4 * d per (query,
key) pair per layer the attention scores and the weighted sum. A training step counts 3 x the forward. MFU = model
FLOPs / s / the machine's fp32 (or --dtype) matmul peak, measured here as the best of repeated large square
matmuls.

Peak memory: CUDA: ``torch.cuda.max_memory_allocated`` over one call, minus what was allocated before. CPU
(Linux): freed heap pages are returned (``malloc_trim``), the process's peak-RSS mark is reset
(``/proc/self/clear_refs``), and the peak RSS (``VmHWM``) after one call minus the RSS before it is reported; where
the mark cannot be reset, the ``ru_maxrss`` delta (a lower bound). Measured in a separate call after the timings.

    python benchmarks/encoder.py                       # CPU fp32, 2 threads, all sections (< 10 minutes)
    python benchmarks/encoder.py --quick               # a smoke run (about a minute)
    python benchmarks/encoder.py --compile             # adds torch.compile of ModernAlbert (inference)
    python benchmarks/encoder.py --layers 22           # ModernBERT-base depth (slow on CPU)
    python benchmarks/encoder.py --device cuda --dtype bfloat16 --fixed-batch 32 --var-batch 64
    python benchmarks/encoder.py --json out.json --markdown out.md
    python benchmarks/encoder.py --sections long --rounds 3 --no-train          # long context, inference
    python benchmarks/encoder.py --sections long --train-rounds 2 --no-inference  # long context, training step
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import gc
import importlib.util
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# OpenMP threads that wait passively (sleep) instead of spinning: must be set before torch loads OpenMP. On a shared,
# oversubscribed machine spinning threads steal the time slices of working ones; measured here, 2-thread runs then
# ran slower than 1-thread runs and ratios swung with the load. An explicit OMP_WAIT_POLICY is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import transformers
from transformers import AlbertConfig, AlbertModel, BertConfig, BertModel, ModernBertConfig, ModernBertModel

from common import CLOCK, paired_ratios, sync, time_interleaved
from modernalbert import ModernAlbertConfig, ModernAlbertModel, merge_experts
from modernalbert.model.modeling import LoRAGeGLU, MoAGeGLU, MoLGeGLU, RRTGeGLU
from modernalbert.training.memory import keep_freed_memory

MIN_VOCAB = 30000  # ALBERT's vocabulary: token ids below it are valid for every model
PAD = 0

# ================================================================================================ inputs


@dataclass
class Workload:
    """One padded batch and what it holds."""

    name: str
    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    lengths: list[int]

    @property
    def real_tokens(self) -> int:
        return sum(self.lengths)

    @property
    def padded_tokens(self) -> int:
        return self.input_ids.numel()

    def describe(self) -> str:
        B, L = self.input_ids.shape
        return (f"{B} x {L} padded, {self.real_tokens} real tokens ({self.real_tokens / self.padded_tokens:.0%}), "
                f"lengths {min(self.lengths)}-{max(self.lengths)}")


def make_workload(name: str, lengths: list[int], seed: int, device: torch.device,
                  vocab: int = MIN_VOCAB) -> Workload:
    """Right-padded random token ids below ``min(vocab, MIN_VOCAB)`` with the given real lengths."""
    g = torch.Generator().manual_seed(seed)
    B, L = len(lengths), max(lengths)
    ids = torch.randint(5, min(vocab, MIN_VOCAB), (B, L), generator=g)  # (B, L)
    mask = (torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]).long()  # (B, L)
    ids = ids.masked_fill(mask == 0, PAD)
    return Workload(name, ids.to(device), mask.to(device), list(lengths))


def variable_lengths(n: int, mean: float, std: float, low: int, high: int, seed: int) -> list[int]:
    """ModernBERT's variable-length protocol: lengths ~ N(mean, std), rounded and clamped to [low, high]."""
    g = torch.Generator().manual_seed(seed)
    return torch.normal(mean, std, (n,), generator=g).round().clamp(low, high).long().tolist()


# ================================================================================================ models


@dataclass
class Entry:
    """A model under test, with what its FLOP count needs."""

    name: str
    model: torch.nn.Module
    matmul_params: int  # P: parameters a token is multiplied by in matmuls
    layers: int  # effective depth (attention layers)
    hidden: int  # d
    notes: str = ""
    parameters: int = 0
    local_layers: int = 0  # of ``layers``, those attending through a sliding window
    half_window: int = 0  # w: a local layer's query sees the keys at most w positions away

    def forward_flops(self, lengths: list[int]) -> float:
        """Useful forward FLOPs on real tokens (module docstring): matmuls, global and local attention."""
        glob = self.layers - self.local_layers
        return float(sum(2 * self.matmul_params * n + 4 * self.hidden * (
            glob * n * n + self.local_layers * window_pairs(n, self.half_window)) for n in lengths))


def window_pairs(n: int, w: int) -> int:
    """(query, key) pairs of an n-token sequence at most w positions apart: n + 2 * sum_{k=1..m} (n - k), m =
    min(w, n - 1) (the scores a sliding-window layer needs)."""
    m = max(min(w, n - 1), 0)
    return n + 2 * m * n - m * (m + 1)


def modernalbert_matmul_params(model: ModernAlbertModel) -> int:
    """Active matmul parameters per token of a ModernAlbert encoder (shared blocks counted once per use)."""
    cfg = model.config
    d, f = cfg.hidden_size, cfg.intermediate_size
    total = cfg.embedding_size * d if cfg.embedding_size is not None else 0
    for group, _position in model.layer_plan():
        total += 4 * d * d + 3 * d * f  # Wqkv (3 d^2), Wo (d^2), Wi (2 d f), Wo (f d)
        mlp = model.groups[group].mlp
        lora = d + 2 * f + f + d  # A1 (r x d), B1 (2f x r), A2 (r x f), B2 (d x r) per unit of rank
        if isinstance(mlp, MoLGeGLU):
            total += d * mlp.num_experts + mlp.top_k * mlp.rank * lora  # router + the k routed experts
        elif isinstance(mlp, RRTGeGLU):
            total += cfg.lora_rank * lora
        elif isinstance(mlp, MoAGeGLU):
            total += d * mlp.num_experts + cfg.num_experts_per_tok * 2 * d * mlp.rank
        elif isinstance(mlp, LoRAGeGLU):
            total += cfg.adapter_rank * lora
    return total


def bert_matmul_params(d: int, f: int, layers: int, embedding: int | None = None) -> int:
    """BERT / ALBERT: Q, K, V, O (4 d^2) and the two FFN matrices (2 d f) per layer; ALBERT's e -> d projection."""
    return layers * (4 * d * d + 2 * d * f) + (embedding * d if embedding else 0)


def hf_attention(args: argparse.Namespace) -> str:
    """FlashAttention 2 for the Hugging Face models on a GPU in 16-bit when installed, SDPA otherwise."""
    flash = importlib.util.find_spec("flash_attn") is not None
    return "flash_attention_2" if args.device == "cuda" and args.dtype != "float32" and flash else "sdpa"


def geometry_models(args: argparse.Namespace) -> list[Entry]:
    tokens = dict(vocab_size=args.vocab, pad_token_id=PAD, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                  sep_token_id=2)
    attn = hf_attention(args)
    torch.manual_seed(0)
    hf = ModernBertModel(ModernBertConfig(
        **tokens, hidden_size=args.d, intermediate_size=args.f, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, global_attn_every_n_layers=1, max_position_embeddings=max(512, args.seq),
        attn_implementation=attn,
    ))
    torch.manual_seed(0)
    ours = ModernAlbertModel(ModernAlbertConfig(
        **tokens, mask_token_id=3, hidden_size=args.d, intermediate_size=args.f, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, embedding_size=None, group_depth=1, mol_groups=[],
        global_attn_every_n_layers=1, max_position_embeddings=max(512, args.seq), attn_implementation=attn,
    ))
    P = bert_matmul_params(args.d, 0, args.layers) + args.layers * 3 * args.d * args.f  # 4 d^2 + 3 d f per layer
    assert modernalbert_matmul_params(ours) == P
    return [
        Entry("ModernBERT (HF)", hf, P, args.layers, args.d, notes=f"attn={attn}"),
        Entry("ModernAlbert G=1", ours, P, args.layers, args.d, notes=f"attn={attn}"),
    ]


def long_models(args: argparse.Namespace) -> list[Entry]:
    """The geometry section's shapes, both models at ModernBERT's default attention pattern (``--long-every``,
    ``--long-window``; RoPE bases 160,000 / 10,000, both models' defaults) and an 8,192-token context."""
    tokens = dict(vocab_size=args.vocab, pad_token_id=PAD, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                  sep_token_id=2)
    attn = hf_attention(args)
    shapes = dict(hidden_size=args.d, intermediate_size=args.f, num_hidden_layers=args.layers,
                  num_attention_heads=args.heads, global_attn_every_n_layers=args.long_every,
                  local_attention=args.long_window, max_position_embeddings=max(8192, args.long_seq),
                  attn_implementation=attn)
    torch.manual_seed(0)
    hf = ModernBertModel(ModernBertConfig(**tokens, **shapes))
    torch.manual_seed(0)
    ours = ModernAlbertModel(ModernAlbertConfig(**tokens, **shapes, mask_token_id=3, embedding_size=None,
                                                group_depth=1, mol_groups=[]))
    for key in ("layer_types", "sliding_window", "rope_parameters"):  # the same attention pattern in both
        assert getattr(hf.config, key) == getattr(ours.config, key), key
    P = modernalbert_matmul_params(ours)
    local = ours.config.layer_types.count("sliding_attention")
    w = ours.config.sliding_window
    notes = f"attn={attn}, {args.layers - local} global + {local} local layers"
    return [Entry("ModernBERT (HF)", hf, P, args.layers, args.d, notes=notes, local_layers=local, half_window=w),
            Entry("ModernAlbert G=1", ours, P, args.layers, args.d, notes=notes, local_layers=local, half_window=w)]


def tiny_models(args: argparse.Namespace) -> list[Entry]:
    attn = hf_attention(args)
    shapes = dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=12,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation=attn,
                  pad_token_id=PAD)
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=30522, **shapes), add_pooling_layer=False)
    torch.manual_seed(0)
    albert = AlbertModel(AlbertConfig(vocab_size=30000, embedding_size=128, hidden_act="gelu_new",
                                      num_hidden_groups=1, inner_group_num=1, classifier_dropout_prob=0.0, **shapes),
                         add_pooling_layer=False)
    torch.manual_seed(0)
    tiny = ModernAlbertModel(ModernAlbertConfig.from_preset("tiny", attn_implementation=attn))
    cfg = tiny.config
    mol = f"MoL groups {cfg.mol_groups}, E={cfg.num_experts}, k={cfg.num_experts_per_tok}, {cfg.mol_mixing} mixing"
    return [
        Entry("BERT-base shapes (HF)", bert, bert_matmul_params(768, 3072, 12), 12, 768, notes=f"attn={attn}"),
        Entry("ALBERT-base shapes (HF)", albert, bert_matmul_params(768, 3072, 12, 128), 12, 768,
              notes=f"attn={attn}"),
        Entry("ModernAlbert tiny", tiny, modernalbert_matmul_params(tiny), cfg.num_hidden_layers, cfg.hidden_size,
              notes=f"L={cfg.num_hidden_layers}, G={cfg.group_depth}, {mol}"),
    ]


# ================================================================================================ measuring


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if platform.system() == "Linux" and name else None


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def peak_memory_mib(fn: Callable[[], Any], device: torch.device) -> tuple[float | None, str]:
    """Extra peak memory of one call of ``fn`` in MiB, and how it was measured (see the module docstring)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20, "cuda max_memory_allocated"
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)  # hand freed heap pages back, so that the call's peak shows in the RSS
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
        base = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - base) / 1024, "peak RSS (VmHWM reset) - RSS before"
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, "ru_maxrss delta (lower bound)"


def matmul_rate(a: torch.Tensor, b: torch.Tensor, repeats: int, device: torch.device) -> float:
    """Best FLOP/s of ``a @ b`` (square, n x n) over ``repeats`` timed tries."""
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = CLOCK[0]()
        a @ b
        sync(device)
        best = min(best, CLOCK[0]() - t0)
    return 2 * a.shape[0] ** 3 / best


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    """Best FLOP/s of an n x n x n matmul over ``repeats`` tries: the machine's attainable matmul peak."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    return matmul_rate(a, b, repeats, device)


def inference_fn(model: torch.nn.Module, w: Workload) -> Callable[[], Any]:
    def run() -> Any:
        return model(input_ids=w.input_ids, attention_mask=w.attention_mask)

    return run


def training_fn(model: torch.nn.Module, w: Workload, args: argparse.Namespace,
                device: torch.device) -> Callable[[], float]:
    """One training step: a mean-square loss on the real tokens' last hidden states, backward, AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    mask = w.attention_mask.to(torch.float32)[..., None]  # (B, L, 1)
    autocast = args.dtype != "float32"

    def step() -> float:
        ctx = torch.autocast(device.type, dtype=getattr(torch, args.dtype)) if autocast else contextlib.nullcontext()
        with ctx:
            hidden = model(input_ids=w.input_ids, attention_mask=w.attention_mask).last_hidden_state  # (B, L, d)
        loss = (hidden.float().square() * mask).sum() / (mask.sum() * hidden.shape[-1])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()  # a host sync: the step's work is inside the timed region

    return step


@dataclass
class Row:
    section: str
    mode: str  # "inference" | "training"
    workload: str
    model: str
    median_s: float
    best_s: float
    tokens_per_s: float
    ratio: float  # throughput / the baseline's on the same workload: median over rounds of the paired ratios
    ratio_range: tuple[float, float]  # smallest and largest paired ratio (the noise)
    ratio_ci: tuple[float, float]  # bootstrap 95 % confidence interval of the median paired ratio
    mfu: float
    peak_mib: float | None
    first_call_s: float
    times_s: list[float] = field(default_factory=list)


def run_section(section: str, entries: list[Entry], workloads: list[Workload], mode: str,
                args: argparse.Namespace, device: torch.device, peak: float,
                extra: dict[str, tuple[Entry, torch.nn.Module]] | None = None) -> list[Row]:
    """Time every entry on every workload (interleaved per workload), the first entry being the baseline."""
    rows: list[Row] = []
    rounds = args.rounds if mode == "inference" else args.train_rounds
    for w in workloads:
        fns: dict[str, Callable[[], Any]] = {}
        flops: dict[str, float] = {}
        runners = [(e.name, e, e.model) for e in entries]
        runners += [(name, e, m) for name, (e, m) in (extra or {}).items()]
        for name, e, m in runners:
            m.train(mode == "training")
            fns[name] = inference_fn(m, w) if mode == "inference" else training_fn(m, w, args, device)
            flops[name] = e.forward_flops(w.lengths) * (1 if mode == "inference" else 3)
        ctx = torch.inference_mode() if mode == "inference" else contextlib.nullcontext()
        with ctx:
            times, first = time_interleaved(fns, args.warmup, rounds, device, clock=CLOCK[0])
            mem = {name: peak_memory_mib(fn, device) for name, fn in fns.items()} if not args.no_memory else {}
        base = times[entries[0].name]
        for name, ts in times.items():
            med = statistics.median(ts)
            # Paired by round (the calls of one round run back to back), so slow drifts in machine load cancel.
            st = paired_ratios(base, ts, speedup=True)
            rows.append(Row(section, mode, w.name, name, med, min(ts), w.real_tokens / med, st["ratio"],
                            st["range"], st["ci"], flops[name] / med / peak,
                            mem[name][0] if name in mem else None, first[name], ts))
        for name in fns:
            print(f"  [{section} {mode} {w.name}] {name}: {w.real_tokens / statistics.median(times[name]):,.0f} "
                  f"tokens/s", flush=True)
    return rows


def profile_breakdown(fn: Callable[[], Any], matmul_flops: float, peak: float) -> dict[str, Any]:
    """Where one forward's time goes (self time per op class, from torch.profiler) and the matmuls' own rate."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):  # several calls: one descheduled moment on a shared machine weighs less
            fn()
    classes = {
        "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
        "attention kernel": ("aten::_scaled_dot_product", "aten::_flash_attention", "aten::_efficient_attention"),
    }
    shares: dict[str, float] = {}
    ops: dict[str, float] = {}
    total = 0.0
    for ev in prof.key_averages():
        t = ev.self_cpu_time_total
        total += t
        ops[ev.key] = ops.get(ev.key, 0.0) + t
        cls = next((c for c, prefixes in classes.items() if ev.key.startswith(prefixes)), "other")
        shares[cls] = shares.get(cls, 0.0) + t
    top_other = sorted(((t, k) for k, t in ops.items()
                        if not any(k.startswith(p) for ps in classes.values() for p in ps)), reverse=True)[:6]
    mm_s = shares.get("matmul", 0.0) / 1e6
    return {
        "share": {k: v / total for k, v in shares.items()},
        "top_other_ops": {k: t / total for t, k in top_other},
        "matmul_rate_vs_peak": 3 * matmul_flops / mm_s / peak if mm_s > 0 else None,
        "profiled_ms": total / 1e3,
    }


# ================================================================================================ report


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"Device: {env['device']}, {env['dtype']}; torch {env['torch']}, transformers {env['transformers']}; "
        f"measured matmul peak {env['matmul_peak_gflops']:.0f} GFLOP/s ({env['peak_method']}); peak memory: "
        f"{env['memory_method']}; OMP_WAIT_POLICY={env['omp_wait_policy']}; clock: {env['clock']}"
        + (" (CPU seconds of all threads: tokens/s are per CPU-second)." if env["clock"] == "process" else "."),
        "",
    ]
    titles = {"geometry": "ModernAlbert (G = 1) vs Hugging Face ModernBERT, identical geometry: " + report["geometry"],
              "tiny": "ModernAlbert tiny vs BERT-base / ALBERT-base shapes",
              "long": "Long context: ModernAlbert (G = 1) vs Hugging Face ModernBERT, both at ModernBERT's attention "
                      "pattern: " + report.get("long_geometry", "")}
    for section in ("geometry", "tiny", "long"):
        rows = [r for r in report["rows"] if r["section"] == section]
        if not rows:
            continue
        baseline = rows[0]["model"]
        workloads = "; ".join(f"{k.split(' ', 1)[1]}: {v}" for k, v in report["workloads"].items()
                              if k.startswith(section))
        lines += [f"### {titles[section]}", "", f"Workloads: {workloads}.", "",
            f"| mode | workload | model | tokens/s | throughput vs {baseline} | 95% CI | range | MFU | peak MiB |",
            "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            mem = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:,.0f}"
            (lo, hi), (clo, chi) = r["ratio_range"], r["ratio_ci"]
            lines.append(f"| {r['mode']} | {r['workload']} | {r['model']} | {r['tokens_per_s']:,.0f} | "
                         f"**{r['ratio']:.3f}x** | {clo:.3f}-{chi:.3f} | {lo:.2f}-{hi:.2f} | {r['mfu']:.1%} | {mem} |")
        lines.append("")
    if report.get("compile"):
        c = report["compile"]
        lines += ["### torch.compile (ModernAlbert G = 1, inference)", "",
                  "| workload | compiled vs eager | first call (compile) s | max abs diff vs eager |",
                  "|---|---|---|---|"]
        for w, v in c.items():
            lines.append(f"| {w} | **{v['speedup']:.3f}x** | {v['first_call_s']:.1f} | {v['max_abs_diff']:.2e} |")
        lines.append("")
    if report.get("mfu"):
        m = report["mfu"]
        peaks = m["round_peaks_gflops"]
        lines += [f"### Encoder forward MFU at batch {m['batch']} ({m['geometry']})", "",
                  f"Matmul peak re-measured every round: {min(peaks):.0f}-{max(peaks):.0f} GFLOP/s.", "",
                  "| model | tokens/s (best round) | MFU, median of rounds (range) | best round / overall peak |",
                  "|---|---|---|---|"]
        for name, v in m["models"].items():
            lo, hi = v["mfu_range"]
            lines.append(f"| {name} | {v['tokens_per_s']:,.0f} | **{v['mfu']:.1%}** ({lo:.1%}-{hi:.1%}) | "
                         f"{v['best_round_mfu']:.1%} |")
        p = m["profile"]
        share = ", ".join(f"{k} {v:.1%}" for k, v in sorted(p["share"].items(), key=lambda kv: -kv[1]))
        other = ", ".join(f"{k} {v:.1%}" for k, v in p["top_other_ops"].items())
        rate = p["matmul_rate_vs_peak"]
        lines += ["", f"Profile of three ModernAlbert forwards (self time): {share}. Largest of the rest: {other}. "
                  f"The matmuls themselves run at {rate:.1%} of the measured peak." if rate else "", ""]
    return "\n".join(lines)


# ================================================================================================ main


def parse_args() -> argparse.Namespace:
    """The command line (``--quick`` lowers the defaults; flags given explicitly still win)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=768, help="hidden size of the geometry section")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--f", type=int, default=1152, help="GeGLU width (Wi: d -> 2f)")
    ap.add_argument("--layers", type=int, default=4, help="depth of the geometry section (ModernBERT-base: 22)")
    ap.add_argument("--vocab", type=int, default=50368)
    ap.add_argument("--seq", type=int, default=512, help="fixed length, and the variable lengths' upper clamp")
    ap.add_argument("--fixed-batch", type=int, default=4, help="rows of the fixed-length batch")
    ap.add_argument("--var-batch", type=int, default=16, help="rows of the variable-length batch")
    ap.add_argument("--var-mean", type=float, default=256.0)
    ap.add_argument("--var-std", type=float, default=64.0)
    ap.add_argument("--min-len", type=int, default=16)
    ap.add_argument("--tiny-fixed-batch", type=int, default=2, help="fixed-length rows in the tiny section")
    ap.add_argument("--tiny-var-batch", type=int, default=8, help="variable-length rows in the tiny section")
    ap.add_argument("--mfu-batch", default="32x128", help="batch x length of the MFU measurement")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls per model and workload")
    ap.add_argument("--rounds", type=int, default=5, help="timed inference rounds")
    ap.add_argument("--train-rounds", type=int, default=3, help="timed training rounds")
    ap.add_argument("--sections", default="geometry,tiny,mfu",
                    help="comma-separated subset of geometry,tiny,mfu,long (long: the long-context section, off by "
                         "default for its length; --sections long runs it alone)")
    ap.add_argument("--long-seq", type=int, default=8192, help="long section: fixed length, variable lengths' cap")
    ap.add_argument("--long-fixed-batch", type=int, default=1, help="long section: rows of the fixed batch")
    ap.add_argument("--long-var-batch", type=int, default=4, help="long section: rows of the variable batch")
    ap.add_argument("--long-var-mean", type=float, default=4096.0)
    ap.add_argument("--long-var-std", type=float, default=1024.0)
    ap.add_argument("--long-min-len", type=int, default=512, help="long section: lower clamp of variable lengths")
    ap.add_argument("--long-window", type=int, default=128, help="long section: local_attention (tokens)")
    ap.add_argument("--long-every", type=int, default=3, help="long section: global_attn_every_n_layers")
    ap.add_argument("--no-train", action="store_true", help="inference only")
    ap.add_argument("--no-inference", action="store_true",
                    help="training steps only (a long section's training half as a run of its own)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory calls")
    ap.add_argument("--compile", action="store_true", help="add torch.compile(ModernAlbert G=1) to inference")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: defaults of 2 layers, small batches, 2 rounds, tiny section inference only")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--peak-size", type=int, default=None,
                    help="n of the n x n x n matmul probing the peak (default 2048 on CPU, 4096 on CUDA; smaller "
                         "only for smoke runs: small matmuls do not reach the peak)")
    ap.add_argument("--clock", default="wall", choices=["wall", "process"],
                    help="process: CPU seconds of all threads instead of wall-clock seconds (CPU only; meaningful "
                         "with the default OMP_WAIT_POLICY=PASSIVE, under which waiting threads do not spin)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="16-bit: models cast for inference, autocast over fp32 weights for training (GPU)")
    ap.add_argument("--no-keep-memory", action="store_true", help="let glibc return freed memory to the OS")
    ap.add_argument("--json", help="write the full results (raw times included) here")
    ap.add_argument("--markdown", help="write the markdown tables here")
    if ap.parse_known_args()[0].quick:  # smaller defaults; flags given explicitly still win
        ap.set_defaults(layers=2, fixed_batch=1, var_batch=4, rounds=2, train_rounds=1, tiny_fixed_batch=1,
                        tiny_var_batch=2, mfu_batch="8x128")
    return ap.parse_args()


def main() -> None:
    # One linear script: the sections share the report, the workloads and the matmul peak, and each section saves
    # the report as soon as it is done; splitting it would only pass all of that around.
    args = parse_args()
    if args.vocab < 16:
        raise SystemExit(f"--vocab {args.vocab}: too small for random token ids; use at least 16.")
    kept = False if args.no_keep_memory else keep_freed_memory()  # page faults would dominate CPU timings
    device = torch.device(args.device)
    if args.clock == "process":
        if device.type != "cpu":
            raise SystemExit("--clock process measures CPU time: CPU runs only.")
        CLOCK[0] = time.process_time
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
        if args.dtype != "float32":
            raise SystemExit("CPU runs are fp32 only here (use --device cuda for bfloat16 / float16).")
    dtype = getattr(torch, args.dtype)
    sections = set(args.sections.split(","))
    if sections - {"geometry", "tiny", "mfu", "long"}:
        raise SystemExit(f"--sections {args.sections}: expected a comma-separated subset of geometry,tiny,mfu,long.")
    t_start = time.perf_counter()

    peak_n = args.peak_size or (4096 if device.type == "cuda" else 2048)
    peak = matmul_peak(device, dtype, peak_n, 20 if device.type == "cuda" else 8)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        _cpu_name() + f", {torch.get_num_threads()} threads")
    print(f"{dev_name}: measured {args.dtype} matmul peak {peak / 1e9:.0f} GFLOP/s", flush=True)

    var = variable_lengths(args.var_batch, args.var_mean, args.var_std, args.min_len, args.seq, seed=1)
    workloads = [make_workload(f"fixed {args.seq}", [args.seq] * args.fixed_batch, 0, device, args.vocab),
                 make_workload("variable", var, 1, device, args.vocab)]
    tiny_var = variable_lengths(args.tiny_var_batch, args.var_mean, args.var_std, args.min_len, args.seq, seed=2)
    tiny_workloads = [make_workload(f"fixed {args.seq}", [args.seq] * args.tiny_fixed_batch, 2, device),
                      make_workload("variable", tiny_var, 3, device)]
    geometry = (f"d={args.d}, f={args.f}, heads={args.heads}, layers={args.layers}, vocab={args.vocab}, "
                "global attention in every layer")
    report: dict[str, Any] = {
        "args": vars(args),
        "environment": {"device": dev_name, "threads": torch.get_num_threads(), "dtype": args.dtype,
                        "torch": torch.__version__, "transformers": transformers.__version__,
                        "flash_attn": importlib.util.find_spec("flash_attn") is not None,
                        "matmul_peak_gflops": peak / 1e9, "clock": args.clock,
                        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                        "peak_method": "best of repeated square matmuls, probed at the start and at the end",
                        "memory_method": "n/a", "freed_memory_kept": kept},
        "geometry": geometry,
        "workloads": {},
        "rows": [],
    }
    mem_probe = peak_memory_mib(lambda: None, device)[1]
    report["environment"]["memory_method"] = mem_probe

    def cast(entries: list[Entry], mode: str) -> None:
        # 16-bit inference runs 16-bit weights; training runs autocast over fp32 weights.
        for e in entries:
            e.model.to(device, dtype if mode == "inference" else torch.float32)
            e.parameters = sum(p.numel() for p in e.model.parameters())

    modes = ([] if args.no_inference else ["inference"]) + ([] if args.no_train else ["training"])
    if not modes:
        raise SystemExit("--no-train and --no-inference together leave nothing to measure.")
    if "geometry" in sections:
        for w in workloads:
            report["workloads"][f"geometry {w.name}"] = w.describe()
        print(f"geometry section: {geometry}", flush=True)
        for mode in modes:
            entries = geometry_models(args)
            cast(entries, mode)
            extra = None
            if args.compile and mode == "inference":
                extra = {"ModernAlbert G=1 + torch.compile": (entries[1], torch.compile(entries[1].model))}
            rows = run_section("geometry", entries, workloads, mode, args, device, peak, extra)
            report["rows"] += [r.__dict__ for r in rows]
            save(report, args, t_start)
            if extra:
                report["compile"] = compile_report(rows, entries[1].model, extra, workloads)
            del entries, extra
            gc.collect()
    if "tiny" in sections:
        for w in tiny_workloads:
            report["workloads"][f"tiny {w.name}"] = w.describe()
        for mode in (["inference"] if args.quick else modes):
            entries = tiny_models(args)
            cast(entries, mode)
            report["tiny_parameters"] = {e.name: e.parameters for e in entries}
            extra = None
            if mode == "inference":
                # The deployment form: every MoL group's experts merged and folded into its FFN weights.
                folded = merge_experts(entries[-1].model, form="fold").to(device, entries[-1].model.dtype).eval()
                entry = Entry("ModernAlbert tiny, experts folded", folded, modernalbert_matmul_params(folded),
                              entries[-1].layers, entries[-1].hidden)
                extra = {entry.name: (entry, folded)}
            rows = run_section("tiny", entries, tiny_workloads, mode, args, device, peak, extra)
            report["rows"] += [r.__dict__ for r in rows]
            save(report, args, t_start)
            del entries, extra
            gc.collect()
    if "long" in sections:
        long_section(args, device, peak, modes, report, cast, t_start)
    if "mfu" in sections:
        report["mfu"] = mfu_section(args, device, peak)
    # One probe of the peak can land on a slow moment of a shared machine (a low peak inflates every MFU, even
    # past 100 %); probe again at the end and divide every row by the best probe of the run.
    final_peak = max(peak, matmul_peak(device, dtype, peak_n,
                                       20 if device.type == "cuda" else 8))
    if "mfu" in report:
        final_peak = max(final_peak, max(report["mfu"]["round_peaks_gflops"]) * 1e9)
    report["environment"]["matmul_peak_probes_gflops"] = [peak / 1e9, final_peak / 1e9]
    report["environment"]["matmul_peak_gflops"] = final_peak / 1e9
    for row in report["rows"]:
        row["mfu"] *= peak / final_peak
    for v in report.get("mfu", {}).get("models", {}).values():
        v["best_round_mfu"] *= peak / final_peak
    save(report, args, t_start, final=True)


def long_section(args: argparse.Namespace, device: torch.device, peak: float, modes: list[str],
                 report: dict[str, Any], cast: Callable[[list[Entry], str], None], t_start: float) -> None:
    """ModernBERT's long-context workloads (fixed ``--long-seq``; lengths ~ N(4096, 1024)), both models at its
    default attention pattern, inference and training step, rows added to ``report``."""
    var = variable_lengths(args.long_var_batch, args.long_var_mean, args.long_var_std, args.long_min_len,
                           args.long_seq, seed=5)
    workloads = [make_workload(f"fixed {args.long_seq}", [args.long_seq] * args.long_fixed_batch, 6, device,
                               args.vocab),
                 make_workload("variable", var, 7, device, args.vocab)]
    for w in workloads:
        report["workloads"][f"long {w.name}"] = w.describe()
    for mode in modes:
        entries = long_models(args)
        cast(entries, mode)
        report["long_geometry"] = (f"d={args.d}, f={args.f}, heads={args.heads}, layers={args.layers}, "
                                   f"vocab={args.vocab}; {entries[0].notes.split(', ', 1)[1]}, window "
                                   f"{args.long_window} (RoPE 160,000 / 10,000)")
        print(f"long section: {report['long_geometry']}", flush=True)
        rows = run_section("long", entries, workloads, mode, args, device, peak)
        report["rows"] += [r.__dict__ for r in rows]
        save(report, args, t_start)
        del entries
        gc.collect()


def save(report: dict[str, Any], args: argparse.Namespace, t_start: float, final: bool = False) -> None:
    """Write the JSON and markdown outputs (also after every section: a run cut short keeps what it measured)."""
    report["environment"]["wall_s"] = time.perf_counter() - t_start
    text = markdown(report)
    if final:
        print()
        print(text)
        print(f"(total {report['environment']['wall_s']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


def compile_report(rows: list[Row], eager: torch.nn.Module, extra: dict[str, tuple[Entry, torch.nn.Module]],
                   workloads: list[Workload]) -> dict[str, Any]:
    """Compiled-vs-eager speedup per workload, compile time, and the compiled outputs' distance to eager."""
    (name, (_, compiled)), = extra.items()
    out = {}
    for w in workloads:
        by = {r.model: r for r in rows if r.workload == w.name}
        with torch.inference_mode():
            mask = w.attention_mask.bool()
            ref = eager(input_ids=w.input_ids, attention_mask=w.attention_mask).last_hidden_state[mask]
            got = compiled(input_ids=w.input_ids, attention_mask=w.attention_mask).last_hidden_state[mask]
        eager_times, compiled_times = by["ModernAlbert G=1"].times_s, by[name].times_s
        out[w.name] = {"speedup": statistics.median(e / c for e, c in zip(eager_times, compiled_times)),
                       "first_call_s": by[name].first_call_s,
                       "max_abs_diff": float((got.float() - ref.float()).abs().max())}
    return out


def mfu_section(args: argparse.Namespace, device: torch.device, peak: float) -> dict[str, Any]:
    """Encoder forward MFU of both geometry models at one fixed batch, and a profile of ours.

    Every round also re-measures the matmul peak (best of three square matmuls, back to back with the models), so
    that each round's MFU divides by the peak the machine offered at that moment; the median over rounds is
    reported, with the best round against the run's overall peak beside it.
    """
    B, L = (int(v) for v in args.mfu_batch.lower().split("x"))
    w = make_workload(f"{B}x{L}", [L] * B, 4, device, args.vocab)
    entries = geometry_models(args)
    dtype = getattr(torch, args.dtype)
    for e in entries:
        e.model.to(device, dtype).eval()
    n = 4096 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    round_peaks: list[float] = []

    def probe() -> None:
        round_peaks.append(matmul_rate(a, b, 3, device))

    fns: dict[str, Callable[[], Any]] = {e.name: inference_fn(e.model, w) for e in entries}
    if args.compile:  # fused elementwise work (RoPE, GeGLU, norms): what eager mode leaves on the table
        compiled = Entry("ModernAlbert G=1 + torch.compile", torch.compile(entries[1].model), entries[1].matmul_params,
                         entries[1].layers, entries[1].hidden)
        entries.append(compiled)
        fns[compiled.name] = inference_fn(compiled.model, w)
    fns["matmul peak"] = probe
    with torch.inference_mode():
        times, _ = time_interleaved(fns, args.warmup, args.rounds, device, clock=CLOCK[0])
        ours = entries[1]
        matmul_flops = 2.0 * ours.matmul_params * w.real_tokens
        profile = profile_breakdown(fns[ours.name], matmul_flops, peak) if device.type == "cpu" else {
            "share": {}, "top_other_ops": {}, "matmul_rate_vs_peak": None}
    round_peaks = round_peaks[-args.rounds:]  # the timed rounds' probes, in round order
    models = {}
    for e in entries:
        flops = e.forward_flops(w.lengths)
        per_round = [flops / t / p for t, p in zip(times[e.name], round_peaks)]
        best = min(times[e.name])
        models[e.name] = {"tokens_per_s": w.real_tokens / best, "mfu": statistics.median(per_round),
                          "mfu_range": (min(per_round), max(per_round)), "best_round_mfu": flops / best / peak,
                          "times_s": times[e.name]}
        print(f"  [mfu {B}x{L}] {e.name}: MFU {models[e.name]['mfu']:.1%} (median of rounds)", flush=True)
    geometry = f"d={args.d}, f={args.f}, heads={args.heads}, layers={args.layers}"
    return {"batch": f"{B} x {L}", "geometry": geometry, "models": models, "profile": profile,
            "round_peaks_gflops": [p / 1e9 for p in round_peaks]}


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
