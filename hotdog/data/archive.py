"""Unpacking zips safely and putting a data set in place atomically.

``safe_extract`` refuses zip-slip, links, devices, encryption, nested archives and bombs
(counting the bytes really written, never trusting headers). ``install_zip`` extracts a
user's zip into a staging folder, finds the data set in it, validates it, and only then
swaps it into ``data_root``; ``swap_into_place`` and ``data_root_lock`` are shared with
the download so both follow one locking and replacement rule.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from hotdog.data.discovery import find_dataset_root, validate_dataset
from hotdog.data.images import is_hidden, is_image_file, os_reason
from hotdog.data.names import MAX_DATASET_NAME, check_dataset_name, display_name
from hotdog.errors import DatasetError, UnsafeArchiveError
from hotdog.fileio import file_lock, fsync_dir
from hotdog.paths import data_root

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def read_chunks(fp) -> Iterator[bytes]:
    """``fp``'s bytes in 1 MiB pieces, so no archive entry or download sits whole in memory."""
    return iter(lambda: fp.read(_CHUNK), b"")


@contextlib.contextmanager
def data_root_lock(droot: Path) -> Iterator[None]:
    """Held while anything is swapped into ``droot``: two installs or downloads (threads or
    processes) never replace the same folder at once. Failing to lock is an error."""
    with file_lock(droot / ".hotdog.lock"):
        yield


def swap_into_place(new: Path, target: Path) -> None:
    """Replace ``target`` with ``new`` so readers see the old or the new set, never half.
    Call with ``data_root_lock`` held."""
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f"{_OLD_PREFIX}p{os.getpid()}-t{threading.get_ident()}-{target.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
    try:
        os.rename(new, target)
    except OSError:
        if old is not None:
            os.rename(old, target)
        raise
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# Leftovers of an install or swap killed mid-way (kill -9, power loss) carry the pid of the
# process that made them: ".install-p<pid>-<random>" (extraction staging) and
# ".old-p<pid>-t<thread>-<name>" (the replaced set, between two renames). Older names
# without the "p" (before this rule) are removed by age only.
_INSTALL_PREFIX = ".install-"
_OLD_PREFIX = ".old-"
_LEFTOVER = re.compile(r"^\.(install|old)-p(\d+)-(?:t(\d+)-(.+))?")
# A leftover whose process still exists is left alone unless it is older than this: the
# pid may have been reused, but no install of ours takes an hour.
STALE_AFTER_SECONDS = 3600.0


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    except OSError:
        return True
    return True


def remove_stale_leftovers(droot: Path, max_age: float = STALE_AFTER_SECONDS, now: float | None = None) -> list[str]:
    """Remove what killed installs left in ``droot``; return the names removed or restored.

    Only our own litter: ``.install-*`` / ``.old-*`` entries whose process is gone, or
    older than ``max_age`` seconds. An ``.old-p<pid>-t<thread>-<name>`` whose ``name`` is
    missing was caught between the two renames of ``swap_into_place``: it is renamed back,
    so the previous data set reappears instead of being deleted. Call with
    ``data_root_lock(droot)`` held (swaps happen only under it).
    """
    import time

    now = time.time() if now is None else now
    done: list[str] = []
    try:
        entries = list(droot.iterdir())
    except OSError:
        return done
    for p in entries:
        name = p.name
        if not name.startswith((_INSTALL_PREFIX, _OLD_PREFIX)):
            continue
        m = _LEFTOVER.match(name)
        try:
            age = now - p.lstat().st_mtime
        except OSError:
            continue
        dead = m is not None and not _pid_alive(int(m.group(2)))
        if not (dead or age > max_age):
            continue
        if m is not None and m.group(1) == "old" and m.group(4):
            original = droot / m.group(4)
            if not (original.exists() or original.is_symlink()):
                try:
                    os.rename(p, original)
                    done.append(name)
                    continue
                except OSError:
                    pass
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
        done.append(name)
    if done:
        log.info("removed %d leftover(s) of interrupted installs in %s", len(done), droot)
    return done


@dataclass(frozen=True)
class ZipLimits:
    max_total_bytes: int = 2_000_000_000
    max_entries: int = 100_000
    max_ratio: float = 200.0
    # Ratios of tiny entries are meaningless (a 4 KiB blank file compresses 100x), so the
    # ratio limits apply only above these sizes.
    ratio_min_entry_bytes: int = 1 << 20
    ratio_min_total_bytes: int = 8 << 20


_DRIVE = re.compile(r"^[A-Za-z]:")


