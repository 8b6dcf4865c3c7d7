"""How much memory a training will need, how much there is, and what to do about it.

Before a run starts, :func:`plan` estimates its peak resident memory from the source model,
input size, batch size (or micro-batch), freeze and mode, compares it with what this process
may still use (:func:`available`: the cgroup's limit minus its usage, v2 or v1, and the
system's MemAvailable and a ``ulimit -v``, whichever is smallest) and decides:

* ``proceed``: the estimate is at most ``FIT`` (80%) of what is available;
* ``proceed`` with accumulation: the whole batch would not fit and ``micro_batch`` was left
  to the app, so the largest micro-batch that fits is chosen (the step is the same, see
  ``train._Fit.accumulated_step``);
* ``warn``: between 80% and 100% (it may fit; other programs' memory moves);
* ``refuse``: above what is available, with one sentence naming the numbers and what to change.

The estimate is ``base + per_image * images_per_pass * (input_size / 224)^2 + decoded
photos``, with ``base`` and ``per_image`` measured per source (``FOOTPRINT``, peak RSS of
``python -m hotdog train --epochs 1`` on hotdog-mini in a child process,
``scripts/measure_memory.py``; README "Memory"). It is a fit to those runs, not a bound.

Also here: :func:`oom_kills`, the kernel's out-of-memory kill counter of our cgroup, which
the job manager reads to tell an out-of-memory kill from another SIGKILL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

# (source, kind) -> (base MB, MB per image of one forward/backward pass at 224 px), peak RSS.
# kind: "full" = every layer trains (fine-tune or scratch); "frozen" = the plain frozen loop
# (features run, no feature gradients); "cached" = the frozen feature-cache path (features once,
# batches of 64, no gradients). Measured 2026-12-02 on the 2-core box, MXNet 1.9.1 (MKLDNN).
FOOTPRINT: dict[tuple[str, str], tuple[float, float]] = {
    # measured, 224 px, with the training kernels and malloc settings of the speed work
    # (README "Training speed and threads"): batch 8 -> 3106 MB, 32 -> 6016 MB, 128 -> 20074 MB,
    # 128 as micro-batches of 32 -> 7015 MB (fit: -2%, +7%, 0%, -8%). Before them: 2120, 3806,
    # 11813 and 3904 MB, so the 2.3x faster step costs about 1.6x the memory.
    ("efficientnet_lite0", "full"): (1900.0, 142.0),
    # measured: batch 32 with the feature cache -> 2089 MB (the batch size hardly matters)
    ("efficientnet_lite0", "cached"): (1500.0, 9.0),
    # Not measured (scaled from the two above): the plain frozen loop keeps no feature gradients.
    ("efficientnet_lite0", "frozen"): (1500.0, 30.0),
    # Not measured: ResNet-18 v2's activations are about half of EfficientNet-Lite0's per
    # image at 224 px (fewer, narrower feature maps); a larger base (45 MB of weights).
    ("resnet18_v2", "full"): (1600.0, 45.0),
    ("resnet18_v2", "frozen"): (1600.0, 18.0),
    ("resnet18_v2", "cached"): (1600.0, 6.0),
}
# Virtual size per resident MB of a training (VmPeak / peak RSS: 1.82 at batch 8, 1.60 at 32,
# 1.54 at 128): what a ``ulimit -v`` (RLIMIT_AS) leaves for resident memory.
VM_PER_RSS = 1.65
REFERENCE_SIZE = 224
CACHE_BATCH = 64  # the feature cache extracts in batches of this many (train._Fit.extract)
FIT = 0.8  # an estimate up to this share of the available memory proceeds without a warning


@dataclass
class Available:
    mb: float
    where: str  # "cgroup limit 8.0 GB", "system"
    limit_mb: float | None = None  # the cgroup's limit, if any


@dataclass
class MemoryPlan:
    estimate_mb: float
    available_mb: float | None
    where: str
    decision: str  # "proceed", "warn" or "refuse"
    micro_batch: int  # images per pass the run will use (== batch_size: no accumulation)
    batch_size: int
    message: str  # one sentence

    @property
    def accumulating(self) -> bool:
        return self.micro_batch < self.batch_size

    def to_dict(self) -> dict:
        return {"estimate_mb": round(self.estimate_mb), "available_mb": None if self.available_mb is None
                else round(self.available_mb), "where": self.where, "decision": self.decision,
                "micro_batch": self.micro_batch, "batch_size": self.batch_size, "message": self.message}


# ---------------------------------------------------------------------------- what there is

def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _cgroup_dirs() -> list[tuple[str, Path]]:
    """(version, folder) of this process's memory cgroup, innermost first; in a container the
    folder named in /proc/self/cgroup may not exist (namespaced), then the mount's root."""
    out: list[tuple[str, Path]] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            base, version = Path("/sys/fs/cgroup"), "v2"
        elif "memory" in controllers.split(","):
            base, version = Path("/sys/fs/cgroup/memory"), "v1"
        else:
            continue
        folder = base / rel.lstrip("/")
        out += [(version, p) for p in (folder, *folder.parents) if str(p).startswith(str(base)) and p.is_dir()]
    return out


