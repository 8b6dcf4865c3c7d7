"""Frozen training through the on-disk feature cache: same head as without it, no backbone
pass on a rerun, only changed photos recomputed (real efficientnet_lite0 at 32 px)."""

from __future__ import annotations

from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from hotdog import featcache
from hotdog import train as train_mod
from hotdog.settings import TrainConfig

from conftest import make_image

SMALL = dict(input_size=32, batch_size=6, epochs=2, freeze=True)


def run(cfg, tmp_path):
    # The memory check is the app's (other jobs on a shared machine can make it refuse).
    return train_mod.train(cfg, runs_dir=tmp_path / "runs", prepared=train_mod.prepare(cfg, check_memory=False))


def head(run_dir) -> dict:
    return {k: v.asnumpy() for k, v in mx.nd.load(str(Path(run_dir) / "model.params")).items()
            if k.startswith("output")}


@pytest.fixture
def counted(monkeypatch):
    """Images that went through the backbone, per train() call."""
    seen: list[int] = []
    real = train_mod._Fit.extract

    def extract(self, features, ds, ctxs, batch_size=64):
        seen.append(len(ds))
        return real(self, features, ds, ctxs, batch_size)

    monkeypatch.setattr(train_mod._Fit, "extract", extract)
    return seen


@pytest.mark.parametrize("views", [0, 1])
def test_rerun_reads_the_cache_and_trains_the_same_head(tiny_dataset, tmp_path, monkeypatch, counted, views):
    cfg = TrainConfig(str(tiny_dataset), augment_views=views, **SMALL)
    cold = run(cfg, tmp_path)
    assert counted == [16] + [16] * views + [8]  # train split, its augmented views, test split
    assert featcache.open_store().stats().entries == 2 + (1 if views else 0)
    counted.clear()
    warm = run(cfg, tmp_path)
    assert counted == []  # nothing decoded, no backbone pass
    monkeypatch.setenv(featcache.CAP_ENV, "0")  # and the reference: no disk cache at all
    off = run(cfg, tmp_path)
    assert counted == [16] + [16] * views + [8]
    hc, hw, ho = head(cold.run_dir), head(warm.run_dir), head(off.run_dir)
    for k in hc:
        np.testing.assert_array_equal(hw[k], hc[k])
        np.testing.assert_array_equal(ho[k], hc[k])
    assert [e.to_dict() | {"seconds": 0} for e in warm.epochs] == [e.to_dict() | {"seconds": 0} for e in cold.epochs]


def test_changed_and_unreadable_photos(tiny_dataset, tmp_path, counted):
    cfg = TrainConfig(str(tiny_dataset), **SMALL)
    run(cfg, tmp_path)
    counted.clear()
    make_image(tiny_dataset / "train" / "hotdog" / "003.png", (250, 10, 10), seed=777)  # one photo edited
    run(cfg, tmp_path)
    assert counted == [1]  # only that photo went through the backbone
    counted.clear()
    (tiny_dataset / "train" / "hotdog" / "004.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)  # damaged
    res = run(cfg, tmp_path)
    assert res.status == "finished"


def test_warm_up_uses_the_cache(tiny_dataset, tmp_path, counted):
    cfg = TrainConfig(str(tiny_dataset), input_size=32, batch_size=6, epochs=2, warmup_epochs=1)
    first = run(cfg, tmp_path)
    assert counted == [16, 8]
    counted.clear()
    second = run(cfg, tmp_path)
    assert counted == []
    assert [e.train_loss for e in second.epochs] == pytest.approx([e.train_loss for e in first.epochs], rel=1e-6)
