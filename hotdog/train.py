"""The training engine: the chapter's ``train_fine_tuning`` / ``d2l.train_ch13``, made
watchable (per-batch and per-epoch callbacks), stoppable (a ``threading.Event`` checked
every batch), safe (non-finite loss stops the run as ``diverged``) and recorded (every run
lands in the run store, see ``hotdog.runs``).

Also here: ``evaluate`` (accuracy, per-class precision/recall, confusion matrix,
misclassified examples of a saved run on a split folder) and ``Predictor`` (a saved run ->
per-class probabilities for image paths or bytes, many images in one batched forward).
The one-training-per-process job manager the app uses lives in ``hotdog.jobs`` and is
re-exported here.

Performance notes (the benchmark measures them): metrics are accumulated on the device and
read back once per batch, one batch late, so the host never waits for the batch it has just
queued; the run store is written once per epoch (plus a heartbeat at most every 30 s).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from hotdog.errors import DatasetError, HotdogError, ImageDecodeError, RunStoreError
from hotdog.runs import HEARTBEAT_EVERY, RunStore, atomic_write_json, load_run_dir, mark_active

log = logging.getLogger(__name__)

# Mirrors hotdog.models.DEFAULT_SOURCE (kept literal so importing this module stays cheap;
# a test checks they agree).
DEFAULT_SOURCE = "efficientnet_lite0"
MODES = ("finetune", "scratch")
CHAPTER_FINETUNE_LR = 0.01

# Fine-tuning learning rate when ``TrainConfig.lr`` is None. The chapter's 0.01 (x10 on the
# head) suits ResNet-18; for EfficientNet-Lite0 it wrecks the pretrained features within an
# epoch on hotdog-mini (224 px, batch 32: test accuracy 0.82 0.52 0.82 0.86 0.84 with
# BatchNorm kept, 0.78 0.54 0.62 0.62 0.88 with it updating), 0.001 does not (see
# RECOMMENDED and scripts/experiments.py).
FINETUNE_LR = {"efficientnet_lite0": 0.001, "resnet18_v2": CHAPTER_FINETUNE_LR}

# The app's default settings per source: what reached >= 0.90 test accuracy on hotdog-mini at
# the end of every epoch from the 3rd on (efficientnet_lite0, 224 px, batch 32, 5 epochs:
# 0.92 0.84 0.94 0.92 ...). Why each knob: BatchNorm keeps its pretrained statistics (batch
# statistics of 32 augmented photos drift); lr 0.001 (see FINETUNE_LR); the output layer
# starts from ImageNet's rows where class names match ("hotdog", "not-hotdog": 0.94 before
# any training), so no random head sends large gradients into the features. The chapter's
# exact behaviour is one call away: ``chapter_config``.
RECOMMENDED = {
    "efficientnet_lite0": {"lr": 0.001, "lr_mult": 10.0, "bn_mode": "keep", "batch_size": 32,
                           "init_output_from_imagenet": True},
    "resnet18_v2": {"lr": 0.01, "lr_mult": 10.0, "bn_mode": "keep", "batch_size": 32,
                    "init_output_from_imagenet": True},
}
BN_MODES = ("keep", "update")
PARAMS_FILE = "model.params"


# ---------------------------------------------------------------------------------------
# Config and results
# ---------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Every knob of a training run. Defaults are the chapter's (SGD, wd 1e-3, batch 128,
    5 epochs, lr 0.01 fine-tune / 0.1 scratch, head lr x10) except ``bn_mode``: "keep"
    leaves BatchNorm on its pretrained statistics, which is what makes fine-tuning stable
    on small data sets; "update" is the chapter's behaviour."""

    data_root: str
    source: str = DEFAULT_SOURCE
    mode: str = "finetune"
    freeze: bool = False
    lr: float | None = None
    lr_mult: float = 10.0
    wd: float = 1e-3
    batch_size: int = 128
    epochs: int = 5
    init_output_from_imagenet: bool = False
    bn_mode: str = "keep"
    seed: int = 0
    devices: list[str] | None = None
    input_size: int | None = None
    feature_cache: bool = True
    augment_views: int = 0
    num_workers: int | None = None
    # Fine-tuning only: the first ``warmup_epochs`` of ``epochs`` train just the new output
    # layer on cached features, so a random head's large early gradients never reach (and
    # wreck) the pretrained features; the remaining epochs fine-tune everything.
    warmup_epochs: int = 0
    # False trains on the test transform (no random crops/flips): used to check that the
    # feature-cache path agrees with the plain frozen loop.
    augment: bool = True

    def __post_init__(self):
        self.data_root = str(self.data_root)
        if self.mode not in MODES:
            raise HotdogError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.bn_mode not in BN_MODES:
            raise HotdogError(f"bn_mode must be one of {', '.join(BN_MODES)}, not {self.bn_mode!r}")
        if int(self.batch_size) < 1:
            raise HotdogError("batch_size must be at least 1")
        if int(self.epochs) < 1:
            raise HotdogError("epochs must be at least 1")
        if self.lr is not None and not (float(self.lr) > 0 and math.isfinite(float(self.lr))):
            raise HotdogError(f"learning rate must be a positive number, not {self.lr!r}")
        if not (float(self.lr_mult) > 0):
            raise HotdogError("lr_mult must be positive")
        if float(self.wd) < 0:
            raise HotdogError("weight decay must not be negative")
        if self.input_size is not None and int(self.input_size) < 8:
            raise HotdogError("input_size must be at least 8 pixels")
        if int(self.augment_views) < 0:
            raise HotdogError("augment_views must not be negative")
        if int(self.warmup_epochs) < 0:
            raise HotdogError("warmup_epochs must not be negative")
        if isinstance(self.devices, str):
            self.devices = [d for d in self.devices.split(",") if d.strip()]

    def resolved_lr(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        if self.mode == "scratch":
            return 0.1
        return FINETUNE_LR.get(self.source, CHAPTER_FINETUNE_LR)

    @property
    def uses_feature_cache(self) -> bool:
        return bool(self.freeze and self.feature_cache and self.mode == "finetune")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def recommended_config(data_root, source: str = DEFAULT_SOURCE, mode: str = "finetune", **overrides) -> "TrainConfig":
    """The app's default settings for ``source`` (see RECOMMENDED); scratch runs keep the
    chapter's lr 0.1. ``overrides`` win."""
    kw = dict(RECOMMENDED.get(source, {})) if mode == "finetune" else {"batch_size": 32}
    kw.update(overrides)
    return TrainConfig(str(data_root), source=source, mode=mode, **kw)


def chapter_config(data_root, source: str = DEFAULT_SOURCE, mode: str = "finetune", **overrides) -> "TrainConfig":
    """The chapter's train_fine_tuning exactly: lr 0.01 (scratch 0.1), head x10, batch 128,
    BatchNorm statistics updating, random head."""
    kw = {"lr": CHAPTER_FINETUNE_LR if mode == "finetune" else 0.1, "lr_mult": 10.0, "batch_size": 128,
          "bn_mode": "update", "init_output_from_imagenet": False}
    kw.update(overrides)
    return TrainConfig(str(data_root), source=source, mode=mode, **kw)


@dataclass
class BatchProgress:
    epoch: int
    epochs: int
    batch: int
    batches: int
    loss: float
    acc: float
    images_per_sec: float
    eta_seconds: float
    # "train" for training batches, "cache" while the frozen path extracts features
    phase: str = "train"


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float
    test_acc: float
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    run_id: str
    run_dir: str
    status: str
    message: str
    epochs: list[EpochMetrics]
    test_acc: float | None
    seconds: float

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "status": self.status,
            "message": self.message,
            "epochs": [e.to_dict() for e in self.epochs],
            "test_acc": self.test_acc,
            "seconds": self.seconds,
        }


