"""Gradient accumulation (``micro_batch``): a batch run as micro-batches is the same SGD step."""

from __future__ import annotations

from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from hotdog.errors import ConfigError
from hotdog.settings import TrainConfig, config_for
from hotdog.train import train

from conftest import make_dataset


def _weights(run_dir) -> dict:
    return {k: v.asnumpy() for k, v in mx.nd.load(str(run_dir / "model.params")).items()}


@pytest.fixture
def set128(tmp_path):
    # 128 training photos of 32 px: one batch of 128 is exactly one SGD step.
    return make_dataset(tmp_path / "d128", per_class={"train": 64, "test": 2}, size=(32, 32))


def test_batch_128_as_4_x_32_is_the_same_step(set128, tmp_path):
    common = dict(input_size=32, batch_size=128, epochs=1, bn_mode="keep", augment=False, lr=0.05,
                  init_output_from_imagenet=False)
    runs = tmp_path / "runs"
    plain = train(TrainConfig(str(set128), micro_batch=128, **common), runs_dir=runs)
    accum = train(TrainConfig(str(set128), micro_batch=32, **common), runs_dir=runs)
    assert plain.status == accum.status == "finished"
    a, b = _weights(Path(plain.run_dir)), _weights(Path(accum.run_dir))
    assert a.keys() == b.keys()
    moved = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert moved <= 1e-5, f"largest weight difference {moved:g}"
    # The step really changed the weights (the comparison is not between two untouched copies).
    start = train(TrainConfig(str(set128), micro_batch=128, **{**common, "lr": 1e-12}), runs_dir=runs)
    c = _weights(Path(start.run_dir))
    assert max(float(np.abs(a[k] - c[k]).max()) for k in a) > 1e-4
    assert abs(plain.epochs[0].train_loss - accum.epochs[0].train_loss) < 1e-5


def test_a_remainder_is_handled_exactly(tiny_dataset, tmp_path):
    # 16 photos, batch 16 as 5 + 5 + 5 + 1
    common = dict(input_size=32, batch_size=16, epochs=1, bn_mode="keep", augment=False, lr=0.05)
    runs = tmp_path / "runs"

    a = _weights(Path(train(TrainConfig(str(tiny_dataset), **common), runs_dir=runs).run_dir))
    b = _weights(Path(train(TrainConfig(str(tiny_dataset), micro_batch=5, **common), runs_dir=runs).run_dir))
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-5


def test_micro_batch_is_validated_by_the_settings_table(tmp_path):
    assert TrainConfig(str(tmp_path), batch_size=32).micro_batch is None  # auto until prepare()
    assert config_for(tmp_path, preset="chapter", micro_batch=32).micro_batch == 32
    for bad, words in ((0, "at least 1"), (1.5, "whole number"), ("x", "a number"), (64, "cannot exceed")):
        with pytest.raises(ConfigError, match=words):
            TrainConfig(str(tmp_path), batch_size=32, micro_batch=bad)
