"""The Streamlit-facing helpers every page shares, in one module: the chosen data set and
source model, cached engine calls, the running job as the pages show it, and the pure
reshaping of engine results for display (data frames for charts, progress text, escaping).

Engine work stays in the engine: prediction in :mod:`hotdog.predict`, run sequences in
:mod:`hotdog.jobs`, head notes in :mod:`hotdog.models`, devices in :mod:`hotdog.devices`.
Cached objects are shared between sessions and threads, so callers treat them as read-only.
The functions above the "Streamlit" line need no Streamlit session (tests call them directly).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from hotdog.errors import HotdogError
from hotdog.mxthread import mx_call
from i18n import engine, t, verbatim

ENV_DATA = "HOTDOG_DATA"
DATA_KEY = "data_root"        # the data set every page works on (plain state, not a widget)
SOURCE_KEY = "source_model"   # the source model, shared by Train, Predict and Weights
FOLDERS_KEY = "typed_folders"  # local folders the user typed in this session
# Literal keys, so the catalog test sees them: t("installed"), t("folder")
ORIGIN_WORDS = {"env": "$" + ENV_DATA, "installed": "installed", "folder": "folder"}
# Literal keys (the UI shows them through t): t("fine-tune"), t("from scratch"), t("training")
MODE_TITLES = {"finetune": "fine-tune", "scratch": "from scratch"}


# ------------------------------------------------------------------------------ pure display reshaping

@dataclass(frozen=True)
class DatasetChoice:
    path: str
    label: str
    origin: str  # "env" | "installed" | "folder"


def dataset_choices_from(installed: Iterable[os.PathLike | str], env: dict | None = None,
                         extra: Sequence[str] = ()) -> list[DatasetChoice]:
    """Every data set the user can pick: $HOTDOG_DATA first, then installed ones, then typed folders."""
    env = os.environ if env is None else env
    seen: set[str] = set()
    out: list[DatasetChoice] = []

    def add(path, label, origin):
        key = str(Path(path).expanduser())
        if key not in seen:
            seen.add(key)
            out.append(DatasetChoice(key, label, origin))

    if env.get(ENV_DATA):
        # Absolute, so the choice (and config.json) means the same from any working folder.
        p = Path(os.path.abspath(Path(env[ENV_DATA]).expanduser()))
        add(p, f"{p.name} (from ${ENV_DATA}: {p})", "env")
    for p in map(Path, installed):
        add(p, f"{p.name} (installed: {p})", "installed")
    for p in extra:
        add(p, f"{Path(p).name} (folder: {p})", "folder")
    return out


def default_dataset(choices: Sequence[DatasetChoice]) -> str | None:
    """$HOTDOG_DATA wins, then the chapter's own 'hotdog' set, then whatever is installed."""
    for c in choices:
        if c.origin == "env":
            return c.path
    for c in choices:
        if Path(c.path).name == "hotdog":
            return c.path
    return choices[0].path if choices else None


def counts_frame(report: dict) -> pd.DataFrame:
    """Long frame (split, class, images) from ``DatasetReport.to_dict()['counts']``."""
    rows = [{"split": split, "class": cls, "images": int(n)}
            for split, per_class in (report.get("counts") or {}).items() for cls, n in per_class.items()]
    return pd.DataFrame(rows, columns=["split", "class", "images"])


def split_totals(report: dict) -> dict[str, int]:
    """Images per split ("train", "test"), 0 for a split that is missing."""
    counts = counts_frame(report)
    return {split: int(counts.loc[counts.split == split, "images"].sum()) for split in ("train", "test")}


def image_sizes_frame(paths: Iterable[os.PathLike | str], limit: int = 3000) -> pd.DataFrame:
    """Width/height of up to ``limit`` images, read from headers only (no full decode)."""
    rows = []
    for i, p in enumerate(paths):
        if i >= limit:
            break
        try:
            with Image.open(p) as im:
                w, h = im.size
        except Exception:  # unreadable files are reported by validate_dataset, not here
            continue
        rows.append({"width": w, "height": h})
    df = pd.DataFrame(rows, columns=["width", "height"])
    if df.empty:
        return df.assign(images=pd.Series(dtype=int))
    return df.groupby(["width", "height"]).size().reset_index(name="images")


def sample_grid(classes: Sequence[str], items: Sequence[tuple[Any, int]], per_class: int = 8
                ) -> list[tuple[str, list[Path]]]:
    """The chapter's grid (first 8 hotdogs, last 8 not-hotdogs) for any number of classes:
    the first class shows its first images, every other class its last ones."""
    by_class: dict[int, list[Path]] = {i: [] for i in range(len(classes))}
    for path, label in items:
        by_class.setdefault(int(label), []).append(Path(path))
    return [(name, by_class.get(i, [])[:per_class] if i == 0 else by_class.get(i, [])[-per_class:])
            for i, name in enumerate(classes)]


