"""The training loop: the chapter's ``train_fine_tuning`` / ``d2l.train_ch13``.

``train(config)`` prepares the data and devices, builds the network and runs one of two
loops (the plain loop, or the frozen fast path that computes backbone features once), then
returns a :class:`TrainResult`. The loop only trains and emits events; progress, the
run-store record, stop requests and divergence are callbacks (:mod:`hotdog.callbacks`).

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
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from hotdog.best import callbacks as best_epoch_callbacks
from hotdog.callbacks import (BatchProgress, CancelFit, Dispatcher, EpochMetrics, OnBatch, OnEpoch, RunRecorder,
                              StopOnEvent, TerminateOnNaN)
from hotdog.errors import DatasetError
from hotdog.runs import HEARTBEAT_EVERY, RunStore, mark_active
from hotdog.settings import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_id: str
    run_dir: str
    status: str
    message: str
    epochs: list[EpochMetrics]
    test_acc: float | None
    seconds: float
    # Seconds spent in each callback (the loop's own overhead), for the benchmark.
    callback_seconds: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id, "run_dir": str(self.run_dir), "status": self.status,
            "message": self.message, "epochs": [e.to_dict() for e in self.epochs],
            "test_acc": self.test_acc, "seconds": self.seconds,
        }


@dataclass
class Prepared:
    """What a run needs before it starts: the resolved config (devices, input size and
    workers filled in), the device contexts, the preprocessing and the scanned data set.
    Made once per run (the job manager makes it before it creates the run)."""

    config: TrainConfig
    ctxs: list
    pre: Any
    splits: Any
    data_fingerprint: str = ""
    memory: Any = None  # hotdog.memory.MemoryPlan: the estimate and the decision
    # Labels that are not settings (a sweep's id and point number): recorded in config.json
    # under "tags", never read back as knobs (TrainConfig.from_dict ignores the key).
    tags: dict = dataclasses.field(default_factory=dict)

    def record(self) -> dict:
        """What config.json holds: every resolved knob, the data set's content fingerprint,
        the photo counts and, when given, the run's ``tags``."""
        from hotdog import threads

        out = {**self.config.to_dict(), "data_fingerprint": self.data_fingerprint}
        # The OpenMP threads the training process computes with (the worker inherits this
        # process's decision, hotdog.threads), so a run's speed can be read against it.
        out["threads"] = threads.current().to_dict()
        # Photo counts: with the run's timings they give this machine's speed (hotdog.estimate).
        out["images"] = {"train": len(self.splits.train), "test": len(self.splits.test)}
        if self.tags:
            out["tags"] = dict(self.tags)
        return out

    def __reduce__(self):
        # Sent to the training worker process: device contexts and preprocessing are rebuilt
        # there from the resolved config (no MXNet objects cross the pipe; no rescan of the data).
        return (_rebuild_prepared, (self.config, self.splits, self.data_fingerprint, self.memory, self.tags))


def _rebuild_prepared(config: TrainConfig, splits, fingerprint: str, plan, tags: dict) -> Prepared:
    from hotdog.devices import resolve_devices

    return Prepared(config, resolve_devices(config.devices), resolve_preprocess(config.source, config.input_size),
                    splits, fingerprint, plan, tags)


def resolve_preprocess(source: str, input_size: int | None):
    from hotdog import models

    pre = models.get_spec(source).preprocess
    if input_size and int(input_size) != pre.input_size:
        pre = pre.scaled(int(input_size))
    return pre


def _default_workers(config: TrainConfig, ctxs) -> int:
    if config.num_workers is not None:
        return int(config.num_workers)
    # On a CPU the augmentation of cached decoded images costs ~1% of a training step and
    # worker processes would break the seed-for-seed reproducibility; GPUs need the help.
    if all(c.device_type == "cpu" for c in ctxs):
        return 0
    return min(4, os.cpu_count() or 1)


