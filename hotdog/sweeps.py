"""Sweeps: the chapter's exercises as lists of ordinary training runs.

A sweep is a base (data set, source, preset, fixed knobs such as epochs) and a grid
(``{"lr": [1e-4, 1e-3], "mode": ["finetune", "scratch"]}``) repeated with ``seeds`` seeds.
:func:`expand` turns it into points, each a :class:`~hotdog.settings.TrainConfig` built by
``settings.config_for`` (so every value is checked by the one settings table); points whose
resolved configs are equal are run once (a scratch run has no ``freeze`` or ``lr_mult``, so
``mode=scratch`` x ``freeze=0,1`` is one point per lr).

Every point is a normal run in the run store whose config.json carries
``"tags": {"sweep_id": ..., "sweep_point": i}``, so inspect, predict, weights and delete work
on sweep points as on any run. The sweep itself is one small JSON file,
``HOTDOG_HOME/sweeps/<id>.json`` (written atomically), holding its definition; which points
are done is read from the run store, never stored twice. Resume = expand again and run the
points that have no ``finished`` or ``diverged`` run (a stopped, failed or killed point is
redone from scratch; a diverged point is a result, not redone).

    sweep_id = create(SweepSpec(data, {"lr": [1e-3, 1e-2]}, seeds=2, base={"epochs": 5}))
    run(sweep_id)                       # in this thread (the CLI), or
    start_in_job(job_manager(), sweep_id, owner=...)   # the app's one background job
    summarize(sweep_id)                 # points, best point, per-lr means; findings(...)

Frozen points of one sweep share one feature extraction (the on-disk feature cache,
:mod:`hotdog.featcache`: the first frozen point stores the features, the others read them), so
a frozen lr sweep costs little more than one frozen run.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import secrets
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from hotdog import settings
from hotdog.errors import ConfigError, HotdogError, RunStoreError, StorageError
from hotdog.fileio import atomic_write_json, read_json
from hotdog.paths import hotdog_home

GRID_KEYS = ("mode",) + tuple(k for k in settings.KNOBS if k != "num_workers")
DONE_STATES = ("finished", "diverged")  # a point with such a run is not redone
MAX_POINTS = 500
MAX_SEEDS = 20
LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)

# The chapter's exercises as ready-made grids (the app's buttons, `sweep --exercise`).
EXERCISES: dict[str, dict] = {
    "lr": {"title": "Exercise 1: raise the learning rate",
           "question": "Keep increasing the fine-tuning learning rate: how does the accuracy change?",
           "grid": {"lr": list(LRS), "mode": ["finetune"]}},
    "both": {"title": "Exercise 2: tune both nets",
             "question": "Tune the learning rate of both the fine-tuned and the scratch net: do they still differ?",
             "grid": {"lr": list(LRS), "mode": ["finetune", "scratch"]}},
    "freeze": {"title": "Exercise 3: freeze the features",
               "question": "Freeze the copied features and train only the output layer: what happens?",
               "grid": {"lr": list(LRS), "freeze": [False, True]}},
}

_ID_RE = re.compile(r"^sw-[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")


# ------------------------------------------------------------------------------ grid

def parse_value(key: str, text: Any) -> Any:
    """One grid value from text ('1e-3', 'scratch', 'yes'), checked by the settings table."""
    if key not in GRID_KEYS:
        raise ConfigError(f"cannot sweep {key!r}; sweepable settings: {', '.join(GRID_KEYS)}")
    if key == "mode":
        if text not in settings.MODES:
            raise ConfigError(f"mode must be one of {', '.join(settings.MODES)}, not {text!r}")
        return text
    knob = settings.KNOBS[key]
    if isinstance(text, str):
        t = text.strip()
        if knob.kind is bool:
            words = {"1": True, "yes": True, "true": True, "on": True, "0": False, "no": False, "false": False,
                     "off": False}
            if t.lower() not in words:
                raise ConfigError(f"{knob.label.lower()} must be yes/no (1/0), not {text!r}")
            return words[t.lower()]
        if knob.kind is not str:
            text = t
    return settings.check_value(key, text)


def parse_grid(specs: Iterable[str]) -> dict[str, list]:
    """``["lr=1e-4,1e-3", "mode=finetune,scratch"]`` -> ``{"lr": [0.0001, 0.001], "mode": [...]}``."""
    grid: dict[str, list] = {}
    for spec in specs:
        key, sep, values = str(spec).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"a grid is written key=v1,v2,... (e.g. lr=1e-4,1e-3), not {spec!r}")
        if key in grid:
            raise ConfigError(f"{key} is given twice in the grid; list all its values once")
        items = [v for v in values.split(",") if v.strip()]
        if not items:
            raise ConfigError(f"the grid gives no values for {key}")
        grid[key] = [parse_value(key, v) for v in items]
    return grid


@dataclass
class SweepSpec:
    """What a sweep trains: ``grid`` over ``base`` (fixed knobs), each point ``seeds`` times
    (seeds ``base.seed``, +1, ...)."""

    data_root: str
    grid: dict
    seeds: int = 1
    source: str = settings.DEFAULT_SOURCE
    preset: str = settings.DEFAULT_PRESET
    base: dict = field(default_factory=dict)
    title: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SweepSpec":
        if not isinstance(d, dict) or not isinstance(d.get("grid"), dict) or not isinstance(d.get("data_root"), str):
            raise ConfigError("a sweep definition needs a data_root and a grid")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Point:
    index: int  # 0-based position in the sweep
    values: dict  # the grid coordinates and the seed
    config: settings.TrainConfig

    @property
    def number(self) -> int:
        return self.index + 1


def expand(spec: SweepSpec) -> list[Point]:
    """Every point of the sweep: the grid's settings in alphabetical order (the last one
    changes fastest; the order the record on disk keeps), seeds innermost; points with
    equal resolved configs are kept once. ConfigError for any invalid value."""
    grid = {k: [parse_value(k, v) for v in vs] for k, vs in (spec.grid or {}).items()}
    if not grid or any(not vs for vs in grid.values()):
        raise ConfigError("a sweep needs at least one setting with at least one value")
    seeds = settings.check_value("seed", spec.seeds)
    if not 1 <= seeds <= MAX_SEEDS:
        raise ConfigError(f"seeds must be between 1 and {MAX_SEEDS}, not {spec.seeds!r}")
    if "seed" in grid and seeds > 1:
        raise ConfigError("give either a seed grid or a number of seeds, not both")
    base = dict(spec.base or {})
    bad = set(base) - set(settings.KNOBS) - {"devices"}
    if bad:
        raise ConfigError(f"unknown settings in the sweep's base: {', '.join(sorted(bad))}")
    first_seed = int(base.pop("seed", 0) or 0)
    total = math.prod(len(v) for v in grid.values()) * seeds
    if total > MAX_POINTS:
        raise ConfigError(f"the sweep has {total} points; at most {MAX_POINTS} are allowed")
    points: list[Point] = []
    seen: set[str] = set()
    keys = sorted(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        for s in range(seeds):
            knobs = {**base, **{k: v for k, v in values.items() if k != "mode"}}
            knobs.setdefault("seed", first_seed + s)
            config = settings.config_for(spec.data_root, spec.source, values.get("mode", base.get("mode", "finetune")),
                                         spec.preset, **knobs)
            key = json.dumps(config.to_dict(), sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            points.append(Point(len(points), {**values, "seed": config.seed}, config))
    return points


# ------------------------------------------------------------------------------ the sweep record

def sweeps_root(home=None) -> Path:
    return hotdog_home(home) / "sweeps"


def _path(sweep_id: str, root: Path | None = None) -> Path:
    if not isinstance(sweep_id, str) or not _ID_RE.match(sweep_id):
        raise RunStoreError(f"invalid sweep id {sweep_id!r} (they look like sw-20260101-120000-abc123)")
    return (root or sweeps_root()) / f"{sweep_id}.json"


def create(spec: SweepSpec, runs_dir: str | None = None, root: Path | None = None) -> str:
    """Check the sweep (every point is expanded and validated) and record it; its id."""
    points = expand(spec)
    sweep_id = "sw-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
    folder = root or sweeps_root()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(f"cannot create the sweeps folder: {err.strerror or err}") from err
    atomic_write_json(_path(sweep_id, folder), {
        "sweep_id": sweep_id, "created": time.time(), "spec": spec.to_dict(), "points": len(points),
        "runs_dir": str(Path(runs_dir).expanduser().resolve()) if runs_dir else None})
    return sweep_id


def load(sweep_id: str, root: Path | None = None) -> dict:
    """The sweep's record: {"sweep_id", "created", "spec" (SweepSpec), "points", "runs_dir"}."""
    path = _path(sweep_id, root)
    try:
        raw = read_json(path)
    except FileNotFoundError:
        raise RunStoreError(f"no sweep {sweep_id} (see `python -m hotdog sweep --list`)") from None
    except (OSError, ValueError) as err:
        raise RunStoreError(f"sweep {sweep_id} cannot be read: {err}") from None
    if not isinstance(raw, dict) or raw.get("sweep_id") != sweep_id:
        raise RunStoreError(f"sweep {sweep_id}'s file is damaged")
    raw["spec"] = SweepSpec.from_dict(raw.get("spec"))
    return raw


