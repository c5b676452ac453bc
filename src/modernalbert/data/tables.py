"""Labelled tables, read row by row: CSV, TSV, JSON Lines, Parquet, CoNLL, and Hugging Face datasets.

One reader for every command that takes a user's file (``finetune classification|regression|token-classification``,
``predict``, ``encode``). :class:`Table` opens a source and yields its rows as dicts, in file order, with bounded
memory: CSV, TSV, JSON Lines and CoNLL are read a line at a time (through :func:`modernalbert.utils.io.read_lines`,
so a byte that is not UTF-8 is reported with its file, line and byte), Parquet a record batch at a time
(``pyarrow.parquet.ParquetFile.iter_batches``), datasets through ``datasets``' memory-mapped Arrow files, a batch at a
time. Nothing reads a whole file into memory.

Formats (:data:`TABLE_FORMATS`), chosen by the suffix or given with ``format=``:

* ``csv`` (``.csv``): a header line naming the columns, then one record per row, parsed by Python's :mod:`csv` with
  its default (Excel) dialect, i.e. the quoting ``pandas.to_csv`` writes and ``pandas.read_csv`` reads: a field in
  double quotes may hold the delimiter, newlines and doubled quotes.
* ``tsv`` (``.tsv``, ``.tab``): a header line, then one record per line, fields split at tabs with **no quoting**
  (IANA ``text/tab-separated-values``, and how GLUE's TSV files are read): a quote is an ordinary character, kept as
  written, so a stray quote in a sentence cannot join lines; a field cannot hold a tab or a newline (write such data
  as CSV or JSON Lines).
* For both, values are strings exactly as written (an empty field is ``""``), and a row with more or fewer fields
  than the header is an error.
* ``jsonl`` (``.jsonl``, ``.ndjson``, ``.json``): one JSON object per line (JSON Lines, what ``datasets``'
  ``to_json`` writes); blank lines are skipped. A ``.json`` file holding one JSON array is refused with the fix
  (arrays cannot be streamed line by line).
* ``parquet`` (``.parquet``, ``.pq``): values keep their Arrow types (ints, floats, strings, lists).
* ``conll`` (``.conll``): token classification in the CoNLL column layout: one token per line, whitespace-separated
  fields with the token first and its tag last (CoNLL-2003: ``word POS chunk NER``), a blank line between
  sentences, ``-DOCSTART-`` lines skipped. Each sentence is one row ``{"tokens": [...], "tags": [...]}``.
* ``hf``: a Hugging Face dataset, given by a folder saved with ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``)
  or by a Hub name (``imdb``, ``owner/name``) that is in the local ``datasets`` cache; with ``HF_HUB_OFFLINE=1`` a
  name that is not cached fails with a clear error. ``split`` picks a split (needed when there are several).

``.gz``, ``.bz2`` and ``.xz`` after a text format's suffix (``train.csv.gz``) are decompressed on the fly
(:mod:`gzip`, :mod:`bz2`, :mod:`lzma`).

Errors: a missing file, an unknown suffix, a missing column (the message names the file and the column, and lists
the columns present), a malformed row (the message names the file and the line, or for Parquet and datasets the row,
and says how to fix it) all raise :class:`TableError`, a ``ValueError``. :meth:`Table.located_rows` yields each row
with its location (``"train.csv, line 12"``) for checks made by the caller (an empty text, a missing label), and
:func:`cell_text` / :func:`cell_value` make the common ones with the same wording.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from ..utils.hub import is_hub_id
from ..utils.io import read_lines

TableFormat = Literal["csv", "tsv", "jsonl", "parquet", "conll", "hf"]
TABLE_FORMATS: tuple[str, ...] = get_args(TableFormat)

# suffix -> format (lower-case suffixes; a compression suffix after a text format's suffix is peeled first)
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
            ".parquet": "parquet", ".pq": "parquet", ".conll": "conll"}
COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}

# Rows per Parquet / datasets batch: a few MB of text at a time (our choice).
BATCH_ROWS = 1024


class TableError(ValueError):
    """Bad input in a table: the message names the file (and the line, row or column) and the fix."""


def _peel(path: Path) -> tuple[str, str | None]:
    """``(data suffix, compression suffix or None)`` of a file name, lower-cased."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        return (suffixes[-2] if len(suffixes) > 1 else ""), suffixes[-1]
    return (suffixes[-1] if suffixes else ""), None


