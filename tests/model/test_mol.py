"""Mixture of LoRAs (and the RRT / MoA baselines) against per-token reference loops written from the equations."""

import math

import pytest
import torch
import torch.nn.functional as F

from modernalbert import ModernAlbertModel
from modernalbert.model.modeling import GeGLU, MoAGeGLU, MoLGeGLU, RRTGeGLU
from tests.conftest import padded_batch, randomize_adapters, small_config


def _reference_router(x, weight, k):
    """Per token: softmax over E, top-k, renormalised over the k."""
    p = torch.softmax(x @ weight.T, -1)
    top_p, top_i = p.topk(k)
    return top_p / top_p.sum(), top_i


def reference_mol(module: MoLGeGLU, x: torch.Tensor, mixing: str) -> torch.Tensor:
    """The MoL equations (both mixings), one token at a time, with the experts as explicit dense matrices."""
    W1, W2 = module.Wi.weight.double(), module.Wo.weight.double()
    s = module.scale
    out = []
    for t in x.double():
        p, idx = _reference_router(t, module.router.weight.double(), module.top_k)
        if mixing == "output":
            y = 0
            for pe, e in zip(p, idx):
                W1e = W1 + s * module.lora_B1[e].double() @ module.lora_A1[e].double()
                W2e = W2 + s * module.lora_B2[e].double() @ module.lora_A2[e].double()
                inp, gate = (W1e @ t).chunk(2)
                y = y + pe * (W2e @ (F.gelu(inp) * gate))
        else:
            W1m = W1 + s * sum(pe * module.lora_B1[e].double() @ module.lora_A1[e].double() for pe, e in zip(p, idx))
            W2m = W2 + s * sum(pe * module.lora_B2[e].double() @ module.lora_A2[e].double() for pe, e in zip(p, idx))
            inp, gate = (W1m @ t).chunk(2)
            y = W2m @ (F.gelu(inp) * gate)
        out.append(y)
    return torch.stack(out).float()


def _mol_module(mixing: str, **kw) -> MoLGeGLU:
    model = ModernAlbertModel(small_config(mol_mixing=mixing, **kw)).eval()
    module = model.groups[1].mlp
    assert isinstance(module, MoLGeGLU)
    return module


@pytest.mark.parametrize("mixing", ["output", "weight"])
def test_mol_with_zero_B_equals_plain_ffn(mixing):
    module = _mol_module(mixing)
    x = torch.randn(50, 64)
    plain = GeGLU(module.config).eval()
    plain.load_state_dict({"Wi.weight": module.Wi.weight, "Wo.weight": module.Wo.weight})
    y, _ = module(x)
    y_plain, _ = plain(x)
    if mixing == "weight":
        assert torch.equal(y, y_plain)  # B = 0: the LoRA terms add exact zeros
    else:
        # Output mixing sums p_j * FFN(x) over the k slots; the renormalised p_j sum to 1 up to rounding.
        torch.testing.assert_close(y, y_plain, rtol=0, atol=1e-8)