# ---------------------------------------------------------------------------------------
# Devices, seeding, batching
# ---------------------------------------------------------------------------------------


def parse_device(spec) -> "Any":
    import mxnet as mx

    if isinstance(spec, mx.Context):
        return spec
    s = str(spec).strip().lower().replace(" ", "")
    kind, _, rest = s.partition("(")
    idx = rest.rstrip(")") if rest else "0"
    if kind not in ("cpu", "gpu") or not idx.isdigit():
        raise HotdogError(f"bad device {spec!r}: use cpu(0), cpu(1), gpu(0), ...")
    if kind == "gpu" and int(idx) >= mx.context.num_gpus():
        raise HotdogError(f"device {spec!r} does not exist ({mx.context.num_gpus()} GPUs found)")
    return mx.Context(kind, int(idx))


def resolve_devices(devices: Sequence | None) -> list:
    """The chapter's ``d2l.try_all_gpus()``: every GPU, else the CPU."""
    import mxnet as mx

    if devices:
        return [parse_device(d) for d in devices]
    n = mx.context.num_gpus()
    return [mx.gpu(i) for i in range(n)] or [mx.cpu()]


def seed_everything(seed: int) -> None:
    import mxnet as mx

    random.seed(seed)
    np.random.seed(seed % (2**32))
    mx.random.seed(seed)


class _EpochBatches:
    """Shuffled batches of indices, reproducible from the seed (the DataLoader's own
    shuffling uses numpy's global state, which other code may touch between epochs)."""

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True):
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.rng = np.random.RandomState(seed % (2**32))

    def __iter__(self):
        order = self.rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        for i in range(0, self.n, self.batch_size):
            yield order[i:i + self.batch_size].tolist()

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size


