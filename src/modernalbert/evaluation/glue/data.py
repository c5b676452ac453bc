"""Reading GLUE splits: the original TSV files (with their quirks), ``datasets`` folders and Hub names, the Rotten
Tomatoes stand-in; subsamples and tokenisation (see :mod:`modernalbert.evaluation.glue` for the formats)."""

from __future__ import annotations

import csv
import functools
import math
import os
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...utils.hub import is_hub_id
from ...utils.io import read_lines
from ..hub_files import file_split, has_parquet, read_parquet, split_files
from .tasks import DEFAULT_HF_NAME, SUBSAMPLE_SEED, TSV_FILES, GlueTask, TsvLayout, get_task, resolve_split


def _parse_label(task: GlueTask, raw: str, where: str) -> int | float:
    value = raw.strip()
    if task.labels is None:
        try:
            score = float(value)
        except ValueError:
            raise ValueError(f"{where}: score {raw!r} is not a number ({task.display} is a regression task; "
                             "fix or drop the row).") from None
        if not math.isfinite(score):
            raise ValueError(f"{where}: score {raw!r} is not finite; fix or drop the row.")
        return score
    if value in task.labels:
        return task.labels.index(value)
    if value.isdigit() and int(value) < len(task.labels):
        return int(value)
    raise ValueError(f"{where}: label {raw!r} is not in the {task.display} label set "
                     f"{list(task.labels)} (or ids 0-{len(task.labels) - 1}); fix the row or choose the right task.")


def read_tsv(path: str | os.PathLike, task: str | GlueTask, layout: TsvLayout | None = None) -> list[dict[str, Any]]:
    """Read one labelled file in a GLUE TSV layout into examples ``{"texts": (a,) or (a, b), "label"}``.

    Args:
        path: The ``.tsv`` file.
        task: The task (gives the label set; and the layout unless ``layout`` is given).
        layout: Another layout, e.g. :data:`QUORA_PARAPHRASE_LAYOUT` read as ``"qqp"``.

    Raises:
        FileNotFoundError: No such file.
        ValueError: A missing header column, a row with the wrong number of fields or an unknown label (the
            message names file and line).
    """
    spec = task if isinstance(task, GlueTask) else get_task(task)
    layout = layout or spec.tsv
    if layout is None:
        raise ValueError(f"{spec.display} has no TSV layout: it is not read from GLUE TSV files.")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: give a folder in the GLUE TSV layout "
                                f"({spec.folder or spec.name}/train.tsv, dev*.tsv).")
    stat = path.stat()
    examples, skipped = _read_tsv_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size, spec, layout)
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} malformed row(s) with too few fields (lines "
                      f"{', '.join(map(str, skipped[:5]))}{' …' if len(skipped) > 5 else ''}), as the reference "
                      f"{spec.display} loaders do.", stacklevel=2)
    return list(examples)


@functools.lru_cache(maxsize=8)
def _read_tsv_cached(path: str, mtime_ns: int, size: int, spec: GlueTask,
                     layout: TsvLayout) -> tuple[tuple[dict[str, Any], ...], tuple[int, ...]]:
    # Cached by (path, mtime, size): seeds and grid points re-read the same files.
    examples: list[dict[str, Any]] = []
    skipped: list[int] = []
    # read_lines drops MRPC's byte-order mark and names the line of a byte that is not UTF-8; QUOTE_NONE: quotes
    # are part of the text (GLUE's files have unbalanced quotes that a quoting reader would merge across lines).
    reader = csv.reader(read_lines(path), delimiter="\t", quoting=csv.QUOTE_NONE)
    columns: list[int] = []
    label_col: int = 0
    width = layout.fields or 0
    for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line (e.g. at the end of a file)
        if layout.header and not columns:
            header = [h.strip() for h in row]
            wanted = [c for c in (*layout.text, layout.label) if isinstance(c, str)]
            missing = [c for c in wanted if c not in header]
            if missing:
                raise ValueError(f"{path}, line {line}: header {header} lacks column(s) {missing} of the "
                                 f"{spec.display} TSV layout; is this the {spec.display} file?")
            columns = [header.index(c) if isinstance(c, str) else c for c in layout.text]
            label_col = header.index(layout.label) if isinstance(layout.label, str) else layout.label
            width = len(header)
            continue
        if not columns:
            columns = [int(c) for c in layout.text]
            label_col = int(layout.label)
        bad = len(row) < width or (len(row) > width and not layout.at_least)
        if bad:
            if layout.skip_short_rows and len(row) < width:
                skipped.append(line)
                continue
            raise ValueError(f"{path}, line {line}: {len(row)} tab-separated fields, the {spec.display} layout "
                             f"has {'at least ' if layout.at_least else ''}{width}; fix the row (quoting is "
                             "off: a tab or newline inside a text breaks it).")
        label = _parse_label(spec, row[label_col], f"{path}, line {line}")
        examples.append({"texts": tuple(row[c] for c in columns), "label": label})
    return tuple(examples), tuple(skipped)


