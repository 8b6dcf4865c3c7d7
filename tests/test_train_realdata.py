"""The chapter's claim on real photos (hotdog-mini), kept fast: a 40-per-class training
subset at 96 px, 2 epochs. The full-size figures come from scripts/experiments.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hotdog.train import TrainConfig, evaluate, train

pytestmark = pytest.mark.realdata

PER_CLASS = 40


@pytest.fixture(scope="module")
def mini_subset(hotdog_mini, tmp_path_factory) -> Path:
    """Symlinks to the first 40 training photos per class and the whole test split."""
    root = tmp_path_factory.mktemp("mini-subset")
    for split in ("train", "test"):
        for cls_dir in sorted(p for p in (hotdog_mini / split).iterdir() if p.is_dir()):
            files = sorted(f for f in cls_dir.iterdir() if f.is_file())
            if split == "train":
                files = files[:PER_CLASS]
            (root / split / cls_dir.name).mkdir(parents=True)
            for f in files:
                os.symlink(f, root / split / cls_dir.name / f.name)
    return root


def quick(root, **kw) -> TrainConfig:
    return TrainConfig(str(root), **{"input_size": 96, "batch_size": 16, "epochs": 2, **kw})


def test_finetuned_beats_scratch_at_equal_epochs(mini_subset, tmp_path):
    fine = train(quick(mini_subset, mode="finetune"), runs_dir=tmp_path)
    scratch = train(quick(mini_subset, mode="scratch"), runs_dir=tmp_path)
    print(f"hotdog-mini subset, 96 px, 2 epochs: fine-tune {[e.test_acc for e in fine.epochs]}, "
          f"scratch {[e.test_acc for e in scratch.epochs]}")
    assert fine.status == scratch.status == "finished"
    assert fine.test_acc >= 0.75
    assert fine.test_acc >= scratch.test_acc + 0.15
    # evaluate() on the test folder agrees with the loop's own test accuracy.
    assert evaluate(fine.run_dir, mini_subset / "test").accuracy == pytest.approx(fine.test_acc)


def test_frozen_feature_cache_learns(mini_subset, tmp_path):
    res = train(quick(mini_subset, freeze=True, epochs=5), runs_dir=tmp_path)
    print(f"frozen + cache, 96 px: {[e.test_acc for e in res.epochs]}")
    assert res.status == "finished" and res.test_acc >= 0.75
