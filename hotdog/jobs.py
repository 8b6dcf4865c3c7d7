"""One background training per process, for the app (Streamlit reruns its script on every
click, so the training must live outside the script run and be watchable from any rerun).

    job = job_manager()              # the process-wide manager (documented global)
    run_id = job.start(config)       # TrainingBusyError if a training already runs
    job.current()                    # JobState snapshot: progress, epochs, result, error
    job.stop()                       # cooperative: the loop stops at the next batch

``start`` checks the data folder and the source name and creates the run in the store
before it returns, so those errors (and a read-only or full runs folder) reach the caller
at once instead of surfacing later in a background thread.

Why long-lived threads: MXNet 1.9 keeps per-thread native memory (oneDNN/engine
thread-locals) that is never returned when a thread exits. Measured here: every new thread
that runs one EfficientNet-Lite0 forward at 224 px costs ~40-70 MB of resident memory for
good, one that runs a short training ~15 MB. Streamlit runs each script rerun in a new
thread, so all MXNet work of the app must go through the same few long-lived threads:
trainings run on the job manager's single worker thread, forward passes on the
``mx_call`` thread (used by ``Predictor`` and ``evaluate``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass, field

from hotdog.errors import TrainingBusyError

log = logging.getLogger(__name__)


@dataclass
class JobState:
    """What the UI shows. ``state`` is "idle", "running", "stopping" or the run's end state
    ("finished", "stopped", "diverged", "failed")."""

    state: str = "idle"
    run_id: str | None = None
    run_dir: str | None = None
    config: object | None = None
    progress: object | None = None  # latest BatchProgress
    epochs: list = field(default_factory=list)  # EpochMetrics so far
    result: object | None = None  # TrainResult once done
    error: str | None = None
    started: float | None = None
    ended: float | None = None

    @property
    def running(self) -> bool:
        return self.state in ("running", "stopping")

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("state", "run_id", "run_dir", "error", "started", "ended")}
        d["config"] = self.config.to_dict() if self.config is not None else None
        d["progress"] = dataclasses.asdict(self.progress) if self.progress is not None else None
        d["epochs"] = [e.to_dict() for e in self.epochs]
        d["result"] = self.result.to_dict() if self.result is not None else None
        return d


_MX_THREAD_PREFIX = "hotdog-mx"
_mx_executor: concurrent.futures.ThreadPoolExecutor | None = None
_mx_executor_lock = threading.Lock()


def mx_call(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` on the process-wide MXNet inference thread and return its
    result (exceptions propagate). Use it for any forward pass requested from short-lived
    threads (Streamlit reruns); see the module docstring for why."""
    global _mx_executor
    if threading.current_thread().name.startswith(_MX_THREAD_PREFIX):
        return fn(*args, **kwargs)
    with _mx_executor_lock:
        if _mx_executor is None:
            _mx_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=_MX_THREAD_PREFIX)
        ex = _mx_executor
    return ex.submit(fn, *args, **kwargs).result()


class TrainingJob:
    """Runs ``hotdog.train.train`` on one long-lived background thread, one run at a time."""

    def __init__(self, runs_dir: str | os.PathLike | None = None):
        self.runs_dir = runs_dir
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._future: concurrent.futures.Future | None = None
        self._stop = threading.Event()
        self._state = JobState()

    def start(self, config, runs_dir: str | os.PathLike | None = None) -> str:
        from hotdog import data, models
        from hotdog.runs import RunStore, mark_active
        from hotdog.train import resolve_devices

        with self._lock:
            if self._future is not None and not self._future.done():
                raise TrainingBusyError(
                    f"training run {self._state.run_id} is already running in this process; "
                    "stop it or wait for it to finish before starting another")
            # Fail fast, in the caller's thread, on what can be checked cheaply.
            models.get_spec(config.source)
            resolve_devices(config.devices)
            data.load_splits(config.data_root)
            store = RunStore(runs_dir if runs_dir is not None else self.runs_dir)
            run_id, run_dir = store.create(config)
            self._stop = threading.Event()
            self._state = JobState(state="running", run_id=run_id, run_dir=str(run_dir), config=config,
                                   started=time.time())
            try:
                if self._executor is None:
                    self._executor = concurrent.futures.ThreadPoolExecutor(
                        max_workers=1, thread_name_prefix="hotdog-train")
                self._future = self._executor.submit(self._work, config, store.root, run_id, self._stop)
            except RuntimeError as err:  # cannot start a thread: the run must not look alive
                mark_active(run_id, False)
                store.write_status(run_id, "failed", f"could not start the training thread: {err}")
                self._state = JobState(state="failed", run_id=run_id, error=str(err))
                raise
            return run_id

    def _work(self, config, runs_root, run_id, stop_event):
        from hotdog.train import train

        def on_batch(p):
            self._state.progress = p

        def on_epoch(m):
            self._state.epochs = self._state.epochs + [m]

        try:
            result = train(config, on_batch=on_batch, on_epoch=on_epoch, stop_event=stop_event,
                           runs_dir=runs_root, run_id=run_id)
        except BaseException as err:  # noqa: BLE001 - a background thread must report, not die silently
            log.warning("training run %s failed: %s", run_id, err)
            with self._lock:
                self._state.state = "failed"
                self._state.error = str(err) or type(err).__name__
                self._state.ended = time.time()
            return
        with self._lock:
            self._state.result = result
            self._state.epochs = list(result.epochs)
            self._state.state = result.status
            self._state.error = result.message if result.status in ("diverged", "failed") else None
            self._state.ended = time.time()

    def stop(self, wait: float | None = None) -> bool:
        """Ask the running training to stop at its next batch; True if none is running (any more)."""
        with self._lock:
            fut = self._future
            if fut is None or fut.done():
                return True
            self._stop.set()
            if self._state.state == "running":
                self._state.state = "stopping"
        if wait is not None:
            concurrent.futures.wait([fut], timeout=wait)
        return fut.done()

    def wait(self, timeout: float | None = None) -> JobState:
        fut = self._future
        if fut is not None:
            concurrent.futures.wait([fut], timeout=timeout)
        return self.current()

    def is_running(self) -> bool:
        fut = self._future
        return fut is not None and not fut.done()

    def close(self, wait: bool = True) -> None:
        """Stop any training and end the worker thread (tests; the app never needs it)."""
        self.stop()
        with self._lock:
            ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=wait)

    def current(self) -> JobState:
        """A snapshot (safe to read while the training thread keeps updating)."""
        with self._lock:
            s = self._state
            return dataclasses.replace(s, epochs=list(s.epochs))


_manager: TrainingJob | None = None
_manager_lock = threading.Lock()


def job_manager() -> TrainingJob:
    """The process-wide TrainingJob (documented global: one training per process)."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = TrainingJob()
        return _manager
