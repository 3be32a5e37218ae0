"""Reading JSON that users and other programs wrote: one clear line for every way it can be damaged; written files
get the permissions the umask gives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smoltrain.errors import DataError
from smoltrain.fileio import atomic_write_bytes, read_json, set_default_permissions, umask


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
