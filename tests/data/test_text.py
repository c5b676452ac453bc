"""Text cleaning, document splits, packing and MLM masking."""

import pytest
import torch

from modernalbert.data import text as text_mod
from modernalbert.data.mlm import MLM_PROBABILITY, masked_batches, pack_documents
from modernalbert.data.text import Document, split_documents
from tests.conftest import make_tokenizer

KJV_MODULE = '''from pythonbible.bible.bible import Bible
bible = Bible(VERSION, """
1. In the beginning God created the heaven and the earth. 2. And the earth was without form, and void; \
and darkness [was] upon the face of the deep.
3. short
""", other="x")
'''


def test_kjv_text_is_read_without_executing_the_module(tmp_path):
    (tmp_path / "plain_text_bible.py").write_text(KJV_MODULE + "\nraise SystemExit('executed')\n")
    docs = text_mod._kjv(tmp_path)
    assert len(docs) == 1  # the short line is dropped
    assert docs[0].text.startswith("In the beginning God created")
    assert "[" not in docs[0].text and "2." not in docs[0].text and "darkness was upon" in docs[0].text


def test_gutenberg_texts_drop_the_licence_and_decode_latin1(tmp_path):
    raw = "ACT I.\r\n\r\nO Rom\xe9o!\r\n\r\n*** END OF THE PROJECT GUTENBERG EBOOK\r\nlicence"
    (tmp_path / "play_gut.txt").write_bytes(raw.encode("latin-1"))
    (doc,) = text_mod._gutenberg(tmp_path, "shakespeare")
    assert doc.text == "ACT I.\nO Roméo!" and doc.name == "play_gut"


def test_split_is_by_document_seeded_and_disjoint():
    docs = [Document("s", f"d{i}", f"text {i}") for i in range(40)]
    train, held = split_documents(docs, 0.1, seed=3)
    assert len(held) == 4 and len(train) == 36
    assert {d.name for d in train}.isdisjoint(d.name for d in held)
    assert split_documents(docs, 0.1, seed=3) == (train, held)
    assert split_documents(docs, 0.1, seed=4)[1] != held
    with pytest.raises(ValueError, match="fraction"):
        split_documents(docs, 1.5)


def test_packing_fills_blocks_without_padding():
    tok = make_tokenizer()
    docs = ["the cat sat on the mat", "a dog ran under the tree and the bird flew over the river"] * 5
    blocks = pack_documents(docs, tok, 8)
    assert blocks.shape[1] == 8 and (blocks[:, 0] == tok.cls_token_id).all()
    assert (blocks != tok.pad_token_id).all()
    stream = blocks[:, 1:].flatten().tolist()
    first = tok(docs[0], add_special_tokens=False)["input_ids"]
    assert stream[: len(first) + 1] == [*first, tok.sep_token_id]
    with pytest.raises(ValueError, match="fewer than one block"):
        pack_documents(["the cat"], tok, 64)
    with pytest.raises(ValueError, match="empty"):
        pack_documents(["", "  "], tok, 8)


def test_masked_batches_follow_the_modernbert_recipe_and_are_reproducible():
    tok = make_tokenizer()
    blocks = torch.randint(5, 36, (64, 32))
    batches = masked_batches(blocks, tok, 16, seed=7)
    labels = torch.cat([b["labels"] for b in batches])
    inputs = torch.cat([b["input_ids"] for b in batches])
    chosen = labels != -100
    assert abs(chosen.float().mean().item() - MLM_PROBABILITY) < 0.03
    assert torch.equal(labels[chosen], blocks[chosen])
    masked = (inputs == tok.mask_token_id) & chosen
    assert abs(masked.sum().item() / chosen.sum().item() - 0.8) < 0.05
    again = masked_batches(blocks, tok, 16, seed=7)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))