def _entry_parts(info: zipfile.ZipInfo) -> list[str]:
    raw = info.filename
    if "\\" in raw:
        raise UnsafeArchiveError(f"refused: entry {raw!r} uses backslashes in its path (possible path traversal)")
    if raw.startswith("/") or _DRIVE.match(raw):
        raise UnsafeArchiveError(f"refused: entry {raw!r} has an absolute path")
    if "\x00" in raw:
        raise UnsafeArchiveError(f"refused: entry {raw!r} has a NUL byte in its name")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeArchiveError(f"refused: entry {raw!r} points outside the archive folder (zip-slip '..')")
    return parts


def _declared_entry_count(fileobj) -> int | None:
    """Entry count from the end-of-central-directory record, read before ZipFile parses
    (and allocates) the whole central directory."""
    try:
        if isinstance(fileobj, (str, os.PathLike)):
            with open(fileobj, "rb") as fh:
                rec = zipfile._EndRecData(fh)  # noqa: SLF001 - stable since Python 2
        else:
            rec = zipfile._EndRecData(fileobj)  # noqa: SLF001
            fileobj.seek(0)
    except Exception:  # noqa: BLE001 - ZipFile itself reports unreadable archives
        return None
    return None if not rec else int(rec[zipfile._ECD_ENTRIES_TOTAL])  # noqa: SLF001


def _check_zip(zf: zipfile.ZipFile, limits: ZipLimits) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise UnsafeArchiveError(
            f"refused: the zip has {len(infos):,} entries, more than the limit of {limits.max_entries:,}"
        )
    total = 0
    total_compressed = 0
    plan = []
    for info in infos:
        parts = _entry_parts(info)
        mode = (info.external_attr >> 16) & 0xFFFF
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise UnsafeArchiveError(f"refused: entry {info.filename!r} is a symbolic link")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchiveError(f"refused: entry {info.filename!r} is not a regular file or folder")
        if info.flag_bits & 0x1:
            raise UnsafeArchiveError(f"refused: entry {info.filename!r} is encrypted")
        if not parts:
            continue
        if info.is_dir():
            plan.append((info, parts))
            continue
        if any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue  # Finder/editor litter: never extracted
        if parts[-1].lower().endswith((".zip", ".jar", ".7z", ".rar", ".tar", ".gz", ".tgz", ".xz", ".bz2")):
            raise UnsafeArchiveError(
                f"refused: the zip contains another archive ({info.filename!r}); nested archives are "
                "not extracted, unpack it and upload the inner data set instead"
            )
        total += info.file_size
        total_compressed += info.compress_size
        if total > limits.max_total_bytes:
            raise UnsafeArchiveError(
                f"refused: the zip would unpack to more than {limits.max_total_bytes:,} bytes (zip bomb limit)"
            )
        if info.file_size >= limits.ratio_min_entry_bytes:
            ratio = info.file_size / max(1, info.compress_size)
            if ratio > limits.max_ratio:
                raise UnsafeArchiveError(
                    f"refused: entry {info.filename} expands {ratio:,.0f}x, more than the limit of "
                    f"{limits.max_ratio:g}x (zip bomb)"
                )
        plan.append((info, parts))
    if total >= limits.ratio_min_total_bytes and total / max(1, total_compressed) > limits.max_ratio:
        raise UnsafeArchiveError(
            f"refused: the zip expands {total / max(1, total_compressed):,.0f}x overall, more than the limit of "
            f"{limits.max_ratio:g}x (zip bomb)"
        )
    return plan


def safe_extract(zf: zipfile.ZipFile, dest: Path, limits: ZipLimits) -> int:
    """Extract into ``dest`` (fresh, empty) counting real bytes, never trusting headers."""
    plan = _check_zip(zf, limits)
    dest_resolved = dest.resolve()
    written_total = 0
    for info, parts in plan:
        out = dest.joinpath(*parts)
        if not out.resolve().is_relative_to(dest_resolved):  # belt and braces after _entry_parts
            raise UnsafeArchiveError(f"refused: entry {info.filename!r} points outside the target folder")
        if info.is_dir():
            out.mkdir(parents=True, exist_ok=True)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        try:
            with zf.open(info) as src, open(out, "xb") as fh:
                for chunk in read_chunks(src):
                    written += len(chunk)
                    written_total += len(chunk)
                    if written > info.file_size:
                        raise UnsafeArchiveError(
                            f"refused: entry {info.filename!r} unpacks to more bytes than its header declares"
                        )
                    if written_total > limits.max_total_bytes:
                        raise UnsafeArchiveError(
                            f"refused: the zip unpacks to more than {limits.max_total_bytes:,} bytes (zip bomb limit)"
                        )
                    fh.write(chunk)
        except FileExistsError:
            raise UnsafeArchiveError(f"refused: entry {info.filename!r} appears twice in the zip") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, RuntimeError) as err:
            raise UnsafeArchiveError(f"the zip is corrupt or unsupported at {info.filename!r} ({err})") from None
        except (OSError, ValueError) as err:
            if isinstance(err, OSError) and err.errno is not None:
                raise
            raise UnsafeArchiveError(f"the zip is corrupt at {info.filename!r} ({err})") from None
    return written_total


