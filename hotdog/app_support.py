"""UI-free glue for the Streamlit pages: data frames for charts, display helpers, choices.

Nothing here imports streamlit, so every function is testable without a browser and the
pages stay thin. Engine logic (decoding, training, evaluation) lives in the engine modules;
this module only reshapes their results for display.
"""

from __future__ import annotations

import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from PIL import Image

IMAGE_TYPES = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
IMAGE_SUFFIXES = {"." + t for t in IMAGE_TYPES}
ENV_DATA = "HOTDOG_DATA"


@dataclass(frozen=True)
class DatasetChoice:
    path: str
    label: str
    origin: str  # "env" | "installed" | "folder"


def dataset_choices(installed: Iterable[os.PathLike | str], env: dict | None = None,
                    extra: Sequence[str] = ()) -> list[DatasetChoice]:
    """Every data set the user can pick: $HOTDOG_DATA first, then installed ones, then typed folders."""
    env = os.environ if env is None else env
    seen: set[str] = set()
    out: list[DatasetChoice] = []

    def add(path, label, origin):
        key = str(Path(path).expanduser())
        if key in seen:
            return
        seen.add(key)
        out.append(DatasetChoice(key, label, origin))

    if env.get(ENV_DATA):
        p = Path(env[ENV_DATA]).expanduser()
        add(p, f"{p.name} (from ${ENV_DATA}: {p})", "env")
    for p in installed:
        p = Path(p)
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
    rows = [
        {"split": split, "class": cls, "images": int(n)}
        for split, per_class in (report.get("counts") or {}).items()
        for cls, n in per_class.items()
    ]
    return pd.DataFrame(rows, columns=["split", "class", "images"])


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
    """The chapter's grid (first 8 hotdogs, last 8 not-hotdogs) for any number of classes.

    The first class shows its first images, every other class its last ones, as the chapter did.
    """
    by_class: dict[int, list[Path]] = {i: [] for i in range(len(classes))}
    for path, label in items:
        by_class.setdefault(int(label), []).append(Path(path))
    rows = []
    for i, name in enumerate(classes):
        paths = by_class.get(i, [])
        rows.append((name, paths[:per_class] if i == 0 else paths[-per_class:]))
    return rows


def mx_call(fn, *args, **kwargs):
    """Every MXNet call of the app goes through the engine's one long-lived MXNet thread:
    Streamlit runs each rerun in a new thread and MXNet keeps native memory per thread."""
    from hotdog.jobs import mx_call as _mx_call

    return _mx_call(fn, *args, **kwargs)


