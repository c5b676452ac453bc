"""Reading SQuAD(-v2) questions: the official JSON, JSON Lines in the Hugging Face layout, a local copy of the Hub's
parquet files (``rajpurkar/squad_v2``: ``squad_v2/validation-00000-of-00001.parquet``), or a Hub name, every question
checked (a malformed file fails with its name and the location of the problem; a byte that is not UTF-8 with its
line and byte offset)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...utils.hub import is_hub_id
from ...utils.io import read_text
from ..hub_files import read_parquet, split_files

HUB_NAME = "rajpurkar/squad_v2"


@dataclass(frozen=True)
class SquadExample:
    """One question about one context.

    Attributes:
        id: Question id (unique in a data set).
        title: Article title ("" when unknown).
        context: The paragraph.
        question: The question.
        answers: Gold answer texts (empty for an unanswerable question).
        answer_starts: Character offset of each answer in ``context``.
        is_impossible: True when the question has no answer in the context.
        plausible_answers: For unanswerable questions, the distractor texts SQuAD-v2 records (not used for training).
    """

    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...] = ()
    answer_starts: tuple[int, ...] = ()
    is_impossible: bool = False
    plausible_answers: tuple[str, ...] = ()


def read_squad(path_or_name: str | os.PathLike, *, split: str | None = None) -> list[SquadExample]:
    """Read SQuAD(-v2) questions from a file or a Hugging Face hub name.

    Args:
        path_or_name: The official JSON layout (``{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}``),
            a ``.jsonl`` file with one Hugging Face record per line (``id``, ``title``, ``context``, ``question``,
            ``answers: {"text": [...], "answer_start": [...]}``), a ``.parquet`` file with those columns, a local
            copy of ``rajpurkar/squad_v2`` (the folder holding ``squad_v2/`` or the ``squad_v2/`` folder itself,
            with ``<split>-00000-of-00001.parquet``), or a hub name such as ``rajpurkar/squad_v2`` (needs
            ``datasets`` and either the network or its cache); ``NAME:SPLIT`` picks the split.
        split: The split of a hub name or a local copy when ``path_or_name`` names none (default
            ``"validation"``); ignored for files.

    Returns:
        The questions in file order.

    Raises:
        FileNotFoundError: A path that does not exist.
        ValueError: A malformed file (the message names the file and the location, e.g.
            ``data[0].paragraphs[1].qas[2]: missing "id"``; the line for JSON syntax errors), or a hub name that
            cannot be loaded.
    """
    text = str(path_or_name)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix == ".parquet":
            return _read_parquet([path], str(path))
        return _read_jsonl(path) if path.suffix == ".jsonl" else _read_json(path)
    if path.is_dir():
        return _read_folder(path, split or "validation")
    if not is_hub_name(text):
        raise FileNotFoundError(f"No SQuAD file at {text}: give an existing JSON file or a hub name such as "
                                f"{HUB_NAME}.")
    name, _, named_split = text.partition(":")
    return _read_hub(name, named_split or split or "validation")


def is_hub_name(data: str | os.PathLike) -> bool:
    """Whether ``data`` names a Hub dataset (``name`` or ``owner/name``, optionally ``:split``) rather than a local
    file, by the package's one rule (:func:`modernalbert.utils.hub.is_hub_id`); a ``.json`` / ``.jsonl`` name is
    always a file."""
    if isinstance(data, os.PathLike):
        return False
    name = str(data).partition(":")[0]
    if Path(str(data)).expanduser().exists() or Path(name).suffix in (".json", ".jsonl"):
        return False
    return is_hub_id(name)


def _read_hub(name: str, split: str) -> list[SquadExample]:
    try:
        import datasets
    except ImportError as err:
        raise ValueError(f"Reading {name!r} from the Hugging Face hub needs the `datasets` package "
                         "(pip install datasets); or give a local SQuAD JSON file.") from err
    try:
        records = datasets.load_dataset(name, split=split)
    except Exception as err:  # offline, unknown name, unknown split: the fix is the same for all of them
        raise ValueError(
            f"Could not load {name!r} (split {split!r}) from the Hugging Face hub or its local cache "
            f"({type(err).__name__}: {err}). Give a local SQuAD JSON file instead (the official train-v2.0.json or "
            "dev-v2.0.json), or go online once so that `datasets` caches the data set."
        ) from err
    examples = [_hf_record(rec, f"{name}[{split}]", f"record {i}") for i, rec in enumerate(records)]
    return _finish(examples, f"{name}[{split}]")


def _read_folder(folder: Path, split: str) -> list[SquadExample]:
    """A local copy of the Hub's parquet layout: ``<folder>/[squad_v2/]<split>-*.parquet``."""
    candidates = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]
    for candidate in candidates:
        files = split_files(candidate, split)
        if files:
            return _read_parquet(files, str(files[0]) if len(files) == 1 else f"{candidate} [{split}]")
    raise ValueError(f"{folder} is a folder without {split}-*.parquet (nor squad_v2/{split}-*.parquet): give a SQuAD "
                     f"JSON file inside it (e.g. {folder / 'dev-v2.0.json'}), or a local copy of {HUB_NAME} that has "
                     f"the {split} split.")


