"""``python -m hotdog bench --scale N``: does the app stay flat as the data grows?

It builds a synthetic image-folder data set of N real JPEG files of varied sizes (d2l layout,
two classes, 90% train / 10% test), then measures:

* ``scan_seconds``: :func:`hotdog.data.load_splits` (every header checked), in this process;
* ``pipeline``: one full pass of the product's input pipeline over the training split without
  the network (``ImageListDataset`` with the training transform, decode + augment + batch
  through Gluon's DataLoader, no preload): images/s and peak RSS;
* ``frozen`` and ``full``: ``hotdog.train.train`` for the first ``batches`` training batches
  (frozen = the plain frozen loop, the one that decodes photos every epoch; full = every layer
  trains), images/s over batches 2.. and peak RSS; the run's preload (one decode of every photo,
  which also finds unreadable ones) happens before them and is timed separately.

Each of the three runs in its own freshly spawned process, so each peak RSS (``ru_maxrss``) is
that stage's alone and nothing one stage allocated inflates the next. The decoded-photo store
is the app's own (``HOTDOG_DECODED_CACHE_MB``); its cap and fill are reported. A small input
size (default 64 px) keeps 20,000 photos feasible on a small machine; it is reported.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from hotdog.bench_timing import peak_rss_mb

DEFAULT_INPUT_SIZE = 64
DEFAULT_BATCHES = 30
BATCH_SIZE = 32


def make_scale_dataset(root: Path, n: int, progress: Callable[[str], None] | None = None, seed: int = 0) -> Path:
    """N JPEGs (sides 96..640 px, quality 70..95) of two colour classes under ``root``: a
    smooth random field upscaled from a small grid, so each file is photo-like and different."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colors = {"hotdog": np.array((200, 70, 40)), "not-hotdog": np.array((50, 110, 190))}
    n_test = max(2, n // 10)
    t_last = time.monotonic()
    for i in range(n):
        split = "test" if i < n_test else "train"
        name = "hotdog" if i % 2 == 0 else "not-hotdog"
        w, h = int(rng.integers(96, 641)), int(rng.integers(96, 641))
        grid = rng.integers(-60, 60, (max(2, h // 32), max(2, w // 32), 3))
        small = np.clip(colors[name] + grid, 0, 255).astype(np.uint8)
        im = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        im.save(folder / f"{i:06d}.jpg", quality=int(rng.integers(70, 96)))
        if progress and time.monotonic() - t_last > 10:
            progress(f"scale: {i + 1}/{n} photos written")
            t_last = time.monotonic()
    return root


def _pipeline_child(conn, root: str, input_size: int) -> None:
    """One decode + augment + batch pass over the training split; sends the figures."""
    import mxnet as mx
    from mxnet import gluon

    from hotdog import data, train

    pre = train.resolve_preprocess("efficientnet_lite0", input_size)
    splits = data.load_splits(root)
    ds = data.ImageListDataset(splits.train, data.train_transform(pre), min_side=pre.resize)
    loader = gluon.data.DataLoader(ds, batch_size=BATCH_SIZE, shuffle=True, last_batch="keep")
    rss_start = peak_rss_mb()
    t0 = time.perf_counter()
    n = 0
    for X, _y in loader:
        X.wait_to_read()
        n += X.shape[0]
    seconds = time.perf_counter() - t0
    mx.nd.waitall()
    conn.send({"images": n, "seconds": seconds, "images_per_sec": n / seconds if seconds > 0 else None,
               "peak_rss_mb": peak_rss_mb(), "peak_rss_mb_before_pass": rss_start,
               "decoded_cache": ds.decoded_cache.stats()})


def _training_child(conn, root: str, input_size: int, freeze: bool, batches: int, runs_dir: str) -> None:
    """The first ``batches`` training batches of a real run; sends the figures."""
    from hotdog import train
    from hotdog.settings import config_for

    stop = threading.Event()
    stamps: list[float] = []  # when each training batch was reported (across epochs)
    seen: set = set()
    started = time.perf_counter()

    def on_batch(p):
        # An epoch's last batch is reported twice (again when the epoch closes).
        if p.phase != "train" or len(stamps) >= batches or (p.epoch, p.batch) in seen:
            return
        seen.add((p.epoch, p.batch))
        stamps.append(time.perf_counter())
        if len(stamps) >= batches:
            stop.set()

    cfg = config_for(root, "efficientnet_lite0", "finetune", "stable", input_size=input_size, freeze=freeze,
                     feature_cache=False, batch_size=BATCH_SIZE, epochs=1000, seed=0, warmup_epochs=0)
    # Measured even where the memory check would refuse: reporting the peak is the point
    # (on the shared machine other jobs' memory moves the check's answer from run to run).
    prepared = train.prepare(cfg, check_memory=False)
    train.train(cfg, on_batch=on_batch, stop_event=stop, runs_dir=runs_dir, prepared=prepared)
    # Batch 1 carries graph building; the speed is over batches 2..last.
    # (Batches that end an epoch also carry the test evaluation: with few photos they come
    # more often; a small set is measured a little slower for it, never faster.)
    speed = None
    if len(stamps) >= 2 and stamps[-1] > stamps[0]:
        speed = (len(stamps) - 1) * BATCH_SIZE / (stamps[-1] - stamps[0])
    conn.send({"batches": len(stamps), "images_per_sec": speed, "peak_rss_mb": peak_rss_mb(),
               "seconds_to_first_batch": (stamps[0] - started) if stamps else None,
               "freeze": freeze, "feature_cache": False})


def _in_child(target, *args, timeout: float = 7200) -> dict:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(child, *args), daemon=True)
    proc.start()
    child.close()
    try:
        out = parent.recv() if parent.poll(timeout) else {"error": f"no answer within {timeout:.0f} s"}
    except EOFError:
        proc.join(60)
        out = {"error": f"the measuring process died (exit code {proc.exitcode})"}
    proc.join(60)
    return out


@dataclasses.dataclass
class ScaleSettings:
    n: int
    input_size: int = DEFAULT_INPUT_SIZE
    batches: int = DEFAULT_BATCHES
    keep: bool = False  # keep the generated photos (under HOTDOG_HOME/cache/bench-scale-N)
    stages: tuple = ("pipeline", "frozen", "full")


def run_scale(settings: ScaleSettings, progress: Callable[[str], None] | None = None) -> dict:
    """Build the set, measure, remove the set (unless ``keep``); the figures as one dict."""
    from hotdog import data, paths
    from hotdog.data.decoded import default_cap_bytes
    from hotdog.errors import ConfigError

    progress = progress or (lambda msg: None)
    n = int(settings.n)
    if n < 20:
        raise ConfigError(f"--scale needs at least 20 photos, not {n}")
    if n > 1_000_000:
        raise ConfigError(f"--scale is limited to 1,000,000 photos, not {n:,}")
    if settings.keep:
        base = paths.cache_root() / f"bench-scale-{n}"
        base.mkdir(parents=True, exist_ok=True)
    else:
        base = Path(tempfile.mkdtemp(prefix=f"hotdog-scale-{n}-"))
    root = base / "data"
    out: dict = {"n": n, "input_size": settings.input_size, "batch_size": BATCH_SIZE, "batches": settings.batches,
                 "decoded_cache_cap_mb": default_cap_bytes() / 2**20, "kept_at": str(base) if settings.keep else None}
    try:
        if not (root / "train").is_dir():
            progress(f"scale: writing {n} JPEG photos")
            t0 = time.perf_counter()
            make_scale_dataset(root, n, progress)
            out["generate_seconds"] = time.perf_counter() - t0
        out["data_bytes"] = sum(f.stat().st_size for f in root.rglob("*.jpg"))
        progress("scale: scanning the data set")
        t0 = time.perf_counter()
        splits = data.load_splits(root)
        out["scan_seconds"] = time.perf_counter() - t0
        out["train_images"], out["test_images"] = len(splits.train), len(splits.test)
        del splits
        if "pipeline" in settings.stages:
            progress("scale: one pass of the input pipeline (decode + augment + batch), fresh process")
            out["pipeline"] = _in_child(_pipeline_child, str(root), settings.input_size)
        for stage, freeze in (("frozen", True), ("full", False)):
            if stage in settings.stages:
                progress(f"scale: {stage} training, first {settings.batches} batches, fresh process")
                out[stage] = _in_child(_training_child, str(root), settings.input_size, freeze, settings.batches,
                                       str(base / "runs"))
    finally:
        if not settings.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            shutil.rmtree(base / "runs", ignore_errors=True)
    return out


def compare(small: dict, large: dict) -> dict:
    """The issue's targets between a small and a large ``run_scale`` result: peak RSS ratio
    and images/s ratio per stage, and the large set's scan time."""
    out: dict = {"scan_seconds": large.get("scan_seconds"), "scan_meets": (large.get("scan_seconds") or 1e9) < 30}
    for stage in ("pipeline", "frozen", "full"):
        a, b = small.get(stage) or {}, large.get(stage) or {}
        if a.get("peak_rss_mb") and b.get("peak_rss_mb"):
            rss = b["peak_rss_mb"] / a["peak_rss_mb"]
            speed = (b["images_per_sec"] / a["images_per_sec"]) if a.get("images_per_sec") and \
                b.get("images_per_sec") else None
            out[stage] = {"rss_ratio": rss, "rss_meets": rss <= 1.5, "speed_ratio": speed,
                          "speed_meets": None if speed is None else speed >= 0.9}
    return out


def format_scale(result: dict) -> str:
    """A few lines for the terminal."""
    lines = [f"scale: {result['n']} photos ({result.get('train_images')} train / {result.get('test_images')} test, "
             f"{(result.get('data_bytes') or 0) / 2**20:.0f} MB of JPEG), input {result['input_size']} px, "
             f"batch {result['batch_size']}, decoded-photo cap {result['decoded_cache_cap_mb']:.0f} MB",
             f"  scan: {result.get('scan_seconds', float('nan')):.1f} s"]
    for stage in ("pipeline", "frozen", "full"):
        r = result.get(stage)
        if not r:
            continue
        if "error" in r:
            lines.append(f"  {stage}: {r['error']}")
            continue
        ips = r.get("images_per_sec")
        lines.append(f"  {stage}: {ips:.1f} img/s, peak RSS {r['peak_rss_mb']:.0f} MB" if ips else
                     f"  {stage}: no speed, peak RSS {r['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)
