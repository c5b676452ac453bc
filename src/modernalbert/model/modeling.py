"""ModernALBERT: a recursive encoder whose shared GeGLU FFN is modulated per token by routed LoRA experts (MoL).

One file: embeddings, RoPE, attention (unpadded fast paths plus transformers' attention interface), FFN variants
(GeGLU, MoL, RRT, MoA), the recursive encoder and every head. It imports only torch, transformers and its
configuration, so that ``save_pretrained`` can ship it next to the weights as Hub remote code.

Shape legend (used in the ``# (...)`` comments):
    B batch, L padded sequence length, N real (non-pad) tokens in the batch, d hidden, e embedding width,
    h heads, dh head size, f FFN intermediate size, V vocabulary, C labels / choices,
    E experts, k experts routed per token, r LoRA rank, G layers per group (recursion positions), P MoL calls
    (effective layers whose group is MoL).

Token-wise work (embeddings, norms, FFN/MoL, router, heads) runs on the N real tokens only, as a (N, d) matrix;
attention receives what its implementation needs (each sequence's own rows for SDPA in eager CPU calls, a padded
(B, L) view for SDPA elsewhere and for every implementation of transformers' attention interface, cu_seqlens for
FlashAttention varlen). Pads never reach the router or its statistics. Per forward, the layout of the batch
(indices, key mask, sliding-window band), the masks of transformers' attention interface and the RoPE tables (one
pair per distinct RoPE of the layer types) are built once and shared by every layer.

Attention pattern (ModernBERT's): each *effective* layer is global or local (``config.layer_types``), so a shared
block may attend globally at one recursion position and locally at another; local layers see the tokens at most
``config.sliding_window`` (= ``local_attention // 2``) positions away. SDPA computes local layers blocked, in
O(N w) (:func:`_sdpa_banded`), never through an (L, L) mask; FlashAttention through its ``window_size``.

Outputs follow transformers' conventions: the default outputs are what any encoder returns; the router outputs
come on request (``output_router_logits``, as in Mixtral and Switch); the router losses enter the loss whenever
labels are given; the loss honours ``num_items_in_batch`` (gradient accumulation); ``hidden_states`` has L + 1
entries whose last one is ``last_hidden_state`` (after the final norm), as transformers' ModernBERT returns them,
and every entry is part of the graph (it carries gradient).
"""

import importlib.util
import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.loss.loss_utils import fixed_cross_entropy
from transformers.masking_utils import create_bidirectional_mask, create_bidirectional_sliding_window_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, logging
from transformers.utils.generic import can_return_tuple

from .autocast import autocast_disabled
from .configuration import LAYER_TYPES, ModernAlbertConfig

logger = logging.get_logger(__name__)

# ====================================================================================================== outputs


@dataclass
class RouterOutputMixin:
    # Listed first among the bases of each output class, so these fields come *after* the standard ones
    # (dataclass fields follow the reversed MRO) and ``outputs[0]`` keeps its Hugging Face meaning.
    """Router fields, returned with ``output_router_logits=True`` (``None`` otherwise and when the model has no
    router; a ``None`` field is absent from the output's keys and tuple, so default outputs are a plain encoder's).

    Attributes:
        router_logits: P tensors (N, E), fp32: the router logits of the real tokens (in row-major order over the
            (B, L) batch) at every routed call (effective layer whose group is MoL / MoA), in depth order.
        router_aux_loss: Switch load-balance loss ``E * sum_e f_e * P_e``, averaged over routed calls
            (unweighted; the heads add ``router_aux_loss_coef`` times it to the loss when labels are given).
        router_z_loss: Router z-loss ``mean(logsumexp(logits)^2)``, averaged over calls (unweighted).
        expert_usage: (P, E) fraction of the top-k assignments of real tokens that went to each expert, one row
            per routed call in depth order.
        router_probs: (P, E) mean router probability per expert over real tokens, one row per routed call.
    """

    router_logits: tuple[torch.Tensor, ...] | None = None
    router_aux_loss: torch.Tensor | None = None
    router_z_loss: torch.Tensor | None = None
    expert_usage: torch.Tensor | None = None
    router_probs: torch.Tensor | None = None


@dataclass
class ModernAlbertModelOutput(RouterOutputMixin, BaseModelOutput):
    """Encoder output: ``last_hidden_state`` (B, L, d) with zeros at pads; ``hidden_states`` has L + 1 entries
    (embedding output, every *effective* layer but the last, then ``last_hidden_state``); router fields as in
    :class:`RouterOutputMixin`."""


@dataclass
class ModernAlbertMaskedLMOutput(RouterOutputMixin, MaskedLMOutput):
    """MaskedLM output plus router fields."""


@dataclass
class ModernAlbertSequenceClassifierOutput(RouterOutputMixin, SequenceClassifierOutput):
    """Sequence classification output plus router fields."""


@dataclass
class ModernAlbertTokenClassifierOutput(RouterOutputMixin, TokenClassifierOutput):
    """Token classification output plus router fields."""


@dataclass
class ModernAlbertQuestionAnsweringOutput(RouterOutputMixin, QuestionAnsweringModelOutput):
    """Extractive QA output plus router fields."""


@dataclass
class ModernAlbertMultipleChoiceOutput(RouterOutputMixin, MultipleChoiceModelOutput):
    """Multiple choice output plus router fields."""


ROUTER_FIELDS = ("router_logits", "router_aux_loss", "router_z_loss", "expert_usage", "router_probs")


def _router_fields(outputs: ModernAlbertModelOutput, requested: bool) -> dict[str, Any]:
    return {name: getattr(outputs, name) for name in ROUTER_FIELDS} if requested else {}


# ================================================================================================ batch layout


def _is_exporting() -> bool:
    """True while the forward is being traced or compiled (torch.export / ONNX / TorchScript / torch.compile).

    Code guarded by it must not read tensor values on the host: a traced graph would freeze one batch's answer.
    """
    return torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


@dataclass(eq=False)
class Layout:
    """Where the N real tokens sit in the padded (B, L) batch; computed once per forward.

    ``indices`` are flat positions in B * L, row-major, so each sequence's tokens are contiguous and in order
    (what FlashAttention varlen needs). ``key_mask`` is None when nothing is padded (the fast path); a traced
    graph always carries the mask, so that it stays correct for batches with and without padding.
    """

    indices: torch.Tensor  # (N,) int64
    batch_size: int
    seq_len: int
    cu_seqlens: torch.Tensor  # (B + 1,) int32
    key_mask: torch.Tensor | None  # (B, 1, 1, L) bool, True = attend; None = no padding
    # The masks transformers builds for an implementation of its attention interface, by layer type (set per
    # forward when used).
    interface_masks: dict[str, Any] = field(default_factory=dict)
    # Sliding-window band masks of :func:`_sdpa_banded`, by half-width (built on first use, shared by the layers).
    bands: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def padded(self) -> bool:
        return self.key_mask is not None

    @cached_property
    def max_seqlen(self) -> int:
        """Longest real sequence. Only FlashAttention varlen needs it, and it costs a host sync, so it is read
        lazily (once per forward: the value is cached on the layout that every layer shares)."""
        return int((self.cu_seqlens[1:] - self.cu_seqlens[:-1]).max())

    @cached_property
    def seq_lengths(self) -> list[int]:
        """Real length of every row, read on the host once per forward (like ``max_seqlen``) for the per-sequence
        attention of eager CPU calls."""
        return [b - a for a, b in itertools.pairwise(self.cu_seqlens.tolist())]

    def band(self, window: int) -> torch.Tensor:
        """The (nb, 1, b, 3b) bool mask of :func:`_sdpa_banded` for half-width ``window`` (block size b), built once
        per forward and window: query i of block j may attend key c of the three blocks j-1, j, j+1 when both
        tokens are in the same row of the batch and at most ``window`` positions apart in it.

        Positions are those of the padded (B, L) row (``indices % L``), as transformers' sliding-window mask counts
        them (``|q_idx - kv_idx| <= window``), so a row whose mask has holes gets its answer too. The rows padding
        the stream to whole blocks (and the zero block on each side) belong to no sequence (row -1): they attend
        each other, which keeps their softmax finite, and no real token attends them.
        """
        if window not in self.bands:
            b = _band_block(window)
            n = self.indices.shape[0]
            nb = (n + b - 1) // b  # blocks covering the N tokens
            pad = (b, nb * b - n + b)  # a zero block before, the tail and a zero block after
            # Row and position of every (B, L) slot, gathered at the real tokens (arange and expand rather than
            # indices // L and % L: ONNX export cannot divide by the symbolic L).
            B, L, device = self.batch_size, self.seq_len, self.indices.device
            row = torch.arange(B, device=device)[:, None].expand(B, L).reshape(-1)  # (B*L,)
            pos = torch.arange(L, device=device)[None, :].expand(B, L).reshape(-1)  # (B*L,)
            if self.padded:
                row, pos = row.index_select(0, self.indices), pos.index_select(0, self.indices)  # (N,) each
            row, pos = F.pad(row, pad, value=-1), F.pad(pos, pad, value=0)  # ((nb+2)b,) each
            row_q, pos_q = row[b:b + nb * b].view(nb, b, 1), pos[b:b + nb * b].view(nb, b, 1)  # (nb, b, 1)
            row_k, pos_k = row.unfold(0, 3 * b, b)[:, None], pos.unfold(0, 3 * b, b)[:, None]  # (nb, 1, 3b)
            allowed = (row_q == row_k) & ((pos_q - pos_k).abs() <= window)  # (nb, b, 3b)
            self.bands[window] = allowed[:, None]  # (nb, 1, b, 3b), broadcast over heads
        return self.bands[window]


