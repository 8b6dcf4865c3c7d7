"""The CLI on damaged runs and on errors: never a traceback, and with ``--json`` always
exactly one JSON document on stdout (``{"error": "<sentence>"}`` for an error)."""

from __future__ import annotations

import json
import math

import pytest

from conftest import make_image
from hotdog.cli import main
from hotdog.errors import RunStoreError
from test_runs import BAD_METRICS, CLASSES, DAMAGE, damage, fake_run


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def no_paths(text: str, tmp_path) -> bool:
    return str(tmp_path) not in text


@pytest.fixture(scope="module")
def real_params(tmp_path_factory) -> bytes:
    """Weights of a real 2-class EfficientNet-Lite0 (made once; 32 px is enough to shape it)."""
    import mxnet as mx

    from hotdog import models

    net = models.build_scratch("efficientnet_lite0", len(CLASSES))
    net(mx.nd.zeros((1, 3, 32, 32)))
    path = tmp_path_factory.mktemp("weights") / "model.params"
    net.save_parameters(str(path))
    return path.read_bytes()


@pytest.fixture
def photo(tmp_path):
    return make_image(tmp_path / "photos" / "dog.png", (200, 60, 40))


# ------------------------------------------------------------------ runs / predict / evaluate on damaged runs

@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_runs_predict_evaluate_on_a_damaged_run(tmp_path, capsys, photo, case):
    file, mutate, sentence = DAMAGE[case]
    runs = tmp_path / "runs"
    fake_run(runs, "good")
    bad = fake_run(runs, "bad")
    damage(bad, file, mutate)

    code, out, err = run_cli(capsys, "runs", "--runs-dir", runs, "--json")
    assert code == 0 and err == ""
    by_id = {r["run_id"]: r for r in json.loads(out)["runs"]}
    assert by_id["good"]["status"] == "finished"
    assert by_id["bad"]["status"] == "damaged" and sentence in by_id["bad"]["message"]
    assert no_paths(by_id["bad"]["message"], tmp_path)

    code, out, err = run_cli(capsys, "runs", "--runs-dir", runs)
    assert code == 0 and "damaged" in out and sentence in out

    code, out, err = run_cli(capsys, "predict", "--run", bad, photo, "--json")
    assert code == 2  # unchanged: a run that cannot be used is a usage error for predict
    msg = json.loads(out)["error"]
    assert msg.startswith("run bad is damaged: ") and sentence in msg and no_paths(msg, tmp_path)
    assert err.startswith("error: run bad is damaged")

    code, out, err = run_cli(capsys, "evaluate", "--run", "bad", "--runs-dir", runs, "--data", photo.parent, "--json")
    assert code == 1 and json.loads(out) == {"error": msg} and err == f"error: {msg}\n"


@pytest.mark.parametrize("case", sorted(BAD_METRICS))
def test_runs_cli_shows_skipped_metrics_lines(tmp_path, capsys, case):
    runs = tmp_path / "runs"
    damage(fake_run(runs, "r"), "metrics.jsonl", BAD_METRICS[case][0])
    code, out, _ = run_cli(capsys, "runs", "--runs-dir", runs, "--json")
    [r] = json.loads(out)["runs"]
    assert code == 0 and r["status"] == "finished" and r["epochs_done"] == 2
    assert r["warning"].startswith("metrics.jsonl: ") and r["warning"].endswith("skipped")
    code, out, _ = run_cli(capsys, "runs", "--runs-dir", runs)
    assert code == 0 and "damaged line" in out


# ------------------------------------------------------------------ model.params that MXNet cannot load

def _other_model_params(tmp_path) -> bytes:
    from mxnet import gluon

    dense = gluon.nn.Dense(3, in_units=2)
    dense.initialize()
    dense.save_parameters(str(tmp_path / "other.params"))
    return (tmp_path / "other.params").read_bytes()


