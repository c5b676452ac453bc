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
    # utf-8-sig: MRPC's files begin with a byte-order mark; QUOTE_NONE: quotes are part of the text (GLUE's files
    # have unbalanced quotes that a quoting reader would merge across lines).
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
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
    if any((root / f).is_file() for f in ("train.tsv", "dev.tsv", "dev_matched.tsv", "dataset_dict.json")):
        return root  # the task's folder itself
    raise FileNotFoundError(f"{root} has no {spec.folder}/ folder and no train.tsv / dev*.tsv: give the GLUE "
                            f"distribution's folder (with {spec.folder}/train.tsv) or the {spec.folder} folder.")


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
                         f"{str(err)[:300]}). Offline, give --data a local folder in the GLUE TSV format.") from err
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
        if spec.labels is None:
            label = _parse_label(spec, str(label), where)
        elif isinstance(label, str):
            label = _parse_label(spec, label, where)
        elif not 0 <= int(label) < spec.num_labels:
            if int(label) == -1:
                raise ValueError(f"{where}: label -1 (no public label); this split cannot be scored.")
            raise ValueError(f"{where}: label {label} is outside the {spec.display} label ids "
                             f"0-{spec.num_labels - 1}; fix the data or choose the right task.")
        examples.append({"texts": tuple(str(rec[c]) for c in spec.hf_columns), "label": label})
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
        if not local.is_dir() and not is_hub_id(source):
            raise FileNotFoundError(f"GLUE data folder {source} does not exist: give the GLUE distribution's "
                                    f"folder (with {spec.folder}/train.tsv) or a Hugging Face dataset name.")
        if local.is_dir() and not (local / "dataset_dict.json").is_file() and not any(
                (p / "dataset_dict.json").is_file() for p in local.iterdir() if p.is_dir()):
            folder = _task_folder(local, spec)
            file = folder / TSV_FILES[split]
            examples = read_tsv(file, spec)
            where = str(file)
        else:
            examples = _load_hf(spec, split, source)
            where = f"{source} [{spec.hf_config}/{split}]"
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
