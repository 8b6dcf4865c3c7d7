"""The chapter's hot dog data set: a streamed, SHA-1-checked download of hotdog.zip.

The zip is fetched into ``data_root``, extracted with ``safe_extract`` and swapped into
place under ``data_root_lock`` only once it checks out; a marker holding the SHA-1 makes
later calls free. Network failures become ``DownloadError`` sentences that say what to
do offline.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from http.client import HTTPException
from pathlib import Path
from typing import Callable

from hotdog.data.archive import (
    ZipLimits,
    data_root_lock,
    read_chunks,
    remove_stale_leftovers,
    safe_extract,
    swap_into_place,
)
from hotdog.data.discovery import find_dataset_root
from hotdog.errors import DownloadError
from hotdog.fileio import atomic_write_bytes
from hotdog.paths import data_root

HOTDOG_URL = "http://d2l-data.s3-accelerate.amazonaws.com/hotdog.zip"
HOTDOG_SHA1 = "fba480ffa8aa7e0febbb511d181409f899b9baa5"

_MARKER = ".hotdog-source.sha1"
# The chapter's zip is ~260 MB; the general install limit (2 GB) is for users' zips.
_DOWNLOAD_LIMITS = ZipLimits(max_total_bytes=8_000_000_000)


def _offline_message(url: str, detail: str) -> str:
    host = urllib.parse.urlsplit(url).hostname or url
    return (
        f"Could not reach {host} ({detail}): this machine seems to be offline, so use a local "
        "image folder with `python -m hotdog data --root DIR` or install a data set zip with "
        "`python -m hotdog install-zip FILE.zip --name NAME` instead."
    )


def _verified_copy(target: Path, sha1: str) -> bool:
    try:
        return (target / _MARKER).read_text().strip() == sha1 and (target / "train").is_dir() and (target / "test").is_dir()
    except OSError:
        return False


def _fetch(url: str, dest: Path, sha1: str, progress, timeout: float) -> None:
    digest = hashlib.sha1()
    done = 0
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "hotdog-lab"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status = getattr(resp, "status", 200)
            if status != 200:
                raise DownloadError(f"download of {url} failed: HTTP {status} {getattr(resp, 'reason', '')}".rstrip())
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if progress:
                progress(0, total)
            with open(dest, "wb") as out:
                for chunk in read_chunks(resp):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
    except DownloadError:
        raise
    except urllib.error.HTTPError as err:
        raise DownloadError(f"download of {url} failed: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        reason = err.reason
        detail = getattr(reason, "strerror", None) or str(reason)
        raise DownloadError(_offline_message(url, detail)) from None
    except (ConnectionRefusedError, socket.gaierror) as err:
        raise DownloadError(_offline_message(url, err.strerror or str(err))) from None
    except (HTTPException, ConnectionError, TimeoutError, socket.timeout) as err:
        raise DownloadError(
            f"download of {url} is truncated: the connection ended after {done:,} bytes "
            f"({type(err).__name__}); the partial file was discarded, try again"
        ) from None
    except ValueError as err:  # malformed URL
        raise DownloadError(f"cannot download {url!r}: {err}") from None
    except OSError as err:
        raise DownloadError(f"cannot save the download to {dest.parent}: {err.strerror or err}") from None
    if total is not None and done != total:
        raise DownloadError(
            f"download of {url} is truncated: received {done:,} of {total:,} bytes; try again"
        )
    got = digest.hexdigest()
    if sha1 and got.lower() != sha1.lower():
        raise DownloadError(
            f"download of {url} is corrupt: SHA-1 {got} does not match the expected {sha1}; "
            "the file was discarded, try again"
        )


def _split_root_in(folder: Path) -> Path:
    """The folder holding train/ and test/ (zips may or may not wrap them in a top folder)."""
    root = find_dataset_root(folder)
    if not ((root / "train").is_dir() and (root / "test").is_dir()):
        raise DownloadError("the downloaded archive has no train/ and test/ folders")
    return root


def download_hotdog(home=None, url: str = HOTDOG_URL, sha1: str = HOTDOG_SHA1,
                    progress: Callable[[int, int | None], None] | None = None,
                    timeout: float = 30.0) -> Path:
    """The chapter's hot dog data set at ``data_root(home)/"hotdog"`` (downloaded once)."""
    droot = data_root(home)
    target = droot / "hotdog"
    if _verified_copy(target, sha1):
        return target
    try:
        droot.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create the data folder {droot}: {err.strerror or err}") from None
    with data_root_lock(droot):
        if _verified_copy(target, sha1):  # another process finished it while we waited
            return target
        _remove_stale_downloads(droot)
        remove_stale_leftovers(droot)
        fd, zpath = tempfile.mkstemp(prefix=".download-", suffix=".zip", dir=droot)
        os.close(fd)
        zpath = Path(zpath)
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=droot))
        try:
            _fetch(url, zpath, sha1, progress, timeout)
            try:
                with zipfile.ZipFile(zpath) as zf:
                    safe_extract(zf, staging, _DOWNLOAD_LIMITS)
            except zipfile.BadZipFile as err:
                raise DownloadError(f"the download from {url} is not a valid zip ({err})") from None
            split_root = _split_root_in(staging)
            atomic_write_bytes(split_root / _MARKER, (sha1 + "\n").encode())
            swap_into_place(split_root, target)
        finally:
            zpath.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _remove_stale_downloads(droot: Path) -> None:
    """Leftovers of a download killed mid-way (only called while holding the lock)."""
    for p in droot.iterdir():
        if p.name.startswith((".download-", ".extract-")):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
