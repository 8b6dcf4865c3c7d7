"""Shared fixtures: tiny generated data sets for unit tests, the real photo set when present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
HOTDOG_MINI = Path(os.environ.get("HOTDOG_MINI", REPO.parent / "shared" / "data" / "hotdog-mini"))


def make_image(path: Path, color: tuple[int, int, int], size=(40, 32), seed: int = 0) -> Path:
    """A small noisy image of one dominant colour, so two classes are learnable."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color, dtype=np.int16) + rng.integers(-40, 40, (size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


CLASS_COLORS = {"hotdog": (200, 60, 40), "not-hotdog": (40, 90, 200)}


def make_dataset(root: Path, per_class: dict[str, int] | None = None, classes=None, size=(40, 32)) -> Path:
    """A d2l-layout data set: ``root/{train,test}/<class>/*.png``."""
    classes = classes or CLASS_COLORS
    per_class = per_class or {"train": 8, "test": 4}
    seed = 0
    for split, n in per_class.items():
        for name, color in classes.items():
            for i in range(n):
                seed += 1
                make_image(root / split / name / f"{i:03d}.png", color, size=size, seed=seed)
    return root


def kill_9_when_ready(target, *args) -> None:
    """Run ``target(*args, ready)`` in a forked child, wait until it sets ``ready`` (it then
    hangs mid-write), and end it with ``kill -9``."""
    import multiprocessing
    import signal

    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=target, args=(*args, ready))
    proc.start()
    try:
        assert ready.wait(120), "the writer never started"
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()


@pytest.fixture(autouse=True)
def _own_feature_cache(tmp_path, monkeypatch):
    """Every test starts with an empty on-disk feature cache of its own (hotdog.featcache),
    so no test reads features another test (or the user) stored; likewise spilled decoded
    photos (hotdog.data.spill)."""
    monkeypatch.setenv("HOTDOG_FEATURE_CACHE_DIR", str(tmp_path / "feature-cache"))
    monkeypatch.setenv("HOTDOG_DECODED_SPILL_DIR", str(tmp_path / "decoded-spill"))


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "tiny")


@pytest.fixture
def hotdog_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("HOTDOG_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def hotdog_mini() -> Path:
    if not (HOTDOG_MINI / "train").is_dir():
        pytest.skip(f"real photo set not found at {HOTDOG_MINI} (it lives beside the checkout in ../shared/data/hotdog-mini)")
    return HOTDOG_MINI