def _read_parquet(files: list[Path], source: str) -> list[SquadExample]:
    records = read_parquet(files)
    examples = [_hf_record(rec, source, f"row {i}") for i, rec in enumerate(records)]
    return _finish(examples, source)


def _load_text(path: Path) -> str:
    text = read_text(path)  # a byte-order mark is dropped; a byte that is not UTF-8 is named with its line
    if not text.strip():
        raise ValueError(f'{path} is empty: give a SQuAD JSON file ({{"version": "v2.0", "data": [...]}}).')
    return text


def _parse(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}.") from err


def _read_json(path: Path) -> list[SquadExample]:
    obj = _parse(_load_text(path), str(path))
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise ValueError(f'{path}: the top level must be an object with a "data" list (the official SQuAD layout: '
                         '{"version": "v2.0", "data": [{"title": ..., "paragraphs": [...]}]}).')
    examples = []
    for a, article in enumerate(obj["data"]):
        loc = f"data[{a}]"
        article = _need(article, dict, path, loc, "an object")
        title = article.get("title", "")
        paragraphs = _need(article.get("paragraphs"), list, path, f"{loc}.paragraphs", "a list", missing="paragraphs")
        for p, para in enumerate(paragraphs):
            ploc = f"{loc}.paragraphs[{p}]"
            para = _need(para, dict, path, ploc, "an object")
            context = _need(para.get("context"), str, path, f"{ploc}.context", "a string", missing="context")
            qas = _need(para.get("qas"), list, path, f"{ploc}.qas", "a list", missing="qas")
            for q, qa in enumerate(qas):
                qloc = f"{ploc}.qas[{q}]"
                qa = _need(qa, dict, path, qloc, "an object")
                examples.append(_example(qa, str(title or ""), context, path, qloc))
    return _finish(examples, str(path))


def _read_jsonl(path: Path) -> list[SquadExample]:
    examples = []
    for n, line in enumerate(_load_text(path).splitlines(), start=1):
        if line.strip():
            examples.append(_hf_record(_parse(line, f"{path}: line {n}"), str(path), f"line {n}"))
    return _finish(examples, str(path))


def _hf_record(rec: Any, source: str, loc: str) -> SquadExample:
    """A Hugging Face ``squad_v2`` record (answers as parallel ``text`` / ``answer_start`` lists)."""
    rec = _need(rec, dict, source, loc, "an object")
    answers = _need(rec.get("answers", {"text": [], "answer_start": []}), dict, source, f"{loc}.answers",
                    'an object {"text": [...], "answer_start": [...]}')
    texts, starts = answers.get("text", []), answers.get("answer_start", [])
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        raise ValueError(f'{source}: {loc}.answers: "text" and "answer_start" must be lists of the same length.')
    context = _need(rec.get("context"), str, source, f"{loc}.context", "a string", missing="context")
    qa = {"id": rec.get("id"), "question": rec.get("question"),
          "answers": [{"text": t, "answer_start": s} for t, s in zip(texts, starts)]}
    if "id" not in rec:
        del qa["id"]
    if "question" not in rec:
        del qa["question"]
    return _example(qa, str(rec.get("title") or ""), context, source, loc)


def _need(value: Any, kind: type, source: str | Path, loc: str, what: str, *, missing: str | None = None) -> Any:
    if value is None and missing is not None:
        raise ValueError(f'{source}: {loc.rsplit(".", 1)[0]}: missing "{missing}".')
    if not isinstance(value, kind):
        raise ValueError(f"{source}: {loc}: expected {what}, found {type(value).__name__}.")
    return value


