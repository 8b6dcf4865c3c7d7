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
is the app's own (``HOTDOG_DECODED_CACHE_MB``); its cap and fill are reported. Each stage
starts with an empty spill folder of its own (``hotdog.data.spill``, inside the bench's temp
folder), as a first run on a new data set does. A small input size (default 64 px) keeps
20,000 photos feasible on a small machine; it is reported.

Several N in one invocation (:func:`run_scales`, ``--scale 200,20000``) make a fair pair:
every set is built and scanned first, then each stage runs for every N in turn (the order
reversed every other round, ``--scale-rounds``), so the sizes see the same machine load;
the load average is recorded around every stage, and :func:`compare` puts the ratios of
the largest N to the smallest against the issue's targets.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
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


def _use_spill_dir(spill_dir: str | None) -> None:
    if spill_dir:
        os.environ["HOTDOG_DECODED_SPILL_DIR"] = spill_dir


def _pipeline_child(conn, root: str, input_size: int, spill_dir: str | None = None) -> None:
    """One decode + augment + batch pass over the training split; sends the figures."""
    _use_spill_dir(spill_dir)
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


def _training_child(conn, root: str, input_size: int, freeze: bool, batches: int, runs_dir: str,
                    spill_dir: str | None = None) -> None:
    """The first ``batches`` training batches of a real run; sends the figures."""
    _use_spill_dir(spill_dir)
    from hotdog import train
    from hotdog.settings import config_for

    stop = threading.Event()
    stamps: list[float] = []  # when each training batch was reported (across epochs)
    seen: set = set()
    started = time.perf_counter()
    stores: list = []  # the run's decoded-photo store, for its figures

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
    from hotdog.data import decoded

    # The run's store lives inside train(); this throwaway process wraps the class to
    # report its fill (memory held, photos spilled) without a hook in the training loop.
    real_init = decoded.DecodedCache.__init__

    def recording_init(self, *a, **kw):
        real_init(self, *a, **kw)
        stores.append(self)

    decoded.DecodedCache.__init__ = recording_init
    try:
        train.train(cfg, on_batch=on_batch, stop_event=stop, runs_dir=runs_dir, prepared=prepared)
    finally:
        decoded.DecodedCache.__init__ = real_init
    # Batch 1 carries graph building; the speed is over batches 2..last.
    # (Batches that end an epoch also carry the test evaluation: with few photos they come
    # more often; a small set is measured a little slower for it, never faster.)
    speed = None
    if len(stamps) >= 2 and stamps[-1] > stamps[0]:
        speed = (len(stamps) - 1) * BATCH_SIZE / (stamps[-1] - stamps[0])
    conn.send({"batches": len(stamps), "images_per_sec": speed, "peak_rss_mb": peak_rss_mb(),
               "seconds_to_first_batch": (stamps[0] - started) if stamps else None,
               "freeze": freeze, "feature_cache": False,
               "decoded_cache": stores[0].stats() if stores else None})


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


STAGES = ("pipeline", "frozen", "full")
MAX_N = 1_000_000
MAX_ROUNDS = 10


def check_n(n: int) -> int:
    from hotdog.errors import ConfigError

    n = int(n)
    if n < 20:
        raise ConfigError(f"--scale needs at least 20 photos, not {n}")
    if n > MAX_N:
        raise ConfigError(f"--scale is limited to {MAX_N:,} photos, not {n:,}")
    return n


def parse_ns(text: str) -> list[int]:
    """``"200"`` or ``"200,20000"`` -> photo counts (each checked), in the order given."""
    from hotdog.errors import ConfigError

    parts = [x.strip().replace("_", "") for x in str(text).split(",")]
    try:
        ns = [int(x) for x in parts]
    except ValueError:
        raise ConfigError(f"--scale takes photo counts such as 200 or 200,20000, not {text!r}") from None
    if len(set(ns)) != len(ns):
        raise ConfigError(f"--scale lists the same photo count twice: {text!r}")
    return [check_n(n) for n in ns]


def _load() -> list | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