@pytest.mark.parametrize("mixing", ["output", "weight"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_mol_matches_reference_loop(mixing, k):
    module = _mol_module(mixing, num_experts_per_tok=k)
    randomize_adapters(module, std=0.1)
    x = torch.randn(40, 64)
    y, stats = module(x)
    torch.testing.assert_close(y, reference_mol(module, x, mixing), rtol=1e-5, atol=1e-5)
    assert torch.isclose(stats.usage.sum(), torch.tensor(1.0))


def test_mixing_rules_differ_once_experts_are_trained():
    out, wt = _mol_module("output"), _mol_module("weight")
    wt.load_state_dict(out.state_dict())
    randomize_adapters(out, 0.1)
    wt.load_state_dict(out.state_dict())
    x = torch.randn(20, 64)
    assert (out(x)[0] - wt(x)[0]).abs().max() > 1e-4


def test_router_statistics_follow_the_switch_definitions():
    module = _mol_module("weight")
    x = torch.randn(30, 64)
    _, stats = module(x)
    logits = x @ module.router.weight.T
    p = logits.softmax(-1)
    top = p.topk(2).indices
    f = torch.zeros(4).index_add_(0, top.flatten(), torch.ones(60)) / 60
    P = p.mean(0)
    torch.testing.assert_close(stats.usage, f)
    torch.testing.assert_close(stats.probs, P)
    torch.testing.assert_close(stats.aux_loss, 4 * (f * P).sum())
    torch.testing.assert_close(stats.z_loss, torch.logsumexp(logits, -1).square().mean())


@pytest.mark.parametrize("mixing", ["output", "weight"])
def test_padding_changes_neither_outputs_nor_aux_losses(mixing):
    model = ModernAlbertModel(small_config(mol_mixing=mixing)).eval()
    randomize_adapters(model)
    ids, mask = padded_batch(lengths=(7, 4, 9))
    out = model(ids, attention_mask=mask)
    # Same sequences, with extra padding columns and an extra all-pad row.
    ids2 = torch.cat([torch.cat([ids, torch.zeros(3, 5, dtype=torch.long)], 1), torch.zeros(1, 14, dtype=torch.long)])
    mask2 = (torch.arange(14)[None] < torch.tensor([7, 4, 9, 0])[:, None]).long()
    out2 = model(ids2, attention_mask=mask2)
    real = mask.bool()
    torch.testing.assert_close(out2.last_hidden_state[:3, :9][real], out.last_hidden_state[real], rtol=1e-5, atol=1e-5)
    for name in ("router_aux_loss", "router_z_loss", "expert_usage", "router_probs"):
        torch.testing.assert_close(getattr(out2, name), getattr(out, name), rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(out2.last_hidden_state[~mask2.bool()]) == 0


@pytest.mark.parametrize("mixing", ["output", "weight"])
def test_every_expert_and_the_router_receive_gradients(mixing):
    model = ModernAlbertModel(small_config(mol_mixing=mixing, num_experts=4, num_experts_per_tok=2))
    randomize_adapters(model)
    ids, mask = padded_batch(lengths=(32, 20, 32, 27))
    out = model(ids, attention_mask=mask)
    (out.last_hidden_state.pow(2).mean() + out.router_aux_loss + out.router_z_loss).backward()
    module = model.groups[1].mlp
    assert (out.expert_usage > 0).all(), "the batch should route tokens to every expert"
    for name in ("lora_A1", "lora_B1", "lora_A2", "lora_B2"):
        grad = getattr(module, name).grad
        assert grad is not None
        per_expert = grad.flatten(1).abs().sum(-1)  # (E,)
        assert (per_expert > 0).all(), f"{name}: an expert got no gradient {per_expert}"
    assert module.router.weight.grad is not None and (module.router.weight.grad.abs().sum(-1) > 0).all()


def test_router_jitter_only_in_training():
    module = _mol_module("weight", router_jitter=0.5)
    x = torch.randn(64, 64)
    module.eval()
    torch.testing.assert_close(module(x)[1].probs, module(x)[1].probs)
    module.train()
    assert not torch.equal(module(x)[1].probs, module(x)[1].probs)


def test_rrt_uses_one_lora_per_recursion_position():
    model = ModernAlbertModel(small_config(ffn_variants=["glu", "rrt"])).eval()
    module = model.groups[1].mlp
    assert isinstance(module, RRTGeGLU)
    x = torch.randn(10, 64)
    torch.testing.assert_close(module(x, 0)[0], GeGLU.forward(module, x)[0], rtol=0, atol=1e-6)  # B = 0 at init
    randomize_adapters(module, 0.1)
    s = module.scale
    for p in range(2):
        W1 = module.Wi.weight + s * module.lora_B1[p] @ module.lora_A1[p]
        W2 = module.Wo.weight + s * module.lora_B2[p] @ module.lora_A2[p]
        inp, gate = (x @ W1.T).chunk(2, -1)
        torch.testing.assert_close(module(x, p)[0], (F.gelu(inp) * gate) @ W2.T, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(module(x, 0)[0], module(x, 1)[0])


def test_moa_adds_routed_bottleneck_adapters_after_the_ffn():
    model = ModernAlbertModel(small_config(ffn_variants=["moa", "glu"])).eval()
    module = model.groups[0].mlp
    assert isinstance(module, MoAGeGLU)
    x = torch.randn(12, 64)
    torch.testing.assert_close(module(x)[0], GeGLU.forward(module, x)[0], rtol=0, atol=0)  # up = 0 at init
    randomize_adapters(module, 0.1)
    y_base = GeGLU.forward(module, x)[0]
    expected = []
    for t, yb in zip(x, y_base):
        p, idx = _reference_router(t, module.router.weight, 2)
        delta = sum(pe * module.adapter_up[e] @ F.gelu(module.adapter_down[e] @ yb) for pe, e in zip(p, idx))
        expected.append(yb + delta)
    torch.testing.assert_close(module(x)[0], torch.stack(expected), rtol=1e-5, atol=1e-5)


def test_lora_init_follows_peft():
    module = _mol_module("weight")
    bound = 1 / math.sqrt(64)
    assert module.lora_A1.abs().max() <= bound and module.lora_A1.std() > bound / 3
    assert torch.count_nonzero(module.lora_B1) == 0 and torch.count_nonzero(module.lora_B2) == 0
