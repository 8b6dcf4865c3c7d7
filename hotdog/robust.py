"""Robust fine-tuning: WiSE-FT, L2-SP, an out-of-source proxy test set and per-source metrics.

Plain fine-tuning on 200 photos beats ImageNet on the photos it was tuned for and loses to it
on photos from elsewhere (fine-tuning distorts pretrained features: Kumar et al. 2022). This
module holds the remedies the training loop can use and the measurements that show them:

* **WiSE-FT** (Wortsman et al. 2022, ``TrainConfig.wise_alpha``): after training the weights
  become ``(1 - alpha) * zero-shot + alpha * fine-tuned``, where the zero-shot model is the
  source's features with the head of ImageNet rows (:func:`hotdog.models.imagenet_head_init`).
  Every parameter is mixed, BatchNorm running statistics too (they moved in ``update`` mode and
  are unchanged in ``keep`` mode, where mixing leaves them as they are). The zero-shot model
  exists only when every class is named like an ImageNet class or 'not-<one of them>'.
* **L2-SP** (Li et al. 2018, ``TrainConfig.l2sp``): the copied layers decay toward their
  pretrained values instead of toward 0 (:class:`L2SP`); the new output layer keeps ``wd``.
* **LP-FT** (Kumar et al. 2022) is ``warmup_epochs`` in the training loop (head on cached
  features first, then everything), not repeated here.
* **The out-of-source proxy** (:func:`proxy_folder`): the test split downscaled to 64 px,
  upscaled again and JPEG-compressed at quality 15, generated deterministically into the cache
  under ``HOTDOG_HOME`` (never into the data set).
* :class:`RobustCheck`: the callback that, after a finished fit, computes the accuracy-vs-alpha
  curve in one pass (no retraining: the mix is a weight copy), leaves the network at the
  chosen alpha (what the run store then saves) and records per-source metrics (test split,
  proxy, ``also_eval`` folders) in the run (``hotdog.runs.read_sources`` / ``read_wise``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from hotdog.callbacks import BatchProgress, CancelFit, Callback
from hotdog.errors import HotdogError

log = logging.getLogger(__name__)

ALPHAS = tuple(i / 10 for i in range(11))
PROXY_SIDE = 64  # the shorter side the test photos are shrunk to
PROXY_UPSCALE = 256  # ...and blown up to again (every source's preprocessing resizes to 256)
PROXY_QUALITY = 15  # JPEG quality of the result: heavy block artefacts
PROXY_VERSION = 1  # bump when the recipe changes, so old cached copies are not reused
PROXY_NAME = "proxy (test split at 64 px, JPEG q15)"
TEST_NAME = "test split (clean)"


# ------------------------------------------------------------------------------- the proxy

def degrade(image) -> bytes:
    """One photo as the proxy shows it: shorter side PROXY_SIDE, back to PROXY_UPSCALE
    (bicubic both ways), JPEG at PROXY_QUALITY. Deterministic for a given Pillow."""
    from PIL import Image

    im = image.convert("RGB")
    w, h = im.size
    down = PROXY_SIDE / min(w, h)
    small = im.resize((max(1, round(w * down)), max(1, round(h * down))), Image.BICUBIC)
    up = PROXY_UPSCALE / min(w, h)
    big = small.resize((max(1, round(w * up)), max(1, round(h * up))), Image.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=PROXY_QUALITY)
    return buf.getvalue()


def _proxy_key(items: Sequence[tuple[Any, int]], classes: Sequence[str]) -> str:
    h = hashlib.sha256(json.dumps([PROXY_VERSION, PROXY_SIDE, PROXY_UPSCALE, PROXY_QUALITY,
                                   list(classes)]).encode())
    for path, label in items:
        try:
            st = os.stat(path)
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = (-1, -1)
        h.update(f"{os.fsdecode(os.fspath(path))}\0{int(label)}\0{stamp}\0".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:24]


def proxy_folder(items: Sequence[tuple[Any, int]], classes: Sequence[str], home=None,
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """A folder ``<class>/<photo>.jpg`` holding the degraded copy of every readable item
    (the test split), cached under ``HOTDOG_HOME/cache/proxy/<key>`` where the key covers the
    recipe and each photo's path, size and modification time. Built in a hidden temp folder
    and renamed into place, so a crash never leaves half a proxy that looks whole."""
    from hotdog.data import decode_image
    from hotdog.paths import cache_root

    items = list(items)
    base = cache_root(home) / "proxy"
    final = base / _proxy_key(items, classes)
    if final.is_dir():
        return final
    tmp = base / f".tmp-{final.name}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        for i, (path, label) in enumerate(items):
            if progress is not None:
                progress(i, len(items))
            try:
                raw = degrade(decode_image(path, min_side=PROXY_UPSCALE))
            except HotdogError as err:
                log.warning("proxy: skipping unreadable %s: %s", Path(path).name, err)
                continue
            out = tmp / classes[label] / f"{i:05d}-{Path(path).stem}.jpg"
            out.parent.mkdir(exist_ok=True)
            out.write_bytes(raw)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # another process made it first otherwise
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------- WiSE-FT

def zero_shot_state(net, source: str, classes: Sequence[str], train_items=None) -> tuple[dict | None, str]:
    """(structural name -> zero-shot array, "") or (None, one sentence why there is none).

    The features are the source's pretrained ones; the head is ``net._hotdog_head_init`` (the
    ImageNet rows the run started from) or, for a run with a random head, the same rules
    fitted on ``train_items``."""
    from hotdog import models

    head = getattr(net, "_hotdog_head_init", None)
    if head is None:
        head = models.imagenet_head_init(source, list(classes), init_items=train_items or None)
    unmatched = [c for c, rule in zip(classes, head.rules) if rule == "random"]
    if unmatched:
        return None, ("WiSE-FT skipped: there is no zero-shot model to mix with, because "
                      + ", ".join(f"'{c}'" for c in unmatched)
                      + (" matches" if len(unmatched) == 1 else " match")
                      + " no ImageNet class (name classes like ImageNet classes, e.g. 'hotdog', "
                        "or 'not-<that class>')")
    weights = models.source_weights(source)
    zs = {k: v for k, v in weights.items() if k.startswith("features.")}
    zs["output.weight"], zs["output.bias"] = head.weight, head.bias
    params = models._structural_params(net)
    if set(params) != set(zs) or any(tuple(params[k].shape) != zs[k].shape for k in params):
        return None, "WiSE-FT skipped: the network does not match its source model's layout"
    return zs, ""


def current_state(net) -> dict[str, np.ndarray]:
    """Copies of every parameter (BatchNorm running statistics included) by structural name."""
    import mxnet as mx
    from hotdog import models

    mx.nd.waitall()
    return {k: p.data(p.list_ctx()[0]).asnumpy().copy() for k, p in models._structural_params(net).items()}


# Why no mix is made of a network whose weights are not all finite numbers (wise.json "skipped").
NOT_FINITE = ("WiSE-FT skipped: the fine-tuned weights are not all finite numbers (the training diverged), "
              "so they are kept unmixed")


def finite_state(state: dict) -> bool:
    """True when every weight of a :func:`current_state` is a finite number; a diverged training
    leaves inf or NaN ones, and any mix of those is meaningless (and NaN everywhere)."""
    return all(np.isfinite(v).all() for v in state.values())


def interpolate(net, zero_shot: dict, finetuned: dict, alpha: float) -> None:
    """Set ``net`` to ``(1 - alpha) * zero_shot + alpha * finetuned``, every parameter (BatchNorm
    running statistics included); alpha 0 and 1 give the two ends exactly. Callers mix only
    finite weights (:func:`finite_state`); the ends are copies whatever they hold."""
    import mxnet as mx
    from hotdog import models

    a = float(alpha)
    for k, p in models._structural_params(net).items():
        if a in (0.0, 1.0):  # a copy: restoring non-finite weights keeps them as they were (inf - inf is NaN)
            mixed = (finetuned if a == 1.0 else zero_shot)[k]
        else:
            # ft + (1 - a)(zs - ft) in float64: a weight both ends share (frozen features, BatchNorm
            # statistics in keep mode) stays bit-identical.
            ft = finetuned[k].astype(np.float64)
            mixed = (ft + (1.0 - a) * (zero_shot[k].astype(np.float64) - ft)).astype(finetuned[k].dtype)
        p.set_data(mx.nd.array(mixed, dtype=mixed.dtype))


@dataclass
class WiseCurve:
    """Accuracy vs alpha of one run: ``clean`` on its test split, ``proxy`` on the proxy
    (None where the proxy was off); ``chosen`` the alpha the saved model uses."""

    alphas: list[float]
    clean: list[float]
    proxy: list[float] | None
    chosen: float
    n_clean: int = 0
    n_proxy: int = 0
    # Per alpha, each class's recall (in class order): what the curve hides when one class
    # gains what the other loses.
    clean_recall: list[list[float]] = field(default_factory=list)
    proxy_recall: list[list[float]] = field(default_factory=list)
    # Test accuracy at ``chosen`` after each epoch (RobustCheck.after_epoch; empty at alpha 1).
    epochs_clean: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------- L2-SP

class L2SP:
    """Weight decay toward the pretrained weights for the copied layers (Li et al. 2018).

    Before each SGD step, ``strength * (w - w0)`` is added to the gradient of every trained
    parameter of ``net.features`` (scaled so it survives the Trainer's 1/batch rescaling, and
    split over the devices whose gradients the kvstore sums), and those parameters get
    ``wd_mult = 0``: they decay toward w0 instead of toward 0. The output layer keeps the plain
    ``wd``. Strength 0 adds exactly nothing and leaves every ``wd_mult`` alone."""

    def __init__(self, net, strength: float, ctxs: Sequence):
        self.strength = float(strength)
        self.ctxs = list(ctxs)
        self.params = [p for p in net.features.collect_params().values() if p.grad_req != "null"]
        self.anchor = {p.name: [p.data(c).copy() for c in self.ctxs] for p in self.params}
        if self.strength > 0:
            for p in self.params:
                p.wd_mult = 0.0

    def add_to_grads(self, batch_size: int) -> None:
        if self.strength == 0:
            return
        scale = self.strength * batch_size / len(self.ctxs)
        for p in self.params:
            for c, w0 in zip(self.ctxs, self.anchor[p.name]):
                g = p.grad(c)
                g += scale * (p.data(c) - w0)


def make_l2sp(config, net, ctxs) -> L2SP | None:
    """The run's L2-SP, or None when it does nothing (strength 0, scratch, frozen features)."""
    if not config.l2sp or config.mode != "finetune" or config.freeze:
        return None
    return L2SP(net, config.l2sp, ctxs)


