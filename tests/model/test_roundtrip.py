"""save_pretrained -> AutoModel*.from_pretrained (safetensors) round trips for every head class."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

import modernalbert  # noqa: F401  (registers the Auto classes)
from modernalbert import ModernAlbertConfig
from tests.conftest import padded_batch, randomize_adapters, small_config

AUTO = [
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoModelForQuestionAnswering,
    AutoModelForMultipleChoice,
]


def _inputs(auto):
    ids, mask = padded_batch(lengths=(6, 3))
    if auto is AutoModelForMultipleChoice:
        return {"input_ids": ids[None].repeat(2, 1, 1), "attention_mask": mask[None].repeat(2, 1, 1)}
    return {"input_ids": ids, "attention_mask": mask}


def _tensors(out):
    return {k: v for k, v in out.items() if torch.is_tensor(v)}


@pytest.mark.parametrize("auto", AUTO)
@pytest.mark.parametrize("variants", [None, ["rrt", "moa"]])
def test_save_and_reload_gives_identical_outputs(tmp_path, auto, variants):
    cfg = small_config(num_labels=3, ffn_variants=variants) if variants else small_config(num_labels=3)
    model = auto.from_config(cfg).eval()
    randomize_adapters(model)  # make the adapters part of what must survive
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt")) for f in files)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "modernalbert"

    again = auto.from_pretrained(tmp_path).eval()
    assert type(again) is type(model)
    with torch.no_grad():
        a = _tensors(model(**_inputs(auto), output_router_logits=True))
        b = _tensors(again(**_inputs(auto), output_router_logits=True))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_mixed_layer_types_survive_save_and_load(tmp_path):
    """An irregular attention pattern (not ModernBERT's periodic one), its window and a RoPE per layer type are saved
    as fields and give the same outputs after loading, on rows longer than the window."""
    pattern = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]
    rope = {"full_attention": {"rope_type": "default", "rope_theta": 50_000.0},
            "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1_000.0}}
    model = AutoModelForMaskedLM.from_config(small_config(layer_types=pattern, local_attention=6,
                                                          rope_parameters=rope)).eval()
    randomize_adapters(model)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["layer_types"] == pattern and saved["local_attention"] == 6 and saved["rope_parameters"] == rope
    assert "global_attn_every_n_layers" not in saved
    again = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert again.config.layer_types == pattern and again.config.rope_parameters == rope
    ids, mask = padded_batch(lengths=(20, 9, 3))
    with torch.no_grad():
        assert torch.equal(again(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)


def test_saved_file_holds_each_shared_and_tied_tensor_once(tmp_path):
    model = AutoModelForMaskedLM.from_config(small_config()).eval()
    model.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert "decoder.weight" not in keys  # tied to the token embedding
    assert "model.embeddings.proj.weight" in keys  # the input and (transposed) output side of the factorisation
    assert not any(k.startswith("model.groups.2.") for k in keys)  # K = 2 unique blocks
    again = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert again.decoder.weight is again.model.embeddings.tok_embeddings.weight


def test_auto_config_knows_the_model_type():
    cfg = AutoConfig.for_model("modernalbert", hidden_size=128, num_attention_heads=4)
    assert isinstance(cfg, ModernAlbertConfig)


def test_attention_implementation_is_chosen_at_load(tmp_path):
    AutoModel.from_config(small_config()).save_pretrained(tmp_path)
    eager = AutoModel.from_pretrained(tmp_path, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    ids, mask = padded_batch(lengths=(4, 2))
    assert eager(ids, attention_mask=mask, output_attentions=True).attentions[0].shape == (2, 4, 4, 4)