def to_display_image(chw, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the normalisation of a CHW float tensor so a person can look at it (HWC uint8)."""
    arr = chw.asnumpy() if hasattr(chw, "asnumpy") else np.asarray(chw)
    arr = arr.astype(np.float32).transpose(1, 2, 0)
    arr = arr * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)


def augmentation_views(image, pre, n: int = 6) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` train-transform samples and the test-transform view of one photo, un-normalised
    (on the engine's MXNet thread: Streamlit reruns on fresh threads)."""
    from hotdog import data

    def work():
        train_tf, test_tf = data.train_transform(pre), data.test_transform(pre)
        views = [to_display_image(train_tf(image), pre.mean, pre.std) for _ in range(n)]
        return views, to_display_image(test_tf(image), pre.mean, pre.std)

    return mx_call(work)


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m"


def _get(obj, name, default=None):
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def progress_fraction(p) -> float:
    """Overall progress 0..1 from a BatchProgress (epoch and batch are 1-based); for a
    start-up step (decoding photos, ...) the progress of that step."""
    if _get(p, "phase", "train") != "train":
        total = max(int(_get(p, "batches", 1) or 1), 1)
        return min(max(int(_get(p, "batch", 0) or 0) / total, 0.0), 1.0)
    epochs = max(int(_get(p, "epochs", 1) or 1), 1)
    batches = max(int(_get(p, "batches", 1) or 1), 1)
    epoch = max(int(_get(p, "epoch", 1) or 1), 1)
    batch = min(max(int(_get(p, "batch", 0) or 0), 0), batches)
    return min(max(((epoch - 1) + batch / batches) / epochs, 0.0), 1.0)


def phase_text(phase: str, done, total) -> str:
    """"Decoding photos 120/250", "Computing features once (frozen network): batch 3/7";
    one-step phases (loading, converting) have no count."""
    from hotdog.callbacks import PHASES

    title = t(PHASES.get(phase, phase))
    if phase == "cache":
        return t("{title}: batch {done}/{total}", title=title, done=done, total=total)
    if int(total or 0) <= 1:
        return title + ("" if done else "…")
    return f"{title} {done}/{total}"


def _phase_order(phases: dict) -> list[str]:
    from hotdog.callbacks import PHASES

    return [n for n in PHASES if n in phases] + [n for n in phases if n not in PHASES]


def startup_steps(phases: dict, current: str | None) -> list[tuple[str, str]]:
    """The live panel's start-up checklist: (state, text) per step seen so far, in the order
    they happen; state is "done" or "running" (the ``current`` phase, still below its total)."""
    out = []
    for name in _phase_order(phases):
        done, total = phases[name]
        running = name == current and done < total
        out.append(("running" if running else "done", phase_text(name, done, total)))
    return out


def progress_text(p) -> str:
    ips = _get(p, "images_per_sec")
    phase = _get(p, "phase", "train")
    if phase == "robust":  # hotdog.robust after training: WiSE-FT curve, other sources
        return (t("Checking other sources and WiSE-FT alphas: step {step}/{steps}", step=_get(p, 'batch'),
                  steps=_get(p, 'batches')) + " · " + t("ETA {eta}", eta=format_duration(_get(p, 'eta_seconds'))))
    if phase != "train":
        return phase_text(phase, _get(p, "batch"), _get(p, "batches")) + (
            " · " + t("{ips} images/s", ips=f"{ips:.1f}") if ips else "")
    parts = [
        t("Epoch {epoch}/{epochs}", epoch=_get(p, 'epoch'), epochs=_get(p, 'epochs')),
        t("batch {batch}/{batches}", batch=_get(p, 'batch'), batches=_get(p, 'batches')),
        t("{ips} images/s", ips=f"{ips:.1f}" if ips else "–"),
        t("ETA {eta}", eta=format_duration(_get(p, 'eta_seconds'))),
    ]
    loss, acc = _get(p, "loss"), _get(p, "acc")
    # The engine reports 0/0 until its meter first syncs with the device: not a real loss.
    if loss and acc is not None and math.isfinite(loss):
        parts.append(t("loss {loss}, acc {acc}", loss=f"{loss:.3f}", acc=f"{acc:.3f}"))
    return " · ".join(parts)


# Shown through t (curves_frame, the charts' sort): t("train loss"), t("train acc"), t("test acc"), t("val acc")
METRIC_LABELS = {"train_loss": "train loss", "train_acc": "train acc", "test_acc": "test acc",
                 "val_acc": "val acc"}  # val acc: runs with a validation split (hotdog.best)


def curves_frame(epochs: Iterable[Any], run: str = "") -> pd.DataFrame:
    """Long frame (run, epoch, metric, value) for the chapter's loss/accuracy plot."""
    rows = []
    for m in epochs:
        for key, label in METRIC_LABELS.items():
            v = _get(m, key)
            if v is not None and math.isfinite(float(v)):
                rows.append({"run": run, "epoch": int(_get(m, "epoch")), "metric": t(label), "value": float(v)})
    return pd.DataFrame(rows, columns=["run", "epoch", "metric", "value"])


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def md_escape(text: Any) -> str:
    """Make user-controlled text inert inside Streamlit markdown (st.error, st.caption...)."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float("nan") if na == 0 or nb == 0 else float(a @ b / (na * nb))


def probabilities_frame(probabilities: dict) -> pd.DataFrame:
    df = pd.DataFrame([{"class": str(k), "probability": float(v)} for k, v in probabilities.items()],
                      columns=["class", "probability"])
    return df.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)


def misclassified_caption(m: dict) -> str:
    """'photo.jpg / true hotdog → not-hotdog / p(not-hotdog) 0.58': the probability is named."""
    p = (m.get("probabilities") or {}).get(m.get("predicted"))
    conf = f"\np({m.get('predicted')}) {p:.2f}" if isinstance(p, (int, float)) else ""
    return (f"{Path(str(m.get('path'))).name}\n"
            + t("true {label} → {predicted}", label=m.get('label'), predicted=m.get('predicted')) + conf)


def acc_text(acc) -> str:
    """An accuracy as every page shows it: 3 decimals, "—" when none was recorded."""
    return f"{acc:.3f}" if isinstance(acc, (int, float)) and math.isfinite(acc) else "—"


def unique_photos(files: Sequence[tuple[str, bytes]]) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    """(files without repeats, [(repeat's name, first one's name)]): the same bytes uploaded
    twice (or taken again with the camera) are classified once."""
    import hashlib

    seen: dict[str, str] = {}
    kept, repeats = [], []
    for name, raw in files:
        digest = hashlib.sha256(raw).hexdigest()
        if digest in seen:
            repeats.append((name, seen[digest]))
        else:
            seen[digest] = name
            kept.append((name, raw))
    return kept, repeats


def eval_split(root: str) -> str:
    """The folder evaluate() should read: the test split of a d2l layout, else the whole folder."""
    test = Path(root) / "test"
    return str(test) if test.is_dir() else str(root)


def job_view(state, titles: dict | None = None, owner: str | None = None) -> dict | None:
    """What the pages show of a ``hotdog.jobs.JobState``; None when nothing runs or waits.
    ``mine``: started by ``owner`` (this browser), so its Stop button is shown."""
    if not state.running:
        return None
    cfg = state.config
    mode = t(MODE_TITLES.get(getattr(cfg, "mode", ""), "training"))
    source = getattr(cfg, "source", "")
    stopping = state.state == "stopping"
    sweep = sweep_progress(state)
    # Queued runs of a stopped job never start: say "stopping", not "then 1 more run".
    return {
        "run_id": state.run_id or "…",
        "mode": mode,
        "label": (t("{title} · point {point}/{total}", title=t(sweep['title'] or 'sweep'), point=sweep['point'],
                    total=sweep['total']) + " · " if sweep else "")
                 + t("{mode} of {source} · run {run}", mode=mode, source=t((titles or {}).get(source, source)),
                     run=state.run_id)
                 + (" · " + t("stopping…") if stopping else ""),
        "sweep": sweep,
        "progress": state.progress,
        "phases": dict(getattr(state, "phases", None) or {}),
        "metrics": list(state.epochs),
        "pending": 0 if stopping else int(state.pending or 0),
        "stopping": stopping,
        "message": t("Stopping…") if stopping else None,
        "mine": state.owned_by(owner),
        "started": time.strftime("%H:%M", time.localtime(state.started)) if state.started else "?",
    }


def estimate_text(est, what: str = "") -> str:
    """"Fine-tune: about 2m 10s (start-up 20s, then 5 epochs of 22s; measured by run X)"."""
    sp = est.speed
    rate = (", " + t("{ips} images/s", ips=f"{est.images_per_sec:.1f}")
            if sp.epoch_per_train_image > 0 and est.epoch_seconds >= 1 else "")
    one = est.epochs == 1
    epochs = (t("{n} epoch of {time}" if one else "{n} epochs of {time}", n=est.epochs,
                time=format_duration(est.epoch_seconds))
              if est.epoch_seconds >= 1 else
              t("{n} fast epoch of the output layer" if one else "{n} fast epochs of the output layer", n=est.epochs))
    # sp.basis is an engine sentence ("measured by run X"), shown as it is
    return ((t(what) + ": " if what else "")
            + t("about {time} (start-up {startup}, then {epochs}{rate}; from {basis})",
                time=format_duration(est.seconds), startup=format_duration(est.startup_seconds), epochs=epochs,
                rate=rate, basis=engine(sp.basis)))


def run_estimates(configs: dict, n_train: int, n_test: int) -> dict:
    """name -> hotdog.estimate.Estimate (None when nothing comparable was measured yet)."""
    from hotdog import estimate

    out = {}
    for name, cfg in configs.items():
        speed = estimate.best_speed(cfg, store=run_store())
        out[name] = estimate.estimate(cfg, n_train, n_test, speed) if speed else None
    return out


def probe_speed(config, items, num_classes: int):
    """A short probe of this machine for ``config`` (seconds), on the MXNet thread."""
    from hotdog import estimate

    return mx_call(estimate.probe, config, items, num_classes)


def cost_estimate(configs: dict, n_train: int, n_test: int, items, num_classes: int, busy: bool) -> None:
    """The Train page's "how long will this take" line, per button; a probe button when a
    setting was never measured on this machine."""
    ests = run_estimates(configs, n_train, n_test)
    known = [estimate_text(e, name) for name, e in ests.items() if e is not None]
    missing = [name for name, e in ests.items() if e is None]
    if known:
        st.caption(":material/timer: " + t("Expected time on this machine.") + " " + md_escape(" · ".join(known)))
    if missing:
        left, right = st.columns([4, 1], vertical_alignment="center")
        names = md_escape((" " + t("and") + " ").join(t(m) for m in missing))
        left.caption(":material/timer: " + t(
            "{names} has not been timed with these settings on this machine yet: a short probe (two batches) "
            "measures it." if len(missing) == 1 else
            "{names} have not been timed with these settings on this machine yet: a short probe (two batches) "
            "measures it.", names=names))
        if right.button(t("Measure"), key="btn_probe", icon=":material/speed:", disabled=busy, width="stretch"):
            with st.spinner(t("Measuring two batches…")):
                for name in missing:
                    try:
                        probe_speed(configs[name], items, num_classes)
                    except HotdogError as err:
                        show_error(err)
                        return
            st.rerun()


def memory_estimate(config, n_images: int) -> tuple[str, str]:
    """(kind, sentence) of a run's memory estimate for the Train page: "info" when it fits
    (or trains in micro-batches), "warning" when close, "error" when it would be refused.
    The same figures `train` prints and the job checks before it starts (hotdog.memory)."""
    from hotdog import memory

    plan = memory.plan(config, n_images)
    text = t("Memory:") + " " + engine(plan.message) + "."
    return {"proceed": "info", "warn": "warning", "refuse": "error"}[plan.decision], text


def job_header(snap: dict, key: str) -> None:
    """The live panel's first line: what runs, and Stop for the browser that started it;
    another session gets who/when and only a labelled, confirmed stop."""
    left, right = st.columns([5, 1], vertical_alignment="center")
    left.markdown(f"**{t('Stopping') if snap['stopping'] else t('Running')}:** {md_escape(snap['label'])}")
    if snap["mine"]:
        # on_click: the stop is requested before this panel redraws, so the very next frame
        # already shows the stopping state (a plain `if button:` would show it a refresh late).
        right.button(t("Stop"), icon=":material/stop:", key=key, width="stretch", on_click=request_stop,
                     args=(snap["run_id"],), disabled=snap["stopping"])
        return
    left.caption(t("Started by another browser session at {time}; only that session can stop it. You can "
                   "watch it here.", time=snap['started']))
    with right.popover(t("Stop…"), icon=":material/stop:", width="stretch", disabled=snap["stopping"]):
        st.warning(t("This ends a training someone else started.") + " " + kept_on_stop(len(snap["metrics"])))
        st.button(t("Stop someone else's run"), key=f"{key}_other", type="primary", on_click=request_stop,
                  args=(snap["run_id"], True))


def kept_on_stop(epochs_done: int) -> str:
    """What a stop now would keep, exactly."""
    if epochs_done == 0:
        return t("No epoch has completed yet, so nothing would be kept.")
    return t("The weights after epoch {n} (the last completed one) are kept.", n=epochs_done)


def stopping_note(snap: dict) -> str:
    """The live panel's line while a stop is pending."""
    return t("Stopping after this batch…") + " " + kept_on_stop(len(snap["metrics"]))


STOP_KEY = "stop_requested"  # the run id this session asked to stop (session state)


def request_stop(run_id: str, force: bool = False) -> None:
    """Stop button callback: ask the job to stop and remember it in this session at once."""
    stop_job(force=force)
    st.session_state[STOP_KEY] = run_id  # the live panel says "Stopping after this batch…" at once


def startup_checklist(snap: dict) -> None:
    """Before the first training batch: the start-up steps done so far and the current one's
    bar (the training process starting, the source model, decoding, features)."""
    p = snap.get("progress")
    if snap.get("message"):
        st.caption(md_escape(snap["message"]))
    if p is None:
        st.progress(0.0, text=t("Starting the training process (loading MXNet)…"))
        return
    current = _get(p, "phase")
    for (state, text), name in zip(startup_steps(snap.get("phases") or {}, current),
                                   _phase_order(snap.get("phases") or {})):
        if name != current:  # the current step is the bar below
            st.caption(":material/check: " + md_escape(text))
    st.progress(progress_fraction(p), text=progress_text(p))


def live_panel(was_key: str, stop_key: str, body) -> None:
    """The auto-refreshing panel of the running job: header with its Stop, then ``body(snap)``;
    nothing when idle (``was_key`` remembers whether a job ran, see :func:`live_job`)."""
    @fragment(run_every=1.0)
    def live() -> None:
        snap = live_job(was_key)
        if snap is None:
            return
        with st.container(border=True):
            job_header(snap, key=stop_key)
            if snap["stopping"]:
                st.info(stopping_note(snap), icon=":material/hourglass_top:")
            body(snap)

    live()


def sweep_progress(state, now: float | None = None) -> dict | None:
    """For a sweep in the job: {"sweep_id", "title", "point" (1-based, of the sweep), "total",
    "text": "Point 7/28 · epoch 2/5 · ETA 3m 10s"}; the ETA spreads the time taken so far over
    the points of this job (the current one counted by its progress). None for plain runs."""
    sweep = getattr(state, "sweep", None)
    if not sweep:
        return None
    queued = list(sweep.get("points") or [])
    done = max(len(state.run_ids) - 1, 0)
    point = queued[min(done, len(queued) - 1)] if queued else done + 1
    p = state.progress
    frac = progress_fraction(p) if p is not None and _get(p, "phase", "train") == "train" else 0.0
    elapsed = (time.time() if now is None else now) - (getattr(state, "job_started", None) or time.time())
    progress = done + frac
    eta = elapsed / progress * (len(queued) - progress) if progress > 0 and queued else float("nan")
    parts = [t("Point {point}/{total}", point=point, total=sweep.get('total', len(queued)))]
    if p is not None:
        parts.append(t("epoch {epoch}/{epochs}", epoch=_get(p, 'epoch'), epochs=_get(p, 'epochs'))
                     if _get(p, "phase", "train") == "train"
                     else phase_text(_get(p, "phase"), _get(p, "batch"), _get(p, "batches")))
    parts.append(t("ETA {eta}", eta=format_duration(eta)))
    return {"sweep_id": sweep.get("sweep_id"), "title": sweep.get("title") or "", "point": point,
            "total": sweep.get("total", len(queued)), "fraction": progress / len(queued) if queued else 0.0,
            "text": " · ".join(parts)}


def sweep_table(summary: dict) -> pd.DataFrame:
    """One row per point of :func:`hotdog.sweeps.summarize`: its settings, status, accuracy (the
    run's, :func:`acc_header`), time."""
    grid = list(summary["spec"]["grid"])
    rows = []
    for p in summary["points"]:
        row = {"point": p["index"] + 1}
        row.update({k: p["values"].get(k) for k in grid if k != "seed"})
        cfg = p["config"]
        row.update({"mode": cfg.get("mode"), "freeze": cfg.get("freeze"), "lr": cfg.get("lr"),
                    "lr_mult": cfg.get("lr_mult"), "seed": p["values"].get("seed"), "status": p["status"],
                    acc_header(): p["accuracy"], "seconds": p["seconds"], "run": p["run_id"] or ""})
        rows.append(row)
    return pd.DataFrame(rows)


def accuracy_vs_lr_chart(summary: dict):
    """The runs' accuracy (saved model) against the learning rate (log axis), one line per group of the
    sweep (mode / frozen / head multiplier), mean over seeds with +-1 standard deviation bars."""
    import altair as alt

    from hotdog import sweeps

    rows = sweeps.aggregate(summary)
    df = pd.DataFrame([{**r, "lo": r["mean"] - r["std"], "hi": r["mean"] + r["std"]}
                       for r in rows if r["mean"] is not None])
    if df.empty:
        return None
    x = alt.X("lr:Q", title=t("learning rate (log scale)"), scale=alt.Scale(type="log"), axis=alt.Axis(format="~g"))
    color = alt.Color("group:N", title=None, scale=alt.Scale(scheme="tableau10"),
                      legend=alt.Legend(orient="bottom"))
    base = alt.Chart(df)
    line = base.mark_line(point=True).encode(
        x=x, y=alt.Y("mean:Q", title=t("test accuracy (saved model)"), scale=alt.Scale(domain=[0, 1])), color=color,
        tooltip=["group", alt.Tooltip("lr:Q", format="g"), alt.Tooltip("mean:Q", format=".3f"),
                 alt.Tooltip("std:Q", format=".3f"), "n", "diverged"])
    if (df["n"] > 1).any():
        line = line + base.mark_errorbar().encode(x=x, y=alt.Y("lo:Q", title=None), y2="hi:Q", color=color)
    return line.properties(height=320)


def lr_find_chart(result: dict):
    """The lr finder's smoothed loss against the learning rate (log axis), the suggestion marked."""
    import altair as alt

    df = pd.DataFrame({"lr": result["lrs"], "loss": result["losses"]})
    df = df[np.isfinite(df["loss"])]
    chart = alt.Chart(df).mark_line().encode(
        x=alt.X("lr:Q", title=t("learning rate (log scale)"), scale=alt.Scale(type="log"), axis=alt.Axis(format="~g")),
        y=alt.Y("loss:Q", title=t("smoothed training loss"), scale=alt.Scale(zero=False)),
        tooltip=[alt.Tooltip("lr:Q", format=".3g"), alt.Tooltip("loss:Q", format=".3f")])
    if result.get("suggested_lr"):
        mark = pd.DataFrame({"lr": [result["suggested_lr"]], "label": [t("suggested {lr}", lr=f"{result['suggested_lr']:.2g}")]})
        rule = alt.Chart(mark).mark_rule(color="#d9480f", strokeDash=[4, 3]).encode(x="lr:Q")
        text = alt.Chart(mark).mark_text(align="left", dx=4, dy=-120, color="#d9480f").encode(x="lr:Q", text="label")
        chart = chart + rule + text
    return chart.properties(height=260)


def job_end_message(state) -> tuple[str, str]:
    """(kind, text) for a training that ended: kind is "success", "info" or "error"."""
    took = format_duration((state.ended or 0) - (state.started or 0))
    mode = t(MODE_TITLES.get(getattr(state.config, "mode", ""), "training"))
    res = state.result
    if state.state == "finished":
        value, weights = run_accuracy(state.run_id) if state.run_id else (None, "")
        acc = (", " + t("{header} {acc}: {weights}", header=acc_header(), acc=acc_text(value), weights=weights)
               if value is not None else "")
        return "success", t("Run finished ({mode}): {run}{acc} ({took})", mode=mode, run=state.run_id, acc=acc,
                            took=took)
    if state.state == "stopped":
        from hotdog.train import stopped_message

        why = res.message if res is not None else stopped_message(len(state.epochs))
        # why: the engine's sentence (train.stopped_message), English by the rule of i18n
        return "info", t("Run stopped: {run}: {why}.", run=state.run_id, why=engine(why))
    return "error", f"Run {state.state}: {state.run_id}: {state.error or ''}"


# ------------------------------------------------------------------------------ Streamlit

def show_error(err: BaseException, prefix: str = "") -> None:
    """A HotdogError is a sentence for people: show it, never a traceback."""
    msg = str(err) if isinstance(err, HotdogError) else f"{type(err).__name__}: {err}"
    st.error(md_escape(prefix + msg), icon=":material/error:")


@contextlib.contextmanager
def guarded(what: str):
    """Run a page or a fragment so that nothing escapes as a traceback: a HotdogError is
    its sentence, anything else one message (the traceback goes to the server log only).
    Fragments need it too: their reruns do not pass through the router's own guard.
    Streamlit's rerun/stop signals are BaseExceptions and pass through."""
    try:
        yield
    except HotdogError as err:
        show_error(err)
    except Exception:  # noqa: BLE001 - a bug: keep the app up
        logging.getLogger("hotdog.app").exception("%s failed", what)
        st.error(t("The {what} hit an unexpected error; the details are in the server log. "
                   "The other pages keep working.", what=t(what)), icon=":material/bug_report:")


def fragment(run_every=None):
    """``st.fragment`` whose body runs :func:`guarded`."""
    def wrap(fn):
        @functools.wraps(fn)
        def body(*args, **kwargs):
            with guarded("live view"):  # t("live view")
                return fn(*args, **kwargs)
        return st.fragment(run_every=run_every)(body)
    return wrap


def or_error(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, or None after showing its HotdogError as a sentence."""
    try:
        return fn(*args, **kwargs)
    except HotdogError as err:
        show_error(err)
        return None


def _stamp(root: str) -> float:
    """Changes when files are added or removed anywhere two levels down (cache key)."""
    p = Path(root)
    stamp = 0.0
    try:
        stamp = p.stat().st_mtime
        for child in p.iterdir():
            if child.is_dir():
                stamp = max(stamp, child.stat().st_mtime)
                for grandchild in child.iterdir():
                    if grandchild.is_dir():
                        stamp = max(stamp, grandchild.stat().st_mtime)
    except OSError:
        pass
    return stamp


def _mtime(path) -> float:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return 0.0


@st.cache_data(show_spinner=False, max_entries=16)  # the spinner is dataset_report's (translated)
def _report(root: str, stamp: float) -> dict:
    from hotdog import data

    return data.validate_dataset(root).to_dict()


def dataset_report(root: str) -> dict:
    with st.spinner(t("Checking the data set…")):
        return _report(str(root), _stamp(root))


@st.cache_data(show_spinner=False, max_entries=16)
def _splits(root: str, stamp: float):
    from hotdog import data

    return data.load_splits(root)


def dataset_splits(root: str):
    return _splits(str(root), _stamp(root))


@st.cache_data(show_spinner=False, max_entries=16)
def _sizes(root: str, stamp: float):
    s = _splits(root, stamp)
    return image_sizes_frame([p for p, _ in s.train + s.test])


def image_sizes(root: str):
    return _sizes(str(root), _stamp(root))


def remembered_dataset() -> str | None:
    """The data set chosen last (HOTDOG_HOME/prefs.json), if it is still a folder the app may
    open (the shared data folders can change between server starts)."""
    from hotdog import prefs
    from hotdog.data.access import allowed_roots, within

    root = prefs.get("data_root")
    try:
        if root and Path(root).is_dir() and within(root, allowed_roots()):
            return root
    except OSError:
        pass
    return None


def dataset_choices() -> list[DatasetChoice]:
    """Every data set of the pickers: $HOTDOG_DATA, the installed ones, then folders typed
    (the remembered choice among them, so a new session lists it too)."""
    from hotdog import data

    try:
        installed = list(data.installed_datasets())
    except HotdogError:
        installed = []
    typed = list(st.session_state.get(FOLDERS_KEY, []))
    remembered = remembered_dataset()
    if remembered and remembered not in typed:
        typed.append(remembered)
    return dataset_choices_from(installed, extra=typed)


def installed_name_exists(name: str) -> bool:
    from hotdog.paths import data_root

    try:
        return (data_root() / name).exists()
    except (OSError, ValueError):
        return False


def current_dataset() -> str | None:
    """The data set the user picked (in this session, else the one remembered on disk from
    an earlier session), else $HOTDOG_DATA, else an installed one."""
    root = st.session_state.get(DATA_KEY)
    if root:
        return root
    root = remembered_dataset() or default_dataset(dataset_choices()) or _latest_run_dataset()
    if root:
        st.session_state[DATA_KEY] = root
    return root


def _latest_run_dataset() -> str | None:
    """The data set of the newest run, when it is still a folder the app may open."""
    from hotdog.data.access import allowed_roots, within

    for r in all_runs()[:1]:
        try:
            if r.data_root and Path(r.data_root).is_dir() and within(r.data_root, allowed_roots()):
                return r.data_root
        except OSError:
            pass
    return None


def set_dataset(root: str) -> None:
    """Use ``root`` on every page of this session and remember it (absolute) for the next."""
    from hotdog import prefs

    root = os.path.abspath(str(root))
    st.session_state[DATA_KEY] = root
    try:
        prefs.save("data_root", root)
    except (OSError, HotdogError, ValueError) as err:  # a read-only HOTDOG_HOME: this session still has it
        logging.getLogger(__name__).warning("could not remember the data set: %s", err)


def dataset_picker(container=None, key: str = "data_pick", label: str | None = None,
                   short: bool = False) -> str | None:
    """The one data set picker (Data page, sidebar): every data set the app can open, bound to
    the session's choice (which another page may have changed) and remembered on disk."""
    container = container or st
    choices = dataset_choices()
    current = current_dataset()
    if not choices and not current:
        return None
    paths = [c.path for c in choices]
    # The sidebar is narrow: names there, names and folders on the Data page.
    labels = {c.path: (f"{Path(c.path).name} ({t(ORIGIN_WORDS[c.origin]) if c.origin != 'env' else ORIGIN_WORDS['env']})"
                       if short else long_label(c)) for c in choices}
    if current and current not in paths:
        paths.append(current)
    if st.session_state.get(key) != current and current in paths:
        st.session_state[key] = current
    container.selectbox(label or t("Data set in use"), paths, key=key, format_func=lambda p: labels.get(p, p),
                        on_change=lambda: set_dataset(st.session_state[key]),
                        help=t("Data sets installed in $HOTDOG_HOME/data, the one in $HOTDOG_DATA and folders "
                               "you opened; the choice is remembered for the next visit."))
    return current


def long_label(c: DatasetChoice) -> str:
    """``c.label`` in the interface's language (its path is data)."""
    name, path = Path(c.path).name, verbatim(c.path)
    if c.origin == "env":
        return t("{name} (from {env}: {path})", name=name, env="$" + ENV_DATA, path=path)
    if c.origin == "installed":
        return t("{name} (installed: {path})", name=name, path=path)
    return t("{name} (folder: {path})", name=name, path=path)


def remember_folder(root: str) -> None:
    folders = list(st.session_state.get(FOLDERS_KEY, []))
    if root not in folders:
        folders.append(root)
    st.session_state[FOLDERS_KEY] = folders


def current_source() -> str:
    from hotdog import models

    return st.session_state.get(SOURCE_KEY) or models.DEFAULT_SOURCE


@st.cache_data(show_spinner=False)
def source_titles() -> dict:
    from hotdog import models

    out = {}
    for name in models.list_sources():
        try:
            out[name] = models.get_spec(name).title
        except HotdogError:
            out[name] = name
    return out


def source_select(container=None, key: str = "source_select") -> str:
    """One source-model picker whose value is shared by every page."""
    container = container or st.sidebar
    titles = source_titles()
    names = list(titles)
    current = current_source()

    def _sync():
        st.session_state[SOURCE_KEY] = st.session_state[key]

    # Re-seed the widget from the shared value so switching pages keeps the choice.
    if st.session_state.get(key) != current:
        st.session_state[key] = current if current in names else names[0]
    choice = container.selectbox(t("Source model"), names, key=key, format_func=lambda n: t(titles.get(n, n)),
                                 on_change=_sync,
                                 help=t("The ImageNet-pretrained network whose features are fine-tuned."))
    st.session_state[SOURCE_KEY] = choice
    return choice


@st.cache_resource(show_spinner=False)
def devices() -> list[str]:
    """Device names a run can use (every GPU, else the CPU); asked once per server."""
    from hotdog.devices import available_devices

    return mx_call(available_devices)


def num_gpus() -> int:
    return sum(d.startswith("gpu") for d in devices())


# ------------------------------------------------------------------------------ the training job

def job_manager():
    from hotdog.jobs import job_manager as manager

    return manager()


def xsrf_token(cookie: str) -> bytes | None:
    """The browser's XSRF token from Tornado's cookie. Version 2 ("2|mask|masked|time") is
    re-masked with a fresh random mask on every page load, so only the unmasked token is
    stable across reloads; older cookies are the token itself."""
    parts = cookie.split("|")
    if len(parts) == 4 and parts[0] == "2":
        try:
            mask, masked = bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
        except ValueError:
            return None
        if len(mask) != 4:
            return None
        return bytes(b ^ mask[i % 4] for i, b in enumerate(masked))
    return cookie.encode() or None


def session_owner() -> str:
    """Who this browser is, for owning a training: a hash of its XSRF token, which survives
    a reload and a second tab of the same browser (another browser gets another one), else
    a token kept in this session (no cookie: AppTest)."""
    import hashlib
    import secrets

    try:
        cookie = st.context.cookies.get("_streamlit_xsrf")
    except Exception:  # noqa: BLE001 - no request context (AppTest, bare mode)
        cookie = None
    token = xsrf_token(cookie) if isinstance(cookie, str) else None
    if token:
        return hashlib.sha256(token).hexdigest()[:16]
    return st.session_state.setdefault("_hotdog_owner", secrets.token_hex(8))


def start_jobs(configs) -> str | None:
    """Start ``configs`` one after the other (the chapter's comparison is two), owned by this browser.

    A start while this browser's own job runs is not an error but the same click again (a double
    click, or Streamlit replaying a button's click when it merges two reruns on a busy machine,
    seen in the browser test): None, and the live panel goes on showing that job. A job of another
    session still raises TrainingBusyError."""
    from hotdog.errors import TrainingBusyError

    manager, owner = job_manager(), session_owner()
    try:
        return manager.start(list(configs), owner=owner)
    except TrainingBusyError:
        state = manager.current()
        if state.running and state.owner is not None and state.owner == owner:
            return None
        raise


def start_sweep(spec) -> str:
    """Record a sweep (every point validated) and queue its points in the one job; its id."""
    from hotdog import sweeps

    sweep_id = sweeps.create(spec)
    sweeps.start_in_job(job_manager(), sweep_id, owner=session_owner())
    return sweep_id


def resume_sweep(sweep_id: str) -> str | None:
    """Queue a sweep's unfinished points; None when every point is done."""
    from hotdog import sweeps

    return sweeps.start_in_job(job_manager(), sweep_id, owner=session_owner())


def find_lr(config, num_iter: int = 50) -> dict:
    """The learning-rate finder for ``config`` on the engine's MXNet thread (never this script's)."""
    from hotdog.lr_find import lr_find

    with st.spinner(t("Trying {n} learning rates from 1e-6 upwards…", n=num_iter)):
        return mx_call(lr_find, config, num_iter=num_iter, end_lr=10.0).to_dict()


def stop_job(force: bool = False) -> None:
    """Stop this browser's training; ``force`` (confirmed by the user) stops another's."""
    job_manager().stop(owner=session_owner(), force=force)


def job_snapshot() -> dict | None:
    """What runs now in this server (any tab), or None when idle."""
    snap = job_view(job_manager().current(), source_titles(), owner=session_owner())
    if snap is not None and not snap["stopping"] and st.session_state.get(STOP_KEY) == snap["run_id"]:
        snap["stopping"] = True  # this session asked: never show it "running" again
        snap["label"] += " · stopping…"
    return snap


def live_job(flag: str) -> dict | None:
    """:func:`job_snapshot` for a page's auto-refreshing view; when the job has just ended the
    whole page reruns (its buttons and results change). ``flag``: the session key that
    remembers whether a job ran at the view's last refresh."""
    snap = job_snapshot()
    was = st.session_state.get(flag)
    st.session_state[flag] = snap is not None
    if snap is None and was:
        st.rerun(scope="app")
    return snap


def last_job():
    """The JobState of the most recent training in this server (for its end message)."""
    s = job_manager().current()
    return None if s.running or s.state == "idle" else s


def sidebar_status(page_title: str = "") -> None:
    """Data set, source model and the running job, on every page."""
    root = current_dataset()
    if page_title != "Data" and dataset_choices():  # the Data page has its own picker
        dataset_picker(key="sidebar_data_pick", label=t("Data set"), short=True)
    else:
        st.caption(t("**Data set:** {name}", name=md_escape(Path(root).name) if root else t("none yet")))
    try:
        st.caption(t("**Source:** {name}", name=md_escape(t(source_titles().get(current_source(), current_source())))))
    except (HotdogError, ImportError):
        pass
    # Poll only while something runs: an idle tab learns of a new job on its next rerun.
    (_job_status_live if job_snapshot() is not None else _job_status)(link=page_title != "Train")


def _job_status(link: bool = True) -> None:
    snap = job_snapshot()
    if snap is None:
        st.caption(t("**Training:** idle"))
        return
    p = snap["progress"]
    if p is not None and _get(p, "phase", "train") != "train":
        where = " · " + t("starting")
    else:
        where = f" · {progress_fraction(p):.0%}" if p is not None else ""
    mode = snap["mode"]  # translated by job_view
    st.caption(t("**Training:** {mode} stopping{where}", mode=mode, where=where) if snap["stopping"]
               else t("**Training:** {mode} running{where}", mode=mode, where=where))
    if link:
        st.page_link("pages/train.py", label=t("Watch it"), icon=":material/monitoring:")


_job_status_live = fragment(run_every=2.0)(_job_status)


# ------------------------------------------------------------------------------ runs & prediction

def run_store():
    from hotdog.runs import RunStore

    return RunStore()


def all_runs() -> list:
    try:
        return run_store().list()
    except HotdogError:
        return []


def finished_runs() -> list:
    return [r for r in all_runs() if r.status == "finished"]


def run_record(run_id: str):
    try:
        return run_store().load(run_id)
    except HotdogError:
        return None


def run_data_root(run_id: str) -> str | None:
    rec = run_record(run_id)
    return rec.config.get("data_root") if rec else None


# ---- a run's accuracy: one number per run on every page (hotdog.runs.RunSummary.accuracy, the
# saved model's), labelled with which saved weights it is of; charts of epochs show each epoch's own.
def acc_header() -> str:
    """The name of a run's accuracy in headers and labels."""
    return t("test acc (saved model)")


def acc_help() -> str:
    return t("test accuracy of the saved model the run predicts with: its best epoch's (model-best.params) when "
             "it kept one, else model.params (a WiSE-FT mix, else the last epoch)")


def curves_note() -> None:
    """Under a chart of epochs: its test accuracy is each epoch's, not the run's (saved model's)."""
    st.caption(t("The curves are each epoch's test accuracy: the last point is the last epoch's, which the saved "
                 "model (a best epoch or a WiSE-FT mix) can differ from."))


def saved_model_title(weights: str, best_epoch: int | None = None) -> str:
    """'best epoch 4' / 'WiSE-FT mix' / 'last epoch': which saved weights a run's accuracy is of
    (RunSummary.accuracy_weights)."""
    if weights == "best" and best_epoch:
        return t("best epoch {n}", n=best_epoch)
    return t("WiSE-FT mix") if weights == "wise" else t("last epoch")


def run_accuracy(run_id: str):
    """(accuracy, which weights in words) of a stored run, (None, "") when it cannot be read."""
    try:
        s = run_store().summary(run_id)
    except HotdogError:
        return None, ""
    return s.accuracy, saved_model_title(s.accuracy_weights, s.best_epoch)


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def run_label(r) -> str:
    """'0.940 · fine-tune · hotdog-mini · 12-02 06:21': short enough for a closed picker (the
    run id, source model and weights are in :func:`run_details` beside it). The accuracy is
    the run's (:attr:`hotdog.runs.RunSummary.accuracy`)."""
    data = Path(r.data_root or run_data_root(r.run_id) or "").name
    mode = t(MODE_TITLES[r.mode]) if r.mode in MODE_TITLES else (r.mode or "?")
    when = time.strftime("%m-%d %H:%M", time.localtime(r.created)) if r.created else r.run_id
    return " · ".join([acc_text(r.accuracy), mode, *([_short(data, 18)] if data else []), when])


def run_details(r) -> str:
    """'run <id> · EfficientNet-Lite0 · test acc (saved model) 0.940: best epoch 4': what the
    short label leaves out."""
    return t("run {run} · {source} · {header} {acc}: {weights}", run=r.run_id,
             source=t(source_titles().get(r.source, r.source or "?")), header=acc_header(),
             acc=acc_text(r.accuracy), weights=saved_model_title(r.accuracy_weights, r.best_epoch))


def weights_title(run, weights: str) -> str:
    """'best epoch 4 (val 0.950)' / 'last epoch (5)': which weights, in words."""
    if weights == "best" and run.best_epoch:
        val = " " + t("(val {acc})", acc=f"{run.best_val_acc:.3f}") if isinstance(run.best_val_acc, (int, float)) else ""
        return t("best epoch {n}", n=run.best_epoch) + val
    if getattr(run, "saved_test_acc", None) is not None:  # model.params is not the last epoch's own weights
        return t("WiSE-FT mix of the last epoch ({n})", n=run.epochs_done)
    return t("last epoch ({n})", n=run.epochs_done)


def pick_run(runs: Sequence, key: str, label: str | None = None, container=None):
    """A picker over run summaries (in the given order, the first preselected; labelled by
    :func:`run_label`); the chosen one."""
    by_id = {r.run_id: r for r in runs}
    labels = {run_id: run_label(r) for run_id, r in by_id.items()}
    # The noun, capitalised ("Run" alone is the Experiments page's verb in the catalog)
    noun = t("run")
    where = container or st
    run_id = where.selectbox(label or noun[:1].upper() + noun[1:], list(by_id), format_func=labels.get, key=key,
                             help=t("Each run: its test accuracy (saved model), mode, data set and when it "
                                    "started; its id below."))
    where.caption(md_escape(run_details(by_id[run_id])))
    return by_id[run_id]


def run_metrics(run_id: str) -> list[dict]:
    rec = run_record(run_id)
    return rec.metrics if rec else []


def comparison(run_ids: Sequence[str]):
    """The :class:`hotdog.compare.Comparison` of a job's runs (the chapter's fine-tune vs
    scratch): each run's accuracy (its saved model's) and time, and the run evaluated on its test
    split with those weights (cached) to flag a model that predicts one class for every photo.
    None when a run is gone."""
    from hotdog import compare
    from hotdog.runpick import default_weights

    rows = []
    for run_id in run_ids:
        rec = run_record(run_id)
        if rec is None:
            return None
        s = run_store().summary(run_id)
        seconds = rec.status.get("seconds")
        single = None
        if rec.model is not None:
            try:
                ev = evaluation(str(rec.run_dir), default_weights(s))
                single = compare.one_class(ev.get("confusion"), ev.get("classes") or [])
            except HotdogError:
                single = None
        rows.append(compare.ComparedRun(run_id, rec.config.get("mode"), s.accuracy,
                                        seconds if isinstance(seconds, (int, float)) else None, single,
                                        len(rec.metrics), rec.state, s.accuracy_weights, s.best_epoch))
    return compare.summarize(rows)


def run_seconds(summary, rec=None) -> float | None:
    """Wall time of a run: recorded at the end, else the sum of its epochs."""
    rec = rec or run_record(summary.run_id)
    if rec is None:
        return None
    seconds = rec.status.get("seconds")
    if isinstance(seconds, (int, float)):
        return float(seconds)
    return sum(float(m.get("seconds") or 0) for m in rec.metrics) or None


def run_classes(run_dir: str) -> list[str]:
    from hotdog.predict import run_model_info

    try:
        return list(run_model_info(run_dir)["classes"])
    except HotdogError:
        return []


def _params_stamp(run_dir: str) -> float:
    from hotdog.runs import PARAMS_FILE

    return _mtime(Path(run_dir) / PARAMS_FILE)


@st.cache_resource(show_spinner=False, max_entries=4)  # the spinner is predictor's (translated)
def _predictor(run_dir: str, stamp: float, weights: str = "last"):
    from hotdog.predict import Predictor

    return Predictor.from_run(run_dir, weights=weights)


def predictor(run_dir: str, weights: str = "last"):
    """A finished run's Predictor (its "last" or "best" weights), cached until its weights change."""
    with st.spinner(t("Loading the run's weights…")):
        return _predictor(str(run_dir), _params_stamp(run_dir), weights)


@st.cache_resource(show_spinner=False, max_entries=4)  # the spinner is zero_shot's (translated)
def _zero_shot(source: str, root: str, stamp: float):
    from hotdog.predict import Predictor

    splits = _splits(root, stamp)
    return Predictor.zero_shot(source, splits.classes, splits.train)


def zero_shot(source: str, root: str):
    """The source network with a head of ImageNet rows for the data set's classes (no training)."""
    with st.spinner(t("Fitting the zero-shot head on the training split…")):
        return _zero_shot(source, str(root), _stamp(root))


def classify(files: Sequence[tuple[str, bytes]], source: str, predictor=None) -> list:
    from hotdog.predict import classify_photos

    with st.spinner(t("Classifying…")):
        return classify_photos(files, source, predictor=predictor)


@st.cache_data(show_spinner="Reading the output layer…", max_entries=32)
def class_weights(source: str, class_name: str, k: int):
    from hotdog import models

    return mx_call(models.class_weights, source, class_name, k=k)


@st.cache_data(show_spinner=False, max_entries=16)
def _output_rows(run_dir: str, stamp: float) -> dict:
    from hotdog.predict import run_output_rows

    return run_output_rows(run_dir)


def run_output_rows(run_dir: str) -> dict:
    """The run's output-layer row per class, read from its saved parameters."""
    return _output_rows(str(run_dir), _params_stamp(run_dir))


@st.cache_data(show_spinner=False, max_entries=64, ttl=60)  # ttl: an edit in place keeps folder mtimes
def _drift(run_id: str, root: str, stamp: float) -> str | None:
    from hotdog.train import data_drift

    rec = run_record(run_id)
    return data_drift(rec.config) if rec else None


def data_drift(run_id: str) -> str | None:
    """A sentence when the run's data set changed since it was trained (cached per folder state)."""
    root = run_data_root(run_id)
    return _drift(run_id, root or "", _stamp(root) if root else 0.0)


@st.cache_data(show_spinner=False, max_entries=16)  # the spinner is evaluation's (translated)
def _evaluation(run_dir: str, stamp: float, split: str, split_stamp: float, weights: str = "last") -> dict:
    from hotdog.predict import evaluate

    return evaluate(run_dir, split, predictor=_predictor(run_dir, stamp, weights)).to_dict()


def evaluation(run_dir: str, weights: str = "last") -> dict:
    """The run (its "last" or "best" weights) evaluated on the test split of its data set."""
    root = run_data_root(Path(run_dir).name)
    if not root or not Path(root).is_dir():
        raise HotdogError(f"the data set this run was trained on is gone ({root})")
    split = eval_split(root)
    with st.spinner(t("Evaluating on the test split…")):
        return _evaluation(str(run_dir), _params_stamp(run_dir), split, _stamp(split), weights)


@st.cache_data(show_spinner=False, max_entries=512)
def _thumbnail(path: str, stamp: float, size: int, square: bool):
    from PIL import ImageOps

    from hotdog import data

    im = data.decode_image(path)
    if square:
        return ImageOps.fit(im, (size, size))
    im.thumbnail((size, size))
    return im


def thumbnail(path, size: int = 256, square: bool = False):
    """A small decoded copy of a photo on disk, cached (pages redraw on every click)."""
    return _thumbnail(str(path), _mtime(path), size, square)


# ------------------------------------------------------------------------------ legacy pages/ mode

def _leave_legacy_pages_mode() -> None:
    """Hand a fresh server's first request over to the router, once per server process.

    Until some session has called ``st.navigation``, Streamlit treats a ``pages/`` folder
    beside the entrypoint as its legacy multipage app: a first request for a page URL (a
    bookmark of /data) runs ``pages/data.py`` directly, without streamlit_app.py, so without
    the app's navigation and sidebar. ``.streamlit/config.toml`` sets
    ``client.showSidebarNavigation = false`` so that mode never draws its own page list.
    Here, on the first import of this module (every page and the router import it), the
    legacy mode is switched off as ``st.navigation`` does, the sidebar navigation is handed
    back to the router's ``st.navigation``, and the request reruns: through the router, on
    the same page. The legacy flag is process-wide, so later imports find nothing to do.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
        from streamlit.runtime.scriptrunner import get_script_run_ctx
    except ImportError:  # a Streamlit without the legacy mode
        return
    if get_script_run_ctx() is None or not getattr(PagesManager, "uses_pages_directory", False):
        return
    PagesManager.uses_pages_directory = False
    st.set_option("client.showSidebarNavigation", True)
    st.rerun()


_leave_legacy_pages_mode()


# ------------------------------------------------------------------------------ explain & export

def contributions_frame(contrib: dict) -> pd.DataFrame:
    """Top feature dimensions of :meth:`hotdog.explain.Explainer.contributions` for a bar chart,
    largest absolute contribution first; ``sign`` says which way each pushes the score."""
    rows = [{"dimension": str(d["dimension"]), "contribution": float(d["contribution"]),
             "weight": float(d["weight"]), "feature": float(d["feature"]),
             "sign": "raises the score" if d["contribution"] >= 0 else "lowers the score"}
            for d in contrib.get("dimensions") or []]
    return pd.DataFrame(rows, columns=["dimension", "contribution", "weight", "feature", "sign"])


@st.cache_resource(show_spinner=False, max_entries=4)  # the spinner is explainer's (translated)
def _run_explainer(run_dir: str, stamp: float):
    from hotdog.explain import Explainer

    return Explainer.from_run(run_dir)


@st.cache_resource(show_spinner=False, max_entries=2)
def _imagenet_explainer(source: str):
    from hotdog.explain import Explainer

    return Explainer.imagenet(source)


def imagenet_explainer(source: str):
    """The pretrained ImageNet classifier of ``source`` as a plain network (Grad-CAM, contributions)."""
    with st.spinner(t("Preparing the heatmap network…")):
        return _imagenet_explainer(source)


@st.cache_resource(show_spinner=False, max_entries=2)
def _zero_shot_explainer(source: str, root: str, stamp: float):
    from hotdog.explain import Explainer

    splits = _splits(root, stamp)
    return Explainer.zero_shot(source, splits.classes, splits.train)


def explainer(run_dir: str | None = None, source: str | None = None, zero_shot_root: str | None = None):
    """The Grad-CAM network for a run, else the zero-shot head of a data set, else the ImageNet
    classifier of ``source``; cached until the run's weights or the data set change."""
    if not run_dir and not zero_shot_root:
        return imagenet_explainer(source or current_source())
    with st.spinner(t("Preparing the heatmap network…")):
        if run_dir:
            return _run_explainer(str(run_dir), _params_stamp(run_dir))
        return _zero_shot_explainer(source or current_source(), str(zero_shot_root), _stamp(zero_shot_root))


def heatmaps(explainer_, images: Sequence) -> list:
    """Grad-CAM of each decoded photo for its predicted class: Explanation per image."""
    with st.spinner(t("Computing heatmaps…")):
        return explainer_.explain_images(list(images))


@st.cache_data(show_spinner=False, max_entries=16)  # the spinner is gallery_heatmaps' (translated)
def _gallery_heatmaps(run_dir: str, stamp: float, items: tuple, size: int) -> list:
    from PIL import ImageOps

    ex = _run_explainer(run_dir, stamp)
    out = []
    for path, cls in items:
        try:
            e = ex.explain([path], class_name=cls)[0]
        except HotdogError:
            e = None
        out.append(ImageOps.fit(e.overlay, (size, size)) if e is not None and e.ok else None)
    return out


def gallery_heatmaps(run_dir: str, misclassified: Sequence[dict], size: int = 256) -> list:
    """For each misclassified photo, its heatmap for the class the run wrongly predicted (a
    square overlay, None when it cannot be made); cached per run weights."""
    items = tuple((str(m["path"]), str(m["predicted"])) for m in misclassified)
    with st.spinner(t("Computing heatmaps…")):
        return _gallery_heatmaps(str(run_dir), _params_stamp(run_dir), items, size)


@st.cache_data(show_spinner="Exporting…", max_entries=4)
def _export_zip(run_dir: str, stamp: float, fmt: str) -> bytes:
    from hotdog.export import export_zip as make_zip

    return make_zip(run_dir, fmt)


def export_zip(run_dir: str, fmt: str) -> bytes:
    """A run exported as ``fmt`` ("onnx" | "mxnet"), zipped with its preprocess.json; cached
    until the run's weights change."""
    return _export_zip(str(run_dir), _params_stamp(run_dir), fmt)
