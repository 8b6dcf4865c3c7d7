"""Decoded photos spilled to disk, for data sets whose decoded photos do not fit in memory.

:class:`hotdog.data.decoded.DecodedCache` keeps decoded photos in memory up to its cap. A set
larger than the cap used to churn an LRU: over a shuffled pass the hit rate of an LRU is
about cap / N, so past the cap it held ``cap`` bytes for almost nothing and decoded nearly
every photo again each epoch. Instead, when the set will not fit, each photo is decoded once
(by the run's preload) and written here, already shrunk to the run's ``min_side``; later
reads are plain file reads (no ``mmap``, so they never count in the process's RSS: the page
cache is the operating system's) and give exactly the array a fresh decode gives.

**Entries.** One file per photo, ``<root>/<2 hex>/<38 hex>.px``: a 44-byte header (magic,
format, height, width, channels, CRC-32 of the pixels, the entry's own key) and the raw HWC
uint8 pixels. The key (SHA-1) covers the photo's absolute path, size, mtime, inode and
device, the decode's ``min_side`` and ``max_pixels``, Pillow's version and the format, so an
edited, replaced or differently decoded photo is another entry.

**Safety.** Each entry is written to a temp file and renamed over (``fileio.atomic_path``,
without fsync: a crashed or ``kill -9``-ed writer leaves the old entry or none, and a power
cut that tears one is caught by the checksum). Every read checks the header, the length and
the CRC-32; a truncated or damaged entry is removed and the photo decoded again, never used.
Two runs writing the same entry write the same bytes; the last rename wins.

**Cap.** ``HOTDOG_DECODED_SPILL_MB`` (default 4096; ``0`` turns spilling off, then a set
that does not fit is decoded again for every use past the memory cap). Folder:
``HOTDOG_DECODED_SPILL_DIR``, else ``HOTDOG_HOME/cache/decoded``. Before its first write a
run makes room under the folder's lock (``fileio.file_lock``): entries not used since the
run started go, least recently used first (a read marks an entry used, once per process),
together with temp files a killed writer left. A run never evicts what it wrote itself: past
the cap it stops spilling. Two runs filling the folder at once may overshoot the cap until
the next run's clean-up. Deleting the folder is always safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CAP_ENV = "HOTDOG_DECODED_SPILL_MB"
DIR_ENV = "HOTDOG_DECODED_SPILL_DIR"
# A 20,000-photo set at 64 px input takes ~0.7 GB, the chapter's hotdog.zip at 224 px ~0.8 GB.
DEFAULT_CAP_MB = 4096
FORMAT = 1
MAGIC = b"HDSP"
# magic, format, reserved, height, width, channels (0: a 2-D array), CRC-32 of the pixels, key
HEADER = struct.Struct("<4sHHIIII20s")
SUFFIX = ".px"
# A temp file this old is a killed writer's leftover (a write takes milliseconds).
STALE_TMP_SECONDS = 600


def cap_bytes_from_env() -> int:
    """``HOTDOG_DECODED_SPILL_MB`` in bytes (unreadable or negative: the default)."""
    raw = os.environ.get(CAP_ENV, "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_CAP_MB
    except ValueError:
        log.warning("%s=%r is not a number of MB; using %d", CAP_ENV, raw, DEFAULT_CAP_MB)
        mb = DEFAULT_CAP_MB
    if not mb >= 0:  # negative or NaN
        mb = DEFAULT_CAP_MB
    return int(mb * 2**20)


def default_root() -> Path:
    from hotdog import paths

    env = os.environ.get(DIR_ENV, "").strip()
    return Path(env).expanduser() if env else paths.cache_root() / "decoded"


def entry_key(path: str | os.PathLike, min_side: int | None, max_pixels: int) -> bytes | None:
    """The entry's SHA-1 for this decode of this file, or None when the file cannot be
    stat'ed (then it is never spilled)."""
    import PIL

    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    text = "\0".join(str(x) for x in (FORMAT, PIL.__version__, real, st.st_size, st.st_mtime_ns, st.st_ino,
                                      st.st_dev, min_side or 0, max_pixels))
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).digest()


