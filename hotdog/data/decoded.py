"""The store of decoded photos (HWC uint8 arrays): in memory when they fit, else on disk.

``ImageListDataset`` used to keep every decoded photo for the whole run: ~0.26 MB per photo
at 256 px, so memory grew with the data set (3,000 photos ~0.8 GB, 100,000 ~26 GB). This
store keeps at most ``cap_bytes`` of them in memory. A small set (hotdog-mini: ~65 MB at
224 px) fits whole and nothing changes for it.

A set that will not fit is not kept in memory at all: datasets announce how many photos
they will put (:meth:`DecodedCache.expect`), and once the photos seen so far project past
the cap, every further photo goes to the on-disk spill (:mod:`hotdog.data.spill`), read back
with a plain file read. Memory then stays flat however large the set (an LRU would fill the
cap and, over a shuffled pass, hit about cap / N of the time: memory and churn for nothing).
With spilling off (``HOTDOG_DECODED_SPILL_MB=0``) or refused (its cap, a full disk) photos
are kept in memory while they fit and never evicted (a fixed subset, no churn); the rest is
decoded again at each use.

The cap: ``HOTDOG_DECODED_CACHE_MB`` (default 256 MB, see ``DEFAULT_CAP_MB``); the memory
planner (``hotdog.memory``) counts decoded photos up to it, which stays an upper bound. The
store is thread-safe (``preload`` decodes on threads); DataLoader worker processes get a
copy-on-write copy of it when they fork, spawned ones the same spill folder.
"""

from __future__ import annotations

import threading

import numpy as np

from hotdog.data.spill import entry_key, mb_from_env, open_spill

CAP_ENV = "HOTDOG_DECODED_CACHE_MB"
# Enough for hotdog-mini (250 photos, ~65 MB) and a third of the chapter's hotdog.zip at
# 224 px; a larger set is spilled to disk.
DEFAULT_CAP_MB = 256
# Photos seen before the projection (mean size x photos expected) decides memory or disk.
SAMPLE_PHOTOS = 8
_FROM_ENV = "env"  # a string: it survives pickling into spawned workers


def default_cap_bytes() -> int:
    """The cap from ``HOTDOG_DECODED_CACHE_MB`` (an unreadable or negative value: the default)."""
    return mb_from_env(CAP_ENV, DEFAULT_CAP_MB)


