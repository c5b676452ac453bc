"""Model invariants: sharing, parameter counts, heads, attention paths, checkpointing, bad input, learning."""

import pytest
import torch
from transformers.utils import logging as hf_logging

from modernalbert import (
    ModernAlbertConfig,
    ModernAlbertForMaskedLM,
    ModernAlbertForMultipleChoice,
    ModernAlbertForQuestionAnswering,
    ModernAlbertForSequenceClassification,
    ModernAlbertForTokenClassification,
    ModernAlbertModel,
    count_parameters,
)
from tests.conftest import padded_batch, randomize_adapters, small_config

HEADS = [
    ModernAlbertModel,
    ModernAlbertForMaskedLM,
    ModernAlbertForSequenceClassification,
    ModernAlbertForTokenClassification,
    ModernAlbertForQuestionAnswering,
    ModernAlbertForMultipleChoice,
]


# ------------------------------------------------------------------------------------------- sharing, counts


def test_layers_of_a_group_run_the_same_parameter_objects():
    model = ModernAlbertModel(small_config(num_hidden_layers=6, group_depth=3, mol_groups=[1]))
    calls = []
    for block in model.groups:
        block.register_forward_hook(lambda mod, inp, out, calls=calls: calls.append(mod))
    ids, mask = padded_batch(lengths=(5, 3))
    model(ids, attention_mask=mask)
    assert len(calls) == 6
    assert calls[0] is calls[1] is calls[2] is model.groups[0]
    assert calls[3] is calls[4] is calls[5] is model.groups[1]
    assert calls[0].attn.Wqkv.weight is model.groups[0].attn.Wqkv.weight


def test_state_dict_holds_unique_parameters_only():
    model = ModernAlbertForMaskedLM(small_config(num_hidden_layers=8, group_depth=4))
    keys = list(model.state_dict())
    assert sorted({k.split(".")[2] for k in keys if k.startswith("model.groups.")}) == ["0", "1"]
    n_params = sum(p.numel() for p in model.parameters())  # parameters() yields tied tensors once
    assert count_parameters(model).unique == n_params
    assert model.decoder.weight is model.model.embeddings.tok_embeddings.weight
    assert not any("unembed" in k for k in keys)  # the output side of the factorisation is embeddings.proj itself


def closed_form_unique(cfg: ModernAlbertConfig) -> int:
    V, e, d, f, E, r, G = (cfg.vocab_size, cfg.embedding_size, cfg.hidden_size, cfg.intermediate_size,
                           cfg.num_experts, cfg.lora_rank, cfg.group_depth)
    emb = V * (e or d) + (e * d if e else 0) + d
    lora = r * d + 2 * f * r + r * f + d * r
    variant = {"glu": 0, "mol": E * lora + E * d, "rrt": G * lora, "moa": E * 2 * r * d + E * d}
    blocks = 0
    for g, v in enumerate(cfg.ffn_variants):
        attn_norm = d if (g > 0 or G > 1) else 0
        blocks += 4 * d * d + attn_norm + d + 3 * d * f + variant[v]
    return emb + blocks + d


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"embedding_size": None, "group_depth": 1, "mol_groups": []},
        {"ffn_variants": ["rrt", "moa"]},
        {"num_hidden_layers": 8, "group_depth": 1, "mol_groups": [2, 5], "num_experts": 3, "num_experts_per_tok": 1},
    ],
)
def test_unique_parameter_count_matches_closed_form(overrides):
    cfg = small_config(**overrides)
    model = ModernAlbertModel(cfg)
    count = count_parameters(model)
    assert count.unique == closed_form_unique(cfg)
    d = cfg.hidden_size
    mlm = count_parameters(ModernAlbertForMaskedLM(cfg)).unique
    assert mlm == count.unique + d * d + d + cfg.vocab_size  # head dense + norm + decoder bias (weights tied)


def test_effective_count_unrolls_the_recursion():
    cfg = small_config(num_hidden_layers=6, group_depth=3, ffn_variants=["rrt", "mol"])
    count = count_parameters(ModernAlbertModel(cfg))
    rrt = count.per_group[0]
    rrt_lora = 3 * (cfg.lora_rank * (2 * cfg.hidden_size + 3 * cfg.intermediate_size))
    assert count.effective == count.unique + 2 * (rrt - rrt_lora) + 2 * count.per_group[1]


