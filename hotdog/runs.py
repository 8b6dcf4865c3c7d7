"""The run store: one folder per training run under ``HOTDOG_HOME/runs/<id>/``.

Layout of a run folder::

    config.json      the TrainConfig (written once, at creation)
    status.json      {"state", "message", "pid", "host", "pid_start", "heartbeat", "updated", ...}
    metrics.jsonl    one EpochMetrics JSON object per completed epoch, appended
    model.params     final weights (finished or stopped runs only)
    model.json       {"source", "input_size", "classes", "preprocess", ...}: what Predictor
                     needs, and the one record of the run's classes (in output order)

Every JSON file is written atomically (temp file in the same folder, fsync, rename), so a
crash or ``kill -9`` leaves either the old or the new version, never half a file. A run is
created in a hidden temp folder and renamed into place only once its config and status are
on disk, so a read-only or full disk never leaves a half-made run behind.

A run whose owner process is gone (or whose heartbeat is too old, e.g. another host) is
reported as ``failed`` with a "stale" message; the files themselves are not rewritten by
readers, so listing never races with a live writer.

Every file is validated when read (:func:`check_status`, :func:`check_config`,
:func:`check_metrics_row`, :func:`check_model`): the store hands out only values of the
types and ranges it wrote. A run with a damaged file (not JSON, wrong types, out-of-range
numbers, model.json without its weights...) is listed with the reader-only state
``damaged`` and one sentence naming the file and what is wrong; :meth:`RunStore.list`
never raises and the other runs are untouched; :meth:`RunStore.load` raises a
RunStoreError with that sentence. One exception: a torn *last* line of ``metrics.jsonl``
(a crash mid-append, or a live writer caught mid-append) is skipped and reported in
``warning``, the run stays usable; a bad line anywhere else makes the run damaged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
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
from hotdog.fileio import append_jsonl, atomic_path, atomic_write_json, fsync_dir, loads_json, read_json
from hotdog.paths import runs_root

STATES = ("running", "finished", "stopped", "diverged", "failed")
# What a reader may see: a writer never writes "damaged", the store reports it for a run
# whose files are not what it wrote (RunSummary.message says which file and why).
DAMAGED = "damaged"
READ_STATES = STATES + (DAMAGED,)
PARAMS_FILE = "model.params"
# The best epoch's weights by validation accuracy (knob val_fraction; hotdog.best); model.json
# describes them under "best". PARAMS_FILE always holds the last epoch's (the chapter's).
BEST_PARAMS_FILE = "model-best.params"
WEIGHTS = ("last", "best")

# The names the engine writes (hotdog.settings.SOURCES / MODES / BN_MODES; a test keeps them
# equal): repeated here because the store must not import the engine.
SOURCE_NAMES = ("efficientnet_lite0", "resnet18_v2")
MODE_NAMES = ("finetune", "scratch")
BN_MODE_NAMES = ("keep", "update")

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


# ---------------------------------------------------------------------------- validation

# Times in status.json: after 2000-01-01 and at most a day ahead of this machine's clock.
EARLIEST_TIME = 946_684_800.0
FUTURE_SLACK = 86_400.0


class DamagedFile(ValueError):
    """One run file is not what the store wrote; ``str()`` is one sentence naming the file."""

    def __init__(self, file: str, problem: str):
        self.file, self.problem = file, problem
        super().__init__(f"{file} {problem}")


def _show(value: Any, limit: int = 40) -> str:
    """A short, safe rendering of a bad value (never a wall of garbage in a message)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        try:
            text = json.dumps(value)
        except (TypeError, ValueError, RecursionError):
            text = ""
        if text and len(text) <= limit:
            return text
        return f"a list of {len(value)} items" if isinstance(value, list) else "an object"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _is_number(v: Any, lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    if isinstance(v, float) and not math.isfinite(v):
        return False
    return (lo < v if lo_open else lo <= v) and v <= hi  # exact for ints of any size


def _is_int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _object(file: str, raw: Any) -> dict:
    if not isinstance(raw, dict):
        raise DamagedFile(file, f"holds {_json_kind(raw)}, not a JSON object")
    return raw


def _field(file: str, d: dict, key: str, ok, want: str, required: bool = False) -> None:
    if key not in d:
        if required:
            raise DamagedFile(file, f"has no '{key}'")
        return
    if not ok(d[key]):
        raise DamagedFile(file, f"has '{key}' {_show(d[key])}, not {want}")


def _is_time(v: Any, now: float) -> bool:
    return _is_number(v, EARLIEST_TIME, now + FUTURE_SLACK)


def check_status(raw: Any, now: float | None = None) -> dict:
    """status.json as written by :meth:`RunStore.write_status`; DamagedFile otherwise."""
    f = "status.json"
    now = time.time() if now is None else now
    d = _object(f, raw)
    _field(f, d, "state", lambda v: isinstance(v, str) and v in STATES, f"one of {', '.join(STATES)}", required=True)
    _field(f, d, "message", lambda v: isinstance(v, str), "a string")
    for key in ("created", "heartbeat", "updated"):
        _field(f, d, key, lambda v: _is_time(v, now), "a time between the year 2000 and now")
    _field(f, d, "pid", lambda v: _is_int(v, 1, 2**31), "a process id")
    _field(f, d, "host", lambda v: v is None or isinstance(v, str), "a host name")
    _field(f, d, "pid_start", lambda v: v is None or isinstance(v, str), "a process start time")
    _field(f, d, "seconds", lambda v: v is None or _is_number(v, 0.0), "a duration in seconds")
    return d


def check_config(raw: Any) -> dict:
    """The config.json fields the store shows (the engine validates the rest when it uses them)."""
    f = "config.json"
    d = _object(f, raw)
    _field(f, d, "mode", lambda v: v in MODE_NAMES, f"one of {', '.join(MODE_NAMES)}")
    _field(f, d, "source", lambda v: v in SOURCE_NAMES, f"one of {', '.join(SOURCE_NAMES)}")
    _field(f, d, "data_root", lambda v: isinstance(v, str), "a folder path")
    _field(f, d, "epochs", lambda v: _is_int(v, 1, 100_000), "a whole number of epochs >= 1")
    _field(f, d, "lr", lambda v: _is_number(v, 0.0, 1e6, lo_open=True), "a learning rate > 0")
    _field(f, d, "lr_mult", lambda v: _is_number(v, 0.0, 1e6, lo_open=True), "a multiplier > 0")
    _field(f, d, "freeze", lambda v: isinstance(v, bool), "true or false")
    _field(f, d, "bn_mode", lambda v: v in BN_MODE_NAMES, f"one of {', '.join(BN_MODE_NAMES)}")
    _field(f, d, "input_size", lambda v: v is None or _is_int(v, 32, 1024), "a size in pixels (32 to 1024)")
    _field(f, d, "tags", _is_tags, "an object of short names to strings or whole numbers")
    return d


def _is_tags(v: Any) -> bool:
    """config.json's optional ``tags`` (train.prepare(tags=...)): labels such as a sweep's id."""
    return isinstance(v, dict) and len(v) <= 32 and all(
        isinstance(k, str) and 0 < len(k) <= 64
        and ((isinstance(x, str) and len(x) <= 256) or _is_int(x, -2**31, 2**31)) for k, x in v.items())


def check_metrics_row(raw: Any) -> dict:
    """One line of metrics.jsonl (an EpochMetrics; NaN was written as null)."""
    f = "metrics.jsonl"
    d = _object(f, raw)
    _field(f, d, "epoch", lambda v: _is_int(v, 1, 100_000), "an epoch number >= 1", required=True)
    _field(f, d, "train_loss", lambda v: v is None or _is_number(v, 0.0), "a loss >= 0")
    for key in ("train_acc", "test_acc", "val_acc"):
        _field(f, d, key, lambda v: v is None or _is_number(v, 0.0, 1.0), "an accuracy between 0 and 1")
    _field(f, d, "seconds", lambda v: v is None or _is_number(v, 0.0), "a duration in seconds")
    return d


def _is_triple(v: Any, positive: bool = False) -> bool:
    return (isinstance(v, list) and len(v) == 3
            and all(_is_number(x, 0.0, lo_open=True) if positive else _is_number(x) for x in v))


def check_model(raw: Any, run_dir: Path | None = None) -> dict:
    """model.json as written by :meth:`RunStore.save_model` (with its weights file beside it
    when ``run_dir`` is given); DamagedFile otherwise."""
    f = "model.json"
    d = _object(f, raw)
    _field(f, d, "source", lambda v: v in SOURCE_NAMES, f"a known source model ({', '.join(SOURCE_NAMES)})",
           required=True)
    classes = d.get("classes")
    if "classes" not in d:
        raise DamagedFile(f, "has no 'classes'")
    if not isinstance(classes, list) or not classes:
        raise DamagedFile(f, f"has 'classes' {_show(classes)}, not a non-empty list of class names")
    for c in classes:
        if not isinstance(c, str) or not c:
            raise DamagedFile(f, f"has a class name {_show(c)}, not a non-empty string")
    seen: set[str] = set()
    for c in classes:
        if c in seen:
            raise DamagedFile(f, f"names the class {_show(c)} twice (each output row needs its own class)")
        seen.add(c)
    _field(f, d, "input_size", lambda v: _is_int(v, 32, 1024), "a size in pixels (32 to 1024)", required=True)
    _field(f, d, "mode", lambda v: v in MODE_NAMES, f"one of {', '.join(MODE_NAMES)}")
    _field(f, d, "params", lambda v: v == PARAMS_FILE, repr(PARAMS_FILE))
    _field(f, d, "preprocess", lambda v: isinstance(v, dict), "an object", required=True)
    pre = d["preprocess"]
    size = d["input_size"]
    for key, ok, want in (
        ("input_size", lambda v: v == size, f"the model's input_size {size}"),
        ("resize", lambda v: _is_int(v, size, 4096), f"a size in pixels ({size} to 4096)"),
        ("mean", _is_triple, "3 finite numbers"),
        ("std", lambda v: _is_triple(v, positive=True), "3 numbers > 0"),
    ):
        if key not in pre:
            raise DamagedFile(f, f"has no 'preprocess.{key}'")
        if not ok(pre[key]):
            raise DamagedFile(f, f"has 'preprocess.{key}' {_show(pre[key])}, not {want}")
    best = d.get("best")
    if best is not None:
        if not isinstance(best, dict):
            raise DamagedFile(f, f"has 'best' {_show(best)}, not an object")
        _field(f, best, "params", lambda v: v == BEST_PARAMS_FILE, repr(BEST_PARAMS_FILE), required=True)
        _field(f, best, "epoch", lambda v: _is_int(v, 1, 100_000), "an epoch number >= 1", required=True)
        for key in ("val_acc", "test_acc"):
            _field(f, best, key, lambda v: v is None or _is_number(v, 0.0, 1.0), "an accuracy between 0 and 1")
    wise = d.get("wise")  # model.params is a WiSE-FT mix (hotdog.robust): its alpha and test accuracy
    if wise is not None:
        if not isinstance(wise, dict):
            raise DamagedFile(f, f"has 'wise' {_show(wise)}, not an object")
        for key in ("alpha", "test_acc"):
            _field(f, wise, key, lambda v: _is_number(v, 0.0, 1.0), "a number between 0 and 1", required=True)
    if run_dir is not None:
        for name in (PARAMS_FILE,) + ((BEST_PARAMS_FILE,) if best is not None else ()):
            params = run_dir / name
            try:
                size_on_disk = params.stat().st_size
            except OSError:
                raise DamagedFile(f, f"is there but its weights file {name} is missing") from None
            if not params.is_file():
                raise DamagedFile(name, "is not a file")
            if size_on_disk == 0:
                raise DamagedFile(name, "is empty (the weights were never completely written)")
    return d


def params_file(model: dict, weights: str = "last") -> str:
    """The weights file of a validated model.json: ``"last"`` (the last epoch, always there)
    or ``"best"`` (the best epoch by validation; RunStoreError when the run kept none)."""
    if weights not in WEIGHTS:
        raise RunStoreError(f"weights must be one of {', '.join(WEIGHTS)}, not {weights!r}")
    if weights == "best":
        if not model.get("best"):
            raise RunStoreError("this run kept no best-epoch weights (it was trained without a validation "
                                "split: set the validation fraction above 0)")
        return BEST_PARAMS_FILE
    return PARAMS_FILE


def _read_checked(path: Path, check, missing: str | None = None):
    """``check(parsed file)``; DamagedFile when it cannot be read, parsed or validated.
    ``missing``: the sentence for a file that does not exist (None: return None)."""
    try:
        raw = read_json(path)
    except FileNotFoundError:
        if missing is None:
            return None
        raise DamagedFile(path.name, missing) from None
    except OSError as err:
        raise DamagedFile(path.name, f"cannot be read ({err.strerror or type(err).__name__})") from None
    except ValueError:
        raise DamagedFile(path.name, "is not valid JSON (truncated or overwritten?)") from None
    return check(raw)


def read_status(run_dir: str | os.PathLike) -> dict:
    """The validated status.json of a run folder (raw, not stale-checked); DamagedFile."""
    return _read_checked(Path(run_dir) / "status.json", check_status, missing="is missing")


def read_metrics(run_dir: str | os.PathLike) -> tuple[list[dict], int]:
    """(valid epoch rows, number of lines skipped). Only a torn *last* line is skipped (a
    crash mid-append, or a live writer caught mid-append); a bad line anywhere else means
    something wrote into the file, and the run is damaged (DamagedFile)."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    except OSError as err:
        raise DamagedFile(path.name, f"cannot be read ({err.strerror or type(err).__name__})") from None
    lines = [ln for ln in raw.splitlines() if ln.strip()]
    good, bad_at = [], []
    for i, line in enumerate(lines):
        try:
            good.append(check_metrics_row(loads_json(line)))
        except (ValueError, DamagedFile):
            bad_at.append(i)
    if bad_at and bad_at != [len(lines) - 1]:
        n = len(bad_at)
        raise DamagedFile(path.name, f"has {n} line{'s' if n != 1 else ''} that {'are' if n != 1 else 'is'} "
                                     "not an epoch record (something wrote into it)")
    return good, len(bad_at)


def _metrics_warning(bad: int) -> str:
    if not bad:
        return ""
    return f"metrics.jsonl: {bad} damaged line{'s' if bad != 1 else ''} skipped"


# ---------------------------------------------------------------------------- records

@dataclass
class RunSummary:
    """One line of the run list. ``status`` is one of READ_STATES; for ``damaged`` the
    ``message`` is one sentence naming the damaged file and what is wrong with it, and the
    other fields hold whatever the intact files still say. ``warning`` is set when some
    metrics lines were skipped (the run itself is usable)."""

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
    warning: str = ""
    tags: dict = dataclasses.field(default_factory=dict)  # config.json's "tags" (e.g. sweep_id)
    # The best epoch by validation (model.json "best"), when the run kept one: its number,
    # validation accuracy and the test accuracy recorded at that epoch.
    best_epoch: int | None = None
    best_val_acc: float | None = None
    best_test_acc: float | None = None
    # Test accuracy of the saved model.params when it is a WiSE-FT mix (model.json "wise"),
    # which can differ from the last epoch's recorded test_acc.
    saved_test_acc: float | None = None

    # ---- THE accuracy of a run: what every page, the CLI and the "best run" ranking show and sort by
    @property
    def accuracy_weights(self) -> str:
        """Which saved weights :attr:`accuracy` is of, i.e. what predicting with the run uses by
        default: "best" (model-best.params, when it kept a best epoch), "wise" (model.params is a
        WiSE-FT mix) or "last" (model.params after the last epoch, the chapter's)."""
        if self.best_epoch:
            return "best"
        return "wise" if self.saved_test_acc is not None else "last"

    @property
    def accuracy(self) -> float | None:
        """The recorded test accuracy of the saved model the run predicts with (see
        :attr:`accuracy_weights`); None when not recorded. ``test_acc`` stays the last epoch's
        (the per-epoch curves), which a WiSE-FT mix or a best epoch can differ from."""
        acc = {"best": self.best_test_acc, "wise": self.saved_test_acc, "last": self.test_acc}[self.accuracy_weights]
        return float(acc) if _is_number(acc, 0.0, 1.0) else None

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "accuracy": self.accuracy, "accuracy_weights": self.accuracy_weights}


@dataclass
class RunRecord:
    run_id: str
    run_dir: Path
    config: dict
    metrics: list[dict]
    status: dict
    model: dict | None = None
    created: float | None = None
    warning: str = ""  # e.g. "metrics.jsonl: 2 damaged lines skipped"

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
        old = _old_status(path)
        now = time.time()
        status = {**old, **extra, "state": state, "message": message, "heartbeat": now,
                  "updated": now, **owner_fields()}
        status.setdefault("created", now)
        with _store_errors(f"cannot record the status of run {run_id}"):
            atomic_write_json(path, status)
        return status

    def heartbeat(self, run_id: str, message: str | None = None) -> None:
        path = self.run_dir(run_id) / "status.json"
        now = time.time()
        # Called by the run's owner: a status it cannot read is rebuilt as its own running one.
        status = _old_status(path) or {"state": "running", "created": now, **owner_fields()}
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
        if not (d / "config.json").exists():  # listed as damaged: say the same here
            raise RunStoreError(f"run {run_id} is damaged: config.json is missing (not a training run?)")
        return load_run_dir(d)

    def summary(self, run_id: str) -> RunSummary:
        """One run's line of :meth:`list` (status ``damaged`` with a message when unreadable)."""
        return _summarize(self.run_dir(run_id))

    def list(self) -> list[RunSummary]:
        """Every run, newest first; a run with a damaged file is listed as ``damaged`` with
        one sentence why. Never raises for a run's content (only an unreadable runs folder)."""
        try:
            if not self.root.is_dir():
                return []
            entries = [d for d in self.root.iterdir() if not d.name.startswith(".") and d.is_dir()]
        except OSError as err:
            raise RunStoreError(f"cannot list the runs in {self.root}: {err.strerror or err}") from err
        out = [_summarize(d) for d in entries]
        out.sort(key=lambda s: (s.created or 0.0, s.run_id), reverse=True)
        return out

    def delete(self, run_id: str) -> None:
        d = self.run_dir(run_id)
        if not d.is_dir():
            raise RunStoreError(f"no run {run_id!r} in {self.root}")
        try:
            status = effective_status(read_status(d), run_id=run_id)
        except DamagedFile:
            status = {"state": DAMAGED}  # a damaged run can always be deleted
        if status.get("state") == "running":
            raise RunStoreError(f"run {run_id} is still running; stop it before deleting it")
        # Rename first so a half-deleted run never shows up as a broken run in the list.
        trash = self.root / f".deleting-{run_id}-{secrets.token_hex(3)}"
        try:
            os.rename(d, trash)
        except OSError as err:
            raise RunStoreError(f"cannot delete run {run_id}: {err.strerror or err}") from err
        shutil.rmtree(trash, ignore_errors=True)


def _old_status(path: Path) -> dict:
    """The status a writer updates: the file's object, or {} when it is unreadable or not
    an object (the writer's new fields then make it whole again)."""
    try:
        old = read_json(path)
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) else {}


