"""Fast paths against their references: attention implementations, the per-sequence CPU SDPA path, the blocked
sliding-window path of local layers, RoPE (in place without autograd), torch.compile (no graph breaks in the MoL
executor, outputs equal to eager).

The ``test`` preset mixes layer types (layers 0 and 3 global, 1 and 2 local with a window of 4 each way), so every
test here runs both kinds of layer, and the short test sequences reach past the window."""

import shutil
import sys

import pytest
import torch

from modernalbert import ModernAlbertModel
from modernalbert.model import modeling
from tests.conftest import padded_batch, randomize_adapters, small_config

# ============================================================================================== attention paths


def _model(attn: str = "sdpa", **overrides) -> ModernAlbertModel:
    model = ModernAlbertModel(small_config(attn_implementation=attn, **overrides)).eval()
    randomize_adapters(model)
    return model


def _left_padded(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same sequences padded on the left (each row's real tokens moved to its end)."""
    lengths = mask.sum(-1)
    L = ids.shape[1]
    ids_l, mask_l = torch.zeros_like(ids), torch.zeros_like(mask)
    for b, n in enumerate(lengths.tolist()):
        ids_l[b, L - n:] = ids[b, :n]
        mask_l[b, L - n:] = 1
    return ids_l, mask_l


def _alone(model: ModernAlbertModel, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Each sequence encoded by itself, without padding: the ground truth for its rows in a padded batch."""
    outs = []
    for b in range(ids.shape[0]):
        row = ids[b][mask[b].bool()][None]  # (1, n)
        outs.append(model(row).last_hidden_state[0])  # (n, d)
    return outs


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_matches_each_sequence_alone(attn, side):
    model = _model(attn)
    ids, mask = padded_batch(lengths=(7, 4, 9, 1))
    alone = _alone(model, ids, mask)
    if side == "left":
        # Left padding shifts the default RoPE positions (ModernBERT's convention), so pass the right-padded ones.
        positions = torch.arange(ids.shape[1]).expand_as(ids) - (ids.shape[1] - mask.sum(-1, keepdim=True))
        ids, mask = _left_padded(ids, mask)
        out = model(ids, attention_mask=mask, position_ids=positions.clamp(min=0)).last_hidden_state
    else:
        out = model(ids, attention_mask=mask).last_hidden_state
    for b, ref in enumerate(alone):
        torch.testing.assert_close(out[b][mask[b].bool()], ref, rtol=0, atol=1e-5)
        assert (out[b][~mask[b].bool()] == 0).all()


def _dense_reference(qkv, layout, dropout, window=None):
    """The O(L^2) reference: one SDPA call over the padded batch with the key mask and, for a local layer, the dense
    band ``|i - j| <= window`` of transformers' sliding-window mask (each position also attends itself, so that pad
    queries stay finite)."""
    B, L = layout.batch_size, layout.seq_len
    q, k, v = modeling.pad_tokens(qkv, layout).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, h, L, dh)
    allowed = torch.ones(B, 1, 1, L, dtype=torch.bool) if layout.key_mask is None else layout.key_mask
    i = torch.arange(L)
    if window is not None:
        allowed = allowed & ((i[:, None] - i[None, :]).abs() <= window)  # (B, 1, L, L)
    allowed = allowed | torch.eye(L, dtype=torch.bool)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
    return modeling.unpad_tokens(out.transpose(1, 2), layout)  # (N, h, dh)


def test_sdpa_fast_paths_match_the_dense_reference(monkeypatch):
    """The eager CPU fast paths (global layers: one unmasked SDPA call per sequence; local layers: the blocked band)
    equal the padded SDPA reference with dense masks on real tokens, forward and backward (training runs the fast
    paths too), with an all-pad row in the batch."""
    torch.manual_seed(0)
    model = _model().train()  # dropout is 0 in the test preset: train mode only enables autograd bookkeeping
    ids, mask = padded_batch(lengths=(7, 4, 9, 2))
    mask[3] = 0  # a row without any real token
    calls = []

    def fast(qkv, layout, dropout, window=None):
        calls.append(window)
        return modeling._sdpa_attention(qkv, layout, dropout, window)

    def run(impl, dtype=torch.float32) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        monkeypatch.setitem(modeling.UNPADDED_ATTENTION_FUNCTIONS, "sdpa", impl)
        model.to(dtype).zero_grad(set_to_none=True)
        hidden = model(ids, attention_mask=mask).last_hidden_state  # (B, L, d)
        (hidden.square() * mask[..., None]).sum().backward()
        grads = {n: p.grad.double() for n, p in model.named_parameters() if p.grad is not None}
        return hidden.detach().double(), grads

    fast, fast_grads = run(fast)
    ref, ref_grads = run(_dense_reference)
    _, gold_grads = run(_dense_reference, torch.float64)  # float64: what both fp32 paths approximate
    assert calls == [None, 4, 4, None]  # global, local, local, global: the test preset's pattern
    real = mask.bool()
    torch.testing.assert_close(fast[real], ref[real], rtol=0, atol=1e-5)
    assert fast_grads.keys() == ref_grads.keys()
    for name, gold in gold_grads.items():
        # fp32 rounding (summation order) dominates both paths' gradients: the fast path must be as close to the
        # float64 gradient as the reference is.
        fast_err = float((fast_grads[name] - gold).abs().max())
        ref_err = float((ref_grads[name] - gold).abs().max())
        assert fast_err <= 1.5 * ref_err + 1e-8, (name, fast_err, ref_err)


def test_default_sdpa_dispatch_on_cpu(monkeypatch):
    """Global layers of a padded batch run per sequence; local layers run blocked unless every row fits in the
    window (then a local layer is a global one); an unpadded batch takes one batched call for global layers."""
    model = _model()
    seen = []
    for name in ("_sdpa_per_sequence", "_sdpa_banded", "_sdpa_padded"):
        original = getattr(modeling, name)
        monkeypatch.setattr(modeling, name, lambda *a, _n=name, _f=original: seen.append(_n) or _f(*a))
    ids, mask = padded_batch()  # rows of 7, 4 and 9 tokens: past the window of 4 each way
    model(ids, attention_mask=mask)
    assert seen == ["_sdpa_per_sequence", "_sdpa_banded", "_sdpa_banded", "_sdpa_per_sequence"]
    seen.clear()
    model(ids[:, :5], attention_mask=mask[:, :5])  # 5 positions: within the window
    assert seen == ["_sdpa_per_sequence"] * 4
    seen.clear()
    model(ids)  # nothing padded: one batched, unmasked call for global layers
    assert seen == ["_sdpa_padded", "_sdpa_banded", "_sdpa_banded", "_sdpa_padded"]


def _rows(lengths: tuple[int, ...], L: int, holes: bool = False) -> torch.Tensor:
    """A (B, L) attention mask: right-padded rows, the second one left-padded, and with ``holes`` a row whose pads
    sit between real tokens."""
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    for b, n in enumerate(lengths):
        if b == 1:
            mask[b, L - n:] = 1
        else:
            mask[b, :n] = 1
    if holes:
        mask[0, 3:9] = 0
    return mask


@pytest.mark.parametrize(("window", "lengths", "holes"), [
    (4, (23, 9, 0, 1), False),  # small window, short rows, an all-pad row
    (4, (23, 17, 5), True),  # pads inside a row: distances count padded positions, as transformers' mask does
    (0, (12, 7), False),  # local_attention = 1: a token sees itself only
    (64, (300, 130, 64, 65), False),  # ModernBERT's window (128) on rows longer than it
])
def test_banded_attention_equals_the_dense_sliding_window_reference(window, lengths, holes):
    """The blocked local-attention kernel against transformers' dense sliding-window semantics, float64, forward
    and backward; and its mask holds O(N w) entries (blocks of w queries against 3w keys), never (L, L)."""
    L = max(lengths)
    layout = modeling.make_layout(_rows(lengths, L, holes), len(lengths), L, torch.device("cpu"))
    n = layout.indices.shape[0]
    qkv = torch.randn(n, 3, 2, 8, dtype=torch.float64, requires_grad=True)
    out = modeling._sdpa_banded(qkv, layout, 0.0, window)
    ref = _dense_reference(qkv, layout, 0.0, window)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    weights = torch.randn_like(out)
    (grad,) = torch.autograd.grad((out * weights).sum(), qkv)
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), qkv)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)
    b = max(window, 1)
    assert layout.bands[window].shape == (-(-n // b), 1, b, 3 * b)  # (nb, 1, b, 3b): 3 b^2 per block of b tokens


def test_local_layers_never_build_a_dense_mask(monkeypatch):
    """At ModernBERT's window on 300-token rows, no SDPA call of the model sees an (L, L) mask or score matrix."""
    model = _model(local_attention=128, max_position_embeddings=512)
    ids, mask = padded_batch(lengths=(300, 200, 90))
    shapes = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        shapes.append((q.shape[-2], k.shape[-2], None if attn_mask is None else tuple(attn_mask.shape)))
        return original(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(modeling.F, "scaled_dot_product_attention", spy)
    model(ids, attention_mask=mask)
    local = [s for s in shapes if s[2] is not None]
    assert local and all(s == (64, 192, (local[0][2][0], 1, 64, 192)) for s in local)  # blocks of 64 vs 192 keys


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_unpadded_batch_paths_agree(attn):
    """No mask, an all-ones mask (the no-padding fast path) and the sequences one by one give the same result."""
    model = _model(attn)
    ids, _ = padded_batch(lengths=(6, 6, 6))
    ones = torch.ones_like(ids)
    no_mask = model(ids).last_hidden_state
    torch.testing.assert_close(model(ids, attention_mask=ones).last_hidden_state, no_mask, rtol=0, atol=0)
    for b, ref in enumerate(_alone(model, ids, ones)):
        torch.testing.assert_close(no_mask[b], ref, rtol=0, atol=1e-5)


def test_sdpa_and_eager_agree_on_real_tokens():
    sdpa, eager = _model("sdpa"), _model("eager")
    eager.load_state_dict(sdpa.state_dict())
    ids, mask = padded_batch(lengths=(7, 4, 9))
    real = mask.bool()
    a = sdpa(ids, attention_mask=mask).last_hidden_state[real]
    b = eager(ids, attention_mask=mask).last_hidden_state[real]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def _reference_flash_varlen(calls: list):
    """A reference for ``flash_attn.flash_attn_varlen_qkvpacked_func`` that checks its documented contract: packed
    (total, 3, h, dh) q/k/v with a unit-stride last dim, int32 cumulative sequence offsets (B + 1,) ending at total,
    a host-int longest length, ``window_size=(left, right)`` (query i sees keys i - left .. i + right of its
    sequence, bounds included; -1: unbounded); returns (total, h, dh). Computed per sequence with plain SDPA and a
    dense window mask."""

    def kernel(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
               **kwargs):
        assert qkv.dim() == 4 and qkv.shape[1] == 3 and qkv.stride(-1) == 1
        assert cu_seqlens.dtype == torch.int32 and cu_seqlens.dim() == 1 and int(cu_seqlens[-1]) == qkv.shape[0]
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        assert isinstance(max_seqlen, int) and max_seqlen == max(lengths)
        assert not causal and dropout_p == 0.0
        left, right = window_size
        assert isinstance(left, int) and isinstance(right, int)
        calls.append((lengths, window_size))
        outs = []
        for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True):
            q, k, v = qkv[a:b].permute(1, 2, 0, 3)  # 3 x (h, n, dh)
            offset = torch.arange(b - a)[None, :] - torch.arange(b - a)[:, None]  # (n, n): key index - query index
            allowed = ((offset >= -left) | (left < 0)) & ((offset <= right) | (right < 0))
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (h, n, dh)
            outs.append(out.transpose(0, 1))  # (n, h, dh)
        return torch.cat(outs)  # (total, h, dh)

    return kernel


def test_flash_varlen_path_matches_sdpa_on_real_tokens(monkeypatch):
    """The FlashAttention 2 varlen plumbing (unpadded rows, cu_seqlens, max_seqlen, the local layers'
    ``window_size``, output layout), run on CPU with the kernel replaced by a contract-checking reference: equal to
    SDPA (per-sequence global layers, blocked local layers) on real tokens, forward and backward. The CUDA kernel
    itself needs a GPU; this checks everything around it."""
    import importlib.machinery
    import types

    calls: list = []
    fake = types.ModuleType("flash_attn")
    fake.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    fake.flash_attn_varlen_qkvpacked_func = _reference_flash_varlen(calls)
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    monkeypatch.setattr(modeling, "_check_flash_inputs", lambda qkv: None)  # the CUDA / 16-bit guard

    # float64, so that only the plumbing can differ (dropout is 0 in the test preset: train mode means autograd)
    sdpa = _model("sdpa").train().double()
    flash = _model("sdpa").train().double()
    flash.load_state_dict(sdpa.state_dict())
    flash.config._attn_implementation = "flash_attention_2"
    ids, mask = padded_batch(lengths=(7, 4, 9, 1))
    real = mask.bool()
    outs = {}
    for name, model in (("sdpa", sdpa), ("flash", flash)):
        hidden = model(ids, attention_mask=mask).last_hidden_state
        (hidden.square() * mask[..., None]).sum().backward()
        outs[name] = hidden.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    # One call per effective layer, with the layer's window: global, local (4 each way), local, global.
    assert calls == [([7, 4, 9, 1], w) for w in [(-1, -1), (4, 4), (4, 4), (-1, -1)]]
    torch.testing.assert_close(outs["flash"][0][real], outs["sdpa"][0][real], rtol=0, atol=1e-10)
    assert (outs["flash"][0][~real] == 0).all()
    assert outs["flash"][1].keys() == outs["sdpa"][1].keys()
    for n, g in outs["sdpa"][1].items():
        torch.testing.assert_close(outs["flash"][1][n], g, rtol=1e-9, atol=1e-10, msg=n)


def test_flash_attention_refuses_cpu_or_fp32_tensors():
    with pytest.raises(ValueError, match=r"CUDA tensors in fp16/bf16 only \(got cpu torch.float32\).*sdpa"):
        modeling._check_flash_inputs(torch.zeros(2, 3, 1, 4))


@pytest.mark.parametrize("layer_type", ["full_attention", "sliding_attention"])
@pytest.mark.parametrize("grad", [False, True])
def test_rope_equals_rotate_half_reference(grad, layer_type):
    """In place without autograd, out of place with it: both equal ModernBERT's rotate-half form with the layer
    type's base (160,000 global, 10,000 local); v is untouched."""
    model = _model()
    positions = torch.tensor([0, 1, 5, 17, 200])
    cos, signed_sin = modeling.rope_tables(*model.rotary_emb(torch.empty(0), positions, layer_type))  # (N, 1, 1, dh)
    qkv = torch.randn(5, 3, 4, model.config.head_dim, requires_grad=grad)
    base = {"full_attention": 160_000.0, "sliding_attention": 10_000.0}[layer_type]
    dh = model.config.head_dim
    inv_freq = 1.0 / (base ** (torch.arange(0, dh, 2, dtype=torch.float) / dh))  # ModernBERT's formula, fp32
    freqs = positions[:, None].float() * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, None, :]  # (N, 1, 1, dh)
    x1, x2 = qkv[:, :2].detach().chunk(2, dim=-1)
    ref = qkv[:, :2].detach() * emb.cos() + torch.cat((-x2, x1), dim=-1) * emb.sin()
    with torch.set_grad_enabled(grad):
        src = qkv if grad else qkv.detach().clone()
        out = modeling.apply_rotary(src, cos, signed_sin)
    assert (out is src) == (not grad)  # in place exactly when nothing is differentiated
    torch.testing.assert_close(out[:, :2].detach(), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, 2].detach(), qkv[:, 2].detach(), rtol=0, atol=0)
    if grad:
        out.sum().backward()
        assert qkv.grad is not None and qkv.grad.shape == qkv.shape
    half = modeling.apply_rotary(qkv.detach().bfloat16(), cos, signed_sin)  # 16-bit: rotated in fp32
    torch.testing.assert_close(half[:, :2].float(), ref, rtol=1e-2, atol=1e-2)