class _Set:
    """One generated data set of the run: its folder, its figures so far."""

    def __init__(self, settings: ScaleSettings, progress: Callable[[str], None]):
        from hotdog import paths
        from hotdog.data.decoded import default_cap_bytes
        from hotdog.data.spill import cap_bytes_from_env as spill_cap_bytes

        self.settings, self.n = settings, check_n(settings.n)
        if settings.keep:
            self.base = paths.cache_root() / f"bench-scale-{self.n}"
            self.base.mkdir(parents=True, exist_ok=True)
        else:
            self.base = Path(tempfile.mkdtemp(prefix=f"hotdog-scale-{self.n}-"))
        self.root = self.base / "data"
        self.progress = progress
        self.out: dict = {"n": self.n, "input_size": settings.input_size, "batch_size": BATCH_SIZE,
                          "batches": settings.batches, "decoded_cache_cap_mb": default_cap_bytes() / 2**20,
                          "decoded_spill_cap_mb": spill_cap_bytes() / 2**20,
                          "kept_at": str(self.base) if settings.keep else None}

    def build_and_scan(self) -> None:
        from hotdog import data

        n, root, out = self.n, self.root, self.out
        if not (root / "train").is_dir():
            self.progress(f"scale: writing {n} JPEG photos")
            t0 = time.perf_counter()
            make_scale_dataset(root, n, self.progress)
            out["generate_seconds"] = time.perf_counter() - t0
        out["data_bytes"] = sum(f.stat().st_size for f in root.rglob("*.jpg"))
        self.progress(f"scale: scanning the data set of {n}")
        t0 = time.perf_counter()
        splits = data.load_splits(root)
        out["scan_seconds"] = time.perf_counter() - t0
        out["train_images"], out["test_images"] = len(splits.train), len(splits.test)

    def measure(self, stage: str, tag: str = "") -> dict:
        """One stage in a fresh process, with an empty spill folder of its own."""
        s = self.settings
        spill = self.base / f"spill-{stage}{tag}"
        shutil.rmtree(spill, ignore_errors=True)
        before = _load()
        try:
            if stage == "pipeline":
                self.progress(f"scale: N={self.n}: one pass of the input pipeline (decode + augment + batch), "
                              "fresh process")
                got = _in_child(_pipeline_child, str(self.root), s.input_size, str(spill))
            else:
                self.progress(f"scale: N={self.n}: {stage} training, first {s.batches} batches, fresh process")
                got = _in_child(_training_child, str(self.root), s.input_size, stage == "frozen", s.batches,
                                str(self.base / "runs"), str(spill))
        finally:
            shutil.rmtree(spill, ignore_errors=True)
            shutil.rmtree(self.base / "runs", ignore_errors=True)
        got["load_average_before"], got["load_average_after"] = before, _load()
        return got

    def close(self) -> None:
        if not self.settings.keep:
            shutil.rmtree(self.base, ignore_errors=True)


def run_scale(settings: ScaleSettings, progress: Callable[[str], None] | None = None) -> dict:
    """Build the set, measure, remove the set (unless ``keep``); the figures as one dict."""
    one = _Set(settings, progress or (lambda msg: None))
    try:
        one.build_and_scan()
        for stage in STAGES:
            if stage in settings.stages:
                one.out[stage] = one.measure(stage)
    finally:
        one.close()
    return one.out


