"""Output files of ``predict`` and ``encode``, written incrementally (a row at a time, or a chunk of embeddings at a
time) into a temporary file beside the destination and moved into place when complete: a reader never sees half a
file, and an interrupted run leaves no output (:func:`modernalbert.utils.io.atomic_path`).

* Records (``predict``): JSON Lines (``.jsonl``, ``.json``: one object per input row, in input order) or CSV
  (``.csv``, ``.tsv``: a header, one line per input row; nested values, e.g. a record's ``scores`` or
  ``entities``, as JSON text in their cell).
* Embeddings (``encode``): ``.npy`` (one (n, d) float32 array, ``numpy.load`` reads it; rows are streamed to a raw
  file, then copied under the header once n is known) or Parquet (``.parquet``: one row per input row with an
  ``embedding`` column of fixed-size float32 lists, one row group per chunk).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.io import atomic_path

RECORD_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}
EMBEDDING_FORMATS = {".npy": "npy", ".parquet": "parquet", ".pq": "parquet"}


def output_format(path: str | os.PathLike, formats: dict[str, str], what: str) -> str:
    """The format of an output file from its suffix.

    Raises:
        ValueError: An unknown suffix (the message lists the known ones).
    """
    suffix = Path(path).suffix.lower()
    if suffix not in formats:
        raise ValueError(f"Cannot tell the format of {what} file {path} from its suffix {suffix!r}: use one of "
                         f"{', '.join(sorted(formats))}.")
    return formats[suffix]


class RecordWriter:
    """Writes ``predict`` records one by one (see the module notes); use as a context manager."""

    def __init__(self, handle: Any, fmt: str) -> None:
        self.handle, self.fmt = handle, fmt
        self.csv: Any = None
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            if self.csv is None:
                self.csv = csv.DictWriter(self.handle, fieldnames=list(record),
                                          delimiter="\t" if self.fmt == "tsv" else ",")
                self.csv.writeheader()
            self.csv.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v
                               for k, v in record.items()})
        self.count += 1


@contextlib.contextmanager
def record_writer(path: str | os.PathLike) -> Iterator[RecordWriter]:
    """A :class:`RecordWriter` onto ``path`` (JSON Lines or CSV by suffix), moved into place on success."""
    fmt = output_format(path, RECORD_FORMATS, "predictions")
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        yield RecordWriter(handle, fmt)


class EmbeddingWriter:
    """Appends (b, d) float32 embeddings chunk by chunk (see the module notes)."""

    def __init__(self, tmp: Path, fmt: str) -> None:
        self.tmp, self.fmt = tmp, fmt
        self.rows, self.dim = 0, None
        # Closed by close(), which the embedding_writer context always calls.
        self.raw = open(tmp.with_name(tmp.name + ".raw"), "wb") if fmt == "npy" else None  # noqa: SIM115
        self.parquet: Any = None

    def write(self, embeddings: np.ndarray) -> None:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)  # (b, d)
        if self.dim is None:
            self.dim = embeddings.shape[1]
        if self.raw is not None:
            self.raw.write(embeddings.tobytes())
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            values = pa.array(embeddings.reshape(-1), type=pa.float32())
            table = pa.table({"embedding": pa.FixedSizeListArray.from_arrays(values, self.dim)})
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(str(self.tmp), table.schema)
            self.parquet.write_table(table)
        self.rows += embeddings.shape[0]

    def close(self) -> None:
        if self.raw is not None:
            self.raw.close()
            raw = Path(self.raw.name)
            shape = (self.rows, self.dim or 0)
            out = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32, shape=shape)
            if self.rows:
                out[:] = np.memmap(raw, dtype=np.float32, mode="r", shape=shape)  # (n, d), paged in by the OS
            out.flush()
            del out
            raw.unlink()
        elif self.parquet is not None:
            self.parquet.close()


@contextlib.contextmanager
def embedding_writer(path: str | os.PathLike) -> Iterator[EmbeddingWriter]:
    """An :class:`EmbeddingWriter` onto ``path`` (``.npy`` or Parquet by suffix), moved into place on success."""
    fmt = output_format(path, EMBEDDING_FORMATS, "embeddings")
    with atomic_path(path) as tmp:
        writer = EmbeddingWriter(Path(tmp), fmt)
        try:
            yield writer
        finally:
            writer.close()


__all__ = ["EMBEDDING_FORMATS", "RECORD_FORMATS", "EmbeddingWriter", "RecordWriter", "embedding_writer",
           "output_format", "record_writer"]
