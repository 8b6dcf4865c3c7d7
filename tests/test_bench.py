"""The benchmark: its arithmetic on scripted loop events, its configs, its report, and one
``python -m hotdog bench --quick --json`` whose figures must be sane (the machine is shared
and tiny inputs say nothing about real speed, so the bounds are wide; the README carries
the table from a real run).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hotdog import bench, bench_report, bench_timing
from hotdog.callbacks import BatchProgress, EpochMetrics

REPO = Path(__file__).resolve().parents[1]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _scripted_run(timeline, clock, epochs=2, batches=3, batch_s=1.0, eval_s=5.0, ref_s=0.5):
    """Events as ``_Fit.plain_loop`` sends them: per batch before/after, the last batch
    reported twice (queued, then synced), then the epoch's end after its evaluation. The
    reference step advances the clock by ``ref_s`` and reports 8 images / ref_s."""
    timeline.reference = lambda: (setattr(clock, "now", clock.now + ref_s), 8 / ref_s)[1]
    for e in range(1, epochs + 1):
        for b in range(1, batches + 1):
            clock.now += 0.25  # loading the batch
            timeline.before_batch(None)
            clock.now += batch_s - 0.25
            timeline.after_batch(None, BatchProgress(e, epochs, b, batches, 0.5, 0.5, 1.0, 1.0))
        timeline.after_batch(None, BatchProgress(e, epochs, batches, batches, 0.5, 0.5, 1.0, 1.0))
        clock.now += eval_s
        timeline.after_epoch(None, EpochMetrics(e, 0.5, 0.5, 0.5, 0.0))


def test_timeline_takes_reference_steps_out_of_the_product_time():
    clock = _Clock()
    timeline = bench_timing.BenchTimeline(reference_from=2, clock=clock, drain=lambda: None)
    _scripted_run(timeline, clock)
    # epoch 2: a reference step after batches 1 and 2, none after the last (or its re-report)
    assert timeline.reference_samples == [16.0, 16.0]
    assert timeline.reference_seconds == {2: 1.0}
    ips, images, seconds, per_epoch = timeline.train_throughput(24, skip_epochs=1)
    # epoch 2 runs from epoch 1's end: 3 batches of 1 s (+2 x 0.5 s reference, taken out)
    assert (images, seconds) == (24, pytest.approx(3.0))
    assert ips == pytest.approx(8.0) and per_epoch == [pytest.approx(8.0)]
    # every epoch: the first from its first batch (its loading not counted), 2.75 + 3 s
    assert timeline.training_seconds() == pytest.approx(5.75)


def test_timeline_overhead_is_the_engine_callbacks_over_training_time():
    clock = _Clock()
    timeline = bench_timing.BenchTimeline(reference_from=2, clock=clock, drain=lambda: None)
    _scripted_run(timeline, clock)
    # what the Dispatcher would report: its own seconds include the reference steps
    seconds = {"RunRecorder": 0.05, "TerminateOnNaN": 0.01, "BenchTimeline": 1.0 + 0.0075}
    o = timeline.overhead(seconds)
    assert o["per_callback_seconds"] == {"RunRecorder": 0.05, "TerminateOnNaN": 0.01}
    assert o["recording_seconds"] == pytest.approx(0.0075)
    assert o["overhead_seconds"] == pytest.approx(0.0675)
    assert o["store_seconds"] == 0.05
    assert o["training_overhead"] == pytest.approx(0.0675 / 5.75)


def test_bench_configs_come_from_the_stable_preset(tmp_path):
    from hotdog import settings

    b = bench.Bench(bench.BenchSettings.for_mode(None, quick=True))
    try:
        cfg = b.config(freeze=True, feature_cache=False, epochs=3)
        stable = settings.preset_values("stable", "finetune", b.source)
        assert (cfg.preset, cfg.lr, cfg.bn_mode, cfg.init_output_from_imagenet) == (
            "stable", stable["lr"], stable["bn_mode"], stable["init_output_from_imagenet"])
        # the measurement's own sizes win over the preset's
        assert (cfg.batch_size, cfg.input_size, cfg.epochs, cfg.warmup_epochs) == (8, 32, 3, 0)
        assert (cfg.freeze, cfg.feature_cache) == (True, False)
        assert Path(cfg.data_root) == b.root
    finally:
        b.close()
    assert not b.root.exists()


def _result(**details) -> bench_report.BenchResult:
    return bench_report.BenchResult(
        metrics={
            "frozen_cache_speedup": 25.0, "pipeline_efficiency": 0.95, "predict_efficiency": 0.5,
            "source_models": {"m": {"train_images_per_sec": 3.0, "infer_images_per_sec": 9.0,
                                    "fused_infer_images_per_sec": 20.0}},
            "fused_inference_speedup": 2.1, "fused_max_abs_diff": 2e-5,
            "bf16_inference_speedup": "unsupported", "bf16_top1_agreement": "unsupported",
            "training_overhead": 0.01, "cached_rerun_speedup": 60.0,
        },
        details=details,
        machine={"nproc": 2, "cpu_model": "cpu", "flags": {"avx512f": True}, "mxnet": "1.9.1", "date": "today"},
        settings={"data": "generated", "train_images": 16, "test_images": 8, "source": "m",
                  "input_size": 32, "batch_size": 8},
        seconds=1.0,
    )


def test_table_lists_every_metric_and_machine():
    result = _result(training_overhead={"overhead_seconds": 0.25, "callbacks_seconds": 0.25, "step_seconds": 25.0,
                                        "per_callback_seconds": {"RunRecorder": 0.2, "TerminateOnNaN": 0.04},
                                        "recording_seconds": 0.01})
    table = bench_report.format_table(result)
    for word in ("frozen_cache_speedup", "pipeline_efficiency", "predict_efficiency", "training_overhead",
                 "fused_inference_speedup", "bf16_inference_speedup", "unsupported", "m train img/s",
                 "2 cores", "avx512f", "(0.25 s of 25 s)", "RunRecorder 0.200 s"):
        assert word in table, word
    assert result.meets() == {"frozen_cache_speedup": True, "pipeline_efficiency": True,
                              "predict_efficiency": False, "training_overhead": True, "cached_rerun_speedup": True}
    assert "MISSES" in table
    md = bench_report.format_markdown(result)
    assert "| `frozen_cache_speedup` | 25.00 | ≥ 20 | meets |" in md
    assert "| `training_overhead` | 0.0100 | ≤ 0.02 | meets (0.25 s of 25 s) |" in md
    assert "2 cores" in md


def test_documents_saved_before_the_callback_method_still_render():
    old = _result(training_overhead={"step_seconds": 82.0, "callbacks_seconds": 0.02, "metrics_seconds": 0.03,
                                     "store_seconds": 0.04})
    again = bench_report.BenchResult.from_dict(json.loads(json.dumps(old.to_dict())))
    assert "(0.09 s of 82 s)" in bench_report.format_table(again)


def test_generated_dataset_loads(tmp_path):
    from hotdog import data

    root = bench.make_bench_dataset(tmp_path / "d", {"train": 3, "test": 2}, (40, 30))
    splits = data.load_splits(root)
    assert splits.classes == ["hotdog", "not-hotdog"]
    assert len(splits.train) == 6 and len(splits.test) == 4


@pytest.mark.timeout(600)  # the threads stage starts two more MXNet processes
def test_bench_quick_json_figures_are_sane(hotdog_home, tmp_path):
    env = dict(os.environ, HOTDOG_HOME=str(hotdog_home))
    proc = subprocess.run(
        [sys.executable, "-m", "hotdog", "bench", "--quick", "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=590,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)  # exactly one JSON document on stdout, logs on stderr
    for key in bench_report.METRIC_KEYS:
        assert key in doc, key
    for key in ("frozen_cache_speedup", "pipeline_efficiency", "predict_efficiency", "fused_inference_speedup",
                "cached_rerun_speedup"):
        assert _is_number(doc[key]) and doc[key] > 0, (key, doc[key])
    # the second run reads its features back: faster than the first, which computed them
    f = doc["details"]["frozen"]
    assert f["rerun_seconds"] < f["cache_seconds"], f
    # both sides of each efficiency time the same work: far from 1 means a side is mis-measured
    assert 0.3 < doc["pipeline_efficiency"] < 3, doc["details"]["pipeline"]
    assert 0.1 < doc["predict_efficiency"] < 3, doc["details"]["predict"]
    for key in ("bf16_inference_speedup", "bf16_top1_agreement"):
        assert _is_number(doc[key]) or doc[key] == "unsupported", (key, doc[key])
    assert set(doc["source_models"]) == {"efficientnet_lite0", "resnet18_v2"}
    for name, figures in doc["source_models"].items():
        for key in ("train_images_per_sec", "infer_images_per_sec"):
            assert _is_number(figures[key]) and figures[key] > 0, (name, key, figures)
    assert 0 <= doc["fused_max_abs_diff"] <= 1e-4
    # peak RSS per batch size, each in a fresh process (at 32 px activations are ~2% of 224 px's,
    # so the sizes barely differ here; the README has the 224 px figures)
    rss = doc["peak_rss_mb"]
    assert set(rss) == {"batch_32", "batch_128", "batch_128_micro_32"}, rss
    assert all(_is_number(v) and 100 < v < 8000 for v in rss.values()), rss

    # training overhead: measured through the dispatcher, the engine's own callbacks only
    o = doc["details"]["training_overhead"]
    assert set(o["per_callback_seconds"]) >= {"RunRecorder", "TerminateOnNaN"}
    assert "BenchTimeline" not in o["per_callback_seconds"]
    assert o["per_callback_seconds"]["RunRecorder"] > 0  # it writes the status and saves the weights
    assert o["overhead_seconds"] == pytest.approx(sum(o["per_callback_seconds"].values()) + o["recording_seconds"])
    assert 0 < doc["training_overhead"] < 1
    assert doc["training_overhead"] == pytest.approx(o["overhead_seconds"] / o["step_seconds"])
    # quick generated set: 16 train images, batch 8, 2 epochs -> one reference step (after
    # batch 1 of epoch 2), whose seconds are inside the bench callback's, not the engine's
    p = doc["details"]["pipeline"]
    assert len(p["raw_samples"]) == 1 and p["images"] == 16 and p["epochs_counted"] == 1
    assert 0 < o["raw_reference_seconds_excluded"] < o["step_seconds"]
    assert (p["preset"], p["lr"]) == ("stable", 0.001)

    assert doc["machine"]["nproc"] >= 1
    assert doc["training_img_s"] > 0 and doc["threads_training_speedup"] > 0
    assert doc["machine"]["threads"]["omp_num_threads"] >= 1
    assert set(doc["meets"]) == set(bench_report.TARGETS)
    assert all(v in (True, False) for v in doc["meets"].values()), doc["meets"]
    saved = tmp_path / "bench.json"
    saved.write_text(proc.stdout)
    again = subprocess.run([sys.executable, "-m", "hotdog", "bench", "--from-json", str(saved)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.strip() == bench_report.format_table(bench_report.BenchResult.from_dict(doc))
    assert "cores" in again.stdout and "RunRecorder" in again.stdout
    # the benchmark cleans up after itself: no run left in the user's store
    assert not (hotdog_home / "runs").exists() or not any((hotdog_home / "runs").iterdir())
