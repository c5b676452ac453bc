"""Plain-text documents from the packaged sources, cleaned for masked language modelling.

A document is one unit that is never split between training and held-out text: a chapter-length paragraph of the
King James Bible, or one work of Shakespeare or Milton.
"""

from __future__ import annotations

import ast
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..utils.io import read_lines
from .sources import fetch

TEXT_SOURCES = ("kjv", "shakespeare", "milton")


@dataclass(frozen=True)
class Document:
    """One document: where it came from and its text."""

    source: str
    name: str
    text: str


def _kjv(folder: Path) -> list[Document]:
    # The text is a string literal inside a generated Python module: read it with ast, never execute it.
    tree = ast.parse((folder / "plain_text_bible.py").read_text(encoding="utf-8"))
    literal = max((n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)),
                  key=len)
    docs = []
    for i, line in enumerate(literal.splitlines()):
        line = re.sub(r"\b\d+\.\s", "", line)  # verse numbers
        line = re.sub(r"\[([^\]]*)\]", r"\1", line)  # translators' insertions keep their words
        line = re.sub(r"\s+", " ", line).strip()
        if len(line) > 40:
            docs.append(Document("kjv", f"kjv-{i:05d}", line))
    return docs


_GUTENBERG_END = re.compile(r"\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*", re.S | re.I)


def _gutenberg(folder: Path, source: str) -> list[Document]:
    docs = []
    for path in sorted(folder.glob("*.txt")):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")  # the 2008 Gutenberg files are Latin-1
        text = _GUTENBERG_END.sub("", text.replace("\r\n", "\n"))
        paragraphs = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
        text = "\n".join(p for p in paragraphs if p)
        if text:
            docs.append(Document(source, path.stem, text))
    return docs


def load_documents(source: str, *, root: Path | None = None) -> list[Document]:
    """Fetch (if needed) and clean one text source.

    Args:
        source: ``"kjv"``, ``"shakespeare"`` or ``"milton"``.
        root: Cache root (default: the package cache).

    Returns:
        The source's documents, in a fixed order.
    """
    if source not in TEXT_SOURCES:
        raise ValueError(f"Unknown text source {source!r}: available text sources are {list(TEXT_SOURCES)}.")
    folder = fetch(source, root=root)
    return _kjv(folder) if source == "kjv" else _gutenberg(folder, source)


def split_documents(docs: list[Document], held_out: float, seed: int = 0) -> tuple[list[Document], list[Document]]:
    """Seeded split by document (never inside one), returning ``(train, held_out)``."""
    if not 0 < held_out < 1:
        raise ValueError(f"held_out={held_out} must be a fraction in (0, 1).")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n = max(1, round(held_out * len(docs)))
    held = set(order[:n])
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]



def read_texts(paths: list[str | os.PathLike]) -> list[str]:
    """One text per non-empty line of each file, in order (calibration and routing-report text).

    Raises:
        FileNotFoundError: A file does not exist.
        ValueError: A file holds no non-empty line, or a byte that is not UTF-8 (file, line and byte named).
    """
    texts: list[str] = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"Text file {path} does not exist.")
        lines = [line.strip() for line in read_lines(path) if line.strip()]
        if not lines:
            raise ValueError(f"Text file {path} is empty: it needs at least one non-empty line of text.")
        texts.extend(lines)
    return texts


__all__ = ["TEXT_SOURCES", "Document", "load_documents", "read_texts", "split_documents"]