def make_layout(attention_mask: torch.Tensor | None, batch_size: int, seq_len: int,
                device: torch.device) -> Layout:
    """Build the :class:`Layout` of a batch from its (B, L) attention mask (1 = real token)."""
    # Eager calls skip the mask when nothing is padded (one cheap check saves the gather/scatter); a traced
    # graph cannot branch on mask values, so it always takes the masked path, which is exact for any batch.
    if attention_mask is None or (not _is_exporting() and bool(attention_mask.all())):
        lengths = torch.full((batch_size,), seq_len, dtype=torch.int32, device=device)
        indices = torch.arange(batch_size * seq_len, device=device)
        key_mask = None
    else:
        mask = attention_mask.bool()
        lengths = mask.sum(-1, dtype=torch.int32)  # (B,)
        indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()  # (N,)
        if torch.compiler.is_compiling():
            # N is data-dependent under torch.export / torch.compile. Promising N >= 1 lets reductions over the N
            # rows trace without a guard on N == 0; the promise is not checked at run time, and a batch without any
            # real token still runs (to zeros) in the exported graph. (torch.jit.trace and the legacy ONNX exporter
            # record shapes as tensors, which torch._check cannot take, and need no promise.)
            torch._check(indices.shape[0] >= 1)
        # A row with no real token would make softmax see only -inf (NaN); let it attend everywhere instead.
        # Its outputs are never gathered, so this only keeps the kernel finite.
        safe = mask | ~mask.any(-1, keepdim=True)
        key_mask = safe[:, None, None, :]  # (B, 1, 1, L)
    cu_seqlens = F.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
    return Layout(indices, batch_size, seq_len, cu_seqlens, key_mask)


def pad_tokens(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Scatter (N, ...) real-token rows into a zero (B, L, ...) tensor."""
    if not layout.padded:
        return x.view(layout.batch_size, layout.seq_len, *x.shape[1:])
    out = x.new_zeros(layout.batch_size * layout.seq_len, *x.shape[1:])
    out = out.index_copy(0, layout.indices, x)
    return out.view(layout.batch_size, layout.seq_len, *x.shape[1:])  # (B, L, ...)


def unpad_tokens(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Gather the (N, ...) real-token rows of a (B, L, ...) tensor."""
    flat = x.reshape(layout.batch_size * layout.seq_len, *x.shape[2:])  # (B*L, ...)
    return flat if not layout.padded else flat.index_select(0, layout.indices)


# ==================================================================================================== precision


class Fp32BuffersMixin:
    """Keeps the buffers named in ``_fp32_buffers`` in fp32 when the module is cast (``model.to(torch.bfloat16)``,
    ``model.half()``): they move to the new device but are never rounded. They hold constants or running statistics
    (RoPE frequencies, routing moving averages) whose 16-bit rounding would change results, where a plain
    ``nn.Module`` cast rounds every floating buffer. List it before ``nn.Module`` among the bases."""

    _fp32_buffers: ClassVar[tuple[str, ...]] = ()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        kept = {name: self._buffers[name] for name in self._fp32_buffers if self._buffers.get(name) is not None}
        super()._apply(fn, recurse)  # type: ignore[misc]
        for name, old in kept.items():
            new = self._buffers[name]
            if new.dtype != torch.float32:  # a cast, not (only) a move: keep the fp32 values, on the new device
                self._buffers[name] = old.to(device=new.device, dtype=torch.float32)
        return self


# ========================================================================================================= RoPE


class RotaryEmbedding(Fp32BuffersMixin, nn.Module):
    """GPT-NeoX (rotate-half) rotary embedding with transformers' RoPE types (``default``, ``linear``, ``dynamic``,
    ``yarn``, ...), one per layer type (``config.rope_parameters[layer_type]``: ModernBERT's bases 160,000 global
    and 10,000 local), computed by transformers' own RoPE functions. Buffers and attributes are named per layer type
    as in transformers' ``ModernBertRotaryEmbedding`` (``{layer_type}_inv_freq``, ...), the names its
    ``dynamic_rope_update`` reads.

    The inverse frequencies and the tables are fp32 whatever the model's dtype (a bf16 ``inv_freq`` would shift
    every angle by up to 2^-8 relative, i.e. whole radians at long positions)."""

    _fp32_buffers = tuple(f"{t}_{name}" for t in LAYER_TYPES for name in ("inv_freq", "original_inv_freq"))

    def __init__(self, config: ModernAlbertConfig, device: torch.device | None = None):
        super().__init__()
        self.config = config
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = {t: config.rope_parameters[t]["rope_type"] for t in LAYER_TYPES}
        for layer_type in LAYER_TYPES:
            inv_freq, scaling = self.rope_init_fn(layer_type)(config, device, layer_type=layer_type)
            self.register_buffer(f"{layer_type}_inv_freq", inv_freq, persistent=False)
            self.register_buffer(f"{layer_type}_original_inv_freq", inv_freq.clone(), persistent=False)
            setattr(self, f"{layer_type}_attention_scaling", scaling)

    def rope_init_fn(self, layer_type: str) -> Callable[..., tuple[torch.Tensor, float]]:
        """transformers' function computing the inverse frequencies of ``layer_type``'s RoPE type."""
        rope_type = self.rope_type[layer_type]
        return self.compute_default_rope_parameters if rope_type == "default" else ROPE_INIT_FUNCTIONS[rope_type]

    @staticmethod
    def compute_default_rope_parameters(config: ModernAlbertConfig, device: torch.device | None = None,
                                        seq_len: int | None = None, layer_type: str = "full_attention",
                                        **kwargs: Any) -> tuple[torch.Tensor, float]:
        """Plain RoPE: ``inv_freq = theta^(-2i / dh)`` (dh/2,) with ``layer_type``'s base, fp32, no output scaling."""
        dim = config.head_dim
        base = config.rope_parameters[layer_type]["rope_theta"]
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim))  # (dh/2,)
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update  # "dynamic" / "longrope" types recompute inv_freq for long inputs
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor,
                layer_type: str) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 ``(cos, sin)`` tables of ``layer_type``'s RoPE, each ``(*position_ids.shape, dh)``, whatever the
        dtype of ``x`` (which gives the device only): the tables are constants, kept fp32 in every precision mode."""
        inv_freq = getattr(self, f"{layer_type}_inv_freq")
        scaling = getattr(self, f"{layer_type}_attention_scaling")
        freqs = position_ids[..., None].float() * inv_freq.float()  # (..., dh/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (..., dh)
        return emb.cos() * scaling, emb.sin() * scaling


def rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, dh) ``cos, sin`` to the (N, 1, 1, dh) ``(cos, signed_sin)`` that broadcast over (N, 2, h, dh) q/k.

    ``signed_sin`` carries rotate-half's sign, ``(-sin, sin)`` over the two halves, so that the rotation is
    ``x * cos + swap_halves(x) * signed_sin`` (see :func:`apply_rotary`).
    """
    half = sin.shape[-1] // 2
    signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)  # (N, dh)
    return cos[:, None, None, :], signed_sin[:, None, None, :]  # (N, 1, 1, dh) each


def _rotate_(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """Rotate (N, 2, h, dh) q/k in place: ``x * cos + sign * swap_halves(x) * signed_sin``; ``sign = -1`` is the
    inverse (transposed) rotation. 16-bit inputs are rotated in fp32 (as ModernBERT does), then written back."""
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)  # (N, 2, h, dh), halves exchanged
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.copy_(torch.addcmul(x.float() * cos, swapped.float(), signed_sin, value=sign))  # cast back
    return x.mul_(cos).addcmul_(swapped, signed_sin, value=sign)


class _RotaryQK(torch.autograd.Function):
    """RoPE on q and k of a fused (N, 3, h, dh) projection, with the closed-form backward: the rotation is linear
    with the tables' structure (equal cos halves, opposite sin halves), so its gradient is the inverse rotation of
    the incoming gradient. Autograd through the plain ops instead zero-fills and copies (N, 3, h, dh) gradients for
    every slice (rotate-half's halves, q/k and v): measured about 2.5x the RoPE cost of a training step on CPU."""

    @staticmethod
    def forward(ctx: Any, qkv: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, signed_sin)
        out = qkv.clone()  # (N, 3, h, dh); v copied as is
        _rotate_(out[:, :2], cos, signed_sin)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, signed_sin = ctx.saved_tensors
        grad = grad.clone()  # (N, 3, h, dh); v's gradient passes through
        _rotate_(grad[:, :2], cos, signed_sin, sign=-1.0)
        return grad, None, None


