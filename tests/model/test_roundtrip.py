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