WEIGHT_DAMAGE = {
    "truncated": lambda good, tmp: good[: len(good) // 2],
    "truncated-header": lambda good, tmp: good[:10],
    "garbage": lambda good, tmp: bytes(range(256)) * 64,
    "garbage-after-header": lambda good, tmp: good[:200] + b"\xff" * 4000,
    "other-model": lambda good, tmp: _other_model_params(tmp),
}


@pytest.mark.parametrize("case", sorted(WEIGHT_DAMAGE))
def test_corrupt_weights_are_one_sentence(tmp_path, capsys, real_params, photo, case):
    from hotdog.predict import Predictor, run_output_rows

    runs = tmp_path / "runs"
    d = fake_run(runs, "bad", params=WEIGHT_DAMAGE[case](real_params, tmp_path))
    with pytest.raises(RunStoreError) as info:
        Predictor.from_run(d)
    msg = str(info.value)
    assert msg.startswith("cannot load the weights of run bad: the file is corrupted, truncated or belongs to "
                          "another model (")
    assert "Traceback" not in msg and "\n" not in msg and no_paths(msg, tmp_path), msg

    head = msg.split(" (")[0]  # gluon numbers layer names per process: the detail may differ per load
    code, out, err = run_cli(capsys, "predict", "--run", d, photo, "--json")
    assert code == 2 and list(json.loads(out)) == ["error"] and json.loads(out)["error"].startswith(head)
    code, out, err = run_cli(capsys, "evaluate", "--run", d, "--data", photo.parent, "--json")
    assert code == 1 and list(json.loads(out)) == ["error"] and json.loads(out)["error"].startswith(head)

    if case != "other-model":  # its output rows are readable, just not this model's
        with pytest.raises(RunStoreError) as info:
            run_output_rows(d)
        assert "Traceback" not in str(info.value) and no_paths(str(info.value), tmp_path)


def test_weights_for_other_classes_are_one_sentence(tmp_path, real_params):
    from hotdog.predict import Predictor, run_output_rows

    d = fake_run(tmp_path, "three", params=real_params, classes=["a", "b", "c"])
    with pytest.raises(RunStoreError, match=r"^cannot load the weights of run three: the file is corrupted, "
                                            r"truncated or belongs to another model \(.*shape"):
        Predictor.from_run(d)
    with pytest.raises(RunStoreError, match="2 output rows for 3 classes"):
        run_output_rows(d)


def test_intact_fake_run_predicts_with_model_json_classes(tmp_path, capsys, real_params, photo):
    """The control case: the same files, undamaged, work (model.json is the one record of classes)."""
    from hotdog.predict import Predictor, run_output_rows

    d = fake_run(tmp_path / "runs", "ok", params=real_params)
    assert Predictor.from_run(d).classes == CLASSES
    assert list(run_output_rows(d)) == CLASSES
    code, out, _ = run_cli(capsys, "predict", "--run", d, photo, "--json")
    [item] = json.loads(out)
    assert code == 0 and set(item["probabilities"]) == set(CLASSES)


def test_a_wise_ft_run_says_its_weights_are_a_mix_and_lists_the_mix_accuracy(tmp_path, capsys, real_params, photo):
    """model.params of a WiSE-FT run is not the last epoch's own weights: predict says which, and
    `runs` shows the mix's accuracy (the one every page shows), labelled, beside the last epoch's in JSON."""
    d = fake_run(tmp_path / "runs", "mixed", params=real_params)  # last epoch 0.82
    info = json.loads((d / "model.json").read_text())
    (d / "model.json").write_text(json.dumps({**info, "wise": {"alpha": 0.6, "test_acc": 0.92}}))
    code, _, err = run_cli(capsys, "predict", "--run", d, photo)
    assert code == 0 and "run mixed, WiSE-FT mix of the last epoch (2 of 2), alpha 0.6" in err
    code, out, _ = run_cli(capsys, "runs", "--runs-dir", tmp_path / "runs")
    header, line = out.splitlines()
    assert "test acc (saved model)" in header and "0.920 WiSE-FT mix" in line and "0.820" not in line
    code, out, _ = run_cli(capsys, "runs", "--runs-dir", tmp_path / "runs", "--json")
    [r] = json.loads(out)["runs"]
    assert (r["accuracy"], r["accuracy_weights"], r["test_acc"]) == (0.92, "wise", 0.82)


# ------------------------------------------------------------------ --json errors of every command

def test_json_errors_are_one_document_on_stdout(tmp_path, capsys):
    cases = [
        ["train", "--data", tmp_path / "missing", "--runs-dir", tmp_path / "runs", "--json"],
        ["train", "--data", tmp_path, "--devices", "tpu(9)", "--json"],
        ["evaluate", "--run", tmp_path / "nope", "--data", tmp_path, "--json"],
        ["data", "--root", tmp_path / "missing", "--json"],
        ["install-zip", tmp_path / "missing.zip", "--home", tmp_path / "home", "--json"],
        ["runs", "--runs-dir", tmp_path, "--delete", "no-such-run", "--json"],
    ]
    for argv in cases:
        code, out, err = run_cli(capsys, *argv)
        doc = json.loads(out)
        assert code == 1 and list(doc) == ["error"], argv
        assert err == f"error: {doc['error']}\n", argv
        code, out, err = run_cli(capsys, *argv[:-1])  # without --json: nothing on stdout
        assert code == 1 and out == "" and err.startswith("error: "), argv


def test_unexpected_error_is_one_line_and_json(tmp_path, capsys, monkeypatch):
    from hotdog.runs import RunStore

    def boom(self):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(RunStore, "list", boom)
    code, out, err = run_cli(capsys, "runs", "--runs-dir", tmp_path, "--json")
    assert code == 1 and json.loads(out)["error"].startswith("unexpected ZeroDivisionError: division by zero")
    assert len(err.splitlines()) == 1


def test_emit_json_is_strict_json(capsys):
    from hotdog.commands._common import emit_json

    emit_json({"acc": math.nan, "loss": [math.inf, 1.5], "other": object.__new__(type("Odd", (), {}))})
    out = capsys.readouterr().out
    doc = json.loads(out, parse_constant=lambda c: pytest.fail(f"bare {c} in --json output"))
    assert doc["acc"] is None and doc["loss"] == [None, 1.5] and doc["other"].startswith("<")