def apply_rotary(qkv: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate q and k of a fused (N, 3, h, dh) projection by the per-token tables of :class:`RotaryEmbedding`.

    Equals ModernBERT's ``x * cos + rotate_half(x) * sin`` (to rounding). Without autograd (inference) the rotation
    is written in place into the projection's output: no negation, no concatenation of the rotated q/k with v,
    about half the RoPE time of the plain form on CPU. With autograd, :class:`_RotaryQK` (out of place, with its
    closed-form backward).

    Returns:
        (N, 3, h, dh) rotated q, k and the untouched v (``qkv`` itself when rotated in place).
    """
    if torch.is_grad_enabled() and qkv.requires_grad:
        return _RotaryQK.apply(qkv, cos, signed_sin)
    _rotate_(qkv[:, :2], cos, signed_sin)
    return qkv


# ==================================================================================================== attention
# Two kinds of implementation. Our unpadded ones (``UNPADDED_ATTENTION_FUNCTIONS``: "sdpa" and
# "flash_attention_2") map the rotated (N, 3, h, dh) q/k/v of the real tokens to (N, h, dh) directly. Every other
# name ("eager", or any function registered in transformers' ``AttentionInterface``) is looked up in
# ``ALL_ATTENTION_FUNCTIONS`` and runs on the padded (B, h, L, dh) batch with the mask transformers builds for it
# (its sliding-window mask for local layers). ``window`` is the local layers' half-width (``config.sliding_window``),
# None for global layers.


def _sdpa_attention(qkv: torch.Tensor, layout: Layout, dropout: float, window: int | None = None) -> torch.Tensor:
    """SDPA, the cheapest exact form per case: local layers blocked (:func:`_sdpa_banded`) unless the window spans
    every row; global ones per sequence for padded batches in eager CPU calls, else one call."""
    if window is not None and (_is_exporting() or layout.seq_len - 1 > window):
        return _sdpa_banded(qkv, layout, dropout, window)
    # (Here every row fits in the window, so a local layer is a global one: no mask needed.)
    if layout.padded and qkv.device.type == "cpu" and not _is_exporting():
        return _sdpa_per_sequence(qkv, layout, dropout)
    return _sdpa_padded(qkv, layout, dropout)


def _band_block(window: int) -> int:
    """Block size of :func:`_sdpa_banded`: the half-width, so that a block's keys lie in it and its two neighbours."""
    return max(window, 1)


def _sdpa_banded(qkv: torch.Tensor, layout: Layout, dropout: float, window: int) -> torch.Tensor:
    """Exact sliding-window attention in O(N w) time and memory: the local layers' SDPA path (eager and traced).

    The N real tokens, in layout order (each sequence contiguous), are cut into blocks of b = w tokens (w the
    half-width). A query of block j attends keys at most w positions away, so within blocks j-1, j and j+1: one
    SDPA call over the nb blocks, each with its b queries against those 3b keys, and the fixed-size band mask of
    :meth:`Layout.band` (same row of the batch, distance <= w; built once per forward). The 3b-key windows are
    strided views of one padded copy of the projection (``unfold``), not copies. Cost: 3bN = 3wN scores against
    the (2w + 1)N a token needs, instead of the L^2 of a dense sliding mask.
    """
    n, _, h, dh = qkv.shape
    b = _band_block(window)
    band = layout.band(window)  # (nb, 1, b, 3b)
    nb = band.shape[0]
    padded = F.pad(qkv, (0, 0, 0, 0, 0, 0, b, nb * b - n + b))  # ((nb+2)b, 3, h, dh): zero blocks at both ends
    q = padded[b:b + nb * b].view(nb, b, 3, h, dh)[:, :, 0].transpose(1, 2)  # (nb, h, b, dh)
    windows = padded.unfold(0, 3 * b, b)  # (nb, 3, h, dh, 3b): rows (j-1)b .. (j+2)b of block j, a view
    k, v = windows[:, 1].transpose(-1, -2), windows[:, 2].transpose(-1, -2)  # (nb, h, 3b, dh) each
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=band, dropout_p=dropout)  # (nb, h, b, dh)
    return out.transpose(1, 2).reshape(nb * b, h, dh)[:n]  # (N, h, dh), the tail's rows dropped


def _sdpa_padded(qkv: torch.Tensor, layout: Layout, dropout: float) -> torch.Tensor:
    """The reference: one SDPA call over the padded (B, L) batch with the key mask (none when nothing is padded).
    On GPUs a single batched kernel beats a loop of small ones; traced graphs always take this path."""
    padded = pad_tokens(qkv, layout)  # (B, L, 3, h, dh)
    q, k, v = padded.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, h, L, dh)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.key_mask, dropout_p=dropout)  # (B, h, L, dh)
    return unpad_tokens(out.transpose(1, 2), layout)  # (N, h, dh)


def _sdpa_per_sequence(qkv: torch.Tensor, layout: Layout, dropout: float) -> torch.Tensor:
    """Exact varlen attention on CPU: one unmasked SDPA call per sequence, on its own rows of the token matrix.

    Measured on CPU (fp32, 2 threads, lengths ~ N(256, 64)): about half the time of one masked SDPA call over the
    padded batch, which pays for the pads' scores and for the mask inside the kernel, and no pad/unpad copies. Eager
    calls only: a traced graph cannot loop over data-dependent lengths, so it takes the padded, masked path.
    """
    outs = []
    # split, not one slice per sequence: its backward assembles the gradient with one concatenation, where each
    # slice's backward would fill and add a full (N, 3, h, dh) gradient.
    for seq in qkv.split(layout.seq_lengths):  # (Li, 3, h, dh) views, rows in order
        if seq.shape[0] == 0:  # a row without real tokens
            continue
        q, k, v = seq.unsqueeze(0).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (1, h, Li, dh), strided views
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # (1, h, Li, dh)
        outs.append(out[0].transpose(0, 1))  # (Li, h, dh)
    if not outs:  # no real token in the batch
        return qkv.new_empty(0, *qkv.shape[2:])  # (0, h, dh)
    return torch.cat(outs)  # (N, h, dh), sequences in row-major order like layout.indices


def eager_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                            **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out (transformers' "eager"), returning the probabilities: q/k/v (B, h, L, dh) and an
    additive (B, 1, L, L) mask (or None) to (B, L, h, dh) outputs and (B, h, L, L) probabilities."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, h, L, L)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # (B, h, L, L)
    dropped = F.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(dropped, value).transpose(1, 2).contiguous(), probs  # (B, L, h, dh), (B, h, L, L)


def _check_flash_inputs(qkv: torch.Tensor) -> None:
    """FlashAttention kernels run on CUDA tensors in 16-bit only: refuse anything else with the fix."""
    if not qkv.is_cuda or qkv.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(
            "attn_implementation='flash_attention_2' runs on CUDA tensors in fp16/bf16 only (got "
            f"{qkv.device.type} {qkv.dtype}); use attn_implementation='sdpa' on CPU or in fp32."
        )


def _flash_varlen_attention(qkv: torch.Tensor, layout: Layout, dropout: float, window: int | None = None
                            ) -> torch.Tensor:
    """FlashAttention 2 varlen on the packed real tokens: no padding, no mask; sequences located by cu_seqlens.
    Local layers pass ``window_size=(w, w)`` (the kernel's bounds are inclusive: w keys each side, as transformers'
    ModernBERT passes them). The kernel counts distances in real tokens: for a row whose attention mask has holes
    (pads between real tokens) that is fewer than the padded positions SDPA and eager count."""
    try:
        from flash_attn import flash_attn_varlen_qkvpacked_func
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise ImportError(
            "attn_implementation='flash_attention_2' needs the `flash-attn` package (pip install flash-attn) and "
            "a CUDA GPU; use attn_implementation='sdpa' otherwise."
        ) from err
    _check_flash_inputs(qkv)
    # qkv: (N, 3, h, dh) rows in layout order; cu_seqlens: (B + 1,) int32; max_seqlen: a host int (cached).
    return flash_attn_varlen_qkvpacked_func(
        qkv, layout.cu_seqlens, layout.max_seqlen, dropout_p=dropout, causal=False,
        window_size=(-1, -1) if window is None else (window, window),
    )  # (N, h, dh)


UNPADDED_ATTENTION_FUNCTIONS: dict[str, Callable[[torch.Tensor, Layout, float, int | None], torch.Tensor]] = {
    "sdpa": _sdpa_attention,
    "flash_attention_2": _flash_varlen_attention,
}


class ModernAlbertAttention(nn.Module):
    """Bias-free fused-QKV self-attention with RoPE on unpadded tokens."""

    is_causal = False  # read by transformers' attention functions

    def __init__(self, config: ModernAlbertConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.Wo = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.out_drop = nn.Dropout(config.attention_dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], layout: Layout,
                window: int | None = None, output_attentions: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, d) real-token rows to (N, d), and the (B, h, L, L) probabilities when the implementation returns
        them (eager) and ``output_attentions`` asks for them. ``window``: the half-width of a local layer's sliding
        window, None for a global layer (the type is the effective layer's, not the block's)."""
        qkv = self.Wqkv(x).view(-1, 3, self.num_heads, self.head_dim)  # (N, 3, h, dh)
        qkv = apply_rotary(qkv, *rope)  # (N, 3, h, dh), q and k rotated
        impl = self.config._attn_implementation or "sdpa"
        dropout = self.config.attention_dropout if self.training else 0.0
        probs = None
        if impl in UNPADDED_ATTENTION_FUNCTIONS:
            out = UNPADDED_ATTENTION_FUNCTIONS[impl](qkv, layout, dropout, window)  # (N, h, dh)
        else:
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(impl, eager_attention_forward)
            mask = layout.interface_masks["full_attention" if window is None else "sliding_attention"]
            q, k, v = pad_tokens(qkv, layout).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, h, L, dh)
            # sliding_window as transformers' ModernBERT passes it: w + 1, what its FlashAttention wrappers turn
            # into the kernel's inclusive (w, w) bounds; implementations that read the mask ignore it.
            out, probs = attention_interface(self, q, k, v, mask, dropout=dropout, scaling=self.head_dim**-0.5,
                                             sliding_window=None if window is None else window + 1
                                             )  # (B, L, h, dh), (B, h, L, L)
            out = unpad_tokens(out, layout)  # (N, h, dh)
        out = self.out_drop(self.Wo(out.reshape(-1, self.num_heads * self.head_dim)))  # (N, d)
        return out, (probs if output_attentions else None)


# ================================================================================================ FFN variants


class RouterStats(NamedTuple):
    """What one routed FFN call reports (all over the real tokens of the call)."""

    aux_loss: torch.Tensor  # () Switch balance loss E * sum_e f_e P_e
    z_loss: torch.Tensor  # () mean(logsumexp(logits)^2)
    usage: torch.Tensor  # (E,) fraction of top-k assignments per expert
    probs: torch.Tensor  # (E,) mean router probability per expert
    mass: torch.Tensor  # (E,) mean routed (renormalised top-k) probability mass per expert, sums to 1
    logits: torch.Tensor  # (N, E) fp32 router logits


class GeGLU(nn.Module):
    """The plain GeGLU FFN: ``Wo(act(input) * gate)`` with ``(input, gate) = Wi(x)``. Every variant extends it,
    so the shared weights keep the same names (``mlp.Wi``, ``mlp.Wo``) whatever the variant."""

    routed = False

    def __init__(self, config: ModernAlbertConfig):
        super().__init__()
        self.config = config
        self.Wi = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.act = ACT2FN[config.hidden_activation]
        self.drop = nn.Dropout(config.mlp_dropout)
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def glu(self, u: torch.Tensor) -> torch.Tensor:
        """(..., 2f) pre-activation to (..., f) GeGLU activation (dropout included)."""
        inp, gate = u.chunk(2, dim=-1)
        return self.drop(self.act(inp) * gate)

    def forward(self, x: torch.Tensor, position: int = 0) -> tuple[torch.Tensor, RouterStats | None]:
        return self.Wo(self.glu(self.Wi(x))), None


class Router(nn.Module):
    """Top-k softmax router. Returns a dense (N, E) gate (renormalised top-k probabilities, zero elsewhere),
    which lets the experts run as static-shape dense GEMMs (no gather, no host sync; compile/ONNX friendly).

    Routing is fp32 whatever the model's dtype or autocast state (Switch Transformers, Fedus et al. 2021, sec. 2.4
    "selective precision"; ST-MoE, Zoph et al. 2022): the logits are computed from fp32 casts of the input and of
    the weight with autocast off, so a 16-bit model routes exactly as an fp32 computation on its own (rounded)
    inputs and weights. Gate, one-hot and statistics are fp32; the executors cast the gate to their compute dtype.
    """

    def __init__(self, config: ModernAlbertConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.jitter = config.router_jitter
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) router input (any dtype) to (N, E) fp32 logits ``x W_r^T``, computed in fp32 with autocast off."""
        with autocast_disabled(x.device.type):
            return F.linear(x.float(), self.weight.float())  # (N, E)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, RouterStats]:
        """Route (N, d) tokens: fp32 ``(gate (N, E), onehot (N, k, E), stats)``."""
        with autocast_disabled(x.device.type):  # softmax, top-k and statistics in fp32 too
            return self._route(x.float())

    def _route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, RouterStats]:
        if self.training and self.jitter > 0:
            # Switch-style multiplicative jitter on the router input only, never on the FFN input.
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        logits = self.logits(x)  # (N, E) fp32
        probs = logits.softmax(-1)  # (N, E)
        top_p, top_i = probs.topk(self.top_k, dim=-1)  # (N, k)
        top_p = top_p / top_p.sum(-1, keepdim=True)
        onehot = F.one_hot(top_i, self.num_experts).to(probs.dtype)  # (N, k, E)
        gate = (onehot * top_p[..., None]).sum(1)  # (N, E)
        # Statistics over real tokens only (x holds no pads); the clamp keeps a batch without tokens finite.
        counts = onehot.sum((0, 1))  # (E,) top-k assignments per expert
        assignments = counts.sum().clamp(min=1.0)  # () N * k
        n_tokens = assignments / self.top_k  # () N
        usage = counts / assignments  # (E,)
        mean_p = probs.sum(0) / n_tokens  # (E,)
        mass = gate.sum(0) / n_tokens  # (E,)
        aux = self.num_experts * (usage * mean_p).sum()
        z = torch.logsumexp(logits, -1).square().sum() / n_tokens
        return gate, onehot, RouterStats(aux, z, usage, mean_p, mass, logits)