def prepare(config: TrainConfig, check_memory: bool = True, tags: dict | None = None) -> Prepared:
    """Check devices and source, scan the data set, and resolve every runtime value into the
    config, so config.json says exactly what the run used. ``tags`` (short str/int labels,
    e.g. ``{"sweep_id": ..., "sweep_point": 3}``) are recorded beside the knobs.

    With ``check_memory`` the run's peak memory is estimated (:func:`hotdog.memory.plan`): a
    run that cannot fit raises MemoryRefusedError before anything starts, ``micro_batch``
    left to the app becomes the whole batch or, when that does not fit, the largest
    micro-batch that does; ``Prepared.memory`` holds the estimate and its sentence."""
    from hotdog import data, memory
    from hotdog.devices import device_name, resolve_devices
    from hotdog.errors import MemoryRefusedError

    ctxs = resolve_devices(config.devices)
    _check_gpu_and_dist(config, ctxs)
    pre = resolve_preprocess(config.source, config.input_size)
    splits = data.load_splits(config.data_root)
    resolved = dataclasses.replace(
        config, data_root=str(os.path.abspath(config.data_root)), devices=[device_name(c) for c in ctxs],
        input_size=pre.input_size, num_workers=_default_workers(config, ctxs))
    plan = None
    if check_memory and all(c.device_type == "cpu" for c in ctxs):  # GPU memory is another matter
        plan = memory.plan(resolved, len(splits.train) + len(splits.test))
        if plan.decision == "refuse":
            raise MemoryRefusedError(plan.message[:1].upper() + plan.message[1:] + ".")
        if plan.decision == "warn":
            log.warning("%s", plan.message)
    if resolved.micro_batch is None:
        resolved.micro_batch = plan.micro_batch if plan is not None else resolved.batch_size
    fingerprint = data.fingerprint(splits)  # of the data set as it is on disk, before any carving
    splits = data.carve_validation(splits, resolved.val_fraction, resolved.seed)  # best epoch: hotdog.best
    return Prepared(resolved, ctxs, pre, splits, fingerprint, plan, dict(tags or {}))


def _check_gpu_and_dist(config: TrainConfig, ctxs) -> None:
    from hotdog import distributed, precision

    precision.check(config, ctxs)
    distributed.check(config)


def data_drift(run_config: dict) -> str | None:
    """One sentence when the data set a run was trained on is gone or has changed since
    (files added, removed, edited or relabelled), else None. Runs recorded before
    fingerprints existed cannot be checked (None)."""
    from hotdog import data
    from hotdog.errors import HotdogError

    recorded = run_config.get("data_fingerprint") if isinstance(run_config, dict) else None
    root = run_config.get("data_root") if isinstance(run_config, dict) else None
    if not recorded or not isinstance(root, str):
        return None
    name = data.display_name(os.path.basename(root.rstrip("/")) or root)
    try:
        now = data.fingerprint(data.load_splits(root))
    except HotdogError:
        return f"the data set '{name}' this run was trained on is gone or no longer readable"
    if now != recorded:
        return (f"the data set '{name}' has changed since this run was trained (files added, removed, "
                "edited or moved between classes): its test figures describe the old data")
    return None


# ---------------------------------------------------------------------------------------
# Seeding and batching
# ---------------------------------------------------------------------------------------


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


class _Meter:
    """Running loss/accuracy. The device->host copy of a batch's numbers happens when the
    next batch has been queued, so the host never waits for the batch it just queued (on
    a CPU this overlaps the next batch's augmentation with the current step)."""

    def __init__(self):
        self.loss_sum = 0.0
        self.correct = 0.0
        self.n = 0
        self.batches = 0
        self.nonfinite_batch: int | None = None
        self._pending = None

    def push(self, loss_sum_nd, correct_nd, n: int) -> None:
        """Queue this batch's sums; fold the previous batch in."""
        import mxnet as mx

        self.flush()
        self._pending = (mx.nd.concat(loss_sum_nd.reshape((1,)), correct_nd.reshape((1,)), dim=0), n)

    def flush(self) -> None:
        if self._pending is None:
            return
        arr, n = self._pending
        self._pending = None
        loss, correct = (float(v) for v in arr.asnumpy())
        self.n += n
        self.batches += 1
        if not math.isfinite(loss) and self.nonfinite_batch is None:
            self.nonfinite_batch = self.batches
        self.loss_sum += loss
        self.correct += correct

    @property
    def loss(self) -> float:
        return self.loss_sum / self.n if self.n else float("nan")

    @property
    def acc(self) -> float:
        return self.correct / self.n if self.n else float("nan")