def _split(batch, ctxs):
    """``split_and_load`` that also copes with a batch smaller than the device count."""
    from mxnet import gluon

    use = ctxs[: max(1, min(len(ctxs), batch.shape[0]))]
    if len(use) == 1:
        return [batch.as_in_context(use[0])]
    return gluon.utils.split_and_load(batch, use, even_split=False)


def _make_loader(dataset, batch_sampler, num_workers: int):
    from mxnet import gluon

    return gluon.data.DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers)


def _default_workers(config: TrainConfig, ctxs) -> int:
    if config.num_workers is not None:
        return max(0, int(config.num_workers))
    # On a CPU the augmentation of cached decoded images costs ~1% of a training step and
    # worker processes would break the seed-for-seed reproducibility; GPUs need the help.
    if all(c.device_type == "cpu" for c in ctxs):
        return 0
    return min(4, os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------


class _Diverged(Exception):
    pass


class _Stopped(Exception):
    pass


class _Meter:
    """Running loss/accuracy. The device->host copy of a batch's numbers happens when the
    next batch has been queued, so the host never waits for the batch it just queued (on
    a CPU this overlaps the next batch's augmentation with the current step)."""

    def __init__(self):
        self.loss_sum = 0.0
        self.correct = 0.0
        self.n = 0
        self._pending = None

    def push(self, loss_sum_nd, correct_nd, n: int) -> bool:
        """Queue this batch's sums; fold the previous batch in. False if that one was not finite."""
        import mxnet as mx

        ok = self.flush()
        self._pending = (mx.nd.concat(loss_sum_nd.reshape((1,)), correct_nd.reshape((1,)), dim=0), n)
        return ok

    def flush(self) -> bool:
        if self._pending is None:
            return True
        arr, n = self._pending
        self._pending = None
        loss, correct = (float(v) for v in arr.asnumpy())
        self.n += n
        if not math.isfinite(loss):
            self.loss_sum = float("nan")
            return False
        self.loss_sum += loss
        self.correct += correct
        return True

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.n)

    @property
    def acc(self) -> float:
        return self.correct / max(1, self.n)


def _sum_on(arrs, ctx):
    total = None
    for a in arrs:
        a = a.as_in_context(ctx)
        total = a if total is None else total + a
    return total


def _correct(outs, ys, ctx):
    return _sum_on([(o.argmax(axis=1) == y.astype("float32")).sum() for o, y in zip(outs, ys)], ctx)


class _Run:
    """State of one ``train`` call shared by the plain and the cached loop."""

    def __init__(self, config, ctxs, on_batch, on_epoch, stop_event, store, run_id):
        self.config, self.ctxs = config, ctxs
        self.on_batch, self.on_epoch = on_batch, on_epoch
        self.stop_event = stop_event
        self.store, self.run_id = store, run_id
        self.epochs: list[EpochMetrics] = []
        self.last_heartbeat = time.time()
        self.images_done = 0
        self.images_total = 0
        self.busy_seconds = 0.0

    def check_stop(self):
        if self.stop_event is not None and self.stop_event.is_set():
            raise _Stopped()

    def maybe_heartbeat(self, epoch, batch, batches):
        now = time.time()
        if now - self.last_heartbeat >= HEARTBEAT_EVERY:
            self.last_heartbeat = now
            try:
                self.store.heartbeat(self.run_id, f"epoch {epoch}/{self.config.epochs}, batch {batch}/{batches}")
            except RunStoreError as err:  # a full disk should not kill a nearly finished run
                log.warning("heartbeat failed: %s", err)

    def report(self, meter, epoch, batch, batches, t_epoch, phase="train", done=None, total=None):
        if self.on_batch is None:
            return
        elapsed = self.busy_seconds + (time.time() - t_epoch)
        # Count only images whose step has completed (the meter lags one batch), so the
        # first batches do not report absurd speeds.
        done = self.images_done + (meter.n if meter else 0) if done is None else done
        total = self.images_total if total is None else total
        ips = done / elapsed if elapsed > 0 else 0.0
        eta = max(0, total - done) / ips if ips > 0 else float("nan")
        self.on_batch(BatchProgress(epoch, self.config.epochs, batch, batches,
                                    meter.loss if meter else float("nan"), meter.acc if meter else float("nan"),
                                    ips, eta, phase))

    def step_done(self, meter_ok, meter, epoch, b, batches, n, t0):
        if not meter_ok:
            raise _Diverged(self.diverged_message(epoch, max(1, b - 1)))
        self.report(meter, epoch, b, batches, t0)
        self.maybe_heartbeat(epoch, b, batches)

    def finish_epoch(self, epoch, batches, meter, test_fn, t0):
        if not meter.flush():
            raise _Diverged(self.diverged_message(epoch, batches))
        self.report(meter, epoch, batches, batches, t0)
        self.images_done += meter.n
        test_acc = test_fn()
        seconds = time.time() - t0
        self.busy_seconds += seconds
        m = EpochMetrics(epoch, meter.loss, meter.acc, test_acc, seconds)
        self.epochs.append(m)
        self.store.append_metrics(self.run_id, m.to_dict())
        self.store.write_status(self.run_id, "running",
                                f"epoch {epoch}/{self.config.epochs} done, test acc {test_acc:.3f}")
        self.last_heartbeat = time.time()
        if self.on_epoch is not None:
            self.on_epoch(m)

    def diverged_message(self, epoch, batch):
        lr = self.config.resolved_lr()
        head = lr * self.config.lr_mult if self.config.mode == "finetune" else lr
        return (f"training diverged: the loss became non-finite at epoch {epoch}, batch {batch} "
                f"with learning rate {lr:g}" + (f" (output layer {head:g})" if head != lr else "")
                + "; try a smaller learning rate")