def gate_ranks(codes: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Scale (N, E*r) per-expert codes by their expert's (N, E) gate: static shapes, export-friendly. The gate is
    broadcast over each expert's r rank rows, not materialised as an (N, E*r) copy."""
    N, E = gate.shape
    r = codes.shape[1] // E  # explicit: N may be 0 (a batch without real tokens)
    return (codes.view(N, E, r) * gate[:, :, None]).view(N, E * r)  # (N, E, r) * (N, E, 1) -> (N, E*r)


class MoLGeGLU(Fp32BuffersMixin, GeGLU):
    """GeGLU whose two matrices are modulated per token by E routed LoRA experts (Mixture of LoRAs).

    Expert e owns ``A1_e: r x d, B1_e: 2f x r`` (on ``Wi``) and ``A2_e: r x f, B2_e: d x r`` (on ``Wo``), scale
    ``s = alpha / r``. B = 0 at init, so MoL is a no-op at step 0 (essential when the backbone comes from a
    teacher). Two mixing rules (``config.mol_mixing``):

    * ``output``: ``sum_e p_e (W2 + s B2_e A2_e) phi((W1 + s B1_e A1_e) x)``, run in the cheap form: ``u = W1 x``
      once, one GeGLU per routed slot, ``W2`` applied once to the mixed activation.
    * ``weight``: ``u = W1 x + s sum_e p_e B1_e A1_e x; a = phi(u); y = W2 a + s sum_e p_e B2_e A2_e a``, through
      the dense executor: all experts' A in one GEMM (N, E*r), gated, then one GEMM with the stacked B.

    Precision: routing is fp32 (:class:`Router`); the expert terms are computed in the dtype of the shared GEMM they
    join (``Wi x``: the weights' dtype, or the one autocast chooses), the routing moving average stays fp32.
    """

    routed = True
    _fp32_buffers = ("routing_ema",)

    def __init__(self, config: ModernAlbertConfig):
        super().__init__(config)
        E, r, d, f = config.num_experts, config.lora_rank, config.hidden_size, config.intermediate_size
        self.num_experts, self.rank, self.top_k = E, r, config.num_experts_per_tok
        self.scale = config.lora_scale
        self.mixing = config.mol_mixing
        self.router = Router(config)
        self.lora_A1 = nn.Parameter(torch.empty(E, r, d))
        self.lora_B1 = nn.Parameter(torch.empty(E, 2 * f, r))
        self.lora_A2 = nn.Parameter(torch.empty(E, r, f))
        self.lora_B2 = nn.Parameter(torch.empty(E, d, r))
        # Moving average of routed probability mass per expert (saved with the model): merge weights "router".
        self.ema_decay = config.router_ema_decay
        self.register_buffer("routing_ema", torch.full((E,), 1.0 / E, dtype=torch.float32))
        self.register_buffer("routing_ema_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update_routing_ema(self, mass: torch.Tensor) -> None:
        """Fold one call's routed probability mass (E,) into the moving average (called by the encoder once per
        routed call in training, outside activation checkpointing so that recomputation never counts twice)."""
        if not bool(torch.isfinite(mass).all()):  # a diverging step must not poison the saved average
            return
        if self.routing_ema_updates == 0:
            self.routing_ema.copy_(mass)
        else:
            self.routing_ema.mul_(self.ema_decay).add_(mass.float(), alpha=1 - self.ema_decay)
        self.routing_ema_updates += 1

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Experts stacked for the dense executor: A as (E*r, in) and B as (E*r, out)."""
        E, r = self.num_experts, self.rank
        A1 = self.lora_A1.reshape(E * r, -1)  # (E*r, d)
        B1 = self.lora_B1.transpose(1, 2).reshape(E * r, -1)  # (E*r, 2f)
        A2 = self.lora_A2.reshape(E * r, -1)  # (E*r, f)
        B2 = self.lora_B2.transpose(1, 2).reshape(E * r, -1)  # (E*r, d)
        return A1, B1, A2, B2

    def forward(self, x: torch.Tensor, position: int = 0) -> tuple[torch.Tensor, RouterStats]:
        gate, onehot, stats = self.router(x)  # (N, E), (N, k, E) fp32
        A1, B1, A2, B2 = self.stacked()
        s = self.scale

        # Separate GEMMs, and the low-rank terms accumulated in place into the shared GEMM's output (addmm_ with
        # beta = 1): measured faster on CPU than one GEMM over concatenated [W; A] weights plus copies.
        # In place is autograd-safe here: mm/addmm save their matrix operands, never the tensor added to.
        u = self.Wi(x)  # (N, 2f)
        # The expert terms join u in its dtype (the weights', or autocast's for the GEMM); autocast never casts an
        # in-place op's operands, so the gate and the B matrices are cast here (no-ops when the dtypes already match).
        dt = u.dtype
        gate, B1, B2 = gate.to(dt), B1.to(dt), B2.to(dt)
        a1 = F.linear(x, A1)  # (N, E*r), every expert's A1 x in one GEMM
        if self.mixing == "weight":
            u = u.addmm_(gate_ranks(a1, gate), B1, alpha=s)  # (N, 2f)
            act = self.glu(u)  # (N, f)
            a2 = F.linear(act, A2)  # (N, E*r)
            y = self.Wo(act).addmm_(gate_ranks(a2, gate), B2, alpha=s)  # (N, d)
            return y, stats

        # Output mixing: one GeGLU per routed slot j (expert e_j, weight p_j); W2 is linear, so it is applied
        # once to the mixed activation: W2 (sum_j p_j a_j) + s sum_j p_j B2_j A2_j a_j.
        mixed_act = a2_mix = None
        for j in range(self.top_k):
            slot = onehot[:, j].to(dt)  # (N, E) one-hot of slot j's expert
            # CUDA autocast runs sum in fp32 (CPU autocast does not): cast back, or the fp32 p_j would promote
            # the mixed activation and a2_mix to fp32 and the in-place addmm_ below would mix dtypes.
            p_j = (gate * slot).sum(-1, keepdim=True).to(dt)  # (N, 1)
            code = gate_ranks(a1, slot)  # (N, E*r), only e_j's rows
            last = j == self.top_k - 1
            u_j = u.addmm_(code, B1, alpha=s) if last else torch.addmm(u, code, B1, alpha=s)  # (N, 2f)
            act_j = self.glu(u_j)  # (N, f)
            a2_j = gate_ranks(F.linear(act_j, A2), slot * p_j)  # (N, E*r), weighted by p_j
            if mixed_act is None:
                mixed_act, a2_mix = act_j * p_j, a2_j
            else:
                mixed_act, a2_mix = mixed_act.addcmul_(act_j, p_j), a2_mix.add_(a2_j)
        y = self.Wo(mixed_act).addmm_(a2_mix, B2, alpha=s)  # (N, d)
        return y, stats


class RRTGeGLU(GeGLU):
    """Relaxed Recursive Transformer baseline: one fixed (non-routed) LoRA pair on ``Wi`` and ``Wo`` per recursion
    position of the group (G positions). B = 0 at init."""

    def __init__(self, config: ModernAlbertConfig):
        super().__init__(config)
        G, r, d, f = config.group_depth, config.lora_rank, config.hidden_size, config.intermediate_size
        self.scale = config.lora_scale
        self.lora_A1 = nn.Parameter(torch.empty(G, r, d))
        self.lora_B1 = nn.Parameter(torch.empty(G, 2 * f, r))
        self.lora_A2 = nn.Parameter(torch.empty(G, r, f))
        self.lora_B2 = nn.Parameter(torch.empty(G, d, r))

    def forward(self, x: torch.Tensor, position: int = 0) -> tuple[torch.Tensor, None]:
        p = position
        u = self.Wi(x) + self.scale * F.linear(F.linear(x, self.lora_A1[p]), self.lora_B1[p])  # (N, 2f)
        act = self.glu(u)  # (N, f)
        y = self.Wo(act) + self.scale * F.linear(F.linear(act, self.lora_A2[p]), self.lora_B2[p])  # (N, d)
        return y, None


class MoAGeGLU(GeGLU):
    """Mixture-of-Adapters baseline: E routed bottleneck adapters (width r, our choice) applied *after* the FFN:
    ``y = FFN(x); y + sum_e p_e Up_e(act(Down_e(y)))``, routed on the FFN input x. Up = 0 at init."""

    routed = True

    def __init__(self, config: ModernAlbertConfig):
        super().__init__(config)
        E, r, d = config.num_experts, config.lora_rank, config.hidden_size
        self.num_experts, self.rank = E, r
        self.router = Router(config)
        self.adapter_down = nn.Parameter(torch.empty(E, r, d))
        self.adapter_up = nn.Parameter(torch.empty(E, d, r))

    def forward(self, x: torch.Tensor, position: int = 0) -> tuple[torch.Tensor, RouterStats]:
        gate, _, stats = self.router(x)  # (N, E) fp32
        E, r = self.num_experts, self.rank
        y = self.Wo(self.glu(self.Wi(x)))  # (N, d)
        hidden = self.act(F.linear(y, self.adapter_down.reshape(E * r, -1)))  # (N, E*r)
        hidden = gate_ranks(hidden, gate.to(hidden.dtype))  # (N, E*r), in the adapters' compute dtype
        up = self.adapter_up.transpose(1, 2).reshape(E * r, -1)  # (E*r, d)
        return y + hidden @ up, stats


class LoRAGeGLU(GeGLU):
    """GeGLU with one fixed low-rank adapter on each matrix, ``W1 + B1 A1`` and ``W2 + B2 A2`` (rank
    ``config.adapter_rank``, scale folded into B): the form a merged MoL group takes."""

    def __init__(self, config: ModernAlbertConfig):
        super().__init__(config)
        R, d, f = config.adapter_rank, config.hidden_size, config.intermediate_size
        self.lora_A1 = nn.Parameter(torch.empty(R, d))
        self.lora_B1 = nn.Parameter(torch.empty(2 * f, R))
        self.lora_A2 = nn.Parameter(torch.empty(R, f))
        self.lora_B2 = nn.Parameter(torch.empty(d, R))

    def forward(self, x: torch.Tensor, position: int = 0) -> tuple[torch.Tensor, None]:
        # In-place accumulation as in MoLGeGLU; B is cast to the shared GEMM's dtype (autocast skips in-place ops).
        u = self.Wi(x)  # (N, 2f)
        u = u.addmm_(F.linear(x, self.lora_A1), self.lora_B1.T.to(u.dtype))  # (N, 2f)
        act = self.glu(u)  # (N, f)
        y = self.Wo(act)  # (N, d)
        return y.addmm_(F.linear(act, self.lora_A2), self.lora_B2.T.to(y.dtype)), None  # (N, d)


FFN_CLASSES: dict[str, type[GeGLU]] = {
    "glu": GeGLU,
    "mol": MoLGeGLU,
    "rrt": RRTGeGLU,
    "moa": MoAGeGLU,
    "lora": LoRAGeGLU,
}


# ================================================================================================ block, model


class ModernAlbertEmbeddings(nn.Module):
    """Factorised token embedding (V x e), bias-free projection e -> d, LayerNorm, dropout. No absolute
    positions (RoPE only). Without factorisation (``embedding_size=None``) the table is V x d and there is no
    projection."""

    def __init__(self, config: ModernAlbertConfig):
        super().__init__()
        self.config = config
        width = config.embedding_size or config.hidden_size
        # A pad id outside the vocabulary (the config allows it, as ModernBertConfig does) can never be an input
        # id, so there is no padding row to keep at zero.
        pad = config.pad_token_id
        pad = pad if pad is not None and 0 <= pad < config.vocab_size else None
        self.tok_embeddings = nn.Embedding(config.vocab_size, width, padding_idx=pad)
        self.proj = (nn.Linear(width, config.hidden_size, bias=False)
                     if config.embedding_size is not None else None)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=False)
        self.drop = nn.Dropout(config.embedding_dropout)

    def forward(self, input_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tok_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (N, e)
        if self.proj is not None:
            x = self.proj(x)  # (N, d)
        return self.drop(self.norm(x))


class ModernAlbertLayer(GradientCheckpointingLayer):
    """One shared block (pre-LN, bias-free): ``x + Attn(LN(x))`` then ``x + FFN(LN(x))``.

    The block of group 0 skips its attention norm at effective layer 0 (the embedding output is already normed);
    when that block is used only there (G = 1) it has no attention norm at all, as in ModernBERT.
    """

    def __init__(self, config: ModernAlbertConfig, group: int):
        super().__init__()
        self.group = group
        self.attn_norm = (nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=False)
                          if group > 0 or config.group_depth > 1 else nn.Identity())
        self.attn = ModernAlbertAttention(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=False)
        self.mlp = FFN_CLASSES[config.ffn_variants[group]](config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], layout: Layout,
                window: int | None = None, position: int = 0, first_layer: bool = False,
                output_attentions: bool = False) -> tuple:
        """(N, d) rows to ``(x, probs, *router_stats)``: the (N, d) output, the (B, h, L, L) attention
        probabilities or None, then the :class:`RouterStats` fields (none for an FFN without a router).

        The stats are flat, top-level outputs because reentrant activation checkpointing (``use_reentrant=True``)
        carries gradient through top-level tensors only: nested in a tuple, the router losses would silently lose
        theirs. The encoder passes every argument positionally, so a checkpointed call is replayed with exactly its
        own arguments even though one shared block runs at several effective layers. ``rope`` and ``window`` are
        those of the effective layer's type (:meth:`ModernAlbertModel.forward`).
        """
        attn_in = x if first_layer else self.attn_norm(x)
        attn_out, probs = self.attn(attn_in, rope, layout, window, output_attentions)
        x = x + attn_out
        ffn_out, stats = self.mlp(self.mlp_norm(x), position)
        return (x + ffn_out, probs, *(stats or ()))


class ModernAlbertPreTrainedModel(PreTrainedModel):
    """Weight init, checkpointing, attention-implementation support and Hub-ready saving shared by every class."""

    config_class = ModernAlbertConfig
    config: ModernAlbertConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["ModernAlbertEmbeddings", "ModernAlbertLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = False
    _supports_attention_backend = True

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """transformers' ``save_pretrained`` (and so ``push_to_hub``). The folder also receives this file and the
        configuration file, with an ``auto_map`` naming every head, so that ``AutoModel*.from_pretrained(folder,
        trust_remote_code=True)`` loads it where modernalbert is not installed (the Hub's remote-code flow)."""
        config_module = type(self.config).__module__.rsplit(".", 1)[-1]
        model_module = type(self).__module__.rsplit(".", 1)[-1]
        self.config.auto_map = {
            "AutoConfig": f"{config_module}.{type(self.config).__name__}",
            **{auto: f"{model_module}.{cls.__name__}" for cls, auto in AUTO_CLASSES.items()},
        }
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        # transformers skips modules without direct parameters for code outside its tree (remote-code safety).
        # Our _init_weights initialises leaves from their containers (Wqkv vs Wo need different stds) with the
        # flag-guarded transformers.initialization functions, so containers must be visited: no shortcut.
        super()._initialize_weights(module, is_custom_code=False)


    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        cfg = self.config
        cutoff = cfg.initializer_cutoff_factor

        def trunc(weight: torch.Tensor, std: float) -> None:
            init.trunc_normal_(weight, mean=0.0, std=std, a=-cutoff * std, b=cutoff * std)

        # Depth-aware: residual-branch outputs shrink with the *effective* depth L (each shared block is applied
        # L / K times, and it is the number of residual additions that grows the activations).
        std_in = cfg.initializer_range
        std_out = cfg.initializer_range / math.sqrt(2.0 * cfg.num_hidden_layers)
        if isinstance(module, ModernAlbertEmbeddings):
            trunc(module.tok_embeddings.weight, std_in)
            if module.proj is not None:
                trunc(module.proj.weight, std_in)
        elif isinstance(module, ModernAlbertAttention):
            trunc(module.Wqkv.weight, std_in)
            trunc(module.Wo.weight, std_out)
        elif isinstance(module, GeGLU):
            trunc(module.Wi.weight, std_in)
            trunc(module.Wo.weight, std_out)
            if isinstance(module, MoLGeGLU):
                init.constant_(module.routing_ema, 1.0 / module.num_experts)
                init.zeros_(module.routing_ema_updates)
            if isinstance(module, (MoLGeGLU, RRTGeGLU, LoRAGeGLU)):
                # PEFT's LoRA init: A ~ kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)); B = 0 (no-op at init).
                init.uniform_(module.lora_A1, -cfg.hidden_size ** -0.5, cfg.hidden_size ** -0.5)
                init.uniform_(module.lora_A2, -cfg.intermediate_size ** -0.5, cfg.intermediate_size ** -0.5)
                init.zeros_(module.lora_B1)
                init.zeros_(module.lora_B2)
            elif isinstance(module, MoAGeGLU):
                init.uniform_(module.adapter_down, -cfg.hidden_size ** -0.5, cfg.hidden_size ** -0.5)
                init.zeros_(module.adapter_up)
        elif isinstance(module, Router):
            trunc(module.weight, std_in)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
        elif isinstance(module, PredictionHead):
            trunc(module.dense.weight, std_out)
        elif isinstance(module, RotaryEmbedding):
            for layer_type in LAYER_TYPES:
                buffer = getattr(module, f"{layer_type}_inv_freq")
                inv_freq, _ = module.rope_init_fn(layer_type)(module.config, buffer.device, layer_type=layer_type)
                init.copy_(buffer, inv_freq)
                init.copy_(getattr(module, f"{layer_type}_original_inv_freq"), inv_freq)
        elif isinstance(module, ModernAlbertForMaskedLM):
            if module.decoder.bias is not None:
                init.zeros_(module.decoder.bias)
        elif isinstance(module, _CLASSIFIER_CLASSES):
            trunc(module.classifier.weight, cfg.hidden_size ** -0.5)
            if module.classifier.bias is not None:
                init.zeros_(module.classifier.bias)


class ModernAlbertModel(ModernAlbertPreTrainedModel):
    """The recursive encoder: embeddings, K shared blocks applied over L effective layers, final norm.

    Example:
        >>> import torch
        >>> from modernalbert import ModernAlbertConfig, ModernAlbertModel
        >>> model = ModernAlbertModel(ModernAlbertConfig.from_preset("test")).eval()
        >>> ids = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0]])
        >>> out = model(ids, attention_mask=(ids != 0).long(), output_router_logits=True)
        >>> tuple(out.last_hidden_state.shape), tuple(out.expert_usage.shape)
        ((2, 5, 64), (2, 4))
    """

    def __init__(self, config: ModernAlbertConfig):
        config.validate()
        if config._attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ImportError(
                "attn_implementation='flash_attention_2' needs the `flash-attn` package (pip install "
                "'modernalbert[flash]') and a CUDA GPU; use attn_implementation='sdpa' (the default) otherwise."
            )
        super().__init__(config)
        self.embeddings = ModernAlbertEmbeddings(config)
        self.groups = nn.ModuleList(ModernAlbertLayer(config, g) for g in range(config.num_hidden_groups))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=False)
        self.rotary_emb = RotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.tok_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.tok_embeddings = value

    def layer_plan(self) -> list[tuple[int, int]]:
        """``(group, position within group)`` for every effective layer, in depth order (its attention type is
        ``config.layer_types[layer]``)."""
        G = self.config.group_depth
        return [(i // G, i % G) for i in range(self.config.num_hidden_layers)]

    def set_attention_pattern(self, layer_types: list[str], local_attention: int,
                              rope_parameters: dict[str, Any] | None) -> None:
        """Set which effective layers attend globally or locally, the local window and each type's RoPE, in place
        (``ModernAlbertConfig.set_attention_pattern``). No parameter depends on them: only the RoPE buffers are
        rebuilt, on their device. The ModernBERT weight loader uses it to give a student its teacher's pattern.

        Raises:
            ValueError: From the config's validation (e.g. not one layer type per effective layer).
        """
        self.config.set_attention_pattern(layer_types, local_attention, rope_parameters)
        self.rotary_emb = RotaryEmbedding(self.config, device=self.rotary_emb.full_attention_inv_freq.device)

    def _check_inputs(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                      position_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> tuple[int, int]:
        exporting = _is_exporting()
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        ref = input_ids if input_ids is not None else inputs_embeds
        if ref.dim() != (2 if input_ids is not None else 3):
            raise ValueError(
                f"Expected input_ids of shape (batch, seq_len) or inputs_embeds of shape (batch, seq_len, width); "
                f"got {tuple(ref.shape)}."
            )
        B, L = ref.shape[:2]
        if B == 0 or L == 0:
            raise ValueError(f"Empty batch: got inputs of shape {tuple(ref.shape)}; pass at least one token.")
        if self.config.max_position_embeddings < L:
            # RoPE has no table to overflow; scaled RoPE types (rope_parameters) exist to go beyond it.
            logger.warning_once(
                f"Sequence length {L} exceeds max_position_embeddings={self.config.max_position_embeddings}, the "
                "pretraining context: positions beyond it were never trained (truncate the input, or use a scaled "
                "RoPE type in config.rope_parameters)."
            )
        if input_ids is not None:
            if input_ids.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
                raise ValueError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}.")
            # Value checks read the ids on the host: eager calls only (a traced graph cannot keep them).
            if not exporting:
                lo, hi = int(input_ids.min()), int(input_ids.max())
                if lo < 0 or hi >= self.config.vocab_size:
                    raise ValueError(
                        f"Token ids must lie in [0, vocab_size={self.config.vocab_size}); got values in "
                        f"[{lo}, {hi}]. Is the tokenizer the one this model was trained with?"
                    )
        else:
            width = self.config.embedding_size or self.config.hidden_size
            if inputs_embeds.shape[-1] != width:
                raise ValueError(f"inputs_embeds must have width {width} (the token embedding width), "
                                 f"got {inputs_embeds.shape[-1]}.")
        if attention_mask is not None and tuple(attention_mask.shape) != (B, L):
            raise ValueError(f"attention_mask must have shape {(B, L)}, got {tuple(attention_mask.shape)}.")
        if position_ids is not None:
            if position_ids.shape[-1] != L or position_ids.dim() not in (1, 2):
                raise ValueError(
                    f"position_ids must have shape (batch, {L}) or ({L},), got {tuple(position_ids.shape)}."
                )
            if not exporting and int(position_ids.min()) < 0:
                raise ValueError(f"position_ids must be >= 0, got {int(position_ids.min())}.")
        return B, L


    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ModernAlbertModelOutput:
        """Encode a batch.

        Args:
            input_ids: (B, L) token ids.
            attention_mask: (B, L), 1 for real tokens and 0 for padding (any padding side).
            position_ids: (B, L) or (L,) RoPE positions; default ``0 .. L-1`` per row (ModernBERT's convention).
            inputs_embeds: (B, L, e) token embeddings (before the factorised projection), instead of input_ids.
            output_attentions: Return the (B, h, L, L) attention probabilities of every effective layer; an
                implementation that does not compute them ("sdpa", "flash_attention_2") returns an empty tuple
                with a warning, as transformers' models do (use ``attn_implementation="eager"``).
            output_hidden_states: Return L + 1 hidden states (B, L, d): the embedding output, every effective
                layer but the last, then ``last_hidden_state`` (transformers' convention).
            output_router_logits: Return the router fields (see :class:`RouterOutputMixin`).
            **kwargs: ``return_dict`` (handled by ``can_return_tuple``); other keys (e.g. the ``token_type_ids``
                that BERT tokenizers emit) are accepted and ignored.

        Returns:
            :class:`ModernAlbertModelOutput`; ``last_hidden_state`` is zero at padded positions.
        """
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_router_logits = cfg.output_router_logits if output_router_logits is None else output_router_logits
        x, rope, layout = self._embed(input_ids, attention_mask, position_ids, inputs_embeds)
        if output_attentions and (cfg._attn_implementation or "sdpa") in UNPADDED_ATTENTION_FUNCTIONS:
            logger.warning_once(
                f"attn_implementation={cfg._attn_implementation!r} does not compute attention probabilities: "
                "output_attentions=True returns none. Load the model with attn_implementation='eager' or call "
                "model.set_attn_implementation('eager') to get them."
            )

        all_hidden: list[torch.Tensor] | None = [] if output_hidden_states else None
        all_attn: list[torch.Tensor] = []
        stats: list[RouterStats] = []
        for layer, (group, position) in enumerate(self.layer_plan()):
            if all_hidden is not None:
                x = _record_hidden_state(x, layout, all_hidden)  # (N, d), now computed through the record
            # The effective layer's type decides its RoPE and window, whichever block runs it.
            layer_type = cfg.layer_types[layer]
            window = cfg.sliding_window if layer_type == "sliding_attention" else None
            x, probs, *routed = self.groups[group](x, rope[layer_type], layout, window, position, layer == 0,
                                                   output_attentions)
            if routed:
                stats.append(RouterStats(*routed))
                mlp = self.groups[group].mlp
                if self.training and isinstance(mlp, MoLGeGLU):
                    mlp.update_routing_ema(stats[-1].mass.detach())
            if probs is not None:
                all_attn.append(probs)
        last = pad_tokens(self.final_norm(x), layout)  # (B, L, d)
        if all_hidden is not None:
            all_hidden.append(last)
        return ModernAlbertModelOutput(
            last_hidden_state=last,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            attentions=tuple(all_attn) if output_attentions else None,
            **(_router_outputs(stats) if output_router_logits else {}),
        )

    def _embed(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
               position_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None
               ) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]], Layout]:
        """Check the inputs; return the (N, d) embedded real tokens, their RoPE tables by layer type and the batch
        layout."""
        B, L = self._check_inputs(input_ids, attention_mask, position_ids, inputs_embeds)
        ref = input_ids if input_ids is not None else inputs_embeds
        layout = make_layout(attention_mask, B, L, ref.device)
        if position_ids is None:
            positions = torch.arange(L, device=ref.device).repeat(B)  # (B*L,)
        else:
            positions = position_ids.expand(B, L).reshape(-1)  # (B*L,)
        tokens = (input_ids.reshape(-1) if input_ids is not None
                  else inputs_embeds.reshape(B * L, -1))  # (B*L,) or (B*L, e)
        if layout.padded:
            positions = positions.index_select(0, layout.indices)  # (N,)
            tokens = tokens.index_select(0, layout.indices)  # (N,) or (N, e)
        x = (self.embeddings(input_ids=tokens) if input_ids is not None
             else self.embeddings(inputs_embeds=tokens))  # (N, d)
        layer_types = list(dict.fromkeys(self.config.layer_types))  # the distinct types, in depth order
        if (self.config._attn_implementation or "sdpa") not in UNPADDED_ATTENTION_FUNCTIONS:
            # The masks transformers builds for the implementation at hand (additive for eager), once per forward
            # and layer type: ModernBERT's bidirectional mask for global layers, its sliding-window one for local.
            masks = {"full_attention": create_bidirectional_mask,
                     "sliding_attention": create_bidirectional_sliding_window_mask}
            layout.interface_masks = {t: masks[t](config=self.config, inputs_embeds=x.new_empty(B, L, 0),
                                                  attention_mask=attention_mask) for t in layer_types}
        # One pair of tables per distinct RoPE (2 x (N, 1, 1, dh) fp32), once for all layers: types whose
        # parameters are equal share theirs.
        rope: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        by_parameters: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer_type in layer_types:
            key = repr(sorted(self.config.rope_parameters[layer_type].items()))
            if key not in by_parameters:
                by_parameters[key] = rope_tables(*self.rotary_emb(x, positions, layer_type))
            rope[layer_type] = by_parameters[key]
        return x, rope, layout


def _record_hidden_state(x: torch.Tensor, layout: Layout, record: list[torch.Tensor]) -> torch.Tensor:
    """Append the (B, L, d) padded form of the (N, d) rows to ``record`` and return the rows gathered back from
    it (the same values), so that the rest of the forward is computed through the recorded tensor: a returned
    hidden state is part of the graph and carries gradient (``retain_grad``, ``torch.autograd.grad``)."""
    padded = pad_tokens(x, layout)  # (B, L, d)
    record.append(padded)
    return unpad_tokens(padded, layout)  # (N, d)


def _router_outputs(stats: list[RouterStats]) -> dict[str, Any]:
    """The router fields of :class:`RouterOutputMixin` from every routed call's stats (empty without a router)."""
    if not stats:
        return {}
    return {
        "router_logits": tuple(s.logits for s in stats),  # P x (N, E)
        "router_aux_loss": torch.stack([s.aux_loss for s in stats]).mean(),
        "router_z_loss": torch.stack([s.z_loss for s in stats]).mean(),
        "expert_usage": torch.stack([s.usage for s in stats]),  # (P, E)
        "router_probs": torch.stack([s.probs for s in stats]),  # (P, E)
    }


# ======================================================================================================== heads


class PredictionHead(nn.Module):
    """ModernBERT's prediction head: dense d -> d (bias-free), activation, bias-free LayerNorm."""

    def __init__(self, config: ModernAlbertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.act = ACT2FN[config.classifier_activation]
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))


