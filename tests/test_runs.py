"""Run store: atomic files, stale detection, listing never breaks on a bad run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from hotdog.errors import RunStoreError
from hotdog.fileio import read_jsonl
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
    states = {s.run_id: s.status for s in store.list()}
    assert states[bad] == "failed" and states["junk-folder"] == "failed" and states[good] == "running"


def test_torn_jsonl_line_ignored(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    rows, bad = read_jsonl(p)
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