# ------------------------------------------------------------------------------- evaluation

def _dataset(items, pre, keep_decoded: bool):
    """The readable items with the test transform, and their labels. ``keep_decoded`` keeps
    the decoded photos (compact uint8, shorter side ``pre.resize``) for the 11 passes of the
    alpha curve; other folders (any size) are decoded chunk by chunk, once."""
    from hotdog.data import ImageListDataset, test_transform

    ds = ImageListDataset(items, test_transform(pre), cache_decoded=keep_decoded, min_side=pre.resize)
    if keep_decoded:
        for bad in ds.preload():  # dropped from ds.items
            log.warning("skipping unreadable image %s: %s", Path(bad["path"]).name, bad["reason"])
    return ds, np.array([lab for _, lab in ds.items], np.int64)


def _forward(block, ds, ctx, batch: int = 32):
    """(labels, outputs of ``block``) over every readable photo of ``ds``, ``batch`` photos per
    forward; outputs None when no photo is readable."""
    import mxnet as mx

    from hotdog.errors import ImageDecodeError

    labels, outs = [], []
    for s in range(0, len(ds), batch):
        xs = []
        for i in range(s, min(s + batch, len(ds))):
            try:
                xs.append(ds[i][0])
            except ImageDecodeError as err:
                log.warning("skipping unreadable image %s: %s", ds.items[i][0].name, err)
                continue
            labels.append(ds.items[i][1])
        if xs:
            outs.append(block(mx.nd.stack(*xs).as_in_context(ctx)))
    return np.array(labels, np.int64), (mx.nd.concat(*outs, dim=0) if outs else None)


