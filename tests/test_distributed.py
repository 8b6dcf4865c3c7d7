"""#17 items 4 and 5: the kvstore and amp knobs, per-worker sharding, the localhost launcher
(1 scheduler + 1 server + 2 workers) against a single-process run, and a worker killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hotdog import distributed, precision, settings
from hotdog.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

# Small and fast: 16 training images at 32 px; batch 5 leaves a last batch of 1 image, so the
# second worker's part of it is empty (the padding path).
TINY = {"input_size": 32, "epochs": 1, "batch_size": 5}


def _wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _weights(run_dir) -> dict:
    import mxnet as mx

    return {k: v.asnumpy() for k, v in mx.nd.load(str(Path(run_dir) / "model.params")).items()}


def _assert_same_weights(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    diffs = {k: float(np.max(np.abs(a[k] - b[k]))) for k in a}
    key = max(diffs, key=diffs.get)
    assert diffs[key] <= tol, f"weights differ by up to {diffs[key]:g} (in {key}; {sum(d > tol for d in diffs.values())} of {len(diffs)} differ)"


# ------------------------------------------------------------------------------- knobs

def test_kvstore_and_amp_are_knobs_recorded_in_config_json(tiny_dataset, hotdog_home):
    from hotdog.cli import build_parser
    from hotdog.train import prepare

    cfg = settings.config_for(tiny_dataset, **TINY)
    assert (cfg.kvstore, cfg.amp) == ("device", False)
    record = prepare(settings.config_for(tiny_dataset, kvstore="local", **TINY), check_memory=False).record()
    assert (record["kvstore"], record["amp"]) == ("local", False)
    assert settings.TrainConfig.from_dict(record).kvstore == "local"
    with pytest.raises(ConfigError, match="kvstore.*must be one of device, local, dist_sync"):
        settings.config_for(tiny_dataset, kvstore="dist_async")
    args = build_parser().parse_args(["train", "--data", "x", "--kvstore", "dist_sync", "--amp"])
    assert (args.kvstore, args.amp) == ("dist_sync", True)


def test_amp_is_refused_on_cpu_contexts_and_accepted_on_gpu_ones(tiny_dataset, hotdog_home):
    import mxnet as mx

    from hotdog.train import prepare

    with pytest.raises(ConfigError, match=r"mixed precision \(amp\) needs GPU devices.*cpu\(0\)"):
        prepare(settings.config_for(tiny_dataset, amp=True, **TINY))
    cfg = settings.config_for(tiny_dataset, amp=True, **TINY)
    with pytest.raises(ConfigError, match=r"cpu\(0\), cpu\(1\)"):
        precision.check(cfg, [mx.cpu(0), mx.cpu(1)])
    precision.check(cfg, [mx.gpu(0), mx.gpu(1)])  # contexts can be named without a GPU
    precision.check(settings.config_for(tiny_dataset, **TINY), [mx.cpu(0), mx.cpu(1)])  # amp off: no check


def test_a_run_without_amp_after_one_with_amp_in_the_same_process_is_refused(tiny_dataset, monkeypatch):
    from mxnet.contrib import amp

    cfg = settings.config_for(tiny_dataset, **TINY)
    precision.init(cfg)  # amp never switched on: nothing to refuse
    monkeypatch.setattr(amp.amp, "_amp_initialized", True)  # as after amp.init() (irreversible)
    with pytest.raises(ConfigError, match="trained with mixed precision.*cannot be undone"):
        precision.init(cfg)


def test_gpu_requirements_are_the_cpu_pins_with_the_cuda_build_of_mxnet():
    def pins(name):
        lines = (REPO / name).read_text().splitlines()
        return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]

    cpu, gpu = pins("requirements.txt"), pins("requirements-gpu.txt")
    assert "mxnet==1.9.1" in cpu and "mxnet-cu117==1.9.1" in gpu
    assert [p for p in cpu if p != "mxnet==1.9.1"] == [p for p in gpu if p != "mxnet-cu117==1.9.1"]


def test_device_picker_lists_every_gpu_and_resolves_the_chosen_ones(monkeypatch):
    import mxnet as mx

    from hotdog import devices

    monkeypatch.setattr(devices, "num_gpus", lambda: 2)
    assert devices.available_devices() == ["gpu(0)", "gpu(1)"]
    assert devices.resolve_devices(None) == [mx.gpu(0), mx.gpu(1)]  # all GPUs by default
    assert devices.resolve_devices(["gpu(1)"]) == [mx.gpu(1)]
    with pytest.raises(ConfigError, match="does not exist"):
        devices.resolve_devices(["gpu(2)"])
    monkeypatch.setattr(devices, "num_gpus", lambda: 0)
    assert devices.available_devices() == ["cpu(0)"]


@pytest.mark.parametrize("gpus", [0, 2])
def test_train_page_picks_devices_and_offers_amp_only_with_gpus(hotdog_home, monkeypatch, gpus):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from conftest import make_dataset
    from hotdog import devices

    monkeypatch.delenv("HOTDOG_DATA", raising=False)
    make_dataset(hotdog_home / "data" / "tiny")
    monkeypatch.setattr(devices, "num_gpus", lambda: gpus)
    st.cache_resource.clear()  # ui.devices() is asked once per server
    try:
        at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=300)
        at.run()
        at.switch_page("pages/train.py").run()
        assert not at.exception, [e.value for e in at.exception]
        picker = next(w for w in at.multiselect if w.key == "devices")
        assert picker.options == (["gpu(0)", "gpu(1)"] if gpus else ["cpu(0)"])
        amp = [w for w in at.checkbox if w.key == "amp"]
        assert len(amp) == (1 if gpus else 0)
        if gpus:
            assert amp[0].label == settings.KNOBS["amp"].label and amp[0].value is False
    finally:
        st.cache_resource.clear()


def test_dist_kvstore_outside_a_launcher_is_refused_in_one_sentence(tiny_dataset, hotdog_home, monkeypatch):
    from hotdog.train import prepare

    for var in distributed.DMLC_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="needs the parameter-server environment.*python -m hotdog launch"):
        prepare(settings.config_for(tiny_dataset, kvstore="dist_sync", **TINY))
    for var, value in zip(distributed.DMLC_VARS, ("worker", "127.0.0.1", "9", "1", "2")):
        monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match="warm-up"):
        distributed.check(settings.config_for(tiny_dataset, kvstore="dist_sync", warmup_epochs=1, **TINY))
    monkeypatch.setenv("DMLC_ROLE", "server")
    with pytest.raises(ConfigError, match="only workers train"):
        distributed.check(settings.config_for(tiny_dataset, kvstore="dist_sync", **TINY))


def test_local_kvstore_reaches_the_trainer_and_trains_like_device(tiny_dataset, hotdog_home, monkeypatch):
    from mxnet import gluon

    seen = []
    real = gluon.Trainer

    def spy(*args, **kwargs):
        seen.append(kwargs.get("kvstore"))
        return real(*args, **kwargs)

    monkeypatch.setattr(gluon, "Trainer", spy)
    runs = {}
    for kv in ("device", "local"):
        cfg = settings.config_for(tiny_dataset, kvstore=kv, devices=["cpu(0)", "cpu(1)"], augment=False, **TINY)
        runs[kv] = _train(cfg, hotdog_home / "runs")
    assert seen == ["device", "local"]
    _assert_same_weights(_weights(runs["device"].run_dir), _weights(runs["local"].run_dir))


# ------------------------------------------------------------------------------- sharding

def test_shards_of_every_step_add_up_to_the_single_process_batch():
    from hotdog.train import _EpochBatches

    for n, batch, workers in ((16, 5, 2), (11, 4, 3), (9, 4, 3), (3, 8, 4)):
        single = list(_EpochBatches(n, batch, seed=7))
        parts = [list(distributed.ShardedBatches(_EpochBatches(n, batch, seed=7), r, workers))
                 for r in range(workers)]
        assert all(len(p) == len(single) for p in parts)  # every worker takes every step
        for step, full in enumerate(single):
            assert sorted(i for r in range(workers) for i in full[r::workers]) == sorted(full)
            for r in range(workers):  # an empty part is one padding item (its gradient is zeroed)
                assert parts[r][step] == (full[r::workers] or full[:1])
        if (n, batch, workers) == (9, 4, 3):
            assert parts[1][-1] == parts[2][-1] == single[-1] and len(single[-1]) == 1  # padded


def test_a_padding_part_zeroes_its_gradients_and_every_step_divides_by_the_global_batch():
    import mxnet as mx

    class P:
        grad_req = "write"

        def __init__(self):
            self.g = mx.nd.ones((3,))

        def list_grad(self):
            return [self.g]

    class T:
        _params = [P(), P()]

    sharded = distributed.ShardedBatches([[4, 1, 2], [0]], rank=1, num_workers=2)
    parts = list(sharded)  # the loader reads ahead: sizes queue up in order
    assert parts == [[1], [0]]
    assert sharded.step_size(T, 1) == 3 and all(p.g.sum().asscalar() == 3 for p in T._params)
    assert sharded.step_size(T, 1) == 1 and all(p.g.sum().asscalar() == 0 for p in T._params)


# ------------------------------------------------------------------------------- launcher

def test_a_distributed_trainer_is_on_the_servers_and_synced_before_its_first_step():
    """Gluon puts a Trainer's parameters on the kvstore lazily, in the first step(); in a
    dist_sync run a fast worker's first gradient push could then overtake a slow worker's
    initial pull (the workers diverged in about one run in six). make_trainer does it up
    front, waits for the pulls, then meets the other workers at a barrier."""
    import mxnet as mx
    from mxnet import gluon

    kv, calls = mx.kv.create("local"), []  # a local kvstore standing in for the servers
    for name in ("broadcast", "_barrier"):
        def record(*a, _name=name, _real=getattr(kv, name), **k):
            calls.append(_name)
            return _real(*a, **k)
        setattr(kv, name, record)
    dense = gluon.nn.Dense(3, in_units=4)
    dense.initialize(mx.init.Constant(0.5))
    cfg = settings.TrainConfig(data_root="x", kvstore="dist_sync")
    trainer = distributed.make_trainer(dense.collect_params(), {"learning_rate": 0.1}, cfg,
                                       distributed.Cluster(kv, rank=1, num_workers=2))
    assert trainer._kv_initialized and not trainer._params_to_init  # nothing left for step()
    assert trainer._kvstore is kv and trainer._update_on_kvstore is False
    assert calls == ["broadcast", "broadcast", "_barrier"]  # pulls, then the barrier
    no_cluster = distributed.make_trainer(dense.collect_params(), {"learning_rate": 0.1},
                                          settings.TrainConfig(data_root="x"), None)
    assert not no_cluster._kv_initialized  # a single process keeps Gluon's lazy path


def test_launch_command_line_is_checked():
    from hotdog.launch import Launcher, hotdog_command

    assert hotdog_command(["--", "train", "--data", "d"])[-4:] == ["--data", "d", "--kvstore", "dist_sync"]
    assert hotdog_command(["train", "--kvstore=dist_sync"]).count("--kvstore=dist_sync") == 1
    with pytest.raises(ConfigError, match="distributed kvstore"):
        hotdog_command(["train", "--kvstore", "device"])
    with pytest.raises(ConfigError, match="runs a `train` command"):
        hotdog_command(["sweep", "--data", "d"])
    with pytest.raises(ConfigError, match="workers must be between 1 and 64"):
        Launcher(["x"], workers=0)


def _worker_script(tmp_path: Path, epochs: int = 1, freeze: bool = False) -> Path:
    """A worker that trains without augmentation (random crops are drawn per process, so only
    an unaugmented run can equal a single-process one bit for bit); BatchNorm keeps its
    statistics (batch statistics would be per shard)."""
    script = tmp_path / "dist_worker.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from hotdog.settings import config_for
        from hotdog.train import prepare, train
        cfg = config_for(sys.argv[1], kvstore="dist_sync", augment=False, bn_mode="keep", freeze={freeze},
                         input_size=32, batch_size=5, epochs={epochs})
        train(cfg, runs_dir=sys.argv[2], prepared=prepare(cfg, check_memory=False))
    """))
    return script


