"""Masked-language-modelling inputs: tokenise documents, pack them into fixed blocks, mask ModernBERT-style.

Masking uses ``transformers.DataCollatorForLanguageModeling`` (30 % of tokens, of which 80 % become the mask token,
10 % a random token, 10 % stay), the same recipe as ModernBERT.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .text import Document

MLM_PROBABILITY = 0.3  # ModernBERT's masking rate


def pack_documents(docs: Sequence[Document | str], tokenizer: Any, block_size: int) -> torch.Tensor:
    """Tokenise documents and pack them into ``(num_blocks, block_size)`` token ids.

    Each block starts with the tokenizer's CLS token; documents are joined with its SEP token, so a block may
    hold the end of one document and the start of the next (sequence packing: no padding at all). The remainder
    shorter than a block is dropped.

    Args:
        docs: Documents or plain strings.
        tokenizer: A Hugging Face (fast) tokenizer with ``cls_token_id`` and ``sep_token_id``.
        block_size: Tokens per block, CLS included (>= 8).

    Returns:
        A LongTensor of shape (num_blocks, block_size).
    """
    if block_size < 8:
        raise ValueError(f"block_size={block_size} is too small: use at least 8 tokens.")
    texts = [d.text if isinstance(d, Document) else d for d in docs]
    if not any(t.strip() for t in texts):
        raise ValueError("No text to pack: every document is empty.")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls is None or sep is None:
        raise ValueError("The tokenizer needs CLS and SEP tokens for packing.")
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(sep)
    body = block_size - 1
    n = len(stream) // body
    if n == 0:
        raise ValueError(f"The text holds {len(stream)} tokens, fewer than one block of {block_size}.")
    blocks = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)  # (n, block_size - 1)
    return torch.cat([torch.full((n, 1), cls, dtype=torch.long), blocks], 1)  # (n, block_size)


def mlm_collator(tokenizer: Any, mlm_probability: float = MLM_PROBABILITY, seed: int | None = None):
    """ModernBERT-style MLM masking (``DataCollatorForLanguageModeling``), optionally seeded for evaluation."""
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_probability, seed=seed,
                                           return_tensors="pt")


def masked_batches(blocks: torch.Tensor, tokenizer: Any, batch_size: int, *, seed: int = 0,
                   mlm_probability: float = MLM_PROBABILITY) -> list[dict[str, torch.Tensor]]:
    """Deterministically masked batches of packed blocks (the same masks every call: held-out evaluation)."""
    collate = mlm_collator(tokenizer, mlm_probability, seed=seed)
    out = []
    for i in range(0, len(blocks), batch_size):
        batch = collate([{"input_ids": b} for b in blocks[i : i + batch_size]])
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        out.append(batch)
    return out


__all__ = ["MLM_PROBABILITY", "masked_batches", "mlm_collator", "pack_documents"]