class SpillStore:
    """Decoded photos on disk under ``root``, at most ``cap_bytes`` in all (see the module
    docstring). Thread-safe; picklable (a spawned DataLoader worker reads the same folder)."""

    def __init__(self, root: str | os.PathLike | None = None, cap_bytes: int | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.cap_bytes = cap_bytes_from_env() if cap_bytes is None else max(0, int(cap_bytes))
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()
        self._started = time.time()
        self._room: int | None = None  # bytes this process may still write (None: not scanned yet)
        self._scans = 0
        self._want = 0
        self.full = self.cap_bytes == 0
        self._dirs: set[str] = set()
        self._touched: set[bytes] = set()
        self.written = self.written_bytes = self.reads = self.damaged = self.refused = self.evicted = 0

    def __getstate__(self):
        return {"root": str(self.root), "cap_bytes": self.cap_bytes}

    def __setstate__(self, state):
        self.__init__(state["root"], state["cap_bytes"])

    def path_of(self, key: bytes) -> Path:
        h = key.hex()
        return self.root / h[:2] / (h[2:] + SUFFIX)

    def reserve(self, photos: int, mean_bytes: float) -> None:
        """How much this run expects to write: room for it is made before the first write."""
        with self._lock:
            self._want = max(self._want, int(photos * (mean_bytes + HEADER.size)))

    # -- reading
    def read(self, key: bytes) -> np.ndarray | None:
        """The stored array, verified, or None (missing, or damaged: then removed)."""
        path = self.path_of(key)
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                buf = bytearray(size)
                got = fh.readinto(buf)
        except OSError:
            return None
        arr = _parse(buf, got, key)
        if arr is None:
            log.warning("decoded-photo spill entry %s is damaged; decoding the photo again", path.name)
            with self._lock:
                self.damaged += 1
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        with self._lock:
            self.reads += 1
            first = key not in self._touched
            self._touched.add(key)
        if first:  # marks it used by this run: the clean-up of another run keeps it
            with contextlib.suppress(OSError):
                os.utime(path)
        return arr

    # -- writing
    def write(self, key: bytes, arr: np.ndarray) -> bool:
        """Store ``arr`` (uint8, 2-D or HWC); False when spilling is off, the cap is reached
        or the disk refuses (the caller keeps or re-decodes the photo instead)."""
        from hotdog.errors import StorageError
        from hotdog.fileio import atomic_path

        arr = np.ascontiguousarray(arr)
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
            raise ValueError(f"only 2-D or HWC uint8 photos are spilled, not {arr.dtype} {arr.shape}")
        size = HEADER.size + arr.nbytes
        if not self._take_room(size):
            with self._lock:
                self.refused += 1
            return False
        h, w = arr.shape[:2]
        c = arr.shape[2] if arr.ndim == 3 else 0
        pixels = memoryview(arr).cast("B")
        header = HEADER.pack(MAGIC, FORMAT, 0, h, w, c, zlib.crc32(pixels) & 0xFFFFFFFF, key)
        path = self.path_of(key)
        try:
            if path.parent.name not in self._dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._dirs.add(path.parent.name)
            with atomic_path(path, durable=False) as tmp:
                with open(tmp, "wb") as fh:
                    fh.write(header)
                    fh.write(pixels)
        except (StorageError, OSError) as err:
            log.warning("cannot spill decoded photos to %s (%s); decoding them again instead", self.root, err)
            with self._lock:
                self.full = True
                self.refused += 1
            return False
        with self._lock:
            self.written += 1
            self.written_bytes += size
            self._touched.add(key)
        return True

    def _take_room(self, size: int) -> bool:
        with self._lock:
            if self.full:
                return False
            if self._room is not None and self._room >= size:
                self._room -= size
                return True
            may_scan = self._scans < 2
        if not may_scan:
            with self._lock:
                self.full = True
            return False
        with self._scan_lock:
            with self._lock:  # another thread may have scanned meanwhile
                if self._room is not None and self._room >= size:
                    self._room -= size
                    return True
                if self.full or self._scans >= 2:
                    self.full = True
                    return False
                self._scans += 1
                want = max(self._want - self.written_bytes, size)
            room = self._make_room(want)
            with self._lock:
                self._room = room
                if room < size:
                    self.full = True
                    return False
                self._room -= size
                return True

    def _make_room(self, want: int) -> int:
        """Evict entries not used by this run (oldest first) until ``want`` more bytes fit;
        returns the room left (0 when the folder cannot be locked)."""
        from hotdog.errors import StorageError
        from hotdog.fileio import file_lock

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with file_lock(self.root / ".lock", timeout=60):
                entries, total = self._entries()
                entries.sort()
                for mtime, size, path in entries:
                    if total + want <= self.cap_bytes or mtime >= self._started:
                        break
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                        total -= size
                        self.evicted += 1
        except (StorageError, OSError) as err:
            log.warning("cannot use the decoded-photo spill folder %s (%s); decoding photos again instead",
                        self.root, err)
            return 0
        return max(0, self.cap_bytes - total)

    def _entries(self) -> tuple[list[tuple[float, int, str]], int]:
        """(last use, bytes, path) of every entry, and their total; removes stale temp files."""
        out, total, now = [], 0, time.time()
        try:
            subs = [d for d in os.scandir(self.root) if d.is_dir() and len(d.name) == 2]
        except OSError:
            return out, total
        for sub in subs:
            try:
                files = list(os.scandir(sub.path))
            except OSError:
                continue
            for f in files:
                try:
                    st = f.stat()
                except OSError:
                    continue
                if f.name.endswith(SUFFIX):
                    out.append((st.st_mtime, st.st_size, f.path))
                    total += st.st_size
                elif f.name.endswith(".tmp") and now - st.st_mtime > STALE_TMP_SECONDS:
                    with contextlib.suppress(OSError):
                        os.unlink(f.path)
        return out, total

    def stats(self) -> dict:
        with self._lock:
            return {"root": str(self.root), "cap_mb": self.cap_bytes / 2**20, "written": self.written,
                    "written_mb": self.written_bytes / 2**20, "reads": self.reads, "damaged": self.damaged,
                    "refused": self.refused, "evicted": self.evicted, "full": self.full}


def _parse(buf: bytearray, got: int, key: bytes) -> np.ndarray | None:
    if got != len(buf) or len(buf) < HEADER.size:
        return None
    magic, fmt, _, h, w, c, crc, stored_key = HEADER.unpack_from(buf)
    if magic != MAGIC or fmt != FORMAT or stored_key != key or h * w * max(c, 1) != len(buf) - HEADER.size:
        return None
    pixels = memoryview(buf)[HEADER.size:]
    if zlib.crc32(pixels) & 0xFFFFFFFF != crc:
        return None
    arr = np.frombuffer(buf, np.uint8, offset=HEADER.size)
    return arr.reshape((h, w, c) if c else (h, w))


def open_spill() -> SpillStore | None:
    """The store runs use, or None when ``HOTDOG_DECODED_SPILL_MB=0`` turns spilling off."""
    store = SpillStore()
    return store if store.cap_bytes > 0 else None