@dataclass
class _RunFiles:
    """What could be read of a run folder: each part validated, ``damaged`` the first problem."""

    config: dict | None = None
    status: dict | None = None
    metrics: list = dataclasses.field(default_factory=list)
    bad_lines: int = 0
    model: dict | None = None
    damaged: str | None = None


def _read_run_files(d: Path) -> _RunFiles:
    out = _RunFiles()

    def part(read):
        try:
            return read()
        except DamagedFile as err:
            if out.damaged is None:
                out.damaged = str(err)
            return None

    out.config = part(lambda: _read_checked(d / "config.json", check_config,
                                            missing="is missing (not a training run?)"))
    out.status = part(lambda: read_status(d))
    metrics = part(lambda: read_metrics(d))
    if metrics is not None:
        out.metrics, out.bad_lines = metrics
    out.model = part(lambda: _read_checked(d / "model.json", lambda raw: check_model(raw, d)))
    return out


def load_run_dir(run_dir: str | os.PathLike) -> RunRecord:
    """The run's validated files; RunStoreError (one sentence, no server paths) when the
    folder is not a run or a file is damaged."""
    d = Path(run_dir)
    if not (d / "config.json").exists():
        raise RunStoreError(f"{d.name} is not a training run (no config.json)")
    files = _read_run_files(d)
    if files.damaged:
        raise RunStoreError(f"run {d.name} is damaged: {files.damaged}")
    status = effective_status(files.status, run_id=d.name)
    return RunRecord(
        run_id=d.name, run_dir=d, config=files.config, metrics=files.metrics, status=status,
        model=files.model, created=files.status.get("created"), warning=_metrics_warning(files.bad_lines),
    )