_UNLIMITED = 1 << 60  # v1 reports "no limit" as a huge number


def _cgroup_available() -> tuple[float, float] | None:
    """(MB still allowed, limit MB) of the tightest memory cgroup limit above us, or None."""
    best = None
    for version, folder in _cgroup_dirs():
        limit = _read_int(folder / ("memory.max" if version == "v2" else "memory.limit_in_bytes"))
        usage = _read_int(folder / ("memory.current" if version == "v2" else "memory.usage_in_bytes"))
        if limit is None or limit >= _UNLIMITED or usage is None:
            continue
        # Page cache counts as usage but the kernel reclaims it before killing anyone.
        stat = _memory_stat(folder)
        reclaimable = stat.get("inactive_file", stat.get("total_inactive_file", 0))
        free = (limit - usage + reclaimable) / 2**20
        if best is None or free < best[0]:
            best = (free, limit / 2**20)
    return best


def _memory_stat(folder: Path) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in (line.split() for line in (folder / "memory.stat").read_text().splitlines())}
    except (OSError, ValueError):
        return {}


def _meminfo_available() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rlimit_as_mb() -> float | None:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft / 2**20


def available() -> Available | None:
    """What a new process may still use: the tightest of the cgroup limit, the system's
    MemAvailable and a ``ulimit -v`` (inherited by the worker; in resident terms)."""
    options = []
    system = _meminfo_available()
    if system is not None:
        options.append(Available(system, "system"))
    cg = _cgroup_available()
    if cg is not None:
        options.append(Available(cg[0], f"cgroup limit {cg[1] / 1024:.1f} GB", cg[1]))
    vm = _rlimit_as_mb()
    if vm is not None:
        options.append(Available(vm / VM_PER_RSS, f"ulimit -v {vm / 1024:.1f} GB", vm))
    return min(options, key=lambda a: a.mb) if options else None