def _argmax(out) -> np.ndarray:
    return np.zeros(0, np.int64) if out is None else out.argmax(axis=1).asnumpy().astype(np.int64)


def _predicted(net, ds, ctx, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predicted class) of every readable photo of ``ds``, ``batch`` photos per forward."""
    labels, out = _forward(net, ds, ctx, batch)
    return labels, _argmax(out)


class _Scorer:
    """``scorer(ds)`` -> (labels, predicted class) for the network as it is now. With frozen
    features the WiSE-FT mix changes only the output layer (both ends share the features), so
    the backbone runs once per photo set and each alpha costs one pass of the head: the
    difference between ~2 minutes and seconds after a Quick run on a CPU."""

    def __init__(self, net, config, ctx):
        self.net, self.ctx = net, ctx
        self.frozen = bool(config.freeze and config.mode == "finetune")
        self._features: dict[int, tuple] = {}  # id(ds) -> (labels, backbone features)

    def __call__(self, ds) -> tuple[np.ndarray, np.ndarray]:
        if not self.frozen:
            return _predicted(self.net, ds, self.ctx)
        if id(ds) not in self._features:
            self._features[id(ds)] = (ds, *_forward(self.net.features, ds, self.ctx))
        _, labels, feats = self._features[id(ds)]
        return labels, _argmax(None if feats is None else self.net.output(feats))


def source_metrics(name: str, kind: str, classes: Sequence[str], labels: np.ndarray, predicted: np.ndarray,
                   folder: str = "", alpha: float | None = None) -> dict:
    """One entry of the run's sources.json: accuracy, per-class precision/recall/support."""
    k = len(classes)
    confusion = np.zeros((k, k), dtype=int)
    for t, p in zip(labels, predicted):
        confusion[int(t), int(p)] += 1
    n = int(confusion.sum())
    per_class = {}
    for i, c in enumerate(classes):
        tp, col, row = int(confusion[i, i]), int(confusion[:, i].sum()), int(confusion[i, :].sum())
        per_class[c] = {"precision": tp / col if col else 0.0, "recall": tp / row if row else 0.0, "support": row}
    return {"name": name, "kind": kind, "folder": folder, "accuracy": float(np.trace(confusion)) / n if n else 0.0,
            "n": n, "per_class": per_class, "confusion": confusion.tolist(), "alpha": alpha, "time": time.time()}


