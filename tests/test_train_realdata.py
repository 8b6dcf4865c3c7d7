"""The chapter's claim on real photos (hotdog-mini), kept fast: a 40-per-class training
subset at 96 px, 2 epochs. The full-size figures come from scripts/experiments.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hotdog.predict import evaluate
from hotdog.settings import TrainConfig, config_for
from hotdog.train import train

pytestmark = pytest.mark.realdata

PER_CLASS = 40


@pytest.fixture(scope="module")
def mini_subset(hotdog_mini, tmp_path_factory) -> Path:
    """Copies of the first 40 training photos per class and the whole test split (copies: the
    engine follows links only inside the shared data folders unless run from the CLI)."""
    root = tmp_path_factory.mktemp("mini-subset")
    for split in ("train", "test"):
        for cls_dir in sorted(p for p in (hotdog_mini / split).iterdir() if p.is_dir()):
            files = sorted(f for f in cls_dir.iterdir() if f.is_file())
            if split == "train":
                files = files[:PER_CLASS]
            (root / split / cls_dir.name).mkdir(parents=True)
            for f in files:
                shutil.copy(f, root / split / cls_dir.name / f.name)
    return root


QUICK = {"input_size": 128, "batch_size": 16, "epochs": 2}


def quick(root, **kw) -> TrainConfig:
    return TrainConfig(str(root), **{**QUICK, **kw})


def test_finetuned_beats_scratch_at_equal_epochs(mini_subset, tmp_path):
    """The app's default fine-tuning vs the chapter's scratch run (lr 0.1), same epochs."""
    fine = train(config_for(mini_subset, **QUICK), runs_dir=tmp_path)
    scratch = train(quick(mini_subset, mode="scratch"), runs_dir=tmp_path)
    assert scratch.epochs and TrainConfig.from_dict(_config(scratch)).lr == 0.1  # the chapter's scratch lr
    print(f"hotdog-mini subset, 128 px, 2 epochs: fine-tune {[e.test_acc for e in fine.epochs]}, "
          f"scratch {[e.test_acc for e in scratch.epochs]}")
    assert fine.status == scratch.status == "finished"
    # Epoch by epoch, with margins for float differences between CPUs (seeded, 50 test photos).
    for f, s in zip(fine.epochs, scratch.epochs):
        assert f.test_acc >= s.test_acc + 0.15
    assert max(e.test_acc for e in fine.epochs) >= 0.8
    # evaluate() on the test folder agrees with the loop's own test accuracy.
    # (the saved model: with the stable preset's WiSE-FT mix that is model.json's "wise" figure)
    saved = json.loads((Path(fine.run_dir) / "model.json").read_text()).get("wise", {}).get("test_acc", fine.test_acc)
    assert evaluate(fine.run_dir, mini_subset / "test").accuracy == pytest.approx(saved)


def _config(result) -> dict:
    import json

    return json.loads((Path(result.run_dir) / "config.json").read_text())


def test_frozen_feature_cache_learns(mini_subset, tmp_path):
    res = train(quick(mini_subset, freeze=True, epochs=5, input_size=160, lr=0.01, init_output_from_imagenet=False),
                runs_dir=tmp_path)
    print(f"frozen + cache, 160 px, random head: {[e.test_acc for e in res.epochs]}")
    assert res.status == "finished" and max(e.test_acc for e in res.epochs) >= 0.72
