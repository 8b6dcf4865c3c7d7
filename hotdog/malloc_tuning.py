"""glibc malloc settings for processes that train: keep freed memory in the heap for reuse.

Why: MXNet 1.9.1 runs every op without a oneDNN kernel (``clip``, ``Pad``, ``slice_axis``)
on plain-layout copies of its oneDNN-blocked inputs, allocated afresh on every call. glibc
hands such large blocks out with ``mmap`` or from per-thread arenas that give memory back,
so each training step page-faults hundreds of MB of fresh zeroed memory (about 104,000
faults per step at batch 16, 224 px). One arena, no ``mmap`` and no trimming keep that
memory for reuse: 44 faults per step, 1.22x training img/s, peak RSS +7% (README "Training
speed and threads").

Applied only in processes that train: the training worker (:mod:`hotdog.worker`, which
calls ``malloc_trim`` after every run, so an idle worker still shrinks back: 397 MB after a
batch-16 run either way) and ``python -m hotdog`` (ends with its command). The app's
long-lived process keeps glibc's defaults, so its memory still goes back to the system. Must run before MXNet is imported
(its engine and OpenMP threads take an arena at their first allocation). A user's own
``MALLOC_*`` or ``GLIBC_TUNABLES`` setting wins: then nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from dataclasses import asdict, dataclass

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))


@dataclass(frozen=True)
class MallocTuning:
    applied: bool
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


_state: MallocTuning | None = None


def apply(environ=None) -> MallocTuning:
    """Set the training malloc settings once per process (later calls return the first
    outcome)."""
    global _state
    if _state is not None:
        return _state
    environ = os.environ if environ is None else environ
    _state = _decide_and_set(environ)
    return _state


def _decide_and_set(environ) -> MallocTuning:
    user = sorted(k for k in environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")
    if user:
        return MallocTuning(False, f"user setting {user[0]} kept")
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return MallocTuning(False, "not glibc")
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return MallocTuning(False, "mallopt unavailable")
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    failed = [param for param, value in SETTINGS if mallopt(param, value) != 1]
    if failed:
        return MallocTuning(False, f"mallopt refused parameter {failed[0]}")
    return MallocTuning(True, "one arena, no mmap, no trim")


def current() -> MallocTuning | None:
    return _state