def _with_router_losses(loss: torch.Tensor | None, outputs: ModernAlbertModelOutput, config: ModernAlbertConfig,
                        labels: torch.Tensor | None, num_items_in_batch: torch.Tensor | int | None
                        ) -> torch.Tensor | None:
    """``loss`` plus the weighted router losses (Switch / ST-MoE: ``router_aux_loss_coef * aux +
    router_z_loss_coef * z``).

    With ``num_items_in_batch`` (gradient accumulation: transformers' Trainer then does not divide the loss by the
    accumulation steps), the router terms, which are per-batch means, are weighted by this micro-batch's share of
    the items, ``labels != -100`` counted as Trainer counts them, so that their weights over an accumulated batch
    sum to one.
    """
    if loss is None or outputs.router_aux_loss is None:
        return loss
    router = config.router_aux_loss_coef * outputs.router_aux_loss + config.router_z_loss_coef * outputs.router_z_loss
    if num_items_in_batch is not None and labels is not None:
        router = router * labels.ne(-100).sum().to(router.dtype) / num_items_in_batch
    return loss + router


def _real_token_mask(attention_mask: torch.Tensor | None, shape: tuple[int, int], device) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    return attention_mask.bool()


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    """Pool (B, L, d) hidden states to (B, d) over real tokens: ``cls`` takes the first real token of each row
    (any padding side), ``mean`` averages the real tokens. An all-pad row pools to zeros (finite)."""
    mask = _real_token_mask(attention_mask, hidden.shape[:2], hidden.device)  # (B, L)
    if mode == "cls":
        first = mask.int().argmax(-1)  # (B,) first real token (0 for an all-pad row, which is zero)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]  # (B, d)
    if mode == "mean":
        m = mask.to(hidden.dtype)[..., None]  # (B, L, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, d)
    raise ValueError(f"Unknown pooling {mode!r}: use 'cls' or 'mean'.")