def list_sweeps(root: Path | None = None) -> list[dict]:
    """Every readable sweep record, newest first."""
    folder = root or sweeps_root()
    out = []
    try:
        files = sorted(folder.glob("sw-*.json"), reverse=True)
    except OSError:
        return []
    for f in files:
        try:
            out.append(load(f.stem, folder))
        except HotdogError:
            continue
    return out


def _store(rec: dict):
    from hotdog.runs import RunStore

    return RunStore(rec.get("runs_dir"))


def point_runs(rec: dict) -> dict[int, list]:
    """Point index -> that point's runs (RunSummary, newest first)."""
    out: dict[int, list] = {}
    for r in _store(rec).list():
        if r.tags.get("sweep_id") == rec["sweep_id"] and isinstance(r.tags.get("sweep_point"), int):
            out.setdefault(r.tags["sweep_point"], []).append(r)
    return out


def _chosen(runs: list):
    """The run that stands for a point: its newest done run, else its newest run."""
    done = [r for r in runs if r.status in DONE_STATES]
    return (done or runs or [None])[0]


def tags_for(sweep_id: str, point: Point) -> dict:
    return {"sweep_id": sweep_id, "sweep_point": point.index}


def remaining(sweep_id: str, root: Path | None = None) -> tuple[dict, list[Point], list[Point]]:
    """(record, every point, the points still to run)."""
    rec = load(sweep_id, root)
    points = expand(rec["spec"])
    runs = point_runs(rec)
    todo = [p for p in points if not any(r.status in DONE_STATES or r.status == "running"
                                         for r in runs.get(p.index, []))]
    return rec, points, todo