def _step(trainer, loss_fn, Xs, ys, ctxs, meter, n, features=None, head=None, net=None) -> bool:
    """One SGD step over the device shards; returns the meter's verdict on the previous batch."""
    from mxnet import autograd

    if features is not None:
        # Frozen backbone: a fixed feature extractor, run in inference mode (pretrained
        # BatchNorm statistics, no dropout) outside autograd; only the head is recorded.
        feats = [features(x) for x in Xs]
        with autograd.record():
            outs = [head(f) for f in feats]
            ls = [loss_fn(o, t) for o, t in zip(outs, ys)]
    else:
        with autograd.record():
            outs = [net(x) for x in Xs]
            ls = [loss_fn(o, t) for o, t in zip(outs, ys)]
    autograd.backward(ls)
    trainer.step(n)
    return meter.push(_sum_on([l.sum() for l in ls], ctxs[0]), _correct(outs, ys, ctxs[0]), n)


def _accuracy(fwd, batches: Iterable, ctxs) -> float:
    """Accuracy with a single device->host copy at the end."""
    correct, n = None, 0
    for X, y in batches:
        Xs, ys = _split(X, ctxs), _split(y, ctxs)
        c = _correct([fwd(x) for x in Xs], ys, ctxs[0])
        correct = c if correct is None else correct + c
        n += X.shape[0]
    return float(correct.asscalar()) / n if n else float("nan")


def _preload(ds, what: str) -> None:
    bad = ds.preload()
    for b in bad:
        log.warning("skipping unreadable %s image %s: %s", what, b["path"], b["reason"])
    if len(ds) == 0:
        raise DatasetError(f"no readable {what} images")


def _plain_loop(run: _Run, net, splits, pre, trainer, loss_fn, workers, first_epoch: int = 1):
    """The chapter's train_ch13; with ``freeze`` the plain frozen loop (chapter exercise 3)."""
    from hotdog.data import ImageListDataset, test_transform, train_transform

    cfg, ctxs = run.config, run.ctxs
    train_tf = train_transform(pre) if cfg.augment else test_transform(pre)
    train_ds = ImageListDataset(splits.train, train_tf, min_side=pre.resize)
    test_ds = ImageListDataset(splits.test, test_transform(pre), min_side=pre.resize)
    _preload(train_ds, "train")
    _preload(test_ds, "test")
    sampler = _EpochBatches(len(train_ds), cfg.batch_size, cfg.seed)
    train_loader = _make_loader(train_ds, sampler, workers)
    test_loader = _make_loader(test_ds, _EpochBatches(len(test_ds), cfg.batch_size, 0, shuffle=False), workers)
    batches = len(sampler)
    run.images_total = len(train_ds) * cfg.epochs
    # Frozen too: the chapter's exercise 3 (grad_req 'null' on the features, the whole network
    # recorded every batch). models.set_freeze pins BatchNorm to its running statistics, so
    # this computes the same as the feature-cache path, only slower: the reference the
    # cache's speed-up is measured against.
    for epoch in range(first_epoch, cfg.epochs + 1):
        t0 = time.time()
        meter = _Meter()
        for b, (X, y) in enumerate(train_loader, 1):
            run.check_stop()
            ok = _step(trainer, loss_fn, _split(X, ctxs), _split(y, ctxs), ctxs, meter, X.shape[0], net=net)
            run.step_done(ok, meter, epoch, b, batches, X.shape[0], t0)
        run.finish_epoch(epoch, batches, meter, lambda: _accuracy(net, test_loader, ctxs), t0)


def _feature_extractor(net, ds, ctxs):
    """The backbone for one-off feature extraction: on a CPU, MXNet's MKLDNN-fused inference
    copy (conv+BatchNorm folding, ~2x faster) when it matches the plain network to 1e-4."""
    if ctxs[0].device_type != "cpu":
        return net.features, ctxs
    try:
        from hotdog.inference import fast_inference_block
    except ImportError:
        return net.features, ctxs
    import mxnet as mx

    example = mx.nd.stack(*[ds[i][0] for i in range(min(2, len(ds)))]).as_in_context(ctxs[0])
    choice = fast_inference_block(net.features, example)
    log.info("feature cache backbone: %s (%s, max abs diff %.2g)",
             "fused" if choice.fused else "plain", choice.reason, choice.max_abs_diff)
    return choice.block, ctxs[:1]


