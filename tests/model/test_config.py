"""Config validation (a typed, strict config as transformers' own), presets and serialisation."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForMaskedLM, ModernBertConfig

from modernalbert import PRESETS, ModernAlbertConfig, ModernAlbertForMaskedLM, ModernAlbertModel, count_parameters
from modernalbert.training.recipe import Recipe

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
    ("rope_parameters", {"rope_type": "default", "rope_theta": 0.0}),
    ("rope_parameters", {"sliding_attention": {"rope_type": "default", "rope_theta": -1.0}}),
    ("rope_parameters", {"full_attention": {"rope_type": "default"}, "rope_theta": 5.0}),  # mixed forms
    ("layer_types", ["full_attention"] * 3),  # 16 effective layers
    ("layer_types", ["global"] * 16),
    ("global_attn_every_n_layers", 0),
    ("local_attention", 0),
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
    ("output_router_logits", "yes"),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
def test_every_invalid_field_fails_fast_naming_the_field(field, value):
    kwargs = {field: value}
    if field == "num_experts_per_tok" and value == 9:
        kwargs["num_experts"] = 8
    with pytest.raises(ValueError, match=field):
        ModernAlbertConfig(**kwargs)


def test_fields_are_checked_on_assignment_too():
    config = ModernAlbertConfig()
    with pytest.raises(ValueError, match=r"ModernAlbertConfig.lora_rank=0 is invalid: expected a number >= 1"):
        config.lora_rank = 0


def test_unknown_keys_are_refused_with_the_nearest_valid_name():
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'lora_rnak' \(did you mean 'lora_rank'\?\)"):
        ModernAlbertConfig(lora_rnak=8)
    with pytest.raises(ValueError, match="lora_rnak"):
        ModernAlbertConfig.from_preset("test", lora_rnak=8)
    with pytest.raises(ValueError, match=r"model.overrides.*'lora_rnak' \(did you mean 'lora_rank'\?\)"):
        Recipe.from_dict({"model": {"preset": "test", "overrides": {"lora_rnak": 8}}})


def test_transformers_standard_keys_are_accepted():
    config = ModernAlbertConfig(num_labels=5, attn_implementation="eager", torch_dtype="bfloat16", use_cache=False,
                                output_attentions=True, problem_type="multi_label_classification")
    assert config.num_labels == 5 and len(config.id2label) == 5 and config._attn_implementation == "eager"
    assert config.dtype == torch.bfloat16 and config.output_attentions
    config = ModernAlbertConfig(id2label={0: "neg", 1: "pos"}, dtype="float16", return_dict=False)
    assert config.num_labels == 2 and config.label2id is None and config.dtype == torch.float16


def test_a_small_vocabulary_keeps_the_default_special_tokens_as_modernbert_does():
    """transformers' generic tests build configs with vocab_size=99 and ModernBERT's token ids: accepted (with
    transformers' warning), and the model builds and runs on ids of that vocabulary."""
    config = ModernAlbertConfig(vocab_size=99, hidden_size=32, num_attention_heads=4, intermediate_size=40,
                                embedding_size=16, num_hidden_layers=2, group_depth=2, mol_groups=[0])
    model = ModernAlbertForMaskedLM(config).eval()
    assert model.model.embeddings.tok_embeddings.padding_idx is None  # pad id 50283 cannot occur
    logits = model(torch.randint(0, 99, (2, 5))).logits
    assert logits.shape == (2, 5, 99) and logits.isfinite().all()


def test_rope_parameters_are_keyed_by_layer_type_as_in_modernbert():
    """transformers' 5.x form: ModernBERT's bases per type by default; a flat dict (or the legacy ``rope_theta``) is
    the RoPE of every type, transformers' backward-compatible reading."""
    assert ModernAlbertConfig().rope_parameters == ModernBertConfig().rope_parameters == {
        "full_attention": {"rope_type": "default", "rope_theta": 160_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}
    scaled = ModernAlbertConfig(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10_000.0})
    assert scaled.rope_parameters["full_attention"] == scaled.rope_parameters["sliding_attention"] == {
        "rope_type": "linear", "factor": 2.0, "rope_theta": 10_000.0}
    one = ModernAlbertConfig(rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 500.0}})
    assert one.rope_parameters["full_attention"]["rope_theta"] == 160_000.0  # the missing type's default
    assert ModernAlbertConfig(rope_theta=5_000.0).rope_parameters["sliding_attention"]["rope_theta"] == 5_000.0


@pytest.mark.parametrize(("layers", "every_n"), [(22, 3), (28, 3), (16, 3), (7, 2), (4, 1)])
def test_layer_types_follow_modernbert_semantics(layers, every_n):
    """``global_attn_every_n_layers`` and ``local_attention`` mean what they mean in ModernBertConfig: the same layer
    types and the same half-width ``sliding_window``; the keyword seeds ``layer_types`` and is not saved."""
    ours = ModernAlbertConfig(num_hidden_layers=layers, group_depth=1, mol_groups=[], local_attention=100,
                              global_attn_every_n_layers=every_n)
    theirs = ModernBertConfig(num_hidden_layers=layers, local_attention=100, global_attn_every_n_layers=every_n)
    assert ours.layer_types == theirs.layer_types
    assert ours.sliding_window == theirs.sliding_window == 50
    assert "global_attn_every_n_layers" not in ours.to_dict()
    assert ModernAlbertConfig(num_hidden_layers=layers, group_depth=1, mol_groups=[]).layer_types == \
        ModernBertConfig(num_hidden_layers=layers).layer_types  # the default: every third layer