def _sum_on(arrs, ctx):
    total = None
    for a in arrs:
        a = a.as_in_context(ctx)
        total = a if total is None else total + a
    return total


def _correct(outs, ys, ctx):
    return _sum_on([(o.argmax(axis=1) == y.astype("float32")).sum() for o, y in zip(outs, ys)], ctx)


def _accuracy(fwd, batches: Iterable, ctxs) -> float:
    """Accuracy with a single device->host copy at the end."""
    correct, n = None, 0
    for X, y in batches:
        Xs, ys = _split(X, ctxs), _split(y, ctxs)
        c = _correct([fwd(x) for x in Xs], ys, ctxs[0])
        correct = c if correct is None else correct + c
        n += X.shape[0]
    return float(correct.asscalar()) / n if n else float("nan")


def _preload(ds, what: str, progress: Callable[[int], Any] | None = None) -> None:
    bad = ds.preload(progress=progress)
    for b in bad:
        log.warning("skipping unreadable %s image %s: %s", what, b["path"], b["reason"])
    if len(ds) == 0:
        raise DatasetError(f"no readable {what} images")


# At most this many training photos fit the ImageNet head's bias (models.imagenet_head_init):
# a mean and a threshold are settled long before, and the whole split of a 20,000-photo set
# would cost minutes of forward passes before the first batch. Smaller splits use every photo.
HEAD_INIT_PHOTOS = 1000


def _head_init_sample(items: list) -> list:
    """Every photo up to HEAD_INIT_PHOTOS, else evenly spaced ones (the split is sorted by
    class, so each class keeps its share); deterministic."""
    if len(items) <= HEAD_INIT_PHOTOS:
        return items
    step = len(items) / HEAD_INIT_PHOTOS
    return [items[int(i * step)] for i in range(HEAD_INIT_PHOTOS)]


# ---------------------------------------------------------------------------------------
# The fit: one train() call's state, its loops and events
# ---------------------------------------------------------------------------------------