def run(sweep_id: str, *, on_batch: Callable | None = None, on_epoch: Callable | None = None,
        on_point: Callable[[Point, Any], Any] | None = None, stop_event=None, root: Path | None = None) -> dict:
    """Run the sweep's remaining points in this thread, one after the other (the CLI). A
    diverged point is recorded and the sweep goes on; a stop request ends it after the
    current point's batch (finished points are kept). Returns :func:`summarize`."""
    from hotdog.train import prepare, train

    rec, points, todo = remaining(sweep_id, root)
    for p in todo:
        if stop_event is not None and stop_event.is_set():
            break
        result = train(p.config, prepared=prepare(p.config, tags=tags_for(sweep_id, p)), runs_dir=rec.get("runs_dir"),
                       on_batch=on_batch, on_epoch=on_epoch, stop_event=stop_event)
        if on_point is not None:
            on_point(p, result)
        if result.status == "stopped":
            break
    return summarize(sweep_id, root)


def start_in_job(job, sweep_id: str, owner: str | None = None, root: Path | None = None) -> str | None:
    """Queue the sweep's remaining points in the app's one background job; the first run id,
    or None when every point is done."""
    rec, points, todo = remaining(sweep_id, root)
    if not todo:
        return None
    return job.start([p.config for p in todo], runs_dir=rec.get("runs_dir"), owner=owner,
                     tags=[tags_for(sweep_id, p) for p in todo], continue_on=("diverged",),
                     sweep={"sweep_id": sweep_id, "total": len(points), "points": [p.number for p in todo],
                            "title": rec["spec"].title})


