"""Training engine on tiny generated data: the real efficientnet_lite0 at 32 px, CPU only."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from hotdog.callbacks import BatchProgress, Callback, EpochMetrics
from hotdog.devices import resolve_devices
from hotdog.errors import ConfigError, DatasetError, RunStoreError
from hotdog.predict import Predictor, evaluate
from hotdog.runs import RunStore
from hotdog.settings import TrainConfig
from hotdog.train import train

SMALL = dict(input_size=32, batch_size=6, epochs=2)


def cfg(root, **kw) -> TrainConfig:
    return TrainConfig(str(root), **{**SMALL, **kw})


def params_of(run_dir) -> dict:
    return {k: v.asnumpy() for k, v in mx.nd.load(str(Path(run_dir) / "model.params")).items()}


def test_devices():
    assert resolve_devices(None) == [mx.cpu()]  # no GPU on the test machine
    assert resolve_devices(["cpu(0)", "cpu(1)"]) == [mx.cpu(0), mx.cpu(1)]
    with pytest.raises(ConfigError):
        resolve_devices(["tpu(0)"])


def test_finetune_records_run_and_callbacks(tiny_dataset, tmp_path):
    batches, epochs = [], []
    res = train(cfg(tiny_dataset), runs_dir=tmp_path, on_batch=batches.append, on_epoch=epochs.append)
    assert res.status == "finished" and len(res.epochs) == 2 and res.test_acc == res.epochs[-1].test_acc
    assert all(isinstance(b, BatchProgress) for b in batches) and all(isinstance(e, EpochMetrics) for e in epochs)
    # 16 images / batch 6 -> 3 batches per epoch (the last one partial)
    assert [(b.epoch, b.batch, b.batches) for b in batches if b.epoch == 1][-1] == (1, 3, 3)
    assert all(b.images_per_sec >= 0 for b in batches) and batches[-1].eta_seconds == 0
    d = Path(res.run_dir)
    assert sorted(p.name for p in d.iterdir()) == [".sources.lock", "config.json", "metrics.jsonl", "model.json",
                                                   "model.params", "sources.json", "status.json", "wise.json"]
    model = json.loads((d / "model.json").read_text())
    assert model["source"] == "efficientnet_lite0" and model["input_size"] == 32
    assert model["classes"] == ["hotdog", "not-hotdog"]  # the one record of the run's classes
    rec = RunStore(tmp_path).load(res.run_id)
    assert rec.state == "finished" and [m["epoch"] for m in rec.metrics] == [1, 2]
    assert rec.metrics[1]["test_acc"] == res.epochs[1].test_acc
    # config.json holds every resolved value, the runtime ones included
    recorded = TrainConfig.from_dict(rec.config)
    assert recorded.lr == 0.001 and recorded.batch_size == 6 and recorded.devices == ["cpu(0)"]
    assert recorded.input_size == 32 and recorded.num_workers == 0
    assert Path(recorded.data_root).is_absolute()
    assert res.to_dict()["epochs"][0].keys() == {"epoch", "train_loss", "train_acc", "test_acc", "seconds"}


def test_same_seed_same_metrics(tiny_dataset, tmp_path):
    a = train(cfg(tiny_dataset, epochs=2), runs_dir=tmp_path)
    b = train(cfg(tiny_dataset, epochs=2), runs_dir=tmp_path)
    c = train(cfg(tiny_dataset, epochs=2, seed=7), runs_dir=tmp_path)
    strip = lambda r: [(e.train_loss, e.train_acc, e.test_acc) for e in r.epochs]  # noqa: E731
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)
    pa, pb = params_of(a.run_dir), params_of(b.run_dir)
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)


def test_scratch_and_bn_update_run(tiny_dataset, tmp_path):
    for kw in (dict(mode="scratch"), dict(bn_mode="update")):
        res = train(cfg(tiny_dataset, epochs=1, **kw), runs_dir=tmp_path)
        assert res.status == "finished" and math.isfinite(res.epochs[0].train_loss)


def test_data_parallel_two_cpu_contexts_matches_one(tiny_dataset, tmp_path):
    one = train(cfg(tiny_dataset, epochs=1), runs_dir=tmp_path)
    two = train(cfg(tiny_dataset, epochs=1, devices=["cpu(0)", "cpu(1)"]), runs_dir=tmp_path)
    assert two.status == "finished"
    # Gradients of the shards are summed, so one step over two devices is one step over one.
    assert two.epochs[0].train_loss == pytest.approx(one.epochs[0].train_loss, rel=1e-4)
    p1, p2 = params_of(one.run_dir), params_of(two.run_dir)
    assert max(float(np.abs(p1[k] - p2[k]).max()) for k in p1) < 1e-4


def test_fewer_than_five_batches_and_batch_smaller_than_devices(tiny_dataset, tmp_path):
    # One batch per epoch (the chapter's num_batches // 5 would be 0), and a last batch of
    # one image split over two devices.
    assert train(cfg(tiny_dataset, batch_size=64, epochs=1), runs_dir=tmp_path).status == "finished"
    res = train(cfg(tiny_dataset, batch_size=5, epochs=1, devices=["cpu(0)", "cpu(1)"]), runs_dir=tmp_path)
    assert res.status == "finished"


def test_stop_mid_epoch_keeps_completed_epochs(tiny_dataset, tmp_path):
    stop = threading.Event()

    def on_batch(p):
        if p.epoch == 2 and p.batch == 1:
            stop.set()

    res = train(cfg(tiny_dataset, epochs=4), runs_dir=tmp_path, on_batch=on_batch, stop_event=stop)
    assert res.status == "stopped" and [e.epoch for e in res.epochs] == [1]
    rec = RunStore(tmp_path).load(res.run_id)
    assert rec.state == "stopped" and len(rec.metrics) == 1 and "1 completed epoch" in rec.status["message"]
    assert "weights after epoch 1 are kept" in rec.status["message"]
    assert (Path(res.run_dir) / "model.params").is_file()


def test_stop_before_any_epoch_keeps_nothing_and_says_so(tiny_dataset, tmp_path):
    stop = threading.Event()
    stop.set()
    res = train(cfg(tiny_dataset, epochs=2), runs_dir=tmp_path, stop_event=stop)
    assert res.status == "stopped" and res.epochs == []
    assert "no epoch was completed, so no weights were saved" in res.message
    assert not (Path(res.run_dir) / "model.params").exists()


def test_callbacks_see_every_event_in_order_and_are_timed(tiny_dataset, tmp_path):
    events = []

    class Spy(Callback):
        def before_fit(self, fit):
            events.append("before_fit")

        def after_epoch(self, fit, m):
            events.append(f"epoch {m.epoch}")

        def after_fit(self, fit, result):
            events.append(f"after_fit {result.status}")

    res = train(cfg(tiny_dataset, epochs=2), runs_dir=tmp_path, callbacks=[Spy()])
    assert events == ["before_fit", "epoch 1", "epoch 2", "after_fit finished"]
    assert {"RunRecorder", "TerminateOnNaN", "Spy"} <= set(res.callback_seconds)
    assert all(v >= 0 for v in res.callback_seconds.values())


def test_a_callback_can_cancel_the_run(tiny_dataset, tmp_path):
    from hotdog.callbacks import CancelFit

    class StopAfterOne(Callback):
        def after_epoch(self, fit, m):
            raise CancelFit()

    res = train(cfg(tiny_dataset, epochs=3), runs_dir=tmp_path, callbacks=[StopAfterOne()])
    assert res.status == "stopped" and len(res.epochs) == 1
    assert RunStore(tmp_path).load(res.run_id).state == "stopped"


def test_divergence_names_learning_rate(tiny_dataset, tmp_path):
    res = train(cfg(tiny_dataset, lr=1e6, epochs=3), runs_dir=tmp_path)
    assert res.status == "diverged"
    assert "learning rate 1e+06" in res.message and "non-finite" in res.message
    assert "output layer 1e+07" in res.message  # the head's lr is x10
    rec = RunStore(tmp_path).load(res.run_id)
    assert rec.state == "diverged" and rec.status["message"] == res.message
    assert not (Path(res.run_dir) / "model.params").exists()  # NaN weights are not kept
    with pytest.raises(RunStoreError, match="no saved model"):
        Predictor.from_run(res.run_dir)


def test_feature_cache_agrees_with_plain_frozen_loop(tiny_dataset, tmp_path):
    kw = dict(freeze=True, augment=False, epochs=3, batch_size=5)
    cached = train(cfg(tiny_dataset, **kw), runs_dir=tmp_path)
    plain = train(cfg(tiny_dataset, feature_cache=False, **kw), runs_dir=tmp_path)
    pc, pp = params_of(cached.run_dir), params_of(plain.run_dir)
    for k in pc:
        if k.startswith("output"):
            np.testing.assert_allclose(pc[k], pp[k], atol=1e-4)
        else:  # the backbone did not move in either path
            np.testing.assert_array_equal(pc[k], pp[k])
    for a, b in zip(cached.epochs, plain.epochs):
        assert a.train_loss == pytest.approx(b.train_loss, abs=1e-4)
        assert (a.train_acc, a.test_acc) == (b.train_acc, b.test_acc)


def test_feature_cache_with_augmented_views(tiny_dataset, tmp_path):
    events = []
    res = train(cfg(tiny_dataset, freeze=True, augment_views=2), runs_dir=tmp_path, on_batch=events.append)
    assert res.status == "finished"
    # Features are extracted four times (the train view, 2 augmented views, the test split),
    # each extraction reporting its own batches up to the last; then only the head trains.
    cache = [p for p in events if p.phase == "cache"]
    assert [p.batch for p in cache if p.batch == p.batches] == [1, 1, 1, 1]  # 16 or 8 images, batches of 64
    assert events.index(cache[-1]) < min(i for i, p in enumerate(events) if p.phase == "train")
    plain = train(cfg(tiny_dataset, freeze=True), runs_dir=tmp_path)
    assert params_of(res.run_dir)["output.weight"].tolist() != params_of(plain.run_dir)["output.weight"].tolist()


def test_frozen_backbone_does_not_move(tiny_dataset, tmp_path):
    from hotdog import models

    res = train(cfg(tiny_dataset, freeze=True, feature_cache=False), runs_dir=tmp_path)
    src = models.source_weights("efficientnet_lite0")
    got = params_of(res.run_dir)
    assert all(np.array_equal(got[k], src[k]) for k in got if k.startswith("features"))


def test_bad_data_folder_creates_no_run(tmp_path):
    with pytest.raises(DatasetError):
        train(TrainConfig(str(tmp_path / "missing"), **SMALL), runs_dir=tmp_path / "runs")
    assert RunStore(tmp_path / "runs").list() == []


def test_predictor_and_evaluate(tiny_dataset, tmp_path):
    res = train(cfg(tiny_dataset, epochs=2, batch_size=8), runs_dir=tmp_path)
    pred = Predictor.from_run(res.run_dir)
    assert pred.classes == ["hotdog", "not-hotdog"] and pred.preprocess.input_size == 32
    img = tiny_dataset / "test" / "hotdog" / "000.png"
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    out = pred.predict([img, bad, img.read_bytes(), b"\x00" * 10], names=[None, None, "upload.png"])
    assert [o.ok for o in out] == [True, False, True, False]
    assert out[0].probabilities == pytest.approx(out[2].probabilities, abs=1e-5)
    assert sum(out[0].probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert out[0].to_dict().keys() == {"path", "probabilities", "label"}
    assert out[1].to_dict().keys() == {"path", "error"} and out[2].name == "upload.png"
    # Same numbers as the training loop's own test accuracy (same preprocessing).
    rep = evaluate(res.run_dir, tiny_dataset / "test")
    assert rep.n == 8 and rep.accuracy == pytest.approx(res.test_acc)
    assert np.array(rep.confusion).sum() == 8 and len(rep.misclassified) == round(8 * (1 - rep.accuracy))
    assert set(rep.per_class) == {"hotdog", "not-hotdog"}
    assert evaluate(res.run_dir, tiny_dataset).n == 8  # a d2l root: its test/ split
    with pytest.raises(DatasetError, match="not classes of this run"):
        evaluate(res.run_dir, _odd_split(tmp_path), predictor=pred)


def _odd_split(tmp_path):
    from conftest import make_image

    make_image(tmp_path / "odd" / "cat" / "a.png", (1, 2, 3))
    return tmp_path / "odd"


def test_error_inside_the_loop_marks_run_failed(tiny_dataset, tmp_path):
    def boom(p):
        raise RuntimeError("callback exploded")

    with pytest.raises(RuntimeError):
        train(cfg(tiny_dataset), runs_dir=tmp_path / "runs", on_batch=boom)
    [s] = RunStore(tmp_path / "runs").list()
    assert s.status == "failed" and "callback exploded" in s.message


def test_head_warmup_then_full_finetune(tiny_dataset, tmp_path):
    phases = []
    res = train(cfg(tiny_dataset, epochs=3, warmup_epochs=1), runs_dir=tmp_path,
                on_batch=lambda p: phases.append((p.phase, p.epoch)))
    assert res.status == "finished" and [e.epoch for e in res.epochs] == [1, 2, 3]
    # after the start-up steps (loading the model, decoding photos, ...) the warm-up caches features
    loop = [p for p in phases if p[0] in ("cache", "train")]
    assert loop[0] == ("cache", 0) and ("train", 1) in phases and ("train", 3) in phases
    assert all(p[0] in ("load", "convert", "head", "decode") for p in phases[:phases.index(loop[0])])
    from hotdog import models

    src = models.source_weights("efficientnet_lite0")
    got = params_of(res.run_dir)
    assert any(not np.array_equal(got[k], src[k]) for k in got if k.startswith("features"))


def test_full_disk_while_saving_weights_fails_the_run_cleanly(tiny_dataset, tmp_path, monkeypatch):
    import errno

    from mxnet import gluon

    def full_disk(self, filename, *a, **k):
        with open(filename, "wb") as fh:
            fh.write(b"\0" * 1000)  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gluon.Block, "save_parameters", full_disk)
    with pytest.raises(RunStoreError, match="cannot save the weights of run .*No space left"):
        train(cfg(tiny_dataset, epochs=1), runs_dir=tmp_path / "runs")
    [s] = RunStore(tmp_path / "runs").list()
    assert s.status == "failed" and "No space left" in s.message
    d = Path(s.run_dir)
    # no temp file (the robustness check's results come before the save: hotdog.robust)
    assert sorted(p.name for p in d.iterdir()) == [".sources.lock", "config.json", "metrics.jsonl", "sources.json",
                                                   "status.json", "wise.json"]


def test_config_json_records_the_data_fingerprint_and_drift_is_reported(tiny_dataset, tmp_path):
    from conftest import make_image

    from hotdog.train import data_drift

    res = train(cfg(tiny_dataset, epochs=1), runs_dir=tmp_path / "runs")
    config = RunStore(tmp_path / "runs").load(res.run_id).config
    assert config["data_fingerprint"].startswith("sha256:")
    assert data_drift(config) is None
    make_image(tiny_dataset / "train" / "hotdog" / "new.png", (9, 9, 9))
    assert "has changed since this run was trained" in data_drift(config)
    import shutil

    shutil.rmtree(tiny_dataset)
    assert "is gone" in data_drift(config)
    assert data_drift({k: v for k, v in config.items() if k != "data_fingerprint"}) is None  # older runs
