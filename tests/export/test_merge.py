"""Expert merging: exactness where it must be exact, parameter accounting, statistics, round trip, bad input."""

import pytest
import torch
from transformers import AutoModelForMaskedLM

import modernalbert  # noqa: F401
from modernalbert import (
    ModernAlbertForMaskedLM,
    ModernAlbertModel,
    count_parameters,
    measure_routing,
    merge_experts,
)
from tests.conftest import padded_batch, randomize_adapters, small_config


def _constant_routing_model(**overrides):
    """Weight mixing, trained-looking experts, zero router weights: every token gets the same gate."""
    model = ModernAlbertModel(small_config(mol_mixing="weight", **overrides)).eval()
    randomize_adapters(model, 0.1)
    with torch.no_grad():
        model.groups[1].mlp.router.weight.zero_()
    return model


def _hidden(model, ids, mask):
    with torch.no_grad():
        return model(ids, attention_mask=mask).last_hidden_state[mask.bool()]


@pytest.fixture
def batch():
    return padded_batch(lengths=(9, 4, 7, 12))


def test_deltas_lowrank_is_exact_under_constant_routing(batch):
    ids, mask = batch
    model = _constant_routing_model()
    calib = [{"input_ids": ids, "attention_mask": mask}]
    merged = merge_experts(model, weights="router", calibration=calib, form="lowrank")
    torch.testing.assert_close(_hidden(merged, ids, mask), _hidden(model, ids, mask), rtol=0, atol=1e-5)
    # zero router + top-2 of 4: ties select the same two experts for every token, each with weight 1/2
    assert sorted(merged.config.merge_info["groups"]["1"]["expert_weights"]) == [0.0, 0.0, 0.5, 0.5]
    assert merged.config.ffn_variants == ["glu", "lora"] and merged.config.adapter_rank == 16
    # The test preset mixes layer types (rows past its window): the merged model keeps the pattern.
    assert merged.config.layer_types == model.config.layer_types and len(set(model.config.layer_types)) == 2
    assert merged.config.rope_parameters == model.config.rope_parameters


def test_uniform_weights_are_exact_when_every_expert_is_routed(batch):
    ids, mask = batch
    model = _constant_routing_model(num_experts_per_tok=4)  # k = E: the gate is 1/E everywhere
    merged = merge_experts(model)
    torch.testing.assert_close(_hidden(merged, ids, mask), _hidden(model, ids, mask), rtol=0, atol=1e-5)


def test_full_rank_svd_and_fold_equal_lowrank(batch):
    ids, mask = batch
    model = _constant_routing_model()
    model.groups[1].mlp.router.weight.data.normal_(0, 0.5)  # any routing: the three forms share one delta
    lowrank = _hidden(merge_experts(model, weights="uniform", form="lowrank"), ids, mask)
    svd = _hidden(merge_experts(model, weights="uniform", form="svd", rank=16), ids, mask)  # full rank: E * r
    fold = _hidden(merge_experts(model, weights="uniform", form="fold"), ids, mask)
    torch.testing.assert_close(svd, lowrank, rtol=0, atol=1e-5)
    torch.testing.assert_close(fold, lowrank, rtol=0, atol=1e-5)
    truncated = _hidden(merge_experts(model, weights="uniform", form="svd", rank=4), ids, mask)
    assert (truncated - lowrank).abs().max() > 1e-6  # truncation really drops something


def test_factors_differ_from_deltas_and_by_how_much(batch):
    ids, mask = batch
    model = _constant_routing_model()
    calib = [{"input_ids": ids, "attention_mask": mask}]
    ref = _hidden(model, ids, mask)
    deltas = _hidden(merge_experts(model, weights="router", calibration=calib), ids, mask)
    factors = _hidden(merge_experts(model, weights="router", calibration=calib, space="factors"), ids, mask)
    dev_deltas = (deltas - ref).abs().max().item()
    dev_factors = (factors - ref).abs().max().item()
    cos = torch.nn.functional.cosine_similarity(factors, ref, dim=-1).min().item()
    print(f"max |dev| deltas {dev_deltas:.2e}, factors {dev_factors:.2e}; min cosine factors {cos:.4f}")
    # Averaging factors multiplies averaged B by averaged A: cross terms B_i A_j (i != j) appear.
    assert dev_deltas <= 1e-5 < 1e-3 < dev_factors


def test_folded_model_has_exactly_the_plain_backbone_parameter_count():
    model = ModernAlbertForMaskedLM(small_config())
    folded = merge_experts(model, form="fold")
    plain = ModernAlbertForMaskedLM(small_config(mol_groups=[]))
    assert count_parameters(folded).unique == count_parameters(plain).unique
    info = folded.config.merge_info
    assert info["parameters_after"] == count_parameters(plain).unique and info["untied_copy_parameters"] == 0
    lowrank = merge_experts(model, form="lowrank")
    cfg = model.config
    adapter = cfg.num_experts * cfg.lora_rank * (2 * cfg.hidden_size + 3 * cfg.intermediate_size)
    assert count_parameters(lowrank).unique == count_parameters(plain).unique + adapter