def _task_folder(root: Path, spec: GlueTask) -> Path:
    names = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    for candidate in (spec.folder, spec.hf_config, spec.name):
        if candidate and candidate.lower() in names:
            return names[candidate.lower()]
    tsv = ("train.tsv", "dev.tsv", "dev_matched.tsv", "dataset_dict.json")
    if any((root / f).is_file() for f in tsv) or any(file_split(p) for p in root.glob("*.parquet")) \
            or any(root.glob("train/*.parquet")):
        return root  # the task's folder itself
    raise FileNotFoundError(f"{root} has no {spec.folder}/ (or {spec.hf_config}/) folder, no train.tsv / dev*.tsv and "
                            "no <split>-*.parquet: give the GLUE distribution's folder (with "
                            f"{spec.folder}/train.tsv), a local copy of nyu-mll/glue (with "
                            f"{spec.hf_config}/train-00000-of-00001.parquet), or one task's folder.")


def _split_named_by(file: Path) -> str | None:
    """The split a data file's name says it holds: ``dev.tsv``, ``validation-00000-of-00001.parquet`` ..."""
    if file.suffix == ".tsv":
        return {v: k for k, v in TSV_FILES.items()}.get(file.name)
    return file_split(file)


def _read_file(file: Path, spec: GlueTask, split: str) -> list[dict[str, Any]]:
    """One data file given as the data: a ``.tsv`` in the task's GLUE layout or a ``.parquet`` of the Hub's."""
    named = _split_named_by(file)
    if named is not None and named != split:
        raise ValueError(f"{file} holds the {named} split (by its name), but the {split} split is asked for: give the "
                         "folder that holds both, or the file of that split.")
    if file.suffix == ".tsv":
        return read_tsv(file, spec)
    if file.suffix == ".parquet":
        return _examples_from_dataset(read_parquet([file]), spec, split, str(file))
    raise ValueError(f"{file} is neither a .tsv file in the GLUE layout nor a .parquet file of nyu-mll/glue: give one "
                     "of those, or a folder.")


def _read_folder(root: Path, spec: GlueTask, split: str) -> tuple[list[dict[str, Any]], str]:
    """A local folder: the GLUE TSV distribution, a local copy of the Hub's parquet files, or ``save_to_disk``."""
    if (root / "dataset_dict.json").is_file() or any((p / "dataset_dict.json").is_file()
                                                      for p in root.iterdir() if p.is_dir()):
        return _load_hf(spec, split, str(root)), f"{root} [{spec.hf_config}/{split}]"
    folder = _task_folder(root, spec)
    tsv = folder / TSV_FILES[split]
    parquet = split_files(folder, split)
    if parquet and not tsv.is_file():
        where = str(parquet[0]) if len(parquet) == 1 else f"{folder} [{split}]"
        return _examples_from_dataset(read_parquet(parquet), spec, split, where), where
    if not tsv.is_file() and has_parquet(folder):
        raise FileNotFoundError(f"{folder} has no {split}-*.parquet (nor {TSV_FILES[split]}): this copy of "
                                f"nyu-mll/glue lacks the {split} split of {spec.display}.")
    return read_tsv(tsv, spec), str(tsv)


def _load_hf(spec: GlueTask, split: str, data: str) -> list[dict[str, Any]]:
    import datasets

    path = Path(data).expanduser()
    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(_task_folder(path, spec)))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ValueError(f"{path}: the saved dataset has splits {list(ds)}, not {split!r}.")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(data, spec.hf_config, split=split)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as err:  # hub / cache errors come in many types: one clear message
        raise ValueError(f"Could not load {spec.display} split {split!r} from {data!r} ({type(err).__name__}: "
                         f"{str(err)[:300]}). Offline, give --data a local folder in the GLUE TSV format or a local "
                         "copy of nyu-mll/glue's parquet files.") from err
    return _examples_from_dataset(ds, spec, split, data)