# ------------------------------------------------------------------------------ results

def summarize(sweep_id: str, root: Path | None = None) -> dict:
    """The sweep as the CLI prints it and the page draws it: every point with its run's
    status, accuracy and per-epoch metrics; the best finished point. A point's ``accuracy`` is
    its run's (:attr:`hotdog.runs.RunSummary.accuracy`: the saved model's, as every page shows),
    ``test_acc`` the last epoch's (the end of its curves)."""
    rec = load(sweep_id, root)
    points = expand(rec["spec"])
    runs = point_runs(rec)
    store = _store(rec)
    out = []
    for p in points:
        r = _chosen(runs.get(p.index, []))
        row = {"index": p.index, "values": p.values, "run_id": None, "status": "pending", "accuracy": None, "test_acc": None,
               "epochs": [], "seconds": None, "message": "", "config": p.config.to_dict()}
        if r is not None:
            row.update(run_id=r.run_id, status=r.status, accuracy=r.accuracy, test_acc=r.test_acc, message=r.message)
            try:
                loaded = store.load(r.run_id)
                row["epochs"] = loaded.metrics
                row["config"] = {k: v for k, v in loaded.config.items() if k != "tags"}
                sec = loaded.status.get("seconds")
                row["seconds"] = float(sec) if isinstance(sec, (int, float)) else None
            except HotdogError:
                pass
        out.append(row)
    finished = [p for p in out if p["status"] == "finished" and isinstance(p["accuracy"], (int, float))]
    best = max(finished, key=lambda p: (p["accuracy"], -p["index"])) if finished else None
    done = sum(p["status"] in DONE_STATES for p in out)
    spec = rec["spec"]
    return {"sweep_id": sweep_id, "title": spec.title, "spec": spec.to_dict(), "created": rec.get("created"),
            "total": len(out), "done": done, "complete": done == len(out), "points": out,
            "best": {k: best[k] for k in ("index", "run_id", "values", "accuracy")} if best else None}


def group_label(values: dict, varying: Sequence[str]) -> str:
    """'fine-tune, frozen' for a point's values, naming only the settings the sweep varies
    (besides lr and seed)."""
    parts = []
    mode = values.get("mode", "finetune")
    if "mode" in varying or "freeze" in varying or "lr_mult" in varying:
        parts.append("from scratch" if mode == "scratch" else "fine-tune")
    if mode != "scratch" and "freeze" in varying:
        parts.append("frozen" if values.get("freeze") else "all layers")
    if mode != "scratch" and "lr_mult" in varying:
        parts.append(f"head x{values.get('lr_mult'):g}")
    for k in varying:
        if k not in ("mode", "freeze", "lr_mult", "lr", "seed"):
            v = values.get(k)
            parts.append(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}")
    return ", ".join(parts) or "all points"


def aggregate(summary: dict) -> list[dict]:
    """One row per (group, lr): mean and standard deviation of the accuracy (saved model) over
    the seeds that finished, how many finished/diverged, mean seconds per run."""
    grid = summary["spec"]["grid"]
    varying = [k for k, v in grid.items() if len(v) > 1]
    rows: dict[tuple, dict] = {}
    for p in summary["points"]:
        cfg = p["config"]
        values = {**p["values"], "mode": cfg.get("mode"), "freeze": cfg.get("freeze"), "lr_mult": cfg.get("lr_mult")}
        group = group_label(values, varying)
        key = (group, cfg.get("lr"))
        row = rows.setdefault(key, {"group": group, "lr": cfg.get("lr"), "accs": [], "secs": [], "diverged": 0,
                                    "points": 0})
        row["points"] += 1
        if p["status"] == "finished" and isinstance(p["accuracy"], (int, float)):
            row["accs"].append(float(p["accuracy"]))
            if p["seconds"] is not None:
                row["secs"].append(p["seconds"])
        elif p["status"] == "diverged":
            row["diverged"] += 1
    out = []
    for row in rows.values():
        accs, secs = row.pop("accs"), row.pop("secs")
        row.update(n=len(accs), mean=statistics.fmean(accs) if accs else None,
                   std=statistics.stdev(accs) if len(accs) > 1 else 0.0 if accs else None,
                   seconds=statistics.fmean(secs) if secs else None)
        out.append(row)
    out.sort(key=lambda r: (r["group"], r["lr"]))
    return out


