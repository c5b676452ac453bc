"""Shared fixtures. Tests never reach a hub: HF_HUB_OFFLINE is set before transformers is imported; torch uses one
thread."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from modernalbert import ModernAlbertConfig

# One intra-op thread for the whole suite: the models are small, so threads cost more in synchronisation than they
# save, and OpenMP spin-waits make a shared, busy runner many times slower when threads outnumber free cores
# (measured: 31 min with the default threads on a loaded 2-core machine, 10 min with one).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def umask_022():
    """The usual umask (022) for the test: files we write must then be 0644 and folders 0755, as save_pretrained's."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def small_config(**overrides) -> ModernAlbertConfig:
    """The `test` preset (d=64, 4 heads, f=96, e=32, L=4, G=2, MoL at group 1) with overrides."""
    return ModernAlbertConfig.from_preset("test", **overrides)


def padded_batch(vocab: int = 512, lengths=(7, 4, 9), pad_id: int = 0, seed: int = 0):
    """Right-padded (B, L) ids with the given real lengths, and its attention mask."""
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.full((len(lengths), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(4, vocab, (n,), generator=g)
        mask[b, :n] = 1
    return ids, mask


def randomize_adapters(model: torch.nn.Module, std: float = 0.05) -> None:
    """Give every LoRA B / adapter-up matrix random non-zero values (they start at zero)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1] in ("lora_B1", "lora_B2", "adapter_up"):
                p.normal_(0.0, std)


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    "the", "a", "cat", "dog", "bird", "fish", "sat", "ran", "flew", "swam", "on", "under", "over", "near", "mat",
    "tree", "river", "house", "big", "small", "red", "blue", "green", "quick", "slow", "happy", "old", "young", "and",
    "but", "then",
]


def make_tokenizer(**kwargs) -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer, [PAD] = 0, ids < 40, with ``[CLS] ... [SEP]`` around every text (``kwargs``:
    further tokenizer settings, e.g. ``model_input_names``)."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", **kwargs)