# -------------------------------------------------------------------------------------------------- outputs


def test_default_outputs_are_a_plain_encoders_and_router_outputs_come_on_request():
    """The MoE convention (Mixtral, Switch): no router field unless ``output_router_logits`` (argument or config)."""
    model = ModernAlbertForMaskedLM(small_config()).eval()
    ids, mask = padded_batch(lengths=(5, 3))
    out = model(ids, attention_mask=mask)
    assert list(out.keys()) == ["logits"] and len(out.to_tuple()) == 1
    out = model(ids, attention_mask=mask, output_router_logits=True)
    assert list(out.keys()) == ["logits", "router_logits", "router_aux_loss", "router_z_loss", "expert_usage",
                                "router_probs"]
    n_real = int(mask.sum())
    assert len(out.router_logits) == 2 and out.router_logits[0].shape == (n_real, 4)  # (N, E) per routed call
    assert out.router_logits[0].dtype == torch.float32
    model.config.output_router_logits = True
    assert "expert_usage" in model(ids, attention_mask=mask)
    assert "expert_usage" not in model(ids, attention_mask=mask, output_router_logits=False)
    assert model.config.keys_to_ignore_at_inference == ["router_logits", "router_aux_loss", "router_z_loss",
                                                        "expert_usage", "router_probs"]


def test_hidden_states_follow_transformers_convention_and_carry_gradient():
    """L + 1 entries: the embedding output, every effective layer but the last, then ``last_hidden_state`` itself
    (after the final norm), as transformers' ModernBERT returns them; each one is part of the graph."""
    model = ModernAlbertModel(small_config(num_hidden_layers=6, group_depth=3))
    randomize_adapters(model)
    ids, mask = padded_batch(lengths=(5, 3))
    out = model(ids, attention_mask=mask, output_hidden_states=True, output_router_logits=True)
    assert len(out.hidden_states) == 7 and out.hidden_states[-1] is out.last_hidden_state
    assert out.expert_usage.shape == (3, 4)  # MoL group 1 runs at 3 effective layers
    assert all((h[~mask.bool()] == 0).all() for h in out.hidden_states)  # zeros at pads
    for h in out.hidden_states:
        h.retain_grad()
    out.last_hidden_state[mask.bool()].square().sum().backward(retain_graph=True)
    assert all(h.grad is not None and h.grad[mask.bool()].abs().sum() > 0 for h in out.hidden_states)
    middle = out.hidden_states[3]
    # (Not .sum(): the final norm's output sums to zero over the width, so that gradient is rounding noise.)
    (grad,) = torch.autograd.grad(out.last_hidden_state.square().sum(), middle)
    assert grad.shape == middle.shape and grad[mask.bool()].abs().sum() > 0


@pytest.mark.parametrize("cls", HEADS)
def test_every_head_runs_with_labels_and_adds_router_losses(cls):
    cfg = small_config(num_labels=3)
    model = cls(cfg)
    ids, mask = padded_batch(lengths=(6, 4))
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if cls is ModernAlbertForMultipleChoice:
        kwargs = {"input_ids": ids[None].repeat(2, 1, 1), "attention_mask": mask[None].repeat(2, 1, 1),
                  "labels": torch.tensor([0, 1])}
    elif cls is ModernAlbertForMaskedLM:
        kwargs["labels"] = ids.masked_fill(mask == 0, -100)
    elif cls is ModernAlbertForSequenceClassification:
        kwargs["labels"] = torch.tensor([0, 2])
    elif cls is ModernAlbertForTokenClassification:
        kwargs["labels"] = torch.randint(0, 3, ids.shape)
    elif cls is ModernAlbertForQuestionAnswering:
        kwargs.update(start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([3, 3]))
    out = model(**kwargs)
    assert out.get("router_aux_loss") is None  # not asked for: a plain output, yet the loss holds the router terms
    assert model(**kwargs, output_router_logits=True).expert_usage is not None
    if cls is not ModernAlbertModel:
        assert out.loss.isfinite()
        out.loss.backward()
        # B = 0 at init, so the task loss does not depend on the gate: any router gradient is the router losses'
        router = model.model.groups[1].mlp.router.weight.grad
        assert router is not None and router.abs().sum() > 0


