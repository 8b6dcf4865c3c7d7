"""One background training per process, for the app (Streamlit reruns its script on every
click, so the training must live outside the script run and be watchable from any rerun).

    job = job_manager()              # the process-wide manager (documented global)
    run_id = job.start([config])     # TrainingBusyError if a training already runs
    job.current()                    # JobState snapshot: progress, epochs, result, error
    job.stop()                       # cooperative: the loop stops at the next batch

``start`` takes a list of configs (the chapter's comparison is fine-tuning, then scratch):
they run one after the other, driven by one long-lived thread, and keep going when the
browser tab is closed. Each training runs in a worker process (:mod:`hotdog.worker`, spawned,
reused while warm) so that a crash, an MXNet abort or an out-of-memory kill fails that run
(``failed``, with the reason) and never the server; ``TrainingJob(isolate=False)`` trains
on the thread itself (in-process, as the CLI does). It
checks the data folder and the source and creates the first run in the store before it
returns, so those errors (and a read-only or full runs folder) reach the caller at once.
The data set is scanned once per run, outside the lock, so other tabs never wait on it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

from hotdog.errors import HotdogError, TrainingBusyError
from hotdog.callbacks import PHASES

log = logging.getLogger(__name__)


@dataclass
class JobState:
    """What the UI shows. ``state`` is "idle", "running", "stopping" or the run's end state
    ("finished", "stopped", "diverged", "failed"). ``pending`` counts configs still queued."""

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
    pending: int = 0
    run_ids: list = field(default_factory=list)  # every run this job started, in order
    owner: str | None = None  # who started it (the app: a browser session); only they may stop it
    # A sweep (hotdog.sweeps): {"sweep_id", "total": points in the sweep, "points": the point
    # number (1-based) of each queued config, in order}; None for plain trainings.
    sweep: dict | None = None
    job_started: float | None = None  # when start() was called (``started`` is per run)
    # The current run's start-up steps so far (callbacks.PHASES): name -> (done, total), in order
    phases: dict = field(default_factory=dict)

    def owned_by(self, owner: str | None) -> bool:
        return self.owner is None or self.owner == owner

    @property
    def running(self) -> bool:
        return self.state in ("running", "stopping") or self.pending > 0


class TrainingJob:
    """Runs ``hotdog.train.train`` on one long-lived background thread, one run at a time."""

    def __init__(self, runs_dir: str | os.PathLike | None = None, isolate: bool = True):
        self.runs_dir = runs_dir
        self.isolate = isolate
        self._worker = None  # hotdog.worker.Worker, made on the first isolated run
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._future: concurrent.futures.Future | None = None
        self._stop = threading.Event()
        self._state = JobState()

    def _busy_error(self) -> TrainingBusyError:
        more = f" ({self._state.pending} more queued)" if self._state.pending else ""
        return TrainingBusyError(f"training run {self._state.run_id} is already running in this server{more}; "
                                 "stop it or wait for it to finish before starting another")

    def start(self, configs, runs_dir: str | os.PathLike | None = None, owner: str | None = None, *,
              tags: Sequence[dict] | None = None, continue_on: Sequence[str] = (),
              sweep: dict | None = None) -> str:
        """Start ``configs`` (one config or a list) one after the other; returns the first run id.
        ``owner`` (the app passes its browser session) is the only one :meth:`stop` obeys.
        ``tags``: one dict per config, recorded in its config.json (``train.prepare``).
        A run that ends in a state other than "finished" drops the rest of the queue unless
        that state is in ``continue_on`` (a sweep passes ``("diverged",)``); Stop always ends
        the queue. ``sweep`` is shown as is in :class:`JobState` (progress "point 7/28")."""
        from hotdog.runs import RunStore, mark_active
        from hotdog.train import prepare

        configs = list(configs) if isinstance(configs, (list, tuple)) else [configs]
        if not configs:
            raise ValueError("nothing to train")
        tags = list(tags) if tags is not None else [{}] * len(configs)
        if len(tags) != len(configs):
            raise ValueError("give one tags dict per config")
        if self.is_running():
            raise self._busy_error()
        first = prepare(configs[0], tags=tags[0])  # slow (reads every photo header): outside the lock
        store = RunStore(runs_dir if runs_dir is not None else self.runs_dir)
        with self._lock:
            if self._future is not None and not self._future.done():
                raise self._busy_error()
            run_id, run_dir = store.create(first.record())
            self._stop = threading.Event()
            self._state = JobState(state="running", run_id=run_id, run_dir=str(run_dir), config=first.config,
                                   started=time.time(), pending=len(configs) - 1, run_ids=[run_id], owner=owner,
                                   sweep=sweep, job_started=time.time())
            try:
                if self._executor is None:
                    self._executor = concurrent.futures.ThreadPoolExecutor(
                        max_workers=1, thread_name_prefix="hotdog-train")
                self._future = self._executor.submit(self._work, first, list(zip(configs[1:], tags[1:])), store,
                                                     run_id, self._stop, tuple(continue_on))
            except RuntimeError as err:  # cannot start a thread: the run must not look alive
                mark_active(run_id, False)
                store.write_status(run_id, "failed", f"could not start the training thread: {err}")
                self._state = JobState(state="failed", run_id=run_id, error=str(err))
                raise
            return run_id

    def _update(self, **changes) -> None:
        with self._lock:
            for k, v in changes.items():
                setattr(self._state, k, v)

    def _work(self, prepared, rest: Sequence, store, run_id: str, stop_event: threading.Event,
              continue_on: tuple = ()) -> None:
        from hotdog.train import prepare

        def on_batch(p):
            if p.phase == "train":
                self._update(progress=p)
                return
            with self._lock:
                self._state.progress = p
                if p.phase in PHASES:  # the start-up checklist; not the check after training
                    self._state.phases = {**self._state.phases, p.phase: (p.batch, p.batches)}

        def on_epoch(m):
            with self._lock:
                self._state.epochs = self._state.epochs + [m]

        queue = list(rest)
        while True:
            try:
                result = self._train_one(prepared, store, run_id, on_batch, on_epoch, stop_event)
            except BaseException as err:  # noqa: BLE001 - a background thread must report, not die silently
                log.warning("training run %s failed: %s", run_id, err)
                self._update(state="failed", error=str(err) or type(err).__name__, ended=time.time(), pending=0)
                return
            with self._lock:
                s = self._state
                s.result, s.epochs, s.state = result, list(result.epochs), result.status
                s.error = result.message if result.status in ("diverged", "failed") else None
                s.ended = time.time()
                go_on = result.status == "finished" or (result.status in continue_on and not stop_event.is_set())
                if not go_on or not queue:  # stopped, diverged or failed: the rest is moot
                    s.pending = 0
                    return
            config, tags = queue.pop(0)
            try:
                prepared = prepare(config, tags=tags)
                run_id, run_dir = store.create(prepared.record())
            except HotdogError as err:
                self._update(state="failed", error=str(err), pending=0)
                return
            with self._lock:
                # Swapped in one step so readers never see "idle" between two runs.
                self._state = dataclasses.replace(
                    self._state, state="running", run_id=run_id, run_dir=str(run_dir), config=prepared.config,
                    progress=None, epochs=[], result=None, error=None, started=time.time(), ended=None, phases={},
                    pending=len(queue), run_ids=self._state.run_ids + [run_id])

    def _train_one(self, prepared, store, run_id: str, on_batch, on_epoch, stop_event: threading.Event):
        """One run: in the worker process (isolated) or on this thread; returns its TrainResult."""
        from hotdog.train import train

        if not self.isolate:
            return train(prepared.config, on_batch=on_batch, on_epoch=on_epoch, stop_event=stop_event,
                         runs_dir=store.root, run_id=run_id, prepared=prepared)
        from hotdog.runs import mark_active
        from hotdog.worker import Worker, WorkerDied

        if self._worker is None:
            self._worker = Worker()
        try:
            return self._worker.train(prepared, store.root, run_id, on_batch=on_batch, on_epoch=on_epoch,
                                      stop_event=stop_event)
        except WorkerDied as died:
            # The child could not record its end: the run is failed, with how it died.
            log.warning("training run %s: %s", run_id, died)
            try:
                store.write_status(run_id, "failed", str(died))
            except HotdogError as err:
                log.warning("could not record the failure of run %s: %s", run_id, err)
            raise
        finally:
            mark_active(run_id, False)  # store.create marked it ours; the child owned the loop

    def worker_pid(self) -> int | None:
        """The training worker process's id while it lives (tests, the server log)."""
        worker = self._worker
        return worker.pid if worker is not None else None

    def stop(self, wait: float | None = None, owner: str | None = None, force: bool = False) -> bool:
        """Ask the running training to stop at its next batch (and drop what is queued);
        True if none is running (any more). Only the owner that started it may stop it,
        unless ``force`` (an explicit, confirmed "stop someone else's run")."""
        with self._lock:
            fut = self._future
            if fut is None or fut.done():
                return True
            if not force and not self._state.owned_by(owner):
                raise TrainingBusyError(f"training run {self._state.run_id} was started by another session; "
                                        "only that session can stop it")
            self._stop.set()
            self._state.pending = 0
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
        self.stop(force=True)
        with self._lock:
            ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=wait)
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def current(self) -> JobState:
        """A snapshot (safe to read while the training thread keeps updating)."""
        with self._lock:
            s = self._state
            return dataclasses.replace(s, epochs=list(s.epochs), run_ids=list(s.run_ids))


_manager: TrainingJob | None = None
_manager_lock = threading.Lock()


def job_manager() -> TrainingJob:
    """The process-wide TrainingJob (documented global: one training per process)."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = TrainingJob()
        return _manager
