"""The persistent frozen-feature cache: backbone features on disk, reused across runs.

A frozen run (and the head warm-up of a fine-tuning run, and every frozen point of a sweep)
trains only the output layer on the backbone's features of each photo. Those features depend
on nothing the run trains, so they are computed once and kept under
``HOTDOG_HOME/cache/features`` (``paths.cache_root``); a second frozen run on the same photos
reads them back instead of running the backbone (bench ``cached_rerun_speedup``).

**Key.** A :class:`FeatureGroup` holds what the features of *one photo* depend on: the SHA-1
of the source network's weights as loaded (not its name: another ``.params`` file is another
network), the preprocessing (input size, resize, mean, std), the device kind (CPU runs MXNet's
fused copy of the backbone, equal to 1e-4), the cache format and the view: ``plain`` (the
deterministic test transform) or ``aug<K>-seed<S>`` (K augmented views drawn from the run's
seed, in the order of the photos). Within a group a photo is its file's content SHA-1, so a
renamed or moved photo is still found, and an edited one is not.

**Entries.** One entry is a block: ``<group>/<block>.npy`` (float32 rows, one per photo and
view, memory-mapped on read) plus ``<block>.json`` (rows, dim, dtype, CRC-32 of the data, the
photos' content hashes), where ``<block>`` hashes the group and the ordered photo hashes, so a
rerun on the same data finds its block in one look-up. When the data set changed (one photo
replaced, some added), the rows of unchanged photos are taken from the group's other blocks
(``plain`` views only: an augmented view depends on the random draws of the photos before it)
and only the new photos go through the backbone; the result is stored as a new block.

**Safety.** Writers hold one lock (``fileio.file_lock``) and write each file to a temp file,
fsync and rename (``fileio.atomic_path``), data first, description last: a reader sees a whole
entry or none. Readers take no lock; they check the description against the data (shape,
dtype, CRC-32 over every byte), so a truncated or damaged entry is recomputed, never used.
A ``kill -9`` leaves at most a temp file (ignored, removed at the next write, which holds the
lock every writer holds while its files are half-made) or data without a description (likewise).

**Cap.** ``HOTDOG_FEATURE_CACHE_MB`` (default 2048; 0 turns the cache off). Every read touches
the entry's description (its mtime is the last use); after every write the least recently
used entries are removed until the total fits the cap.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
import zlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)

CAP_ENV = "HOTDOG_FEATURE_CACHE_MB"
DIR_ENV = "HOTDOG_FEATURE_CACHE_DIR"
DEFAULT_CAP_MB = 2048
FORMAT = 1

_ROOT_OVERRIDE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("hotdog_featcache_root", default=None)


def cap_bytes_from_env() -> int:
    from hotdog.data.spill import mb_from_env

    return mb_from_env(CAP_ENV, DEFAULT_CAP_MB)


def default_root() -> Path:
    """:func:`using_root`'s folder, else ``HOTDOG_FEATURE_CACHE_DIR`` (e.g. a bigger disk),
    else ``HOTDOG_HOME/cache/features``."""
    from hotdog import paths

    override = _ROOT_OVERRIDE.get()
    if override is not None:
        return override
    env = os.environ.get(DIR_ENV, "").strip()
    return Path(env).expanduser() if env else paths.cache_root() / "features"


@contextlib.contextmanager
def using_root(root: str | os.PathLike) -> Iterator[Path]:
    """Within this block (this thread/context), runs use the cache at ``root`` (the bench
    measures a cold and a warm cache without touching the user's)."""
    token = _ROOT_OVERRIDE.set(Path(root))
    try:
        yield Path(root)
    finally:
        _ROOT_OVERRIDE.reset(token)


# ---------------------------------------------------------------------------------- keys

# (path, size, mtime_ns, inode) -> SHA-1 of the content: a sweep hashes the same files once.
_HASH_MEMO: dict[tuple, str] = {}
_HASH_MEMO_MAX = 200_000
_HASH_LOCK = threading.Lock()


def content_hash(path: str | os.PathLike) -> str | None:
    """SHA-1 of the file's bytes, or None when it cannot be read (then never a cache hit)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    memo_key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _HASH_LOCK:
        hit = _HASH_MEMO.get(memo_key)
    if hit is not None:
        return hit
    h = hashlib.sha1()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    digest = h.hexdigest()
    with _HASH_LOCK:
        if len(_HASH_MEMO) >= _HASH_MEMO_MAX:
            _HASH_MEMO.clear()
        _HASH_MEMO[memo_key] = digest
    return digest


def weights_hash(arrays: dict[str, np.ndarray]) -> str:
    """SHA-1 over a network's weights by name (what the features are computed with)."""
    h = hashlib.sha1()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def source_weights_hash(source: str) -> str:
    from hotdog import models

    return weights_hash(models.source_weights(source))


@dataclasses.dataclass(frozen=True)
class FeatureGroup:
    """What one photo's features depend on, besides the photo (see the module docstring)."""

    weights_sha1: str
    input_size: int
    resize: int
    mean: tuple
    std: tuple
    device: str  # "cpu" or "gpu"
    view: str = "plain"  # or "aug<K>-seed<S>"
    format: int = FORMAT

    @classmethod
    def of(cls, weights_sha1: str, pre, device: str, view: str = "plain") -> "FeatureGroup":
        return cls(weights_sha1, int(pre.input_size), int(pre.resize), tuple(float(v) for v in pre.mean),
                   tuple(float(v) for v in pre.std), str(device), view)

    def augmented(self, views: int, seed: int) -> "FeatureGroup":
        return dataclasses.replace(self, view=f"aug{int(views)}-seed{int(seed)}")

    @property
    def rows_reusable(self) -> bool:
        return self.view == "plain"

    def digest(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:20]


def block_name(group: FeatureGroup, hashes: Sequence[str]) -> str:
    h = hashlib.sha1(group.digest().encode() + b"\0")
    for x in hashes:
        h.update(x.encode() + b"\n")
    return h.hexdigest()[:32]


def _crc(arr: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(arr)).cast("B")) & 0xFFFFFFFF