def _extract(run: _Run, features, ds, workers, label: str, batch_size: int = 64, ctxs=None):
    """Backbone features of every item of ``ds`` (in order), stacked on the first device."""
    import mxnet as mx

    ctxs = ctxs or run.ctxs
    loader = _make_loader(ds, _EpochBatches(len(ds), batch_size, 0, shuffle=False), workers)
    out = []
    t0 = time.time()
    done = 0
    for b, (X, _y) in enumerate(loader, 1):
        run.check_stop()
        out.extend(f.as_in_context(ctxs[0]) for f in (features(x) for x in _split(X, ctxs)))
        done += X.shape[0]
        if run.on_batch is not None:
            out[-1].wait_to_read()
            el = time.time() - t0
            ips = done / el if el > 0 else 0.0
            run.on_batch(BatchProgress(0, run.config.epochs, b, len(loader), float("nan"), float("nan"),
                                       ips, (len(ds) - done) / ips if ips else float("nan"), "cache"))
    feats = mx.nd.concat(*out, dim=0)
    return feats.reshape((feats.shape[0], -1))


def _cached_loop(run: _Run, net, splits, pre, trainer, loss_fn, workers, last_epoch: int | None = None):
    """Frozen fast path: backbone features once per image, then only the head trains.

    Batch order and head updates are those of the plain frozen loop, so without
    augmentation both end with the same head weights (up to float rounding)."""
    import mxnet as mx

    from hotdog.data import ImageListDataset, test_transform, train_transform

    cfg, ctxs = run.config, run.ctxs
    train_ds = ImageListDataset(splits.train, test_transform(pre), min_side=pre.resize)
    test_ds = ImageListDataset(splits.test, test_transform(pre), min_side=pre.resize)
    _preload(train_ds, "train")
    _preload(test_ds, "test")
    n = len(train_ds)
    features, fctxs = _feature_extractor(net, train_ds, ctxs)
    views = [_extract(run, features, train_ds, workers, "train", ctxs=fctxs)]
    if cfg.augment_views:
        aug_ds = ImageListDataset(train_ds.items, train_transform(pre), min_side=pre.resize)
        aug_ds._cache = train_ds._cache  # same decoded pixels, different transform
        for _ in range(int(cfg.augment_views)):
            views.append(_extract(run, features, aug_ds, workers, "augmented", ctxs=fctxs))
    feats = mx.nd.concat(*views, dim=0) if len(views) > 1 else views[0]
    test_feats = _extract(run, features, test_ds, workers, "test", ctxs=fctxs)
    del features
    labels = mx.nd.array([lab for _, lab in train_ds.items], ctx=ctxs[0])
    test_labels = mx.nd.array([lab for _, lab in test_ds.items], ctx=ctxs[0])

    sampler = _EpochBatches(n, cfg.batch_size, cfg.seed)
    view_rng = np.random.RandomState((cfg.seed + 1) % (2**32))
    batches = len(sampler)
    run.images_total = n * cfg.epochs
    head = net.output

    def test_acc():
        chunks = ((test_feats[i:i + 1024], test_labels[i:i + 1024]) for i in range(0, len(test_ds), 1024))
        return _accuracy(head, chunks, ctxs)

    for epoch in range(1, (last_epoch or cfg.epochs) + 1):
        t0 = time.time()
        meter = _Meter()
        for b, idx in enumerate(sampler, 1):
            run.check_stop()
            rows = np.asarray(idx)
            if len(views) > 1:  # each image shows up once per epoch, as one of its views
                rows = rows + n * view_rng.randint(0, len(views), size=len(rows))
            rows_nd = mx.nd.array(rows, ctx=ctxs[0])
            X, y = feats.take(rows_nd), labels.take(mx.nd.array(idx, ctx=ctxs[0]))
            ok = _step(trainer, loss_fn, _split(X, ctxs), _split(y, ctxs), ctxs, meter, len(idx),
                       features=lambda f: f, head=head)
            run.step_done(ok, meter, epoch, b, batches, len(idx), t0)
        run.finish_epoch(epoch, batches, meter, test_acc, t0)


# ---------------------------------------------------------------------------------------
# train()
# ---------------------------------------------------------------------------------------


def resolve_preprocess(source: str, input_size: int | None):
    from hotdog import models

    pre = models.get_spec(source).preprocess
    if input_size and int(input_size) != pre.input_size:
        pre = pre.scaled(int(input_size))
    return pre