def oom_kills() -> int | None:
    """The kernel's out-of-memory kill count of our memory cgroup (v2 memory.events, v1
    memory.oom_control ``oom_kill``, kernels >= 4.13), or None when it cannot be read."""
    for version, folder in _cgroup_dirs():
        name = "memory.events" if version == "v2" else "memory.oom_control"
        try:
            for line in (folder / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


def rss_mb(pid: int | None = None) -> float | None:
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# ---------------------------------------------------------------------------- what a run needs

def _kind(config) -> str:
    if getattr(config, "uses_feature_cache", False):
        return "cached"
    return "frozen" if config.freeze and config.mode == "finetune" else "full"


def estimate_mb(config, images_per_pass: int, n_images: int = 0) -> float:
    """Peak resident MB of a run of ``config`` passing ``images_per_pass`` images at a time."""
    kind = _kind(config)
    base, per_image = FOOTPRINT.get((config.source, kind), FOOTPRINT[("efficientnet_lite0", kind)])
    size = config.input_size or REFERENCE_SIZE
    scale = (size / REFERENCE_SIZE) ** 2
    if kind == "cached":
        images_per_pass = CACHE_BATCH
    # Decoded photos are kept in memory (shorter side ~ 256/224 of the crop, 3 bytes a pixel),
    # up to the decoded-photo store's cap (hotdog.data.decoded): beyond it they are decoded again.
    from hotdog.data.decoded import default_cap_bytes

    photos = min(n_images * (size * 256 / 224) ** 2 * 3 * 1.33, default_cap_bytes()) / 2**20
    return base + per_image * images_per_pass * scale + photos


def _gb(mb: float) -> str:
    return f"{mb / 1024:.1f} GB"


def plan(config, n_images: int = 0, avail: Available | None = None, *, measure: bool = True) -> MemoryPlan:
    """Proceed, warn or refuse a run of ``config``; picks ``micro_batch`` when it was left to
    the app (``None``) and the whole batch does not fit."""
    batch = int(config.batch_size)
    kind = _kind(config)
    explicit = config.micro_batch
    if avail is None and measure:
        avail = available()
    what = f"batch {batch} at {config.input_size or REFERENCE_SIZE} px, " + \
        {"full": "all layers training", "frozen": "features frozen", "cached": "frozen, features cached"}[kind]

    def make(decision, micro, est, message):
        return MemoryPlan(est, avail.mb if avail else None, avail.where if avail else "unknown", decision,
                          micro, batch, message)

    micro = batch if explicit is None or kind == "cached" else int(explicit)
    est = estimate_mb(config, micro, n_images)
    if avail is None:
        return make("proceed", micro, est, f"estimated peak memory {_gb(est)} ({what}); available memory unknown")
    room = avail.mb
    there = f"the {_gb(room)} available ({avail.where})"
    per_pass = f", {micro} images per pass" if micro < batch else ""
    if est <= FIT * room:
        return make("proceed", micro, est, f"estimated peak memory {_gb(est)} ({what}{per_pass}) of {there}")
    if explicit is None and kind != "cached":
        # The largest micro-batch that fits comfortably: same step, less memory.
        fits = [m for m in range(batch - 1, 0, -1) if estimate_mb(config, m, n_images) <= FIT * room]
        if fits:
            m = _nice(fits[0], batch)
            passes = math.ceil(batch / m)
            return make("proceed", m, estimate_mb(config, m, n_images),
                        f"batch {batch} needs about {_gb(est)} but {there}, so it trains as {passes} micro-batches "
                        f"of {m} (about {_gb(estimate_mb(config, m, n_images))}, the same SGD step)")
    if est <= room:
        return make("warn", micro, est, f"estimated peak memory {_gb(est)} ({what}{per_pass}) is close to {there}; "
                    "the run may be killed if other programs need memory: "
                    + _advice(config, kind, micro, n_images, room))
    return make("refuse", micro, est, f"this run needs about {_gb(est)} ({what}{per_pass}) but only {there}: "
                + _advice(config, kind, micro, n_images, room))


def _nice(m: int, batch: int) -> int:
    """A micro-batch that divides the batch when one close below ``m`` does (equal passes)."""
    for d in range(m, max(0, m // 2), -1):
        if batch % d == 0:
            return d
    return m


def _advice(config, kind: str, micro: int, n_images: int, room: float) -> str:
    fits = [m for m in range(micro - 1, 0, -1) if estimate_mb(config, m, n_images) <= FIT * room]
    if kind != "cached" and fits:
        return f"set the micro-batch to {_nice(fits[0], config.batch_size)} or less (same SGD step, less memory)"
    if kind == "full" and config.mode == "finetune":
        return "freeze the features or use a smaller image size"
    return "use a smaller image size or free memory"
