"""Run store: atomic files, stale detection, listing never breaks on a bad run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from hotdog.errors import RunStoreError
from hotdog.runs import RunStore, effective_status


def test_create_list_load_delete(tmp_path):
    store = RunStore(tmp_path / "runs")
    run_id, d = store.create({"mode": "finetune", "source": "efficientnet_lite0", "epochs": 2, "lr": 0.001,
                               "data_root": "/data/hotdog"})
    assert (d / "config.json").is_file() and (d / "status.json").is_file()
    store.append_metrics(run_id, {"epoch": 1, "train_loss": 0.5, "train_acc": 0.7, "test_acc": 0.8, "seconds": 1.0})
    store.write_status(run_id, "finished", "done")
    [summary] = store.list()
    assert summary.run_id == run_id and summary.status == "finished"
    assert summary.test_acc == 0.8 and summary.mode == "finetune" and summary.lr == 0.001  # as recorded, never recomputed
    assert summary.data == "hotdog" and summary.epochs_done == 1
    rec = store.load(run_id)
    assert rec.metrics[0]["epoch"] == 1 and rec.state == "finished"
    store.delete(run_id)
    assert store.list() == []
    with pytest.raises(RunStoreError):
        store.load(run_id)


def test_no_temp_files_left(tmp_path):
    store = RunStore(tmp_path)
    run_id, d = store.create({"mode": "scratch"})
    for _ in range(5):
        store.heartbeat(run_id)
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "status.json"]
    assert [p.name for p in tmp_path.iterdir()] == [run_id]


def test_invalid_run_ids_rejected(tmp_path):
    store = RunStore(tmp_path)
    for bad in ["../x", "a/b", ".hidden", "", "x" * 200]:
        with pytest.raises(RunStoreError):
            store.load(bad)


def test_dead_owner_is_reported_failed_stale(tmp_path):
    store = RunStore(tmp_path)
    live_id, _ = store.create({"mode": "finetune"})
    dead_id, d = store.create({"mode": "finetune"})
    done_id, _ = store.create({"mode": "scratch"})
    store.write_status(done_id, "finished", "ok")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    status = json.loads((d / "status.json").read_text())
    status["pid"] = proc.pid
    (d / "status.json").write_text(json.dumps(status))
    states = {s.run_id: s for s in store.list()}
    assert states[live_id].status == "running"
    assert states[dead_id].status == "failed" and "stale" in states[dead_id].message
    assert states[done_id].status == "finished"
    # Reading does not rewrite the file.
    assert json.loads((d / "status.json").read_text())["state"] == "running"
    store.delete(dead_id)  # a stale run can be deleted
    with pytest.raises(RunStoreError, match="still running"):
        store.delete(live_id)


def test_old_heartbeat_is_stale():
    st = {"state": "running", "pid": os.getpid(), "host": "elsewhere", "heartbeat": time.time() - 10_000}
    eff = effective_status(st)
    assert eff["state"] == "failed" and eff["stale"]


def test_recycled_pid_is_stale():
    st = {"state": "running", "pid": os.getpid(), "pid_start": "1", "heartbeat": time.time()}
    assert effective_status(st)["state"] == "failed"


def test_corrupt_run_listed_not_raised(tmp_path):
    store = RunStore(tmp_path)
    good, _ = store.create({"mode": "finetune"})
    bad, d = store.create({"mode": "finetune"})
    (d / "status.json").write_text("{not json")
    (tmp_path / "junk-folder").mkdir()
    by_id = {s.run_id: s for s in store.list()}
    assert by_id[bad].status == "damaged" and by_id["junk-folder"].status == "damaged"
    assert by_id[good].status == "running"
    assert by_id[bad].message == "status.json is not valid JSON (truncated or overwritten?)"
    assert by_id["junk-folder"].message == "config.json is missing (not a training run?)"


def test_torn_last_metrics_line_ignored(tmp_path):
    from hotdog.runs import read_metrics

    row = '{"epoch": %d, "train_loss": 0.5, "train_acc": 0.7, "test_acc": 0.8, "seconds": 1.0}\n'
    (tmp_path / "metrics.jsonl").write_text(row % 1 + row % 2 + '{"epo')
    rows, bad = read_metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2] and bad == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_runs_dir_clear_error_no_half_run(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    os.chmod(root, 0o555)
    try:
        with pytest.raises(RunStoreError, match="read-only|Permission"):
            RunStore(root).create({"mode": "finetune"})
        assert list(root.iterdir()) == []
    finally:
        os.chmod(root, 0o755)


def test_full_disk_no_half_run(tmp_path, monkeypatch):
    """A failing write (ENOSPC) mid-create leaves nothing behind and says why."""
    import errno

    import hotdog.runs as runs

    store = RunStore(tmp_path)
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd, data):
        calls["n"] += 1
        if calls["n"] == 2:  # config.json succeeds, status.json hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(runs.os, "write", failing_write)
    with pytest.raises(RunStoreError, match="No space left"):
        store.create({"mode": "finetune"})
    monkeypatch.setattr(runs.os, "write", real_write)
    assert list(tmp_path.iterdir()) == []


def test_read_only_filesystem_clear_error(tmp_path, monkeypatch):
    """Same as above but simulated, so it also runs as root (EROFS from mkdir)."""
    import errno
    import pathlib

    real_mkdir = pathlib.Path.mkdir

    def ro_mkdir(self, *a, **k):
        if self.name.startswith(".creating-"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "mkdir", ro_mkdir)
    with pytest.raises(RunStoreError, match="Read-only file system"):
        RunStore(tmp_path).create({"mode": "finetune"})
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ damaged files (Trust issue, item 5/6)

NOW = time.time()
CLASSES = ["hotdog", "not-hotdog"]


def model_info(classes=CLASSES, input_size=32) -> dict:
    """model.json as the training loop writes it (hotdog.train._Fit.model_info)."""
    from hotdog.data import Preprocess

    return {"source": "efficientnet_lite0", "mode": "finetune", "classes": list(classes), "input_size": input_size,
            "preprocess": Preprocess().scaled(input_size).to_dict(), "bn_mode": "keep", "freeze": False,
            "params": "model.params"}


def fake_run(root, run_id: str, params: bytes = b"weights (not read by the store)", epochs: int = 2,
             classes=CLASSES, created: float = NOW - 100):
    """A finished run written file by file (no training, no MXNet)."""
    import socket

    from hotdog.settings import TrainConfig

    d = root / run_id
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(TrainConfig("/data/hotdog", input_size=32, epochs=epochs).to_dict()))
    (d / "status.json").write_text(json.dumps({
        "state": "finished", "message": f"finished {epochs} epochs", "created": created, "heartbeat": created + 50,
        "updated": created + 50, "pid": os.getpid(), "host": socket.gethostname(), "pid_start": None, "seconds": 50.0}))
    (d / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "train_loss": 0.5 / e, "train_acc": 0.7, "test_acc": round(0.8 + e / 100, 4), "seconds": 1.5})
        + "\n" for e in range(1, epochs + 1)))
    (d / "model.json").write_text(json.dumps(model_info(classes)))
    (d / "model.params").write_bytes(params)
    return d


def patch(**fields):
    """A mutation setting JSON fields ('a.b' reaches into an object)."""
    def mutate(raw: bytes) -> bytes:
        doc = json.loads(raw)
        for key, value in fields.items():
            *path, last = key.split(".")
            target = doc
            for p in path:
                target = target[p]
            target[last] = value
        return json.dumps(doc).encode()
    return mutate


def drop(key):
    def mutate(raw: bytes) -> bytes:
        doc = json.loads(raw)
        del doc[key]
        return json.dumps(doc).encode()
    return mutate


def const(data: bytes):
    return lambda raw: data


GARBAGE = bytes(range(256)) * 8  # like `head -c 2000 /dev/urandom`, but the same every run

# (file, mutation (None deletes the file), what the one sentence must say)
DAMAGE = {
    "status-list": ("status.json", const(b"[]"), "status.json holds a list, not a JSON object"),
    "status-string": ("status.json", const(b'"x"'), "status.json holds a string, not a JSON object"),
    "status-null": ("status.json", const(b"null"), "status.json holds null, not a JSON object"),
    "status-created-word": ("status.json", patch(created="yesterday"),
                            "status.json has 'created' 'yesterday', not a time between the year 2000 and now"),
    "status-created-1e300": ("status.json", patch(created=1e300), "status.json has 'created' 1e+300"),
    "status-state-list": ("status.json", patch(state=["finished"]), "status.json has 'state' [\"finished\"], not one of"),
    "status-state-unknown": ("status.json", patch(state="damaged"), "status.json has 'state' 'damaged'"),
    "status-message-number": ("status.json", patch(message=3), "status.json has 'message' 3, not a string"),
    "status-garbage-appended": ("status.json", lambda raw: raw + GARBAGE, "status.json is not valid JSON"),
    "status-truncated": ("status.json", lambda raw: raw[: len(raw) // 2], "status.json is not valid JSON"),
    "status-missing": ("status.json", None, "status.json is missing"),
    "config-list": ("config.json", const(b"[]"), "config.json holds a list, not a JSON object"),
    "config-lr-word": ("config.json", patch(lr="fast"), "config.json has 'lr' 'fast', not a learning rate"),
    "config-source-unknown": ("config.json", patch(source="vgg"), "config.json has 'source' 'vgg'"),
    "config-epochs-float": ("config.json", patch(epochs=2.5), "config.json has 'epochs' 2.5"),
    "config-garbage": ("config.json", const(GARBAGE), "config.json is not valid JSON"),
    "model-list": ("model.json", const(b"[]"), "model.json holds a list, not a JSON object"),
    "model-input-size-0": ("model.json", patch(input_size=0), "model.json has 'input_size' 0, not a size"),
    "model-mean-word": ("model.json", patch(**{"preprocess.mean": "abc"}), "model.json has 'preprocess.mean' 'abc'"),
    "model-std-zero": ("model.json", patch(**{"preprocess.std": [0.2, 0.0, 0.2]}), "model.json has 'preprocess.std' [0.2, 0.0, 0.2], not 3 numbers > 0"),
    "model-no-source": ("model.json", drop("source"), "model.json has no 'source'"),
    "model-duplicate-classes": ("model.json", patch(classes=["hotdog", "hotdog"]), "model.json names the class 'hotdog' twice"),
    "model-no-classes": ("model.json", patch(classes=[]), "model.json has 'classes' [], not a non-empty list of class names"),
    "model-class-number": ("model.json", patch(classes=["hotdog", 7]), "model.json has a class name 7"),
    "model-truncated": ("model.json", lambda raw: raw[:10], "model.json is not valid JSON"),
    "params-missing": ("model.params", None, "model.json is there but its weights file model.params is missing"),
    "params-empty": ("model.params", const(b""), "model.params is empty"),
}

# Lines of metrics.jsonl that are skipped and counted (the run stays usable): (mutation, skipped lines)
BAD_METRICS = {
    "line-list": (lambda raw: raw + b"[1,2]\n", 1),
    "test-acc-word": (lambda raw: raw + b'{"epoch": 3, "test_acc": "high"}\n', 1),
    "test-acc-nan": (lambda raw: raw + b'{"epoch": 3, "test_acc": NaN}\n', 1),
    "test-acc-above-1": (lambda raw: raw + b'{"epoch": 3, "test_acc": 7}\n', 1),
    "epoch-zero": (lambda raw: raw + b'{"epoch": 0}\n', 1),
    "torn-last-line": (lambda raw: raw + b'{"epoch": 3, "train_lo', 1),
}


def damage(d, file, mutate) -> None:
    path = d / file
    if mutate is None:
        path.unlink()
    else:
        path.write_bytes(mutate(path.read_bytes()))


def test_fake_run_is_a_valid_finished_run(tmp_path):
    fake_run(tmp_path, "r1")
    [s] = RunStore(tmp_path).list()
    assert (s.status, s.message, s.warning, s.epochs_done, s.test_acc) == ("finished", "finished 2 epochs", "", 2, 0.82)
    rec = RunStore(tmp_path).load("r1")
    assert rec.model["classes"] == CLASSES and rec.created == NOW - 100


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_file_lists_run_as_damaged_with_one_sentence(tmp_path, case):
    file, mutate, sentence = DAMAGE[case]
    store = RunStore(tmp_path)
    good_before = fake_run(tmp_path, "good")
    snapshot = {p.name: p.read_bytes() for p in good_before.iterdir()}
    damage(fake_run(tmp_path, "bad", created=NOW - 50), file, mutate)

    by_id = {s.run_id: s for s in store.list()}
    assert set(by_id) == {"good", "bad"}
    assert by_id["good"].status == "finished" and by_id["good"].test_acc == 0.82  # untouched
    bad = by_id["bad"]
    assert bad.status == "damaged" and sentence in bad.message, bad.message
    assert "\n" not in bad.message and "Traceback" not in bad.message and str(tmp_path) not in bad.message
    with pytest.raises(RunStoreError) as err:
        store.load("bad")
    assert str(err.value) == f"run bad is damaged: {bad.message}"
    assert store.load("good").state == "finished"
    assert {p.name: p.read_bytes() for p in good_before.iterdir()} == snapshot  # readers never write
    store.delete("bad")  # a damaged run can always be deleted
    assert [s.run_id for s in store.list()] == ["good"]


@pytest.mark.parametrize("case", sorted(BAD_METRICS))
def test_bad_metrics_lines_are_skipped_and_counted(tmp_path, case):
    mutate, skipped = BAD_METRICS[case]
    d = fake_run(tmp_path, "r")
    damage(d, "metrics.jsonl", mutate)
    if skipped is None:
        skipped = sum(1 for line in (d / "metrics.jsonl").read_bytes().splitlines() if line.strip()) - 2
    [s] = RunStore(tmp_path).list()
    assert s.status == "finished" and s.epochs_done == 2 and s.test_acc == 0.82
    expected = f"metrics.jsonl: {skipped} damaged line{'s' if skipped > 1 else ''} skipped"
    assert s.warning == expected
    rec = RunStore(tmp_path).load("r")
    assert [m["epoch"] for m in rec.metrics] == [1, 2] and rec.warning == expected


@pytest.mark.parametrize("mutate", [
    lambda raw: raw + b"\x00garbage\n" + b"\xff\xfe more garbage\n",  # `head -c 2000 /dev/urandom >>`
    lambda raw: b"[1,2]\n" + raw,  # a bad line before good ones: not a torn append
])
def test_garbage_written_into_metrics_makes_the_run_damaged(tmp_path, mutate):
    d = fake_run(tmp_path, "r")
    damage(d, "metrics.jsonl", mutate)
    ok = fake_run(tmp_path, "ok")
    [s] = [r for r in RunStore(tmp_path).list() if r.run_id == "r"]
    assert s.status == "damaged" and "metrics.jsonl has" in s.message and "not an epoch record" in s.message
    assert RunStore(tmp_path).load("ok").state == "finished" and ok.is_dir()
    with pytest.raises(RunStoreError, match="is damaged: metrics.jsonl"):
        RunStore(tmp_path).load("r")


def test_writers_repair_a_status_that_is_not_an_object(tmp_path):
    store = RunStore(tmp_path)
    for raw in ("[]", '"x"', "null", "{torn"):
        run_id, d = store.create({"mode": "finetune"})
        (d / "status.json").write_text(raw)
        store.heartbeat(run_id, "epoch 1")
        assert store.load(run_id).status["message"] == "epoch 1"
        (d / "status.json").write_text(raw)
        store.write_status(run_id, "finished", "done")
        assert store.load(run_id).state == "finished"


def test_unreadable_run_folder_does_not_hide_the_others(tmp_path):
    fake_run(tmp_path, "good")
    bad = fake_run(tmp_path, "bad")
    (bad / "status.json").unlink()
    (bad / "status.json").mkdir()  # EISDIR on open
    by_id = {s.run_id: s for s in RunStore(tmp_path).list()}
    assert by_id["good"].status == "finished"
    assert by_id["bad"].status == "damaged" and by_id["bad"].message.startswith("status.json cannot be read")


def test_deeply_nested_json_is_invalid_json_not_a_recursion_error(tmp_path):
    from hotdog.fileio import read_json

    p = tmp_path / "deep.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError):
        read_json(p)
    from hotdog.runs import read_metrics

    (tmp_path / "metrics.jsonl").write_text(
        '{"epoch": 1, "train_loss": 0.5, "train_acc": 0.7, "test_acc": 0.8, "seconds": 1.0}\n' + "[" * 100_000 + "\n")
    rows, bad = read_metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1] and bad == 1


def test_store_names_match_the_engine():
    """runs.py may not import the engine, so it repeats these names; they must agree."""
    from hotdog import runs, settings

    assert runs.SOURCE_NAMES == settings.SOURCES
    assert runs.MODE_NAMES == settings.MODES
    assert runs.BN_MODE_NAMES == settings.BN_MODES
    assert runs.READ_STATES == runs.STATES + ("damaged",) and "damaged" not in runs.STATES
    with pytest.raises(ValueError):
        RunStore(".").write_status("x", "damaged")  # a reader-only state


# ------------------------------------------------------------------ the one accuracy of a run

def test_a_runs_accuracy_is_its_saved_models(tmp_path):
    """RunSummary.accuracy (every page, the CLI, the ranking): the best epoch's when the run kept
    one, else model.params's (a WiSE-FT mix when model.json says so), else the last epoch's."""
    from hotdog.runpick import score

    d = fake_run(tmp_path, "plain")  # last epoch 0.82
    s = RunStore(tmp_path).summary("plain")
    assert (s.accuracy, s.accuracy_weights, s.test_acc) == (0.82, "last", 0.82)
    info = json.loads((d / "model.json").read_text())
    (d / "model.json").write_text(json.dumps({**info, "wise": {"alpha": 0.6, "test_acc": 0.9}}))
    s = RunStore(tmp_path).summary("plain")
    assert (s.accuracy, s.accuracy_weights, s.test_acc) == (0.9, "wise", 0.82) and score(s) == 0.9
    (d / "model-best.params").write_bytes(b"w")
    (d / "model.json").write_text(json.dumps({**info, "wise": {"alpha": 0.6, "test_acc": 0.9},
                                              "best": {"params": "model-best.params", "epoch": 1, "val_acc": 1.0,
                                                       "test_acc": 0.81}}))
    s = RunStore(tmp_path).summary("plain")
    assert (s.accuracy, s.accuracy_weights) == (0.81, "best") and score(s) == 0.81
    assert {k: s.to_dict()[k] for k in ("accuracy", "accuracy_weights", "test_acc")} == {
        "accuracy": 0.81, "accuracy_weights": "best", "test_acc": 0.82}
    assert RunStore(tmp_path).summary("gone").accuracy is None
