"""Trainings in a worker process: a killed worker fails its run, never the app."""

from __future__ import annotations

import os
import signal
import time

from hotdog.jobs import TrainingJob
from hotdog.runs import RunStore
from hotdog.settings import TrainConfig


def cfg(root, **kw):
    return TrainConfig(str(root), **{"input_size": 32, "batch_size": 4, "epochs": 2, **kw})


def _wait_for(pred, timeout=120):
    deadline = time.time() + timeout
    while not pred():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_sigkill_of_the_worker_mid_epoch_fails_the_run_and_the_job_goes_on(tiny_dataset, tmp_path):
    job = TrainingJob(runs_dir=tmp_path / "runs")
    try:
        run_id = job.start(cfg(tiny_dataset, epochs=500))
        # mid-epoch: a training batch has been reported, the epoch is not over
        _wait_for(lambda: (p := job.current().progress) is not None and p.phase == "train" and p.epoch >= 1)
        pid = job.worker_pid()
        assert pid is not None and pid != os.getpid()
        os.kill(pid, signal.SIGKILL)
        state = job.wait(60)
        assert state.state == "failed" and not state.running
        assert "SIGKILL" in state.error, state.error
        assert os.getpid() and job.worker_pid() is None  # this process (the "app") is still here
        rec = RunStore(tmp_path / "runs").load(run_id)
        assert rec.state == "failed" and "SIGKILL" in rec.status["message"]
        # A new run starts at once, in a new worker.
        t0 = time.time()
        second = job.start(cfg(tiny_dataset, epochs=1))
        assert time.time() - t0 < 10
        state = job.wait(120)
        assert state.state == "finished" and state.run_id == second
        assert job.worker_pid() not in (None, pid)
    finally:
        job.close()


def test_a_warm_worker_is_reused_and_stop_is_a_message(tiny_dataset, tmp_path):
    job = TrainingJob(runs_dir=tmp_path / "runs")
    try:
        job.start(cfg(tiny_dataset, epochs=1))
        assert job.wait(120).state == "finished"
        pid = job.worker_pid()
        run_id = job.start(cfg(tiny_dataset, epochs=500))
        _wait_for(lambda: len(job.current().epochs) >= 1)
        assert job.worker_pid() == pid  # the same, warm process
        assert job.stop(wait=60)
        state = job.current()
        assert state.state == "stopped" and job.worker_pid() == pid  # stopped by a message, not killed
        assert RunStore(tmp_path / "runs").load(run_id).state == "stopped"
    finally:
        job.close()
    assert job.worker_pid() is None
