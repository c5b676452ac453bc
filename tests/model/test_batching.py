"""Length-bucketed batching: the one engine for inference batches (token budget or batch size, longest first) and
shuffled training batches (sorted mega-batches), padding, order restoration, pooled embeddings."""

import random

import numpy as np
import pytest
import torch

from modernalbert import ModernAlbertModel
from modernalbert.model.batching import (
    encode_sequences,
    iter_bucketed_batches,
    length_bucketed_batches,
    pad_batch,
    restore_order,
)
from tests.conftest import randomize_adapters, small_config


def _model() -> ModernAlbertModel:
    model = ModernAlbertModel(small_config()).eval()
    randomize_adapters(model)
    return model


@pytest.mark.parametrize("shuffle", [False, True])
def test_training_and_inference_batches_cover_every_index_once(shuffle):
    lengths = np.random.default_rng(0).integers(1, 300, size=1001).tolist()
    batches = length_bucketed_batches(lengths, batch_size=16, shuffle=shuffle, seed=3, megabatch=4)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1001))
    assert all(1 <= len(b) <= 16 for b in batches)
    if shuffle:  # same seed, same order; another seed, another order
        assert batches == length_bucketed_batches(lengths, batch_size=16, shuffle=True, seed=3, megabatch=4)
        assert batches != length_bucketed_batches(lengths, batch_size=16, shuffle=True, seed=4, megabatch=4)
    else:  # longest first, and batches are contiguous in length
        assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


def test_bucketing_cuts_padding():
    lengths = np.random.default_rng(1).integers(8, 512, size=2048).tolist()

    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    naive = [list(range(i, min(i + 32, 2048))) for i in range(0, 2048, 32)]
    assert padded(length_bucketed_batches(lengths, batch_size=32, shuffle=True)) < 0.7 * padded(naive)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("limits", [dict(max_tokens=64), dict(batch_size=3), dict(max_tokens=100, batch_size=4)])
def test_length_bucketed_batches_invariants(seed, limits):
    rng = random.Random(seed)
    lengths = [rng.randint(0, 80) for _ in range(rng.randint(1, 40))]
    batches = length_bucketed_batches(lengths, **limits)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every index exactly once
    assert all(b for b in batches)
    for b in batches:
        if limits.get("batch_size"):
            assert len(b) <= limits["batch_size"]
        if limits.get("max_tokens") and len(b) > 1:
            assert len(b) * max(lengths[i] for i in b) <= limits["max_tokens"]  # padded-token budget
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # bucketed by length, longest first
    # restore_order puts per-example results back in the input order
    outputs = [torch.tensor([[i, lengths[i]] for i in b]) for b in batches]
    restored = restore_order(batches, outputs)
    assert [int(r[0]) for r in restored] == list(range(len(lengths)))
    assert [int(r[1]) for r in restored] == lengths


def test_length_bucketed_batches_long_sequence_and_errors():
    assert length_bucketed_batches([500, 3, 4], max_tokens=100) == [[0], [2, 1]]  # too long: a batch of its own
    assert length_bucketed_batches([], batch_size=2) == []
    with pytest.raises(ValueError, match="max_tokens, batch_size"):
        length_bucketed_batches([1, 2])
    with pytest.raises(ValueError, match="max_tokens"):
        length_bucketed_batches([1, 2], max_tokens=0)
    with pytest.raises(ValueError, match="twice"):
        restore_order([[0, 0]], [[1, 2]])


def test_pad_batch_and_bucketed_iteration():
    seqs = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    ids, mask = pad_batch(seqs, pad_token_id=0, pad_to_multiple_of=4)
    assert ids.shape == mask.shape == (3, 8)
    assert ids[0].tolist() == [5, 6, 7, 0, 0, 0, 0, 0] and mask.sum(-1).tolist() == [3, 1, 5]
    seen = []
    for batch, b_ids, b_mask in iter_bucketed_batches(seqs, pad_token_id=0, max_tokens=10):
        assert b_ids.shape[1] == max(len(seqs[i]) for i in batch)
        for row, i in enumerate(batch):
            assert b_ids[row][b_mask[row].bool()].tolist() == seqs[i]
        seen += batch
    assert sorted(seen) == [0, 1, 2]


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_encode_sequences_matches_one_by_one_in_input_order(pooling):
    model = _model().train()
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(4, 512, (n,), generator=g).tolist() for n in (5, 17, 2, 9, 17, 1, 30)]
    emb = encode_sequences(model, seqs, pad_token_id=0, max_tokens=40, pooling=pooling)
    assert model.training  # the training flag is restored
    model.eval()
    with torch.no_grad():
        for i, s in enumerate(seqs):
            hidden = model(torch.tensor([s])).last_hidden_state  # (1, n, d)
            ref = hidden.mean(1)[0] if pooling == "mean" else hidden[0, 0]
            torch.testing.assert_close(emb[i], ref, rtol=0, atol=1e-5)


def test_shuffled_batches_need_a_batch_size_and_no_token_budget():
    with pytest.raises(ValueError, match="fixed batch_size"):
        length_bucketed_batches([1, 2], max_tokens=10, shuffle=True)
    with pytest.raises(ValueError, match="fixed batch_size"):
        length_bucketed_batches([1, 2], max_tokens=10, batch_size=2, shuffle=True)