def table_format(source: str | os.PathLike, format: str | None = None) -> str:
    """The format of ``source``: ``format`` when given, else from the suffix, ``hf`` for a folder or a Hub name.

    Args:
        source: A file, a folder saved with ``datasets``, or a Hub dataset name.
        format: One of :data:`TABLE_FORMATS`, overriding the suffix.

    Raises:
        TableError: Unknown ``format``, or a suffix that names no format (the message lists them and the fix).
        FileNotFoundError: A file name (it has a known suffix, or looks like a path) where nothing exists.
    """
    if format is not None:
        if format not in TABLE_FORMATS:
            raise TableError(f"Unknown table format {format!r}: choose one of {list(TABLE_FORMATS)}.")
        return format
    path = Path(source).expanduser()
    suffix, _ = _peel(path)
    if path.is_dir():
        return "hf"
    if suffix in SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"Table file {source} does not exist.")
        return SUFFIXES[suffix]
    if not path.exists() and is_hub_id(str(source)):
        return "hf"
    if not path.exists():
        raise FileNotFoundError(f"Table file {source} does not exist (and it is not a Hugging Face dataset name).")
    raise TableError(f"{source}: cannot tell the table format from the suffix {''.join(path.suffixes) or '(none)'}; "
                     f"name the file .csv, .tsv, .jsonl, .parquet or .conll (optionally .gz / .bz2 / .xz), or give "
                     f"the format explicitly (format= / --format: one of {list(TABLE_FORMATS)}).")


def cell_value(row: dict[str, Any], column: str, where: str) -> Any:
    """``row[column]``, refusing a missing or empty value (``None``, ``""``, NaN).

    Raises:
        TableError: ``"<where>: no value in column 'label'; fill it in or drop the row."``
    """
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and value != value):
        raise TableError(f"{where}: no value in column {column!r}; fill it in or drop the row.")
    return value


def cell_text(row: dict[str, Any], column: str, where: str) -> str:
    """``row[column]`` as a non-empty string.

    Raises:
        TableError: A missing or blank text, or a value that is not a string (its type named).
    """
    value = row.get(column)
    if value is not None and not isinstance(value, str):
        raise TableError(f"{where}: column {column!r} holds a {type(value).__name__} ({str(value)[:60]!r}), not "
                         "text; give the text column (--text-column) or store the value as a string.")
    if value is None or not value.strip():
        raise TableError(f"{where}: the text in column {column!r} is empty; fill it in or drop the row.")
    return value


