"""The one settings table: presets, resolution, validation, and the CLI/app agreement."""

from __future__ import annotations

import math

import pytest

from hotdog import settings
from hotdog.errors import ConfigError, HotdogError
from hotdog.settings import KNOBS, TrainConfig, config_for, preset_values


def test_default_config_is_the_stable_preset_resolved():
    c = TrainConfig("x")
    assert (c.preset, c.mode, c.source) == ("stable", "finetune", "efficientnet_lite0")
    assert (c.lr, c.lr_mult, c.wd, c.batch_size, c.epochs) == (0.001, 10.0, 1e-3, 32, 5)
    assert c.bn_mode == "keep" and c.init_output_from_imagenet is True
    assert all(getattr(c, k) is not None for k in settings.PRESET_KNOBS)


def test_chapter_preset_is_the_chapters_recipe():
    ch = config_for("d", preset="chapter")
    assert (ch.lr, ch.lr_mult, ch.batch_size, ch.bn_mode, ch.wd, ch.init_output_from_imagenet) == \
        (0.01, 10.0, 128, "update", 1e-3, False)
    assert config_for("d", preset="chapter", mode="scratch").lr == 0.1


def test_per_source_values_and_scratch():
    assert TrainConfig("x", source="resnet18_v2").lr == 0.01  # the chapter's model is stable at 0.01
    s = TrainConfig("x", mode="scratch", freeze=True, init_output_from_imagenet=True, warmup_epochs=2)
    # a scratch run has nothing pretrained: the fine-tuning knobs say what really happens
    assert (s.lr, s.freeze, s.init_output_from_imagenet, s.warmup_epochs, s.bn_mode, s.lr_mult) == \
        (0.1, False, False, 0, "update", 1.0)


def test_explicit_values_win_and_none_means_preset():
    c = config_for("d", preset="chapter", lr=0.003, batch_size=None)
    assert c.lr == 0.003 and c.batch_size == 128


def test_round_trip_through_json_dict():
    c = TrainConfig("x", preset="chapter", seed=3)
    assert TrainConfig.from_dict({**c.to_dict(), "unknown_future_key": 1}) == c
    with pytest.raises(ConfigError):
        TrainConfig.from_dict([])


@pytest.mark.parametrize("bad", [
    dict(mode="nope"), dict(bn_mode="x"), dict(lr=-1.0), dict(lr=0.0), dict(lr=float("nan")),
    dict(lr=float("inf")), dict(lr_mult=float("inf")), dict(lr_mult=0), dict(wd=float("nan")),
    dict(wd=float("inf")), dict(wd=-1e-3), dict(batch_size=0), dict(batch_size=2.5), dict(epochs=0),
    dict(input_size=2), dict(input_size=10000), dict(seed=-1), dict(augment_views=-1),
    dict(warmup_epochs=6), dict(freeze="yes"), dict(lr="fast"), dict(batch_size=True),
    dict(preset="mine"), dict(source="vgg"), dict(devices=[1, 2]), dict(num_workers=-2),
])
def test_every_knob_is_validated(bad):
    with pytest.raises(ConfigError):
        TrainConfig("x", **bad)


def test_error_messages_are_sentences():
    with pytest.raises(ConfigError, match="learning rate must be a finite number"):
        TrainConfig("x", lr=math.inf)
    with pytest.raises(ConfigError, match="image size must be at most 1024"):
        TrainConfig("x", input_size=10000)
    assert issubclass(ConfigError, HotdogError)


def test_table_covers_every_config_field():
    import dataclasses

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(KNOBS) <= fields
    # every field is either a knob or part of what a run is (data, source, mode, preset, devices,
    # the extra folders it is scored on)
    assert fields - set(KNOBS) == {"data_root", "source", "mode", "preset", "devices", "augment", "also_eval"}
    for preset in settings.PRESETS:
        for mode in settings.MODES:
            assert set(preset_values(preset, mode)) == set(settings.PRESET_KNOBS)


def test_sources_agree_with_the_model_registry():
    from hotdog import models

    assert tuple(models.list_sources()) == settings.SOURCES and models.DEFAULT_SOURCE == settings.DEFAULT_SOURCE


def test_cli_defaults_are_the_table():
    """`python -m hotdog train --data D` with no other flag builds the machine's default preset."""
    from hotdog.cli import build_parser
    from hotdog.commands.train import _config_from_args

    c = _config_from_args(build_parser().parse_args(["train", "--data", "D"]))
    assert c == config_for("D", preset=settings.default_preset())
    c = _config_from_args(build_parser().parse_args(["train", "--data", "D", "--devices", "gpu(0)"]))
    assert c.preset == "stable" and c.freeze is False
    c = _config_from_args(build_parser().parse_args(["train", "--data", "D", "--preset", "chapter", "--lr", "0.02"]))
    assert c == config_for("D", preset="chapter", lr=0.02)
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "stable 0.001" in help_text and "chapter 128" in help_text.replace("\n", " ").replace("  ", " ")


def test_quick_preset_is_frozen_cached_features_with_the_imagenet_head():
    q = config_for("d", preset="quick")
    st = config_for("d", preset="stable")
    assert (q.freeze, q.feature_cache, q.uses_feature_cache, q.init_output_from_imagenet) == (True, True, True, True)
    # the stable preset's learning rates and batch, only the features frozen
    assert (q.lr, q.lr_mult, q.wd, q.batch_size, q.epochs, q.bn_mode) == \
        (st.lr, st.lr_mult, st.wd, st.batch_size, st.epochs, st.bn_mode)
    assert config_for("d", preset="quick", freeze=False).freeze is False  # explicit values win
    assert config_for("d", preset="quick", mode="scratch").freeze is False
    assert settings.PRESET_TITLES["quick"] == "Quick" and "quick" in settings.PRESET_HELP
    assert "quick True" in settings.describe_default("freeze")


def test_cli_preset_quick():
    from hotdog.cli import build_parser
    from hotdog.commands.train import _config_from_args

    c = _config_from_args(build_parser().parse_args(["train", "--data", "D", "--preset", "quick"]))
    assert c == config_for("D", preset="quick") and c.uses_feature_cache
    c = _config_from_args(build_parser().parse_args(["train", "--data", "D", "--preset", "quick", "--no-freeze"]))
    assert c.freeze is False


@pytest.mark.parametrize("devices, preset", [
    (["cpu(0)"], "quick"), (["cpu(0)", "cpu(1)"], "quick"), ("cpu(0),cpu(1)", "quick"),
    (["gpu(0)"], "stable"), ("gpu(0),gpu(1)", "stable"), (["cpu(0)", "gpu(0)"], "stable"),
])
def test_default_preset_depends_on_the_devices(devices, preset):
    assert settings.default_preset(devices) == preset


def test_default_preset_without_devices_asks_for_gpus(monkeypatch):
    from hotdog import devices

    monkeypatch.setattr(devices, "num_gpus", lambda: 0)
    assert settings.default_preset() == "quick"
    monkeypatch.setattr(devices, "num_gpus", lambda: 2)
    assert settings.default_preset() == "stable"