def _summarize(d: Path) -> RunSummary:
    try:
        files = _read_run_files(d)
    except Exception as err:  # noqa: BLE001 - the list must show every other run whatever happens here
        files = _RunFiles(damaged=f"the run's files cannot be read ({type(err).__name__})")
    cfg = files.config or {}
    if files.damaged:
        status, message = DAMAGED, files.damaged
    else:
        eff = effective_status(files.status, run_id=d.name)
        status, message = eff["state"], eff.get("message", "")
    last = files.metrics[-1] if files.metrics else {}
    return RunSummary(
        run_id=d.name, status=status, mode=cfg.get("mode"), source=cfg.get("source"),
        test_acc=last.get("test_acc"), created=(files.status or {}).get("created"), message=message,
        epochs_done=len(files.metrics), epochs=cfg.get("epochs"), freeze=cfg.get("freeze"),
        lr=cfg.get("lr"),  # as recorded: configs are resolved before they are written
        lr_mult=cfg.get("lr_mult"), bn_mode=cfg.get("bn_mode"), data_root=cfg.get("data_root"),
        data=Path(cfg["data_root"]).name if cfg.get("data_root") else None, run_dir=str(d),
        warning=_metrics_warning(files.bad_lines), tags=dict(cfg.get("tags") or {}),
        **_best_fields(files.model),
    )


