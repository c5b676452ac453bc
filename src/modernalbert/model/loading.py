"""Load a saved ModernAlbert folder as the head class it was saved as (``config.architectures``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import modeling


def load_pretrained(path: str | os.PathLike, **kwargs: Any) -> modeling.ModernAlbertPreTrainedModel:
    """Load ``path`` with the ModernAlbert class named in its config (the base model when none is named).

    Args:
        path: A folder written by ``save_pretrained`` (or a hub name when online).
        **kwargs: Passed to ``from_pretrained`` (e.g. ``attn_implementation``, ``dtype``).

    Raises:
        FileNotFoundError: ``path`` is a local-looking path that does not exist.
        ValueError: The checkpoint is not a ModernAlbert model.
    """
    from transformers import AutoConfig

    if (str(path).startswith((".", "/", "~")) or os.sep in str(path)) and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"No model folder at {path}.")
    config = AutoConfig.from_pretrained(path)
    if config.model_type != "modernalbert":
        raise ValueError(f"{path} holds a {config.model_type!r} model, not a ModernAlbert one.")
    names = [a for a in (config.architectures or []) if hasattr(modeling, a) and a.startswith("ModernAlbert")]
    cls = getattr(modeling, names[0]) if names else modeling.ModernAlbertModel
    return cls.from_pretrained(path, **kwargs)


def load_tokenizer(path: str | os.PathLike) -> Any | None:
    """The tokenizer saved with a model folder, or None when the folder has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        return None


def read_texts(paths: list[str | os.PathLike]) -> list[str]:
    """One text per non-empty line of each file, in order.

    Raises:
        FileNotFoundError: A file does not exist.
        ValueError: A file holds no non-empty line.
    """
    texts: list[str] = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"Text file {path} does not exist.")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"Text file {path} is empty: it needs at least one non-empty line of text.")
        texts.extend(lines)
    return texts


__all__ = ["load_pretrained", "load_tokenizer", "read_texts"]
