"""Data: packaged real sources (fetched into a cache, checksummed), text documents, and pretraining corpora."""

from .corpus import CorpusSpec, HFDataset, PackagedText, TextFiles
from .packing import (
    BlockSampler,
    PackedBlocks,
    StreamingPackedDataset,
    corpus_key,
    pack_texts,
    tokenizer_fingerprint,
)
from .sources import SOURCES, cache_dir, fetch
from .text import TEXT_SOURCES, Document, load_documents, read_texts, split_documents

__all__ = [
    "SOURCES",
    "TEXT_SOURCES",
    "BlockSampler",
    "CorpusSpec",
    "Document",
    "HFDataset",
    "PackagedText",
    "PackedBlocks",
    "StreamingPackedDataset",
    "TextFiles",
    "cache_dir",
    "corpus_key",
    "fetch",
    "load_documents",
    "pack_texts",
    "read_texts",
    "split_documents",
    "tokenizer_fingerprint",
]