class DecodedCache:
    """Key -> decoded array, at most ``cap_bytes`` in memory (see the module docstring).
    ``cap_bytes=None``: the environment's cap; 0 keeps nothing in memory. ``spill``: a
    :class:`hotdog.data.spill.SpillStore`, None for none, default the environment's (opened
    only when a set does not fit). Only keys ``(path, min_side, max_pixels)`` (those of
    ``ImageListDataset``) are spilled."""

    def __init__(self, cap_bytes: int | None = None, spill=_FROM_ENV):
        self.cap_bytes = default_cap_bytes() if cap_bytes is None else max(0, int(cap_bytes))
        self._spill_arg = spill
        self._spill = None if spill == _FROM_ENV else spill
        self._items: dict = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._on_disk: set = set()  # keys held in memory that were read from the spill
        self._expected: set = set()  # keys datasets will put (emptied once the set spills)
        self._offered = 0
        self._offered_bytes = 0
        self.spilling = False
        self.hits = self.spill_hits = self.misses = self.spilled = self.not_kept = 0

    def __getstate__(self):
        # Pickled into spawned DataLoader workers: they start with no photos in memory (the
        # lock cannot be pickled, and shipping the photos would cost more than decoding) but
        # read the same spill folder.
        return {"cap_bytes": self.cap_bytes, "spill": self._spill_arg, "spilling": self.spilling}

    def __setstate__(self, state):
        self.__init__(state["cap_bytes"], state["spill"])
        self.spilling = state["spilling"]

    def expect(self, keys) -> None:
        """These keys will be put (a dataset's photos; datasets sharing the store over the
        same files count once): lets the store tell early whether the set fits in memory."""
        with self._lock:
            if not self.spilling:
                self._expected.update(keys)

    def _store(self):
        if self._spill is None and self._spill_arg == _FROM_ENV:
            self._spill = open_spill()
            self._spill_arg = self._spill
        return self._spill

    @staticmethod
    def _entry(key) -> bytes | None:
        # Not memoised: a few µs per use, and a memo would cost ~300 bytes a photo
        if isinstance(key, tuple) and len(key) == 3:
            return entry_key(*key)
        return None

    def get(self, key) -> np.ndarray | None:
        """The photo from memory, else from the spill (also one an earlier run spilled)."""
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self.hits += 1
                return arr
            store = self._store()
        entry = self._entry(key) if store is not None else None
        arr = store.read(entry) if entry is not None else None
        if arr is None:
            with self._lock:
                self.misses += 1
            return None
        with self._lock:
            self.spill_hits += 1
            spilling = self.spilling
        if not spilling:  # a set that may fit: into memory like a fresh decode
            self._place(key, arr, on_disk=True)
        return arr

    def put(self, key, arr: np.ndarray) -> None:
        """Keep a freshly decoded photo: in memory while the set fits, else on disk."""
        self._place(key, arr, on_disk=False)

    def _place(self, key, arr: np.ndarray, on_disk: bool) -> None:
        size = int(arr.nbytes)
        with self._lock:
            if key in self._items:
                return
            self._offered += 1
            self._offered_bytes += size
            held: list = []
            if not self.spilling and self._overflows(size):
                self.spilling = self._store() is not None
                if self.spilling:
                    mean = self._offered_bytes / self._offered
                    self._spill.reserve(max(0, len(self._expected) - self._offered) + len(self._items) + 1, mean)
                    self._expected = set()
                    # the few seen before the decision go on disk too (the next run finds them)
                    held = [(k, a) for k, a in self._items.items() if k not in self._on_disk]
                    self._on_disk = set()
            if not self.spilling:
                # no spill: a fixed subset, evicting nothing (no churn)
                if self._keep_if_it_fits(key, arr) and on_disk:
                    self._on_disk.add(key)
                return
        for k, a in held:
            entry = self._entry(k)
            if entry is not None and self._spill.write(entry, a):
                with self._lock:
                    self.spilled += 1
        if on_disk:
            return
        entry = self._entry(key)
        if entry is not None and self._spill.write(entry, arr):
            with self._lock:
                self.spilled += 1
            return
        with self._lock:
            self._keep_if_it_fits(key, arr)  # the disk refused it

    def _keep_if_it_fits(self, key, arr: np.ndarray) -> bool:
        if self._bytes + arr.nbytes <= self.cap_bytes:
            self._items[key] = arr
            self._bytes += int(arr.nbytes)
            return True
        self.not_kept += 1
        return False

    def _overflows(self, size: int) -> bool:
        """This photo does not fit, or (after a few) the projection says the set will not."""
        if self._bytes + size > self.cap_bytes:
            return True
        if self._offered < SAMPLE_PHOTOS:
            return False
        mean = self._offered_bytes / self._offered
        return self._bytes + size + mean * max(0, len(self._expected) - self._offered) > self.cap_bytes

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes of the photos held in memory now (never above ``cap_bytes``)."""
        with self._lock:
            return self._bytes

    def stats(self) -> dict:
        with self._lock:
            out = {"cap_mb": self.cap_bytes / 2**20, "held_mb": self._bytes / 2**20, "photos": len(self._items),
                   "hits": self.hits, "spill_hits": self.spill_hits, "misses": self.misses,
                   "spilling": self.spilling, "spilled": self.spilled, "not_kept": self.not_kept}
        if self._spill is not None:
            out["spill"] = self._spill.stats()
        return out