class _Fit:
    def __init__(self, prepared: Prepared, emit: Dispatcher, cluster=None):
        # cluster: hotdog.distributed.Cluster of a dist kvstore run (None: this process alone)
        self.cluster = cluster
        self.sharded = None
        self.config, self.ctxs = prepared.config, prepared.ctxs
        self.pre, self.splits = prepared.pre, prepared.splits
        self.features_reused = False  # every frozen feature came from the on-disk cache
        self.emit = emit
        self.net = None
        self.epochs: list[EpochMetrics] = []
        self.images_done = 0
        self.images_total = 0
        self.busy_seconds = 0.0
        self.meter: _Meter | None = None
        self.model_extra: dict = {}  # more model.json fields from callbacks (hotdog.best: "best")
        self.l2sp = None  # hotdog.robust.L2SP when the run decays toward the pretrained weights

    # -- what callbacks read
    @property
    def meter_synced(self) -> bool:
        return self.meter is not None and self.meter.n > 0

    @property
    def nonfinite_batch(self) -> int | None:
        return self.meter.nonfinite_batch if self.meter else None

    def model_info(self) -> dict:
        cfg = self.config
        return {"source": cfg.source, "mode": cfg.mode, "classes": list(self.splits.classes),
                "input_size": self.pre.input_size, "preprocess": self.pre.to_dict(),
                "bn_mode": cfg.bn_mode, "freeze": cfg.freeze, **self.model_extra}

    # -- events
    def batch_done(self, epoch, batch, batches, t_epoch, phase="train", done=None, total=None) -> None:
        meter = self.meter
        elapsed = self.busy_seconds + (time.time() - t_epoch)
        # Count only images whose step has completed (the meter lags one batch), so the
        # first batches do not report absurd speeds.
        done = self.images_done + (meter.n if meter else 0) if done is None else done
        total = self.images_total if total is None else total
        ips = done / elapsed if elapsed > 0 else 0.0
        eta = max(0, total - done) / ips if ips > 0 else float("nan")
        loss = meter.loss if meter and phase == "train" else float("nan")
        acc = meter.acc if meter and phase == "train" else float("nan")
        self.emit("after_batch", self, BatchProgress(epoch, self.config.epochs, batch, batches, loss, acc,
                                                     ips, eta, phase))

    def phase(self, name: str, done: int, total: int) -> None:
        """Progress of a start-up step (callbacks.PHASES): ``done`` of ``total``."""
        nan = float("nan")
        self.emit("after_batch", self, BatchProgress(0, self.config.epochs, done, total, nan, nan, 0.0, nan, name))

    def epoch_done(self, epoch, batches, test_fn, t0) -> None:
        self.meter.flush()
        self.batch_done(epoch, batches, batches, t0)
        self.images_done += self.meter.n
        test_acc = test_fn()
        seconds = time.time() - t0
        self.busy_seconds += seconds
        m = EpochMetrics(epoch, self.meter.loss, self.meter.acc, test_acc, seconds)
        self.epochs.append(m)
        self.emit("after_epoch", self, m)

    # -- building
    def build(self):
        from hotdog import models
        from hotdog.hybrid import hybridize_for_training

        cfg = self.config
        if cfg.mode == "scratch":
            seed_everything(cfg.seed)
            net = models.build_scratch(cfg.source, len(self.splits.classes), ctx=self.ctxs)
        else:
            # Warm the documented source-model cache first: its first load may draw random
            # numbers (initialise, then load), which would make the head's init depend on it.
            from hotdog.weights import on_conversion

            self.phase("load", 0, 1)
            with on_conversion(lambda done: self.phase("convert", done, 1)):
                models.load_source(cfg.source)
            self.phase("load", 1, 1)
            if cfg.init_output_from_imagenet:
                self.phase("head", 0, 1)
            seed_everything(cfg.seed)
            net = models.build_finetune(
                cfg.source, len(self.splits.classes), ctx=self.ctxs, lr_mult=cfg.lr_mult, freeze=cfg.freeze,
                bn_mode=cfg.bn_mode, init_output_from_imagenet=cfg.init_output_from_imagenet,
                class_names=self.splits.classes,
                # The training split fits the bias of a 'not-<class>' row (0.94 vs 0.68 test
                # accuracy before any training on hotdog-mini, see models.imagenet_head_init).
                init_items=_head_init_sample(self.splits.train) if cfg.init_output_from_imagenet else None)
            if cfg.init_output_from_imagenet:
                self.phase("head", 1, 1)
        hybridize_for_training(net)
        self.net = net
        seed_everything(cfg.seed + 1)  # augmentation and dropout draws, independent of the build
        return net

    # -- one SGD step over the device shards
    def step(self, trainer, loss_fn, Xs, ys, n, features=None, head=None) -> None:
        from mxnet import autograd

        from hotdog import precision

        if features is not None:
            # Frozen backbone: a fixed feature extractor, run in inference mode (pretrained
            # BatchNorm statistics, no dropout) outside autograd; only the head is recorded.
            feats = [features(x) for x in Xs]
            with autograd.record():
                outs = [head(f) for f in feats]
                ls = [loss_fn(o, t) for o, t in zip(outs, ys)]
        else:
            micro = self.config.micro_batch
            if micro and micro < n:
                self.accumulated_step(trainer, loss_fn, Xs, ys, n, micro)
                return
            with autograd.record():
                outs = [self.net(x) for x in Xs]
                ls = [loss_fn(o, t) for o, t in zip(outs, ys)]
        precision.backward(self.config, trainer, ls)
        if features is None and self.l2sp is not None:
            self.l2sp.add_to_grads(n)
        trainer.step(self.step_size(trainer, n))
        self.meter.push(_sum_on([l.sum() for l in ls], self.ctxs[0]), _correct(outs, ys, self.ctxs[0]), n)

    def accumulated_step(self, trainer, loss_fn, Xs, ys, n: int, micro: int) -> None:
        """One SGD step over ``n`` images as passes of at most ``micro`` images: gradients add
        up (``grad_req='add'``, zeroed before the batch), then one ``trainer.step(n)``, so the
        update is the full batch's (exactly, with BatchNorm in keep mode) while only one
        micro-batch's activations are alive at a time. A remainder is its own smaller pass."""
        import mxnet as mx
        from mxnet import autograd

        from hotdog import precision

        params = self._accumulating_params()
        for p in params:
            p.zero_grad()
        per_device = max(1, micro // len(Xs))
        loss_sums, corrects = [], []
        for x, y in zip(Xs, ys):
            for i in range(0, x.shape[0], per_device):
                xc, yc = x[i:i + per_device], y[i:i + per_device]
                with autograd.record():
                    out = self.net(xc)
                    loss = loss_fn(out, yc)
                precision.backward(self.config, trainer, [loss])
                loss_sums.append(loss.sum())
                corrects.append(_correct([out], [yc], self.ctxs[0]))
                # MXNet's engine is asynchronous: without this the next passes are queued at
                # once and their activations would be alive together, as in one big batch.
                mx.nd.waitall()
        if self.l2sp is not None:
            self.l2sp.add_to_grads(n)
        trainer.step(self.step_size(trainer, n))
        self.meter.push(_sum_on(loss_sums, self.ctxs[0]), _sum_on(corrects, self.ctxs[0]), n)

    # -- distributed hooks (hotdog.distributed): this worker's part of each batch
    def shard(self, sampler):
        from hotdog import distributed

        self.sharded = distributed.shard(sampler, self.cluster)
        return self.sharded

    def step_size(self, trainer, n: int) -> int:
        """What the SGD step divides the summed gradients by: the whole (global) batch."""
        return n if self.cluster is None else self.sharded.step_size(trainer, n)

    def _accumulating_params(self) -> list:
        """The trained parameters, switched once to gradient accumulation (``grad_req='add'``)."""
        if getattr(self, "_accum_params", None) is None:
            params = [p for p in self.net.collect_params().values() if p.grad_req != "null"]
            for p in params:
                p.grad_req = "add"
            self._accum_params = params
        return self._accum_params

    def datasets(self, train_tf):
        from hotdog.data import ImageListDataset, test_transform

        from hotdog.data.decoded import DecodedCache

        pre = self.pre
        shared = DecodedCache()  # one byte cap for both splits' decoded photos
        train_ds = ImageListDataset(self.splits.train, train_tf, min_side=pre.resize, cache=shared)
        test_ds = ImageListDataset(self.splits.test, test_transform(pre), min_side=pre.resize, cache=shared)
        total = len(train_ds) + len(test_ds)
        self.phase("decode", 0, total)
        _preload(train_ds, "train", lambda n: self.phase("decode", n, total))
        _preload(test_ds, "test", lambda n, first=len(train_ds): self.phase("decode", first + n, total))
        return train_ds, test_ds

    def plain_loop(self, trainer, loss_fn, first_epoch: int = 1) -> None:
        """The chapter's train_ch13; with ``freeze`` the plain frozen loop (chapter exercise 3:
        grad_req 'null' on the features, the whole network recorded every batch), the
        reference the feature cache's speed-up is measured against."""
        from hotdog.data import test_transform, train_transform

        cfg, ctxs = self.config, self.ctxs
        train_ds, test_ds = self.datasets(train_transform(self.pre) if cfg.augment else test_transform(self.pre))
        sampler = self.shard(_EpochBatches(len(train_ds), cfg.batch_size, cfg.seed))
        train_loader = _make_loader(train_ds, sampler, cfg.num_workers)
        test_loader = _make_loader(test_ds, _EpochBatches(len(test_ds), cfg.batch_size, 0, shuffle=False),
                                   cfg.num_workers)
        batches = len(sampler)
        self.images_total = len(train_ds) * cfg.epochs
        for epoch in range(first_epoch, cfg.epochs + 1):
            t0 = time.time()
            self.meter = _Meter()
            for b, (X, y) in enumerate(train_loader, 1):
                self.emit("before_batch", self)
                self.step(trainer, loss_fn, _split(X, ctxs), _split(y, ctxs), X.shape[0])
                self.batch_done(epoch, b, batches, t0)
            self.epoch_done(epoch, batches, lambda: _accuracy(self.net, test_loader, ctxs), t0)

    def feature_extractor(self, ds):
        """The backbone for one-off feature extraction: on a CPU, MXNet's MKLDNN-fused
        inference copy (conv+BatchNorm folding, ~2x faster) when it matches to 1e-4."""
        net, ctxs = self.net, self.ctxs
        if ctxs[0].device_type != "cpu":
            return net.features, ctxs
        import mxnet as mx

        from hotdog.inference import fast_inference_block

        example = mx.nd.stack(*[ds[i][0] for i in range(min(2, len(ds)))]).as_in_context(ctxs[0])
        choice = fast_inference_block(net.features, example)
        log.info("feature cache backbone: %s (%s, max abs diff %.2g)",
                 "fused" if choice.fused else "plain", choice.reason, choice.max_abs_diff)
        return choice.block, ctxs[:1]

    def extract(self, features, ds, ctxs, batch_size: int = 64):
        """Backbone features of every item of ``ds`` (in order), stacked on the first device."""
        import mxnet as mx

        loader = _make_loader(ds, _EpochBatches(len(ds), batch_size, 0, shuffle=False), self.config.num_workers)
        out = []
        t0 = time.time()
        done = 0
        for b, (X, _y) in enumerate(loader, 1):
            self.emit("before_batch", self)
            out.extend(f.as_in_context(ctxs[0]) for f in (features(x) for x in _split(X, ctxs)))
            done += X.shape[0]
            out[-1].wait_to_read()
            self.batch_done(0, b, len(loader), t0, phase="cache", done=done, total=len(ds))
        feats = mx.nd.concat(*out, dim=0)
        return feats.reshape((feats.shape[0], -1))

    def frozen_features(self):
        """(views, test features, train labels, test labels) on the first device, from the
        on-disk feature cache (:mod:`hotdog.featcache`) where it holds them: only photos it
        does not hold are decoded and go through the backbone. Unreadable photos are skipped."""
        import mxnet as mx

        from hotdog import featcache
        from hotdog.data import ImageListDataset, test_transform, train_transform
        from hotdog.data.decoded import DecodedCache

        cfg, ctxs, pre = self.config, self.ctxs, self.pre
        store = featcache.open_store()
        group = featcache.FeatureGroup.of(featcache.source_weights_hash(cfg.source), pre, ctxs[0].device_type)
        shared, backbone = DecodedCache(), []  # the backbone is built on the first miss only

        def extract(ds):
            if not backbone:  # chosen on test-transform photos: draws no augmentation randomness
                backbone.append(self.feature_extractor(
                    ImageListDataset(ds.items[:2], test_transform(pre), min_side=pre.resize, cache=shared)))
            features, fctxs = backbone[0]
            return self.extract(features, ds, fctxs).asnumpy()

        # Decoding reported over both splits (photos the cache holds count as done at once).
        decode_total = len(self.splits.train) + len(self.splits.test)
        decoded = [0]
        self.phase("decode", 0, decode_total)

        def compute(items, what):
            def rows(positions):
                ds = ImageListDataset([items[i] for i in positions], test_transform(pre), min_side=pre.resize,
                                      cache=shared)
                for b in ds.preload(progress=lambda n: self.phase("decode", decoded[0] + n, decode_total)):
                    log.warning("skipping unreadable %s image %s: %s", what, b["path"], b["reason"])
                if len(ds) == 0:
                    return np.zeros((0, 0), np.float32), []
                readable = {str(p) for p, _ in ds.items}
                return extract(ds), [i for i in positions if str(items[i][0]) in readable]
            return rows

        def split_rows(items, what):
            got = featcache.plain_rows(store, group, [p for p, _ in items], compute(items, what))
            decoded[0] += len(items)
            self.phase("decode", decoded[0], decode_total)
            if not got.kept:
                raise DatasetError(f"no readable {what} images")
            kept = [items[i] for i in got.kept]
            return got, kept, mx.nd.array([lab for _, lab in kept], ctx=ctxs[0])

        train_rows, train_items, labels = split_rows(self.splits.train, "train")
        views = [mx.nd.array(train_rows.array, ctx=ctxs[0])]
        aug_cached = True
        if cfg.augment_views:
            k = int(cfg.augment_views)

            def augmented():
                aug_ds = ImageListDataset(train_items, train_transform(pre), min_side=pre.resize, cache=shared)
                return np.concatenate([extract(aug_ds) for _ in range(k)])

            rows, aug_cached = featcache.view_rows(store, group.augmented(k, cfg.seed), [p for p, _ in train_items],
                                                   k, augmented)
            n = len(train_items)
            views += [mx.nd.array(rows[i * n:(i + 1) * n], ctx=ctxs[0]) for i in range(k)]
        test_rows, _, test_labels = split_rows(self.splits.test, "test")
        self.features_reused = train_rows.computed == 0 and test_rows.computed == 0 and aug_cached
        return views, mx.nd.array(test_rows.array, ctx=ctxs[0]), labels, test_labels

    def cached_loop(self, trainer, loss_fn, last_epoch: int | None = None) -> None:
        """Frozen fast path: backbone features once per image, then only the head trains.

        Batch order and head updates are those of the plain frozen loop, so without
        augmentation both end with the same head weights (up to float rounding)."""
        import mxnet as mx

        cfg, ctxs = self.config, self.ctxs
        views, test_feats, labels, test_labels = self.frozen_features()
        n, n_test = labels.shape[0], test_labels.shape[0]
        feats = mx.nd.concat(*views, dim=0) if len(views) > 1 else views[0]

        sampler = self.shard(_EpochBatches(n, cfg.batch_size, cfg.seed))
        view_rng = np.random.RandomState((cfg.seed + 1) % (2**32))
        batches = len(sampler)
        self.images_total = n * cfg.epochs
        head = self.net.output

        def test_acc():
            chunks = ((test_feats[i:i + 1024], test_labels[i:i + 1024]) for i in range(0, n_test, 1024))
            return _accuracy(head, chunks, ctxs)

        for epoch in range(1, (last_epoch or cfg.epochs) + 1):
            t0 = time.time()
            self.meter = _Meter()
            for b, idx in enumerate(sampler, 1):
                self.emit("before_batch", self)
                rows = np.asarray(idx)
                if len(views) > 1:  # each image shows up once per epoch, as one of its views
                    rows = rows + n * view_rng.randint(0, len(views), size=len(rows))
                X = feats.take(mx.nd.array(rows, ctx=ctxs[0]))
                y = labels.take(mx.nd.array(idx, ctx=ctxs[0]))
                self.step(trainer, loss_fn, _split(X, ctxs), _split(y, ctxs), len(idx),
                          features=lambda f: f, head=head)
                self.batch_done(epoch, b, batches, t0)
            self.epoch_done(epoch, batches, test_acc, t0)

    def run(self) -> None:
        """Build the network and train it per the config (all loops end here)."""
        from mxnet import gluon

        from hotdog import distributed, precision
        from hotdog.robust import make_l2sp

        cfg = self.config
        precision.init(cfg)  # before the network exists
        net = self.build()
        self.l2sp = make_l2sp(cfg, net, self.ctxs)
        params = net.output.collect_params() if cfg.uses_feature_cache else net.collect_params()
        trainer = distributed.make_trainer(params, {"learning_rate": cfg.lr, "wd": cfg.wd}, cfg, self.cluster)
        precision.init_trainer(cfg, trainer)
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        log.info("%s %s, %d train / %d test images, %d classes, lr %g, devices %s", cfg.mode, cfg.source,
                 len(self.splits.train), len(self.splits.test), len(self.splits.classes), cfg.lr, self.ctxs)
        if cfg.uses_feature_cache:
            self.cached_loop(trainer, loss_fn)
            return
        warmup = 0 if cfg.freeze else cfg.warmup_epochs
        if warmup:
            head_trainer = distributed.make_trainer(net.output.collect_params(), {"learning_rate": cfg.lr, "wd": cfg.wd},
                                                    cfg, self.cluster)
            precision.init_trainer(cfg, head_trainer)
            self.cached_loop(head_trainer, loss_fn, last_epoch=warmup)
        if warmup < cfg.epochs:
            self.plain_loop(trainer, loss_fn, first_epoch=warmup + 1)


def _end_message(status: str, epochs: list[EpochMetrics], cancel: BaseException | None) -> str:
    n = len(epochs)
    if status == "finished":
        return f"trained {n} epochs, test accuracy {epochs[-1].test_acc:.3f}"
    if status == "diverged":
        return str(cancel)
    return stopped_message(n, interrupted=isinstance(cancel, KeyboardInterrupt))


def stopped_message(epochs_done: int, interrupted: bool = False) -> str:
    """How a stopped run ends, in words that say exactly what was kept: with no completed
    epoch nothing is saved (the partial epoch's weights are not a model anyone asked for)."""
    how = "interrupted" if interrupted else "stopped by request"
    if epochs_done == 0:
        return f"{how} before the first epoch ended; no epoch was completed, so no weights were saved"
    return (f"{how} after {epochs_done} completed epoch{'s' if epochs_done != 1 else ''}; "
            f"the weights after epoch {epochs_done} are kept")


def train(config: TrainConfig, *, callbacks: Sequence = (),
          on_batch: Callable[[BatchProgress], Any] | None = None,
          on_epoch: Callable[[EpochMetrics], Any] | None = None,
          stop_event: threading.Event | None = None, runs_dir: str | os.PathLike | None = None,
          run_id: str | None = None, prepared: Prepared | None = None) -> TrainResult:
    """Train per ``config`` and record the run; returns when finished, stopped or diverged.

    ``run_id`` names a run already created in the store, ``prepared`` the matching
    :func:`prepare` result (the job manager does both before starting its thread, so the
    caller learns the id and store errors synchronously). Errors (bad data, unknown source,
    store failures) mark the run ``failed`` and raise.
    """
    from hotdog import distributed

    t_start = time.time()
    store = RunStore(runs_dir)
    if prepared is None:
        prepared = prepare(config)
    cluster = distributed.connect(prepared.config)  # None unless kvstore dist_*
    distributed.check_same_run(cluster, prepared.record())
    store = distributed.store_for(cluster, store)  # only rank 0 records
    if run_id is None:
        run_id, _ = store.create(prepared.record())
    run_dir = store.run_dir(run_id)
    distributed.announce_run(cluster, run_id, run_dir)
    cbs = [RunRecorder(store, run_id, HEARTBEAT_EVERY), TerminateOnNaN()]
    cbs += [StopOnEvent(stop_event)] if stop_event is not None else []
    cbs += [OnBatch(on_batch)] if on_batch is not None else []
    cbs += [OnEpoch(on_epoch)] if on_epoch is not None else []
    if cluster is None or cluster.records:  # they write into the run folder: rank 0's
        cbs += best_epoch_callbacks(prepared, run_dir)
        from hotdog.robust import RobustCheck  # WiSE-FT and per-source metrics before the model is saved

        cbs.append(RobustCheck(run_dir))
    emit = Dispatcher([*cbs, *callbacks])
    fit = _Fit(prepared, emit, cluster)
    error: BaseException | None = None
    cancel: BaseException | None = None
    try:
        try:
            emit("before_fit", fit)
            fit.run()
            status = "finished"
        except CancelFit as c:
            status, cancel = c.status, c
        except KeyboardInterrupt as c:
            status, cancel, error = "stopped", c, c
        except BaseException as err:  # noqa: BLE001 - recorded as failed, then re-raised
            status, error = "failed", err
        if status in ("finished", "stopped"):
            import mxnet as mx

            mx.nd.waitall()
        message = (str(error) or type(error).__name__) if status == "failed" else \
            _end_message(status, fit.epochs, cancel)
        result = TrainResult(run_id, str(run_dir), status, message, list(fit.epochs),
                             fit.epochs[-1].test_acc if fit.epochs else None, time.time() - t_start)
        try:
            emit("after_fit", fit, result)
        except BaseException as err:  # noqa: BLE001 - e.g. the disk filled up while saving
            result.status, result.message = "failed", str(err) or type(err).__name__
            error = error or err
            try:
                store.write_status(run_id, "failed", result.message, seconds=result.seconds)
            except Exception:  # noqa: BLE001 - nothing more can be recorded
                log.warning("could not record the failure of run %s", run_id)
        result.callback_seconds = dict(emit.seconds)
    finally:
        mark_active(run_id, False)
    if error is not None:
        raise error
    return result
