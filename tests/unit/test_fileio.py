"""Reading JSON that users and other programs wrote: one clear line for every way it can be damaged; writing
outputs: one clear line for every way a write can fail, and nothing half-written left behind."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from smoltrain.errors import DataError, OutputError, SmoltrainError
from smoltrain.fileio import (
    atomic_directory,
    atomic_write_bytes,
    check_output_path,
    read_json,
    set_default_permissions,
    umask,
    write_synced,
)


def test_read_json_returns_the_value_of_the_expected_type(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"x": [1, 2]}')
    assert read_json(path, dict, "fix it") == {"x": [1, 2]}


@pytest.mark.parametrize(("content", "message"), [
    (b'{"x": ', r"a\.json is not valid JSON \(Expecting value.*\): rebuild it"),
    (b"\xff\xfe{}", r"a\.json is not valid JSON \(.*codec.*\): rebuild it"),
    (b"[1, 2]", r"a\.json must hold a JSON object, not list: rebuild it"),
])
def test_damaged_json_is_one_line_naming_the_file_and_the_fix(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "a.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        read_json(path, dict, "rebuild it")
    assert "\n" not in str(err.value)


def test_a_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.json is not valid JSON \(.*No such file"):
        read_json(tmp_path / "missing.json", list, "rebuild it")


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_written_files_get_the_permissions_the_umask_gives(tmp_path: Path, mask: int) -> None:
    previous = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "shared.bin", b"x")  # through mkstemp, which creates files 0600
        atomic_write_bytes(tmp_path / "shared.bin", b"y")  # replacing a file, too
        private = tmp_path / "private"
        private.write_bytes(b"")
        private.chmod(0o600)
        set_default_permissions(private)
        assert umask() == mask and os.umask(mask) == mask  # reading the umask leaves it as it was
    finally:
        os.umask(previous)
    for path in (tmp_path / "shared.bin", private):
        assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private", "shared.bin"]  # no temporary file left


# ------------------------------------------------------------------------------------------------
# Outputs that cannot be written: one OutputError line naming the output, the reason and the fix; nothing left


def _raise(code: int) -> Callable[..., None]:
    def fail(*_args: object, **_kwargs: object) -> None:
        raise OSError(code, os.strerror(code))
    return fail


def test_a_read_only_file_system_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "config.yaml"
    atomic_write_bytes(target, b"old")
    monkeypatch.setattr(os, "replace", _raise(errno.EROFS))
    with pytest.raises(OutputError, match=rf"cannot write {target}: Read-only file system; .*writable") as err:
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert "\n" not in str(err.value)
    assert isinstance(err.value, SmoltrainError) and isinstance(err.value, OSError)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_a_full_disk_under_an_atomic_directory_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "dataset"
    monkeypatch.setattr(os, "fsync", _raise(errno.ENOSPC))
    with pytest.raises(OutputError, match=rf"cannot write {output}: No space left on device; free some disk space"):
        with atomic_directory(output) as tmp:
            write_synced(tmp / "inputs.npy", lambda handle: handle.write(b"x" * 10))
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_raised_by_the_body_is_about_the_output(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="No space left on device"), atomic_directory(tmp_path / "out"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # e.g. np.save on a full disk
    assert list(tmp_path.iterdir()) == []


def test_an_input_error_in_the_body_is_not_called_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err, atomic_directory(tmp_path / "out"):
        (tmp_path / "missing-input.json").read_text()
    assert not isinstance(err.value, OutputError)
    assert list(tmp_path.iterdir()) == []


def test_writes_under_a_file_or_with_a_too_long_name_fail_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("mine")
    with pytest.raises(OutputError, match=rf"cannot write {blocker}/a.json: .*a file is in the way"):
        atomic_write_bytes(blocker / "a.json", b"{}")
    with pytest.raises(OutputError, match=rf"cannot write {blocker}/out: .*a file is in the way"):
        with atomic_directory(blocker / "out"):
            pass
    long_name = tmp_path / ("x" * 300)
    with pytest.raises(OutputError, match="File name too long; choose a shorter name"):
        atomic_write_bytes(long_name, b"{}")
    assert blocker.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


@pytest.mark.parametrize(("name", "message"), [
    ("blocker", r"blocker: it exists and is a file; remove it or choose another path"),
    ("blocker/run", r"blocker/run: .*blocker exists and is a file"),
    ("x" * 300, r"the name x+\.\.\. is 300 bytes long and the file system allows \d+; choose a shorter name"),
])
def test_check_output_path_refuses_before_any_work(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "blocker").write_text("mine")
    with pytest.raises(OutputError, match=message):
        check_output_path(tmp_path / name)
    assert check_output_path(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_a_file_written_inside_an_atomic_directory_is_reported_as_it(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "run"
    monkeypatch.setattr(os, "replace", _raise(errno.ENOSPC))
    with pytest.raises(OutputError, match=rf"cannot write {output}: No space left on device"):
        with atomic_directory(output) as tmp:
            atomic_write_bytes(tmp / "config.yaml", b"x")  # reported as the run, not as the temporary
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_check_output_path_refuses_a_read_only_or_forbidden_location(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real_statvfs = os.statvfs

    class ReadOnly:  # what os.statvfs says on a read-only mount (root ignores permission bits, not mounts)
        def __init__(self, path: object) -> None:
            self.f_flag = real_statvfs(path).f_flag | os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", ReadOnly)
    with pytest.raises(OutputError, match=rf"cannot write {tmp_path}/a/b: {tmp_path} is on a read-only file system"):
        check_output_path(tmp_path / "a" / "b")
    monkeypatch.undo()
    monkeypatch.setattr(os, "access", lambda *_args: False)
    with pytest.raises(OutputError, match=rf"cannot write {tmp_path}: no permission to write in {tmp_path}; "):
        check_output_path(tmp_path)
