"""How long a run will take on this machine, said before it starts.

A run costs a start-up part that grows with the number of photos (decoding them, and for
frozen cached features one forward pass per image) and a part per epoch that grows with the
training photos. Both rates come from a measurement on this machine, never from a table:

* the newest finished run with comparable settings (:func:`speed_key`: same source, mode,
  image size, frozen/cached path, devices): its ``config.json`` says how many photos it
  read (``images``), its ``metrics.jsonl`` how long each epoch took and ``status.json`` how
  long the whole run took, so start-up = whole run - epochs;
* else a short probe (:func:`probe`): one warm-up and two timed batches of random pixels
  through the network as the run would use it, plus decoding a few of the data set's photos,
  kept in ``HOTDOG_HOME/cache/speed.json`` per settings key (a probe is seconds; the
  machine does not change between page loads).

The estimate is as good as the machine is steady: other jobs running at the same time slow
both the measurement and the run.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from hotdog.fileio import atomic_write_json, file_lock, read_json
from hotdog.paths import cache_root, runs_root

log = logging.getLogger(__name__)

PROBE_BATCHES = 2
PROBE_BATCH = 8
PROBE_DECODES = 8


@dataclass(frozen=True)
class Speed:
    """Measured rates: seconds per start-up photo, per training photo and per test photo in an
    epoch (from a run, the test evaluation is folded into the training photo's share), fixed
    start-up seconds; ``basis`` says where they come from."""

    startup_per_image: float
    epoch_per_train_image: float
    epoch_per_test_image: float = 0.0
    fixed: float = 0.0
    basis: str = ""
    run_id: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Speed | None":
        try:
            speed = cls(float(d["startup_per_image"]), float(d["epoch_per_train_image"]),
                        float(d.get("epoch_per_test_image", 0.0)), float(d.get("fixed", 0.0)),
                        str(d.get("basis", "")), d.get("run_id"))
        except (KeyError, TypeError, ValueError):
            return None
        values = (speed.startup_per_image, speed.epoch_per_train_image, speed.epoch_per_test_image, speed.fixed)
        return speed if all(math.isfinite(v) and v >= 0 for v in values) else None


@dataclass(frozen=True)
class Estimate:
    seconds: float
    startup_seconds: float
    epoch_seconds: float  # one epoch
    epochs: int
    speed: Speed

    @property
    def images_per_sec(self) -> float:
        """Training photos per second of an epoch (what the live panel reports)."""
        per = self.speed.epoch_per_train_image
        return 1.0 / per if per > 0 else float("inf")


def _get(cfg, name: str, default=None):
    return cfg.get(name, default) if isinstance(cfg, dict) else getattr(cfg, name, default)


def uses_cache(cfg) -> bool:
    return bool(_get(cfg, "freeze") and _get(cfg, "feature_cache", True) and _get(cfg, "mode") == "finetune")


def speed_key(cfg) -> str:
    """The settings that decide a run's speed (a TrainConfig or config.json dict; what a
    config leaves to the run, image size and devices, is resolved as the run would). The
    learning rates, seed and epochs do not; the batch size changes it by little."""
    mode = _get(cfg, "mode")
    path = "cached" if uses_cache(cfg) else ("frozen" if _get(cfg, "freeze") and mode == "finetune" else "all")
    size = _get(cfg, "input_size")
    if not size:
        from hotdog.models import get_spec

        size = get_spec(_get(cfg, "source")).preprocess.input_size
    devices = _get(cfg, "devices")
    if not devices:
        from hotdog.devices import available_devices

        devices = available_devices()
    warm = "warmup" if _get(cfg, "warmup_epochs") and path == "all" else ""
    return "|".join(str(x) for x in (_get(cfg, "source"), mode, size, path, ",".join(devices), warm))


def startup_images(cfg, n_train: int, n_test: int) -> int:
    """Photos the start-up touches: decoded once each; with cached features, also one
    forward pass per photo and per augmented view."""
    views = 1 + int(_get(cfg, "augment_views", 0) or 0) if uses_cache(cfg) else 1
    return n_train * views + n_test


def estimate(cfg, n_train: int, n_test: int, speed: Speed) -> Estimate:
    epochs = int(_get(cfg, "epochs") or 1)
    startup = speed.fixed + speed.startup_per_image * startup_images(cfg, n_train, n_test)
    epoch = speed.epoch_per_train_image * n_train + speed.epoch_per_test_image * n_test
    return Estimate(startup + epochs * epoch, startup, epoch, epochs, speed)


# ------------------------------------------------------------------------------ from the run store

def speed_from_record(config: dict, metrics: Sequence[dict], status: dict, run_id: str = "") -> Speed | None:
    """The rates of one finished run, or None when it lacks what they need (runs from before
    config.json recorded its photo counts, runs without timings)."""
    images = config.get("images") if isinstance(config, dict) else None
    if not isinstance(images, dict):
        return None
    try:
        n_train, n_test = int(images["train"]), int(images["test"])
        epoch_seconds = [float(m["seconds"]) for m in metrics if m.get("seconds") is not None]
        total = float(status["seconds"])
    except (KeyError, TypeError, ValueError):
        return None
    if n_train <= 0 or not epoch_seconds or not math.isfinite(total) or total <= 0:
        return None
    startup = max(total - sum(epoch_seconds), 0.0)
    per_epoch = sum(epoch_seconds) / len(epoch_seconds)
    return Speed(startup / max(startup_images(config, n_train, n_test), 1), per_epoch / n_train,
                 basis=f"run {run_id}" if run_id else "a previous run", run_id=run_id or None)


def speed_from_runs(cfg, store) -> Speed | None:
    """The rates of the newest finished run in ``store`` with the same :func:`speed_key`."""
    from hotdog.errors import HotdogError

    want = speed_key(cfg)
    try:
        runs = store.list()
    except HotdogError:
        return None
    for r in runs:
        if r.status != "finished":
            continue
        try:
            rec = store.load(r.run_id)
        except HotdogError:
            continue
        if speed_key(rec.config) != want:
            continue
        speed = speed_from_record(rec.config, rec.metrics, rec.status, r.run_id)
        if speed is not None:
            return speed
    return None


# ------------------------------------------------------------------------------ the probe

def _probe_path(home=None):
    return cache_root(home) / "speed.json"


def cached_probe(cfg, home=None) -> Speed | None:
    try:
        raw = read_json(_probe_path(home))
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 - a damaged cache is measured again
        log.warning("ignoring the unreadable speed cache: %s", err)
        return None
    entry = raw.get(speed_key(cfg)) if isinstance(raw, dict) else None
    return Speed.from_dict(entry) if isinstance(entry, dict) else None


def _save_probe(cfg, speed: Speed, home=None) -> None:
    path = _probe_path(home)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.with_suffix(".lock"), timeout=10.0):
            try:
                raw = read_json(path)
            except Exception:  # noqa: BLE001 - missing or damaged: start afresh
                raw = {}
            raw = raw if isinstance(raw, dict) else {}
            raw[speed_key(cfg)] = speed.to_dict()
            atomic_write_json(path, raw)
    except Exception as err:  # noqa: BLE001 - the estimate is a convenience; measure again next time
        log.warning("could not keep the speed probe: %s", err)


def probe(cfg, items: Sequence[tuple[Any, int]] = (), num_classes: int = 2, home=None) -> Speed:
    """Measure this machine for ``cfg`` (a resolved TrainConfig): build the network as the run
    would (weights loaded, random head), run one warm-up and PROBE_BATCHES timed batches of
    random pixels (a training step, or for cached features the forward pass that extracts
    them), and decode up to PROBE_DECODES of ``items`` (the data set's (path, label) pairs).
    The result is kept per :func:`speed_key` (see :func:`cached_probe`)."""
    import mxnet as mx
    from mxnet import autograd, gluon

    from hotdog import models
    from hotdog.data import ImageListDataset
    from hotdog.devices import resolve_devices
    from hotdog.train import resolve_preprocess

    ctx = resolve_devices(cfg.devices)[0]
    pre = resolve_preprocess(cfg.source, cfg.input_size)
    t0 = time.perf_counter()
    if cfg.mode == "scratch":
        net = models.build_scratch(cfg.source, num_classes, ctx=[ctx])
    else:
        models.load_source(cfg.source)
        net = models.build_finetune(cfg.source, num_classes, ctx=[ctx], lr_mult=cfg.lr_mult, freeze=cfg.freeze,
                                    bn_mode=cfg.bn_mode, init_output_from_imagenet=False)
    net.hybridize()
    fixed = time.perf_counter() - t0

    # Small batches: the probe must stay short on a busy CPU (per-image speed varies little).
    batch = max(1, min(int(cfg.batch_size), PROBE_BATCH))
    X = mx.nd.random.uniform(-1, 1, shape=(batch, 3, pre.input_size, pre.input_size), ctx=ctx)
    y = mx.nd.array([i % num_classes for i in range(batch)], ctx=ctx)
    cached = uses_cache(cfg)
    if cached:
        def one():
            net.features(X).wait_to_read()
    else:
        trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 1e-9})
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

        def one():
            with autograd.record():
                loss = loss_fn(net(X), y)
            loss.backward()
            trainer.step(batch)
            loss.wait_to_read()

    one()  # warm-up: graph building and memory planning are not the steady speed
    t1 = time.perf_counter()
    for _ in range(PROBE_BATCHES):
        one()
    mx.nd.waitall()
    per_image = (time.perf_counter() - t1) / (PROBE_BATCHES * batch)
    # Evaluating the test split is a forward pass: about a third of a training step.
    forward = per_image if cached else per_image / 3.0

    decode = 0.0
    sample = list(items)[:PROBE_DECODES]
    if sample:
        ds = ImageListDataset(sample, None, min_side=pre.resize)
        t2 = time.perf_counter()
        ds.preload(threads=1)
        decode = (time.perf_counter() - t2) / len(sample)

    if cached:
        # Start-up: decode + one forward per photo; an epoch trains only the output layer.
        speed = Speed(decode + forward, 0.0, 0.0, fixed, "a probe of this machine")
    else:
        speed = Speed(decode, per_image, forward, fixed, "a probe of this machine")
    _save_probe(cfg, speed, home)
    return speed


def best_speed(cfg, store=None, home=None) -> Speed | None:
    """A comparable finished run's rates, else a kept probe's, else None (call :func:`probe`)."""
    from hotdog.runs import RunStore

    store = store if store is not None else RunStore(None if home is None else runs_root(home))
    return speed_from_runs(cfg, store) or cached_probe(cfg, home)
