"""The one long-lived thread that runs MXNet forward passes for short-lived callers.

Why: MXNet 1.9 keeps per-thread native memory (oneDNN/engine thread-locals) that is never
returned when a thread exits. Measured here: every new thread that runs one
EfficientNet-Lite0 forward at 224 px costs ~40-70 MB of resident memory for good, one that
runs a short training ~15 MB. Streamlit runs each script rerun in a new thread, so every
forward pass the app asks for goes through :func:`mx_call` (trainings run on the job
manager's own long-lived thread, see :mod:`hotdog.jobs`).

Module state: one executor, created on first use (documented process-wide cache).
"""

from __future__ import annotations

import concurrent.futures
import threading

THREAD_PREFIX = "hotdog-mx"
_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def mx_call(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` on the process-wide MXNet thread and return its result
    (exceptions propagate). Calls made on that thread run directly (no deadlock)."""
    global _executor
    if threading.current_thread().name.startswith(THREAD_PREFIX):
        return fn(*args, **kwargs)
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_PREFIX)
        ex = _executor
    return ex.submit(fn, *args, **kwargs).result()
