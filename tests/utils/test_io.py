"""Atomic writes: complete or absent, never partial; what lands has save_pretrained's permissions."""

import errno
import os
import stat

import pytest

from modernalbert.utils.io import (
    atomic_folder,
    atomic_path,
    atomic_write,
    is_disk_full,
    read_lines,
    read_text,
    reporting_disk_full,
    staging_folder,
    write_json,
    write_text,
)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_folders_get_the_usual_permissions(tmp_path, umask_022):
    f = write_text(tmp_path / "a" / "x.txt", "hello")
    with atomic_path(tmp_path / "y.bin") as tmp:
        tmp.write_bytes(b"\0")
    with atomic_folder(tmp_path / "model") as folder:
        (folder / "config.json").write_text("{}")
    assert f.read_text() == "hello" and _mode(f) == 0o644 and _mode(tmp_path / "y.bin") == 0o644
    assert _mode(tmp_path / "model") == 0o755 and (tmp_path / "model" / "config.json").is_file()
    reference = tmp_path / "reference"
    reference.write_text("")  # what plain open() gives under the same umask (as save_pretrained's files)
    assert _mode(reference) == _mode(f)


def test_a_failed_write_leaves_the_old_version_and_no_temporary(tmp_path):
    path = write_json(tmp_path / "r.json", {"a": 1})
    with pytest.raises(RuntimeError), atomic_write(path) as fh:
        fh.write("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == '{\n  "a": 1\n}\n'
    folder = tmp_path / "model"
    with atomic_folder(folder) as staging:
        (staging / "old").write_text("1")
    with pytest.raises(RuntimeError), atomic_folder(folder) as staging:
        (staging / "new").write_text("2")
        raise RuntimeError("interrupted")
    assert [p.name for p in folder.iterdir()] == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "r.json"]  # nothing temporary left


def test_a_folder_is_replaced_whole_and_staging_is_removed(tmp_path):
    folder = tmp_path / "model"
    for name in ("first", "second"):
        with atomic_folder(folder) as staging:
            (staging / name).write_text(name)
    assert [p.name for p in folder.iterdir()] == ["second"]
    with staging_folder(folder) as tmp:
        (tmp / "x").write_text("x")
        assert tmp.parent == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(ValueError, match="whole files"), atomic_write(tmp_path / "z", "a"):
        pass


def test_safetensors_files_get_the_usual_permissions_too(tmp_path, umask_022):
    # safetensors 0.8 writes through a private temporary file: 0600 even for save_pretrained's model.safetensors.
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    assert _mode(tmp_path / "plain.safetensors") == 0o600  # the behaviour the atomic writers correct
    with atomic_path(tmp_path / "cache.safetensors") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp))
    with atomic_folder(tmp_path / "model") as folder:
        save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
        (folder / "sub").mkdir(mode=0o700)
    assert _mode(tmp_path / "cache.safetensors") == 0o644 and _mode(tmp_path / "model" / "model.safetensors") == 0o644
    assert _mode(tmp_path / "model" / "sub") == 0o755


def test_text_that_is_not_utf8_names_file_line_and_byte(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_bytes("\ufeffa\tb\r\nc\td\n".encode() + b"Rom\xe9o\tx\n")  # 0xe9 at byte 3 + 5 + 4 + 3 = 15
    lines = read_lines(path)
    assert [next(lines), next(lines)] == ["a\tb\r\n", "c\td\n"]  # byte-order mark dropped, line ends kept
    with pytest.raises(ValueError, match=r"data\.tsv, line 3 \(byte 15\): not UTF-8 text \(invalid continuation "
                                         r"byte: byte 0xe9\); save the file as UTF-8"):
        next(lines)
    with pytest.raises(ValueError, match=r"data\.tsv, line 3 \(byte 15\)"):
        read_text(path)
    path.write_bytes("\ufeffjust text\n".encode())
    assert read_text(path) == "just text\n"
def test_a_full_disk_is_reported_as_one_naming_the_folder(tmp_path):
    with pytest.raises(OSError) as err, reporting_disk_full(tmp_path, "the thing", "Try again."):
        raise RuntimeError("a writer's own wording") from OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert err.value.errno == errno.ENOSPC
    assert str(err.value).startswith(f"[Errno {errno.ENOSPC}] Disk full: the thing could not be written to {tmp_path}")
    assert "bytes free). Free space there or write elsewhere. Try again." in str(err.value)
    assert is_disk_full(ValueError("Error while serializing: I/O error: Disk quota exceeded (os error 122)"))
    for other in (PermissionError(errno.EACCES, "denied"), OSError(errno.EIO, "I/O error"), ValueError("pos 28")):
        assert not is_disk_full(other)
        with pytest.raises(type(other)), reporting_disk_full(tmp_path, "x"):
            raise other
