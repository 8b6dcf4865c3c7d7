"""``python -m hotdog bench --quick --json``: one JSON document with a number for every key.

The figures themselves are not checked (the machine is shared and tiny inputs say nothing
about real speed); the README carries the table from a real run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hotdog import bench

REPO = Path(__file__).resolve().parents[1]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@pytest.mark.timeout(240)
def test_bench_quick_json_has_every_key(hotdog_home, tmp_path):
    env = dict(os.environ, HOTDOG_HOME=str(hotdog_home))
    proc = subprocess.run(
        [sys.executable, "-m", "hotdog", "bench", "--quick", "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=230,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)  # exactly one JSON document on stdout, logs on stderr
    for key in bench.METRIC_KEYS:
        assert key in doc, key
    for key in ("frozen_cache_speedup", "pipeline_efficiency", "predict_efficiency",
                "fused_inference_speedup", "fused_max_abs_diff", "training_overhead"):
        assert _is_number(doc[key]), (key, doc[key])
    for key in ("bf16_inference_speedup", "bf16_top1_agreement"):
        assert _is_number(doc[key]) or doc[key] == "unsupported", (key, doc[key])
    assert set(doc["source_models"]) == {"efficientnet_lite0", "resnet18_v2"}
    for name, figures in doc["source_models"].items():
        for key in ("train_images_per_sec", "infer_images_per_sec"):
            assert _is_number(figures[key]) and figures[key] > 0, (name, key, figures)
    assert doc["fused_max_abs_diff"] <= 1e-4
    assert doc["machine"]["nproc"] >= 1
    assert set(doc["meets"]) == set(bench.TARGETS)
    assert not doc["details"]["training_overhead"]["attribution_missing"]
    saved = tmp_path / "bench.json"
    saved.write_text(proc.stdout)
    again = subprocess.run([sys.executable, "-m", "hotdog", "bench", "--from-json", str(saved)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "pipeline_efficiency" in again.stdout and "cores" in again.stdout
    # the benchmark cleans up after itself: no run left in the user's store
    assert not (hotdog_home / "runs").exists() or not any((hotdog_home / "runs").iterdir())


def test_table_lists_every_metric_and_machine():
    result = bench.BenchResult(
        metrics={
            "frozen_cache_speedup": 25.0, "pipeline_efficiency": 0.95, "predict_efficiency": 0.5,
            "source_models": {"m": {"train_images_per_sec": 3.0, "infer_images_per_sec": 9.0,
                                    "fused_infer_images_per_sec": 20.0}},
            "fused_inference_speedup": 2.1, "fused_max_abs_diff": 2e-5,
            "bf16_inference_speedup": "unsupported", "bf16_top1_agreement": "unsupported",
            "training_overhead": 0.01,
        },
        details={},
        machine={"nproc": 2, "cpu_model": "cpu", "flags": {"avx512f": True}, "mxnet": "1.9.1", "date": "today"},
        settings={"data": "generated", "train_images": 16, "test_images": 8, "source": "m",
                  "input_size": 32, "batch_size": 8},
        seconds=1.0,
    )
    table = bench.format_table(result)
    for word in ("frozen_cache_speedup", "pipeline_efficiency", "predict_efficiency", "training_overhead",
                 "fused_inference_speedup", "bf16_inference_speedup", "unsupported", "m train img/s",
                 "2 cores", "avx512f"):
        assert word in table, word
    assert result.meets() == {"frozen_cache_speedup": True, "pipeline_efficiency": True,
                              "predict_efficiency": False, "training_overhead": True}
    assert "MISSES" in table
    md = bench.format_markdown(result)
    assert "| `frozen_cache_speedup` | 25.00 | ≥ 20 | meets |" in md
    assert "2 cores" in md


def test_generated_dataset_loads(tmp_path):
    from hotdog import data

    root = bench.make_bench_dataset(tmp_path / "d", {"train": 3, "test": 2}, (40, 30))
    splits = data.load_splits(root)
    assert splits.classes == ["hotdog", "not-hotdog"]
    assert len(splits.train) == 6 and len(splits.test) == 4
