"""The performance benchmark behind ``python -m hotdog bench``.

It measures the product, not a copy: training goes through ``hotdog.train.train`` (plain
loop and feature-cache path) with configs from ``hotdog.settings`` (the stable preset plus
the explicit values a measurement needs), prediction through ``hotdog.predict.Predictor``,
networks come from ``hotdog.models``. Only the *reference* side of each ratio (raw
forward/backward/step on pre-made tensors, raw batch-1 forward) is written here, because
that is what the product is compared against.

Every figure is a ratio of two timings taken in this process, on the same data, close
together in time: the machines this runs on are shared and noisy, so absolute seconds from
different runs must not be compared. Where a ratio's two sides are minutes apart, the short
side is measured before and after the long one and averaged.

The training loop is observed only through its public events (:mod:`hotdog.callbacks`):
:class:`BenchTimeline` is a ``Callback`` that timestamps every batch and epoch and, from the
second epoch on, runs one raw reference step after each training batch; the loop's own
``Dispatcher`` reports the seconds every callback took (``TrainResult.callback_seconds``).

* ``pipeline_efficiency``: end-to-end training images/s of the counted epochs (each from the
  previous epoch's end to its last batch report, reference steps taken out) over the raw
  step's images/s (harmonic mean of the interleaved samples).
* ``training_overhead``: the seconds the loop spends in its callbacks, as the dispatcher
  timed them (run-store record, heartbeat and final weight save; divergence check; plus the
  bench's own timestamping, standing in for the app's progress callback; the reference
  steps and the engine drains inside it excluded), over the seconds of training (every
  epoch's batches, reference steps excluded).

Change of method (callbacks instead of cProfile): until the engine got its callback events,
this figure came from cProfile entries matched to private function names of train.py, and
also counted the host-side cost of the running loss/accuracy (``metrics_seconds``). That
bookkeeping is not a callback and has no public timer, so it now sits on the training side
of the ratio, as part of the step it accumulates on the device; no profiler slows the run
being measured either.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hotdog.bench_report import METRIC_KEYS, UNSUPPORTED, BenchResult
from hotdog.bench_timing import (BenchTimeline, interleaved, peak_rss_mb, ratio, raw_step, release_memory,
                                 rss_mb)

log = logging.getLogger(__name__)

# bf16 is only worth enabling where it agrees with float32 this often (issue 6).
BF16_MIN_AGREEMENT = 0.99
FUSED_ATOL = 1e-4


@dataclass
class BenchSettings:
    """Sizes of one benchmark run; ``quick`` shrinks everything for tests."""

    data: Path | None = None
    quick: bool = False
    source: str | None = None  # None: models.DEFAULT_SOURCE
    input_size: int | None = None  # None: the source's (224); quick: 32
    batch_size: int = 32
    pipeline_epochs: int = 2  # the first one (graph build, warm caches) is not counted
    frozen_epochs: int = 5
    raw_steps: int = 3
    infer_batch: int = 16
    predict_repeats: int = 7
    agreement_images: int = 64
    # peak_rss_mb: (batch, micro-batch) cases, each trained in its own fresh child process
    memory_cases: tuple = ((32, 32), (128, 128), (128, 32))
    memory_batches: int = 2  # training batches per case (then stopped)
    # threads stage (hotdog.bench_threads): rounds in alternation, training steps per round
    threads_rounds: int = 3
    threads_steps: int = 2
    only: tuple = ()  # stage names to run (empty: all); `bench --only threads` is quick

    @classmethod
    def for_mode(cls, data: Path | None, quick: bool) -> "BenchSettings":
        if quick:
            return cls(data=data, quick=True, input_size=32, batch_size=8, pipeline_epochs=2, memory_batches=1,
                       raw_steps=2, infer_batch=8, predict_repeats=3, agreement_images=16,
                       threads_rounds=2, threads_steps=1)
        return cls(data=data)


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import mxnet as mx

    from hotdog import inference

    flags = inference.cpu_flags()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": inference.cpu_model(),
        "flags": {f: f in flags for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")},
        "mkldnn": inference.mkldnn_enabled(),
        "mxnet": mx.__version__,
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        # Unset, MXNet on Intel x86 uses half the logical CPUs (it assumes hyperthreading), so a
        # 2-vCPU machine computes on one thread: the figures depend on this.
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "mxnet_omp_max_threads_env": os.environ.get("MXNET_OMP_MAX_THREADS"),
        "threads": _threads_choice(),
    }


def _threads_choice() -> dict:
    from hotdog import threads

    return threads.current().to_dict()


def make_bench_dataset(root: Path, per_class: dict[str, int], size: tuple[int, int]) -> Path:
    """A d2l-layout set of photo-like JPEGs (smooth colour blobs plus noise, two classes)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    colors = {"hotdog": (200, 70, 40), "not-hotdog": (50, 110, 190)}
    for split, n in per_class.items():
        for name, color in colors.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
                r = rng.uniform(0.15, 0.4) * min(w, h)
                blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))[..., None]
                base = np.array(color, np.float32) * blob + rng.uniform(60, 200, 3).astype(np.float32) * (1 - blob)
                arr = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def _stack_images(items, pre, n: int):
    """The first ``n`` items of a split through the product's test transform, as one batch."""
    import mxnet as mx

    from hotdog.data import ImageListDataset, test_transform

    ds = ImageListDataset(items[: max(1, n)], test_transform(pre), min_side=pre.resize)
    tensors = [ds[i][0] for i in range(len(ds))]
    while len(tensors) < n:  # a tiny data set: repeat images to fill the batch
        tensors.extend(tensors[: n - len(tensors)])
    return mx.nd.stack(*tensors[:n])


