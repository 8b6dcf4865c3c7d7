"""Trainings in a child process, so no training can take the app down.

The app's job manager (:mod:`hotdog.jobs`) hands each run to a :class:`Worker`: a fresh
interpreter started like multiprocessing's ``spawn`` (fork + exec: a process that has MXNet's
threads and engine state must never be forked and keep running) and reused between runs, so a warm worker
already holds the source model and MXNet's initialisation (README "Memory and isolation"
gives the start-up cost). A crash, an MXNet abort or an out-of-memory kill ends that
process, not the server: the job manager records the run as ``failed`` with the reason and
the next run gets a new worker.

It is started with ``subprocess`` and two inherited pipes wrapped as multiprocessing
``Connection`` objects rather than with ``multiprocessing.Process``: under Streamlit,
``sys.modules["__main__"]`` is the page script, which a ``spawn`` child would re-run. The
child inherits the parent's whole environment (``OMP_*``, ``MKL_*``, ``MXNET_*``,
``HOTDOG_HOME``...), so it computes with the same threads and stores where the app reads.

Messages (pickled over two one-way pipes):

* parent -> child: ``("train", prepared, runs_dir, run_id)``, ``("stop",)``, ``("exit",)``
* child -> parent: ``("batch", BatchProgress, rss_mb)``, ``("epoch", EpochMetrics)``,
  ``("done", TrainResult, idle_rss_mb)``, ``("failed", message, idle_rss_mb)``

A stop is a message: the child's receiver thread sets the run's ``stop_event`` and the loop
ends at its next batch, as in-process. The child writes the run store itself (status,
metrics, heartbeat, weights); the store's atomic writes make a death mid-write safe.

What a death tells (no ``dmesg`` needed, or possible without privileges): the exit code is
the signal. SIGKILL while the kernel's out-of-memory counter of our cgroup went up
(:func:`hotdog.memory.oom_kills`) is reported as "out of memory (killed by the kernel)";
SIGKILL without that counter (no cgroup, another kernel) but with the child's last reported
resident memory above ``OOM_SHARE`` of what was available when the run started is reported
as "probably out of memory"; any other SIGKILL as "killed (SIGKILL) by another process or
the kernel". An allocation failure under ``ulimit -v`` makes MXNet abort (SIGABRT) or raise
(then it is a normal ``failed`` with MXNet's message).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Callable

from hotdog.errors import HotdogError

log = logging.getLogger(__name__)

# A worker whose resident memory stays above this after a run (MXNet keeps freed blocks in
# its pools) is retired rather than kept warm, so an idle app does not sit on gigabytes.
KEEP_WARM_MAX_MB = 2500.0
OOM_SHARE = 0.8
POLL_SECONDS = 0.2


class WorkerDied(HotdogError):
    """The training process ended without reporting the run's end; ``str()`` says how."""


# ------------------------------------------------------------------------------- child side

def _child_entry() -> None:
    """``python -c ... _child_entry() IN_FD OUT_FD``: the worker process's main."""
    from hotdog import malloc_tuning, threads

    threads.apply("worker")  # the parent's decision, inherited through the environment
    malloc_tuning.apply()  # this process only trains; _release() hands memory back after each run
    inbox = Connection(int(sys.argv[1]), writable=False)
    outbox = Connection(int(sys.argv[2]), readable=False)
    _child_main(inbox, outbox)