def _token_loss(loss_function: Callable, logits: torch.Tensor, targets: torch.Tensor,
                num_items_in_batch: torch.Tensor | int | None, **kwargs: Any) -> torch.Tensor:
    """A transformers token-level loss (``ForMaskedLMLoss``, ``ForTokenClassification``), and a zero that keeps the
    graph when the batch has no target (their mean over no item would be NaN)."""
    if num_items_in_batch is None and not bool((targets != -100).any()):
        return logits.sum() * 0.0
    return loss_function(logits, targets, num_items_in_batch=num_items_in_batch, **kwargs)


class ModernAlbertForMaskedLM(ModernAlbertPreTrainedModel):
    """Encoder + MLM head: PredictionHead -> (transposed embedding projection when factorised) -> decoder whose
    weight is the token embedding (tied) plus a bias.

    The output side of the factorisation is ``embeddings.proj`` itself, transposed (our choice: no extra
    parameter). An adapter put on ``embeddings.proj`` (e.g. PEFT LoRA with ``target_modules="all-linear"``)
    therefore acts on both sides, before and after ``merge_and_unload``.
    """

    _tied_weights_keys: ClassVar[dict[str, str]] = {"decoder.weight": "model.embeddings.tok_embeddings.weight"}

    def __init__(self, config: ModernAlbertConfig):
        super().__init__(config)
        self.model = ModernAlbertModel(config)
        self.head = PredictionHead(config)
        self.decoder = nn.Linear(config.embedding_size or config.hidden_size, config.vocab_size, bias=True)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.decoder = new_embeddings

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """(M, d) -> (M, e) through the transpose of ``embeddings.proj`` (identity without factorisation).

        A plain ``nn.Linear`` is read directly. A wrapped projection (an adapter layer) is read through its own
        forward on the identity, ``proj(I_e) = W_eff^T`` (e, e*d work), so that the output side uses exactly the
        map the input side uses, merged or not.
        """
        proj = self.model.embeddings.proj
        if proj is None:
            return x
        if type(proj) is nn.Linear:
            return x @ proj.weight.to(x.dtype)  # (M, e)
        eye = torch.eye(self.config.embedding_size, device=x.device, dtype=x.dtype)  # (e, e)
        return x @ proj(eye).to(x.dtype).T  # (M, d) @ (d, e)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ModernAlbertMaskedLMOutput:
        """MLM forward. ``labels`` (B, L) use -100 for positions without a target. Logits are (B, L, V), zero at
        pads; with ``config.sparse_prediction`` and labels, logits are (M, V) for the M labelled positions only.
        The loss (transformers' ``ForMaskedLMLoss``, honouring ``num_items_in_batch``) adds the router losses."""
        output_router_logits = _flag(self.config, "output_router_logits", output_router_logits)
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             inputs_embeds=inputs_embeds, output_attentions=output_attentions,
                             output_hidden_states=output_hidden_states,
                             output_router_logits=output_router_logits or labels is not None)
        hidden = outputs.last_hidden_state  # (B, L, d)
        mask = _real_token_mask(attention_mask, hidden.shape[:2], hidden.device)  # (B, L)
        sparse = self.config.sparse_prediction and labels is not None
        if labels is not None and labels.shape != hidden.shape[:2]:
            raise ValueError(f"labels must have shape {tuple(hidden.shape[:2])}, got {tuple(labels.shape)}.")
        select = (labels != -100) & mask if sparse else mask  # (B, L)
        token_logits = self.decoder(self.unembed(self.head(hidden[select])))  # (N or M, V)
        if sparse:
            logits, targets = token_logits, labels[select]  # (M, V), (M,)
        else:
            logits = token_logits.new_zeros(*hidden.shape[:2], token_logits.shape[-1])
            logits[select] = token_logits  # (B, L, V)
            targets = labels.masked_fill(~mask, -100) if labels is not None else None  # (B, L)
        num_items = kwargs.get("num_items_in_batch")
        loss = None
        if labels is not None:
            loss = _token_loss(self.loss_function, logits, targets, num_items, vocab_size=self.config.vocab_size)
        return ModernAlbertMaskedLMOutput(
            loss=_with_router_losses(loss, outputs, self.config, labels, num_items), logits=logits,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            **_router_fields(outputs, output_router_logits),
        )


