"""Reading JSON that users and other programs wrote: one clear line for every way it can be damaged."""

from __future__ import annotations

from pathlib import Path

import pytest

from smoltrain.errors import DataError
from smoltrain.fileio import read_json


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
