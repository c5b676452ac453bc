"""Length-bucketed batching over a stream, in bounded memory, with the results in input order.

The input is read ``chunk_size`` examples at a time. Each chunk is cut into length-bucketed batches
(:func:`~modernalbert.model.batching.length_bucketed_batches`: sorted by length, a budget of padded tokens per
batch), its batches are run, and :func:`~modernalbert.model.batching.restore_order` puts the chunk's results back in
input order before they are yielded. Memory holds one chunk's examples and results, whatever the input's size; the
padding saved is nearly that of bucketing the whole input once a chunk holds a few thousand examples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, TypeVar

import numpy as np

from ..model.batching import length_bucketed_batches, restore_order

T = TypeVar("T")
DEFAULT_CHUNK = 4096  # examples per chunk (our choice): bucketing gain near the whole input's, memory small
DEFAULT_MAX_TOKENS = 4096  # padded tokens per batch (our choice: the budget benchmarks/deploy.py measures)


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}.")
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def pad_right(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id sequences to (B, L) int64 ``(input_ids, attention_mask)`` numpy arrays."""
    L = max((len(s) for s in sequences), default=0)
    ids = np.full((len(sequences), L), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(sequences), L), dtype=np.int64)
    for b, seq in enumerate(sequences):
        ids[b, : len(seq)] = seq
        mask[b, : len(seq)] = 1
    return ids, mask


def bucketed_in_order(items: Iterable[T], length: Callable[[T], int], run: Callable[[list[T]], Sequence[Any]], *,
                      chunk_size: int = DEFAULT_CHUNK, max_tokens: int | None = DEFAULT_MAX_TOKENS,
                      batch_size: int | None = None, on_batch: Callable[[int], None] | None = None
                      ) -> Iterator[tuple[T, Any]]:
    """Run ``run`` over length-bucketed batches of ``items``, yielding ``(item, result)`` in input order.

    Args:
        items: Any iterable (read lazily, ``chunk_size`` at a time).
        length: An item's length in tokens (what a batch pads to).
        run: One batch of items to one result per item, in the batch's order.
        chunk_size: Items bucketed together (bounds memory).
        max_tokens: Padded-token budget per batch (``batch size * longest length``); None: ``batch_size`` alone.
        batch_size: Most items per batch (None: the token budget alone; 1: one item per call).
        on_batch: Called with each batch's item count after it ran (progress bars).

    Yields:
        Every item with its result, in the order of ``items``.

    Raises:
        ValueError: A limit below 1, neither limit given, or ``run`` returned the wrong number of results.
    """
    for chunk in chunks(items, chunk_size):
        batches = length_bucketed_batches([length(x) for x in chunk], max_tokens, batch_size)
        results = []
        for batch in batches:
            results.append(run([chunk[i] for i in batch]))
            if on_batch is not None:
                on_batch(len(batch))
        yield from zip(chunk, restore_order(batches, results), strict=True)


__all__ = ["DEFAULT_CHUNK", "DEFAULT_MAX_TOKENS", "bucketed_in_order", "chunks", "pad_right"]
