"""The one-training-per-process job manager the app uses, and a soak of repeated trainings."""

from __future__ import annotations

import gc
import threading
import time

import pytest

from hotdog.bench_timing import rss_mb
from hotdog.errors import DatasetError, RunStoreError, TrainingBusyError
from hotdog.jobs import TrainingJob, job_manager
from hotdog.runs import RunStore
from hotdog.settings import TrainConfig


def cfg(root, **kw):
    return TrainConfig(str(root), **{"input_size": 32, "batch_size": 6, "epochs": 2, **kw})


def test_job_runs_in_background_and_reports(tiny_dataset, tmp_path):
    job = TrainingJob(runs_dir=tmp_path / "runs")
    assert job.current().state == "idle" and not job.current().running
    run_id = job.start(cfg(tiny_dataset))
    state = job.wait(120)
    assert state.state == "finished" and state.run_id == run_id and state.error is None
    assert len(state.epochs) == 2 and state.progress is not None and state.progress.epoch == 2
    assert state.result.to_dict()["run_id"] == run_id
    assert RunStore(tmp_path / "runs").load(run_id).state == "finished"
    assert job_manager() is job_manager()
    assert state.config.input_size == 32 and state.run_ids == [run_id] and state.pending == 0


def test_second_start_is_refused_naming_the_running_run(tiny_dataset, tmp_path):
    job = TrainingJob(runs_dir=tmp_path / "runs")
    gate = threading.Event()
    results, errors = [], []

    def request():
        gate.wait()
        try:
            results.append(job.start(cfg(tiny_dataset, epochs=50)))
        except TrainingBusyError as err:
            errors.append(str(err))

    threads = [threading.Thread(target=request) for _ in range(2)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    try:
        assert len(results) == 1 and len(errors) == 1
        assert results[0] in errors[0] and "already running" in errors[0]
        assert [s.status for s in RunStore(tmp_path / "runs").list()] == ["running"]  # no second run created
    finally:
        assert job.stop(wait=120)
    assert job.current().state == "stopped"


def test_stop_keeps_completed_epochs_and_job_is_reusable(tiny_dataset, tmp_path):
    job = TrainingJob(runs_dir=tmp_path / "runs")
    run_id = job.start(cfg(tiny_dataset, epochs=200))
    deadline = time.time() + 120
    while len(job.current().epochs) < 1 and time.time() < deadline:
        time.sleep(0.05)
    assert job.stop(wait=120)
    state = job.current()
    assert state.state == "stopped" and state.result.status == "stopped"
    rec = RunStore(tmp_path / "runs").load(run_id)
    assert rec.state == "stopped" and len(rec.metrics) == len(state.epochs) >= 1
    # The app stays usable: a new training can start right away.
    second = job.start(cfg(tiny_dataset, epochs=1))
    assert job.wait(120).state == "finished" and second != run_id


def test_divergence_through_the_job(tiny_dataset, tmp_path):
    job = TrainingJob(runs_dir=tmp_path / "runs")
    job.start(cfg(tiny_dataset, lr=1e6, epochs=3))
    state = job.wait(120)
    assert state.state == "diverged" and "learning rate 1e+06" in state.error


def test_bad_requests_fail_fast_without_a_run(tiny_dataset, tmp_path, monkeypatch):
    job = TrainingJob(runs_dir=tmp_path / "runs")
    with pytest.raises(DatasetError):
        job.start(cfg(tmp_path / "missing"))
    import errno
    import pathlib

    real_mkdir = pathlib.Path.mkdir

    def full_disk(self, *a, **k):
        if self.name.startswith(".creating-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "mkdir", full_disk)
    with pytest.raises(RunStoreError, match="No space left"):
        job.start(cfg(tiny_dataset))
    monkeypatch.undo()
    assert not job.is_running() and job.current().state == "idle"
    assert RunStore(tmp_path / "runs").list() == []


# Resident memory may grow by at most this much over 20 trainings (plus 20 predictions from
# fresh threads) after a warm-up of 3 runs. Measured on the 2-core box: a few MB, where a new
# thread per training leaked ~15 MB per run (and ~70 MB per 224 px prediction thread), see
# hotdog/jobs.py.
SOAK_RSS_BOUND_MB = 60


def test_soak_twenty_trainings_no_leaks(tiny_dataset, tmp_path):
    from hotdog.predict import Predictor

    job = TrainingJob(runs_dir=tmp_path / "runs")
    threads_before = set(threading.enumerate())
    samples = []
    img = tiny_dataset / "test" / "hotdog" / "000.png"
    for i in range(23):
        job.start(cfg(tiny_dataset, epochs=1, freeze=(i % 3 == 2), seed=i))
        state = job.wait(120)
        assert state.state == "finished"
        # The app predicts from a new thread on every rerun.
        out = []
        t = threading.Thread(target=lambda: out.extend(Predictor.from_run(state.run_dir).predict([img])))
        t.start()
        t.join()
        assert out and out[0].ok
        gc.collect()
        samples.append(rss_mb())
    # Medians of a window after warm-up and of the last runs: the allocator swings single
    # samples by ~50 MB either way, a leak moves the whole window.
    import statistics

    growth = statistics.median(samples[-5:]) - statistics.median(samples[2:7])
    print(f"soak RSS MB after each run: {[round(s) for s in samples]}; growth after warm-up {growth:.1f} MB")
    assert growth < SOAK_RSS_BOUND_MB
    # One long-lived training thread and one MXNet inference thread, however many runs.
    extra = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    assert sorted(t.name.split("_")[0] for t in extra) in (["hotdog-mx", "hotdog-train"], ["hotdog-train"])
    job.close()
    # Only this job's thread: other tests' process-wide manager may still hold its own.
    assert not any(t.is_alive() for t in extra if t.name.startswith("hotdog-train"))
    assert len(RunStore(tmp_path / "runs").list()) == 23


def test_a_sequence_runs_one_after_the_other(tiny_dataset, tmp_path):
    """The chapter's comparison: fine-tune, then scratch, in the one job."""
    job = TrainingJob(runs_dir=tmp_path / "runs")
    first = job.start([cfg(tiny_dataset, epochs=1), cfg(tiny_dataset, epochs=1, mode="scratch")])
    assert job.current().pending == 1 and job.current().running
    state = job.wait(240)
    while state.running:  # the second run starts on the same thread once the first is done
        state = job.wait(240)
    assert state.state == "finished" and len(state.run_ids) == 2 and state.run_ids[0] == first
    runs = {s.run_id: s for s in RunStore(tmp_path / "runs").list()}
    assert [runs[r].mode for r in state.run_ids] == ["finetune", "scratch"]
    assert all(runs[r].status == "finished" for r in state.run_ids)


def test_only_the_owner_stops_a_run(tiny_dataset, tmp_path):
    job = TrainingJob(runs_dir=tmp_path / "runs")
    job.start([cfg(tiny_dataset, epochs=200), cfg(tiny_dataset, epochs=1)], owner="session-a")
    try:
        assert job.current().owner == "session-a" and job.current().owned_by("session-a")
        assert not job.current().owned_by("session-b")
        with pytest.raises(TrainingBusyError, match="started by another session"):
            job.stop(owner="session-b")
        assert job.is_running() and job.current().state == "running"
    finally:
        assert job.stop(owner="session-a", wait=120)
    state = job.current()
    assert state.state == "stopped" and state.pending == 0 and len(state.run_ids) == 1  # the queue is dropped