def report_metrics(name: str, kind: str, report, folder: str = "", alpha: float | None = None) -> dict:
    """A sources.json entry from a :class:`hotdog.predict.EvalReport`."""
    per_class = {c: {k: v[k] for k in ("precision", "recall", "support")} for c, v in report.per_class.items()}
    return {"name": name, "kind": kind, "folder": folder, "accuracy": float(report.accuracy), "n": int(report.n),
            "per_class": per_class, "confusion": report.confusion, "alpha": alpha, "time": time.time()}


@dataclass
class RobustReport:
    """What :func:`robust_check` did: the curve (None when skipped), per-source entries and
    the sentences to add to the run's end message."""

    curve: WiseCurve | None
    sources: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wise_skipped: str = ""


def robust_check(net, config, splits, pre, ctxs, run_dir: Path | None,
                 progress: Callable[[int, int], None] | None = None,
                 epochs_clean: Sequence[float] = ()) -> RobustReport:
    """After training: the alpha curve (clean and proxy) in one pass over the saved weights,
    the network left at ``config.wise_alpha``, and metrics per source (test split, proxy,
    ``config.also_eval`` folders) recorded in ``run_dir`` (when given)."""
    from hotdog.predict import split_items

    classes = list(splits.classes)
    ctx = ctxs[0]
    alpha = float(config.wise_alpha)
    zs, why = (None, "WiSE-FT does not apply to a network trained from scratch") if config.mode == "scratch" else \
        zero_shot_state(net, config.source, classes, splits.train)
    finetuned = current_state(net)
    if zs is not None and not finite_state(finetuned):
        zs, why = None, NOT_FINITE
    want_curve = zs is not None and bool(config.proxy_eval)
    sets = [("test", TEST_NAME, "", list(splits.test))]
    if config.proxy_eval:
        folder = proxy_folder(splits.test, classes)
        sets.append(("proxy", PROXY_NAME, "", split_items(folder, classes)))
    for extra in config.also_eval or []:
        try:
            sets.append(("folder", Path(extra).name or str(extra), str(extra), split_items(Path(extra), classes)))
        except HotdogError as err:
            log.warning("cannot evaluate on %s: %s", extra, err)
            sets.append(("folder", Path(extra).name or str(extra), str(extra), err))
    loaded = []
    for kind, name, folder, items in sets:
        if isinstance(items, Exception):
            loaded.append((kind, name, folder, None, None, str(items)))
            continue
        ds, labels = _dataset(items, pre, keep_decoded=kind != "folder")
        loaded.append((kind, name, folder, ds, labels, ""))
    alphas = list(ALPHAS) if want_curve else []
    steps = len(alphas) + 1
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, steps)

    report = RobustReport(curve=None, wise_skipped=why if zs is None else "")
    score = _Scorer(net, config, ctx)
    try:
        if want_curve:
            acc = {"test": [], "proxy": []}
            recall = {"test": [], "proxy": []}
            for a in alphas:
                interpolate(net, zs, finetuned, a)
                for kind, _, _, ds, _, _ in loaded[:2]:
                    labels, pred = score(ds)
                    acc[kind].append(float((pred == labels).mean()) if len(labels) else float("nan"))
                    recall[kind].append([float((pred[labels == c] == c).mean()) if (labels == c).any() else float("nan")
                                         for c in range(len(classes))])
                tick()
            report.curve = WiseCurve(alphas, acc["test"], acc["proxy"], alpha, n_clean=len(loaded[0][4]),
                                     n_proxy=len(loaded[1][4]), clean_recall=recall["test"],
                                     proxy_recall=recall["proxy"], epochs_clean=list(epochs_clean))
        if zs is not None:
            interpolate(net, zs, finetuned, alpha)
        else:
            interpolate(net, finetuned, finetuned, 1.0)
        used = alpha if zs is not None else None
        for kind, name, folder, ds, _, error in loaded:
            if error:
                report.notes.append(f"could not evaluate on {name}: {error}")
                continue
            labels, pred = score(ds)
            report.sources.append(source_metrics(name, kind, classes, labels, pred, folder, used))
        tick()
    except BaseException:
        interpolate(net, finetuned, finetuned, 1.0)  # a stop or an error keeps the fine-tuned weights
        raise
    test = next((s for s in report.sources if s["kind"] == "test"), None)
    if zs is None and (alpha != 1.0 or why == NOT_FINITE):
        report.notes.append(why)
    elif zs is not None and alpha != 1.0:
        report.notes.append(f"saved model: WiSE-FT alpha {alpha:g}"
                            + (f", test accuracy {test['accuracy']:.3f}" if test else ""))
    for s in report.sources:
        if s["kind"] != "test":
            report.notes.append(f"{s['name']} accuracy {s['accuracy']:.3f}")
    if run_dir is not None:
        from hotdog.runs import record_sources, write_wise

        if report.curve is not None or zs is None:
            write_wise(run_dir, report.curve.to_dict() if report.curve else {"skipped": why})
        record_sources(run_dir, report.sources)
    return report