def build_net(config: TrainConfig, num_classes: int, class_names, ctxs, init_items=None):
    """The target model for ``config``, initialised reproducibly from ``config.seed``."""
    from hotdog import models

    if config.mode == "scratch":
        seed_everything(config.seed)
        return models.build_scratch(config.source, num_classes, ctx=ctxs)
    # Warm the documented source-model cache first: its first load may draw random numbers
    # (initialise, then load), which would make the head's init depend on cache state.
    models.load_source(config.source)
    seed_everything(config.seed)
    return models.build_finetune(
        config.source, num_classes, ctx=ctxs, lr_mult=config.lr_mult, freeze=config.freeze,
        bn_mode=config.bn_mode, init_output_from_imagenet=config.init_output_from_imagenet,
        class_names=class_names,
        # The training split fits the bias of a 'not-<class>' row (0.94 vs 0.68 test accuracy
        # before any training on hotdog-mini, see models.imagenet_head_init).
        init_items=init_items if config.init_output_from_imagenet else None,
    )


def train(config: TrainConfig, *, on_batch: Callable[[BatchProgress], Any] | None = None,
          on_epoch: Callable[[EpochMetrics], Any] | None = None,
          stop_event: threading.Event | None = None, runs_dir: str | os.PathLike | None = None,
          run_id: str | None = None) -> TrainResult:
    """Train per ``config`` and record the run; returns when finished, stopped or diverged.

    ``run_id`` names a run already created in the store (the job manager creates it before
    starting its thread, so the caller learns the id and store errors synchronously).
    Errors (bad data, unknown source, store failures) mark the run ``failed`` and raise.
    """
    import mxnet as mx
    from mxnet import gluon

    from hotdog import data

    t_start = time.time()
    store = RunStore(runs_dir)
    if run_id is None:
        ctxs = resolve_devices(config.devices)
        pre = resolve_preprocess(config.source, config.input_size)
        splits = data.load_splits(config.data_root)
        run_id, run_dir = store.create(config)
    else:
        run_dir = store.run_dir(run_id)
        splits = ctxs = pre = None
    status, message = "failed", ""
    run = None
    try:
        if splits is None:
            splits = data.load_splits(config.data_root)
            ctxs = resolve_devices(config.devices)
            pre = resolve_preprocess(config.source, config.input_size)
        net = build_net(config, len(splits.classes), splits.classes, ctxs, init_items=splits.train)
        net.hybridize()
        seed_everything(config.seed + 1)  # augmentation and dropout draws, independent of the build
        workers = _default_workers(config, ctxs)
        lr = config.resolved_lr()
        params = net.output.collect_params() if config.uses_feature_cache else net.collect_params()
        trainer = gluon.Trainer(params, "sgd", {"learning_rate": lr, "wd": config.wd})
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        run = _Run(config, ctxs, on_batch, on_epoch, stop_event, store, run_id)
        store.write_status(run_id, "running", f"training on {', '.join(str(c) for c in ctxs)}",
                           classes=splits.classes, input_size=pre.input_size)
        log.info("run %s: %s %s, %d train / %d test images, %d classes, lr %g, devices %s",
                 run_id, config.mode, config.source, len(splits.train), len(splits.test),
                 len(splits.classes), lr, ctxs)
        warmup = 0 if config.freeze or config.mode != "finetune" else min(int(config.warmup_epochs), config.epochs)
        try:
            if config.uses_feature_cache:
                _cached_loop(run, net, splits, pre, trainer, loss_fn, workers)
            else:
                if warmup:
                    head_trainer = gluon.Trainer(net.output.collect_params(), "sgd",
                                                 {"learning_rate": lr, "wd": config.wd})
                    _cached_loop(run, net, splits, pre, head_trainer, loss_fn, workers, last_epoch=warmup)
                if warmup < config.epochs:
                    _plain_loop(run, net, splits, pre, trainer, loss_fn, workers, first_epoch=warmup + 1)
            status = "finished"
            last = run.epochs[-1].test_acc
            message = f"trained {len(run.epochs)} epochs, test accuracy {last:.3f}"
        except _Stopped:
            status = "stopped"
            message = f"stopped by request after {len(run.epochs)} completed epoch(s)"
        except _Diverged as err:
            status, message = "diverged", str(err)
        except KeyboardInterrupt:
            status, message = "stopped", f"interrupted after {len(run.epochs)} completed epoch(s)"
            _finish(store, run_id, net, splits, config, pre, status, message, t_start)
            raise
        if status != "diverged":
            mx.nd.waitall()
        _finish(store, run_id, net, splits, config, pre, status, message, t_start)
    except KeyboardInterrupt:
        raise
    except BaseException as err:
        message = str(err) or type(err).__name__
        try:
            store.write_status(run_id, "failed", message)
        except RunStoreError:
            log.warning("could not record failure of run %s", run_id)
        raise
    finally:
        from hotdog.runs import mark_active

        mark_active(run_id, False)
    epochs = run.epochs if run else []
    return TrainResult(run_id, str(run_dir), status, message, list(epochs),
                       epochs[-1].test_acc if epochs else None, time.time() - t_start)