# --------------------------------------------------------------------------------- store

@dataclasses.dataclass
class CacheStats:
    entries: int
    bytes: int
    cap_bytes: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class FeatureStore:
    """Blocks of feature rows under ``root``, at most ``cap_bytes`` in all (LRU)."""

    def __init__(self, root: str | os.PathLike | None = None, cap_bytes: int | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.cap_bytes = cap_bytes_from_env() if cap_bytes is None else max(0, int(cap_bytes))

    # -- reading
    def _group_dir(self, group: FeatureGroup) -> Path:
        return self.root / group.digest()

    def _read(self, meta_path: Path, expect_group: FeatureGroup | None = None) -> tuple[dict, np.ndarray] | None:
        """(description, rows memory-mapped) of one entry, or None when it is missing,
        unreadable or does not match its description (then it is never used)."""
        try:
            meta = json.loads(meta_path.read_text())
            data_path = meta_path.with_suffix(".npy")
            arr = np.load(data_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, UnicodeDecodeError) as err:
            if meta_path.exists():
                log.warning("feature cache entry %s is unreadable (%s); recomputing", meta_path.stem, err)
            return None
        try:
            ok = (isinstance(meta, dict) and meta.get("format") == FORMAT
                  and arr.dtype == np.float32 and arr.ndim == 2
                  and list(arr.shape) == [int(meta["rows"]), int(meta["dim"])]
                  and int(meta["rows"]) == len(meta["hashes"]) * int(meta.get("views", 1))
                  and (expect_group is None or meta.get("group") == expect_group.digest())
                  and _crc(arr) == int(meta["crc32"]))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            log.warning("feature cache entry %s does not match its checksum or shape; recomputing", meta_path.stem)
            return None
        with contextlib.suppress(OSError):
            os.utime(meta_path)  # last use, for LRU eviction
        return meta, arr

    def load(self, group: FeatureGroup, hashes: Sequence[str | None]) -> np.ndarray | None:
        """The block of exactly these photos (in this order), verified, or None."""
        if any(h is None for h in hashes):
            return None
        got = self._read(self._group_dir(group) / (block_name(group, hashes) + ".json"), group)
        if got is None or got[0]["hashes"] != list(hashes):
            return None
        return got[1]

    def find_rows(self, group: FeatureGroup, hashes: Sequence[str | None]) -> dict[int, np.ndarray]:
        """Position -> row, for the photos any verified block of ``group`` holds (plain
        views only; newest blocks first)."""
        want: dict[str, list[int]] = {}
        for i, h in enumerate(hashes):
            if h is not None:
                want.setdefault(h, []).append(i)
        found: dict[int, np.ndarray] = {}
        if not group.rows_reusable or not want:
            return found
        metas = sorted(self._group_dir(group).glob("*.json"), key=_mtime, reverse=True)
        for meta_path in metas:
            if not want:
                break
            got = self._read(meta_path, group)
            if got is None:
                continue
            meta, arr = got
            for row, h in enumerate(meta["hashes"]):
                for i in want.pop(h, ()):
                    found[i] = arr[row]
        return found

    # -- writing
    def save(self, group: FeatureGroup, hashes: Sequence[str], rows: np.ndarray, views: int = 1) -> bool:
        """Store ``rows`` (``views * len(hashes)`` x dim) as the block of these photos; False
        when it is larger than the cap or the disk refuses (the run goes on without it)."""
        from hotdog.errors import StorageError
        from hotdog.fileio import atomic_path, atomic_write_json, file_lock

        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[0] != len(hashes) * views or any(h is None for h in hashes):
            raise ValueError(f"feature rows {rows.shape} do not match {len(hashes)} photos x {views} views")
        if rows.nbytes > self.cap_bytes:
            return False
        gdir = self._group_dir(group)
        name = block_name(group, hashes)
        meta = {"format": FORMAT, "group": group.digest(), "group_key": dataclasses.asdict(group),
                "rows": int(rows.shape[0]), "dim": int(rows.shape[1]), "dtype": "float32", "views": int(views),
                "crc32": _crc(rows), "hashes": list(hashes), "created": time.time()}
        try:
            gdir.mkdir(parents=True, exist_ok=True)
            with file_lock(self.root / ".lock", timeout=120):
                meta_path = gdir / (name + ".json")
                if self._read(meta_path, group) is None:  # another writer may have stored it meanwhile
                    with atomic_path(gdir / (name + ".npy")) as tmp:
                        with open(tmp, "wb") as fh:
                            np.save(fh, rows, allow_pickle=False)
                    atomic_write_json(meta_path, meta)
                self._evict_locked()
        except (StorageError, OSError) as err:
            log.warning("could not store features in the cache (%s); the run goes on without it", err)
            return False
        return True

    # -- size
    def _entries(self) -> list[tuple[float, int, Path]]:
        """(last use, bytes, description path) of every described entry."""
        out = []
        for meta_path in self.root.glob("*/*.json"):
            data_path = meta_path.with_suffix(".npy")
            try:
                size = meta_path.stat().st_size + data_path.stat().st_size
                out.append((_mtime(meta_path), size, meta_path))
            except OSError:
                continue
        return out

    def stats(self) -> CacheStats:
        entries = self._entries()
        return CacheStats(len(entries), sum(e[1] for e in entries), self.cap_bytes)

    def _evict_locked(self) -> None:
        """Remove crash leftovers, then the least recently used entries beyond the cap
        (the caller holds the lock)."""
        # Every writer holds the lock while its files exist half-made, so whatever looks
        # half-made now is a killed writer's leftover.
        for leftover in [*self.root.glob("*/.*.tmp"), *self.root.glob("*/*.npy")]:
            if leftover.suffix == ".tmp" or not leftover.with_suffix(".json").exists():
                with contextlib.suppress(OSError):
                    leftover.unlink()
        entries = sorted(self._entries())
        total = sum(e[1] for e in entries)
        for _, size, meta_path in entries:
            if total <= self.cap_bytes:
                break
            # The description first: from then on no reader trusts the data (a reader that
            # already mapped it keeps its pages: the file lives until it is unmapped).
            with contextlib.suppress(OSError):
                meta_path.unlink()
            with contextlib.suppress(OSError):
                meta_path.with_suffix(".npy").unlink()
            total -= size

    def clear(self) -> None:
        from hotdog.fileio import file_lock

        if not self.root.is_dir():
            return
        with file_lock(self.root / ".lock", timeout=120):
            for p in [*self.root.glob("*/*.json"), *self.root.glob("*/*.npy"), *self.root.glob("*/.*.tmp")]:
                with contextlib.suppress(OSError):
                    p.unlink()


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def open_store() -> FeatureStore | None:
    """The cache runs use, or None when ``HOTDOG_FEATURE_CACHE_MB=0`` turns it off."""
    store = FeatureStore()
    return store if store.cap_bytes > 0 else None


# ------------------------------------------------------------------- rows for a list of photos

@dataclasses.dataclass
class Rows:
    """Feature rows of the photos that could be read, in the order given."""

    array: np.ndarray  # float32, len(kept) x dim (x views stacked, see views)
    kept: list[int]  # positions of the photos these rows belong to (unreadable ones dropped)
    computed: int  # how many photos went through the backbone


Compute = Callable[[list[int]], tuple[np.ndarray, list[int]]]


def plain_rows(store: FeatureStore | None, group: FeatureGroup, paths: Sequence, compute: Compute) -> Rows:
    """Rows of ``paths`` (one per photo, plain view): the whole block from the cache when it
    holds it, else the cached photos' rows plus ``compute(missing positions)`` for the rest,
    stored as a new block. ``compute`` returns (rows, the positions it could read)."""
    hashes = [content_hash(p) for p in paths]
    if store is not None:
        block = store.load(group, hashes)
        if block is not None:
            return Rows(np.asarray(block), list(range(len(paths))), 0)
    found = store.find_rows(group, hashes) if store is not None else {}
    missing = [i for i in range(len(paths)) if i not in found]
    rows: dict[int, np.ndarray] = dict(found)
    if missing:
        new, ok = compute(missing)
        rows.update((i, new[j]) for j, i in enumerate(ok))
    kept = sorted(rows)
    if not kept:
        return Rows(np.zeros((0, 0), np.float32), [], len(missing))
    array = np.stack([np.asarray(rows[i], dtype=np.float32) for i in kept])
    if store is not None:
        store.save(group, [hashes[i] for i in kept], array)
    return Rows(array, kept, len(missing))


def view_rows(store: FeatureStore | None, group: FeatureGroup, paths: Sequence, views: int,
              compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
    """``views`` augmented views of ``paths`` (all readable), stacked view after view: the
    block from the cache, else ``compute()`` (stored). Returns (rows, from the cache)."""
    hashes = [content_hash(p) for p in paths]
    if store is not None:
        block = store.load(group, hashes)
        if block is not None:
            return np.asarray(block), True
    array = np.ascontiguousarray(compute(), dtype=np.float32)
    if store is not None and all(h is not None for h in hashes):
        store.save(group, hashes, array, views=views)
    return array, False