def _best_fields(model: dict | None) -> dict:
    best = (model or {}).get("best") or {}
    return {"best_epoch": best.get("epoch"), "best_val_acc": best.get("val_acc"),
            "best_test_acc": best.get("test_acc"), "saved_test_acc": ((model or {}).get("wise") or {}).get("test_acc")}


# ---------------------------------------------------------------------------- robustness files
# Written by hotdog.robust after a run (and by later evaluations on other folders). Optional
# and separate from the run's own files: a damaged one is reported as a warning beside the
# run, never makes the run (or a page listing runs) damaged.

SOURCES_FILE = "sources.json"  # {"sources": [per-source metrics entry, ...]}
WISE_FILE = "wise.json"  # the WiSE-FT accuracy-vs-alpha curve, or {"skipped": sentence}
SOURCE_KINDS = ("test", "proxy", "folder")
MAX_SOURCES = 200


def _is_acc(v: Any) -> bool:
    return _is_number(v, 0.0, 1.0)


def check_source_entry(raw: Any) -> dict:
    f = SOURCES_FILE
    d = _object(f, raw)
    _field(f, d, "name", lambda v: isinstance(v, str) and 0 < len(v) <= 500, "a name", required=True)
    _field(f, d, "kind", lambda v: v in SOURCE_KINDS, f"one of {', '.join(SOURCE_KINDS)}", required=True)
    _field(f, d, "folder", lambda v: isinstance(v, str), "a folder path")
    _field(f, d, "accuracy", _is_acc, "an accuracy between 0 and 1", required=True)
    _field(f, d, "n", lambda v: _is_int(v, 0, 10**9), "an image count", required=True)
    _field(f, d, "alpha", lambda v: v is None or _is_acc(v), "an alpha between 0 and 1")
    _field(f, d, "time", lambda v: _is_number(v, 0.0), "a time")
    per_class = d.get("per_class")
    if not isinstance(per_class, dict) or len(per_class) > 10_000:
        raise DamagedFile(f, f"has 'per_class' {_show(per_class)}, not an object of classes")
    for c, v in per_class.items():
        if not (isinstance(v, dict) and _is_acc(v.get("precision")) and _is_acc(v.get("recall"))
                and _is_int(v.get("support"), 0, 10**9)):
            raise DamagedFile(f, f"has per-class figures for {_show(c)} that are not precision, recall and support")
    _field(f, d, "confusion", lambda v: isinstance(v, list) and all(
        isinstance(r, list) and all(_is_int(x, 0, 10**9) for x in r) for r in v), "a matrix of counts")
    return d


