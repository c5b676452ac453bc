"""Opening and saving models and tokenizers: one rule for every command and suite.

* Where: :func:`modernalbert.utils.hub.resolve`: a local path, a packaged model name (``all-MiniLM-L6-v2``,
  fetched into the cache) or a Hub id; a missing local path is ``FileNotFoundError("No model folder at ...")``.
* :func:`load_pretrained` opens a saved ModernAlbert folder as the head class it was saved as; :func:`load_model`
  opens ModernAlbert *or any Hugging Face encoder* with the head a task needs, through the ``Auto*`` factories
  (``import modernalbert`` registers ours), so ModernAlbert and e.g. ModernBERT or MiniLM run through the same code.
* :func:`load_tokenizer` has one contract: the tokenizer, or a ``ValueError`` that says how to fix its absence
  (``optional=True``: None instead).
* :func:`save_model` writes model (safetensors) and tokenizer into a folder atomically.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..utils.hub import is_hub_id, resolve
from ..utils.io import atomic_folder
from . import modeling

# task head -> Auto factory name (resolved lazily: importing transformers' Auto classes is slow)
HEADS: dict[str, str] = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "masked-lm": "AutoModelForMaskedLM",
    "encoder": "AutoModel",
}


@contextlib.contextmanager
def _hub_errors(name: str | os.PathLike, where: str) -> Iterator[None]:
    # A Hub id that cannot be opened (offline, unknown, gated) fails with the same kind of error as a missing local
    # folder, in one line instead of the hub client's long story.
    try:
        yield
    except OSError as err:
        if not is_hub_id(name) or isinstance(err, FileNotFoundError):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(f"No {where} at {name}, and the Hub has none of that name or cannot be reached "
                                f"({first}).") from err


def model_type(path: str | os.PathLike) -> str:
    """The ``model_type`` of a saved model folder, packaged model or Hub id (e.g. ``"modernalbert"``, ``"bert"``)."""
    return load_config(path).model_type


def load_config(path: str | os.PathLike) -> Any:
    """The config of a saved model folder, packaged model or Hub id (through ``AutoConfig``).

    Raises:
        FileNotFoundError: Nothing at a local path, or a Hub id that cannot be opened.
    """
    from transformers import AutoConfig

    where = resolve(path, packaged=True)
    with _hub_errors(path, "model folder"):
        return AutoConfig.from_pretrained(where)


def load_pretrained(path: str | os.PathLike, **kwargs: Any) -> modeling.ModernAlbertPreTrainedModel:
    """Load ``path`` with the ModernAlbert class named in its config (the base model when none is named).

    Args:
        path: A folder written by ``save_pretrained`` (or a Hub id when online).
        **kwargs: Passed to ``from_pretrained`` (e.g. ``attn_implementation``, ``dtype``).

    Raises:
        FileNotFoundError: Nothing at a local path, or a Hub id that cannot be opened.
        ValueError: The checkpoint is not a ModernAlbert model.
    """
    config = load_config(path)
    if config.model_type != "modernalbert":
        raise ValueError(f"{path} holds a {config.model_type!r} model, not a ModernAlbert one.")
    names = [a for a in (config.architectures or []) if hasattr(modeling, a) and a.startswith("ModernAlbert")]
    cls = getattr(modeling, names[0]) if names else modeling.ModernAlbertModel
    return cls.from_pretrained(resolve(path, packaged=True), **kwargs)


def load_model(path: str | os.PathLike, head: str, **kwargs: Any) -> Any:
    """Open ``path`` (ModernAlbert or any HF encoder) with a task ``head`` (a key of :data:`HEADS`).

    A checkpoint saved with another head (e.g. MaskedLM) keeps its encoder; the new head is freshly initialised.

    Args:
        path: A model folder, a packaged model name or a Hub id.
        head: ``"sequence-classification"``, ``"question-answering"``, ``"masked-lm"`` or ``"encoder"``.
        **kwargs: Passed to ``from_pretrained`` (e.g. ``num_labels``, ``problem_type``).

    Raises:
        ValueError: Unknown head.
        FileNotFoundError: Nothing at a local path, or a Hub id that cannot be opened.
    """
    import transformers

    if head not in HEADS:
        raise ValueError(f"Unknown head {head!r}: use one of {sorted(HEADS)}.")
    where = resolve(path, packaged=True)
    with _hub_errors(path, "model folder"):
        return getattr(transformers, HEADS[head]).from_pretrained(where, **kwargs)


def load_tokenizer(path: str | os.PathLike, *, optional: bool = False) -> Any:
    """The tokenizer saved with a model (folder, packaged model or Hub id).

    Args:
        path: Where the model is.
        optional: Return None when there is no tokenizer instead of raising.

    Raises:
        FileNotFoundError: Nothing at a local path.
        ValueError: No tokenizer could be loaded (the fix: save one with the model), unless ``optional``.
    """
    from transformers import AutoTokenizer

    where = resolve(path, packaged=True)
    try:
        return AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError, TypeError) as err:
        if optional:
            return None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"No tokenizer could be loaded from {path} ({reason}); save the tokenizer next to the "
                         "model (tokenizer.save_pretrained(folder)).") from err


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id.

    Raises:
        ValueError: The tokenizer has no pad token (the fix: set one and save it).
    """
    if tokenizer.pad_token_id is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(f"The tokenizer of {name} has no pad token; set one (tokenizer.pad_token = ...) and save "
                         "it.")
    return int(tokenizer.pad_token_id)


def save_model(model: Any, tokenizer: Any, folder: str | os.PathLike) -> Path:
    """Save model (safetensors) and tokenizer (when not None) into ``folder`` atomically; returns the folder."""
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(folder)


__all__ = ["HEADS", "load_config", "load_model", "load_pretrained", "load_tokenizer", "model_type", "pad_token_id",
           "save_model"]
