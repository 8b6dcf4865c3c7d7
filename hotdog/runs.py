"""The run store: one folder per training run under ``HOTDOG_HOME/runs/<id>/``.

Layout of a run folder::

    config.json      the TrainConfig (written once, at creation)
    status.json      {"state", "message", "pid", "host", "pid_start", "heartbeat", "updated", ...}
    metrics.jsonl    one EpochMetrics JSON object per completed epoch, appended
    model.params     final weights (finished or stopped runs only)
    classes.json     the run's class names, in output order
    model.json       {"source", "input_size", "classes", "mode", ...}: what Predictor needs

Every JSON file is written atomically (temp file in the same folder, fsync, rename), so a
crash or ``kill -9`` leaves either the old or the new version, never half a file. A run is
created in a hidden temp folder and renamed into place only once its config and status are
on disk, so a read-only or full disk never leaves a half-made run behind.

A run whose owner process is gone (or whose heartbeat is too old, e.g. another host) is
reported as ``failed`` with a "stale" message; the files themselves are not rewritten by
readers, so listing never races with a live writer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotdog.errors import RunStoreError, StorageError
from hotdog.fileio import append_jsonl, atomic_path, atomic_write_json, fsync_dir, read_json, read_jsonl
from hotdog.paths import runs_root

STATES = ("running", "finished", "stopped", "diverged", "failed")
PARAMS_FILE = "model.params"

# A live run rewrites its heartbeat at least this often (see HEARTBEAT_EVERY); a reader
# that finds it much older assumes the owner died even when it cannot check the pid
# (another host, or a recycled pid).
HEARTBEAT_EVERY = 30.0
STALE_AFTER = 15 * 60.0

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Runs owned by a live training loop in *this* process (documented global state): a
# ``running`` status with our own pid but not listed here was left behind by a loop that
# could not record its end (e.g. the disk filled up), so it is stale too.
_ACTIVE: set[str] = set()
_ACTIVE_LOCK = threading.Lock()


def mark_active(run_id: str, active: bool = True) -> None:
    with _ACTIVE_LOCK:
        (_ACTIVE.add if active else _ACTIVE.discard)(run_id)


def is_active(run_id: str) -> bool:
    with _ACTIVE_LOCK:
        return run_id in _ACTIVE


# ---------------------------------------------------------------------------- process liveness

def _proc_start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (Linux), to tell a live owner from a recycled pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so split after its ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def pid_alive(pid: int, start: str | None = None) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return False
    if start is not None:
        now = _proc_start_time(pid)
        if now is not None and now != start:
            return False
    return True


def owner_fields() -> dict:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "pid_start": _proc_start_time(pid)}


def effective_status(status: dict, now: float | None = None, run_id: str | None = None) -> dict:
    """The status a reader should show: a ``running`` run whose owner is gone is ``failed`` (stale)."""
    status = dict(status)
    status["stale"] = False
    if status.get("state") != "running":
        return status
    now = time.time() if now is None else now
    dead = False
    reason = ""
    if status.get("host") in (None, socket.gethostname()):
        if not pid_alive(status.get("pid"), status.get("pid_start")):
            dead, reason = True, f"owner process {status.get('pid')} is gone"
        elif run_id is not None and status.get("pid") == os.getpid() and not is_active(run_id):
            dead, reason = True, "its training loop ended without recording a result"
    heartbeat = status.get("heartbeat")
    if not dead and isinstance(heartbeat, (int, float)) and now - heartbeat > STALE_AFTER:
        dead, reason = True, f"no heartbeat for {int(now - heartbeat)} s"
    if dead:
        status["state"] = "failed"
        status["stale"] = True
        status["message"] = f"stale: {reason} (the training was killed or crashed)"
    return status


# ---------------------------------------------------------------------------- records

@dataclass
class RunSummary:
    run_id: str
    status: str
    mode: str | None
    source: str | None
    test_acc: float | None
    created: float | None
    message: str = ""
    epochs_done: int = 0
    epochs: int | None = None
    freeze: bool | None = None
    lr: float | None = None
    lr_mult: float | None = None
    bn_mode: str | None = None
    data: str | None = None  # the data set's folder name
    data_root: str | None = None
    run_dir: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class RunRecord:
    run_id: str
    run_dir: Path
    config: dict
    metrics: list[dict]
    status: dict
    model: dict | None = None
    created: float | None = None

    @property
    def state(self) -> str:
        return self.status.get("state", "failed")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d


# ---------------------------------------------------------------------------- store

@contextlib.contextmanager
def _store_errors(what: str):
    """File errors inside the store are the store's errors (one type for callers to catch)."""
    try:
        yield
    except RunStoreError:
        raise
    except StorageError as err:
        raise RunStoreError(f"{what}: {err}") from err