def _example(qa: dict[str, Any], title: str, context: str, source: str | Path, loc: str) -> SquadExample:
    if "id" not in qa or qa["id"] is None:
        raise ValueError(f'{source}: {loc}: missing "id"; every question needs a unique id (predictions and the '
                         "metric are keyed by it).")
    qid = qa["id"]
    if isinstance(qid, bool) or not isinstance(qid, (str, int)) or not str(qid).strip():
        raise ValueError(f'{source}: {loc}: "id" must be a non-empty string, found {qid!r}.')
    question = qa.get("question")
    if not isinstance(question, str):
        raise ValueError(f'{source}: {loc}: missing "question" (a string).' if question is None else
                         f'{source}: {loc}: "question" must be a string, found {type(question).__name__}.')
    if not context.strip():
        raise ValueError(f"{source}: {loc}: the context is empty; every question needs a paragraph to answer from.")
    impossible = qa.get("is_impossible")
    if impossible is not None and not isinstance(impossible, bool):
        raise ValueError(f'{source}: {loc}: "is_impossible" must be true or false, found {impossible!r}.')
    raw_answers = qa.get("answers", [] if impossible else None)
    if raw_answers is None:
        raise ValueError(f'{source}: {loc}: missing "answers"; give a list of {{"text", "answer_start"}} objects, '
                         'or "is_impossible": true with "answers": [] for an unanswerable question.')
    raw_answers = _need(raw_answers, list, source, f"{loc}.answers", "a list")
    texts, starts = [], []
    for j, ans in enumerate(raw_answers):
        aloc = f"{loc}.answers[{j}]"
        ans = _need(ans, dict, source, aloc, 'an object {"text", "answer_start"}')
        text = _need(ans.get("text"), str, source, f"{aloc}.text", "a string", missing="text")
        start = ans.get("answer_start")
        if start is None:
            raise ValueError(f'{source}: {aloc}: missing "answer_start" (the character offset of the answer in the '
                             "context).")
        if isinstance(start, bool) or not isinstance(start, int):
            raise ValueError(f'{source}: {aloc}: "answer_start" must be an integer, found {start!r}.')
        if start < 0 or context[start:start + len(text)] != text:
            found = context.find(text)
            hint = f"; the text occurs at offset {found}" if found >= 0 else "; the text does not occur in the context"
            raise ValueError(
                f"{source}: {aloc}: answer_start {start} does not match the context: context[{start}:"
                f"{start + len(text)}] is {context[max(start, 0):start + len(text)]!r}, the answer is {text!r}"
                f"{hint}. Fix answer_start (a character offset into the context, counted in Unicode characters)."
            )
        texts.append(text)
        starts.append(start)
    if impossible and texts:
        raise ValueError(f'{source}: {loc}: "is_impossible" is true but the question has {len(texts)} answer(s); '
                         'SQuAD-v2 keeps those in "plausible_answers" and leaves "answers" empty.')
    if impossible is False and not texts:
        raise ValueError(f'{source}: {loc}: the question has no answers but "is_impossible" is false; give its '
                         'answers, or set "is_impossible": true.')
    plausible = qa.get("plausible_answers") or []
    plausible = _need(plausible, list, source, f"{loc}.plausible_answers", "a list")
    plausible_texts = []
    for j, ans in enumerate(plausible):
        ans = _need(ans, dict, source, f"{loc}.plausible_answers[{j}]", 'an object {"text", "answer_start"}')
        plausible_texts.append(_need(ans.get("text"), str, source, f"{loc}.plausible_answers[{j}].text", "a string",
                                     missing="text"))
    return SquadExample(id=str(qid), title=title, context=context, question=question, answers=tuple(texts),
                        answer_starts=tuple(starts), is_impossible=not texts, plausible_answers=tuple(plausible_texts))


def _finish(examples: list[SquadExample], source: str) -> list[SquadExample]:
    if not examples:
        raise ValueError(f"{source} holds no questions; give a SQuAD file with at least one question.")
    seen: dict[str, int] = {}
    for i, ex in enumerate(examples):
        if ex.id in seen:
            raise ValueError(f"{source}: question id {ex.id!r} is used twice (questions {seen[ex.id]} and {i}); "
                             "ids must be unique because predictions are keyed by them.")
        seen[ex.id] = i
    return examples


__all__ = ["HUB_NAME", "SquadExample", "is_hub_name", "read_squad"]
