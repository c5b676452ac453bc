"""Packing a pretraining corpus into blocks: fast tokenisation, the block cache, resumable sampling, streaming.

Two datasets feed the trainer, both exactly resumable:

* :class:`PackedBlocks` materialises a finite corpus as packed blocks (``CLS`` + token stream, ``SEP`` between
  documents, no padding: the semantics of :func:`~modernalbert.data.mlm.pack_documents`), split into train and
  held-out blocks by document, and cached on disk as safetensors keyed by a hash of (corpus, tokenizer, block
  size) so that a second or resumed run never tokenises again. :class:`BlockSampler` draws index batches from it.
* :class:`StreamingPackedDataset` tokenises and packs on the fly for corpora too large to materialise (any source
  with ``streaming: true``); its position is the number of blocks consumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..utils.io import atomic_path
from .corpus import CORPUS_FORMAT, TOKENIZE_BATCH, CorpusSpec
from .sources import cache_dir
from .text import split_documents

logger = logging.getLogger(__name__)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of what decides a tokenizer's ids: class, full vocabulary and pipeline, special-token ids.

    The name or path is deliberately not part of it: the same tokenizer saved elsewhere keeps the cache valid.
    """
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)  # call-time settings a previous call may have left behind
        state.pop("padding", None)
        h.update(json.dumps(state, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    specials = [getattr(tokenizer, f"{n}_token_id", None) for n in ("cls", "sep", "pad", "mask", "unk")]
    h.update(json.dumps(specials).encode())
    return h.hexdigest()


def _special_ids(tokenizer: Any) -> tuple[int, int]:
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls is None or sep is None:
        raise ValueError("The tokenizer needs CLS and SEP tokens for packing.")
    return int(cls), int(sep)


def tokenize_texts(texts: Sequence[str], tokenizer: Any) -> list[list[int]]:
    """Token ids of each text, no special tokens, batched through the (fast) tokenizer."""
    out: list[list[int]] = []
    for i in range(0, len(texts), TOKENIZE_BATCH):
        # verbose=False: documents longer than the model's maximum length are fine here, they are packed.
        enc = tokenizer(list(texts[i : i + TOKENIZE_BATCH]), add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False, verbose=False)
        out.extend(enc["input_ids"])
    return out


def _stream_chunks(texts: Iterable[str], tokenizer: Any, sep: int) -> Iterator[np.ndarray]:
    """Token stream in chunks: each document's ids followed by SEP, ``TOKENIZE_BATCH`` documents per chunk."""
    it = iter(texts)
    while batch := list(islice(it, TOKENIZE_BATCH)):
        ids = tokenize_texts(batch, tokenizer)
        lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
        chunk = np.full(int(lengths.sum()), sep, dtype=np.int64)
        # Scatter the documents between the SEP positions: doc j starts at (sum of earlier lengths).
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        for start, x in zip(starts, ids):
            chunk[start : start + len(x)] = x
        yield chunk


def pack_texts(texts: Iterable[str], tokenizer: Any, block_size: int) -> torch.Tensor:
    """Batched fast packing with :func:`~modernalbert.data.mlm.pack_documents`' semantics.

    Returns:
        LongTensor (n_blocks, block_size); every row is CLS + block_size - 1 stream tokens, SEP after every
        document, the remainder shorter than a block dropped. ``(0, block_size)`` when there is too little text.
    """
    if block_size < 8:
        raise ValueError(f"block_size={block_size} is too small: use at least 8 tokens.")
    cls, sep = _special_ids(tokenizer)
    chunks = list(_stream_chunks(texts, tokenizer, sep))
    stream = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    body = block_size - 1
    n = len(stream) // body
    blocks = torch.from_numpy(stream[: n * body].copy()).view(n, body)  # (n, block_size - 1)
    return torch.cat([torch.full((n, 1), cls, dtype=torch.long), blocks], 1)  # (n, block_size)


def _iter_blocks(texts: Iterable[str], tokenizer: Any, block_size: int) -> Iterator[torch.Tensor]:
    """The rows of :func:`pack_texts`, one at a time, tokenising as it goes."""
    if block_size < 8:
        raise ValueError(f"block_size={block_size} is too small: use at least 8 tokens.")
    cls, sep = _special_ids(tokenizer)
    body = block_size - 1
    carry = np.zeros(0, dtype=np.int64)
    for chunk in _stream_chunks(texts, tokenizer, sep):
        stream = np.concatenate([carry, chunk])
        n = len(stream) // body
        for row in stream[: n * body].reshape(n, body):  # (n, block_size - 1)
            yield torch.cat([torch.tensor([cls]), torch.from_numpy(row.copy())])  # (block_size,)
        carry = stream[n * body :]


# --------------------------------------------------------------------------------------------------------------
# Materialised blocks with an on-disk cache


def corpus_key(spec: CorpusSpec, tokenizer: Any, block_size: int) -> str:
    """Cache key: SHA-256 over the corpus fingerprint, the tokenizer fingerprint, the block size and format."""
    payload = {"format": CORPUS_FORMAT, "corpus": spec.fingerprint(), "tokenizer": tokenizer_fingerprint(tokenizer),
               "block_size": block_size}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}\0".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


class PackedBlocks(Dataset):
    """A finite corpus as packed train and held-out blocks, cached on disk.

    Indexing gives train blocks (LongTensor (block_size,)), so a ``DataLoader`` with a :class:`BlockSampler` as
    ``batch_sampler`` and :func:`~modernalbert.data.mlm.mlm_collator` as ``collate_fn`` yields MLM batches.

    Attributes:
        train: LongTensor (n_train, block_size).
        held_out: LongTensor (n_held_out, block_size); (0, block_size) when the spec has ``held_out: 0``.
        key: The cache key (:func:`corpus_key`).
        path: The cache file, or None when caching is off.
        from_cache: Whether the blocks were read from the cache (no tokenisation).
        documents: ``{"train": n, "held_out": m}`` documents behind the blocks.
    """

    def __init__(self, train: torch.Tensor, held_out: torch.Tensor, *, key: str, path: Path | None = None,
                 from_cache: bool = False, documents: Mapping[str, int] | None = None) -> None:
        if train.dim() != 2 or held_out.dim() != 2 or train.shape[1] != held_out.shape[1]:
            raise ValueError(f"Blocks must be (n, block_size) tensors, got {tuple(train.shape)} and "
                             f"{tuple(held_out.shape)}.")
        self.train, self.held_out = train.long(), held_out.long()
        self.key, self.path, self.from_cache = key, path, from_cache
        self.documents = dict(documents or {})

    @property
    def block_size(self) -> int:
        return int(self.train.shape[1])

    def __len__(self) -> int:
        return int(self.train.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.train[index]

    def sampler(self, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> BlockSampler:
        """A :class:`BlockSampler` over the train blocks."""
        return BlockSampler(len(self), batch_size, seed, rank=rank, world_size=world_size)

    @classmethod
    def build(cls, spec: CorpusSpec, tokenizer: Any, block_size: int, *, cache: bool = True,
              cache_root: str | os.PathLike | None = None, rebuild: bool = False) -> PackedBlocks:
        """Load the packed blocks from the cache, or tokenise, pack, split and cache them.

        The cache file ``<cache_root>/packed/<key>.safetensors`` (``cache_root`` defaults to the package cache,
        ``$MODERNALBERT_CACHE``) is written atomically (temporary file, then rename); several processes building
        it at once write identical content and the last rename wins. A file that is truncated, corrupt, or does
        not match its key or checksum is rebuilt.

        Args:
            spec: The corpus (no streaming source: use :class:`StreamingPackedDataset` for those).
            tokenizer: A Hugging Face tokenizer (a fast one tokenises in parallel) with CLS and SEP tokens.
            block_size: Tokens per block, CLS included.
            cache: Read and write the cache.
            cache_root: Cache root folder.
            rebuild: Ignore an existing cache file.

        Raises:
            ValueError: A streaming corpus, no text, or fewer tokens than one block in a split.
        """
        if spec.streaming:
            names = [s.dataset for s in spec.sources if s.streaming]  # type: ignore[union-attr]
            raise ValueError(f"The corpus has streaming sources {names}: materialised blocks need a finite corpus; "
                             "use StreamingPackedDataset.")
        key = corpus_key(spec, tokenizer, block_size)
        path = Path(cache_root).expanduser() if cache_root is not None else cache_dir()
        path = path / "packed" / f"{key}.safetensors"
        if cache and not rebuild and path.exists():
            loaded = cls._load(path, key, block_size)
            if loaded is not None:
                logger.info("Packed corpus read from the cache %s", path)
                return loaded
        docs = list(spec.documents())
        if not docs:
            raise ValueError("The corpus holds no document.")
        if spec.held_out > 0:
            if len(docs) < 2:
                raise ValueError("A held-out split needs at least two documents; the corpus has one.")
            train_docs, held_docs = split_documents(docs, spec.held_out, spec.seed)
        else:
            train_docs, held_docs = docs, []
        train = pack_texts((d.text for d in train_docs), tokenizer, block_size)
        held = pack_texts((d.text for d in held_docs), tokenizer, block_size)
        if len(train) == 0:
            raise ValueError(f"The training documents hold fewer tokens than one block of {block_size}.")
        if held_docs and len(held) == 0:
            raise ValueError(f"The {len(held_docs)} held-out documents hold fewer tokens than one block of "
                             f"{block_size}: raise held_out or lower the block size.")
        counts = {"train": len(train_docs), "held_out": len(held_docs)}
        blocks = cls(train, held, key=key, path=path if cache else None, documents=counts)
        if cache:
            blocks._save(path, spec)
        return blocks

    def _save(self, path: Path, spec: CorpusSpec) -> None:
        from safetensors.torch import save_file

        # int32 on disk halves the file; every vocabulary fits.
        tensors = {"train": self.train.to(torch.int32), "held_out": self.held_out.to(torch.int32)}
        metadata = {"key": self.key, "format": str(CORPUS_FORMAT), "block_size": str(self.block_size),
                    "sha256": _tensor_digest(tensors), "documents": json.dumps(self.documents),
                    "corpus": json.dumps(spec.to_dict())}
        with atomic_path(path, fsync=True) as tmp:  # on disk before the rename makes it visible
            save_file(tensors, str(tmp), metadata=metadata)
        logger.info("Packed corpus cached at %s", path)

    @classmethod
    def _load(cls, path: Path, key: str, block_size: int) -> PackedBlocks | None:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata = fh.metadata() or {}
                tensors = {name: fh.get_tensor(name) for name in ("train", "held_out")}
        except Exception as err:  # safetensors raises its own error types for truncated or malformed files
            logger.warning("Cache file %s is unreadable (%s): rebuilding it.", path, err)
            return None
        ok = (metadata.get("key") == key and metadata.get("block_size") == str(block_size)
              and metadata.get("sha256") == _tensor_digest(tensors)
              and all(t.dim() == 2 and t.shape[1] == block_size for t in tensors.values()))
        if not ok:
            logger.warning("Cache file %s does not match its key or checksum: rebuilding it.", path)
            return None
        return cls(tensors["train"], tensors["held_out"], key=key, path=path, from_cache=True,
                   documents=json.loads(metadata.get("documents", "{}")))


# --------------------------------------------------------------------------------------------------------------
# Sampling


def _epoch_seed(seed: int, epoch: int) -> int:
    # SeedSequence mixes (seed, epoch) into independent streams: no two (seed, epoch) pairs share a permutation.
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


class BlockSampler:
    """Seeded, resumable, rank-sharded batches of block indices.

    Rule: epoch ``e`` uses the permutation ``P_e`` of ``range(n_blocks)`` drawn from ``(seed, e)``. With
    ``G = batch_size * world_size`` (the global batch), global step ``t`` of the epoch takes ``P_e[t*G : (t+1)*G]``
    and rank ``r`` gets the contiguous slice ``P_e[t*G + r*batch_size : t*G + (r+1)*batch_size]``. An epoch has
    ``n_blocks // G`` steps: the tail smaller than a global batch is left out of that epoch (the next epoch's
    permutation differs), so every rank sees full, equal batches. Hence the ranks' shards are disjoint, and their
    union is exactly the batch of a single-process sampler with ``batch_size = G`` and the same seed.

    The position is ``(epoch, offset)``, ``offset`` counting global steps already handed out in that epoch.
    Iterating yields the rest of the current epoch, then moves to the next epoch, so ``for batch in sampler``
    is one epoch. ``load_state_dict(state_dict())`` in a new process continues with exactly the batches an
    uninterrupted run would have seen, also with another world size of the same global batch.

    Note: the state counts batches *handed out*. A ``DataLoader`` that prefetches runs ahead of training; take the
    position from the trainer's step count then (:meth:`state_at`).
    """

    def __init__(self, n_blocks: int, batch_size: int, seed: int = 0, *, rank: int = 0, world_size: int = 1) -> None:
        for name, value, low in (("n_blocks", n_blocks, 1), ("batch_size", batch_size, 1),
                                 ("world_size", world_size, 1), ("rank", rank, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"BlockSampler {name}={value!r} must be an integer >= {low}.")
        if rank >= world_size:
            raise ValueError(f"BlockSampler rank={rank} must be < world_size={world_size}.")
        self.n_blocks, self.batch_size, self.seed = n_blocks, batch_size, int(seed)
        self.rank, self.world_size = rank, world_size
        self.global_batch_size = batch_size * world_size
        self.steps_per_epoch = n_blocks // self.global_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{n_blocks} blocks are fewer than one global batch of {self.global_batch_size} "
                             f"({batch_size} x {world_size} ranks).")
        self.epoch, self.offset = 0, 0
        self._perm: tuple[int, torch.Tensor] | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        """The permutation of block indices used in ``epoch``."""
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            self._perm = (epoch, torch.randperm(self.n_blocks, generator=g))
        return self._perm[1]

    def global_batch(self, epoch: int, step: int) -> list[int]:
        """All ranks' indices of global step ``step`` of ``epoch`` (rank 0's shard first)."""
        g = self.global_batch_size
        return self.permutation(epoch)[step * g : (step + 1) * g].tolist()

    def batch(self, epoch: int, step: int) -> list[int]:
        """This rank's indices of global step ``step`` of ``epoch`` (random access, does not move the position)."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} is outside the epoch's {self.steps_per_epoch} steps.")
        lo = step * self.global_batch_size + self.rank * self.batch_size
        return self.permutation(epoch)[lo : lo + self.batch_size].tolist()

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        while self.epoch == epoch:
            step = self.offset
            indices = self.batch(epoch, step)
            # Move the position before handing the batch out: a state taken after receiving it excludes it.
            if step + 1 == self.steps_per_epoch:
                self.epoch, self.offset = epoch + 1, 0
            else:
                self.offset = step + 1
            yield indices

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first step (``DistributedSampler`` convention)."""
        self.epoch, self.offset = int(epoch), 0

    def state_at(self, global_step: int) -> dict[str, int]:
        """The state after ``global_step`` steps from the start of training (epoch 0, offset 0)."""
        epoch, offset = divmod(int(global_step), self.steps_per_epoch)
        return {**self.state_dict(), "epoch": epoch, "offset": offset}

    def state_dict(self) -> dict[str, int]:
        """The position (epoch, offset in global steps) and what it depends on (JSON-serialisable)."""
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed, "n_blocks": self.n_blocks,
                "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from a saved position; refuses one taken on other data, seed or global batch size."""
        for name in ("seed", "n_blocks", "global_batch_size"):
            if name in state and int(state[name]) != getattr(self, name):
                raise ValueError(f"BlockSampler state has {name}={state[name]}, this sampler {getattr(self, name)}: "
                                 "resuming would not continue the same sequence of batches.")
        epoch, offset = int(state["epoch"]), int(state["offset"])
        if epoch < 0 or not 0 <= offset < self.steps_per_epoch:
            raise ValueError(f"BlockSampler state epoch={epoch}, offset={offset} is out of range "
                             f"({self.steps_per_epoch} steps per epoch).")
        self.epoch, self.offset = epoch, offset


def _in_held_out(seed: int, index: int, fraction: float) -> bool:
    # A keyed hash of the document's position: a stable, seeded choice that needs no look-ahead.
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


class StreamingPackedDataset(IterableDataset):
    """Packed blocks tokenised on the fly, in a deterministic order, resumable by blocks consumed.

    Documents come in source order; with ``held_out > 0`` each document goes to the held-out side when a seeded
    hash of its position falls below the fraction (an approximate fraction, exact membership; :class:`PackedBlocks`
    uses the exact-count split of :func:`~modernalbert.data.text.split_documents` instead). Blocks follow
    :func:`~modernalbert.data.mlm.pack_documents`' semantics.

    Sharding: the global block stream is dealt in rounds of ``world_size`` blocks, rank ``r`` taking the ``r``-th of
    each complete round (an incomplete last round is dropped, so all ranks yield the same number). The state is
    ``{"blocks_consumed": n}``, global blocks handed out by all ranks together (``rounds * world_size``), so a
    resumed stream skips the first ``n`` blocks (they are tokenised again to find the block boundaries).

    Iterate in the main process or one ``DataLoader`` worker (``num_workers <= 1``); with a worker the dataset
    copy that counts lives there, so save the trainer's count (``steps * batch_size * world_size``) instead.

    Args:
        spec: The corpus.
        tokenizer: A Hugging Face tokenizer with CLS and SEP tokens.
        block_size: Tokens per block, CLS included.
        split: ``"train"`` or ``"held_out"``.
        rank: This process's rank.
        world_size: Number of ranks.
        repeat: Start the stream again after its end (same order), forever.
    """

    def __init__(self, spec: CorpusSpec, tokenizer: Any, block_size: int, *, split: str = "train", rank: int = 0,
                 world_size: int = 1, repeat: bool = False) -> None:
        super().__init__()
        if split not in ("train", "held_out"):
            raise ValueError(f"split={split!r} must be 'train' or 'held_out'.")
        if split == "held_out" and spec.held_out == 0:
            raise ValueError("The corpus has no held-out split (held_out is 0).")
        if block_size < 8:
            raise ValueError(f"block_size={block_size} is too small: use at least 8 tokens.")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size}).")
        _special_ids(tokenizer)
        self.spec, self.tokenizer, self.block_size = spec, tokenizer, block_size
        self.split, self.rank, self.world_size, self.repeat = split, rank, world_size, repeat
        self.blocks_consumed = 0

    def _texts(self) -> Iterator[str]:
        while True:
            for i, doc in enumerate(self.spec.documents()):
                held = self.spec.held_out > 0 and _in_held_out(self.spec.seed, i, self.spec.held_out)
                if held == (self.split == "held_out"):
                    yield doc.text
            if not self.repeat:
                return

    def global_blocks(self) -> Iterator[torch.Tensor]:
        """Every rank's blocks, in order, from the start of the stream."""
        return _iter_blocks(self._texts(), self.tokenizer, self.block_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            raise ValueError("StreamingPackedDataset keeps one ordered stream: use num_workers <= 1.")
        start, w = self.blocks_consumed, self.world_size
        blocks = islice(self.global_blocks(), start, None)
        while len(round_ := list(islice(blocks, w))) == w:
            self.blocks_consumed += w  # before handing out, like BlockSampler
            yield round_[self.rank]

    def state_dict(self) -> dict[str, int]:
        """``{"blocks_consumed": n}``: global blocks handed out so far."""
        return {"blocks_consumed": self.blocks_consumed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue after ``state["blocks_consumed"]`` global blocks."""
        n = int(state["blocks_consumed"])
        if n < 0:
            raise ValueError(f"blocks_consumed={n} must be >= 0.")
        self.blocks_consumed = n


__all__ = ["BlockSampler", "PackedBlocks", "StreamingPackedDataset", "corpus_key", "pack_texts", "tokenize_texts",
           "tokenizer_fingerprint"]
