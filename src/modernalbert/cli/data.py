"""``modernalbert data {fetch,list,pack}``: the packaged real data and models, and packed pretraining corpora.

    modernalbert data fetch                 # every packaged source into the cache, digests verified
    modernalbert data fetch kjv all-MiniLM-L6-v2
    modernalbert data list                  # what is packaged and what is cached
    modernalbert data pack corpus.yaml --tokenizer all-MiniLM-L6-v2 --block-size 128
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..data.sources import MARKER, SOURCES, cache_dir, fetch, folder_digest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``data`` subcommands on ``parser``."""
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = sub.add_parser("fetch", help="fetch packaged sources into the cache and verify their digests")
    p.add_argument("names", nargs="*", metavar="NAME", help=f"sources to fetch (default: all of {sorted(SOURCES)})")
    p.add_argument("--force", action="store_true", help="download again even when cached")
    sub.add_parser("list", help="list the packaged sources and whether they are cached")
    p = sub.add_parser("pack", help="tokenise and pack a corpus into the block cache (a no-op when cached)")
    p.add_argument("corpus", help="YAML or JSON file: a corpus mapping, or a recipe with data.corpus / corpus")
    p.add_argument("--tokenizer", required=True,
                   help="tokenizer: a packaged model name (all-MiniLM-L6-v2), a local folder or a hub name")
    p.add_argument("--block-size", type=int, default=128, help="tokens per block, CLS included (default 128)")
    p.add_argument("--rebuild", action="store_true", help="ignore an existing cache file")


def _verify(name: str, folder: Path) -> tuple[str, bool]:
    digest = folder_digest(folder)
    return digest, digest == SOURCES[name].digest


def _fetch(args: argparse.Namespace) -> int:
    names = args.names or sorted(SOURCES)
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise ValueError(f"Unknown source(s) {unknown}: available sources are {sorted(SOURCES)}.")
    status = 0
    for name in dict.fromkeys(names):
        folder = fetch(name, force=args.force)
        digest, ok = _verify(name, folder)  # re-hash the files themselves, not just the marker
        print(f"{name}\t{folder}\tsha256:{digest}\t{'verified' if ok else 'MISMATCH'}")
        status = status if ok else 1
    return status


def _list(args: argparse.Namespace) -> int:
    root = cache_dir()
    print(f"cache: {root}")
    print("| name | package | cached | description |")
    print("|---|---|---|---|")
    for name, source in sorted(SOURCES.items()):
        cached = "yes" if (root / name / MARKER).is_file() else "no"
        print(f"| {name} | {source.requirement} | {cached} | {source.description} |")
    return 0


def _read_corpus(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"No such corpus file {str(path)!r}.")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping.")
    if "data" in data and isinstance(data["data"], dict) and "corpus" in data["data"]:  # a training recipe
        section = data["data"]
        corpus = dict(section["corpus"])
        if "held_out" in section and "held_out" not in corpus:
            corpus["held_out"] = section["held_out"]
        if "seed" in data and "seed" not in corpus:
            corpus["seed"] = data["seed"]
        return corpus
    return data.get("corpus", data)


def _pack(args: argparse.Namespace) -> int:
    from ..data.corpus import CorpusSpec
    from ..data.packing import PackedBlocks
    from ..model.loading import load_tokenizer

    path = Path(args.corpus).expanduser()
    spec = CorpusSpec.from_dict(_read_corpus(path), base_dir=path.parent)
    tokenizer = load_tokenizer(args.tokenizer)
    blocks = PackedBlocks.build(spec, tokenizer, args.block_size, rebuild=args.rebuild)
    print(f"key: {blocks.key}")
    print(f"cache: {blocks.path} ({'hit' if blocks.from_cache else 'written'})")
    print(f"train: {len(blocks.train)} blocks x {blocks.block_size} tokens from {blocks.documents.get('train')} "
          "documents")
    print(f"held-out: {len(blocks.held_out)} blocks from {blocks.documents.get('held_out')} documents")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``modernalbert data ACTION``; returns the exit code (1 when a digest does not verify)."""
    return {"fetch": _fetch, "list": _list, "pack": _pack}[args.data_command](args)
