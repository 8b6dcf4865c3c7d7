"""Decoded photos spilled to disk, for data sets whose decoded photos do not fit in memory.

:class:`hotdog.data.decoded.DecodedCache` keeps decoded photos in memory up to its cap. A set
larger than the cap used to churn an LRU: over a shuffled pass the hit rate of an LRU is
about cap / N, so past the cap it held ``cap`` bytes for almost nothing and decoded nearly
every photo again each epoch. Instead, when the set will not fit, each photo is decoded once
and written here, already shrunk to the run's ``min_side``; later reads are plain
positioned reads (``os.preadv``, no ``mmap``, so they never count in the process's RSS: the
page cache is the operating system's) and give exactly the array a fresh decode gives.

**Records and segments.** Photos are appended to segment files (``<root>/*.seg``, at most
``segment_bytes`` each, default 256 MB); a process appends only to segments it created, so
writers never share a file. A record is a 44-byte header (magic, format, height, width,
channels, CRC-32 of the pixels, the record's key) and the raw HWC uint8 pixels. One record
costs one ``pwritev`` (a file per photo cost ~0.4 ms of create + rename per photo, half a
decode). The key (SHA-1) covers the photo's absolute path, size, mtime, inode and device,
the decode's ``min_side`` and ``max_pixels``, Pillow's version and the format, so an edited,
replaced or differently decoded photo is another record. A process finds the records of
earlier runs by reading the segments' headers once, on its first look-up.

**Safety.** Every read checks the header, the key, the length and the CRC-32: a truncated or
damaged record is decoded again (and appended anew), never used. A writer killed with
``kill -9`` leaves at most a partial record at the end of its segment, which no header scan
passes and no read accepts. No lock is needed to read or append; the folder's lock
(``fileio.file_lock``) is held only while removing segments.

**Cap.** ``HOTDOG_DECODED_SPILL_MB`` (default 4096; ``0`` turns spilling off, then a set
that does not fit is decoded again for every use past the memory cap). Folder:
``HOTDOG_DECODED_SPILL_DIR``, else ``HOTDOG_HOME/cache/decoded``. Before its first write a
run makes room for what it expects to write: whole segments not used since the run started
go, least recently used first (a run marks a segment used the first time it reads from it).
A run never removes what it wrote itself: past the cap it stops spilling. Two runs filling
the folder at once may overshoot the cap until the next run's clean-up. Deleting the folder
is always safe (a reader holding a removed segment open still reads it; one that has not
opened it yet decodes again).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
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
SEGMENT_BYTES = 256 * 2**20
FORMAT = 1
MAGIC = b"HDSP"
# magic, format, reserved, height, width, channels (0: a 2-D array), CRC-32 of the pixels, key
HEADER = struct.Struct("<4sHHIIII20s")
SUFFIX = ".seg"
MAX_SIDE = 1 << 16  # larger header fields are damage, not a photo


def mb_from_env(name: str, default_mb: float) -> int:
    """Bytes from an environment variable in MB (unset, unreadable, negative or NaN: the default)."""
    raw = os.environ.get(name, "").strip()
    try:
        mb = float(raw) if raw else default_mb
    except ValueError:
        log.warning("%s=%r is not a number of MB; using %s", name, raw, default_mb)
        mb = default_mb
    if not mb >= 0:  # negative or NaN
        mb = default_mb
    return int(mb * 2**20)


def cap_bytes_from_env() -> int:
    """``HOTDOG_DECODED_SPILL_MB`` in bytes (unreadable or negative: the default)."""
    return mb_from_env(CAP_ENV, DEFAULT_CAP_MB)


def default_root() -> Path:
    from hotdog import paths

    env = os.environ.get(DIR_ENV, "").strip()
    return Path(env).expanduser() if env else paths.cache_root() / "decoded"


def entry_key(path: str | os.PathLike, min_side: int | None, max_pixels: int) -> bytes | None:
    """The record's SHA-1 for this decode of this file, or None when the file cannot be
    stat'ed (then it is never spilled)."""
    import PIL

    try:
        real = os.path.abspath(path)  # stat follows links; inode and device name the file
        st = os.stat(real)
    except OSError:
        return None
    text = "\0".join(str(x) for x in (FORMAT, PIL.__version__, real, st.st_size, st.st_mtime_ns, st.st_ino,
                                      st.st_dev, min_side or 0, max_pixels))
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).digest()