def test_layer_types_and_the_keyword_must_agree():
    with pytest.raises(ValueError, match=r"layer_types=.*contradicts global_attn_every_n_layers=1"):
        ModernAlbertConfig(num_hidden_layers=2, group_depth=1, mol_groups=[],
                           layer_types=["full_attention", "sliding_attention"], global_attn_every_n_layers=1)
    config = ModernAlbertConfig.from_preset("test", layer_types=["sliding_attention"] * 4)  # replaces the preset's
    assert config.layer_types == ["sliding_attention"] * 4
    with pytest.raises(ValueError, match=r"layer_types=.*expected 8 entries \(one per effective layer\)"):
        ModernAlbertModel(ModernAlbertConfig.from_preset("test", num_hidden_layers=8,
                                                         layer_types=["full_attention"] * 4))


def test_presets_attention_patterns():
    """Our choice, labelled in the presets: ModernBERT's pattern where the teacher is ModernBERT, global attention
    for ``mini`` (its teacher is a BERT), and a small window for ``test`` so that short test inputs reach past it."""
    for name in ("tiny", "medium", "base", "large"):
        config = ModernAlbertConfig.from_preset(name)
        assert config.local_attention == 128
        assert config.layer_types == ModernBertConfig(num_hidden_layers=config.num_hidden_layers).layer_types
    assert set(ModernAlbertConfig.from_preset("mini").layer_types) == {"full_attention"}
    test = ModernAlbertConfig.from_preset("test")
    assert test.layer_types == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    assert test.sliding_window == 4


def _old_form(path, **replace) -> None:
    """Rewrite a saved config.json into the form saved before the attention pattern and ``rope_parameters``."""
    saved = json.loads(path.read_text())
    for key in ("layer_types", "local_attention", "rope_parameters", "output_router_logits"):
        del saved[key]
    saved.update(replace)
    path.write_text(json.dumps(saved))


def test_a_config_saved_before_layer_types_loads_with_global_attention(tmp_path):
    """Configs saved before the attention pattern existed (no ``layer_types`` / ``local_attention``, RoPE as the
    legacy ``rope_theta``, no ``output_router_logits``): their model attended globally in every layer, and so does
    the loaded one, to the same outputs; the RoPE is the saved one."""
    config = ModernAlbertConfig.from_preset("test", global_attn_every_n_layers=1,
                                            rope_parameters={"rope_type": "default", "rope_theta": 10_000.0})
    model = ModernAlbertModel(config).eval()
    model.save_pretrained(tmp_path)
    _old_form(tmp_path / "config.json", rope_theta=10_000.0)
    again = ModernAlbertModel.from_pretrained(tmp_path).eval()
    assert again.config.layer_types == ["full_attention"] * 4
    assert again.config.rope_parameters["full_attention"] == {"rope_type": "default", "rope_theta": 10_000.0}
    ids = torch.randint(4, 512, (2, 30))  # longer than the test preset's window
    torch.testing.assert_close(again(ids).last_hidden_state, model(ids).last_hidden_state, rtol=0, atol=0)
    # The flat rope_parameters of the same era loads alike.
    model.save_pretrained(tmp_path)
    _old_form(tmp_path / "config.json", rope_parameters={"rope_type": "default", "rope_theta": 10_000.0})
    again = ModernAlbertModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(again(ids).last_hidden_state, model(ids).last_hidden_state, rtol=0, atol=0)


def test_a_saved_config_with_layer_types_needs_its_window(tmp_path):
    ModernAlbertModel(ModernAlbertConfig.from_preset("test")).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    del saved["local_attention"]
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"config\.json lacks \['local_attention'\]"):
        ModernAlbertModel.from_pretrained(tmp_path)


def test_a_saved_config_missing_a_field_is_refused_naming_the_file(tmp_path):
    ModernAlbertForMaskedLM(ModernAlbertConfig.from_preset("test")).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    del saved["lora_alpha"]
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"config\.json lacks \['lora_alpha'\]") as err:
        ModernAlbertForMaskedLM.from_pretrained(tmp_path)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match=r"lacks \['lora_alpha'\]"):
        AutoModelForMaskedLM.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"lacks \['lora_alpha'\]"):
        AutoConfig.from_pretrained(tmp_path)


def test_a_saved_config_keeps_attributes_set_by_transformers(tmp_path):
    """Trainer sets ``config.use_cache`` on the model it trains, and the key is saved: it loads back (kept as an
    attribute, with a warning naming it), since every field is still there."""
    model = ModernAlbertForMaskedLM(ModernAlbertConfig.from_preset("test"))
    model.config.use_cache = False
    model.config.my_note = "kept"
    model.save_pretrained(tmp_path)
    again = ModernAlbertForMaskedLM.from_pretrained(tmp_path)
    assert again.config.my_note == "kept"  # use_cache is a generation key: transformers drops it on loading


def test_model_refuses_an_attention_implementation_it_cannot_run():
    with pytest.raises(ValueError, match="flex_attention"):
        ModernAlbertModel(ModernAlbertConfig.from_preset("test", attn_implementation="flex_attention"))
    with pytest.raises(ValueError, match="not_an_attention"):
        ModernAlbertModel(ModernAlbertConfig.from_preset("test", attn_implementation="not_an_attention"))


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