def _examples_from_dataset(ds: Any, spec: GlueTask, split: str, data: str) -> list[dict[str, Any]]:
    """Examples of a ``datasets.Dataset`` with the ``nyu-mll/glue`` columns and label names (checked)."""
    missing = [c for c in (*spec.hf_columns, "label") if c not in ds.column_names]
    if missing:
        raise ValueError(f"{data!r} split {split!r} lacks column(s) {missing}; {spec.display} needs "
                         f"{[*spec.hf_columns, 'label']} (the nyu-mll/glue columns).")
    feature = ds.features.get("label")
    names = getattr(feature, "names", None)
    if spec.labels is not None and names is not None and tuple(names) != spec.labels:
        raise ValueError(f"{data!r}: label names {names} differ from the {spec.display} label order "
                         f"{list(spec.labels)}; relabel the dataset or choose the right task.")
    examples = []
    for i, rec in enumerate(ds):
        label = rec["label"]
        where = f"{data} [{spec.hf_config or spec.name}/{split}] row {i}"
        if label is None:
            raise ValueError(f"{where}: the label is missing (null); fix or drop the row.")
        if spec.labels is None:
            label = _parse_label(spec, str(label), where)
        elif isinstance(label, str):
            label = _parse_label(spec, label, where)
        elif not 0 <= int(label) < spec.num_labels:
            if int(label) == -1:
                raise ValueError(f"{where}: label -1 (no public label); this split cannot be scored.")
            raise ValueError(f"{where}: label {label} is outside the {spec.display} label ids "
                             f"0-{spec.num_labels - 1}; fix the data or choose the right task.")
        texts = tuple(rec[c] for c in spec.hf_columns)
        if any(not isinstance(t, str) for t in texts):
            raise ValueError(f"{where}: the text columns {list(spec.hf_columns)} must hold strings, found "
                             f"{[type(t).__name__ for t in texts]}; fix or drop the row.")
        examples.append({"texts": texts, "label": label})
    return examples


@functools.lru_cache(maxsize=2)
def _rt_splits(path: str | None) -> dict[str, tuple[dict[str, Any], ...]]:
    from ...data.rotten_tomatoes import sentiment_splits

    # The split seed is fixed (0): every training seed is scored on the same movies.
    splits = sentiment_splits(seed=0, path=path)
    return {k: tuple({"texts": (r["sentence"],), "label": int(r["label"])} for r in v) for k, v in splits.items()}


def load_split(task: str | GlueTask, split: str, data: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Examples ``{"texts", "label"}`` of one labelled split.

    Args:
        task: A task name or :class:`GlueTask`.
        split: ``train``, ``validation`` (``dev``), MNLI's ``validation_matched`` / ``validation_mismatched``, or
            ``test`` (``rt-sentiment`` only: GLUE test labels are not public).
        data: See the module notes (``None``: ``nyu-mll/glue``, or the packaged RT file).

    Raises:
        ValueError: Unknown task or split, unreadable or malformed data, an empty split.
        FileNotFoundError: A local folder or file that does not exist.
    """
    spec = task if isinstance(task, GlueTask) else get_task(task)
    split = resolve_split(spec, split)
    if spec.stand_in:
        if data is not None and not Path(data).expanduser().is_file():
            raise FileNotFoundError(f"{data} is not a file: give the Rotten Tomatoes CSV "
                                    "(rotten_tomatoes_corpus_full.csv.bz2), or nothing for the packaged one.")
        examples = list(_rt_splits(None if data is None else str(Path(data).expanduser().resolve()))[split])
        where = f"{spec.display} {split}"
    else:
        source = str(data) if data is not None else DEFAULT_HF_NAME
        local = Path(source).expanduser()
        if local.is_file():
            examples, where = _read_file(local, spec, split), str(local)
        elif local.is_dir():
            examples, where = _read_folder(local, spec, split)
        elif is_hub_id(source):
            examples = _load_hf(spec, split, source)
            where = f"{source} [{spec.hf_config}/{split}]"
        else:
            raise FileNotFoundError(f"GLUE data {source} does not exist: give the GLUE distribution's folder (with "
                                    f"{spec.folder}/train.tsv), a local copy of nyu-mll/glue (parquet files), one data "
                                    "file, or a Hugging Face dataset name.")
    if not examples:
        raise ValueError(f"{where}: the {split} split of {spec.display} is empty; give a file with examples.")
    return examples


def subsample(examples: Sequence[dict[str, Any]], n: int | None) -> list[dict[str, Any]]:
    """At most ``n`` examples, drawn with the fixed :data:`SUBSAMPLE_SEED` and kept in their order."""
    if n is None or n >= len(examples):
        return list(examples)
    if n < 1:
        raise ValueError(f"A subsample needs at least one example, got {n}.")
    keep = sorted(random.Random(SUBSAMPLE_SEED).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def encode(examples: Sequence[dict[str, Any]], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """Tokenise examples into features ``{"input_ids", ["token_type_ids"], "labels", "index"}`` (truncated to
    ``max_length`` tokens, longest text first for pairs; padding happens per batch)."""
    features: list[dict[str, Any]] = []
    chunk = 1000
    for start in range(0, len(examples), chunk):
        part = examples[start:start + chunk]
        first = [e["texts"][0] for e in part]
        second = [e["texts"][1] for e in part] if len(part[0]["texts"]) > 1 else None
        enc = tokenizer(first, second, truncation=True, max_length=max_length)
        for j, ex in enumerate(part):
            feat: dict[str, Any] = {"input_ids": enc["input_ids"][j]}
            if "token_type_ids" in enc:
                feat["token_type_ids"] = enc["token_type_ids"][j]
            feat["labels"] = ex["label"]
            feat["index"] = start + j
            features.append(feat)
    return features


__all__ = ["encode", "load_split", "read_tsv", "subsample"]