def test_loss_includes_weighted_router_losses():
    cfg = small_config(router_aux_loss_coef=0.5, router_z_loss_coef=0.25, num_labels=2)
    model = ModernAlbertForSequenceClassification(cfg).eval()
    ids, mask = padded_batch(lengths=(6, 4))
    out = model(ids, attention_mask=mask, labels=torch.tensor([0, 1]), output_router_logits=True)
    ce = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1]))
    torch.testing.assert_close(out.loss, ce + 0.5 * out.router_aux_loss + 0.25 * out.router_z_loss)


def test_sparse_prediction_scores_only_labelled_positions():
    model = ModernAlbertForMaskedLM(small_config()).eval()
    ids, mask = padded_batch(lengths=(6, 4))
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 1] = 7, 9
    dense = model(ids, attention_mask=mask, labels=labels)
    model.config.sparse_prediction = True
    sparse = model(ids, attention_mask=mask, labels=labels)
    assert sparse.logits.shape == (2, 512)
    torch.testing.assert_close(sparse.logits, dense.logits[labels != -100])
    torch.testing.assert_close(sparse.loss, dense.loss)


def test_inputs_embeds_equal_input_ids():
    model = ModernAlbertModel(small_config()).eval()
    ids, mask = padded_batch(lengths=(6, 4))
    embeds = model.embeddings.tok_embeddings(ids)
    torch.testing.assert_close(model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state,
                               model(ids, attention_mask=mask).last_hidden_state)


def test_padding_side_and_mask_free_batch():
    model = ModernAlbertModel(small_config()).eval()
    ids, mask = padded_batch(lengths=(6, 4))
    alone = model(ids[1:, :4]).last_hidden_state  # no mask, no padding: the fast path
    together = model(ids, attention_mask=mask).last_hidden_state[1, :4]
    torch.testing.assert_close(together, alone[0], rtol=1e-5, atol=1e-5)
    # Left padding with matching position ids gives the same real-token outputs.
    left = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids[1:, :4]], 1)
    lmask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    pos = torch.tensor([[0, 0, 0, 1, 2, 3]])
    out = model(left, attention_mask=lmask, position_ids=pos).last_hidden_state[0, 2:]
    torch.testing.assert_close(out, alone[0], rtol=1e-5, atol=1e-5)