class RunStore:
    """All runs under one folder (default ``runs_root()``, i.e. ``$HOTDOG_HOME/runs``)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else runs_root()

    # -- paths
    def run_dir(self, run_id: str) -> Path:
        if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id) or run_id.startswith("."):
            raise RunStoreError(f"invalid run id {run_id!r}")
        return self.root / run_id

    @staticmethod
    def new_run_id() -> str:
        return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)

    # -- create
    def create(self, config: Any, run_id: str | None = None) -> tuple[str, Path]:
        """Make a run folder holding config.json and a ``running`` status owned by this process."""
        cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunStoreError(f"cannot create the runs folder {self.root}: {err.strerror or err}") from err
        run_id = run_id or self.new_run_id()
        final = self.run_dir(run_id)
        if final.exists():
            raise RunStoreError(f"run {run_id} already exists in {self.root}")
        tmp = self.root / f".creating-{run_id}-{secrets.token_hex(3)}"
        now = time.time()
        try:
            try:
                tmp.mkdir()
            except OSError as err:
                raise RunStoreError(
                    f"cannot create a run in {self.root}: {err.strerror or err}"
                    " (is the folder read-only or the disk full?)"
                ) from err
            with _store_errors(f"cannot create run {run_id}"):
                atomic_write_json(tmp / "config.json", cfg)
                atomic_write_json(tmp / "status.json", {
                    "state": "running", "message": "starting", "created": now,
                    "heartbeat": now, "updated": now, **owner_fields(),
                })
            mark_active(run_id)  # the creator owns the run until it records an end state
            try:
                os.rename(tmp, final)
            except OSError as err:
                raise RunStoreError(f"cannot create run {run_id}: {err.strerror or err}") from err
        except BaseException:
            mark_active(run_id, False)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(self.root)
        return run_id, final

    # -- writers (used by the owner of a run)
    def write_status(self, run_id: str, state: str, message: str = "", **extra) -> dict:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        path = self.run_dir(run_id) / "status.json"
        try:
            old = read_json(path)
        except (OSError, ValueError):
            old = {}
        now = time.time()
        status = {**old, **extra, "state": state, "message": message, "heartbeat": now,
                  "updated": now, **owner_fields()}
        status.setdefault("created", now)
        with _store_errors(f"cannot record the status of run {run_id}"):
            atomic_write_json(path, status)
        return status

    def heartbeat(self, run_id: str, message: str | None = None) -> None:
        path = self.run_dir(run_id) / "status.json"
        try:
            status = read_json(path)
        except (OSError, ValueError):
            status = {"state": "running"}
        now = time.time()
        status["heartbeat"] = now
        status["updated"] = now
        if message is not None:
            status["message"] = message
        with _store_errors(f"cannot record the heartbeat of run {run_id}"):
            atomic_write_json(path, status)

    def append_metrics(self, run_id: str, row: Any) -> None:
        with _store_errors(f"cannot record the metrics of run {run_id}"):
            append_jsonl(self.run_dir(run_id) / "metrics.jsonl", row)

    def save_model(self, run_id: str, net, model_info: dict) -> None:
        """The trained weights, then model.json (what a Predictor needs, the one record of the
        run's classes): a run with model.json always has its weights."""
        run_dir = self.run_dir(run_id)
        try:
            with atomic_path(run_dir / PARAMS_FILE) as tmp:
                net.save_parameters(str(tmp))
            atomic_write_json(run_dir / "model.json", {**model_info, "params": PARAMS_FILE})
        except StorageError as err:
            raise RunStoreError(f"cannot save the weights of run {run_id}: {err}") from err

    # -- readers
    def exists(self, run_id: str) -> bool:
        try:
            return (self.run_dir(run_id) / "config.json").is_file()
        except RunStoreError:
            return False

    def load(self, run_id: str) -> RunRecord:
        d = self.run_dir(run_id)
        if not d.is_dir():
            raise RunStoreError(f"no run {run_id!r} in {self.root}")
        return load_run_dir(d)

    def list(self) -> list[RunSummary]:
        """Every run, newest first; an unreadable run is listed as failed, never raises."""
        if not self.root.is_dir():
            return []
        out = []
        for d in self.root.iterdir():
            if d.name.startswith(".") or not d.is_dir():
                continue
            out.append(_summarize(d))
        out.sort(key=lambda s: (s.created or 0.0, s.run_id), reverse=True)
        return out

    def delete(self, run_id: str) -> None:
        d = self.run_dir(run_id)
        if not d.is_dir():
            raise RunStoreError(f"no run {run_id!r} in {self.root}")
        try:
            status = effective_status(read_json(d / "status.json"), run_id=run_id)
        except (OSError, ValueError):
            status = {"state": "failed"}
        if status.get("state") == "running":
            raise RunStoreError(f"run {run_id} is still running; stop it before deleting it")
        # Rename first so a half-deleted run never shows up as a broken run in the list.
        trash = self.root / f".deleting-{run_id}-{secrets.token_hex(3)}"
        try:
            os.rename(d, trash)
        except OSError as err:
            raise RunStoreError(f"cannot delete run {run_id}: {err.strerror or err}") from err
        shutil.rmtree(trash, ignore_errors=True)


def load_run_dir(run_dir: str | os.PathLike) -> RunRecord:
    d = Path(run_dir)
    if not (d / "config.json").is_file():
        raise RunStoreError(f"{d} is not a training run (no config.json)")
    try:
        config = read_json(d / "config.json")
    except (OSError, ValueError) as err:
        raise RunStoreError(f"run {d.name}: unreadable config.json ({err})") from err
    try:
        raw_status = read_json(d / "status.json")
    except (OSError, ValueError) as err:
        raw_status = {"state": "failed", "message": f"unreadable status.json ({err})"}
    status = effective_status(raw_status, run_id=d.name)
    model = None
    if (d / "model.json").is_file():
        try:
            model = read_json(d / "model.json")
        except (OSError, ValueError):
            model = None
    return RunRecord(
        run_id=d.name, run_dir=d, config=config, metrics=read_jsonl(d / "metrics.jsonl")[0],
        status=status, model=model, created=raw_status.get("created"),
    )


def _summarize(d: Path) -> RunSummary:
    try:
        rec = load_run_dir(d)
    except RunStoreError as err:
        return RunSummary(run_id=d.name, status="failed", mode=None, source=None, test_acc=None,
                          created=None, message=str(err), run_dir=str(d))
    cfg = rec.config
    last = rec.metrics[-1] if rec.metrics else {}
    lr = cfg.get("lr")  # as recorded: configs are resolved before they are written
    return RunSummary(
        run_id=rec.run_id, status=rec.state, mode=cfg.get("mode"), source=cfg.get("source"),
        test_acc=last.get("test_acc"), created=rec.created, message=rec.status.get("message", ""),
        epochs_done=len(rec.metrics), epochs=cfg.get("epochs"), freeze=cfg.get("freeze"), lr=lr,
        lr_mult=cfg.get("lr_mult"), bn_mode=cfg.get("bn_mode"), data_root=cfg.get("data_root"),
        data=Path(cfg["data_root"]).name if cfg.get("data_root") else None, run_dir=str(d),
    )
