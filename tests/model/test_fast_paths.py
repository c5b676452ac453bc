"""Fast paths against their references: attention implementations, the per-sequence CPU SDPA path, RoPE (in place
without autograd), torch.compile (no graph breaks in the MoL executor, outputs equal to eager)."""

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


def test_per_sequence_sdpa_matches_the_padded_reference(monkeypatch):
    """The eager CPU fast path (one unmasked SDPA call per sequence) equals the padded, masked SDPA reference on
    real tokens, forward and backward (training runs the fast path too), with an all-pad row in the batch."""
    torch.manual_seed(0)
    model = _model().train()  # dropout is 0 in the test preset: train mode only enables autograd bookkeeping
    ids, mask = padded_batch(lengths=(7, 4, 9, 2))
    mask[3] = 0  # a row without any real token
    calls = []

    def per_sequence(qkv, layout, dropout, output_attentions):
        calls.append(layout.seq_lengths)
        return modeling._sdpa_per_sequence(qkv, layout, dropout), None

    def padded(qkv, layout, dropout, output_attentions):
        return modeling._sdpa_padded(qkv, layout, dropout), None

    def run(impl, dtype=torch.float32) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        monkeypatch.setitem(modeling.ATTENTION_FUNCTIONS, "sdpa", impl)
        model.to(dtype).zero_grad(set_to_none=True)
        hidden = model(ids, attention_mask=mask).last_hidden_state  # (B, L, d)
        (hidden.square() * mask[..., None]).sum().backward()
        grads = {n: p.grad.double() for n, p in model.named_parameters() if p.grad is not None}
        return hidden.detach().double(), grads

    fast, fast_grads = run(per_sequence)
    ref, ref_grads = run(padded)
    _, gold_grads = run(padded, torch.float64)  # float64: what both fp32 paths approximate
    assert calls and calls[0] == [7, 4, 9, 0]  # the empty row's zero-length split is skipped
    real = mask.bool()
    torch.testing.assert_close(fast[real], ref[real], rtol=0, atol=1e-5)
    assert fast_grads.keys() == ref_grads.keys()
    for name, gold in gold_grads.items():
        # fp32 rounding (summation order) dominates both paths' gradients: the fast path must be as close to the
        # float64 gradient as the reference is.
        fast_err = float((fast_grads[name] - gold).abs().max())
        ref_err = float((ref_grads[name] - gold).abs().max())
        assert fast_err <= 1.5 * ref_err + 1e-8, (name, fast_err, ref_err)


def test_default_sdpa_dispatch_takes_the_per_sequence_path_on_cpu(monkeypatch):
    model = _model()
    seen = []
    original = modeling._sdpa_per_sequence
    monkeypatch.setattr(modeling, "_sdpa_per_sequence", lambda *a: seen.append(1) or original(*a))
    ids, mask = padded_batch()
    model(ids, attention_mask=mask)
    assert len(seen) == model.config.num_hidden_layers
    seen.clear()
    model(ids)  # nothing padded: one batched, unmasked call instead
    assert not seen


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
    a host-int longest length; returns (total, h, dh). Computed per sequence with plain SDPA."""

    def kernel(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False, **kwargs):
        assert qkv.dim() == 4 and qkv.shape[1] == 3 and qkv.stride(-1) == 1
        assert cu_seqlens.dtype == torch.int32 and cu_seqlens.dim() == 1 and int(cu_seqlens[-1]) == qkv.shape[0]
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        assert isinstance(max_seqlen, int) and max_seqlen == max(lengths)
        assert not causal and dropout_p == 0.0
        calls.append(lengths)
        outs = []
        for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True):
            q, k, v = qkv[a:b].permute(1, 2, 0, 3)  # 3 x (h, n, dh)
            outs.append(torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(0, 1))  # (n, h, dh)
        return torch.cat(outs)  # (total, h, dh)

    return kernel


def test_flash_varlen_path_matches_sdpa_on_real_tokens(monkeypatch):
    """The FlashAttention 2 varlen plumbing (unpadded rows, cu_seqlens, max_seqlen, output layout), run on CPU with
    the kernel replaced by a contract-checking reference: equal to SDPA on real tokens, forward and backward. The
    CUDA kernel itself needs a GPU; this checks everything around it."""
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
    assert calls and calls[0] == [7, 4, 9, 1] and len(calls) == flash.config.num_hidden_layers
    torch.testing.assert_close(outs["flash"][0][real], outs["sdpa"][0][real], rtol=0, atol=1e-10)
    assert (outs["flash"][0][~real] == 0).all()
    assert outs["flash"][1].keys() == outs["sdpa"][1].keys()
    for n, g in outs["sdpa"][1].items():
        torch.testing.assert_close(outs["flash"][1][n], g, rtol=1e-9, atol=1e-10, msg=n)


def test_flash_attention_refuses_cpu_or_fp32_tensors():
    with pytest.raises(ValueError, match=r"CUDA tensors in fp16/bf16 only \(got cpu torch.float32\).*sdpa"):
        modeling._check_flash_inputs(torch.zeros(2, 3, 1, 4))


@pytest.mark.parametrize("grad", [False, True])
def test_rope_equals_rotate_half_reference(grad):
    """In place without autograd, out of place with it: both equal ModernBERT's rotate-half form; v is untouched."""
    model = _model()
    positions = torch.tensor([0, 1, 5, 17, 200])
    cos, signed_sin = model.rotary_emb(positions)  # (N, 1, 1, dh) each
    qkv = torch.randn(5, 3, 4, model.config.head_dim, requires_grad=grad)
    freqs = positions[:, None].float() * model.rotary_emb.inv_freq[None, :]
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
    cos, signed_sin = (t.double() for t in model.rotary_emb(torch.tensor([0, 3, 9])))
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
        ref = model(ids, attention_mask=mask)
        out = compiled(ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(out.last_hidden_state[real], ref.last_hidden_state[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.expert_usage, ref.expert_usage, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.router_aux_loss, ref.router_aux_loss, rtol=0, atol=1e-6)
