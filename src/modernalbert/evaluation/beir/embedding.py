"""Sentence embeddings of any encoder, and the sentence-transformers folder layout (read and written).

Mean pooling over real tokens by default, or ``cls``. A sentence-transformers folder's own pooling
(``1_Pooling/config.json``) and normalisation (a ``Normalize`` entry in ``modules.json``) are read when present.
Encoding runs through :func:`~modernalbert.evaluation.common.predict`: length-bucketed batches, sharded over
``accelerate`` processes. :func:`save_sentence_transformer` writes the HF model and tokenizer plus ``modules.json``,
``sentence_bert_config.json``, ``1_Pooling/config.json`` (and ``2_Normalize``), so
``sentence_transformers.SentenceTransformer(path)`` loads it and returns the same embeddings (for a ModernAlbert
folder after ``import modernalbert``; no ``trust_remote_code``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ...model.loading import pad_token_id
from ...utils.hub import is_hub_id
from ...utils.io import atomic_folder, write_json
from .index import SCORES

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "cls")


def check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling {pooling!r}: use one of {', '.join(POOLINGS)}.")


def _pooling_from_config(path: Path) -> str:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable sentence-transformers pooling config ({err}).") from err
    if "pooling_mode" in cfg:  # sentence-transformers >= 6: "pooling_mode": "mean" (or a list of modes)
        modes = cfg["pooling_mode"] if isinstance(cfg["pooling_mode"], list) else [cfg["pooling_mode"]]
    else:  # the classic keys pooling_mode_<mode>_token(s): true/false
        modes = [k.removeprefix("pooling_mode_").removesuffix("_tokens").removesuffix("_token")
                 for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
    names = {"mean": "mean", "cls": "cls"}
    if len(modes) != 1 or modes[0] not in names:
        raise ValueError(f"{path}: pooling {modes} is not supported here; supported: exactly one of "
                         f"{', '.join(POOLINGS)}.")
    return names[modes[0]]


def sentence_transformer_layout(model_path: str | os.PathLike) -> dict[str, Any] | None:
    """Read a local sentence-transformers folder: ``{"model_path", "pooling", "normalize", "max_seq_length"}``.

    ``model_path`` is where the HF model lives (the folder itself, or an older layout's ``0_Transformer/``).

    Returns:
        None when the folder has no ``modules.json`` (a plain HF model).

    Raises:
        ValueError: Unreadable ``modules.json`` or an unsupported pooling (file named).
    """
    folder = Path(model_path).expanduser()
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return None
    try:
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
        types = [(str(m.get("type", "")), str(m.get("path", ""))) for m in modules]
    except (OSError, json.JSONDecodeError, AttributeError, TypeError) as err:
        raise ValueError(f"{modules_path}: unreadable modules.json ({err}).") from err
    layout: dict[str, Any] = {"model_path": folder, "pooling": "mean", "normalize": False, "max_seq_length": None}
    for kind, sub in types:
        name = kind.rsplit(".", 1)[-1]
        if name == "Transformer" and sub:
            layout["model_path"] = folder / sub
        elif name == "Pooling":
            layout["pooling"] = _pooling_from_config(folder / sub / "config.json")
        elif name == "Normalize":
            layout["normalize"] = True
    st_cfg = layout["model_path"] / "sentence_bert_config.json"
    if st_cfg.is_file():
        try:
            layout["max_seq_length"] = json.loads(st_cfg.read_text(encoding="utf-8")).get("max_seq_length")
        except json.JSONDecodeError as err:
            raise ValueError(f"{st_cfg}: not valid JSON ({err}).") from err
    return layout


def _hub_layout(name: str) -> dict[str, Any] | None:
    """A hub model's sentence-transformers settings (its small JSON files only), or None when it has none or the
    hub cannot be reached (then the defaults apply)."""
    if not is_hub_id(name):
        return None  # a local path that does not exist: loading the model reports it
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(name, allow_patterns=["modules.json", "sentence_bert_config.json",
                                                         "*/config.json"])
    except Exception as err:  # offline, unknown name, gated: the model itself reports that when it is loaded
        logger.info("No sentence-transformers settings read for %s (%s); using the defaults.", name, err)
        return None
    return sentence_transformer_layout(folder)


def resolve_model(model_path: str | os.PathLike, pooling: str | None = None,
                  normalize: bool | None = None) -> tuple[str, str, bool]:
    """``(hf_model_path, pooling, normalize)``: explicit arguments win, then a sentence-transformers folder's own
    settings, then mean pooling without normalisation (our default).

    Raises:
        ValueError: Unknown pooling.
    """
    if pooling is not None:
        check_pooling(pooling)
    if Path(model_path).expanduser().is_dir():
        layout = sentence_transformer_layout(model_path)
        path = str(layout["model_path"]) if layout else str(model_path)
    else:
        layout, path = _hub_layout(str(model_path)), str(model_path)
    chosen = pooling or (layout["pooling"] if layout else "mean")
    norm = normalize if normalize is not None else (layout["normalize"] if layout else False)
    return path, chosen, bool(norm)


def last_hidden(outputs: Any) -> torch.Tensor:
    return outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]


def embed_batch(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], pooling: str,
                normalize: bool = False) -> torch.Tensor:
    """Sentence embeddings (B, d) of one padded batch: the model's last hidden states pooled over real tokens."""
    from ...model.modeling import pool
    from ..common import model_inputs

    hidden = last_hidden(model(**model_inputs(model, dict(batch))))
    emb = pool(hidden, batch["attention_mask"], pooling)
    return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb


def tokenize_for_embedding(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[dict[str, list[int]]]:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    fallback = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else pad_token_id(tokenizer)
    feats = []
    for i in range(len(texts)):
        feat = {k: list(enc[k][i]) for k in keys}
        if not feat["input_ids"]:  # a tokenizer without special tokens turns "" into nothing: keep one token
            feat = {k: ([fallback] if k == "input_ids" else [1] if k == "attention_mask" else [0]) for k in keys}
        feats.append(feat)
    return feats


def encode(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], *, pooling: str = "mean",
           normalize: bool = False, batch_size: int = 128, max_length: int = 256, desc: str = "encode",
           precision: str = "auto") -> torch.Tensor:
    """Sentence embeddings of ``texts`` (N, d) in input order, as float32 on the CPU.

    Batches are length-bucketed and sharded over ``accelerate`` processes by
    :func:`~modernalbert.evaluation.common.predict` (every process gets all rows).

    Args:
        model: An encoder (``AutoModel``): ModernAlbert or any HF encoder.
        tokenizer: Its tokenizer.
        texts: The texts.
        pooling: ``"mean"`` over real tokens (default) or ``"cls"`` (first token).
        normalize: L2-normalise the embeddings.
        batch_size: Texts per forward pass.
        max_length: Token limit (truncation).
        desc: Progress-bar label.
        precision: ``"auto"`` (bf16 autocast only on a capable GPU), ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    Raises:
        ValueError: Unknown pooling.
    """
    from ..common import predict

    check_pooling(pooling)
    if len(texts) == 0:
        return torch.empty(0, model.config.hidden_size)
    feats = tokenize_for_embedding(tokenizer, texts, max_length)

    def forward(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return list(embed_batch(m, batch, pooling, normalize).float().cpu())

    rows = predict(model, feats, forward, batch_size=batch_size, tokenizer=tokenizer, desc=desc,
                   precision=precision)
    return torch.stack(rows).clone()  # clone: a normal tensor (predict ran under inference_mode)


def save_sentence_transformer(model: torch.nn.Module, tokenizer: Any, folder: str | os.PathLike, pooling: str,
                              normalize: bool, max_length: int, *, score: str = "cos") -> Path:
    """Save an encoder as a sentence-transformers folder (atomically): the HF model and tokenizer, ``modules.json``
    (Transformer → Pooling [→ Normalize]), ``sentence_bert_config.json``, ``1_Pooling/config.json``,
    ``config_sentence_transformers.json``.

    Module types use the classic ``sentence_transformers.models.*`` names, which every sentence-transformers
    version since 2.x loads. Loading a ModernAlbert folder needs ``import modernalbert`` first (registration with
    the ``Auto`` classes); no ``trust_remote_code``.

    Raises:
        ValueError: Unknown pooling or score.
    """
    check_pooling(pooling)
    if score not in SCORES:
        raise ValueError(f"Unknown score {score!r}: use one of {', '.join(SCORES)}.")
    with atomic_folder(folder) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
            (staging / "2_Normalize").mkdir()
        write_json(staging / "modules.json", modules)
        write_json(staging / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})
        write_json(staging / "1_Pooling" / "config.json", {
            "word_embedding_dimension": model.config.hidden_size,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        })
        write_json(staging / "config_sentence_transformers.json", {
            "prompts": {}, "default_prompt_name": None,
            "similarity_fn_name": "cosine" if score == "cos" else "dot",
        })
    return Path(folder)


__all__ = [
    "POOLINGS",
    "check_pooling",
    "embed_batch",
    "encode",
    "last_hidden",
    "resolve_model",
    "save_sentence_transformer",
    "sentence_transformer_layout",
    "tokenize_for_embedding",
]