def test_eager_matches_sdpa_and_returns_probabilities(caplog):
    cfg = small_config()
    sdpa = ModernAlbertModel(cfg).eval()
    randomize_adapters(sdpa)
    eager = ModernAlbertModel(small_config(attn_implementation="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    ids, mask = padded_batch(lengths=(6, 4, 2))
    a = sdpa(ids, attention_mask=mask).last_hidden_state
    b = eager(ids, attention_mask=mask, output_attentions=True)
    torch.testing.assert_close(a, b.last_hidden_state, rtol=1e-5, atol=1e-5)
    assert len(b.attentions) == cfg.num_hidden_layers
    probs = b.attentions[0]  # (B, h, L, L)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    assert probs[1, :, :4, 4:].abs().max() == 0  # real queries never attend to pads
    # Under SDPA, as transformers' ModernBERT: no probabilities (an empty tuple) and a warning naming the fix.
    hf_logging.warning_once.cache_clear()  # warned once per process
    with caplog.at_level("WARNING"):
        assert sdpa(ids, attention_mask=mask, output_attentions=True).attentions == ()
    assert "set_attn_implementation('eager')" in caplog.text


def test_attention_implementation_switches_at_run_time():
    """``set_attn_implementation`` (transformers' attention interface) switches a loaded model, both ways."""
    model = ModernAlbertModel(small_config()).eval()
    randomize_adapters(model)
    ids, mask = padded_batch(lengths=(6, 4, 2))
    ref = model(ids, attention_mask=mask).last_hidden_state
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    out = model(ids, attention_mask=mask, output_attentions=True)
    assert len(out.attentions) == model.config.num_hidden_layers
    torch.testing.assert_close(out.last_hidden_state, ref, rtol=1e-5, atol=1e-5)
    model.set_attn_implementation("sdpa")
    torch.testing.assert_close(model(ids, attention_mask=mask).last_hidden_state, ref, rtol=0, atol=0)


def test_flash_attention_without_gpu_is_a_clear_error():
    with pytest.raises((ImportError, ValueError), match=r"flash_attention_2.*sdpa"):
        model = ModernAlbertModel(small_config(attn_implementation="flash_attention_2"))
        model(torch.tensor([[1, 2, 3]]))  # with flash-attn installed: CPU tensors are refused at forward


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_identical_outputs_and_gradients(use_reentrant):
    """Both torch checkpointing modes are exact, router-loss gradients included: a shared block returns its router
    statistics as top-level outputs, which reentrant checkpointing carries gradients through."""
    cfg = small_config()
    ref = ModernAlbertForMaskedLM(cfg)
    ckpt = ModernAlbertForMaskedLM(cfg)
    ckpt.load_state_dict(ref.state_dict())  # B = 0: the router's gradient comes from the router losses only
    ckpt.activation_checkpointing_enable({"use_reentrant": use_reentrant})
    assert ckpt.model.groups[0].gradient_checkpointing
    ids, mask = padded_batch(lengths=(6, 4))
    labels = ids.masked_fill(mask == 0, -100)
    ref(ids, attention_mask=mask, labels=labels).loss.backward()
    ckpt.train()(ids, attention_mask=mask, labels=labels).loss.backward()
    router = ckpt.model.groups[1].mlp.router.weight.grad
    assert router is not None and router.abs().max() > 1e-4
    for (name, p), q in zip(ref.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ModernAlbertForSequenceClassification(small_config()).eval()


def test_token_ids_outside_the_vocabulary(model):
    with pytest.raises(ValueError, match="vocab_size=512"):
        model(torch.tensor([[1, 512, 3]]))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.tensor([[1, -1, 3]]))


def test_sequences_longer_than_the_maximum_run_with_a_warning(model, caplog):
    """RoPE has no table to overflow (and scaled RoPE types exist to go beyond the pretraining context): longer
    inputs run, with a warning that names the limit."""
    hf_logging.warning_once.cache_clear()  # warned once per process
    with caplog.at_level("WARNING"):
        assert model(torch.ones(1, 257, dtype=torch.long)).logits.isfinite().all()
    assert "max_position_embeddings=256" in caplog.text


@pytest.mark.parametrize("shape", [(0, 5), (2, 0)])
def test_empty_batch(model, shape):
    with pytest.raises(ValueError, match="Empty batch"):
        model(torch.ones(shape, dtype=torch.long))


def test_malformed_inputs(model):
    ids = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="exactly one"):
        model(ids, inputs_embeds=torch.zeros(2, 4, 32))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(ids, attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="integer token ids"):
        model(ids.float())
    with pytest.raises(ValueError, match="shape"):
        model(torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match="width 32"):
        model(inputs_embeds=torch.zeros(2, 4, 64))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_all_pad_rows_give_finite_results(pooling):
    model = ModernAlbertForSequenceClassification(small_config(classifier_pooling=pooling)).eval()
    ids, mask = padded_batch(lengths=(5, 3))
    mask[1] = 0  # a row with no real token at all
    out = model(ids, attention_mask=mask, labels=torch.tensor([0, 1]), output_router_logits=True)
    assert out.logits.isfinite().all() and out.loss.isfinite() and out.router_aux_loss.isfinite()
    base = model.model(ids, attention_mask=torch.zeros_like(mask), output_router_logits=True)  # nothing real
    assert torch.count_nonzero(base.last_hidden_state) == 0 and base.router_aux_loss.isfinite()


# ------------------------------------------------------------------------------------------------- learning


def test_small_masked_lm_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = ModernAlbertForMaskedLM(small_config(mol_mixing="weight"))
    ids, mask = padded_batch(lengths=(24, 20, 24, 16), seed=1)
    labels = ids.masked_fill(mask == 0, -100)
    inputs = ids.clone()
    inputs[:, 1::3] = 3  # mask every third token
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        loss = model(inputs, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] <= 0.1 * losses[0], (losses[0], losses[-1])