def test_merged_model_has_no_router_and_round_trips(tmp_path, batch):
    ids, mask = batch
    model = ModernAlbertForMaskedLM(small_config(mol_mixing="weight"))
    randomize_adapters(model)
    merged = merge_experts(model, form="svd", rank=8).eval()
    out = merged(ids, attention_mask=mask)
    assert out.router_aux_loss is None and out.expert_usage is None
    assert not any("router" in k for k in merged.state_dict())
    merged.save_pretrained(tmp_path)
    again = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert again.config.merge_info["form"] == "svd" and again.config.adapter_rank == 8
    assert again.decoder.weight is again.model.embeddings.tok_embeddings.weight
    with torch.no_grad():
        assert torch.equal(again(ids, attention_mask=mask).logits, out.logits)


def test_routing_moving_average_is_kept_in_training_and_used_by_router_weights(batch):
    ids, mask = batch
    model = ModernAlbertForMaskedLM(small_config(router_ema_decay=0.5))
    mol = model.model.groups[1].mlp
    with pytest.raises(ValueError, match="no routing statistics"):
        merge_experts(model, weights="router")
    model.train()
    model(ids, attention_mask=mask)
    assert int(mol.routing_ema_updates) == 2  # one update per effective layer that runs the MoL group
    model.activation_checkpointing_enable()
    model(ids, attention_mask=mask, labels=ids).loss.backward()  # recomputation must not count twice
    assert int(mol.routing_ema_updates) == 4
    torch.testing.assert_close(mol.routing_ema.sum(), torch.tensor(1.0))
    merged = merge_experts(model, weights="router")
    assert merged.config.merge_info["weights_source"] == "routing_ema"
    w = torch.tensor(merged.config.merge_info["groups"]["1"]["expert_weights"])
    torch.testing.assert_close(w, mol.routing_ema / mol.routing_ema.sum(), atol=1e-6, rtol=0)
    model.eval()
    before = mol.routing_ema.clone()
    model(ids, attention_mask=mask)
    assert torch.equal(mol.routing_ema, before)  # evaluation never moves the statistics


def test_measure_routing_ignores_padding(batch):
    ids, mask = batch
    model = ModernAlbertModel(small_config()).eval()
    w = measure_routing(model, [{"input_ids": ids, "attention_mask": mask}])[1]
    more_pad = torch.cat([ids, torch.zeros(4, 6, dtype=torch.long)], 1)
    w2 = measure_routing(model, [{"input_ids": more_pad, "attention_mask": (more_pad != 0).long()}])[1]
    torch.testing.assert_close(w, w2)
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))


def test_other_variants_are_kept():
    model = ModernAlbertModel(small_config(num_hidden_layers=6, group_depth=2, ffn_variants=["moa", "mol", "rrt"]))
    merged = merge_experts(model, form="fold")
    assert merged.config.ffn_variants == ["moa", "glu", "rrt"]
    assert torch.equal(merged.groups[0].mlp.router.weight, model.groups[0].mlp.router.weight)


def test_bad_input_gives_clear_errors():
    model = ModernAlbertModel(small_config())
    with pytest.raises(ValueError, match="no MoL group"):
        merge_experts(ModernAlbertModel(small_config(mol_groups=[])))
    with pytest.raises(ValueError, match="form='squash' is invalid"):
        merge_experts(model, form="squash")
    with pytest.raises(ValueError, match="weights='mean' is invalid"):
        merge_experts(model, weights="mean")
    with pytest.raises(ValueError, match="space"):
        merge_experts(model, space="both")
    with pytest.raises(ValueError, match="rank=17 is impossible"):
        merge_experts(model, form="svd", rank=17)  # E * r = 16
    with pytest.raises(ValueError, match="rank=5 is impossible"):
        merge_experts(model, form="svd", space="factors", rank=5)  # r = 4
    with pytest.raises(ValueError, match="form='svd' only"):
        merge_experts(model, form="lowrank", rank=4)
    with pytest.raises(ValueError, match="empty"):
        merge_experts(model, weights="router", calibration=[])
    with pytest.raises(ValueError, match="empty"):
        merge_experts(model, weights="router", calibration=["", "   "])
    with pytest.raises(ValueError, match="tokenizer"):
        merge_experts(model, weights="router", calibration=["some text"])
    with pytest.raises(ValueError, match="form='svd' needs rank=R"):
        merge_experts(model, form="svd")  # at full rank svd is lowrank: no silent non-truncation


@pytest.mark.parametrize("form", ["lowrank", "svd", "fold"])
@pytest.mark.parametrize("tensor", ["lora_B1", "lora_A2", "Wi.weight", "Wo.weight"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_one_finiteness_policy_for_every_form(form, tensor, value):
    # Experts and the group's own FFN weights alike: every form refuses before any arithmetic (no LAPACK error
    # from the SVD, no NaN carried into a low-rank adapter), naming the group and the tensor.
    broken = ModernAlbertModel(small_config())
    with torch.no_grad():
        broken.groups[1].mlp.get_parameter(tensor).view(-1)[3] = value
    with pytest.raises(ValueError, match=rf"group 1: groups\.1\.mlp\.{tensor} holds 1 non-finite value"):
        merge_experts(broken, form=form, rank=4 if form == "svd" else None)


def test_an_overflowing_merge_is_refused():
    big = ModernAlbertModel(small_config())
    with torch.no_grad():  # finite experts whose merged delta exceeds fp32
        big.groups[1].mlp.lora_B1.fill_(1e30)
        big.groups[1].mlp.lora_A1.fill_(1e30)
    for form, rank in (("lowrank", None), ("svd", 4), ("fold", None)):
        with pytest.raises(ValueError, match=r"non-finite value.*overflows fp32"):
            merge_experts(big, form=form, rank=rank)
