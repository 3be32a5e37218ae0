"""Atomic file writes (a reader sees the old file or the new one, never half of one), and reading JSON that
a user or another program wrote, with one clear line when it is damaged."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from smoltrain.errors import DataError


def fsync_dir(path: str | os.PathLike) -> None:
    """Persist a directory entry (a rename or a new file) on filesystems that need it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def umask() -> int:
    """The process's umask. It can only be read by setting it: set a strict one for that instant, so a file
    another thread creates meanwhile is never more open than intended."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def set_default_permissions(path: str | os.PathLike) -> None:
    """Give ``path`` the permissions ``open()`` gives a new file (0o666 less the umask): for files written by
    something that creates them private (``tempfile.mkstemp``, safetensors' ``save_file``: 0600), so the
    files of a run or a dataset can be shared as the user's umask says."""
    os.chmod(path, 0o666 & ~umask())


def write_synced(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Create ``path``, let ``write(handle)`` fill it, then flush and fsync before closing.

    For files inside a temporary directory that is renamed into place as a whole."""
    with open(path, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def write_json_synced(path: str | os.PathLike, obj: object, indent: int | None = None) -> None:
    data = json.dumps(obj, indent=indent).encode()
    write_synced(path, lambda handle: handle.write(data))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling renamed over it; the file gets the permissions of
    a file ``open()`` creates, as if written in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        set_default_permissions(tmp)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(output: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``output`` to fill; only when the body succeeds is it fsync'ed
    and renamed onto ``output`` (an existing ``output`` is swapped out, then removed). On failure the
    temporary directory is deleted, so a reader sees the old directory or the new one, never a partial one.
    Callers decide beforehand whether an existing ``output`` may be replaced.
    """
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A sibling is on the same filesystem, so the renames are atomic.
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                fsync_file(path)
        for path in [*(p for p in tmp.rglob("*") if p.is_dir()), tmp]:
            fsync_dir(path)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(out, old)
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(old, out)  # put the previous directory back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
        fsync_dir(out.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_json(path: str | os.PathLike, expect: type, fix: str) -> Any:
    """The JSON value in ``path``, which must be a ``expect`` (dict or list); a file that cannot be read or decoded,
    or holds another type, raises one :class:`DataError` line naming the file and ``fix``."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err}): {fix}") from None
    if not isinstance(value, expect):
        what = "a JSON object" if expect is dict else "a JSON list" if expect is list else expect.__name__
        raise DataError(f"{path} must hold {what}, not {type(value).__name__}: {fix}")
    return value