def _contains_image(folder: Path) -> bool:
    return any(p.is_file() and not is_hidden(p) and is_image_file(p) for p in folder.rglob("*"))


def _free_name(droot: Path, name: str) -> str:
    """``name``, or the first of ``name-2``, ``name-3``, ... not taken in ``droot``
    (shortened so the result still obeys the name rule). Call with the lock held."""
    def taken(n: str) -> bool:
        p = droot / n
        return p.exists() or p.is_symlink()

    if not taken(name):
        return name
    for i in range(2, 10_000):
        suffix = f"-{i}"
        candidate = name[:MAX_DATASET_NAME - len(suffix)].rstrip(" .") + suffix
        if not taken(candidate):
            return candidate
    raise DatasetError(f"too many data sets are called '{display_name(name)}'; choose another name")


def install_zip(src, name: str, home=None, limits: ZipLimits = ZipLimits(), *, replace: bool = False) -> Path:
    """Install a user-supplied data set zip under ``data_root(home)`` and return its folder.

    ``name`` must pass ``check_dataset_name``. When a data set of that name exists it is
    kept and the new one is installed as ``name-2`` (``name-3``, ...): the returned path's
    ``.name`` says which. ``replace=True`` replaces the existing one instead (atomically).

    Refuses unsafe archives (``UnsafeArchiveError``) and unusable data sets
    (``DatasetError``); in both cases nothing is left behind and installed data sets stay
    as they were. Leftovers of earlier installs that were killed are removed on the way.
    """
    check_dataset_name(name)
    droot = data_root(home)
    try:
        droot.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(f"cannot create the data folder ($HOTDOG_HOME/data): {os_reason(err)}") from None
    if isinstance(src, (bytes, bytearray, memoryview)):
        fileobj: Any = io.BytesIO(bytes(src))
    elif isinstance(src, (str, os.PathLike)):
        if not Path(src).is_file():
            raise DatasetError(f"zip file '{display_name(Path(src).name)}' does not exist")
        fileobj = str(src)
    elif hasattr(src, "read"):
        fileobj = io.BytesIO(src.read())
    else:
        raise DatasetError(f"cannot read a zip from a {type(src).__name__}")
    declared = _declared_entry_count(fileobj)
    if declared is not None and declared > limits.max_entries:
        raise UnsafeArchiveError(
            f"refused: the zip has {declared:,} entries, more than the limit of {limits.max_entries:,}"
        )
    try:
        staging = Path(tempfile.mkdtemp(prefix=f"{_INSTALL_PREFIX}p{os.getpid()}-", dir=droot))
    except OSError as err:
        raise DatasetError(f"cannot write to the data folder ($HOTDOG_HOME/data): {os_reason(err)}") from None
    try:
        try:
            with zipfile.ZipFile(fileobj) as zf:
                safe_extract(zf, staging, limits)
        except zipfile.BadZipFile:
            raise DatasetError("the upload is not a valid zip file") from None
        except UnicodeDecodeError:
            # The entry's "UTF-8 name" flag is set but its bytes are not UTF-8: zipfile
            # cannot even list the archive.
            raise UnsafeArchiveError(
                "refused: an entry of the zip is marked as having a UTF-8 name but its name is not "
                "valid UTF-8; re-create the zip with a current zip tool"
            ) from None
        except OSError as err:
            raise DatasetError(f"cannot extract the zip into the data folder: {os_reason(err)}") from None
        if not _contains_image(staging):
            raise DatasetError("the zip contains no image files (expected class folders of JPEG/PNG photos)")
        root = find_dataset_root(staging)
        validate_dataset(root)
        with data_root_lock(droot):
            remove_stale_leftovers(droot)
            final = name if replace else _free_name(droot, name)
            swap_into_place(root, droot / final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if final != name:
        log.info("a data set %r exists; installed the new one as %r", name, final)
    return droot / final