def augmentation_views(image, pre, n: int = 6) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` train-transform samples and the test-transform view of one photo, un-normalised."""
    from hotdog import data

    def work():
        train_tf, test_tf = data.train_transform(pre), data.test_transform(pre)
        views = [to_display_image(train_tf(image), pre.mean, pre.std) for _ in range(n)]
        return views, to_display_image(test_tf(image), pre.mean, pre.std)

    return mx_call(work)


def to_display_image(chw, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the normalisation of a CHW float tensor so a person can look at it (HWC uint8)."""
    arr = chw.asnumpy() if hasattr(chw, "asnumpy") else np.asarray(chw)
    arr = arr.astype(np.float32).transpose(1, 2, 0)
    arr = arr * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)


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
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def progress_fraction(p) -> float:
    """Overall progress 0..1 from a BatchProgress (epoch and batch are 1-based)."""
    epochs = max(int(_get(p, "epochs", 1) or 1), 1)
    batches = max(int(_get(p, "batches", 1) or 1), 1)
    epoch = max(int(_get(p, "epoch", 1) or 1), 1)
    batch = min(max(int(_get(p, "batch", 0) or 0), 0), batches)
    return min(max(((epoch - 1) + batch / batches) / epochs, 0.0), 1.0)


def progress_text(p) -> str:
    ips = _get(p, "images_per_sec")
    if _get(p, "phase") == "cache":
        return (f"Computing features once (frozen network): batch {_get(p, 'batch')}/{_get(p, 'batches')}"
                + (f" · {ips:.1f} images/s" if ips else ""))
    parts = [
        f"Epoch {_get(p, 'epoch')}/{_get(p, 'epochs')}",
        f"batch {_get(p, 'batch')}/{_get(p, 'batches')}",
        f"{ips:.1f} images/s" if ips else "– images/s",
        f"ETA {format_duration(_get(p, 'eta_seconds'))}",
    ]
    loss, acc = _get(p, "loss"), _get(p, "acc")
    # The engine reports 0/0 until its meter first syncs with the device: not a real loss.
    if loss and acc is not None and math.isfinite(loss):
        parts.append(f"loss {loss:.3f}, acc {acc:.3f}")
    return " · ".join(parts)


METRIC_LABELS = {"train_loss": "train loss", "train_acc": "train acc", "test_acc": "test acc"}


def curves_frame(epochs: Iterable[Any], run: str = "") -> pd.DataFrame:
    """Long frame (run, epoch, metric, value) for the chapter's loss/accuracy plot."""
    rows = []
    for m in epochs:
        for key, label in METRIC_LABELS.items():
            v = _get(m, key)
            if v is None:
                continue
            v = float(v)
            if not math.isfinite(v):
                continue
            rows.append({"run": run, "epoch": int(_get(m, "epoch")), "metric": label, "value": v})
    return pd.DataFrame(rows, columns=["run", "epoch", "metric", "value"])


def available_devices(num_gpus: int) -> list[str]:
    """Device strings TrainConfig understands: every GPU, else the CPU."""
    return [f"gpu({i})" for i in range(num_gpus)] or ["cpu(0)"]


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def md_escape(text: Any) -> str:
    """Make user-controlled text inert inside Streamlit markdown (st.error, st.caption...)."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def cosine(a, b) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return float("nan")
    return float(a @ b / (na * nb))


def probabilities_frame(probabilities: dict) -> pd.DataFrame:
    df = pd.DataFrame(
        [{"class": str(k), "probability": float(v)} for k, v in probabilities.items()],
        columns=["class", "probability"],
    )
    return df.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


# ------------------------------------------------------------------------------ prediction

@dataclass
class PhotoResult:
    """One uploaded photo as the Predict page shows it: either an error or the predictions."""

    name: str
    image: Any = None  # PIL image, as decoded (upright, RGB)
    probabilities: dict | None = None
    label: str | None = None
    top5: list[dict] | None = None
    error: str | None = None


def predict_photos(files: Sequence[tuple[str, bytes]], source: str, classify=None,
                   top_k: int = 5) -> list[PhotoResult]:
    """Decode every file on its own so one bad file never spoils the others.

    ``classify(images, raws)`` returns ``[(probabilities, label, error), ...]`` for the
    decodable photos; ``None`` means "the ImageNet classifier itself" (top-k as probabilities).
    """
    from hotdog import data, models
    from hotdog.errors import HotdogError

    results = [PhotoResult(name=str(name)) for name, _ in files]
    good: list[int] = []
    for i, (_, raw) in enumerate(files):
        try:
            results[i].image = data.decode_image(raw)
            good.append(i)
        except HotdogError as err:
            results[i].error = str(err)
    if not good:
        return results
    images = [results[i].image for i in good]
    raws = [files[i][1] for i in good]
    try:
        top = mx_call(models.imagenet_topk, source, images, k=top_k)
    except HotdogError as err:
        for i in good:
            results[i].error = str(err)
        return results
    for i, t in zip(good, top):
        results[i].top5 = t
    if classify is None:
        for i in good:
            t = results[i].top5
            results[i].probabilities = {d["name"]: d["probability"] for d in t}
            results[i].label = t[0]["name"] if t else None
        return results
    try:
        outs = classify(images, raws)
    except HotdogError as err:
        for i in good:
            results[i].error = str(err)
        return results
    for i, (probs, label, error) in zip(good, outs):
        if error:
            results[i].error = str(error)
        else:
            results[i].probabilities, results[i].label = dict(probs), label
    return results


class HeadClassifier:
    """A built network (e.g. the zero-shot ImageNet-initialised head) as a photo classifier."""

    def __init__(self, net, classes: Sequence[str], preprocess):
        self.net, self.classes, self.preprocess = net, list(classes), preprocess

    def __call__(self, images, raws=None):
        return mx_call(self._classify, list(images))

    def _classify(self, images):
        import mxnet as mx
        from hotdog import data

        tf = data.test_transform(self.preprocess)
        out = []
        for start in range(0, len(images), 16):
            x = mx.nd.stack(*[tf(im) for im in images[start:start + 16]])
            p = mx.nd.softmax(self.net(x)).asnumpy()
            for row in p:
                probs = {c: float(v) for c, v in zip(self.classes, row)}
                out.append((probs, self.classes[int(row.argmax())], None))
        return out


def sample_items(items: Sequence[tuple[Any, int]], per_class: int) -> list[tuple[Any, int]]:
    """The first ``per_class`` items of each label (enough to fit a zero-shot bias quickly)."""
    seen: dict[int, int] = {}
    out = []
    for path, label in items:
        if seen.get(label, 0) < per_class:
            seen[label] = seen.get(label, 0) + 1
            out.append((path, label))
    return out


# ------------------------------------------------------------------------------ job sequences

# The chapter's comparison runs fine-tuning and then scratch training, one after the other,
# and must keep going when the browser tab is closed. The engine runs one job at a time, so
# the configs still waiting live here (documented process-wide state, guarded by a lock).
_seq_lock = threading.Lock()
_pending: list = []


def start_sequence(configs: Sequence[Any], manager) -> str:
    """Start ``configs[0]`` now and each next one when the previous finishes; returns the first run id.

    Raises the engine's TrainingBusyError when anything is already running or waiting.
    """
    from hotdog.errors import TrainingBusyError

    if not configs:
        raise ValueError("nothing to train")
    with _seq_lock:
        if _pending:
            raise TrainingBusyError(
                f"{len(_pending)} more training run(s) are waiting in this server; stop them first")
        run_id = manager.start(configs[0])
        _pending[:] = list(configs[1:])
        if _pending:
            threading.Thread(target=_drain, args=(manager,), name="hotdog-app-sequence", daemon=True).start()
    return run_id


def _drain(manager) -> None:
    from hotdog.errors import HotdogError

    while True:
        state = manager.wait()
        with _seq_lock:
            if not _pending:
                return
            if state.state != "finished":  # stopped, diverged or failed: the rest is moot
                _pending.clear()
                return
            try:
                manager.start(_pending[0])
            except HotdogError:
                _pending.clear()
                return
            # Popped only once the next run is up, so readers never see "idle" in between.
            _pending.pop(0)


def pending_configs() -> list:
    with _seq_lock:
        return list(_pending)


def cancel_pending() -> None:
    with _seq_lock:
        _pending.clear()


def run_output_rows(run_dir, classes: Sequence[str]) -> dict:
    """Each class's row of a saved run's output layer, read from its ``.params`` file.

    Glue until the engine exposes it: the Predictor's network may be a fused inference copy
    without an ``output`` block. ``mx.nd.load`` reads plain tensors only (no pickle).
    """
    import json

    from hotdog.errors import RunStoreError

    run_dir = Path(run_dir)
    try:
        info = json.loads((run_dir / "model.json").read_text())
    except (OSError, ValueError):
        info = {}
    params = run_dir / info.get("params", "model.params")

    def load():
        import mxnet as mx

        return {k: v.asnumpy() for k, v in mx.nd.load(str(params)).items() if k.endswith("output.weight")}

    try:
        found = mx_call(load)
    except Exception as err:  # a corrupt file is the user's to know about, not a crash
        raise RunStoreError(f"cannot read the weights of run {run_dir.name}: {str(err).splitlines()[0]}") from err
    if len(found) != 1:
        raise RunStoreError(f"run {run_dir.name}: no single output layer in {params.name}")
    w = next(iter(found.values()))
    return {c: w[i] for i, c in enumerate(classes) if i < len(w)}


def zero_shot_note(classes: Sequence[str]) -> str:
    """Which ImageNet row each class of the zero-shot head starts from, in one sentence."""
    from hotdog import imagenet

    found = {c: imagenet.find_class(c) for c in classes}
    parts = []
    for c in classes:
        j = found[c]
        if j is not None:
            parts.append(f"'{c}' = ImageNet row {j} ('{imagenet.short_name(j)}')")
            continue
        base = re.sub(r"^(not|non|no)[\s_-]*", "", c, flags=re.I)
        k = imagenet.find_class(base) if base != c else None
        parts.append(f"'{c}' = everything but row {k}" if k is not None else f"'{c}' = random (no ImageNet class of that name)")
    return "Head rows: " + "; ".join(parts) + "."