class RobustCheck(Callback):
    """Runs :func:`robust_check` at the end of a finished fit, before the run store saves the
    weights (order 5 < RunRecorder's 10), so the saved model is the one at the chosen alpha.
    A stop request during the check keeps the fine-tuned weights (alpha 1) and says so."""

    order = 5

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.epochs_clean: list[float] = []  # test accuracy of the mixed weights after each epoch
        self._zero_shot = None  # None: not looked for yet; False: the run has none
        self._test = None
        self._score = None

    def after_epoch(self, fit, metrics) -> None:
        """With ``wise_alpha`` < 1: the test accuracy the mixed model would have after this
        epoch (mix, score, restore exactly), so the per-epoch criterion can be judged for the
        model a user actually gets, not only for the fine-tuned weights."""
        cfg = fit.config
        if cfg.wise_alpha == 1.0 or cfg.mode != "finetune" or fit.net is None:
            return
        if self._zero_shot is None:
            zs, _ = zero_shot_state(fit.net, cfg.source, list(fit.splits.classes), fit.splits.train)
            self._zero_shot = zs if zs is not None else False
            self._test = _dataset(fit.splits.test, fit.pre, keep_decoded=True)[0] if zs is not None else None
            self._score = _Scorer(fit.net, cfg, fit.ctxs[0])
        if self._zero_shot is False:
            return
        finetuned = current_state(fit.net)
        if not finite_state(finetuned):  # a diverged epoch: no mix to score (null in wise.json)
            self.epochs_clean.append(float("nan"))
            return
        try:
            interpolate(fit.net, self._zero_shot, finetuned, cfg.wise_alpha)
            labels, pred = self._score(self._test)
            self.epochs_clean.append(float((pred == labels).mean()) if len(labels) else float("nan"))
        finally:
            interpolate(fit.net, finetuned, finetuned, 1.0)

    def after_fit(self, fit, result) -> None:
        if result.status != "finished" or fit.net is None:
            return
        cfg = fit.config
        if cfg.wise_alpha == 1.0 and not cfg.proxy_eval and not cfg.also_eval:
            return
        t0 = time.time()

        def progress(done: int, total: int) -> None:
            fit.emit("before_batch", fit)  # a stop request is honoured between steps
            elapsed = time.time() - t0
            eta = elapsed / done * (total - done) if done else float("nan")
            fit.emit("after_batch", fit, BatchProgress(cfg.epochs, cfg.epochs, done, total, float("nan"),
                                                       float("nan"), 0.0, eta, "robust"))

        try:
            report = robust_check(fit.net, cfg, fit.splits, fit.pre, fit.ctxs, self.run_dir, progress,
                                  epochs_clean=self.epochs_clean)
        except CancelFit:
            result.message += "; stopped during the robustness check: the fine-tuned weights (alpha 1) are kept"
            return
        # result.test_acc stays the last epoch's (metrics.jsonl); model.json names the saved
        # model's when the mix changed it, which is what the run picker and Predict rank by.
        test = next((s for s in report.sources if s["kind"] == "test"), None)
        if test is not None and test.get("alpha") is not None and test["alpha"] != 1.0:
            fit.model_extra["wise"] = {"alpha": test["alpha"], "test_acc": test["accuracy"]}
        if report.notes:
            result.message += "; " + "; ".join(report.notes)


