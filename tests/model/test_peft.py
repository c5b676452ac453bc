"""PEFT LoRA on ModernAlbert: ``target_modules="all-linear"``, then ``merge_and_unload()``."""

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from modernalbert import ModernAlbertForMaskedLM
from tests.conftest import padded_batch, randomize_adapters, small_config


def test_all_linear_lora_on_the_masked_lm_merges_exactly():
    """``embeddings.proj`` is a target of "all-linear" and the MLM head's output side is that projection,
    transposed: the adapter acts on both sides, so merging (which writes into the shared weight) changes nothing."""
    model = ModernAlbertForMaskedLM(small_config()).eval()
    randomize_adapters(model)
    peft_model = get_peft_model(model, LoraConfig(target_modules="all-linear", r=4, lora_alpha=8,
                                                  init_lora_weights=False))  # random B: the adapters act
    adapted = {name.removeprefix("base_model.model.") for name, m in peft_model.named_modules()
               if isinstance(m, LoraLayer)}
    assert "model.embeddings.proj" in adapted and "decoder" not in adapted  # the output embedding is left out
    ids, mask = padded_batch(lengths=(7, 4))
    real = mask.bool()
    with torch.no_grad():
        unmerged = peft_model(input_ids=ids, attention_mask=mask).logits
        # the output side follows the adapted input projection: h @ W_eff, with W_eff = proj(I)^T
        proj = peft_model.base_model.model.model.embeddings.proj
        h = torch.randn(3, model.config.hidden_size)
        effective = proj(torch.eye(model.config.embedding_size)).T  # (d, e)
        torch.testing.assert_close(peft_model.base_model.model.unembed(h), h @ effective)
        merged = peft_model.merge_and_unload()
        assert type(merged.model.embeddings.proj) is torch.nn.Linear
        torch.testing.assert_close(merged(input_ids=ids, attention_mask=mask).logits[real], unmerged[real],
                                   rtol=1e-5, atol=1e-5)
