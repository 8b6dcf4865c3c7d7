"""``python -m hotdog train|evaluate|predict|runs``: JSON contracts, exit codes, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hotdog.cli import main
from hotdog.runs import RunStore
from hotdog.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
TRAIN_KEYS = {"run_id", "run_dir", "status", "epochs", "test_acc", "seconds"}
EPOCH_KEYS = {"epoch", "train_loss", "train_acc", "test_acc", "seconds"}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_train_json_is_one_document_on_stdout(tiny_dataset, tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "hotdog", "train", "--data", str(tiny_dataset), "--source", "efficientnet_lite0",
         "--mode", "finetune", "--epochs", "1", "--batch-size", "8", "--input-size", "32", "--lr", "0.01",
         "--lr-mult", "10", "--wd", "0.001", "--seed", "3", "--bn-mode", "keep", "--devices", "cpu(0),cpu(1)",
         "--runs-dir", str(runs), "--json"],
        capture_output=True, text=True, env=subprocess_env(), timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # exactly one document, nothing else on stdout
    assert TRAIN_KEYS <= doc.keys() and doc["status"] == "finished"
    assert [e.keys() for e in doc["epochs"]] == [EPOCH_KEYS]
    assert "epoch 1" in proc.stderr  # logs go to stderr
    # the memory estimate, before the run: in the JSON and on stderr
    assert doc["memory"]["decision"] == "proceed" and doc["memory"]["micro_batch"] == 8
    assert "memory: estimated peak memory" in proc.stderr
    cfg = json.loads((Path(doc["run_dir"]) / "config.json").read_text())
    assert cfg["devices"] == ["cpu(0)", "cpu(1)"] and cfg["seed"] == 3 and cfg["input_size"] == 32


@pytest.fixture
def finished_run(tiny_dataset, tmp_path):
    res = train(TrainConfig(str(tiny_dataset), input_size=32, batch_size=8, epochs=1), runs_dir=tmp_path / "runs")
    assert res.status == "finished"
    return res


def test_predict_exit_codes_and_json(finished_run, tiny_dataset, tmp_path, capsys):
    good = tiny_dataset / "test" / "hotdog" / "000.png"
    code, out, err = run_cli(capsys, "predict", "--run", finished_run.run_dir, str(good), "--json")
    assert code == 0
    [item] = json.loads(out)
    assert item.keys() == {"path", "probabilities", "label"} and item["path"] == str(good)
    assert set(item["probabilities"]) == {"hotdog", "not-hotdog"}

    junk = tmp_path / "junk.jpg"
    junk.write_bytes(os.urandom(300))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    code, out, err = run_cli(capsys, "predict", "--run", finished_run.run_dir, str(junk), str(good),
                             str(empty), str(tmp_path / "missing.png"), str(tmp_path), "--json")
    assert code == 1
    items = json.loads(out)
    assert [("error" in i) for i in items] == [True, False, True, True, True]
    assert [i["path"] for i in items][:2] == [str(junk), str(good)]
    assert "Traceback" not in err

    # Run id instead of a folder works too (resolved in --runs-dir).
    code, out, _ = run_cli(capsys, "predict", "--run", finished_run.run_id, "--runs-dir",
                           str(Path(finished_run.run_dir).parent), str(good))
    assert code == 0 and "hotdog" in out

    code, out, err = run_cli(capsys, "predict", "--run", str(tmp_path / "nope"), str(good), "--json")
    assert code == 2 and "no run folder" in err and "error" in json.loads(out)
    with pytest.raises(SystemExit) as exc:  # argparse: no images given
        main(["predict", "--run", finished_run.run_dir])
    assert exc.value.code == 2


def test_evaluate_and_runs_json(finished_run, tiny_dataset, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "evaluate", "--run", finished_run.run_dir, "--data", str(tiny_dataset / "test"), "--json")
    assert code == 0
    rep = json.loads(out)
    assert {"accuracy", "n", "per_class", "confusion", "misclassified"} <= rep.keys() and rep["n"] == 8
    code, out, _ = run_cli(capsys, "evaluate", "--run", finished_run.run_dir, "--data", str(tiny_dataset / "test"))
    assert code == 0 and "accuracy" in out and "confusion" in out

    runs_dir = str(Path(finished_run.run_dir).parent)
    code, out, _ = run_cli(capsys, "runs", "--runs-dir", runs_dir, "--json")
    [r] = json.loads(out)["runs"]
    assert {"run_id", "status", "mode", "source", "test_acc", "created"} <= r.keys()
    assert r["run_id"] == finished_run.run_id and r["status"] == "finished" and r["test_acc"] == finished_run.test_acc
    # "accuracy" is the run's as every page shows it (its saved model's), "test_acc" the last epoch's
    summary = RunStore(runs_dir).summary(finished_run.run_id)
    assert (r["accuracy"], r["accuracy_weights"]) == (summary.accuracy, summary.accuracy_weights)
    assert r["accuracy"] is not None
    code, out, _ = run_cli(capsys, "runs", "--runs-dir", runs_dir)
    assert finished_run.run_id in out
    code, out, _ = run_cli(capsys, "runs", "--runs-dir", runs_dir, "--delete", finished_run.run_id, "--json")
    assert json.loads(out) == {"runs": []}


def test_bad_train_input_is_one_line_not_a_traceback(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "--data", str(tmp_path / "missing"), "--runs-dir", str(tmp_path), "--json")
    assert code == 1 and err.startswith("error:") and "Traceback" not in err
    assert json.loads(out) == {"error": err[len("error: "):].rstrip("\n")}  # --json: one document, even for errors
    code, out, err = run_cli(capsys, "train", "--data", str(tmp_path), "--devices", "tpu(9)", "--json")
    assert code == 1 and "bad device" in err and "bad device" in json.loads(out)["error"]


def test_kill_9_mid_training_shows_failed_stale(finished_run, tiny_dataset, tmp_path, capsys):
    runs = Path(finished_run.run_dir).parent
    before = {p.name: p.read_bytes() for p in Path(finished_run.run_dir).iterdir()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hotdog", "train", "--data", str(tiny_dataset), "--epochs", "500",
         "--batch-size", "8", "--input-size", "32", "--runs-dir", str(runs), "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env())
    try:
        deadline = time.time() + 240
        victim = None
        while time.time() < deadline and victim is None:
            for d in runs.iterdir():
                if d.name != finished_run.run_id and (d / "metrics.jsonl").is_file():
                    victim = d
            time.sleep(0.2)
        assert victim is not None, "the CLI training never completed an epoch"
        code, out, _ = run_cli(capsys, "runs", "--runs-dir", str(runs), "--json")
        assert {r["run_id"]: r["status"] for r in json.loads(out)["runs"]}[victim.name] == "running"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    code, out, _ = run_cli(capsys, "runs", "--runs-dir", str(runs), "--json")
    by_id = {r["run_id"]: r for r in json.loads(out)["runs"]}
    assert by_id[victim.name]["status"] == "failed" and "stale" in by_id[victim.name]["message"]
    assert by_id[finished_run.run_id]["status"] == "finished"
    # Every JSON file of the killed run is intact, the earlier run is byte-for-byte untouched.
    for name in ("config.json", "status.json"):
        json.loads((victim / name).read_text())
    assert all(json.loads(line) for line in (victim / "metrics.jsonl").read_text().splitlines())
    assert {p.name: p.read_bytes() for p in Path(finished_run.run_dir).iterdir()} == before
    assert RunStore(runs).load(victim.name).state == "failed"