# ------------------------------------------------------------------------------- baselines

@dataclass
class ThresholdClassifier:
    """The no-training baseline: ImageNet's p(<class>) above a threshold fitted on the
    training split (2 classes, one of them an ImageNet class)."""

    source: str
    classes: list[str]
    imagenet_index: int
    positive: int  # the output position of the ImageNet class
    threshold: float
    train_accuracy: float

    def predict(self, items) -> tuple[np.ndarray, np.ndarray]:
        """(labels, predicted labels) of ``items``."""
        from hotdog import models

        _, logits, labels = models.items_forward(self.source, list(items))
        score = _log_softmax(logits)[:, self.imagenet_index]
        pred = np.where(score > self.threshold, self.positive, 1 - self.positive)
        return labels, pred


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def fit_threshold_classifier(source: str, classes: Sequence[str], train_items) -> ThresholdClassifier:
    """Fit the ImageNet threshold baseline; HotdogError when the classes do not allow it."""
    from hotdog import imagenet, models

    classes = list(classes)
    found = [(i, imagenet.find_class(c)) for i, c in enumerate(classes)]
    found = [(i, j) for i, j in found if j is not None]
    if len(classes) != 2 or len(found) != 1:
        raise HotdogError("the ImageNet threshold baseline needs 2 classes, exactly one named like an ImageNet class")
    pos, j = found[0]
    _, logits, labels = models.items_forward(source, list(train_items))
    t, acc = models._fit_threshold(_log_softmax(logits)[:, j], labels == pos)
    if math.isnan(acc):
        raise HotdogError("no training photos to fit the threshold on")
    return ThresholdClassifier(source, classes, j, pos, t, acc)


# ------------------------------------------------------------------------------- finished runs

def evaluate_folder(run_dir, folder, predictor=None, record: bool = True, weights: str = "last"):
    """(EvalReport, sources.json entry) of a saved run (its ``weights``: "last" or "best")
    on a folder with one sub-folder per class (or a data set root with test/); with
    ``record`` the entry is added to the run."""
    from hotdog.predict import evaluate
    from hotdog.runs import read_wise, record_sources

    folder = Path(folder)
    report = evaluate(run_dir, folder, predictor, weights=weights)
    wise, _ = read_wise(run_dir)
    alpha = wise.get("chosen") if wise and "alphas" in wise else None
    entry = report_metrics(folder.name or str(folder), "folder", report, str(folder), alpha)
    if record:
        record_sources(run_dir, [entry])
    return report, entry