def _payload_size(h: int, w: int, c: int) -> int:
    return h * w * max(c, 1)


def _header_ok(magic, fmt, h, w, c) -> bool:
    return magic == MAGIC and fmt == FORMAT and 0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE and c in (0, 1, 2, 3, 4)


class SpillStore:
    """Decoded photos on disk under ``root``, at most ``cap_bytes`` in all (see the module
    docstring). Thread-safe; picklable (a spawned DataLoader worker reads the same folder);
    a forked process starts a segment of its own before it writes."""

    def __init__(self, root: str | os.PathLike | None = None, cap_bytes: int | None = None,
                 segment_bytes: int = SEGMENT_BYTES):
        self.root = Path(root) if root is not None else default_root()
        self.cap_bytes = cap_bytes_from_env() if cap_bytes is None else max(0, int(cap_bytes))
        self.segment_bytes = max(HEADER.size + 1, int(segment_bytes))
        self._started = time.time()
        self._lock = threading.Lock()
        self._reset_writer()
        # key -> segment number << 40 | offset: ~150 bytes a photo (a tuple per photo was ~250)
        self._index: dict[bytes, int] | None = None
        self._names: list[str] = []  # segment number -> file name
        self._numbers: dict[str, int] = {}
        self._fds: dict[str, int] = {}  # segment name -> fd for reading
        self._used: set[str] = set()
        self._room: int | None = None  # bytes this process may still write (None: not made yet)
        self._want = 0
        self.full = self.cap_bytes == 0
        self.written = self.written_bytes = self.reads = self.damaged = self.refused = self.evicted = 0

    def _reset_writer(self) -> None:
        self._pid = os.getpid()
        self._seg: str | None = None
        self._seg_fd: int | None = None
        self._seg_end = 0
        self._own: set[str] = set()

    def __getstate__(self):
        return {"root": str(self.root), "cap_bytes": self.cap_bytes, "segment_bytes": self.segment_bytes}

    def __setstate__(self, state):
        self.__init__(state["root"], state["cap_bytes"], state["segment_bytes"])

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def close(self) -> None:
        fds = list(self._fds.values())
        if self._seg_fd is not None and self._pid == os.getpid():
            fds.append(self._seg_fd)
        self._fds, self._seg_fd, self._seg = {}, None, None
        for fd in set(fds):
            with contextlib.suppress(OSError):
                os.close(fd)

    def reserve(self, photos: int, mean_bytes: float) -> None:
        """How much a data set about to spill will write: room for it is made before its
        first write (the store is shared by the runs of a process: each makes room anew)."""
        with self._lock:
            self._want = int(photos * (mean_bytes + HEADER.size))
            if self.cap_bytes > 0:
                self._room, self.full = None, False

    # -- finding records
    def _segments(self) -> list[os.DirEntry]:
        try:
            return [e for e in os.scandir(self.root) if e.name.endswith(SUFFIX)]
        except OSError:
            return []

    def _ensure_index(self) -> dict:
        """Key -> where (:meth:`_where`) of every record the segments hold now (first call only)."""
        if self._index is not None:
            return self._index
        index: dict[bytes, int] = {}
        # Oldest segment first (names start with their creation time), so where a photo was
        # written again (after damage, or by two runs) the newest record wins.
        for entry in sorted(self._segments(), key=lambda e: e.name):
            # Scanned through a descriptor of its own: one is kept only for segments this
            # process reads from, so a long-lived process does not pin the disk space of
            # segments another run removes.
            try:
                fd = os.open(entry.path, os.O_RDONLY)
            except OSError:
                continue
            try:
                size = os.fstat(fd).st_size
                off = 0
                while off + HEADER.size <= size:
                    magic, fmt, _, h, w, c, _crc, key = HEADER.unpack(os.pread(fd, HEADER.size, off))
                    end = off + HEADER.size + _payload_size(h, w, c)
                    if not _header_ok(magic, fmt, h, w, c) or end > size:
                        break  # a killed writer's partial record, or damage: nothing past it is trusted
                    index[key] = self._pack(entry.name, off)
                    off = end
            except (OSError, struct.error):
                pass
            finally:
                os.close(fd)
        with self._lock:
            if self._index is None:
                self._index = index
            else:  # another thread indexed meanwhile
                for key, where in index.items():
                    self._index.setdefault(key, where)
            return self._index

    def _pack(self, name: str, off: int) -> int:
        with self._lock:
            number = self._numbers.get(name)
            if number is None:
                number = self._numbers[name] = len(self._names)
                self._names.append(name)
        return number << 40 | off

    def _where(self, packed: int) -> tuple[str, int]:
        return self._names[packed >> 40], packed & (1 << 40) - 1

    def _fd(self, name: str) -> int | None:
        fd = self._fds.get(name)
        if fd is None:
            try:
                fd = os.open(self.root / name, os.O_RDONLY)
            except OSError:
                return None
            with self._lock:
                if name in self._fds:  # another thread opened it meanwhile
                    os.close(fd)
                    fd = self._fds[name]
                else:
                    self._fds[name] = fd
        return fd

    # -- reading
    def read(self, key: bytes) -> np.ndarray | None:
        """The stored array, verified, or None (missing, or damaged: then forgotten)."""
        where = self._ensure_index().get(key)
        if where is None:
            return None
        name, off = self._where(where)
        arr = None
        fd = self._fd(name)
        if fd is not None:
            with contextlib.suppress(OSError, struct.error):
                arr = _read_record(fd, off, key)
        if arr is None:
            log.warning("decoded-photo spill record in %s is missing or damaged; decoding the photo again", name)
            with self._lock:
                self.damaged += 1
                if self._index.get(key) == where:
                    del self._index[key]
            return None
        with self._lock:
            self.reads += 1
            first = name not in self._used
            self._used.add(name)
        if first:  # marks the segment used by this run: another run's clean-up keeps it
            with contextlib.suppress(OSError):
                os.utime(self.root / name)
        return arr

    # -- writing
    def write(self, key: bytes, arr: np.ndarray) -> bool:
        """Append ``arr`` (uint8, 2-D or HWC); False when spilling is off, the cap is reached
        or the disk refuses (the caller keeps or re-decodes the photo instead)."""
        arr = np.ascontiguousarray(arr)
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or 0 in arr.shape or max(arr.shape[:2]) > MAX_SIDE:
            raise ValueError(f"only 2-D or HWC uint8 photos are spilled, not {arr.dtype} {arr.shape}")
        index = self._ensure_index()
        size = HEADER.size + arr.nbytes
        h, w = arr.shape[:2]
        c = arr.shape[2] if arr.ndim == 3 else 0
        pixels = memoryview(arr).cast("B")
        header = HEADER.pack(MAGIC, FORMAT, 0, h, w, c, zlib.crc32(pixels) & 0xFFFFFFFF, key)
        try:
            with self._lock:
                if os.getpid() != self._pid:  # a forked child: never append to the parent's segment
                    self._reset_writer()
                    self._room, self.full = None, self.cap_bytes == 0
                if not self._take_room_locked(size):
                    self.refused += 1
                    return False
                if self._seg_fd is None or self._seg_end + size > self.segment_bytes:
                    self._new_segment_locked()
                name, fd, off = self._seg, self._seg_fd, self._seg_end
                self._seg_end += size
                where = self._numbers[name] << 40 | off
            if os.pwritev(fd, [header, pixels], off) != size:
                raise OSError("short write (disk full?)")
        except OSError as err:
            log.warning("cannot spill decoded photos to %s (%s); decoding them again instead", self.root, err)
            with self._lock:
                self.full = True
                self.refused += 1
            return False
        with self._lock:
            index[key] = where
            self.written += 1
            self.written_bytes += size
        return True

    def _new_segment_locked(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        fd = os.open(self.root / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self._seg, self._seg_fd, self._seg_end = name, fd, 0
        self._own.add(name)
        self._used.add(name)
        self._fds[name] = fd
        self._numbers[name] = len(self._names)
        self._names.append(name)

    def _take_room_locked(self, size: int) -> bool:
        if self.full:
            return False
        if self._room is None:
            self._room = self._make_room(max(self._want, size))
        if self._room < size:
            self.full = True
            return False
        self._room -= size
        return True

    def _make_room(self, want: int) -> int:
        """Remove segments not used by this run (least recently used first) until ``want``
        more bytes fit; the room left (0 when the folder cannot be locked)."""
        from hotdog.errors import StorageError
        from hotdog.fileio import file_lock

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with file_lock(self.root / ".lock", timeout=60):
                segs = []
                for e in self._segments():
                    with contextlib.suppress(OSError):
                        st = e.stat()
                        segs.append((st.st_mtime, st.st_size, e.name))
                total = sum(s[1] for s in segs)
                for mtime, size, name in sorted(segs):
                    if total + want <= self.cap_bytes:
                        break
                    if name in self._used or mtime >= self._started:
                        continue
                    with contextlib.suppress(OSError):
                        os.unlink(self.root / name)
                        total -= size
                        self.evicted += 1
        except (StorageError, OSError) as err:
            log.warning("cannot use the decoded-photo spill folder %s (%s); decoding photos again instead",
                        self.root, err)
            return 0
        return max(0, self.cap_bytes - total)

    def locate(self, key: bytes) -> tuple[Path, int] | None:
        """(segment file, offset) of the record of ``key`` (for tests and repairs)."""
        where = self._ensure_index().get(key)
        if where is None:
            return None
        name, off = self._where(where)
        return self.root / name, off

    def stats(self) -> dict:
        with self._lock:
            return {"root": str(self.root), "cap_mb": self.cap_bytes / 2**20, "written": self.written,
                    "written_mb": self.written_bytes / 2**20, "reads": self.reads, "damaged": self.damaged,
                    "refused": self.refused, "evicted": self.evicted, "full": self.full,
                    "segments_written": len(self._own)}


def _read_record(fd: int, off: int, key: bytes) -> np.ndarray | None:
    magic, fmt, _, h, w, c, crc, stored = HEADER.unpack(os.pread(fd, HEADER.size, off))
    if not _header_ok(magic, fmt, h, w, c) or stored != key:
        return None
    buf = bytearray(_payload_size(h, w, c))
    if os.preadv(fd, [buf], off + HEADER.size) != len(buf) or zlib.crc32(buf) & 0xFFFFFFFF != crc:
        return None
    arr = np.frombuffer(buf, np.uint8)
    return arr.reshape((h, w, c) if c else (h, w))


_SHARED: dict[tuple[str, int], SpillStore] = {}
_SHARED_LOCK = threading.Lock()


def open_spill() -> SpillStore | None:
    """The store runs use, or None when ``HOTDOG_DECODED_SPILL_MB=0`` turns spilling off.
    One per folder and cap in a process, so the segments' headers are read once, not by
    every dataset's store."""
    root, cap = default_root(), cap_bytes_from_env()
    if cap == 0:
        return None
    with _SHARED_LOCK:
        store = _SHARED.get((str(root), cap))
        if store is None:
            store = _SHARED[(str(root), cap)] = SpillStore(root, cap)
        return store
