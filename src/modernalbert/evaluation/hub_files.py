"""Local copies of Hugging Face Hub datasets in the Hub's parquet layout, read without the Hub.

A dataset downloaded from the Hub (``huggingface-cli download nyu-mll/glue --repo-type dataset``, or the files
copied by hand) keeps one of two layouts, both read here as ``datasets.load_dataset`` reads them:

* the main branch: ``<config>/<split>-00000-of-00001.parquet`` (``nyu-mll/glue``: ``cola/train-00000-of-00001.parquet``,
  ``mnli/validation_matched-00000-of-00001.parquet``; ``rajpurkar/squad_v2``:
  ``squad_v2/validation-00000-of-00001.parquet``), several shards ``-0000i-of-0000n`` per split when large;
* the parquet conversion branch (``refs/convert/parquet``): ``<config>/<split>/0000.parquet``.

The files carry their ``datasets`` features (label names included) in the Arrow schema's ``huggingface`` metadata,
so a split read here has the same columns and label names as one loaded from the Hub.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# "<split>.parquet", "<split>-00000-of-00003.parquet" or, as newer uploads name them,
# "<split>-00000-of-00001-<hash>.parquet".
_SPLIT_FILE = re.compile(r"^(?P<split>[A-Za-z0-9_.]+?)(-\d+-of-\d+(-[0-9a-f]+)?)?\.parquet$")


def split_files(folder: str | Path, split: str) -> list[Path]:
    """The parquet files of one split in a folder of the Hub layout (``<split>-*.parquet``, ``<split>.parquet`` or
    ``<split>/*.parquet``), sorted; empty when there are none."""
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*.parquet") if file_split(p) == split)
    return files or sorted((folder / split).glob("*.parquet"))


def file_split(path: str | Path) -> str | None:
    """The split a parquet file's Hub name says it holds (``validation-00000-of-00001.parquet`` → ``validation``);
    None for other names (and for the shards of the conversion branch, ``0000.parquet``, named by their folder)."""
    match = _SPLIT_FILE.match(Path(path).name)
    split = match.group("split") if match else None
    return None if split is None or split.isdigit() else split


def has_parquet(folder: str | Path) -> bool:
    """Whether a folder holds parquet files in the Hub layout (directly or one folder down)."""
    folder = Path(folder)
    return any(folder.glob("*.parquet")) or any(folder.glob("*/*.parquet"))


def read_parquet(files: Sequence[str | Path]) -> Any:
    """A ``datasets.Dataset`` of parquet files (in memory, nothing cached), with the features their schema records.

    Raises:
        ValueError: A file that is not parquet (named), files of different columns, or no ``datasets`` installed.
    """
    try:
        import datasets
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ValueError(f"Reading parquet files ({files[0]} ...) needs `datasets`: pip install "
                         "'modernalbert[data]'.") from err

    tables = []
    for file in files:
        try:
            tables.append(pq.read_table(str(file)))
        except (pa.ArrowException, OSError) as err:
            raise ValueError(f"{file} is not a readable parquet file ({type(err).__name__}: "
                             f"{str(err).strip().splitlines()[0] if str(err).strip() else 'no message'}); copy it "
                             "again from the Hub, or give the data in another format.") from err
    try:
        table = pa.concat_tables(tables)
    except pa.ArrowInvalid as err:
        raise ValueError(f"The parquet files {[str(f) for f in files]} have different columns ({err}); give the "
                         "shards of one split.") from err
    return datasets.Dataset(table)


__all__ = ["file_split", "has_parquet", "read_parquet", "split_files"]
