"""The memory estimate and its decision: proceed, pick a micro-batch, warn, refuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotdog import memory
from hotdog.errors import MemoryRefusedError
from hotdog.memory import Available, plan
from hotdog.settings import config_for


def chapter(tmp_path, **kw):
    return config_for(tmp_path, preset="chapter", input_size=224, **kw)  # batch 128, all layers


def test_a_large_machine_proceeds_with_the_whole_batch(tmp_path):
    p = plan(chapter(tmp_path), 250, Available(32000, "system"))
    assert p.decision == "proceed" and p.micro_batch == 128 and not p.accumulating
    assert 19000 < p.estimate_mb < 21000  # measured: 20074 MB
    assert "19.7 GB" in p.message and "31.2 GB available (system)" in p.message
    # on this 24 GB machine the chapter's batch no longer fits whole: micro-batches, same step
    assert plan(chapter(tmp_path), 250, Available(23000, "system")).accumulating


def test_a_10_gb_limit_chooses_accumulation(tmp_path):
    p = plan(chapter(tmp_path), 250, Available(9800, "cgroup limit 10.0 GB", 10240))
    assert p.decision == "proceed" and p.micro_batch == 32 and p.accumulating
    assert "4 micro-batches of 32" in p.message and "cgroup limit 10.0 GB" in p.message
    assert p.estimate_mb < 0.8 * 9800


def test_an_explicit_micro_batch_is_kept_and_warned_or_refused(tmp_path):
    cfg = chapter(tmp_path, micro_batch=64)  # ~10.8 GB
    assert plan(cfg, 250, Available(20000, "system")).decision == "proceed"
    warn = plan(cfg, 250, Available(12500, "system"))
    assert warn.decision == "warn" and warn.micro_batch == 64 and "close to" in warn.message
    refuse = plan(cfg, 250, Available(9000, "system"))
    assert refuse.decision == "refuse" and refuse.micro_batch == 64
    assert "needs about 10.8 GB" in refuse.message and "8.8 GB available" in refuse.message
    assert "set the micro-batch to 32 or less" in refuse.message


def test_nothing_fits_refuses_with_what_to_change(tmp_path):
    p = plan(chapter(tmp_path), 250, Available(1200, "system"))
    assert p.decision == "refuse" and "freeze the features or use a smaller image size" in p.message
    frozen = config_for(tmp_path, preset="chapter", input_size=224, freeze=True)
    assert plan(frozen, 250, Available(4000, "system")).decision == "proceed"  # feature cache: small


def test_smaller_images_need_less(tmp_path):
    big = memory.estimate_mb(chapter(tmp_path), 128)
    small = memory.estimate_mb(config_for(tmp_path, preset="chapter", input_size=112), 128)
    assert small < big / 2


def test_prepare_refuses_before_anything_starts(tiny_dataset, tmp_path, monkeypatch):
    from hotdog.jobs import TrainingJob
    from hotdog.runs import RunStore
    from hotdog.train import prepare

    monkeypatch.setattr(memory, "available", lambda: Available(900, "cgroup limit 1.0 GB", 1024))
    cfg = config_for(tiny_dataset, input_size=224, batch_size=8)
    with pytest.raises(MemoryRefusedError, match="needs about .* GB .* only the 0.9 GB available"):
        prepare(cfg)
    with pytest.raises(MemoryRefusedError):
        TrainingJob(runs_dir=tmp_path / "runs").start(cfg)
    assert RunStore(tmp_path / "runs").list() == []
    monkeypatch.setattr(memory, "available", lambda: Available(4000, "cgroup limit 4.0 GB", 4096))
    p = prepare(config_for(tiny_dataset, input_size=224, batch_size=16))
    assert p.config.micro_batch < 16 and p.memory.accumulating  # chosen, recorded in config.json
    assert p.record()["micro_batch"] == p.config.micro_batch


def test_available_reads_the_system(monkeypatch):
    a = memory.available()
    assert a is not None and a.mb > 0
    monkeypatch.setattr(memory, "_rlimit_as_mb", lambda: 8192.0)
    monkeypatch.setattr(memory, "_cgroup_available", lambda: None)
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 20000.0)
    a = memory.available()
    assert a.where == "ulimit -v 8.0 GB" and a.mb == pytest.approx(8192 / memory.VM_PER_RSS)


def test_the_train_page_shows_the_estimate(hotdog_home, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from conftest import make_dataset

    monkeypatch.delenv("HOTDOG_DATA", raising=False)
    make_dataset(hotdog_home / "data" / "tiny")
    monkeypatch.setattr(memory, "available", lambda: Available(7800, "cgroup limit 8.0 GB", 8192))
    at = AppTest.from_file(str(Path(__file__).parents[1] / "streamlit_app.py"),
                           default_timeout=300)
    at.run()
    at.switch_page("pages/train.py").run()
    assert not at.exception
    captions = [c.value.replace("\\", "") for c in at.caption if c.value.startswith("Memory")]
    assert captions and "estimated peak memory" in captions[0] and "cgroup limit 8.0 GB" in captions[0]
    at.button(key="preset_chapter").click().run()  # batch 128 at 224 px
    captions = [c.value.replace("\\", "") for c in at.caption if c.value.startswith("Memory")]
    assert captions and "trains as 8 micro-batches of 16" in captions[0], captions
