"""Fixtures of the evaluation tests."""

import pytest
import torch

from modernalbert import ModernAlbertForMaskedLM
from tests.conftest import make_tokenizer, small_config


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A saved `test`-preset ModernAlbert (MaskedLM) with the word-level test tokenizer: a folder to fine-tune."""
    folder = tmp_path_factory.mktemp("tiny_mlm")
    torch.manual_seed(0)
    ModernAlbertForMaskedLM(small_config()).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return str(folder)
