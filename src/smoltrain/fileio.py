"""Atomic file writes (a reader sees the old file or the new one, never half of one), and reading JSON that
a user or another program wrote, with one clear line when it is damaged.

A write that fails (a file where a directory should be, a read-only or full file system, a name too long)
raises one :class:`~smoltrain.errors.OutputError` line naming the output, the reason and the fix, and
leaves no partial output behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from smoltrain.errors import DataError, OutputError

# What to do about a failed write, by errno; the reason itself is the OS's.
_WRITE_FIXES = {
    errno.ENOSPC: "free some disk space or write somewhere else",
    errno.EDQUOT: "free some of your disk quota or write somewhere else",
    errno.EFBIG: "write to a file system that allows larger files",
    errno.EROFS: "write to a location on a writable file system",
    errno.EACCES: "write to a location you have permission to write to",
    errno.EPERM: "write to a location you have permission to write to",
    errno.ENAMETOOLONG: "choose a shorter name",
    errno.ENOTDIR: "a file is in the way of a directory of this path: remove it or choose another path",
    errno.EEXIST: "a file is in the way: remove it or choose another path",
    errno.EISDIR: "a directory is in the way: remove it or choose another path",
}
# Errnos only a write raises: inside a body that fills an output (a builder writing its arrays) an OSError with
# one of these is about the output; any other OSError there may be about an input, and is left to its owner.
_WRITE_ONLY_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
_DEFAULT_NAME_MAX = 255  # bytes per path component on the usual Linux and macOS file systems


def output_error(output: str | os.PathLike, err: OSError) -> OutputError:
    """The one line for ``err``, raised while writing ``output`` (the path the user chose, not a temporary)."""
    reason = err.strerror or str(err)
    fix = _WRITE_FIXES.get(err.errno or 0, "choose another output path")
    return OutputError(f"cannot write {output}: {reason}; {fix}")


@contextlib.contextmanager
def writing(output: str | os.PathLike, only_write_errors: bool = False) -> Iterator[None]:
    """Turn an ``OSError`` raised inside into :func:`output_error` for ``output``. With ``only_write_errors``,
    only the errnos that just a write raises (disk full, read-only file system) are turned.

    Nested, the outermost names the output: a file written inside a temporary directory that
    :func:`atomic_directory` renames into place is reported as that directory, not as the temporary."""
    try:
        yield
    except OSError as err:
        cause = err.__cause__ if isinstance(err, OutputError) else err
        if not isinstance(cause, OSError):
            raise  # an OutputError of its own (check_output_path), already naming the output
        if only_write_errors and cause.errno not in _WRITE_ONLY_ERRNOS:
            raise
        raise output_error(output, cause) from cause


def check_output_path(output: str | os.PathLike) -> Path:
    """``output`` (absolute), refused with one line before any work when it cannot be created: it, or one
    of its parents, is a file where a directory is needed, a name in it is longer than the file system
    allows, or the directory it would be written in is read-only or not ours to write. Whether an existing
    directory may be replaced is the caller's to decide."""
    out = Path(output).absolute()
    name_max = _name_max(out)
    for part in out.parts:  # first: a name too long makes even asking whether the path exists fail
        if len(os.fsencode(part)) > name_max:
            raise OutputError(f"cannot write {out}: the name {part[:24]}... is {len(os.fsencode(part))} bytes long "
                              f"and the file system allows {name_max}; choose a shorter name")
    for parent in reversed(out.parents):
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"cannot write {out}: {parent} exists and is a file; remove it or choose another path")
    if out.exists() and not out.is_dir():
        raise OutputError(f"cannot write {out}: it exists and is a file; remove it or choose another path")
    # Where the first write lands: in ``out`` when it exists, else where it is created. Asked now, so a long
    # build or training does not find out at its end.
    home = next(p for p in [out, *out.parents] if p.is_dir())
    if os.statvfs(home).f_flag & os.ST_RDONLY:
        raise OutputError(f"cannot write {out}: {home} is on a read-only file system; {_WRITE_FIXES[errno.EROFS]}")
    if not os.access(home, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {out}: no permission to write in {home}; {_WRITE_FIXES[errno.EACCES]}")
    return out


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


def _name_max(path: Path) -> int:
    """The longest name (in bytes) the file system that would hold ``path`` allows."""
    for parent in path.parents:
        try:
            if parent.is_dir():
                return os.pathconf(parent, "PC_NAME_MAX")
        except (OSError, ValueError):
            continue
    return _DEFAULT_NAME_MAX


def write_synced(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Create ``path``, let ``write(handle)`` fill it, then flush and fsync before closing.

    For files inside a temporary directory that is renamed into place as a whole: its owner,
    :func:`atomic_directory`, names the output (not the temporary) when a write fails."""
    with open(path, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def write_json_synced(path: str | os.PathLike, obj: object, indent: int | None = None) -> None:
    data = json.dumps(obj, indent=indent).encode()
    write_synced(path, lambda handle: handle.write(data))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling renamed over it; the file gets the permissions of
    a file ``open()`` creates, as if written in place. A write that fails is one :class:`OutputError` line."""
    with writing(path):
        _write_and_replace(Path(path), data)


def _write_and_replace(path: Path, data: bytes) -> None:
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
    Callers decide beforehand whether an existing ``output`` may be replaced. A failed write (here, or a
    full or read-only disk under the body) raises :class:`OutputError` naming ``output``.
    """
    out = Path(output)
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        # A sibling is on the same filesystem, so the renames are atomic.
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
    try:
        with writing(out, only_write_errors=True):
            yield tmp
        with writing(out):
            _sync_and_swap(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _sync_and_swap(tmp: Path, out: Path) -> None:
    """fsync everything under ``tmp``, then rename it onto ``out`` (an existing ``out`` is swapped out first)."""
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