class Table:
    """A table to read row by row (see the module notes for the formats and errors).

    Args:
        source: A file, a folder saved with ``datasets`` (``save_to_disk``), or a Hub dataset name (cached).
        format: One of :data:`TABLE_FORMATS`; default: from the suffix.
        split: The split of a ``DatasetDict`` folder or a Hub dataset (ignored by files); ``None`` takes the only
            split, and is an error when there are several.
        config: The configuration of a Hub dataset (``datasets.load_dataset(name, config)``).

    Attributes:
        source: As given.
        format: The format read.
        name: How errors name the source: the file, or ``"imdb [train]"`` for a dataset.

    Raises:
        TableError, FileNotFoundError: As :func:`table_format`.

    Example:
        >>> table = Table("train.csv")                                     # doctest: +SKIP
        >>> table.columns                                                  # doctest: +SKIP
        ['text', 'label']
        >>> for where, row in table.located_rows(["text", "label"]): ...  # doctest: +SKIP
    """

    def __init__(self, source: str | os.PathLike, *, format: str | None = None, split: str | None = None,
                 config: str | None = None) -> None:
        self.source = source
        self.format = table_format(source, format)
        self.split = split
        self.config = config
        self._path = Path(source).expanduser()
        if self.format != "hf" and not self._path.is_file():
            raise FileNotFoundError(f"Table file {source} does not exist.")
        self._dataset: Any = None
        self.name = str(source)  # a DatasetDict's split is added when it is opened

    # ------------------------------------------------------------------------------------------ columns

    @property
    def columns(self) -> list[str]:
        """The column names: a CSV/TSV header, a Parquet schema, a dataset's features, the keys of a JSON Lines
        file's first object (later objects may have others), ``["tokens", "tags"]`` for CoNLL.

        Raises:
            TableError: An empty file (no header or no object).
        """
        if self.format in ("csv", "tsv"):
            return self._header(self._csv_records())[0]
        if self.format == "parquet":
            return list(self._parquet().schema_arrow.names)
        if self.format == "hf":
            return list(self.dataset().column_names)
        if self.format == "conll":
            return ["tokens", "tags"]
        for _, row in self._jsonl_rows():
            return list(row)
        raise TableError(f"{self.name} is empty: it needs one JSON object per line.")

    def check_columns(self, columns: Sequence[str]) -> None:
        """Raise :class:`TableError` naming the file, the missing column(s) and the columns present, when a column
        of ``columns`` is not in :attr:`columns` (JSON Lines: checked against the first object, then per row)."""
        present = self.columns
        missing = [c for c in columns if c not in present]
        if missing:
            names = ", ".join(repr(c) for c in missing)
            raise TableError(f"{self.name}: no column {names}; the columns are {present}. Name the right column "
                             "(e.g. --text-column / --label-column) or add it to the file.")

    def label_names(self, column: str) -> list[str] | None:
        """The class names a dataset's ``ClassLabel`` feature (or a sequence of them) gives ``column``, in id order;
        None for other columns and formats (their labels are written as they are)."""
        if self.format != "hf":
            return None
        feature = self.dataset().features.get(column)
        for _ in range(3):  # ClassLabel, Sequence(ClassLabel) or List(ClassLabel)
            if feature is None:
                return None
            names = getattr(feature, "names", None)
            if names is not None:
                return list(names)
            feature = getattr(feature, "feature", None)
        return None

    # ------------------------------------------------------------------------------------------ rows

    def rows(self, columns: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
        """The rows in file order, as ``{column: value}`` (only ``columns`` when given, checked first)."""
        for _, row in self.located_rows(columns):
            yield row

    def located_rows(self, columns: Sequence[str] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(where, row)`` pairs in file order: ``where`` names the file and the line (CSV/TSV: the line the
        record ends on; CoNLL: the sentence's first line) or the 1-based row (Parquet, datasets).

        Args:
            columns: Keep only these columns; a missing one raises :class:`TableError` before any row is read
                (JSON Lines: at the first object that lacks it).
        """
        if columns is not None:
            self.check_columns(columns)
        reader = {"csv": self._csv_rows, "tsv": self._csv_rows, "jsonl": self._jsonl_rows,
                  "parquet": self._parquet_rows, "conll": self._conll_rows, "hf": self._dataset_rows}[self.format]
        for where, row in reader(columns):
            if columns is not None and self.format == "jsonl":
                missing = [c for c in columns if c not in row]
                if missing:
                    raise TableError(f"{where}: the object has no key {missing[0]!r} (its keys are {list(row)}); "
                                     "add it or drop the line.")
                row = {c: row[c] for c in columns}
            yield where, row

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.rows()

    # ------------------------------------------------------------------------------------------ text files

    def _lines(self) -> Iterator[str]:
        _, compression = _peel(self._path)
        try:
            if compression is None:
                yield from read_lines(self._path)
                return
            with COMPRESSIONS[compression](self._path, "rb") as stream:
                try:
                    yield from read_lines(self._path, stream)
                except (OSError, EOFError, lzma.LZMAError) as err:  # a truncated or corrupt archive
                    raise TableError(f"{self.name}: cannot decompress it ({type(err).__name__}: {err}); the file is "
                                     "damaged or not compressed as its suffix says.") from err
        except TableError:
            raise
        except ValueError as err:  # not UTF-8: read_lines names the file, the line and the byte
            raise TableError(str(err)) from None

    def _csv_records(self) -> Iterator[tuple[int, list[str]]]:
        if self.format == "tsv":  # no quoting: see the module docstring
            reader = csv.reader(self._lines(), delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(self._lines(), delimiter=",")
        try:
            for record in reader:
                if record:  # csv.reader gives [] for a blank line
                    yield reader.line_num, record
        except csv.Error as err:
            raise TableError(f"{self.name}, line {reader.line_num}: {err}; fix that row (an unbalanced quote runs "
                             "on to the end of the file; a quote inside a quoted field is written twice: \"\")."
                             ) from err

    def _header(self, records: Iterator[tuple[int, list[str]]]) -> tuple[list[str], int]:
        for line, header in records:
            names = [h.strip() for h in header]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise TableError(f"{self.name}, line {line}: the header names column(s) {twice} twice; give every "
                                 "column its own name.")
            return names, line
        raise TableError(f"{self.name} is empty: it needs a header line naming the columns, then one row per "
                         "example.")

    def _csv_rows(self, columns: Sequence[str] | None) -> Iterator[tuple[str, dict[str, Any]]]:
        records = self._csv_records()
        header, _ = self._header(records)
        keep = [header.index(c) for c in columns] if columns is not None else list(range(len(header)))
        names = [header[i] for i in keep]
        for line, record in records:
            if len(record) != len(header):
                fix = ("a TSV field cannot hold a tab or a newline (TSV has no quoting): fix the row, or write the "
                       "data as CSV or JSON Lines" if self.format == "tsv" else
                       "quote a field that holds a comma or a newline, or fix the row")
                raise TableError(f"{self.name}, line {line}: {len(record)} fields, the header has {len(header)}; "
                                 f"{fix}.")
            yield f"{self.name}, line {line}", {n: record[i] for n, i in zip(names, keep)}

    def _jsonl_rows(self, columns: Sequence[str] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        for number, line in enumerate(self._lines(), start=1):
            if not line.strip():
                continue
            where = f"{self.name}, line {number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                fix = (" The file holds one JSON array: write one object per line (JSON Lines), e.g. with "
                       "`jq -c '.[]'`." if number == 1 and line.lstrip().startswith("[") else " Fix or drop the line.")
                raise TableError(f"{where}: not valid JSON ({err.msg} at column {err.colno}).{fix}") from None
            if not isinstance(obj, dict):
                raise TableError(f"{where}: a JSON {type(obj).__name__}, not an object; JSON Lines holds one object "
                                 '({"text": ..., "label": ...}) per line.')
            yield where, obj

    def _conll_rows(self, columns: Sequence[str] | None) -> Iterator[tuple[str, dict[str, Any]]]:
        tokens: list[str] = []
        tags: list[str] = []
        start = 0
        for number, line in enumerate(self._lines(), start=1):
            fields = line.split()
            if fields and fields[0] == "-DOCSTART-":
                continue
            if fields:
                if len(fields) < 2:
                    raise TableError(f"{self.name}, line {number}: one field {fields[0]!r}; a CoNLL line holds the "
                                     "token and its tag (last field), separated by whitespace.")
                start = start or number
                tokens.append(fields[0])
                tags.append(fields[-1])
            elif tokens:
                yield f"{self.name}, line {start}", self._select({"tokens": tokens, "tags": tags}, columns)
                tokens, tags, start = [], [], 0
        if tokens:
            yield f"{self.name}, line {start}", self._select({"tokens": tokens, "tags": tags}, columns)

    @staticmethod
    def _select(row: dict[str, Any], columns: Sequence[str] | None) -> dict[str, Any]:
        return row if columns is None else {c: row[c] for c in columns}

    # ------------------------------------------------------------------------------------------ Arrow

    def _parquet(self) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(str(self._path))
        except (pa.ArrowException, OSError) as err:
            raise TableError(f"{self.name} is not a readable Parquet file ({type(err).__name__}: "
                             f"{str(err).strip()[:200]}); write it again or give another format.") from err

    def _parquet_rows(self, columns: Sequence[str] | None) -> Iterator[tuple[str, dict[str, Any]]]:
        import pyarrow as pa

        number = 0
        try:
            for batch in self._parquet().iter_batches(batch_size=BATCH_ROWS, columns=columns):
                for row in batch.to_pylist():
                    number += 1
                    yield f"{self.name}, row {number}", row
        except pa.ArrowException as err:
            raise TableError(f"{self.name}, after row {number}: cannot read the file ({type(err).__name__}: "
                             f"{str(err).strip()[:200]}); it is damaged: write it again.") from err

    def dataset(self) -> Any:
        """The ``datasets.Dataset`` of an ``hf`` source (opened once; memory-mapped, not loaded).

        Raises:
            TableError: A name that is not in the local cache (offline) or cannot be loaded, a missing split, or
                several splits and no ``split``.
        """
        if self.format != "hf":
            raise TableError(f"{self.name} is a {self.format} file, not a Hugging Face dataset.")
        if self._dataset is None:
            self._dataset = self._open_dataset()
        return self._dataset

    def _open_dataset(self) -> Any:
        try:
            import datasets
        except ImportError as err:
            raise TableError(f"Reading {self.source} needs `datasets`: pip install 'modernalbert[data]'.") from err
        local = self._path.is_dir()
        try:
            if local:
                ds = datasets.load_from_disk(str(self._path))
            else:
                ds = datasets.load_dataset(str(self.source), self.config, split=self.split)
        except (FileNotFoundError, ValueError, ConnectionError, OSError) as err:
            how = ("a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`" if local else
                   "a Hugging Face dataset name that is in the local `datasets` cache (offline, with HF_HUB_OFFLINE=1, "
                   "only cached datasets load), or a local CSV / TSV / JSON Lines / Parquet file")
            raise TableError(f"Could not load the dataset {self.source} ({type(err).__name__}: "
                             f"{str(err).strip()[:300]}); give {how}.") from err
        if isinstance(ds, datasets.DatasetDict):
            if self.split is None and len(ds) == 1:
                self.split = next(iter(ds))
            if self.split not in ds:
                ask = "which split to read" if self.split is None else f"a split it has, not {self.split!r}"
                raise TableError(f"{self.source} holds the splits {list(ds)}: say {ask} (split= / the --*-split flag).")
            ds = ds[self.split]
        if self.split is not None and (not local or (self._path / "dataset_dict.json").is_file()):
            self.name = f"{self.source} [{self.split}]"  # a split of several: say which
        return ds

    def _dataset_rows(self, columns: Sequence[str] | None) -> Iterator[tuple[str, dict[str, Any]]]:
        ds = self.dataset()
        if columns is not None:
            ds = ds.select_columns(list(columns))
        number = 0
        for batch in ds.iter(batch_size=BATCH_ROWS):
            names = list(batch)
            for values in zip(*(batch[n] for n in names)):
                number += 1
                yield f"{self.name}, row {number}", dict(zip(names, values))


def read_table(source: str | os.PathLike, columns: Sequence[str] | None = None, *, format: str | None = None,
               split: str | None = None, config: str | None = None) -> Iterator[dict[str, Any]]:
    """The rows of a table in file order, streamed (shorthand for ``Table(source, ...).rows(columns)``).

    Args:
        source: A CSV / TSV / JSON Lines / Parquet / CoNLL file, a ``save_to_disk`` folder or a cached Hub name.
        columns: Keep only these columns (a missing one: :class:`TableError` naming it and the columns present).
        format: One of :data:`TABLE_FORMATS`; default: from the suffix.
        split: A dataset's split.
        config: A Hub dataset's configuration.

    Raises:
        TableError: See the module notes; FileNotFoundError: no such file.
    """
    return Table(source, format=format, split=split, config=config).rows(columns)


__all__ = ["BATCH_ROWS", "TABLE_FORMATS", "Table", "TableError", "TableFormat", "cell_text", "cell_value",
           "read_table", "table_format"]
