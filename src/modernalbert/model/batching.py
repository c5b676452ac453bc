"""Length-bucketed inference batching: group sequences of similar length so that padded batches waste little.

ModernAlbert itself runs token-wise work on the real tokens only, but every padded batch still costs padded
host memory and, for the padded attention paths (SDPA on GPU without FlashAttention, eager, traced or compiled
graphs), attention over the pads. Sorting by length before batching removes most of that waste, and a token budget
instead of a fixed batch size keeps the cost per batch roughly constant whatever the lengths.

    >>> from modernalbert.model.batching import length_bucketed_batches
    >>> length_bucketed_batches([5, 100, 7, 98, 6], max_tokens=200)
    [[1, 3], [2, 4, 0]]
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn


def length_bucketed_batches(lengths: Sequence[int], max_tokens: int | None = None, batch_size: int | None = None,
                            *, shuffle: bool = False, seed: int = 0, megabatch: int = 50) -> list[list[int]]:
    """Group example indices into batches of similar length: the one bucketing engine of the package (inference
    here and in the evaluation suites, shuffled training batches in fine-tuning).

    Without ``shuffle``: indices are sorted by decreasing length (stable, so ties keep their input order) and cut
    greedily: a batch closes when one more sequence would exceed ``batch_size`` sequences or ``max_tokens`` padded
    tokens (batch size times its longest length). Longest first, so that a batch that does not fit in memory fails
    at once.

    With ``shuffle`` (training): the indices are shuffled with ``random.Random(seed)``, cut into mega-batches of
    ``megabatch * batch_size``, each sorted by increasing length and cut into batches of ``batch_size``, and the
    batches are shuffled: a random order with little padding.

    Args:
        lengths: Length (real tokens) of every example.
        max_tokens: Budget of padded tokens per batch (not with ``shuffle``). A sequence longer than the budget gets
            a batch of its own (sequences are never split).
        batch_size: Most sequences per batch (required with ``shuffle``).
        shuffle: Training order (see above).
        seed: Seed of the shuffles.
        megabatch: Batches per sorted mega-batch (``shuffle`` only; 50: our choice).

    Returns:
        Batches of indices into ``lengths``; every index appears exactly once.

    Raises:
        ValueError: Neither limit given, a limit below 1, a negative length, or ``shuffle`` without ``batch_size``
            or with ``max_tokens``.
    """
    if max_tokens is None and batch_size is None:
        raise ValueError("length_bucketed_batches needs max_tokens, batch_size or both.")
    for name, value in (("max_tokens", max_tokens), ("batch_size", batch_size), ("megabatch", megabatch)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    lengths = [int(n) for n in lengths]
    if any(n < 0 for n in lengths):
        raise ValueError("Sequence lengths must be >= 0.")
    if shuffle:
        if batch_size is None or max_tokens is not None:
            raise ValueError("Shuffled (training) batches have a fixed batch_size and no max_tokens budget.")
        return _shuffled_batches(lengths, batch_size, seed, megabatch)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted by decreasing length: the batch's first sequence is its longest, so the padded cost of adding
        # sequence i is (len(current) + 1) * lengths[current[0]].
        full = batch_size is not None and len(current) >= batch_size
        over = max_tokens is not None and current and (len(current) + 1) * lengths[current[0]] > max_tokens
        if current and (full or over):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _shuffled_batches(lengths: list[int], batch_size: int, seed: int, megabatch: int) -> list[list[int]]:
    rng = random.Random(seed)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    size = batch_size * megabatch
    batches = []
    for start in range(0, len(idx), size):
        chunk = sorted(idx[start:start + size], key=lambda i: lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def pad_batch(sequences: Sequence[Sequence[int]], pad_token_id: int, pad_to_multiple_of: int | None = None,
              device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id sequences into a (B, L) batch.

    Args:
        sequences: Token ids of each sequence (lists or 1-D tensors).
        pad_token_id: Id written at padded positions.
        pad_to_multiple_of: Round L up to a multiple of this (e.g. 8 for tensor cores); None for the longest length.
        device: Device of the returned tensors.

    Returns:
        ``(input_ids, attention_mask)``, both (B, L) int64; the mask is 1 on real tokens.
    """
    B = len(sequences)
    L = max((len(s) for s in sequences), default=0)
    if pad_to_multiple_of:
        L = -(-L // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((B, L), pad_token_id, dtype=torch.long)  # (B, L)
    attention_mask = torch.zeros(B, L, dtype=torch.long)  # (B, L)
    for b, seq in enumerate(sequences):
        n = len(seq)
        input_ids[b, :n] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[b, :n] = 1
    return input_ids.to(device), attention_mask.to(device)


def iter_bucketed_batches(sequences: Sequence[Sequence[int]], pad_token_id: int, max_tokens: int | None = None,
                          batch_size: int | None = None, device: torch.device | str | None = None,
                          ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Yield ``(indices, input_ids, attention_mask)`` for length-bucketed, padded batches of ``sequences``.

    Args:
        sequences: Token ids of every example.
        pad_token_id: Padding id.
        max_tokens: Padded-token budget per batch (see :func:`length_bucketed_batches`).
        batch_size: Most sequences per batch.
        device: Device of the yielded tensors.

    Yields:
        The batch's indices into ``sequences`` and its (B, L) ids and mask.
    """
    for batch in length_bucketed_batches([len(s) for s in sequences], max_tokens, batch_size):
        ids, mask = pad_batch([sequences[i] for i in batch], pad_token_id, device=device)
        yield batch, ids, mask


def restore_order(batches: Sequence[Sequence[int]], outputs: Sequence[Any]) -> list[Any]:
    """Undo the bucketing: per-example results in the original order.

    Args:
        batches: The index batches, as returned by :func:`length_bucketed_batches`.
        outputs: One result per batch whose first dimension (or items) follow that batch's indices, e.g. (B_i, d)
            pooled embeddings or (B_i, L_i, d) hidden states.

    Returns:
        ``result[i]`` is example i's row, for every index in ``batches``.

    Raises:
        ValueError: ``batches`` and ``outputs`` disagree in count or size, or an index appears twice.
    """
    if len(batches) != len(outputs):
        raise ValueError(f"Got {len(outputs)} outputs for {len(batches)} batches.")
    n = sum(len(b) for b in batches)
    result: list[Any] = [None] * n
    seen = [False] * n
    for batch, out in zip(batches, outputs):
        if len(out) != len(batch):
            raise ValueError(f"A batch of {len(batch)} examples has {len(out)} outputs.")
        for row, index in enumerate(batch):
            if not 0 <= index < n or seen[index]:
                raise ValueError(f"Index {index} is out of range or appears twice in the batches.")
            seen[index] = True
            result[index] = out[row]
    return result


def encode_sequences(model: nn.Module, sequences: Sequence[Sequence[int]], pad_token_id: int,
                     max_tokens: int = 16384, batch_size: int | None = None, pooling: str = "mean",
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Pooled embeddings of many sequences with length-bucketed batches, in the input order.

    Runs under ``torch.inference_mode`` with the model in eval mode (its training flag is restored afterwards).

    Args:
        model: A :class:`~modernalbert.ModernAlbertModel`, or any encoder whose output has ``last_hidden_state``.
        sequences: Token ids of every example.
        pad_token_id: Padding id.
        max_tokens: Padded-token budget per batch.
        batch_size: Most sequences per batch (None: the token budget alone).
        pooling: ``"mean"`` or ``"cls"`` over real tokens.
        device: Where to run (default: the model's device).

    Returns:
        (n, d) embeddings; row i belongs to ``sequences[i]``.
    """
    from .modeling import pool  # the heads' pooling, so that embeddings match the classifier's view

    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    batches, pooled = [], []
    try:
        with torch.inference_mode():
            for batch, ids, mask in iter_bucketed_batches(sequences, pad_token_id, max_tokens, batch_size, device):
                hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B_i, L_i, d)
                batches.append(batch)
                pooled.append(pool(hidden, mask, pooling))  # (B_i, d)
    finally:
        model.train(was_training)
    if not batches:
        raise ValueError("encode_sequences needs at least one sequence.")
    return torch.stack(restore_order(batches, pooled))  # (n, d)


__all__ = ["encode_sequences", "iter_bucketed_batches", "length_bucketed_batches", "pad_batch", "restore_order"]
