"""The trainer's view of a corpus: per-process batches of packed blocks with their global positions, resumable.

Finite corpora are packed once (cached) and sampled with :class:`~modernalbert.data.packing.BlockSampler`
(a seeded global batch, contiguous shard per process); streaming corpora use
:class:`~modernalbert.data.packing.StreamingPackedDataset` (blocks dealt round-robin to processes). Either way each
block comes with its position in the global batch, which keys its MLM mask, so masks do not depend on the number of
processes. :class:`MaskedBatches` masks them deterministically.
"""

from __future__ import annotations

import hashlib
from itertools import islice
from typing import Any

import torch

from ..data.corpus import CorpusSpec
from ..data.packing import PackedBlocks, StreamingPackedDataset


class FiniteBatches:
    """Global batches of a packed corpus: this process's contiguous shard and its positions."""

    def __init__(self, blocks: PackedBlocks, batch_size: int, seed: int, rank: int, world_size: int):
        self.blocks = blocks
        self.sampler = blocks.sampler(batch_size, seed=seed, rank=rank, world_size=world_size)
        self._it = None
        first = rank * batch_size
        self.positions = list(range(first, first + batch_size))

    def next_batch(self) -> tuple[torch.Tensor, list[int]]:
        if self._it is None:
            self._it = iter(self.sampler)
        try:
            idx = next(self._it)
        except StopIteration:  # the epoch ended: the sampler already moved to the next one
            self._it = iter(self.sampler)
            idx = next(self._it)
        return self.blocks.train[torch.tensor(idx)], self.positions  # (b, block_size)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "finite", **self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict({k: v for k, v in state.items() if k != "kind"})
        self._it = None

    def state_after(self, batches: int) -> dict[str, Any]:
        """The state after ``batches`` calls of :meth:`next_batch` from the start (what a checkpoint must hold)."""
        return {"kind": "finite", **self.sampler.state_at(batches)}


class StreamingBatches:
    """Global batches of a streaming corpus: round-robin blocks, resumable by global blocks consumed."""

    def __init__(self, dataset: StreamingPackedDataset, batch_size: int, rank: int, world_size: int):
        self.dataset, self.batch_size = dataset, batch_size
        self._it = None
        # Block i of this process is block i * world_size + rank of the global batch (round-robin dealing).
        self.positions = [i * world_size + rank for i in range(batch_size)]

    def next_batch(self) -> tuple[torch.Tensor, list[int]]:
        if self._it is None:
            self._it = iter(self.dataset)
        rows = list(islice(self._it, self.batch_size))
        if len(rows) < self.batch_size:
            raise ValueError("The streaming corpus ended before train.steps: set repeat or fewer steps.")
        return torch.stack(rows), self.positions  # (b, block_size)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "streaming", **self.dataset.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict({k: v for k, v in state.items() if k != "kind"})
        self._it = None

    def state_after(self, batches: int) -> dict[str, Any]:
        """The state after ``batches`` calls of :meth:`next_batch` from the start (what a checkpoint must hold)."""
        return {"kind": "streaming", "blocks_consumed": batches * self.batch_size * self.dataset.world_size}


class MaskedBatches:
    """Deterministic MLM masking: the block at position ``i`` of a step's global batch (all micro-batches of all
    processes, in order) is masked with a generator seeded from (seed, step, i), so masks depend neither on the
    number of processes, nor on how the step is split into micro-batches, nor on resumption."""

    def __init__(self, tokenizer: Any, seed: int):
        from ..data.mlm import mlm_collator

        self.collate = mlm_collator(tokenizer, seed=seed)
        self.collate([{"input_ids": torch.zeros(4, dtype=torch.long)}])  # creates the collator's generator
        self.seed = seed

    def __call__(self, blocks: torch.Tensor, step: int, positions: list[int]) -> dict[str, torch.Tensor]:
        rows = []
        for position, block in zip(positions, blocks, strict=True):
            key = f"{self.seed}:{step}:{position}".encode()
            self.collate.generator.manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
            rows.append(self.collate([{"input_ids": block}]))
        return {
            "input_ids": torch.cat([r["input_ids"] for r in rows]),
            "labels": torch.cat([r["labels"] for r in rows]),
            "attention_mask": torch.ones(len(blocks), blocks.shape[1], dtype=torch.long),
        }

    def fixed(self, blocks: torch.Tensor, batch_size: int) -> list[dict[str, torch.Tensor]]:
        """Masked batches of ``batch_size`` blocks with the masks of step -1: the same for every evaluation and every
        run of the same seed (held-out and out-of-domain evaluation)."""
        return [self(b, -1, list(range(i, i + len(b))))
                for i, b in zip(range(0, len(blocks), batch_size), blocks.split(batch_size))]


def prepare_blocks(recipe: Any, tokenizer: Any, *, rank: int, world_size: int, eval_blocks: int | None):
    """Train batches (:class:`FiniteBatches` or :class:`StreamingBatches`) and the first ``eval_blocks`` held-out
    blocks (None: all of them) for a recipe.

    Raises:
        ValueError: An invalid corpus, or too little text for one global batch / any held-out block.
    """
    spec = CorpusSpec.from_dict(recipe.data.corpus)
    if spec.held_out == 0:
        raise ValueError("data.corpus.held_out must be > 0: held-out losses are how a run is judged.")
    bs = recipe.data.block_size
    if spec.streaming:
        train = StreamingPackedDataset(spec, tokenizer, bs, rank=rank, world_size=world_size, repeat=True)
        held_stream = StreamingPackedDataset(spec, tokenizer, bs, split="held_out")
        held = list(islice(iter(held_stream), eval_blocks))
        if not held:
            raise ValueError("The streaming corpus yielded no held-out block: raise data.corpus.held_out.")
        return StreamingBatches(train, recipe.train.batch_size, rank, world_size), torch.stack(held)
    blocks = PackedBlocks.build(spec, tokenizer, bs)
    if len(blocks.held_out) == 0:
        raise ValueError("The held-out split holds no full block: raise data.corpus.held_out or add text.")
    batches = FiniteBatches(blocks, recipe.train.batch_size, recipe.seed, rank, world_size)
    return batches, blocks.held_out[:eval_blocks]


__all__ = ["FiniteBatches", "MaskedBatches", "StreamingBatches", "prepare_blocks"]