def check_sources(raw: Any) -> list[dict]:
    d = _object(SOURCES_FILE, raw)
    entries = d.get("sources")
    if not isinstance(entries, list) or len(entries) > MAX_SOURCES:
        raise DamagedFile(SOURCES_FILE, f"has 'sources' {_show(entries)}, not a list of results")
    return [check_source_entry(e) for e in entries]


def check_wise(raw: Any) -> dict:
    f = WISE_FILE
    d = _object(f, raw)
    if "skipped" in d:
        _field(f, d, "skipped", lambda v: isinstance(v, str), "a sentence")
        return {"skipped": d["skipped"]}
    alphas = d.get("alphas")
    if not (isinstance(alphas, list) and 0 < len(alphas) <= 1001 and all(_is_acc(a) for a in alphas)):
        raise DamagedFile(f, f"has 'alphas' {_show(alphas)}, not a list of alphas between 0 and 1")
    for key in ("clean", "proxy"):
        v = d.get(key)
        if key == "proxy" and v is None:
            continue
        if not (isinstance(v, list) and len(v) == len(alphas) and all(x is None or _is_acc(x) for x in v)):
            raise DamagedFile(f, f"has '{key}' {_show(v)}, not one accuracy per alpha")
    _field(f, d, "chosen", _is_acc, "an alpha between 0 and 1", required=True)
    for key in ("clean_recall", "proxy_recall"):
        _field(f, d, key, lambda v: isinstance(v, list) and len(v) in (0, len(alphas)) and all(
            isinstance(r, list) and all(x is None or _is_acc(x) for x in r) for r in v),
            "a list of per-class recalls per alpha")
    _field(f, d, "epochs_clean", lambda v: isinstance(v, list) and len(v) <= 100_000 and all(
        x is None or _is_acc(x) for x in v), "a list of accuracies")
    return d