class Bench:
    def __init__(self, settings: BenchSettings, progress: Callable[[str], None] | None = None):
        from hotdog import data, models, train

        self.s = settings
        self.progress = progress or (lambda msg: log.info("%s", msg))
        self.source = settings.source or models.DEFAULT_SOURCE
        self.pre = train.resolve_preprocess(self.source, settings.input_size)
        self._tmp = Path(tempfile.mkdtemp(prefix="hotdog-bench-"))
        self.runs_dir = self._tmp / "runs"
        try:
            if settings.data is None:
                per_class = {"train": 8, "test": 4} if settings.quick else {"train": 32, "test": 8}
                size = (48, 40) if settings.quick else (320, 240)
                self.root = make_bench_dataset(self._tmp / "data", per_class, size)
                self.generated = True
            else:
                self.root = Path(settings.data)
                self.generated = False
            self.splits = data.load_splits(self.root)
        except BaseException:
            self.close()
            raise
        self.metrics: dict[str, Any] = {}
        self.details: dict[str, Any] = {}

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def config(self, **overrides):
        """The stable preset (what a user's run trains with) for this data and source, with
        the sizes of this benchmark; ``warmup_epochs=0``: every counted epoch must be the loop
        under test, not head warm-up; ``proxy_eval=False`` and ``wise_alpha=1``: the
        after-training robustness check and the per-epoch score of the WiSE-FT mix (hotdog.robust,
        one test pass per epoch) are evaluation the recipe asks for, not the loop's overhead."""
        from hotdog.settings import config_for

        sizes = dict(batch_size=self.s.batch_size, input_size=self.s.input_size, seed=0, warmup_epochs=0,
                     proxy_eval=False, wise_alpha=1.0)
        return config_for(self.root, self.source, overrides.pop("mode", "finetune"), "stable",
                          **{**sizes, **overrides})

    def _train(self, cfg, timeline: BenchTimeline, prepared=None):
        from hotdog import train

        result = train.train(cfg, callbacks=[timeline], runs_dir=self.runs_dir, prepared=prepared)
        if result.status != "finished":
            raise RuntimeError(f"benchmark training run ended {result.status}: {result.message}")
        return result

    # -- inference: MKLDNN fusion and bf16 ----------------------------------------------

    def inference_variants(self) -> None:
        """Fused and bf16 inference vs plain hybridized inference, on the data's images."""
        import mxnet as mx

        from hotdog import inference, models

        self.progress("inference: MKLDNN fusion and bfloat16")
        x = _stack_images(self.splits.test or self.splits.train, self.pre, self.s.infer_batch)
        # The network the feature cache runs: a fine-tune copy's features, pretrained weights.
        net = models.build_finetune(self.source, len(self.splits.classes), freeze=True)
        net.hybridize()
        plain = net.features
        rounds = 2 if self.s.quick else 3
        # the static-allocation copy separates the fusion's gain from static memory planning's
        static = inference.inference_copy(plain, x.context, x)
        contenders = {"plain": lambda: plain(x).wait_to_read(), "static": lambda: static(x).wait_to_read()}
        fused, fused_diff = None, 0.0
        if inference.mkldnn_enabled():
            fused = inference.fused_forward_block(plain, x)
            fused_diff = inference.max_abs_diff(plain, fused, x)
            contenders["fused"] = lambda: fused(x).wait_to_read()
        t = interleaved(contenders, rounds)
        t_plain, t_static, t_fused = t["plain"], t["static"], t.get("fused", float("nan"))
        static = None  # free its buffers before the bf16 copies
        exact = fused is not None and fused_diff <= FUSED_ATOL
        self.metrics["fused_inference_speedup"] = ratio(t_plain, t_fused) if fused is not None else 1.0
        self.metrics["fused_max_abs_diff"] = float(fused_diff)
        self.details["fused"] = {
            "network": f"{self.source} features (fine-tune copy, pretrained)",
            "batch": int(x.shape[0]), "input_size": int(x.shape[2]),
            "plain_images_per_sec": ratio(x.shape[0], t_plain),
            "fused_images_per_sec": ratio(x.shape[0], t_fused),
            "plain_static_alloc_images_per_sec": ratio(x.shape[0], t_static),
            "exact_to": FUSED_ATOL, "exact": bool(exact),
            "use_it": bool(exact and t_fused < t_plain),
        }

        if not inference.bf16_supported():
            self.metrics["bf16_inference_speedup"] = UNSUPPORTED
            self.metrics["bf16_top1_agreement"] = UNSUPPORTED
            self.details["bf16"] = {"reason": "no avx512_bf16/amx_bf16 on this CPU or MXNet without oneDNN"}
            return
        # Top-1 over the 1000 ImageNet classes of the source on the data's real photos.
        full = models.load_source(self.source)
        fp32 = inference.inference_copy(full, x.context, x)
        items = list(self.splits.test) + list(self.splits.train)
        n_agree = min(len(items), self.s.agreement_images)
        xa = _stack_images(items, self.pre, n_agree)
        try:
            bf = inference.bf16_block(full, x)
        except mx.base.MXNetError as err:
            self.metrics["bf16_inference_speedup"] = UNSUPPORTED
            self.metrics["bf16_top1_agreement"] = UNSUPPORTED
            self.details["bf16"] = {"reason": f"AMP conversion failed: {str(err).splitlines()[0]}"}
            return
        ref = np.concatenate([fp32(xa[i:i + 32]).asnumpy() for i in range(0, n_agree, 32)])
        got = np.concatenate([bf(xa[i:i + 32]).asnumpy() for i in range(0, n_agree, 32)])
        agree = float((ref.argmax(1) == got.argmax(1)).mean())
        t = interleaved({"fp32": lambda: fp32(x).wait_to_read(), "bf16": lambda: bf(x).wait_to_read()}, rounds)
        t_fp32, t_bf = t["fp32"], t["bf16"]
        self.metrics["bf16_inference_speedup"] = ratio(t_fp32, t_bf)
        self.metrics["bf16_top1_agreement"] = agree
        self.details["bf16"] = {
            "network": f"{self.source} (1000 ImageNet classes, pretrained)",
            "agreement_images": n_agree,
            "fp32_images_per_sec": ratio(x.shape[0], t_fp32),
            "bf16_images_per_sec": ratio(x.shape[0], t_bf),
            "max_abs_logit_diff": float(np.abs(ref - got).max()),
            "use_it": bool(agree >= BF16_MIN_AGREEMENT and t_bf < t_fp32),
        }

    # -- source models --------------------------------------------------------------------

    def source_models(self) -> None:
        """Training and inference images/s of every source (random weights), same shapes.

        The models take turns step by step, so a change in the machine's load hits both.
        """
        import mxnet as mx

        from hotdog import inference, models
        from hotdog.hybrid import hybridize_for_training

        self.progress("source models: training and inference images/s")
        B, S = self.s.infer_batch, self.pre.input_size
        x = mx.nd.random.normal(shape=(B, 3, S, S))
        y = mx.nd.array(np.arange(B) % 2)
        train_fns, infer_fns, exact = {}, {}, {}
        for name in models.list_sources():
            net = models.build_scratch(name, 2)
            hybridize_for_training(net)  # as the product trains it
            train_fns[name] = raw_step(net, x, y, lr=0.01, wd=1e-3)
            fused = inference.fast_inference_block(net, x, atol=FUSED_ATOL)
            exact[name] = fused.fused
            infer_fns[name] = (lambda n: lambda: n(x).wait_to_read())(net)
            infer_fns[name + "/fused"] = (lambda f: lambda: f(x).wait_to_read())(fused.block)
        t_train = interleaved(train_fns, self.s.raw_steps)
        t_infer = interleaved(infer_fns, self.s.raw_steps)
        self.metrics["source_models"] = {
            name: {
                "train_images_per_sec": ratio(B, t_train[name]),
                "infer_images_per_sec": ratio(B, t_infer[name]),
                "fused_infer_images_per_sec": ratio(B, t_infer[name + "/fused"]),
                "fused_exact": bool(exact[name]),
            }
            for name in train_fns
        }
        self.details["source_models"] = {"batch": B, "input_size": S, "weights": "random (Xavier)",
                                         "mode": "scratch (all layers train, BatchNorm updating)"}

    def _raw_stepper(self, prepared) -> Callable[[], float]:
        """Returns a function timing one forward/backward/step of the product's network (the
        same models builder, knobs, optimizer and loss) on pre-made tensors of the same shape."""
        import mxnet as mx

        from hotdog import models
        from hotdog.hybrid import hybridize_for_training

        cfg, ctxs, classes = prepared.config, prepared.ctxs, prepared.splits.classes
        if cfg.mode == "scratch":
            net = models.build_scratch(cfg.source, len(classes), ctx=ctxs)
        else:
            net = models.build_finetune(cfg.source, len(classes), ctx=ctxs, lr_mult=cfg.lr_mult,
                                        freeze=cfg.freeze, bn_mode=cfg.bn_mode)
        hybridize_for_training(net)  # the reference must plan memory as the product's loop does
        B, S = cfg.batch_size, prepared.pre.input_size
        X = mx.nd.random.normal(shape=(B, 3, S, S), ctx=ctxs[0])
        y = mx.nd.array(np.arange(B) % len(classes), ctx=ctxs[0])
        step = raw_step(net, X, y, lr=cfg.lr, wd=cfg.wd)
        step()  # graph build, memory planning

        def sample() -> float:
            t0 = time.perf_counter()
            step()
            return ratio(B, time.perf_counter() - t0)

        return sample

    def pipeline_and_overhead(self) -> Path:
        """One fine-tuning run gives pipeline efficiency and the training overhead.

        The first epoch (graph build, warm caches) is not counted for the pipeline; in the
        counted epochs a raw reference step follows every training batch (see BenchTimeline).
        """
        from hotdog import train

        prepared = train.prepare(self.config(freeze=False, epochs=self.s.pipeline_epochs))
        cfg = prepared.config
        self.progress("pipeline: building the raw forward/backward/step reference")
        timeline = BenchTimeline(reference=self._raw_stepper(prepared), reference_from=2)
        self.progress(f"pipeline: end-to-end fine-tuning, {cfg.epochs} epochs, a raw step after each batch "
                      "from epoch 2")
        t0 = time.perf_counter()
        result = self._train(cfg, timeline, prepared)
        wall = time.perf_counter() - t0
        ips, images, seconds, per_epoch = timeline.train_throughput(len(self.splits.train), skip_epochs=1)
        samples = timeline.reference_samples
        raw = ratio(len(samples), sum(1.0 / v for v in samples)) if samples else float("nan")  # harmonic mean
        self.metrics["pipeline_efficiency"] = ratio(ips, raw)
        self.details["pipeline"] = {
            "end_to_end_images_per_sec": ips, "end_to_end_per_epoch": per_epoch,
            "images": images, "seconds": seconds,
            "raw_images_per_sec": raw, "raw_samples": samples,
            "batch_size": cfg.batch_size, "input_size": self.pre.input_size, "lr": cfg.lr,
            "preset": cfg.preset, "bn_mode": cfg.bn_mode,
            "epochs": cfg.epochs, "epochs_counted": max(0, cfg.epochs - 1),
            "test_acc": result.test_acc, "run_seconds": wall - timeline.reference_total,
        }
        overhead = timeline.overhead(result.callback_seconds)
        self.metrics["training_overhead"] = overhead.pop("training_overhead")
        self.details["training_overhead"] = overhead
        return Path(result.run_dir)

    # -- prediction -----------------------------------------------------------------------

    def predict(self, run_dir: Path) -> None:
        """Raw batch-1 forward vs Predictor.predict of one photo's bytes, interleaved.

        "Raw" runs the predictor's own network on a pre-made tensor, so whatever network the
        Predictor uses (plain or fused) is compared with itself."""
        from hotdog.predict import Predictor

        self.progress("predict: one uploaded photo vs raw batch-1 forward")
        predictor = Predictor.from_run(run_dir)
        items = self.splits.test or self.splits.train
        photo = Path(items[0][0]).read_bytes()
        x = _stack_images(items, predictor.preprocess, 1)

        def raw():
            predictor.net(x).wait_to_read()

        def one():
            [pred] = predictor.predict([photo])
            if pred.error:
                raise RuntimeError(pred.error)

        many = [Path(p).read_bytes() for p, _ in items[:8]]
        x_many = _stack_images(items, predictor.preprocess, len(many))
        big = _big_photo_bytes((480, 360) if self.s.quick else (4032, 3024))
        t = interleaved({
            "raw": raw,
            "one": one,
            "raw_many": lambda: predictor.net(x_many).wait_to_read(),
            "many": lambda: predictor.predict(many),
            "big": lambda: predictor.predict([big]),
        }, self.s.predict_repeats)
        self.metrics["predict_efficiency"] = ratio(t["raw"], t["one"])
        self.details["predict"] = {
            "raw_batch1_seconds": t["raw"], "predict_one_seconds": t["one"], "photo_bytes": len(photo),
            "photos_in_one_call": len(many),
            "predict_many_efficiency": ratio(t["raw_many"], t["many"]),
            "predict_many_seconds_per_photo": t["many"] / max(1, len(many)),
            "large_photo": f"{_big_size(self.s.quick)} JPEG", "predict_large_photo_seconds": t["big"],
            "predict_efficiency_large_photo": ratio(t["raw"], t["big"]),
            "predictor_network": type(predictor.net).__name__,
        }

    # -- memory: peak RSS per batch size, with and without micro-batching -----------------

    def memory(self) -> None:
        """Peak resident memory of the product's fine-tuning (stable preset, all layers), one
        fresh spawned child per case, so each peak is that case's alone: ``peak_rss_mb`` per
        batch size and with micro-batching (``batch_128_micro_32``: the chapter's batch as 4
        passes of 32). Each child trains ``memory_batches`` batches, then stops."""
        import multiprocessing

        largest = max(b for b, _ in self.s.memory_cases)
        size = (48, 40) if self.s.quick else (320, 240)
        root = make_bench_dataset(self._tmp / "memory-data", {"train": largest // 2, "test": 2}, size)
        ctx = multiprocessing.get_context("spawn")
        out: dict[str, float | None] = {}
        for batch, micro in self.s.memory_cases:
            key = f"batch_{batch}" + (f"_micro_{micro}" if micro < batch else "")
            self.progress(f"memory: peak RSS of {key.replace('_', ' ')} in a fresh process")
            cfg = self.config(batch_size=batch, micro_batch=micro, epochs=1)
            cfg = dataclasses.replace(cfg, data_root=str(root))
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_memory_child, args=(child, cfg, str(self._tmp / "memory-runs"),
                                                           self.s.memory_batches), daemon=True)
            proc.start()
            child.close()
            try:
                out[key] = parent.recv() if parent.poll(3600) else None
            except EOFError:  # the child died (e.g. killed for memory): no figure
                out[key] = None
            proc.join(60)
        self.metrics["peak_rss_mb"] = out
        self.details["memory"] = {
            "input_size": self.pre.input_size, "train_images": largest, "batches_per_case": self.s.memory_batches,
            "how": "ru_maxrss of a fresh spawned process training the stable preset (all layers)",
            "estimate_mb": {f"batch_{b}" + (f"_micro_{m}" if m < b else ""): round(_estimate(cfg, m, largest + 4))
                            for b, m in self.s.memory_cases},
        }

    # -- frozen: plain loop vs feature cache --------------------------------------------

    def frozen(self) -> None:
        E = self.s.frozen_epochs
        cache_cfg = self.config(freeze=True, feature_cache=True, epochs=E)
        plain_cfg = self.config(freeze=True, feature_cache=False, epochs=E)

        def timed(cfg):
            # the app always watches progress, so the bench does too
            t0 = time.perf_counter()
            res = self._train(cfg, BenchTimeline())
            return time.perf_counter() - t0, res

        from hotdog import featcache

        # The on-disk feature cache is the bench's own: emptied before each first run
        # (frozen_cache_speedup: features computed in the run), kept for the reruns
        # (cached_rerun_speedup: a second run on the same data reads them back).
        store = featcache.FeatureStore(self._tmp / "features")
        with featcache.using_root(store.root):
            self.progress(f"frozen: feature-cache path, {E} epochs, empty disk cache")
            store.clear()
            t_cache1, r_cache = timed(cache_cfg)
            self.progress(f"frozen: plain loop, {E} epochs")
            t_plain, r_plain = timed(plain_cfg)
            self.progress(f"frozen: feature-cache path again, {E} epochs, empty disk cache")
            store.clear()
            t_cache2, _ = timed(cache_cfg)
            self.progress(f"frozen: second run on the same data, {E} epochs, features from the disk cache")
            reruns = [timed(cache_cfg) for _ in range(2)]
        t_cache = (t_cache1 + t_cache2) / 2
        t_rerun = sum(t for t, _ in reruns) / len(reruns)
        self.metrics["frozen_cache_speedup"] = ratio(t_plain, t_cache)
        self.metrics["cached_rerun_speedup"] = ratio(t_plain, t_rerun)
        plain_epochs = sum(e.seconds for e in r_plain.epochs)
        cache_epochs = sum(e.seconds for e in r_cache.epochs)
        self.details["frozen"] = {
            "epochs": E, "plain_seconds": t_plain, "cache_seconds": t_cache,
            "cache_seconds_runs": [t_cache1, t_cache2],
            "plain_epoch_seconds": [e.seconds for e in r_plain.epochs],
            "cache_epoch_seconds": [e.seconds for e in r_cache.epochs],
            "plain_test_acc": r_plain.test_acc, "cache_test_acc": r_cache.test_acc,
            # outside the epochs: setup (network copy, decode) and the final save; for the
            # cache path also the feature extraction, hence the difference estimates it
            "plain_outside_epochs_seconds": t_plain - plain_epochs,
            "cache_outside_epochs_seconds": t_cache1 - cache_epochs,
            "extraction_seconds_estimate": (t_cache1 - cache_epochs) - (t_plain - plain_epochs),
            "rerun_seconds": t_rerun, "rerun_seconds_runs": [t for t, _ in reruns],
            "rerun_test_acc": reruns[-1][1].test_acc,
            "rerun_epoch_seconds": [e.seconds for e in reruns[-1][1].epochs],
        }

    # -- threads: the OpenMP policy vs 1 thread ------------------------------------------

    def threads(self) -> None:
        from hotdog import bench_threads

        f = bench_threads.measure(self.source, len(self.splits.classes), self.s.batch_size, self.pre.input_size,
                                  self.s.threads_rounds, self.s.threads_steps, self.progress)
        self.metrics["threads_training_speedup"] = f.threads_training_speedup
        self.metrics["training_img_s"] = f.training_img_s
        self.details["threads"] = f.details

    def run(self) -> BenchResult:
        t0 = time.perf_counter()
        memory = {}
        run_dir: Path | None = None  # the fine-tuning run that predict() loads
        for stage in STAGES:
            if self.s.only and stage not in self.s.only and not (stage == "pipeline_and_overhead"
                                                                 and "predict" in self.s.only):
                continue
            if stage == "predict":
                self.predict(run_dir)
            elif stage == "pipeline_and_overhead":
                run_dir = self.pipeline_and_overhead()
            else:
                getattr(self, stage)()
            release_memory()
            memory[stage] = rss_mb()
        self.details["rss_mb_after_stage"] = memory
        self.details["peak_rss_mb"] = peak_rss_mb()
        return BenchResult(
            metrics={k: self.metrics.get(k, float("nan")) for k in METRIC_KEYS},
            details=self.details,
            machine=machine_info(),
            settings={
                "data": "generated" if self.generated else str(self.root),
                "quick": self.s.quick, "source": self.source, "input_size": self.pre.input_size,
                "batch_size": self.s.batch_size, "train_images": len(self.splits.train),
                "test_images": len(self.splits.test), "classes": list(self.splits.classes),
            },
            seconds=time.perf_counter() - t0,
        )


STAGES = ("threads", "memory", "inference_variants", "source_models", "pipeline_and_overhead", "predict", "frozen")


def _estimate(cfg, micro: int, n_images: int) -> float:
    from hotdog import memory

    return memory.estimate_mb(cfg, micro, n_images)


def _memory_child(conn, cfg, runs_dir: str, batches: int) -> None:
    """In a fresh process: train ``batches`` batches of ``cfg``, send back the peak RSS (MB)."""
    import threading

    from hotdog import train

    stop = threading.Event()

    def on_batch(p):
        if p.phase == "train" and p.batch >= batches:
            stop.set()

    train.train(cfg, on_batch=on_batch, stop_event=stop, runs_dir=runs_dir)
    conn.send(peak_rss_mb())


def _big_size(quick: bool) -> str:
    return "480x360" if quick else "4032x3024"


def _big_photo_bytes(size: tuple[int, int]) -> bytes:
    """A phone-camera-sized JPEG: what users upload, unlike the data set's small photos."""
    import io

    from PIL import Image

    w, h = size
    rng = np.random.default_rng(1)
    small = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def run_bench(data: str | os.PathLike | None = None, quick: bool = False,
              progress: Callable[[str], None] | None = None, only: tuple = ()) -> BenchResult:
    """Run every measurement (or the ``only`` stages); raises HotdogError subclasses for bad data."""
    settings = dataclasses.replace(BenchSettings.for_mode(Path(data) if data else None, quick), only=tuple(only))
    bench = Bench(settings, progress)
    try:
        return bench.run()
    finally:
        bench.close()