def test_rope_closed_form_backward_passes_gradcheck():
    model = _model()
    tables = modeling.rope_tables(*model.rotary_emb(torch.empty(0), torch.tensor([0, 3, 9]), "full_attention"))
    cos, signed_sin = (t.double() for t in tables)
    qkv = torch.randn(3, 3, 2, model.config.head_dim, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: modeling._RotaryQK.apply(t, cos, signed_sin), (qkv,))


# ================================================================================================ torch.compile


def _has_cxx_compiler() -> bool:
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


@pytest.mark.parametrize("mixing", ["weight", "output"])
@pytest.mark.parametrize("training", [False, True])
def test_mol_executor_traces_without_graph_breaks(mixing, training):
    """fullgraph=True fails on any graph break: the MoL FFN (router, dense executor, statistics) is one graph."""
    torch._dynamo.reset()
    model = _model(mol_mixing=mixing, router_jitter=0.1 if training else 0.0).train(training)
    mlp = model.groups[1].mlp
    assert isinstance(mlp, modeling.MoLGeGLU)
    x = torch.randn(13, model.config.hidden_size)
    compiled = torch.compile(mlp, fullgraph=True, backend="eager")  # dynamo's capture alone: fast
    y, stats = compiled(x)
    if not training:  # jitter makes training outputs random
        ref, ref_stats = mlp(x)
        torch.testing.assert_close(y, ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(stats.usage, ref_stats.usage)
    explanation = torch._dynamo.explain(mlp)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


@pytest.mark.skipif(not _has_cxx_compiler(), reason="torch.compile (inductor) on CPU needs a C++ compiler")
@pytest.mark.parametrize("mixing", ["weight", "output"])
def test_compiled_model_matches_eager(mixing):
    """torch.compile(model) with the default inductor backend runs on CPU and matches eager to 1e-5."""
    torch._dynamo.reset()
    model = _model(mol_mixing=mixing)
    ids, mask = padded_batch(lengths=(7, 4, 9))
    compiled = torch.compile(model)
    with torch.inference_mode():
        ref = model(ids, attention_mask=mask, output_router_logits=True)
        out = compiled(ids, attention_mask=mask, output_router_logits=True)
    real = mask.bool()
    torch.testing.assert_close(out.last_hidden_state[real], ref.last_hidden_state[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.expert_usage, ref.expert_usage, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.router_aux_loss, ref.router_aux_loss, rtol=0, atol=1e-6)
