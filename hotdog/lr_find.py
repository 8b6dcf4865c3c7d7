"""A learning-rate finder (fastai's ``lr_find``, after Smith's LR range test).

One short pass over the training data with the learning rate growing exponentially per
batch (``start_lr`` to ``end_lr`` in ``num_iter`` steps), on the network and data ``train``
would use for the same config (same builder, preprocessing, augmentation, lr multiplier of
the output layer, frozen features when the config freezes them). The loss is smoothed
(exponential moving average, bias-corrected) and the pass stops once the smoothed loss
exceeds ``diverge`` x its minimum or becomes non-finite. The network's weights are put back
exactly afterwards (a network passed in leaves as it came; by default a fresh one is
built and thrown away), so nothing of the pass reaches a run.

Suggestion (``suggested_lr``): a tenth of the learning rate with the lowest smoothed loss
(fastai's ``lr_min``). Reported beside it: ``steepest_lr`` (steepest descent over log lr)
and ``valley_lr`` (fastai's newer rule: halfway down the longest falling stretch). On
hotdog-mini (60 batches of 32 photos, stable preset, 128 px) the curve is noisy: the steepest
point was a wiggle at 3e-6 and the valley 6e-3, where 5-epoch fine-tuning already falls
(README, Experiments); the minimum / 10 (2e-4) lay between the two best measured rates.

Runs on the caller's thread: the app calls it through ``hotdog.mxthread.mx_call``.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass

import numpy as np

from hotdog.errors import HotdogError
from hotdog.settings import TrainConfig


@dataclass
class LRFind:
    lrs: list[float]
    losses: list[float]  # smoothed
    raw_losses: list[float]
    suggested_lr: float | None
    steepest_lr: float | None
    min_lr: float | None  # where the smoothed loss is lowest
    stopped_early: bool  # the loss exploded before end_lr
    lr_mult: float = 1.0
    valley_lr: float | None = None  # fastai's newer rule, reported beside the suggestion

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def valley(lrs, losses) -> float | None:
    """fastai's default suggestion: the longest stretch over which the loss keeps falling (the
    longest decreasing subsequence), and a learning rate about halfway down it."""
    n = len(losses)
    if n < 5:
        return None
    longest = [1] * n
    start, end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[end] < longest[i]:
            end = i
            start = end - longest[end]
    third = (end - start) / 3
    return float(lrs[min(max(start + int(third) + int(third / 2), 0), n - 1)])


def suggest(lrs, losses) -> tuple[float | None, float | None, float | None, float | None]:
    """(suggested, steepest, minimum, valley) learning rates of a smoothed loss curve:
    suggested is the minimum's lr / 10; the steepest descent and the minimum leave out the
    first tenth of the steps (the moving average is still one or two noisy batches there)
    and the last twentieth; valley is :func:`valley`."""
    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    ok = np.isfinite(losses)
    lrs, losses = lrs[ok], losses[ok]
    if len(lrs) < 5:
        return None, None, None, None
    lo = min(max(2, len(lrs) // 10), len(lrs) - 3)
    hi = max(len(lrs) - max(1, len(lrs) // 20), lo + 3)
    min_lr = float(lrs[lo + int(np.argmin(losses[lo:hi]))])
    grads = np.gradient(losses[lo:hi], np.log10(lrs[lo:hi]))
    steepest = float(lrs[lo + int(np.argmin(grads))])
    return min_lr / 10, steepest, min_lr, valley(lrs, losses)


def lr_find(config: TrainConfig, *, start_lr: float = 1e-6, end_lr: float = 1.0, num_iter: int = 100,
            smooth: float = 0.98, diverge: float = 4.0, net=None, prepared=None,
            stop_event: threading.Event | None = None, on_step=None) -> LRFind:
    """The LR range test for ``config`` (see the module docstring); ``on_step(i, lr, loss)``."""
    import mxnet as mx
    from mxnet import autograd, gluon

    from hotdog.callbacks import Dispatcher
    from hotdog.data import ImageListDataset, test_transform, train_transform
    from hotdog.train import _EpochBatches, _Fit, _make_loader, _preload, _split, prepare

    if not (0 < start_lr < end_lr) or num_iter < 3:
        raise HotdogError("the learning-rate range must grow (0 < start < end) over at least 3 steps")
    prepared = prepared or prepare(config)
    cfg = prepared.config
    fit = _Fit(prepared, Dispatcher([]))
    if net is None:
        net = fit.build()
    else:
        fit.net = net
    ctxs = prepared.ctxs
    saved = {name: p.data(ctxs[0]).copy() for name, p in net.collect_params().items()}
    frozen = cfg.freeze and cfg.mode == "finetune"
    try:
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        params = net.output.collect_params() if frozen else net.collect_params()
        trainer = gluon.Trainer(params, "sgd", {"learning_rate": start_lr, "wd": cfg.wd})
        pre = prepared.pre
        if frozen:  # the head on the backbone's features, computed once (as train's frozen path)
            ds = ImageListDataset(prepared.splits.train, test_transform(pre), min_side=pre.resize)
            _preload(ds, "train")
            features, fctxs = fit.feature_extractor(ds)
            feats = fit.extract(features, ds, fctxs)
            labels = mx.nd.array([lab for _, lab in ds.items], ctx=ctxs[0])
            sampler = _EpochBatches(len(ds), cfg.batch_size, cfg.seed)

            def batches():
                while True:
                    for idx in sampler:
                        rows = mx.nd.array(idx, ctx=ctxs[0])
                        yield feats.take(rows), labels.take(rows)
            model = net.output
        else:
            ds = ImageListDataset(prepared.splits.train, train_transform(pre) if cfg.augment else test_transform(pre),
                                  min_side=pre.resize)
            _preload(ds, "train")
            loader = _make_loader(ds, _EpochBatches(len(ds), cfg.batch_size, cfg.seed), cfg.num_workers)

            def batches():
                while True:
                    yield from loader
            model = net
        mult = (end_lr / start_lr) ** (1 / (num_iter - 1))
        lrs, raw, smoothed = [], [], []
        avg, best, stopped = 0.0, math.inf, False
        for i, (X, y) in zip(range(num_iter), batches()):
            if stop_event is not None and stop_event.is_set():
                stopped = True
                break
            lr = start_lr * mult ** i
            trainer.set_learning_rate(lr)
            Xs, ys = _split(X, ctxs), _split(y, ctxs)
            with autograd.record():
                ls = [loss_fn(model(x), t) for x, t in zip(Xs, ys)]
            autograd.backward(ls)
            trainer.step(X.shape[0])
            loss = float(sum(l.sum().asscalar() for l in ls)) / X.shape[0]
            avg = smooth * avg + (1 - smooth) * loss
            value = avg / (1 - smooth ** (i + 1))
            lrs.append(lr)
            raw.append(loss)
            smoothed.append(value)
            if on_step is not None:
                on_step(i, lr, value)
            if not math.isfinite(value) or (i > 0 and value > diverge * best):
                stopped = True
                break
            best = min(best, value)
        # Drop the exploded tail from the suggestion (it is still plotted).
        s, st, mn, va = suggest(lrs[:-1] if stopped and len(lrs) > 3 else lrs,
                            smoothed[:-1] if stopped and len(lrs) > 3 else smoothed)
    finally:
        for name, p in net.collect_params().items():
            if name in saved:
                p.set_data(saved[name])
        mx.nd.waitall()
    return LRFind(lrs, smoothed, raw, s, st, mn, stopped, lr_mult=cfg.lr_mult, valley_lr=va)