def _median_run(runs: list[dict]) -> dict:
    """The round with the median images/s (the first when none has a speed), with every
    round's speed and RSS beside it."""
    timed = sorted((r for r in runs if r.get("images_per_sec")), key=lambda r: r["images_per_sec"])
    pick = dict(timed[(len(timed) - 1) // 2] if timed else runs[0])
    if len(runs) > 1:
        pick["rounds_images_per_sec"] = [r.get("images_per_sec") for r in runs]
        pick["rounds_peak_rss_mb"] = [r.get("peak_rss_mb") for r in runs]
    return pick


def run_scales(ns: list[int], settings: ScaleSettings, rounds: int = 1,
               progress: Callable[[str], None] | None = None) -> dict:
    """Several N measured in alternation (see the module docstring): every set's figures,
    and :func:`compare` of the largest N against the smallest."""
    from hotdog.errors import ConfigError

    progress = progress or (lambda msg: None)
    ns = [check_n(n) for n in ns]
    if not 1 <= int(rounds) <= MAX_ROUNDS:
        raise ConfigError(f"--scale-rounds must be between 1 and {MAX_ROUNDS}, not {rounds}")
    sets = [_Set(dataclasses.replace(settings, n=n), progress) for n in ns]
    out: dict = {"ns": ns, "rounds": int(rounds), "load_average_start": _load(), "started_utc": _utc()}
    try:
        for one in sets:
            one.build_and_scan()
        for stage in STAGES:
            if stage not in settings.stages:
                continue
            runs: dict[int, list[dict]] = {one.n: [] for one in sets}
            for r in range(int(rounds)):
                for one in (sets if r % 2 == 0 else sets[::-1]):
                    runs[one.n].append(one.measure(stage, f"-{r}"))
            for one in sets:
                one.out[stage] = _median_run(runs[one.n])
    finally:
        for one in sets:
            one.close()
    out["load_average_end"], out["finished_utc"] = _load(), _utc()
    out["runs"] = [one.out for one in sets]
    small, large = min(out["runs"], key=lambda r: r["n"]), max(out["runs"], key=lambda r: r["n"])
    if small is not large:
        out["comparison"] = {"small_n": small["n"], "large_n": large["n"], **compare(small, large)}
    return out


def _utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def compare(small: dict, large: dict) -> dict:
    """The issue's targets between a small and a large ``run_scale`` result: peak RSS ratio
    and images/s ratio per stage, and the large set's scan time."""
    out: dict = {"scan_seconds": large.get("scan_seconds"), "scan_meets": (large.get("scan_seconds") or 1e9) < 30}
    for stage in STAGES:
        a, b = small.get(stage) or {}, large.get(stage) or {}
        if a.get("peak_rss_mb") and b.get("peak_rss_mb"):
            rss = b["peak_rss_mb"] / a["peak_rss_mb"]
            speed = (b["images_per_sec"] / a["images_per_sec"]) if a.get("images_per_sec") and \
                b.get("images_per_sec") else None
            meets = None if speed is None else speed >= 0.9
            # speed_ratio is the older name of img_s_ratio
            out[stage] = {"rss_ratio": rss, "rss_meets": rss <= 1.5, "img_s_ratio": speed, "img_s_meets": meets,
                          "speed_ratio": speed, "speed_meets": meets}
    # a stage either size ran but that gave no figures (its process died): not a pass
    out["not_compared"] = [k for k in STAGES if k not in out and (small.get(k) or large.get(k))]
    verdicts = [out["scan_meets"]] + [out[k][m] for k in STAGES if k in out for m in ("rss_meets", "img_s_meets")]
    out["all_meet"] = not out["not_compared"] and all(v is True for v in verdicts)
    return out


def format_scales(result: dict) -> str:
    """:func:`run_scales`'s figures for the terminal: each set, then the ratios."""
    lines = [f"scale: {', '.join(str(n) for n in result['ns'])} photos, {result['rounds']} round(s), "
             f"load average {result.get('load_average_start')} -> {result.get('load_average_end')}"]
    lines += [format_scale(r) for r in result["runs"]]
    c = result.get("comparison")
    if c:
        lines.append(f"  N={c['large_n']} vs N={c['small_n']}: scan {c['scan_seconds']:.1f} s "
                     f"({'meets' if c['scan_meets'] else 'misses'} < 30 s)")
        for stage in STAGES:
            if stage in c:
                x = c[stage]
                speed = "n/a" if x["img_s_ratio"] is None else f"{x['img_s_ratio']:.2f}"
                lines.append(f"    {stage}: peak RSS {x['rss_ratio']:.2f}x ({'meets' if x['rss_meets'] else 'misses'}"
                             f" <= 1.5x), img/s {speed}x ({'meets' if x['img_s_meets'] else 'misses'} >= 0.9x)")
        if c["not_compared"]:
            lines.append(f"    not compared (no figures): {', '.join(c['not_compared'])}")
        lines.append(f"  all targets met: {'yes' if c['all_meet'] else 'no'}")
    return "\n".join(lines)


def format_scale(result: dict) -> str:
    """A few lines for the terminal."""
    lines = [f"scale: {result['n']} photos ({result.get('train_images')} train / {result.get('test_images')} test, "
             f"{(result.get('data_bytes') or 0) / 2**20:.0f} MB of JPEG), input {result['input_size']} px, "
             f"batch {result['batch_size']}, decoded-photo cap {result['decoded_cache_cap_mb']:.0f} MB",
             f"  scan: {result.get('scan_seconds', float('nan')):.1f} s"]
    for stage in STAGES:
        r = result.get(stage)
        if not r:
            continue
        if "error" in r:
            lines.append(f"  {stage}: {r['error']}")
            continue
        ips = r.get("images_per_sec")
        line = (f"  {stage}: {ips:.1f} img/s, peak RSS {r['peak_rss_mb']:.0f} MB" if ips else
                f"  {stage}: no speed, peak RSS {r['peak_rss_mb']:.0f} MB")
        store = r.get("decoded_cache") or {}
        if store:
            line += (f" (decoded photos: {store.get('held_mb', 0):.1f} MB in memory, "
                     f"{store.get('spilled', 0)} spilled to disk)")
        lines.append(line)
    return "\n".join(lines)
