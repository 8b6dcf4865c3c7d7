"""bench --scale: the generated set, the comparison against the targets, bad N."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hotdog import bench_scale

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


def test_scale_refuses_absurd_sizes_in_one_sentence(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hotdog", "bench", "--scale", "3", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={"HOTDOG_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0
    assert json.loads(proc.stdout) == {"error": "--scale needs at least 20 photos, not 3"}