def _train(cfg, runs):
    """train() without the memory check: the estimate refuses runs on a machine whose other jobs
    leave little memory, and these runs are tiny."""
    from hotdog.train import prepare, train

    return train(cfg, runs_dir=runs, prepared=prepare(cfg, check_memory=False))


def _single_process(tiny_dataset, runs, **kw):
    cfg = settings.config_for(tiny_dataset, augment=False, bn_mode="keep", input_size=32, batch_size=5, **kw)
    return _train(cfg, runs)


def test_two_workers_full_finetune_equal_one_process(tiny_dataset, hotdog_home, tmp_path):
    from hotdog.launch import Launcher

    runs = tmp_path / "runs"
    single = _single_process(tiny_dataset, runs, epochs=1)
    script = _worker_script(tmp_path)
    result = Launcher([PY, str(script), str(tiny_dataset), str(tmp_path / "dist-runs")], workers=2, servers=1,
                      timeout=300, logs_root=tmp_path).run()
    assert (result.status, result.exit_code) == ("finished", 0), result.message
    assert [p.name for p in (tmp_path / "dist-runs").iterdir()] == [Path(result.run_dir).name]  # rank 0 only
    with open(Path(result.run_dir) / "config.json") as f:
        assert json.load(f)["kvstore"] == "dist_sync"
    dist_w, single_w = _weights(result.run_dir), _weights(single.run_dir)
    _assert_same_weights(dist_w, single_w)
    # The comparison can tell runs apart: another batch order ends elsewhere.
    other = _weights(_single_process(tiny_dataset, runs, epochs=1, seed=1).run_dir)
    assert max(float(np.max(np.abs(other[k] - single_w[k]))) for k in other) > 1e-4


