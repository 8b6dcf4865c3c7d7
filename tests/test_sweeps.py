"""Sweeps (grid, resume, stop, divergence, shared frozen features) and the lr finder, on tiny data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hotdog import settings, sweeps
from hotdog.errors import ConfigError
from hotdog.jobs import TrainingJob
from hotdog.runs import RunStore

REPO = Path(__file__).resolve().parents[1]
TINY = {"input_size": 32, "batch_size": 6, "epochs": 1}


def spec(root, grid, **kw) -> sweeps.SweepSpec:
    return sweeps.SweepSpec(str(root), grid, base={**TINY, **kw.pop("base", {})}, **kw)


def test_grid_parsing_and_expansion(tmp_path):
    grid = sweeps.parse_grid(["lr=1e-4, 1e-3,1e-2", "mode=finetune,scratch", "freeze=0,yes", "lr-mult=1,10"])
    assert grid == {"lr": [1e-4, 1e-3, 1e-2], "mode": ["finetune", "scratch"], "freeze": [False, True],
                    "lr_mult": [1.0, 10.0]}
    points = sweeps.expand(spec(tmp_path, grid, seeds=2))
    # finetune: 3 lr x 2 freeze x 2 lr_mult x 2 seeds = 24; scratch ignores freeze and lr_mult: 3 x 2 = 6
    # (settings in alphabetical order, the last one fastest: freeze, lr, lr_mult, mode)
    assert len(points) == 30 and [p.index for p in points] == list(range(30))
    assert sum(p.config.mode == "scratch" for p in points) == 6
    assert {p.values["seed"] for p in points} == {0, 1}
    first = points[0].config
    assert (first.lr, first.mode, first.freeze, first.lr_mult, first.seed, first.epochs) == (1e-4, "finetune", False,
                                                                                             1.0, 0, 1)
    # every point is the settings table's config: preset values for what the grid leaves alone
    assert first.wd == settings.preset_values("stable")["wd"]
    assert sweeps.expand(sweeps.SweepSpec(str(tmp_path), {"lr": [0.1]}, preset="chapter"))[0].config.batch_size == 128
    for bad in (["lr=0"], ["lr=abc"], ["mode=sideways"], ["freeze=maybe"], ["colour=red"], ["lr"], ["lr=1", "lr=2"],
                ["epochs=1.5"], ["lr_mult=inf"]):
        with pytest.raises(ConfigError):
            sweeps.expand(spec(tmp_path, sweeps.parse_grid(bad)))
    with pytest.raises(ConfigError, match="at most"):
        sweeps.expand(spec(tmp_path, {"lr": [1e-3] * 600}))
    with pytest.raises(ConfigError):
        sweeps.expand(spec(tmp_path, {"lr": [1e-3]}, seeds=0))


def _wait(job, timeout=300):
    state = job.wait(timeout)
    while state.running:
        state = job.wait(timeout)
    return state


@pytest.mark.filterwarnings("error::RuntimeWarning")  # the frozen lr-1e6 point once mixed inf weights (WiSE-FT)
def test_sweep_in_the_job_goes_on_past_a_diverged_point_and_shares_frozen_features(tiny_dataset, hotdog_home):
    from hotdog import train as train_mod

    sweep_id = sweeps.create(spec(tiny_dataset, {"lr": [1e6, 1e-3], "freeze": [False, True]}, title="t",
                                  base={"epochs": 3}))
    job = TrainingJob(isolate=False)  # in this process, so the extraction counter sees the training
    phases = []
    real_extract = train_mod._Fit.extract

    def counting(self, *a, **k):
        phases.append(self.config.lr)
        return real_extract(self, *a, **k)

    train_mod._Fit.extract = counting
    try:
        first = sweeps.start_in_job(job, sweep_id)
        assert job.current().sweep == {"sweep_id": sweep_id, "total": 4, "points": [1, 2, 3, 4], "title": "t"}
        state = _wait(job)
    finally:
        train_mod._Fit.extract = real_extract
    assert len(state.run_ids) == 4 and state.run_ids[0] == first
    summary = sweeps.summarize(sweep_id)
    status = {(p["values"]["lr"], p["values"]["freeze"]): p["status"] for p in summary["points"]}
    assert status[(1e6, False)] == "diverged"  # marked diverged, and the sweep went on
    assert status[(1e6, True)] == "diverged"  # finite losses, but the last update overflowed the weights
    assert status[(1e-3, False)] == status[(1e-3, True)] == "finished"
    assert summary["best"]["accuracy"] is not None and summary["done"] == 4 and summary["complete"]
    # a point's accuracy is its run's, the one every page shows (the saved model's)
    by_run = {r.run_id: r for r in RunStore().list()}
    assert all(p["accuracy"] == by_run[p["run_id"]].accuracy for p in summary["points"])
    # the frozen points extracted features once (train + test split): the second read them from
    # the on-disk feature cache (hotdog_home is this test's own, so it started empty)
    assert len(phases) == 2
    for p in summary["points"]:  # every point is an ordinary run, tagged
        assert RunStore().load(p["run_id"]).config["tags"] == {"sweep_id": sweep_id, "sweep_point": p["index"]}
    assert any("diverged" in s for s in sweeps.findings(summary))
    # all done: nothing to start
    assert sweeps.start_in_job(job, sweep_id) is None


def test_stop_mid_point_keeps_finished_points_and_resume_runs_the_rest(tiny_dataset, hotdog_home):
    sweep_id = sweeps.create(spec(tiny_dataset, {"epochs": [1, 300, 2]}))
    job = TrainingJob()
    sweeps.start_in_job(job, sweep_id)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until point 2 has completed an epoch
        s = job.current()
        if len(s.run_ids) == 2 and s.epochs:
            break
        time.sleep(0.05)
    assert job.stop(wait=300)
    state = job.current()
    assert state.state == "stopped" and len(state.run_ids) == 2  # point 3 never started
    summary = sweeps.summarize(sweep_id)
    assert [p["status"] for p in summary["points"]] == ["finished", "stopped", "pending"]
    finished_run = summary["points"][0]["run_id"]
    # resume queues only the stopped point (redone from its start) and the one never started
    rec, points, todo = sweeps.remaining(sweep_id)
    assert [p.index for p in todo] == [1, 2]
    assert sweeps.summarize(sweep_id)["points"][0]["run_id"] == finished_run


@pytest.mark.timeout(600)
def test_resume_after_kill_9_keeps_finished_points(tiny_dataset, hotdog_home):
    env = {**os.environ, "HOTDOG_HOME": str(hotdog_home), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "hotdog", "sweep", "--data", str(tiny_dataset), "--grid", "lr=1e-3,2e-3,3e-3",
           "--input-size", "32", "--batch-size", "6", "--epochs", "1", "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store = RunStore(hotdog_home / "runs")
    deadline = time.time() + 300
    while time.time() < deadline and not any(r.status == "finished" for r in store.list()):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {r.tags["sweep_point"]: r.run_id for r in store.list() if r.status == "finished"}
    assert finished, "a point finished before the kill"
    sweep_id = sweeps.list_sweeps()[0]["sweep_id"]
    out = subprocess.run([sys.executable, "-m", "hotdog", "sweep", "--resume", sweep_id, "--json"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["sweep_id"] == sweep_id and doc["complete"] and len(doc["points"]) == 3
    assert all(p["status"] == "finished" and p["epochs"] and p["config"]["lr"] == p["values"]["lr"]
               for p in doc["points"])
    for index, run_id in finished.items():  # not redone: the same run stands for the point
        assert doc["points"][index]["run_id"] == run_id
    done_runs = [r for r in store.list() if r.status == "finished"]
    assert len(done_runs) == 3  # every point finished exactly once
    assert doc["best"]["run_id"] in {p["run_id"] for p in doc["points"]}


def test_lr_finder_restores_the_weights_exactly_and_suggests_a_rate(tiny_dataset, hotdog_home):
    from hotdog.lr_find import lr_find
    from hotdog.train import _Fit, prepare
    from hotdog.callbacks import Dispatcher

    cfg = settings.config_for(tiny_dataset, input_size=32, batch_size=4, bn_mode="update")
    prepared = prepare(cfg)
    net = _Fit(prepared, Dispatcher([])).build()
    before = {k: p.data().asnumpy().copy() for k, p in net.collect_params().items()}
    res = lr_find(cfg, net=net, prepared=prepared, num_iter=25, end_lr=100.0)
    after = {k: p.data().asnumpy() for k, p in net.collect_params().items()}
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert len(res.lrs) == len(res.losses) >= 5 and res.lrs == sorted(res.lrs) and res.lrs[0] == pytest.approx(1e-6)
    assert res.suggested_lr is not None and res.lrs[0] <= res.suggested_lr <= res.lrs[-1]
    frozen = lr_find(settings.config_for(tiny_dataset, input_size=32, batch_size=4, freeze=True), num_iter=10)
    assert len(frozen.lrs) >= 5 and all(np.isfinite(frozen.losses[:5]))


def _fake_summary(accs: dict, grid: dict, seconds: dict | None = None) -> dict:
    """A summarize()-shaped dict: accs maps (mode, freeze, lr) -> final accuracies per seed
    (None = diverged)."""
    points = []
    for (mode, freeze, lr), per_seed in accs.items():
        for seed, acc in enumerate(per_seed):
            points.append({"index": len(points), "values": {"lr": lr, "mode": mode, "freeze": freeze, "seed": seed},
                           "status": "diverged" if acc is None else "finished", "accuracy": acc,
                           "seconds": (seconds or {}).get((mode, freeze), 10.0), "run_id": f"r{len(points)}",
                           "epochs": [], "config": {"lr": lr, "mode": mode, "freeze": freeze and mode == "finetune",
                                                    "lr_mult": 10.0 if mode == "finetune" else 1.0}})
    return {"sweep_id": "sw-x", "spec": {"grid": grid}, "points": points, "best": None}


def test_findings_are_computed_from_the_measurements():
    import ui

    grid = {"lr": [1e-3, 1e-2, 1e-1], "mode": ["finetune", "scratch"], "freeze": [False, True]}
    summary = _fake_summary({
        ("finetune", False, 1e-3): [0.90, 0.92], ("finetune", False, 1e-2): [0.88, 0.90],
        ("finetune", False, 1e-1): [0.60, None],
        ("finetune", True, 1e-3): [0.94, 0.94], ("finetune", True, 1e-2): [0.93, 0.95],
        ("finetune", True, 1e-1): [0.90, 0.90],
        ("scratch", False, 1e-3): [0.5, 0.5], ("scratch", False, 1e-2): [0.62, 0.58],
        ("scratch", False, 1e-1): [0.55, 0.6],
    }, grid, seconds={("finetune", False): 60.0, ("finetune", True): 6.0, ("scratch", False): 50.0})
    rows = {(r["group"], r["lr"]): r for r in sweeps.aggregate(summary)}
    assert rows[("fine-tune, all layers", 1e-1)]["n"] == 1 and rows[("fine-tune, all layers", 1e-1)]["diverged"] == 1
    assert rows[("fine-tune, all layers", 1e-3)]["mean"] == pytest.approx(0.91)
    text = sweeps.findings(summary)
    assert text[0] == ("Fine-tune, all layers: best test accuracy 0.91 at lr 0.001 (mean of 2 seeds); from lr 0.1 on "
                       "it falls (accuracy is 0.60 there).")
    assert any(t.startswith("Fine-tune, frozen: best test accuracy 0.94 at lr 0.001") and "does not fall" in t
               for t in text)
    assert "Tuned, same budget: fine-tuning reaches 0.94 (lr 0.001), from scratch 0.60 (lr 0.01); they still differ: " \
           "fine-tuning is better by 0.34." in text
    assert any(t.startswith("Frozen features reach 0.94 (lr 0.001) vs 0.91 training all layers") and "10.0x faster"
               in t for t in text)
    assert "1 point(s) diverged (lr 0.1)." in text
    spec = ui.accuracy_vs_lr_chart(summary).to_dict()
    assert spec["layer"][0]["encoding"]["x"]["scale"]["type"] == "log" and len(spec["layer"]) == 2  # error bars
    assert list(ui.sweep_table(summary).columns)[:4] == ["point", "lr", "mode", "freeze"]


def test_sweep_progress_says_point_epoch_and_eta():
    import ui
    from hotdog.callbacks import BatchProgress
    from hotdog.jobs import JobState

    state = JobState(state="running", run_id="r3", run_ids=["r1", "r2", "r3"], pending=1, job_started=1000.0,
                     progress=BatchProgress(2, 4, 5, 10, 0.3, 0.9, 10.0, 60.0),
                     sweep={"sweep_id": "sw-x", "total": 28, "points": [5, 6, 7, 8], "title": "Exercise 1"})
    p = ui.sweep_progress(state, now=1000.0 + 237.5)  # 2 points + 3/8 of the third in 237.5 s: 100 s a point
    assert p["point"] == 7 and p["total"] == 28
    assert p["text"] == "Point 7/28 · epoch 2/4 · ETA 2m 42s"
    view = ui.job_view(state, owner=None)
    assert view["label"].startswith("Exercise 1 · point 7/28 · ") and view["sweep"]["sweep_id"] == "sw-x"


def test_findings_ignore_points_not_measured_yet():
    summary = _fake_summary({("finetune", False, 1e-3): [0.9], ("finetune", False, 1e-2): [0.5]},
                            {"lr": [1e-3, 1e-2, 1e-1]})
    summary["points"].append({**summary["points"][-1], "index": 2, "status": "pending", "accuracy": None,
                              "values": {"lr": 1e-1, "seed": 0}, "config": {**summary["points"][-1]["config"],
                                                                           "lr": 1e-1}})
    assert sweeps.findings(summary) == ["All points: best test accuracy 0.90 at lr 0.001; from lr 0.01 on it falls "
                                        "(accuracy is 0.50 there)."]
    summary["points"][1]["status"] = "pending"
    assert sweeps.findings(summary) == ["All points: best test accuracy 0.90 at lr 0.001."]


def test_a_frozen_point_that_reuses_features_trains_exactly_like_a_lone_run(tiny_dataset, hotdog_home):
    from hotdog.train import train

    sweep_id = sweeps.create(spec(tiny_dataset, {"lr": [1e-2, 1e-3], "freeze": [True]}, base={"epochs": 2}))
    summary = sweeps.run(sweep_id)
    reused = next(p for p in summary["points"] if p["values"]["lr"] == 1e-3)  # the second point: features reused
    alone = train(settings.config_for(tiny_dataset, freeze=True, lr=1e-3, **{**TINY, "epochs": 2}))
    assert [round(e["test_acc"], 6) for e in reused["epochs"]] == [round(e.test_acc, 6) for e in alone.epochs]
    assert [e["train_loss"] for e in reused["epochs"]] == pytest.approx([e.train_loss for e in alone.epochs],
                                                                        rel=1e-5)


def test_cli_errors_are_one_json_document(tiny_dataset, hotdog_home, capsys):
    from hotdog.cli import main

    for argv in (["sweep", "--data", str(tiny_dataset), "--grid", "lr=abc"], ["sweep", "--data", str(tiny_dataset)],
                 ["sweep", "--resume", "sw-20260101-000000-abcdef"], ["sweep", "--resume", "../../etc"]):
        assert main(argv + ["--json"]) == 1
        doc = json.loads(capsys.readouterr().out)
        assert list(doc) == ["error"] and doc["error"], argv
    assert main(["sweep", "--list", "--json"]) == 0 and json.loads(capsys.readouterr().out) == {"sweeps": []}


def test_a_flat_curve_is_said_to_be_flat():
    summary = _fake_summary({("scratch", False, lr): [0.5, 0.5] for lr in (1e-3, 1e-2, 1e-1)},
                            {"lr": [1e-3, 1e-2, 1e-1], "mode": ["scratch"]})
    assert sweeps.findings(summary) == ["All points: test accuracy 0.50 at every learning rate tried (0.001 to 0.1) "
                                        "(mean of 2 seeds): the learning rate makes no difference in this budget."]


def test_lr_suggestion_ignores_the_noisy_start_of_the_curve():
    from hotdog.lr_find import suggest

    lrs = list(np.logspace(-6, 0, 40))
    losses = [1.0 - 0.4 * np.exp(-((np.log10(lr) + 2.5) ** 2)) for lr in lrs]  # lowest at lr ~3e-3
    losses[0] = 0.2  # the first value is one batch: lower than anything, and meaningless
    suggested, steepest, lowest, valley = suggest(lrs, losses)
    assert lowest == pytest.approx(10 ** -2.5, rel=0.5) and suggested == pytest.approx(lowest / 10)
    assert 1e-5 < steepest < lowest and valley is not None
    assert suggest(lrs[:3], losses[:3]) == (None, None, None, None)
