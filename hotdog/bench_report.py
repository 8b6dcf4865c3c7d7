"""The benchmark's result document and its two renderings (terminal table, README Markdown).

Kept apart from :mod:`hotdog.bench` (the measurements) so that re-rendering a saved
``--json`` document (``python -m hotdog bench --from-json F``) needs neither MXNet nor data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

TARGETS = {
    "frozen_cache_speedup": (">=", 20.0),
    "pipeline_efficiency": (">=", 0.9),
    "predict_efficiency": (">=", 0.8),
    "training_overhead": ("<=", 0.02),
    "cached_rerun_speedup": (">=", 50.0),
}
HEADLINE = tuple(TARGETS)
UNSUPPORTED = "unsupported"

# Every key the JSON document always carries (the test checks them).
METRIC_KEYS = (
    "frozen_cache_speedup",
    "pipeline_efficiency",
    "predict_efficiency",
    "source_models",
    "fused_inference_speedup",
    "fused_max_abs_diff",
    "bf16_inference_speedup",
    "bf16_top1_agreement",
    "training_overhead",
    "peak_rss_mb",  # {"batch_32": MB, "batch_128": MB, "batch_128_micro_32": MB}
    "threads_training_speedup",  # training img/s, the thread policy's choice over 1 thread (same run)
    "training_img_s",  # training img/s with the policy's threads (batch, size of the bench)
    "cached_rerun_speedup",  # plain frozen loop vs a second frozen run reading the on-disk feature cache
)


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class BenchResult:
    metrics: dict[str, Any]
    details: dict[str, Any]
    machine: dict[str, Any]
    settings: dict[str, Any]
    seconds: float

    def meets(self) -> dict[str, bool | None]:
        out: dict[str, bool | None] = {}
        for key, (op, target) in TARGETS.items():
            v = self.metrics.get(key)
            out[key] = None if not _finite_number(v) else (v >= target if op == ">=" else v <= target)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "BenchResult":
        """Back from ``to_dict`` (e.g. a saved ``--json`` document), to re-render the table."""
        def num(v):
            return float("nan") if v is None else v

        metrics = {k: num(d.get(k)) for k in METRIC_KEYS}
        return cls(metrics, d.get("details", {}), d.get("machine", {}), d.get("settings", {}), num(d.get("seconds")))

    def to_dict(self) -> dict:
        d = dict(self.metrics)
        d["targets"] = {k: {"op": op, "value": t} for k, (op, t) in TARGETS.items()}
        d["meets"] = self.meets()
        d["details"] = self.details
        d["machine"] = self.machine
        d["settings"] = self.settings
        d["seconds"] = self.seconds
        return d


def _fmt(v: Any, digits: int = 2) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, (int, float)):
        if not math.isfinite(v):
            return "n/a"
        if v != 0 and abs(v) < 10 ** -digits:
            return f"{v:.1e}"
        return f"{v:.{digits}f}"
    return str(v)


def _digits(key: str) -> int:
    return 4 if key == "training_overhead" else 2


def _target(key: str) -> str:
    op, t = TARGETS[key]
    return f"{'≥' if op == '>=' else '≤'} {t:g}"


def _overhead_seconds(o: dict) -> float:
    """The numerator of training_overhead; documents saved before the callback method
    (cProfile attribution) carried it as three parts."""
    if "overhead_seconds" in o:
        return o["overhead_seconds"]
    return o["callbacks_seconds"] + o["metrics_seconds"] + o["store_seconds"]


def _notes(d: dict) -> dict[str, str]:
    """One-line context per headline figure (its two sides), where the details exist."""
    sides = {
        "frozen_cache_speedup": ("frozen", lambda f: f"({f['plain_seconds']:.1f} s plain / "
                                                     f"{f['cache_seconds']:.1f} s cached, {f['epochs']} epochs)"),
        "pipeline_efficiency": ("pipeline", lambda p: f"({p['end_to_end_images_per_sec']:.2f} end-to-end / "
                                                      f"{p['raw_images_per_sec']:.2f} raw img/s)"),
        "predict_efficiency": ("predict", lambda q: f"({q['raw_batch1_seconds'] * 1e3:.0f} ms forward / "
                                                    f"{q['predict_one_seconds'] * 1e3:.0f} ms per photo)"),
        "training_overhead": ("training_overhead", lambda o: f"({_overhead_seconds(o):.2f} s "
                                                             f"of {o['step_seconds']:.0f} s)"),
        "cached_rerun_speedup": ("frozen", lambda f: f"({f['plain_seconds']:.1f} s plain / "
                                                     f"{f['rerun_seconds']:.2f} s second run, {f['epochs']} epochs)"),
    }
    out = {}
    for key, (section, describe) in sides.items():
        try:  # an older or partial result simply has no context for that figure
            out[key] = describe(d[section])
        except (KeyError, TypeError):
            pass
    return out


def _bf16_note(m: dict, d: dict) -> str:
    if m["bf16_inference_speedup"] == UNSUPPORTED:
        return ""
    use = (d.get("bf16") or {}).get("use_it")
    return f"top-1 agreement {_fmt(m['bf16_top1_agreement'], 3)}" + (
        "" if use is None else ("; enabled" if use else "; not worth enabling"))


def _machine_words(mach: dict) -> tuple[str, str]:
    """(CPU flags that are on, OMP_NUM_THREADS as set)."""
    flags = ", ".join(f for f, on in (mach.get("flags") or {}).items() if on) or "none"
    return flags, mach.get("omp_num_threads_env") or "unset"


def _memory_words(key: str) -> str:
    """'batch_128_micro_32' -> 'batch 128 as micro-batches of 32'."""
    words = key.replace("_micro_", " as micro-batches of ").replace("_", " ")
    return words


def _threads_note(d: dict) -> str:
    """'policy 2 threads (idle CPUs at load 0.1); 1: 3.2, 2: 4.8 img/s'."""
    t = d.get("threads") or {}
    pol = t.get("policy") or {}
    if not pol:
        return ""
    why = "user's OMP_NUM_THREADS" if pol.get("source") == "user" else f"idle CPUs at load {_fmt(pol.get('load_1min'))}"
    by = ", ".join(f"{n}: {_fmt(v, 1)}" for n, v in (t.get("images_per_sec_by_threads") or {}).items())
    return f"policy {pol.get('omp_num_threads')} threads ({why}); img/s by threads {by}"


def format_table(result: BenchResult) -> str:
    m, d = result.metrics, result.details
    meets = result.meets()
    notes = _notes(d)
    rows = [("metric", "value", "target", "")]
    for key in HEADLINE:
        status = {True: "meets", False: "MISSES", None: "n/a"}[meets[key]]
        rows.append((key, _fmt(m[key], _digits(key)), _target(key), " ".join(x for x in (status, notes.get(key, "")) if x)))
    rows.append(("fused_inference_speedup", _fmt(m["fused_inference_speedup"]), "",
                 f"max abs diff {_fmt(m['fused_max_abs_diff'])}"))
    rows.append(("bf16_inference_speedup", _fmt(m["bf16_inference_speedup"]), "", _bf16_note(m, d)))
    for name, sm in (m.get("source_models") or {}).items():
        rows.append((f"{name} train img/s", _fmt(sm["train_images_per_sec"], 1), "", ""))
        rows.append((f"{name} infer img/s", _fmt(sm["infer_images_per_sec"], 1), "",
                     f"fused {_fmt(sm['fused_infer_images_per_sec'], 1)}"))
    for key, mb in (m.get("peak_rss_mb") or {}).items() if isinstance(m.get("peak_rss_mb"), dict) else ():
        rows.append((f"peak RSS, {_memory_words(key)}", f"{_fmt(mb, 0)} MB", "", ""))
    rows.append(("threads_training_speedup", _fmt(m.get("threads_training_speedup")), "", _threads_note(d)))
    rows.append(("training_img_s", _fmt(m.get("training_img_s"), 1), "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    mach, s = result.machine, result.settings
    flags, omp = _machine_words(mach)
    lines.append("")
    lines.append(f"machine: {mach['nproc']} cores, {mach['cpu_model']}, flags: {flags}; MXNet {mach['mxnet']}, "
                 f"OMP_NUM_THREADS {omp}; {mach['date']}")
    lines.append(f"data: {s['data']} ({s['train_images']} train / {s['test_images']} test), source {s['source']}, "
                 f"{s['input_size']} px, batch {s['batch_size']}; bench took {_fmt(result.seconds, 0)} s")
    per_cb = (d.get("training_overhead") or {}).get("per_callback_seconds")
    if per_cb:
        ov = d["training_overhead"]
        split = ", ".join(f"{name} {_fmt(sec, 3)} s" for name, sec in per_cb.items())
        lines.append(f"overhead split: {split}, progress recording {_fmt(ov['recording_seconds'], 3)} s "
                     f"over {_fmt(ov['step_seconds'], 1)} s of training")
    return "\n".join(lines)


def format_markdown(result: BenchResult) -> str:
    """The README table: one row per figure, then the machine and data it was measured on."""
    m = result.metrics
    meets = result.meets()
    notes = _notes(result.details)
    rows = ["| figure | value | target | |", "|---|---|---|---|"]
    for key in HEADLINE:
        status = {True: "meets", False: "misses", None: "n/a"}[meets[key]]
        mark = f"{status} {notes.get(key, '')}".strip()
        rows.append(f"| `{key}` | {_fmt(m[key], _digits(key))} | {_target(key)} | {mark} |")
    rows.append(f"| `fused_inference_speedup` | {_fmt(m['fused_inference_speedup'])} | | "
                f"max abs diff {_fmt(m['fused_max_abs_diff'])} |")
    rows.append(f"| `bf16_inference_speedup` | {_fmt(m['bf16_inference_speedup'])} | | "
                f"{_bf16_note(m, result.details)} |")
    for name, sm in (m.get("source_models") or {}).items():
        rows.append(f"| `{name}` train / infer img/s | {_fmt(sm['train_images_per_sec'], 1)} / "
                    f"{_fmt(sm['infer_images_per_sec'], 1)} | | fused infer {_fmt(sm['fused_infer_images_per_sec'], 1)} |")
    for key, mb in (m.get("peak_rss_mb") or {}).items() if isinstance(m.get("peak_rss_mb"), dict) else ():
        rows.append(f"| `peak_rss_mb` {_memory_words(key)} | {_fmt(mb, 0)} MB | | |")
    rows.append(f"| `threads_training_speedup` | {_fmt(m.get('threads_training_speedup'))} | | "
                f"{_threads_note(result.details)} |")
    rows.append(f"| `training_img_s` | {_fmt(m.get('training_img_s'), 1)} | | |")
    mach, s = result.machine, result.settings
    flags, omp = _machine_words(mach)
    rows.append("")
    rows.append(f"Measured {mach['date']} on {mach['nproc']} cores ({mach['cpu_model']}; {flags}), "
                f"MXNet {mach['mxnet']} (OMP_NUM_THREADS {omp}), data `{s['data']}` "
                f"({s['train_images']} train / {s['test_images']} test), "
                f"{s['source']} at {s['input_size']} px, batch {s['batch_size']}.")
    return "\n".join(rows)
