"""bench --scale: the generated set, the comparison against the targets, several N in
alternation, bad N."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hotdog import bench_scale
from hotdog.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_generated_set_is_real_jpegs_of_varied_sizes(tmp_path):
    from PIL import Image

    from hotdog import data

    root = bench_scale.make_scale_dataset(tmp_path / "d", 30)
    splits = data.load_splits(root)
    assert (len(splits.train), len(splits.test)) == (27, 3) and splits.classes == ["hotdog", "not-hotdog"]
    sizes = set()
    for path, _ in splits.train:
        with Image.open(path) as im:
            assert im.format == "JPEG"
            sizes.add(im.size)
    assert len(sizes) > 20


def test_compare_applies_the_targets():
    small = {"pipeline": {"peak_rss_mb": 100.0, "images_per_sec": 100.0},
             "full": {"peak_rss_mb": 1000.0, "images_per_sec": 50.0}}
    large = {"scan_seconds": 12.0, "pipeline": {"peak_rss_mb": 300.0, "images_per_sec": 95.0},
             "full": {"peak_rss_mb": 1400.0, "images_per_sec": 40.0}, "frozen": {"error": "died"}}
    got = bench_scale.compare(small, large)
    assert got["scan_meets"] and got["pipeline"]["rss_meets"] is False and got["pipeline"]["speed_meets"]
    assert got["full"]["rss_meets"] and got["full"]["speed_meets"] is False and "frozen" not in got
    assert got["pipeline"]["img_s_ratio"] == got["pipeline"]["speed_ratio"] == 0.95
    assert got["pipeline"]["rss_ratio"] == 3.0 and got["all_meet"] is False and got["not_compared"] == ["frozen"]
    large["pipeline"]["peak_rss_mb"], large["full"]["images_per_sec"] = 140.0, 46.0
    assert bench_scale.compare(small, large)["all_meet"] is False  # the frozen stage died
    del large["frozen"]
    assert bench_scale.compare(small, large)["all_meet"] is True


def test_several_n_are_measured_in_alternation_and_compared(tmp_path, monkeypatch):
    calls = []
    speeds = {(200, "pipeline"): [100.0, 90.0, 110.0], (1000, "pipeline"): [95.0, 80.0, 99.0]}

    def fake_measure(self, stage, tag=""):
        calls.append((stage, self.n, tag))
        speed = speeds.get((self.n, stage), [50.0, 50.0, 50.0])[int(tag[1:])]
        return {"images_per_sec": speed, "peak_rss_mb": 100.0 + self.n / 100}

    monkeypatch.setattr(bench_scale._Set, "measure", fake_measure)
    monkeypatch.setattr(bench_scale.tempfile, "tempdir", str(tmp_path))
    out = bench_scale.run_scales([200, 1000], bench_scale.ScaleSettings(n=200), rounds=3)
    # every stage of both sizes before the next stage, order reversed every other round
    assert calls[:6] == [("pipeline", 200, "-0"), ("pipeline", 1000, "-0"), ("pipeline", 1000, "-1"),
                         ("pipeline", 200, "-1"), ("pipeline", 200, "-2"), ("pipeline", 1000, "-2")]
    assert [c[0] for c in calls] == ["pipeline"] * 6 + ["frozen"] * 6 + ["full"] * 6
    small, large = out["runs"]
    assert (small["n"], large["n"]) == (200, 1000) and large["train_images"] == 900
    # the median round of each size, every round kept beside it
    assert small["pipeline"]["images_per_sec"] == 100.0 and large["pipeline"]["images_per_sec"] == 95.0
    assert large["pipeline"]["rounds_images_per_sec"] == [95.0, 80.0, 99.0]
    c = out["comparison"]
    assert (c["small_n"], c["large_n"]) == (200, 1000) and c["pipeline"]["img_s_ratio"] == 0.95
    assert c["pipeline"]["rss_ratio"] == pytest.approx(110 / 102) and c["all_meet"]
    assert out["load_average_start"] is not None and "all targets met: yes" in bench_scale.format_scales(out)
    assert not list(tmp_path.glob("hotdog-scale-*"))  # the generated sets are removed


def test_photo_counts_are_parsed_and_checked():
    assert bench_scale.parse_ns("200") == [200]
    assert bench_scale.parse_ns("200, 20_000") == [200, 20000]
    for bad, says in (("200,x", "photo counts such as"), ("200,200", "twice"), ("200,5", "at least 20"),
                      ("2000000", "limited to")):
        with pytest.raises(ConfigError, match=says):
            bench_scale.parse_ns(bad)
    with pytest.raises(ConfigError, match="rounds"):
        bench_scale.run_scales([20, 30], bench_scale.ScaleSettings(n=20), rounds=0)


def test_scale_refuses_absurd_sizes_in_one_sentence(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hotdog", "bench", "--scale", "3", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={"HOTDOG_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0
    assert json.loads(proc.stdout) == {"error": "--scale needs at least 20 photos, not 3"}
