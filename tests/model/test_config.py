"""Config validation, presets and serialisation."""

import pytest
import torch

from modernalbert import PRESETS, ModernAlbertConfig, ModernAlbertForMaskedLM, ModernAlbertModel, count_parameters

BAD_FIELDS = [
    ("vocab_size", 0),
    ("vocab_size", 3.5),
    ("embedding_size", 0),
    ("hidden_size", -1),
    ("num_attention_heads", 5),  # 768 not divisible
    ("intermediate_size", 0),
    ("num_hidden_layers", 0),
    ("group_depth", 3),  # 16 not divisible
    ("group_depth", 0),
    ("hidden_activation", "swish2"),
    ("classifier_activation", "nope"),
    ("rope_theta", 0.0),
    ("max_position_embeddings", 0),
    ("norm_eps", 0.0),
    ("initializer_range", -0.02),
    ("initializer_cutoff_factor", 0),
    ("embedding_dropout", 1.0),
    ("attention_dropout", -0.1),
    ("mlp_dropout", 1.5),
    ("classifier_dropout", "0.1"),
    ("classifier_pooling", "max"),
    ("mol_groups", [8]),
    ("mol_groups", [1, 1]),
    ("ffn_variants", ["glu"] * 3),
    ("ffn_variants", ["glu"] * 7 + ["adapter"]),
    ("adapter_rank", 0),
    ("router_ema_decay", 1.5),
    ("num_experts", 0),
    ("num_experts_per_tok", 0),
    ("num_experts_per_tok", 9),  # > num_experts
    ("lora_rank", 0),
    ("lora_alpha", 0),
    ("mol_mixing", "both"),
    ("router_jitter", 1.0),
    ("router_aux_loss_coef", -1.0),
    ("router_z_loss_coef", -0.5),
    ("pad_token_id", 50368),
    ("mask_token_id", -1),
    ("attn_implementation", "flex_attention"),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
def test_every_invalid_field_fails_fast_naming_the_field(field, value):
    kwargs = {field: value}
    if field == "num_experts_per_tok" and value == 9:
        kwargs["num_experts"] = 8
    with pytest.raises(ValueError, match=field):
        ModernAlbertConfig(**kwargs)


def test_lora_variant_needs_its_rank():
    with pytest.raises(ValueError, match="adapter_rank"):
        ModernAlbertConfig(num_hidden_layers=4, group_depth=2, ffn_variants=["glu", "lora"])
    assert ModernAlbertConfig(num_hidden_layers=4, group_depth=2, ffn_variants=["glu", "lora"], adapter_rank=8)


def test_mol_groups_and_ffn_variants_are_one_thing():
    cfg = ModernAlbertConfig(num_hidden_layers=8, group_depth=2, mol_groups=[3, 1])
    assert cfg.num_hidden_groups == 4
    assert cfg.mol_groups == [1, 3] and cfg.ffn_variants == ["glu", "mol", "glu", "mol"]
    cfg = ModernAlbertConfig(num_hidden_layers=8, group_depth=2, ffn_variants=["rrt", "mol", "moa", "glu"])
    assert cfg.mol_groups == [1]
    with pytest.raises(ValueError, match="contradicts"):
        ModernAlbertConfig(
            num_hidden_layers=8, group_depth=2, mol_groups=[2], ffn_variants=["glu", "mol", "glu", "glu"]
        )


def test_recursion_vocabulary():
    cfg = ModernAlbertConfig(num_hidden_layers=12, group_depth=3)
    assert cfg.num_hidden_groups == 4
    assert [cfg.group_of_layer(i) for i in range(12)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert cfg.lora_scale == 2.0 and cfg.head_dim == 64


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ValueError, match="available presets"):
        ModernAlbertConfig.from_preset("huge")


def test_preset_overrides_apply_and_validate():
    cfg = ModernAlbertConfig.from_preset("medium", num_experts=4, mol_mixing="weight")
    assert cfg.num_experts == 4 and cfg.mol_mixing == "weight" and cfg.hidden_size == 1024
    cfg = ModernAlbertConfig.from_preset("medium", ffn_variants=["glu", "rrt", "rrt", "glu"])
    assert cfg.mol_groups == []
    with pytest.raises(ValueError, match="group_depth"):
        ModernAlbertConfig.from_preset("medium", group_depth=5)


def test_config_round_trips_through_json(tmp_path):
    cfg = ModernAlbertConfig.from_preset("mini", ffn_variants=["moa", "mol", "rrt"], router_jitter=0.01)
    cfg.save_pretrained(tmp_path)
    again = ModernAlbertConfig.from_pretrained(tmp_path)
    assert again.to_dict() == cfg.to_dict()
    assert again.ffn_variants == ["moa", "mol", "rrt"]


def _meta_count(name: str, cls=ModernAlbertModel) -> int:
    with torch.device("meta"):
        return count_parameters(cls(ModernAlbertConfig.from_preset(name))).unique


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    assert _meta_count(name) > 0


def test_paper_preset_sizes():
    """Pretrained checkpoints are MaskedLM models: tiny within 45-55M and large within 110-130M parameters."""
    assert 45e6 <= _meta_count("tiny", ModernAlbertForMaskedLM) <= 55e6
    assert 110e6 <= _meta_count("large", ModernAlbertForMaskedLM) <= 130e6
    sizes = [_meta_count(n) for n in ("tiny", "medium", "base", "large")]
    assert sizes == sorted(sizes) and sizes[0] > 40e6 and sizes[-1] < 130e6