def _read_optional(run_dir, name: str, check) -> tuple[Any, str]:
    """(validated content or None when absent, warning sentence when damaged)."""
    try:
        return _read_checked(Path(run_dir) / name, check), ""
    except DamagedFile as err:
        return None, f"{err}; ignored"


def read_sources(run_dir: str | os.PathLike) -> tuple[list[dict], str]:
    """(per-source metrics of a run, warning): [] when there are none or the file is damaged."""
    found, warning = _read_optional(run_dir, SOURCES_FILE, check_sources)
    return found or [], warning


def read_wise(run_dir: str | os.PathLike) -> tuple[dict | None, str]:
    """(the WiSE-FT curve or {"skipped": why}, warning); None when the run has none."""
    return _read_optional(run_dir, WISE_FILE, check_wise)


def write_wise(run_dir: str | os.PathLike, curve: dict) -> None:
    with _store_errors(f"cannot record the WiSE-FT curve of run {Path(run_dir).name}"):
        atomic_write_json(Path(run_dir) / WISE_FILE, check_wise(curve))


def record_sources(run_dir: str | os.PathLike, entries: list[dict]) -> list[dict]:
    """Add per-source metrics to a run (an entry replaces the one of the same kind and name);
    locked, so the training worker and an evaluation in the app never lose each other's.
    A damaged file is replaced. Returns the run's entries now."""
    from hotdog.fileio import file_lock

    run_dir = Path(run_dir)
    new = [check_source_entry(e) for e in entries]
    with _store_errors(f"cannot record the per-source metrics of run {run_dir.name}"):
        with file_lock(run_dir / ".sources.lock"):
            old, _ = read_sources(run_dir)
            keys = {(e["kind"], e["name"], e.get("folder", "")) for e in new}
            merged = [e for e in old if (e["kind"], e["name"], e.get("folder", "")) not in keys] + new
            atomic_write_json(run_dir / SOURCES_FILE, {"sources": merged[-MAX_SOURCES:]})
    return merged[-MAX_SOURCES:]