def _child_main(inbox, outbox) -> None:
    """The worker process: receive runs, train them one at a time on this main thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C of the server is the parent's business
    logging.basicConfig(level=logging.INFO, format="worker %(process)d: %(levelname)s %(message)s")
    tasks: queue.Queue = queue.Queue()
    current: dict = {}

    def receive() -> None:
        while True:
            try:
                msg = inbox.recv()
            except (EOFError, OSError):  # the parent is gone: stop the run, then exit
                if current.get("stop") is not None:
                    current["stop"].set()
                tasks.put(None)
                return
            if msg[0] == "train":
                event = threading.Event()
                current["stop"] = event
                tasks.put((msg, event))
            elif msg[0] == "stop":
                if current.get("stop") is not None:
                    current["stop"].set()
            elif msg[0] == "exit":
                tasks.put(None)
                return

    threading.Thread(target=receive, name="hotdog-worker-inbox", daemon=True).start()
    from hotdog import memory
    from hotdog.train import train

    while True:
        item = tasks.get()
        if item is None:
            return
        (_, prepared, runs_dir, run_id), stop_event = item

        def on_batch(p):
            outbox.send(("batch", p, memory.rss_mb()))

        def on_epoch(m):
            outbox.send(("epoch", m))

        try:
            result = train(prepared.config, on_batch=on_batch, on_epoch=on_epoch, stop_event=stop_event,
                           runs_dir=runs_dir, run_id=run_id, prepared=prepared)
        except BaseException as err:  # noqa: BLE001 - train() recorded it as failed; report it
            _release()
            outbox.send(("failed", str(err) or type(err).__name__, memory.rss_mb()))
        else:
            _release()
            outbox.send(("done", result, memory.rss_mb()))


def _release() -> None:
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ------------------------------------------------------------------------------- parent side

def _signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


class Worker:
    """One training process, started on first use and reused while it stays small."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self._to_child = None
        self._from_child = None
        self.spawned_at: float | None = None
        self.runs = 0  # runs this process has trained

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.alive() else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.alive():
            return
        child_in, parent_out = os.pipe()
        parent_in, child_out = os.pipe()
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = f"import sys; sys.path.insert(0, {root!r}); from hotdog.worker import _child_entry; _child_entry()"
        try:
            proc = subprocess.Popen([sys.executable, "-c", code, str(child_in), str(child_out)],
                                    pass_fds=(child_in, child_out), stdin=subprocess.DEVNULL, close_fds=True)
        except BaseException:
            for fd in (child_in, parent_out, parent_in, child_out):
                os.close(fd)
            raise
        os.close(child_in)
        os.close(child_out)
        self.proc = proc
        self._to_child = Connection(parent_out, readable=False)
        self._from_child = Connection(parent_in, writable=False)
        self.spawned_at, self.runs = time.time(), 0

    def _join(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> None:
        """Ask the current run to stop at its next batch (a message; nothing is killed)."""
        self._send(("stop",))

    def _send(self, msg) -> bool:
        try:
            if self._to_child is not None:
                self._to_child.send(msg)
                return True
        except (OSError, ValueError, BrokenPipeError):
            pass
        return False

    def close(self, timeout: float = 10.0) -> None:
        """End the process: politely, then by force."""
        proc = self.proc
        if proc is None:
            return
        self._send(("exit",))
        self._join(timeout)
        if proc.poll() is None:
            proc.kill()
            self._join(timeout)
        for conn in (self._to_child, self._from_child):
            try:
                conn.close()
            except (OSError, AttributeError):
                pass
        self.proc = self._to_child = self._from_child = None

    def train(self, prepared, runs_dir, run_id: str, *, on_batch: Callable, on_epoch: Callable,
              stop_event: threading.Event):
        """Train one run in the worker; returns its TrainResult, raises HotdogError when the
        run failed (the child recorded it) and WorkerDied when the process ended without
        reporting (then nothing was recorded for the run's end: the caller records it)."""
        from hotdog import memory

        self.start()
        avail = memory.available()
        oom_before = memory.oom_kills()
        last_rss = memory.rss_mb(self.proc.pid)
        if not self._send(("train", prepared, str(runs_dir), run_id)):
            raise WorkerDied("the training process could not be reached")
        self.runs += 1
        stop_sent = False
        while True:
            if stop_event.is_set() and not stop_sent:
                self.stop()
                stop_sent = True
            try:
                ready = self._from_child.poll(POLL_SECONDS)
                msg = self._from_child.recv() if ready else None
            except (EOFError, OSError):
                msg = None
                ready = False
                self._join(5)
            if msg is not None:
                kind = msg[0]
                if kind == "batch":
                    last_rss = msg[2] if msg[2] is not None else last_rss
                    on_batch(msg[1])
                elif kind == "epoch":
                    on_epoch(msg[1])
                elif kind == "done":
                    self._maybe_retire(msg[2])
                    return msg[1]
                elif kind == "failed":
                    self._maybe_retire(msg[2])
                    raise HotdogError(msg[1])
                continue
            if self.proc.poll() is not None:
                reason = self._death_reason(oom_before, last_rss, avail)
                self.close(timeout=1)
                raise WorkerDied(reason)

    def _maybe_retire(self, idle_rss: float | None) -> None:
        if idle_rss is not None and idle_rss > KEEP_WARM_MAX_MB:
            log.info("training worker holds %.0f MB after its run: ending it (next run starts a new one)", idle_rss)
            self.close()

    def _death_reason(self, oom_before, last_rss, avail) -> str:
        from hotdog import memory

        code = self.proc.returncode
        rss = f"; it was using {last_rss / 1024:.1f} GB" if last_rss else ""
        if code is None or code >= 0:
            return f"the training process exited unexpectedly (exit code {code}){rss}"
        name = _signal_name(-code)
        if name == "SIGKILL":
            oom_after = memory.oom_kills()
            if oom_before is not None and oom_after is not None and oom_after > oom_before:
                return f"out of memory (killed by the kernel){rss}"
            room = (avail.mb + (last_rss or 0)) if avail is not None else None
            if room and last_rss and last_rss >= OOM_SHARE * room:
                return f"probably out of memory (killed by SIGKILL near the {room / 1024:.1f} GB available){rss}"
            return f"the training process was killed (SIGKILL) by another process or the kernel{rss}"
        if name == "SIGABRT":
            return f"the training process aborted (SIGABRT, often MXNet failing to allocate memory){rss}"
        return f"the training process was killed by {name}{rss}"
