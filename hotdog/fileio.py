"""Files that are never seen half-written, and the one cross-process lock.

Every writer in the package goes through here: a crash or ``kill -9`` leaves the old or the
new file, never a mix (temp file in the same folder, fsync, rename, fsync of the folder).
Errors become :class:`~hotdog.errors.StorageError` sentences (read-only folder, full disk).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any, Iterator

from hotdog.errors import StorageError


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is; best effort where the
    # platform refuses O_RDONLY on directories.
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; when the block succeeds, the file written there
    replaces ``path`` atomically. On any error the temp file is removed and an ``OSError``
    becomes a StorageError naming the file (for writers that need a path, e.g. MXNet's
    ``save_parameters``)."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise StorageError(f"cannot write {path.name}: {err.strerror or err}") from err
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never a mix."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)


def to_json(obj: Any, default=None, **kw) -> str:
    """Strict JSON: NaN and infinities become null (bare ``NaN`` is not JSON). ``default``
    renders objects JSON does not know (after paths and numpy arrays)."""
    def fallback(o):
        try:
            return _json_default(o)
        except TypeError:
            if default is None:
                raise
            return _finite(default(o))

    return json.dumps(_finite(obj), allow_nan=False, default=fallback, **kw)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (to_json(obj, indent=2, sort_keys=True) + "\n").encode())


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _finite(dataclasses.asdict(obj))
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy scalars
        return _finite(obj.item())
    return obj


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays
        return _finite(obj.tolist())
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line with a single write + fsync (a crash may drop the line, not tear it)."""
    line = to_json(obj, sort_keys=True) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise StorageError(f"cannot append to {Path(path).name}: {err.strerror or err}") from err


def loads_json(raw: bytes) -> Any:
    """``json.loads`` whose every failure on bad content is a ValueError (bad UTF-8, and
    nesting too deep for the parser, which raises RecursionError)."""
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def read_json(path: str | os.PathLike) -> Any:
    """The parsed file; OSError / ValueError (including bad UTF-8) for the caller to judge."""
    with open(path, "rb") as fh:
        return loads_json(fh.read())


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, timeout: float = 600.0) -> Iterator[None]:
    """An exclusive lock between processes and threads (``filelock``). A lock that cannot be
    taken is an error, never a silent run without the lock."""
    import filelock

    lock = filelock.FileLock(str(path), timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout as err:
        raise StorageError(f"{Path(path).parent} is busy (another process holds {Path(path).name}); "
                           "try again when it has finished") from err
    except OSError as err:
        raise StorageError(f"cannot lock {Path(path).parent}: {err.strerror or err}") from err
    try:
        yield
    finally:
        lock.release()
