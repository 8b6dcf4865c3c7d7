"""#12 item 5: the last epoch's weights (the chapter's) and the best epoch's by a validation
split carved from train; which is which on the command line (#12 items 6 and 9 too)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import make_dataset
from hotdog import data, runpick, settings
from hotdog.best import KeepBest
from hotdog.errors import ConfigError, DatasetError, RunStoreError
from hotdog.predict import Predictor, evaluate
from hotdog.runs import BEST_PARAMS_FILE, PARAMS_FILE, RunStore, RunSummary, check_model
from hotdog.settings import TrainConfig
from hotdog.train import train

REPO = Path(__file__).resolve().parents[1]
# wise_alpha 1: model.params is the last epoch as trained (WiSE-FT would save a mix of it).
SMALL = {"input_size": 32, "batch_size": 8, "wise_alpha": 1.0, "proxy_eval": False}


def test_validation_split_is_carved_from_train_stratified_and_seeded(tmp_path):
    root = make_dataset(tmp_path / "d", per_class={"train": 10, "test": 3})
    splits = data.load_splits(root)
    a = data.carve_validation(splits, 0.2, seed=0)
    assert Counter(lab for _, lab in a.val) == {0: 2, 1: 2}  # stratified: 20% of each class
    assert set(a.val).isdisjoint(a.train) and sorted(a.train + a.val) == sorted(splits.train)
    assert a.test == splits.test  # never touched: nothing is chosen on it
    assert data.carve_validation(splits, 0.2, seed=0).val == a.val  # deterministic by seed
    assert data.carve_validation(splits, 0.2, seed=5).val != a.val
    assert data.carve_validation(splits, 0.0, seed=0) is splits
    lonely = make_dataset(tmp_path / "lonely", per_class={"train": 1, "test": 1})
    with pytest.raises(DatasetError, match="too few"):
        data.carve_validation(data.load_splits(lonely), 0.2, seed=0)


def test_val_fraction_knob_is_off_by_default_bounded_and_recommended_for_larger_sets():
    assert TrainConfig("x").val_fraction == 0.0 and settings.KNOBS["val_fraction"].default == 0.0
    with pytest.raises(ConfigError, match="at most 0.5"):
        TrainConfig("x", val_fraction=0.9)
    assert settings.recommended_val_fraction([8, 8]) == 0.0  # tiny sets: a few photos are noise
    assert settings.recommended_val_fraction([100, 120]) == settings.RECOMMENDED_VAL_FRACTION > 0


def test_a_run_with_validation_keeps_last_and_best_weights_labelled(tiny_dataset, tmp_path):
    res = train(TrainConfig(str(tiny_dataset), epochs=2, val_fraction=0.25, **SMALL), runs_dir=tmp_path)
    assert res.status == "finished"
    rec = RunStore(tmp_path).load(res.run_id)
    assert all(isinstance(m["val_acc"], float) for m in rec.metrics)  # recorded every epoch
    best = rec.model["best"]
    assert best["params"] == BEST_PARAMS_FILE and 1 <= best["epoch"] <= 2
    assert best["val_acc"] == max(m["val_acc"] for m in rec.metrics)
    assert best["test_acc"] == rec.metrics[best["epoch"] - 1]["test_acc"]
    assert (rec.run_dir / PARAMS_FILE).is_file() and (rec.run_dir / BEST_PARAMS_FILE).is_file()
    summary = RunStore(tmp_path).list()[0]
    assert summary.best_epoch == best["epoch"] and runpick.default_weights(summary) == "best"
    # 12 train photos left (2 of each class held out), the test split whole
    assert rec.config["val_fraction"] == 0.25
    assert evaluate(rec.run_dir, tiny_dataset / "test", weights="best").n == 8


def test_without_validation_nothing_changes_and_best_weights_are_refused(tiny_dataset, tmp_path):
    res = train(TrainConfig(str(tiny_dataset), epochs=1, **SMALL), runs_dir=tmp_path)
    rec = RunStore(tmp_path).load(res.run_id)
    assert "val_acc" not in rec.metrics[0] and "best" not in rec.model
    assert not (rec.run_dir / BEST_PARAMS_FILE).exists()
    with pytest.raises(RunStoreError, match="no best-epoch weights"):
        Predictor.from_run(rec.run_dir, weights="best")


def test_best_is_chosen_by_validation_accuracy_and_saves_that_epochs_weights(tiny_dataset, tmp_path, monkeypatch):
    """Validation says epoch 2 (0.9 > 0.5, 0.7): its weights go to model-best.params and
    differ from the last epoch's; the last epoch stays in model.params (the chapter's)."""
    scores = iter([0.5, 0.9, 0.7])
    saved = {}
    monkeypatch.setattr(KeepBest, "accuracy", lambda self, fit: next(scores))
    real = KeepBest.after_epoch

    def spy(self, fit, metrics):
        real(self, fit, metrics)
        saved[metrics.epoch] = fit.net.output.weight.data().asnumpy().copy()

    monkeypatch.setattr(KeepBest, "after_epoch", spy)
    res = train(TrainConfig(str(tiny_dataset), epochs=3, val_fraction=0.25, **SMALL), runs_dir=tmp_path)
    rec = RunStore(tmp_path).load(res.run_id)
    assert [m["val_acc"] for m in rec.metrics] == [0.5, 0.9, 0.7]
    assert rec.model["best"]["epoch"] == 2

    import mxnet as mx

    def head(file):
        return next(v.asnumpy() for k, v in mx.nd.load(str(rec.run_dir / file)).items() if k.endswith("output.weight"))

    assert np.allclose(head(BEST_PARAMS_FILE), saved[2])
    assert np.allclose(head(PARAMS_FILE), saved[3]) and not np.allclose(saved[2], saved[3])
    best, last = Predictor.from_run(rec.run_dir, weights="best"), Predictor.from_run(rec.run_dir)
    assert (best.weights, last.weights) == ("best", "last")


def test_model_json_naming_best_weights_that_are_missing_is_damaged(tiny_dataset, tmp_path):
    res = train(TrainConfig(str(tiny_dataset), epochs=1, val_fraction=0.25, **SMALL), runs_dir=tmp_path)
    run_dir = Path(res.run_dir)
    (run_dir / BEST_PARAMS_FILE).unlink()
    info = json.loads((run_dir / "model.json").read_text())
    with pytest.raises(ValueError, match=BEST_PARAMS_FILE):
        check_model(info, run_dir)
    assert RunStore(tmp_path).list()[0].status == "damaged"


def _summary(run_id, acc, created, status="finished", data_root="/d/a", best=None):
    return RunSummary(run_id=run_id, status=status, mode="finetune", source="efficientnet_lite0", test_acc=acc,
                      created=created, data_root=data_root, best_epoch=best and best[0],
                      best_test_acc=best and best[1])


def test_pick_best_prefers_the_current_data_set_then_accuracy_never_the_newest_by_default():
    runs = [_summary("scratch", 0.50, 3), _summary("other-set", 0.99, 2, data_root="/d/b"),
            _summary("tuned", 0.82, 1), _summary("failed", None, 4, status="failed")]
    assert runpick.pick(runs, "best", "/d/a").run_id == "tuned"
    assert runpick.pick(runs, "best").run_id == "other-set"  # no data set given: best anywhere
    assert runpick.pick(runs, "latest").run_id == "scratch"
    # a run that kept its best epoch is scored by it (chosen on validation, recorded on test)
    runs.append(_summary("best-kept", 0.80, 0, best=(4, 0.94)))
    assert runpick.pick(runs, "best", "/d/a").run_id == "best-kept"
    with pytest.raises(RunStoreError, match="no finished run"):
        runpick.pick([_summary("x", 0.5, 1, status="failed")])


def _cli(*args, home: Path) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, HOTDOG_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "hotdog", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)


def test_cli_runs_predict_and_evaluate_choose_run_and_weights(tmp_path):
    home = tmp_path / "home"
    root = make_dataset(home / "data" / "tiny")
    store = RunStore(home / "runs")
    good = train(TrainConfig(str(root), epochs=2, val_fraction=0.25, **SMALL), runs_dir=store.root)
    newer = train(TrainConfig(str(root), mode="scratch", epochs=1, **SMALL), runs_dir=store.root)
    # Give the older run the higher recorded accuracy: `--run best` must not be the newest.
    rec = store.load(good.run_id)
    best_epoch = rec.model["best"]["epoch"]
    rows = [dict(m, test_acc=0.9) for m in rec.metrics]
    (rec.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = dict(rec.model, best=dict(rec.model["best"], test_acc=0.9))
    (rec.run_dir / "model.json").write_text(json.dumps(info))
    newer_rows = [dict(m, test_acc=0.5) for m in store.load(newer.run_id).metrics]
    (store.run_dir(newer.run_id) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in newer_rows))

    listing = _cli("runs", home=home)
    assert listing.returncode == 0, listing.stderr
    header, *lines = listing.stdout.splitlines()
    for word in ("data", "lr", "epochs", "test acc (saved model)"):
        assert word in header
    line = next(ln for ln in lines if ln.startswith(good.run_id))
    assert "tiny" in line and "0.001" in line and "2/2" in line and "0.900" in line and f"best epoch {best_epoch}" in line

    photo = str(root / "test" / "hotdog" / "000.png")
    out = _cli("predict", "--run", "best", "--json", photo, home=home)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["label"] in ("hotdog", "not-hotdog")
    # which run and which weights answer: the older, better run, its best epoch by default
    assert f"run {good.run_id}, best-epoch weights (epoch {best_epoch} of 2" in out.stderr
    out = _cli("predict", "--run", "best", "--weights", "last", photo, home=home)
    assert f"run {good.run_id}, last-epoch weights (epoch 2 of 2)" in out.stderr
    out = _cli("predict", "--run", "latest", photo, home=home)
    assert f"run {newer.run_id}, last-epoch weights" in out.stderr
    refused = _cli("evaluate", "--run", "latest", "--weights", "best", "--data", str(root), home=home)
    assert refused.returncode != 0 and "no best-epoch weights" in refused.stderr
    assert "Traceback" not in refused.stderr
    ev = _cli("evaluate", "--run", "best", "--weights", "best", "--data", str(root), home=home)
    assert ev.returncode == 0 and "best-epoch weights" in ev.stdout and "accuracy" in ev.stdout


def test_readme_quotes_every_devices_list_for_the_shell():
    import re

    text = (REPO / "README.md").read_text()
    bare = re.findall(r"--devices[ =](?!['\"])\S*\(", text)
    assert not bare, f"unquoted device lists (bash reads the parentheses): {bare}"