def _finish(store: RunStore, run_id, net, splits, config, pre, status, message, t_start):
    run_dir = store.run_dir(run_id)
    if status in ("finished", "stopped"):
        # Weights of a diverged run are NaN: keep them off disk so nobody predicts with them.
        tmp = run_dir / f".{PARAMS_FILE}.tmp"
        try:
            net.save_parameters(str(tmp))
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, run_dir / PARAMS_FILE)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise RunStoreError(f"cannot save the weights of run {run_id}: {err.strerror or err}") from err
        atomic_write_json(run_dir / "classes.json", list(splits.classes))
        atomic_write_json(run_dir / "model.json", {
            "source": config.source, "mode": config.mode, "classes": list(splits.classes),
            "input_size": pre.input_size, "preprocess": dataclasses.asdict(pre),
            "bn_mode": config.bn_mode, "freeze": config.freeze, "params": PARAMS_FILE,
        })
    store.write_status(run_id, status, message, seconds=time.time() - t_start)


# ---------------------------------------------------------------------------------------
# Prediction and evaluation from a saved run
# ---------------------------------------------------------------------------------------


@dataclass
class Prediction:
    """One image's result: ``probabilities`` per class (run's class order) or an ``error``."""

    path: str | None
    name: str
    probabilities: dict[str, float] | None = None
    label: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        where = self.path if self.path is not None else self.name
        if self.error is not None:
            return {"path": where, "error": self.error}
        return {"path": where, "probabilities": self.probabilities, "label": self.label}


def _run_model_info(run_dir: Path) -> dict:
    rec = load_run_dir(run_dir)
    info = rec.model
    if info is None or not (run_dir / info.get("params", PARAMS_FILE)).is_file():
        raise RunStoreError(
            f"run {rec.run_id} has no saved model (status {rec.state}"
            + (f": {rec.status.get('message')}" if rec.status.get("message") else "") + ")")
    return info


def _fast_inference(net, pre, ctx):
    """MKLDNN-fused copy of ``net`` when it matches the plain one to 1e-4 (about 2x faster
    on a CPU), else the plain network hybridized."""
    import mxnet as mx

    if ctx.device_type == "cpu":
        try:
            from hotdog.inference import fast_inference_block

            # A private RNG: drawing from MXNet's global one would shift a running training's draws.
            rng = np.random.RandomState(0)
            example = mx.nd.array(rng.standard_normal((2, 3, pre.input_size, pre.input_size)), ctx=ctx)
            choice = fast_inference_block(net, example)
            log.debug("predictor: %s (%s)", "fused" if choice.fused else "plain", choice.reason)
            return choice.block
        except ImportError:
            pass
        except Exception as err:  # never let an optimisation break prediction
            log.warning("fused inference unavailable: %s", err)
    net.hybridize(static_alloc=True)
    return net


