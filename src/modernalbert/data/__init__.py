"""Data: packaged real sources (fetched into a cache, checksummed), text documents, pretraining corpora, and users'
labelled tables (CSV, TSV, JSON Lines, Parquet, CoNLL, datasets) read row by row."""

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
from .tables import TABLE_FORMATS, Table, TableError, cell_text, cell_value, read_table, table_format
from .text import TEXT_SOURCES, Document, load_documents, read_texts, split_documents

__all__ = [
    "SOURCES",
    "TABLE_FORMATS",
    "TEXT_SOURCES",
    "BlockSampler",
    "CorpusSpec",
    "Document",
    "HFDataset",
    "PackagedText",
    "PackedBlocks",
    "StreamingPackedDataset",
    "Table",
    "TableError",
    "TextFiles",
    "cache_dir",
    "cell_text",
    "cell_value",
    "corpus_key",
    "fetch",
    "load_documents",
    "pack_texts",
    "read_table",
    "read_texts",
    "split_documents",
    "table_format",
    "tokenizer_fingerprint",
]
