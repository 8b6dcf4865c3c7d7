"""The best epoch by validation: a callback that scores every epoch on a split carved from
train and keeps that epoch's weights beside the last one's.

The chapter keeps the weights after the last epoch (``model.params``, still saved as
always); with the knob ``val_fraction`` > 0, :func:`hotdog.data.carve_validation` holds out
that share of each class's training photos (seeded, stratified) before training starts, and
:class:`KeepBest` measures the network on them after each epoch, records ``val_acc`` in the
epoch's metrics and writes the weights of the best epoch so far to ``model-best.params``.
model.json then describes them under ``"best"`` (epoch, validation accuracy and the test
accuracy recorded at that epoch). The choice never looks at the test split.

With the frozen feature cache the backbone features of the validation photos are computed
once, and each epoch only runs the output layer on them (as the training itself does).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from hotdog.callbacks import Callback, EpochMetrics
from hotdog.fileio import atomic_path
from hotdog.runs import BEST_PARAMS_FILE

log = logging.getLogger(__name__)

BATCH = 64


class KeepBest(Callback):
    """Scores each epoch on ``val_items`` and keeps the best epoch's weights in the run folder."""

    # Before OnEpoch (0: the app's live chart) and RunRecorder (10: metrics.jsonl), so both
    # see the epoch's val_acc.
    order = -1

    def __init__(self, run_dir, val_items, pre, frozen_features: bool):
        self.run_dir, self.val_items, self.pre = run_dir, list(val_items), pre
        self.frozen_features = frozen_features
        self.batches: list[tuple[Any, Any]] | None = None  # (inputs, labels) on the first device
        self.best: EpochMetrics | None = None

    def _inputs(self, fit) -> list:
        """The validation batches, decoded once (backbone features once when frozen)."""
        if self.batches is None:
            import mxnet as mx

            from hotdog.data import ImageListDataset, test_transform

            ds = ImageListDataset(self.val_items, test_transform(self.pre), min_side=self.pre.resize)
            for bad in ds.preload():
                log.warning("skipping unreadable validation image %s: %s", bad["path"], bad["reason"])
            ctx = fit.ctxs[0]
            batches = []
            for start in range(0, len(ds), BATCH):
                rows = [ds[i] for i in range(start, min(start + BATCH, len(ds)))]
                X = mx.nd.stack(*[x for x, _ in rows]).as_in_context(ctx)
                y = mx.nd.array([lab for _, lab in rows], ctx=ctx)
                batches.append((fit.net.features(X) if self.frozen_features else X, y))
            self.batches = batches
        return self.batches

    def accuracy(self, fit) -> float:
        fwd = fit.net.output if self.frozen_features else fit.net
        correct, n = 0.0, 0
        for X, y in self._inputs(fit):
            correct += float((fwd(X).argmax(axis=1) == y).sum().asscalar())
            n += y.shape[0]
        return correct / n if n else float("nan")

    def after_epoch(self, fit, metrics: EpochMetrics) -> None:
        acc = self.accuracy(fit)
        if not math.isfinite(acc):  # every validation photo unreadable: nothing to choose on
            return
        metrics.val_acc = acc
        if self.best is None or metrics.val_acc > self.best.val_acc:  # ties: the earlier epoch
            with atomic_path(self.run_dir / BEST_PARAMS_FILE) as tmp:
                fit.net.save_parameters(str(tmp))
            self.best = metrics
        fit.model_extra["best"] = {"params": BEST_PARAMS_FILE, "epoch": self.best.epoch,
                                   "val_acc": self.best.val_acc, "test_acc": self.best.test_acc}


def callbacks(prepared, run_dir) -> list:
    """[KeepBest] when the prepared run holds a validation split, else nothing."""
    val = getattr(prepared.splits, "val", None)
    if not val:
        return []
    return [KeepBest(run_dir, val, prepared.pre, frozen_features=prepared.config.uses_feature_cache)]