class Predictor:
    """A saved run's network, ready to classify photos with the run's classes and its source
    model's test preprocessing at the run's input size. Thread-safe (one forward at a time)."""

    MAX_BATCH = 32

    def __init__(self, net, classes: Sequence[str], preprocess, source: str, ctx=None, run_dir=None):
        import mxnet as mx

        from hotdog.data import test_transform

        self.net = net
        self.classes = list(classes)
        self.preprocess = preprocess
        self.source = source
        self.ctx = ctx or mx.cpu()
        self.run_dir = Path(run_dir) if run_dir else None
        self._transform = test_transform(preprocess)
        self._lock = threading.Lock()

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, ctx=None) -> "Predictor":
        from hotdog.jobs import mx_call

        return mx_call(cls._from_run, run_dir, ctx)

    @classmethod
    def _from_run(cls, run_dir, ctx=None) -> "Predictor":
        import mxnet as mx

        from hotdog import models
        from hotdog.data import Preprocess

        run_dir = Path(run_dir)
        info = _run_model_info(run_dir)
        classes = info["classes"]
        ctx = ctx or mx.cpu()
        source = info["source"]
        # The scratch architecture equals the fine-tune one and needs no pretrained weights.
        net = models.build_scratch(source, len(classes), ctx=[ctx])
        try:
            net.load_parameters(str(run_dir / info.get("params", PARAMS_FILE)), ctx=ctx)
        except (mx.base.MXNetError, OSError, AssertionError, ValueError) as err:
            raise RunStoreError(f"cannot load the weights of run {run_dir.name}: {str(err).splitlines()[0]}") from err
        pre_d = info.get("preprocess")
        if pre_d:
            pre = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in pre_d.items()})
        else:
            pre = resolve_preprocess(source, info.get("input_size"))
        return cls(_fast_inference(net, pre, ctx), classes, pre, source, ctx, run_dir)

    def _load(self, src) -> "Any":
        from hotdog.data import decode_image

        img = decode_image(src, min_side=self.preprocess.resize)
        return self._transform(img)

    def predict(self, sources: Sequence[bytes | str | os.PathLike], names: Sequence[str] | None = None) -> list[Prediction]:
        """Per-class probabilities for every source, in order; a photo that cannot be decoded
        gets ``error`` set and the others are still predicted (in batched forwards).

        Runs on the process-wide MXNet thread (``hotdog.jobs.mx_call``): safe and leak-free
        from any thread, including Streamlit's short-lived script threads."""
        from hotdog.jobs import mx_call

        return mx_call(self._predict, list(sources), names)

    def _predict(self, sources, names) -> list[Prediction]:
        import mxnet as mx

        results: list[Prediction] = []
        tensors, slots = [], []
        for i, src in enumerate(sources):
            is_bytes = isinstance(src, (bytes, bytearray, memoryview))
            path = None if is_bytes else str(src)
            name = (names[i] if names is not None and i < len(names) else None) or (
                f"image {i + 1}" if is_bytes else Path(str(src)).name)
            pred = Prediction(path=path, name=name)
            try:
                tensors.append(self._load(bytes(src) if is_bytes else src))
                slots.append(i)
            except ImageDecodeError as err:
                pred.error = str(err)
            except Exception as err:  # a transform failing on an odd image must not sink the batch
                pred.error = f"cannot process this image: {err}"
            results.append(pred)
        for start in range(0, len(tensors), self.MAX_BATCH):
            chunk = tensors[start:start + self.MAX_BATCH]
            X = mx.nd.stack(*chunk).as_in_context(self.ctx)
            with self._lock:
                probs = mx.nd.softmax(self.net(X), axis=1).asnumpy()
            for j, p in enumerate(probs):
                pred = results[slots[start + j]]
                pred.probabilities = {c: float(v) for c, v in zip(self.classes, p)}
                pred.label = self.classes[int(np.argmax(p))]
        return results


@dataclass
class EvalReport:
    accuracy: float
    n: int
    classes: list[str]
    per_class: dict[str, dict]
    confusion: list[list[int]]
    misclassified: list[dict]
    skipped: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _split_items(split_dir: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    """(path, label) of every image in ``split_dir/<class>/`` (a d2l root: its ``test/``)."""
    from hotdog.data import IMAGE_EXTENSIONS

    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir} is not a folder")
    subdirs = {p.name: p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if not set(subdirs) & set(classes) and (split_dir / "test").is_dir():
        return _split_items(split_dir / "test", classes)
    unknown = sorted(set(subdirs) - set(classes))
    if unknown:
        raise DatasetError(f"{split_dir} has folders that are not classes of this run: {', '.join(unknown)} "
                           f"(the run knows {', '.join(classes)})")
    items = []
    for label, c in enumerate(classes):
        if c not in subdirs:
            continue
        for p in sorted(subdirs[c].iterdir()):
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS:
                items.append((p, label))
    if not items:
        raise DatasetError(f"no images found in {split_dir} (expected one folder per class: {', '.join(classes)})")
    return items


def evaluate(run_dir: str | os.PathLike, split_dir: str | os.PathLike, predictor: Predictor | None = None) -> EvalReport:
    """A saved run on a folder with one sub-folder per class."""
    predictor = predictor or Predictor.from_run(run_dir)
    classes = predictor.classes
    items = _split_items(Path(split_dir), classes)
    preds = predictor.predict([p for p, _ in items])
    k = len(classes)
    confusion = np.zeros((k, k), dtype=int)
    mis, skipped = [], []
    for (path, label), pred in zip(items, preds):
        if pred.error:
            skipped.append({"path": str(path), "reason": pred.error})
            continue
        guess = classes.index(pred.label)
        confusion[label, guess] += 1
        if guess != label:
            mis.append({"path": str(path), "label": classes[label], "predicted": pred.label,
                        "probabilities": pred.probabilities})
    n = int(confusion.sum())
    per_class = {}
    for i, c in enumerate(classes):
        tp = int(confusion[i, i])
        col, row = int(confusion[:, i].sum()), int(confusion[i, :].sum())
        per_class[c] = {"precision": tp / col if col else 0.0, "recall": tp / row if row else 0.0,
                        "support": row}
    return EvalReport(accuracy=float(np.trace(confusion)) / n if n else 0.0, n=n, classes=list(classes),
                      per_class=per_class, confusion=confusion.tolist(), misclassified=mis, skipped=skipped)


def __getattr__(name):
    # The job manager imports this module; re-export it lazily to avoid an import cycle.
    if name in ("TrainingJob", "job_manager", "JobState"):
        from hotdog import jobs

        return getattr(jobs, name)
    raise AttributeError(name)
