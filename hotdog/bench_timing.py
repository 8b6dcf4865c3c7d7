"""Timing primitives of the benchmark: interleaved timing, the raw training step that is the
reference side of the training figures, the bench's training-loop callback, and memory
readings. Kept apart from :mod:`hotdog.bench` (the stages that use them) so each stays small."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

from hotdog.callbacks import BatchProgress, Callback, EpochMetrics


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, calling them in turn round after round.

    On a shared machine the load drifts over seconds; alternating the contenders exposes
    them to the same drift, so their ratio stays meaningful when absolute times are not.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(1, rounds)):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def ratio(a: float, b: float) -> float:
    return float(a / b) if b > 0 else float("nan")


def serve_timed_steps(conn, step: Callable[[], None], reply: Callable[[list[float]], Any]) -> None:
    """A timing child's loop (one process per setting, driven in alternation): each message
    ``n`` from the parent times ``n`` calls of ``step`` and sends ``reply(seconds)`` back;
    ``None`` ends it."""
    while (n := conn.recv()) is not None:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            step()
            out.append(time.perf_counter() - t0)
        conn.send(reply(out))


def raw_step(net, X, y, lr: float, wd: float) -> Callable[[], None]:
    """One forward/backward/SGD step of ``net`` on pre-made tensors (the engine's optimizer
    and loss), waited for: the reference side of the training figures."""
    import mxnet as mx
    from mxnet import autograd, gluon

    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr, "wd": wd})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    def step() -> None:
        with autograd.record():
            loss = loss_fn(net(X), y)
        loss.backward()
        trainer.step(X.shape[0])
        mx.nd.waitall()

    return step


class BenchTimeline(Callback):
    """The bench's view of a training run, through the loop's events only.

    It timestamps every batch report and every epoch end. With ``reference`` (a function
    that runs one raw training step and returns its images/s), from epoch ``reference_from``
    on, after every training batch but the last it drains the engine (``waitall``: the
    product's own compute, still counted as its time) and then samples one raw reference
    step, whose time is taken out of the product's. Alternating batch by batch exposes both
    sides to the same machine load; the price is that the product loses its one-batch
    overlap of loading with compute (about 1% here), which can only lower its figure.

    ``order`` puts it after the engine's callbacks, so its timestamps close their work.
    """

    order = 100

    def __init__(self, reference: Callable[[], float] | None = None, reference_from: int = 2,
                 clock: Callable[[], float] = time.perf_counter, drain: Callable[[], Any] | None = None):
        self.reference, self.reference_from = reference, reference_from
        self.clock = clock
        self.drain = drain
        self.batches: list[tuple[float, BatchProgress]] = []
        self.epochs: list[tuple[float, EpochMetrics]] = []
        self.first_batch_at: float | None = None  # the first training batch starts
        self.reference_samples: list[float] = []  # raw images/s, one per sample
        self.reference_seconds: dict[int, float] = {}  # epoch -> raw-step seconds inside it
        self.drain_seconds = 0.0  # waitall inside this callback: product compute, not overhead

    def before_batch(self, fit) -> None:
        if self.first_batch_at is None:
            self.first_batch_at = self.clock()

    def after_batch(self, fit, progress: BatchProgress) -> None:
        self.batches.append((self.clock(), progress))
        if (self.reference is not None and progress.phase == "train"
                and progress.epoch >= self.reference_from and progress.batch < progress.batches):
            t1 = self.clock()
            self._drain()
            t2 = self.clock()
            self.reference_samples.append(self.reference())
            t3 = self.clock()
            self.drain_seconds += t2 - t1
            self.reference_seconds[progress.epoch] = self.reference_seconds.get(progress.epoch, 0.0) + (t3 - t2)

    def after_epoch(self, fit, metrics: EpochMetrics) -> None:
        self.epochs.append((self.clock(), metrics))

    def _drain(self) -> None:
        if self.drain is not None:
            self.drain()
        else:
            import mxnet as mx

            mx.nd.waitall()

    @property
    def reference_total(self) -> float:
        return sum(self.reference_seconds.values())

    def _epoch_seconds(self, k: int, start: float) -> float | None:
        """Training seconds of the k-th recorded epoch from ``start`` to its last training-batch
        report (sent once that batch's numbers are back on the host), reference steps out."""
        epoch_no = self.epochs[k][1].epoch
        ends = [t for t, p in self.batches if p.epoch == epoch_no and p.phase == "train"]
        if not ends:
            return None
        return ends[-1] - start - self.reference_seconds.get(epoch_no, 0.0)

    def train_throughput(self, images_per_epoch: int, skip_epochs: int = 1) -> tuple[float, int, float, list]:
        """(images/s, images, seconds, per-epoch images/s) of the epochs after ``skip_epochs``.

        An epoch runs from the previous epoch's end (after its test evaluation and run-store
        writes), so it includes loading its first batch, to its last training-batch report.
        """
        images, seconds, per_epoch = 0, 0.0, []
        for k in range(max(1, skip_epochs), len(self.epochs)):
            sec = self._epoch_seconds(k, self.epochs[k - 1][0])
            if sec is not None:
                seconds += sec
                images += images_per_epoch
                per_epoch.append(ratio(images_per_epoch, sec))
        return (ratio(images, seconds), images, seconds, per_epoch)

    def training_seconds(self) -> float:
        """Seconds of training over every epoch: the first from its first batch, the others
        from the previous epoch's end; reference steps excluded."""
        total = 0.0
        for k in range(len(self.epochs)):
            start = self.first_batch_at if k == 0 else self.epochs[k - 1][0]
            sec = self._epoch_seconds(k, start) if start is not None else None
            total += sec or 0.0
        return total

    def overhead(self, callback_seconds: dict[str, float]) -> dict[str, Any]:
        """training_overhead and its parts, from the dispatcher's seconds per callback."""
        engine = {name: sec for name, sec in callback_seconds.items() if name != type(self).__name__}
        own = callback_seconds.get(type(self).__name__, 0.0)
        recording = max(0.0, own - self.reference_total - self.drain_seconds)
        step = self.training_seconds()
        total = sum(engine.values()) + recording
        return {
            "training_overhead": ratio(total, step),
            "overhead_seconds": total, "step_seconds": step,
            "callbacks_seconds": total, "per_callback_seconds": engine,
            "store_seconds": engine.get("RunRecorder", 0.0), "recording_seconds": recording,
            "raw_reference_seconds_excluded": self.reference_total,
            "drain_seconds_in_callbacks": self.drain_seconds,
        }


# ---------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------


def release_memory() -> None:
    """Drop the previous stage's networks (and their static buffers) before the next one.

    The bench shares its machine; handing freed heap back to the OS keeps its peak near the
    largest single stage instead of the sum of all of them.
    """
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float | None:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except (ImportError, OSError):
        return None