def _best(rows):
    ok = [r for r in rows if r["mean"] is not None]
    return max(ok, key=lambda r: (r["mean"], -r["lr"])) if ok else None


FALL = 0.05  # a drop of this much test accuracy below the group's best counts as "falls"


def findings(summary: dict) -> list[str]:
    """Sentences computed from the measurements: per group where the accuracy peaks and from
    which learning rate it falls; fine-tune vs scratch; frozen vs all layers."""
    rows = aggregate(summary)
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    out = []
    for name, rs in groups.items():
        best = _best(rs)
        if best is None:
            div = [r["lr"] for r in rs if r["diverged"]]
            if div:
                out.append(f"{name.capitalize()}: every point diverged (lr {min(div):g} and up).")
            continue
        seeds = f" (mean of {best['n']} seeds)" if best["n"] > 1 else ""
        measured = [r for r in rs if r["mean"] is not None]
        if len(measured) > 2 and not any(r["diverged"] for r in rs) and \
                max(r["mean"] for r in measured) - min(r["mean"] for r in measured) < 0.02:
            out.append(f"{name.capitalize()}: test accuracy {best['mean']:.2f} at every learning rate tried "
                       f"({min(r['lr'] for r in measured):g} to {max(r['lr'] for r in measured):g}){seeds}: "
                       "the learning rate makes no difference in this budget.")
            continue
        text = f"{name.capitalize()}: best test accuracy {best['mean']:.2f} at lr {best['lr']:g}{seeds}"
        if len(rs) > 1:
            higher = [r for r in rs if r["lr"] > best["lr"] and (r["n"] or r["diverged"])]  # measured ones
            fall = next((r for r in higher if r["mean"] is None or r["mean"] < best["mean"] - FALL), None)
            if fall is not None:
                what = "diverges" if fall["mean"] is None else f"is {fall['mean']:.2f}"
                text += f"; from lr {fall['lr']:g} on it falls (accuracy {what} there)"
            elif higher:
                text += f"; it does not fall by {FALL:g} or more up to lr {max(r['lr'] for r in higher):g}"
        out.append(text + ".")
    tuned = {n: _best(rs) for n, rs in groups.items()}
    ft = {n: b for n, b in tuned.items() if b and not n.startswith("from scratch")}
    sc = {n: b for n, b in tuned.items() if b and n.startswith("from scratch")}
    if ft and sc:
        f = max(ft.values(), key=lambda b: b["mean"])
        s = max(sc.values(), key=lambda b: b["mean"])
        gap = f["mean"] - s["mean"]
        verdict = ("they still differ: fine-tuning is better by" if gap > FALL else
                   "scratch is better by" if gap < -FALL else "they no longer differ much: the gap is")
        out.append(f"Tuned, same budget: fine-tuning reaches {f['mean']:.2f} (lr {f['lr']:g}), from scratch "
                   f"{s['mean']:.2f} (lr {s['lr']:g}); {verdict} {abs(gap):.2f}.")
    frozen = {n: b for n, b in tuned.items() if b and "frozen" in n}
    full = {n: b for n, b in tuned.items() if b and "all layers" in n}
    if frozen and full:
        fz, al = max(frozen.values(), key=lambda b: b["mean"]), max(full.values(), key=lambda b: b["mean"])
        text = (f"Frozen features reach {fz['mean']:.2f} (lr {fz['lr']:g}) vs {al['mean']:.2f} training all layers "
                f"(lr {al['lr']:g})")
        if fz["seconds"] and al["seconds"]:
            text += (f", in {fz['seconds']:.0f} s vs {al['seconds']:.0f} s per run "
                     f"({al['seconds'] / fz['seconds']:.1f}x faster frozen)")
        out.append(text + ".")
    div = [p for p in summary["points"] if p["status"] == "diverged"]
    if div:
        lrs = sorted({p["config"].get("lr") for p in div})
        out.append(f"{len(div)} point(s) diverged (lr {', '.join(f'{x:g}' for x in lrs)}).")
    return out