def _flag(config: ModernAlbertConfig, name: str, value: bool | None) -> bool:
    """An ``output_*`` argument resolved against the config (an explicit value wins)."""
    return bool(getattr(config, name)) if value is None else value


class _ClassifierBase(ModernAlbertPreTrainedModel):
    """Encoder + PredictionHead + dropout + linear classifier with ``out_features`` outputs."""

    def __init__(self, config: ModernAlbertConfig, out_features: int):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = ModernAlbertModel(config)
        self.head = PredictionHead(config)
        self.drop = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, out_features)
        self.post_init()

    def _classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.drop(self.head(x)))

    def _encode(self, has_labels: bool, output_router_logits: bool | None, **inputs: Any
                ) -> tuple[ModernAlbertModelOutput, bool]:
        """Run the encoder; router outputs when asked for, or when labels need the router losses."""
        requested = _flag(self.config, "output_router_logits", output_router_logits)
        return self.model(**inputs, output_router_logits=requested or has_labels), requested


class ModernAlbertForSequenceClassification(_ClassifierBase):
    """Pooled (``config.classifier_pooling``) sequence classification or regression (``num_labels == 1``)."""

    def __init__(self, config: ModernAlbertConfig):
        super().__init__(config, config.num_labels)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ModernAlbertSequenceClassifierOutput:
        """Classify sequences; ``labels`` (B,) class ids, (B,) floats for regression or (B, C) multi-label. The
        loss is transformers' ``ForSequenceClassificationLoss``; its regression and multi-label forms average
        over the batch whatever ``num_items_in_batch`` says, so they are rescaled to ``sum / num_items_in_batch``
        (what the single-label form does), and gradient accumulation equals the large batch for all three."""
        outputs, requested = self._encode(
            labels is not None, output_router_logits, input_ids=input_ids, attention_mask=attention_mask,
            position_ids=position_ids, inputs_embeds=inputs_embeds, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states)
        pooled = pool(outputs.last_hidden_state, attention_mask, self.config.classifier_pooling)  # (B, d)
        logits = self._classify(pooled)  # (B, C)
        num_items = kwargs.get("num_items_in_batch")
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits.float(), config=self.config,
                                      num_items_in_batch=num_items)
            if num_items is not None and self.config.problem_type != "single_label_classification":
                loss = loss * labels.numel() / num_items  # mean over the labels -> sum / num_items_in_batch
        return ModernAlbertSequenceClassifierOutput(
            loss=_with_router_losses(loss, outputs, self.config, labels, num_items), logits=logits,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            **_router_fields(outputs, requested),
        )