def test_launch_cli_frozen_cached_run_equals_one_process(tiny_dataset, hotdog_home, tmp_path):
    """The CLI path (python -m hotdog launch -- train ...): the frozen, cached-feature loop."""
    from hotdog import memory

    cfg = settings.config_for(tiny_dataset, freeze=True, bn_mode="keep", input_size=32, batch_size=5, epochs=2)
    plan = memory.plan(cfg, 24)
    if plan.decision == "refuse":  # the CLI refuses runs the machine cannot hold right now
        pytest.skip(f"the machine's other jobs leave too little memory: {plan.message}")
    single = _single_process(tiny_dataset, tmp_path / "runs", epochs=2, freeze=True)
    cmd = [PY, "-m", "hotdog", "launch", "--workers", "2", "--servers", "1", "--timeout", "300", "--json", "--",
           "train", "--data", str(tiny_dataset), "--freeze", "--input-size", "32", "--batch-size", "5",
           "--epochs", "2", "--bn-mode", "keep", "--runs-dir", str(tmp_path / "dist-runs")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HOTDOG_HOME": str(hotdog_home)})
    if proc.returncode and "This run needs about" in proc.stderr:  # other jobs took the memory meanwhile
        pytest.skip("a worker's memory check refused the run: " + proc.stderr.split("This run needs about")[1][:120])
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["status"] == "finished" and doc["train"]["status"] == "finished"
    assert doc["train"]["run_id"] == doc["run_id"] and len(doc["train"]["epochs"]) == 2
    _assert_same_weights(_weights(doc["run_dir"]), _weights(single.run_dir))


def test_workers_started_with_different_settings_refuse_instead_of_hanging(tiny_dataset, hotdog_home, tmp_path):
    from hotdog.launch import Launcher

    script = tmp_path / "mismatch.py"
    # The first worker to claim the marker file trains 1 epoch, the other 2: one would wait
    # forever at the second epoch's first step for a push that never comes.
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from hotdog.settings import config_for
        from hotdog.train import prepare, train
        try:
            os.close(os.open({str(tmp_path / "claimed")!r}, os.O_CREAT | os.O_EXCL))
            epochs = 1
        except FileExistsError:
            epochs = 2
        cfg = config_for(sys.argv[1], kvstore="dist_sync", freeze=True, input_size=32, batch_size=5, epochs=epochs)
        train(cfg, runs_dir=sys.argv[2], prepared=prepare(cfg, check_memory=False))
    """))
    result = Launcher([PY, str(script), str(tiny_dataset), str(tmp_path / "dist-runs")], workers=2, servers=1,
                      timeout=300, logs_root=tmp_path).run()
    assert (result.status, result.exit_code) == ("failed", 1)
    assert "exited with status 1" in result.message
    logs = " ".join(p.read_text() for p in Path(result.logs).glob("worker-*.log"))
    assert "ConfigError: the 2 workers were not started with the same settings" in logs
    assert not (tmp_path / "dist-runs").exists() or not any((tmp_path / "dist-runs").iterdir())


@pytest.mark.parametrize("who", ["other", "recorder"])
def test_a_worker_killed_mid_run_ends_the_run_as_failed(tiny_dataset, hotdog_home, tmp_path, who):
    """Killing the other worker leaves rank 0 blocked in its next gradient exchange; killing
    rank 0 leaves its run 'running' in the store: either way the launcher ends everything."""
    from hotdog.launch import Launcher
    from hotdog.runs import read_metrics, read_status

    # Frozen, cached features: after one extraction each step is a small head update, so the
    # first epoch comes quickly even on a loaded machine and every later step exchanges gradients.
    script = _worker_script(tmp_path, epochs=1000, freeze=True)
    launcher = Launcher([PY, str(script), str(tiny_dataset), str(tmp_path / "dist-runs")], workers=2, servers=1,
                        timeout=600, grace=5.0, logs_root=tmp_path)
    launcher.start()
    results = []
    waiter = threading.Thread(target=lambda: results.append(launcher.wait()), daemon=True)
    waiter.start()
    try:
        announced = _wait_for(lambda: distributed.read_announced(launcher.run_file), 300, "rank 0's run")
        run_dir = Path(announced["run_dir"])
        _wait_for(lambda: read_metrics(run_dir)[0] or any(p.poll() is not None for p in launcher.workers), 300,
                  "the first epoch")  # mid-run: training is on
        assert all(p.poll() is None for p in launcher.workers), "a worker ended before the test killed one"
        victim = next(w for w in launcher.workers if (w.pid == announced["pid"]) == (who == "recorder"))
        os.kill(victim.pid, signal.SIGKILL)
        waiter.join(timeout=120)
        assert not waiter.is_alive(), "the launcher hung after a worker was killed"
    finally:
        if waiter.is_alive():
            launcher.kill_all()
    result = results[0]
    assert result.status == "failed" and result.exit_code == 1
    assert f"pid {victim.pid}) was killed by SIGKILL" in result.message
    assert all(p.poll() is not None for p in launcher._all())  # nothing left running
    status = read_status(run_dir)
    assert status["state"] == "failed" and "distributed run failed" in status["message"]
    assert 1 <= len(read_metrics(run_dir)[0]) < 1000
