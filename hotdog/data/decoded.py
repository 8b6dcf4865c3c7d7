"""A byte-capped, least-recently-used store of decoded photos (HWC uint8 arrays).

``ImageListDataset`` used to keep every decoded photo for the whole run: ~0.26 MB per photo
at 256 px, so memory grew with the data set (3,000 photos ~0.8 GB, 100,000 ~26 GB). This
store keeps at most ``cap_bytes`` of them; past the cap the least recently used photo is
dropped and decoded again when it is next needed. A small set (hotdog-mini: ~65 MB at 224 px)
fits whole, so nothing changes for it; a large one costs one decode per photo per epoch,
which on a CPU is a few ms against a training step of ~200 ms per photo.

The cap: ``HOTDOG_DECODED_CACHE_MB`` (default 256 MB, see ``DEFAULT_CAP_MB``). The store is
thread-safe (``preload`` decodes on threads); DataLoader worker processes get a copy-on-write
copy of it when they fork.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np

CAP_ENV = "HOTDOG_DECODED_CACHE_MB"
# Enough for hotdog-mini (250 photos, ~65 MB) and a third of the chapter's hotdog.zip at
# 224 px; past it a photo is decoded again per epoch (a few ms, vs ~200 ms of training step).
DEFAULT_CAP_MB = 256


def default_cap_bytes() -> int:
    """The cap from ``HOTDOG_DECODED_CACHE_MB`` (an unreadable or negative value: the default)."""
    raw = os.environ.get(CAP_ENV, "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_CAP_MB
    except ValueError:
        mb = DEFAULT_CAP_MB
    if not mb >= 0:  # negative or NaN
        mb = DEFAULT_CAP_MB
    return int(mb * 2**20)


class DecodedCache:
    """Key -> decoded array, at most ``cap_bytes`` in all (LRU). ``cap_bytes=None``: the
    environment's cap; 0 keeps nothing."""

    def __init__(self, cap_bytes: int | None = None):
        self.cap_bytes = default_cap_bytes() if cap_bytes is None else max(0, int(cap_bytes))
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __getstate__(self):
        # Pickled into spawned DataLoader workers: they start empty with the same cap (the
        # lock cannot be pickled, and shipping the photos would cost more than decoding).
        return {"cap_bytes": self.cap_bytes}

    def __setstate__(self, state):
        self.__init__(state["cap_bytes"])

    def get(self, key) -> np.ndarray | None:
        with self._lock:
            arr = self._items.get(key)
            if arr is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return arr

    def put(self, key, arr: np.ndarray) -> None:
        size = int(arr.nbytes)
        with self._lock:
            if size > self.cap_bytes:
                return
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= int(old.nbytes)
            self._items[key] = arr
            self._bytes += size
            while self._bytes > self.cap_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= int(dropped.nbytes)
                self.evictions += 1

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes of the photos held now (never above ``cap_bytes``)."""
        with self._lock:
            return self._bytes

    def stats(self) -> dict:
        with self._lock:
            return {"cap_mb": self.cap_bytes / 2**20, "held_mb": self._bytes / 2**20, "photos": len(self._items),
                    "hits": self.hits, "misses": self.misses, "evictions": self.evictions}