class ModernAlbertForTokenClassification(_ClassifierBase):
    """Per-token classification (e.g. NER); logits are (B, L, C), zero at pads; the head runs on real tokens."""

    def __init__(self, config: ModernAlbertConfig):
        super().__init__(config, config.num_labels)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ModernAlbertTokenClassifierOutput:
        """Classify tokens; ``labels`` (B, L) with -100 where there is no target (pads never are targets). The
        loss is transformers' ``ForTokenClassification`` (honours ``num_items_in_batch``)."""
        outputs, requested = self._encode(
            labels is not None, output_router_logits, input_ids=input_ids, attention_mask=attention_mask,
            position_ids=position_ids, inputs_embeds=inputs_embeds, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states)
        hidden = outputs.last_hidden_state  # (B, L, d)
        mask = _real_token_mask(attention_mask, hidden.shape[:2], hidden.device)  # (B, L)
        token_logits = self._classify(hidden[mask])  # (N, C)
        logits = token_logits.new_zeros(*hidden.shape[:2], token_logits.shape[-1])
        logits[mask] = token_logits  # (B, L, C)
        num_items = kwargs.get("num_items_in_batch")
        loss = None
        if labels is not None:
            loss = _token_loss(self.loss_function, logits, labels.masked_fill(~mask, -100), num_items,
                               config=self.config)
        return ModernAlbertTokenClassifierOutput(
            loss=_with_router_losses(loss, outputs, self.config, labels, num_items), logits=logits,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            **_router_fields(outputs, requested),
        )


class ModernAlbertForQuestionAnswering(_ClassifierBase):
    """Extractive QA: start/end logits per token (B, L); pads get the dtype's minimum so they are never picked."""

    def __init__(self, config: ModernAlbertConfig):
        super().__init__(config, 2)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ModernAlbertQuestionAnsweringOutput:
        """Span logits; the loss is transformers' ``ForQuestionAnsweringLoss``: the mean of the start and end
        cross-entropies, positions outside the sequence (clamped to L) ignored."""
        has_labels = start_positions is not None and end_positions is not None
        outputs, requested = self._encode(
            has_labels, output_router_logits, input_ids=input_ids, attention_mask=attention_mask,
            position_ids=position_ids, inputs_embeds=inputs_embeds, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states)
        hidden = outputs.last_hidden_state  # (B, L, d)
        mask = _real_token_mask(attention_mask, hidden.shape[:2], hidden.device)  # (B, L)
        token_logits = self._classify(hidden[mask])  # (N, 2)
        logits = token_logits.new_full((*hidden.shape[:2], 2), torch.finfo(token_logits.dtype).min)
        logits[mask] = token_logits  # (B, L, 2)
        start_logits, end_logits = logits.unbind(-1)  # 2 x (B, L)
        num_items = kwargs.get("num_items_in_batch")
        loss = None
        if has_labels:
            loss = self.loss_function(start_logits.float(), end_logits.float(), start_positions, end_positions,
                                      num_items_in_batch=num_items)
        return ModernAlbertQuestionAnsweringOutput(
            loss=_with_router_losses(loss, outputs, self.config, start_positions if has_labels else None,
                                     num_items),
            start_logits=start_logits, end_logits=end_logits, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions, **_router_fields(outputs, requested),
        )


class ModernAlbertForMultipleChoice(_ClassifierBase):
    """Multiple choice: inputs (B, C, L), one pooled score per choice, logits (B, C)."""

    def __init__(self, config: ModernAlbertConfig):
        super().__init__(config, 1)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ModernAlbertMultipleChoiceOutput:
        """Score choices; ``labels`` (B,) index of the right choice. The loss is transformers'
        ``fixed_cross_entropy`` (honours ``num_items_in_batch``)."""
        ref = input_ids if input_ids is not None else inputs_embeds
        if ref is None or ref.dim() < 3:
            raise ValueError("ModernAlbertForMultipleChoice expects inputs of shape (batch, num_choices, seq_len).")
        B, C, L = ref.shape[:3]

        def flat(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.reshape(B * C, L, *t.shape[3:])  # (B*C, L, ...)

        attention_mask = flat(attention_mask)
        outputs, requested = self._encode(
            labels is not None, output_router_logits, input_ids=flat(input_ids), attention_mask=attention_mask,
            position_ids=flat(position_ids), inputs_embeds=flat(inputs_embeds),
            output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        pooled = pool(outputs.last_hidden_state, attention_mask, self.config.classifier_pooling)  # (B*C, d)
        logits = self._classify(pooled).view(B, C)  # (B, C)
        num_items = kwargs.get("num_items_in_batch")
        loss = (fixed_cross_entropy(logits.float(), labels, num_items_in_batch=num_items)
                if labels is not None else None)
        return ModernAlbertMultipleChoiceOutput(
            loss=_with_router_losses(loss, outputs, self.config, labels, num_items), logits=logits,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            **_router_fields(outputs, requested),
        )


_CLASSIFIER_CLASSES = (
    ModernAlbertForSequenceClassification,
    ModernAlbertForTokenClassification,
    ModernAlbertForQuestionAnswering,
    ModernAlbertForMultipleChoice,
)
# The transformers auto class of every ModernAlbert class: registered so that save_pretrained ships the code and
# an auto_map (Hub remote code).
AUTO_CLASSES: dict[type[ModernAlbertPreTrainedModel], str] = {
    ModernAlbertModel: "AutoModel",
    ModernAlbertForMaskedLM: "AutoModelForMaskedLM",
    ModernAlbertForSequenceClassification: "AutoModelForSequenceClassification",
    ModernAlbertForTokenClassification: "AutoModelForTokenClassification",
    ModernAlbertForQuestionAnswering: "AutoModelForQuestionAnswering",
    ModernAlbertForMultipleChoice: "AutoModelForMultipleChoice",
}
for _cls, _auto in AUTO_CLASSES.items():
    _cls.register_for_auto_class(_auto)


# =========================================================================================== parameter counting


@dataclass(frozen=True)
class ParameterCount:
    """Unique parameters (what is stored and trained) and effective parameters (what an unshared encoder of the
    same depth would hold: every shared block counted once per effective layer that runs it)."""

    unique: int
    effective: int
    embedding: int
    per_group: tuple[int, ...]

    def __str__(self) -> str:
        return (f"{self.unique / 1e6:.2f}M unique / {self.effective / 1e6:.2f}M effective parameters "
                f"({self.embedding / 1e6:.2f}M in the token embedding)")


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count unique and effective parameters of any ModernAlbert model (tied weights counted once).

    Args:
        model: A ModernAlbert model or head model.

    Returns:
        A :class:`ParameterCount`.
    """
    base = model if isinstance(model, ModernAlbertModel) else model.model
    unique = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    per_group = tuple(sum(p.numel() for p in g.parameters()) for g in base.groups)
    # RRT's per-position LoRAs run once each; everything else in a group runs at all G positions.
    per_position = sum(p.numel() for g in base.groups if isinstance(g.mlp, RRTGeGLU)
                       for p in (g.mlp.lora_A1, g.mlp.lora_B1, g.mlp.lora_A2, g.mlp.lora_B2))
    G = base.config.group_depth
    effective = unique + (G - 1) * (sum(per_group) - per_position)
    return ParameterCount(unique, effective, base.embeddings.tok_embeddings.weight.numel(), per_group)


__all__ = [
    "AUTO_CLASSES",
    "FFN_CLASSES",
    "UNPADDED_ATTENTION_FUNCTIONS",
    "ModernAlbertForMaskedLM",
    "ModernAlbertForMultipleChoice",
    "ModernAlbertForQuestionAnswering",
    "ModernAlbertForSequenceClassification",
    "ModernAlbertForTokenClassification",
    "ModernAlbertModel",
    "ModernAlbertModelOutput",
    "ModernAlbertPreTrainedModel",
    "ParameterCount",
    "count_parameters",
    "eager_attention_forward",
    "pool",
]

