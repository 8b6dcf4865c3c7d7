"""What happens around the training loop, as callbacks (fastai's Learner style).

The loop in :mod:`hotdog.train` only trains and emits events; everything else is a
callback: live progress, the run-store record and its heartbeat, a stop request, divergence.
A callback ends a run by raising :class:`CancelFit` (``StopRequested``, ``Diverged``); the
loop has one cancel path and one finish path, and the dispatcher times every callback so
the benchmark can report the loop's overhead without knowing its private names.

Events, in order: ``before_fit(fit)``, then per batch ``before_batch(fit)`` and
``after_batch(fit, progress)``, per epoch ``after_epoch(fit, metrics)``, and always
``after_fit(fit, result)`` (also after a cancel or an error; ``result.status`` says which).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from hotdog.errors import StorageError

log = logging.getLogger(__name__)


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
    # "train" for training batches; before the first one, the start-up steps of PHASES with
    # ``batch``/``batches`` as their n/N (``epoch`` 0, loss and accuracy NaN); "robust" during
    # the after-training check (hotdog.robust: batch = step of batches)
    phase: str = "train"


# Start-up steps a run reports before its first training batch, in the order they happen:
# loading the source model, converting its weights (first use only), fitting the ImageNet
# start of the output layer, decoding the photos (n/N photos) and, for frozen features,
# computing them once (n/N batches).
PHASES = {
    "load": "Loading the source model",
    "convert": "Converting the source weights to MXNet (first use only)",
    "head": "Starting the output layer from ImageNet's rows (one pass over the training photos)",
    "decode": "Decoding photos",
    "cache": "Computing features once (frozen network)",
}


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float
    test_acc: float
    seconds: float
    # Accuracy on the validation split carved from train (hotdog.best), None without one.
    val_acc: float | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["val_acc"] is None:  # runs without a validation split keep their old records
            del d["val_acc"]
        return d


class CancelFit(Exception):
    """Raised by a callback to end the run early; ``status`` is what the run store records."""

    status = "stopped"


class StopRequested(CancelFit):
    status = "stopped"


class Diverged(CancelFit):
    status = "diverged"


class Callback:
    """Override the events you need; ``order`` sorts callbacks (lower runs first)."""

    order = 0

    def before_fit(self, fit) -> None: ...
    def before_batch(self, fit) -> None: ...
    def after_batch(self, fit, progress: BatchProgress) -> None: ...
    def after_epoch(self, fit, metrics: EpochMetrics) -> None: ...
    def after_fit(self, fit, result) -> None: ...


class Dispatcher:
    """Calls every callback for an event and adds up the seconds each one took."""

    def __init__(self, callbacks):
        self.callbacks = sorted(callbacks, key=lambda c: c.order)
        self.seconds: dict[str, float] = {}

    def __call__(self, event: str, *args) -> None:
        for cb in self.callbacks:
            t0 = time.perf_counter()
            try:
                getattr(cb, event)(*args)
            finally:
                name = type(cb).__name__
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


class StopOnEvent(Callback):
    """A cooperative stop: the run ends before its next batch once ``event`` is set."""

    order = -10

    def __init__(self, event: threading.Event):
        self.event = event

    def before_batch(self, fit) -> None:
        if self.event.is_set():
            raise StopRequested()


def trained_weights_finite(net) -> bool:
    """True when every weight the training moves (grad_req not "null") is a finite number."""
    import numpy as np

    return all(np.isfinite(p.data(p.list_ctx()[0]).asnumpy()).all()
               for p in net.collect_params().values() if p.grad_req != "null")


class TerminateOnNaN(Callback):
    """A non-finite loss, or weights no longer finite at the end of an epoch, end the run as
    ``diverged`` with a message naming the learning rate (its weights are then never saved)."""

    order = -5

    @staticmethod
    def _lr(cfg) -> str:
        head = f" (output layer {cfg.head_lr:g})" if cfg.head_lr != cfg.lr else ""
        return f"learning rate {cfg.lr:g}{head}; try a smaller learning rate"

    def after_batch(self, fit, progress: BatchProgress) -> None:
        if progress.phase == "train" and not math.isfinite(progress.loss) and fit.meter_synced:
            raise Diverged(f"training diverged: the loss became non-finite at epoch {progress.epoch}, "
                           f"batch {fit.nonfinite_batch or progress.batch} with {self._lr(fit.config)}")

    def after_epoch(self, fit, metrics) -> None:
        # The loss of the last batch is measured before its update: that update can still
        # overflow the weights to inf (lr 1e6 on frozen features did), and a run "finished"
        # with such weights would be saved, mixed (WiSE-FT) and ranked as a model.
        if fit.net is not None and not trained_weights_finite(fit.net):
            raise Diverged(f"training diverged: the weights became non-finite (inf or NaN) in epoch {metrics.epoch} "
                           f"with {self._lr(fit.config)}")


class OnBatch(Callback):
    """Hands each BatchProgress to a plain function (the CLI's progress bar, the app's job)."""

    def __init__(self, fn: Callable[[BatchProgress], Any]):
        self.fn = fn

    def after_batch(self, fit, progress) -> None:
        self.fn(progress)


class OnEpoch(Callback):
    def __init__(self, fn: Callable[[EpochMetrics], Any]):
        self.fn = fn

    def after_epoch(self, fit, metrics) -> None:
        self.fn(metrics)


class RunRecorder(Callback):
    """Keeps the run store up to date: status at the start, metrics and status per epoch, a
    heartbeat at most every ``every`` seconds, and the end state with the saved model."""

    order = 10

    def __init__(self, store, run_id: str, every: float):
        self.store, self.run_id, self.every = store, run_id, every
        self.last = time.time()

    def before_fit(self, fit) -> None:
        self.store.write_status(self.run_id, "running", f"training on {', '.join(str(c) for c in fit.ctxs)}")

    def after_batch(self, fit, progress) -> None:
        now = time.time()
        if now - self.last < self.every:
            return
        self.last = now
        what = f"epoch {progress.epoch}/{progress.epochs}" if progress.phase == "train" else \
            PHASES.get(progress.phase, {"robust": "robustness check"}.get(progress.phase, progress.phase)).lower()
        try:
            self.store.heartbeat(self.run_id, f"{what}, batch {progress.batch}/{progress.batches}")
        except StorageError as err:  # a full disk should not kill a nearly finished run
            log.warning("heartbeat failed: %s", err)

    def after_epoch(self, fit, metrics) -> None:
        self.store.append_metrics(self.run_id, metrics.to_dict())
        self.store.write_status(self.run_id, "running",
                                f"epoch {metrics.epoch}/{fit.config.epochs} done, test acc {metrics.test_acc:.3f}")
        self.last = time.time()

    def after_fit(self, fit, result) -> None:
        if result.status in ("finished", "stopped") and fit.net is not None and fit.epochs:
            # Weights of a diverged run are NaN: keep them off disk so nobody predicts with them.
            self.store.save_model(self.run_id, fit.net, fit.model_info())
        self.store.write_status(self.run_id, result.status, result.message, seconds=result.seconds)
