"""The first minutes (issue #12, items 1-3): the chosen data set is remembered, the cost of a
run is said before it starts, and the start-up steps report their progress."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from app_helpers import assert_clean, new_app
from conftest import make_dataset


@pytest.fixture
def two_sets(hotdog_home, monkeypatch, tmp_path):
    """'tiny' installed in HOTDOG_HOME/data, 'zeta' in a folder named by $HOTDOG_DATA."""
    tiny = make_dataset(hotdog_home / "data" / "tiny")
    zeta = make_dataset(tmp_path / "shared" / "zeta", per_class={"train": 3, "test": 2})
    monkeypatch.setenv("HOTDOG_DATA", str(zeta))
    return tiny, zeta


# ------------------------------------------------------------------ 1. data set memory

def test_chosen_data_set_survives_a_new_session(two_sets):
    tiny, zeta = two_sets
    at = new_app()
    at.switch_page("pages/data.py").run()
    assert at.session_state["data_root"] == str(zeta)  # $HOTDOG_DATA comes first
    at.selectbox(key="data_pick").set_value(str(tiny)).run()
    assert_clean(at)
    assert at.session_state["data_root"] == str(tiny)

    fresh = new_app()  # a reload or a new tab: a new session on the same HOTDOG_HOME
    assert_clean(fresh)
    assert fresh.session_state["data_root"] == str(tiny)
    assert "tiny" in [t.value for t in fresh.text]  # Home's data set card
    assert not any("None found yet" in w.value for w in fresh.warning)
    assert fresh.sidebar.selectbox(key="sidebar_data_pick").value == str(tiny)


def test_a_remembered_folder_that_is_gone_falls_back(two_sets):
    from hotdog import prefs

    tiny, zeta = two_sets
    prefs.save("data_root", str(tiny.parent / "deleted-since"))
    at = new_app()
    assert_clean(at)
    assert at.session_state["data_root"] == str(zeta)


def test_pickers_list_every_data_set_of_both_roots(two_sets):
    tiny, zeta = two_sets
    at = new_app()
    sidebar = at.sidebar.selectbox(key="sidebar_data_pick")
    assert sidebar.options == ["zeta ($HOTDOG_DATA)", "tiny (installed)"]
    # choosing in the sidebar is the same choice as on the Data page
    sidebar.set_value(str(tiny)).run()
    assert_clean(at)
    at.switch_page("pages/data.py").run()
    picker = at.selectbox(key="data_pick")
    assert picker.value == str(tiny)
    assert picker.options == [f"zeta (from $HOTDOG_DATA: {zeta})", f"tiny (installed: {tiny})"]


def test_config_json_holds_the_absolute_data_set_path(tmp_path, monkeypatch):
    from hotdog.settings import config_for
    from hotdog.train import prepare

    root = make_dataset(tmp_path / "rel")
    monkeypatch.chdir(tmp_path)
    record = prepare(config_for("rel", epochs=1)).record()
    assert record["data_root"] == str(root) and Path(record["data_root"]).is_absolute()
    assert record["images"] == {"train": 16, "test": 8}


# ------------------------------------------------------------------ 2. cost before you click

def _finished_run(store, config: dict, epoch_seconds, total: float, images=(200, 50)) -> str:
    config = {**config, "images": {"train": images[0], "test": images[1]}}
    run_id, _ = store.create(config)
    for i, s in enumerate(epoch_seconds, 1):
        store.append_metrics(run_id, {"epoch": i, "train_loss": 0.5, "train_acc": 0.8, "test_acc": 0.9,
                                      "seconds": s})
    store.write_status(run_id, "finished", "done", seconds=total)
    return run_id


def test_estimate_from_a_previous_run_scales_with_epochs_and_photos(tmp_path):
    from hotdog import estimate
    from hotdog.runs import RunStore
    from hotdog.settings import config_for

    store = RunStore(tmp_path / "runs")
    old = config_for(str(tmp_path), preset="stable", devices=["cpu(0)"], input_size=224, epochs=2)
    # 2 epochs of 20 s over 200 train photos (10 images/s), 25 s of start-up for 250 photos
    run_id = _finished_run(store, old.to_dict(), [20.0, 20.0], 65.0)
    new = config_for(str(tmp_path), preset="stable", devices=["cpu(0)"], epochs=5, lr=0.01)  # lr: same speed
    speed = estimate.best_speed(new, store=store, home=tmp_path)
    assert speed is not None and speed.run_id == run_id
    est = estimate.estimate(new, 400, 100, speed)
    assert est.startup_seconds == pytest.approx(25.0 * 500 / 250)
    assert est.epoch_seconds == pytest.approx(40.0)  # twice the photos
    assert est.seconds == pytest.approx(50.0 + 5 * 40.0)
    assert est.images_per_sec == pytest.approx(10.0)
    # other settings (frozen cached features, another image size) are not comparable
    assert estimate.best_speed(config_for(str(tmp_path), preset="quick", devices=["cpu(0)"]),
                               store=store, home=tmp_path) is None
    assert estimate.best_speed(config_for(str(tmp_path), devices=["cpu(0)"], input_size=128),
                               store=store, home=tmp_path) is None


def test_estimate_of_cached_features_is_extraction_plus_fast_head_epochs(tmp_path):
    from hotdog import estimate
    from hotdog.settings import config_for

    q = config_for(str(tmp_path), preset="quick", augment_views=2)
    speed = estimate.Speed(startup_per_image=0.1, epoch_per_train_image=0.0001, fixed=3.0, basis="test")
    est = estimate.estimate(q, 200, 50, speed)
    assert est.startup_seconds == pytest.approx(3.0 + 0.1 * (200 * 3 + 50))  # 3 views of each train photo
    assert est.seconds == pytest.approx(est.startup_seconds + 5 * 0.02)


def test_runs_without_timings_or_counts_give_no_speed():
    from hotdog import estimate

    assert estimate.speed_from_record({"freeze": False}, [{"seconds": 3.0}], {"seconds": 9.0}) is None
    assert estimate.speed_from_record({"images": {"train": 10, "test": 2}}, [], {"seconds": 9.0}) is None
    assert estimate.speed_from_record({"images": {"train": 10, "test": 2}}, [{"seconds": 3.0}], {}) is None
    assert estimate.speed_from_record({"images": {"train": "x", "test": 2}}, [{"seconds": 3.0}],
                                      {"seconds": 9.0}) is None


def test_probe_measures_and_is_kept(tiny_dataset, hotdog_home):
    from hotdog import data, estimate
    from hotdog.settings import config_for

    cfg = config_for(str(tiny_dataset), input_size=32, batch_size=4, devices=["cpu(0)"])
    assert estimate.cached_probe(cfg) is None
    items = data.load_splits(str(tiny_dataset)).train
    speed = estimate.probe(cfg, items, 2)
    assert speed.epoch_per_train_image > 0 and speed.startup_per_image > 0 and speed.fixed > 0
    assert math.isfinite(estimate.estimate(cfg, 16, 8, speed).seconds)
    assert estimate.cached_probe(cfg) == speed
    assert estimate.best_speed(cfg) == speed
    # a damaged cache file is measured again, never an error
    (hotdog_home / "cache" / "speed.json").write_text("{nope")
    assert estimate.cached_probe(cfg) is None


def test_train_page_shows_the_estimate_from_a_previous_run(hotdog_home, monkeypatch):
    from hotdog import settings
    from hotdog.runs import RunStore

    monkeypatch.delenv("HOTDOG_DATA", raising=False)
    root = make_dataset(hotdog_home / "data" / "tiny")
    # the page's default settings, as a finished run of 5 epochs of 8 s (16 train photos: 2 images/s)
    cfg = settings.config_for(str(root), preset=settings.default_preset(["cpu(0)"]), devices=["cpu(0)"],
                              input_size=224)
    _finished_run(RunStore(), cfg.to_dict(), [8.0] * 5, 52.0, images=(16, 8))
    at = new_app()
    at.switch_page("pages/train.py").run()
    assert_clean(at)
    line = next((c.value.replace("\\", "") for c in at.caption if "Expected time on this machine" in c.value), None)
    assert line is not None, [c.value for c in at.caption]
    # start-up 12 s + 5 x 8 s = 52 s, for the same photos and epochs
    assert "Fine-tune: about 52s" in line and "run " in line
    assert "From scratch" not in line  # never measured: offered as a probe instead
    assert at.button(key="btn_probe").label == "Measure"
    at.number_input(key="epochs").set_value(10).run()
    line = next(c.value.replace("\\", "") for c in at.caption if "Expected time on this machine" in c.value)
    assert "Fine-tune: about 1m 32s" in line  # 12 s + 10 x 8 s


# ------------------------------------------------------------------ 3. no silent start

def test_start_up_phases_are_reported_in_order_with_counts(tiny_dataset, tmp_path):
    from hotdog.settings import TrainConfig
    from hotdog.train import train

    events = []
    res = train(TrainConfig(str(tiny_dataset), preset="quick", input_size=32, epochs=1),
                runs_dir=tmp_path, on_batch=events.append)
    assert res.status == "finished"
    phases = [p.phase for p in events]
    first_train = phases.index("train")
    order = list(dict.fromkeys(phases[:first_train]))  # each step's first report
    assert [p for p in order if p != "convert"] == ["load", "head", "decode", "cache"], order
    assert "convert" not in order or order.index("convert") == 1
    decode = [(p.batch, p.batches) for p in events if p.phase == "decode"]
    assert decode[0] == (0, 24) and decode[-1] == (24, 24)  # 16 train + 8 test photos
    assert [d for d, _ in decode] == sorted(d for d, _ in decode)
    load = [(p.batch, p.batches) for p in events if p.phase == "load"]
    assert load == [(0, 1), (1, 1)]
    assert all(p.epoch == 0 for p in events[:first_train])
    # no start-up step once training began; the after-training check (hotdog.robust) comes last
    after = phases[first_train:]
    assert set(after) <= {"train", "robust"}, set(after)
    assert "robust" not in after or "train" not in after[after.index("robust"):]


def test_weights_conversion_reports_its_phase(tmp_path):
    from hotdog import efficientnet
    from hotdog.weights import on_conversion

    seen = []
    with on_conversion(seen.append):
        efficientnet.convert_torch_weights(efficientnet.torch_checkpoint_path(), tmp_path / "w.params")
    assert seen == [0, 1]
    efficientnet.convert_torch_weights(efficientnet.torch_checkpoint_path(), tmp_path / "w2.params")
    assert seen == [0, 1]  # nobody listening outside the block


def test_startup_checklist_text():
    import ui
    from hotdog.callbacks import BatchProgress

    nan = float("nan")
    p = BatchProgress(0, 5, 120, 250, nan, nan, 0.0, nan, "decode")
    assert ui.progress_text(p) == "Decoding photos 120/250"
    assert ui.progress_fraction(p) == pytest.approx(0.48)
    steps = ui.startup_steps({"load": (1, 1), "convert": (1, 1), "decode": (120, 250)}, "decode")
    assert steps == [("done", "Loading the source model"),
                     ("done", "Converting the source weights to MXNet (first use only)"),
                     ("running", "Decoding photos 120/250")]
    assert ui.progress_text(BatchProgress(0, 5, 0, 1, nan, nan, 0.0, nan, "load")) == "Loading the source model…"


def test_job_keeps_the_phases_of_the_current_run(tiny_dataset, hotdog_home):
    """The live panel reads JobState.phases: every start-up step of the run, in order."""
    from hotdog.jobs import TrainingJob
    from hotdog.settings import TrainConfig

    import ui

    job = TrainingJob(isolate=False)
    seen = []
    try:
        job.start(TrainConfig(str(tiny_dataset), preset="quick", input_size=32, epochs=1))
        state = job.wait(600)
        seen = state.phases
    finally:
        job.close()
    assert state.state == "finished"
    # converting the weights happens once per HOTDOG_HOME, while the source model loads
    assert [p for p in seen if p != "convert"] == ["load", "head", "decode", "cache"]
    assert seen["decode"] == (24, 24) and seen.get("convert", (1, 1)) == (1, 1)
    view = ui.job_view(state)  # ended: nothing to show, but a running one carries the phases
    assert view is None
    state.state = "running"
    assert ui.job_view(state)["phases"] == seen


def test_live_panel_shows_the_start_up_steps(hotdog_home, monkeypatch):
    """The Train page's live panel while a run decodes photos: finished steps ticked, the
    current one with its bar and n/N."""
    import ui
    from hotdog.callbacks import BatchProgress
    from hotdog.jobs import JobState

    monkeypatch.delenv("HOTDOG_DATA", raising=False)
    make_dataset(hotdog_home / "data" / "tiny")
    nan = float("nan")
    state = JobState(state="running", run_id="r1", started=1.0, phases={"load": (1, 1), "decode": (7, 24)},
                     progress=BatchProgress(0, 5, 7, 24, nan, nan, 0.0, nan, "decode"))
    monkeypatch.setattr(ui, "job_snapshot", lambda: ui.job_view(state, owner=None))
    at = new_app()
    at.switch_page("pages/train.py").run()
    assert_clean(at)
    assert any(c.value.endswith("Loading the source model") for c in at.caption), [c.value for c in at.caption]
    bars = [el for el in at.get("progress")]
    assert any("Decoding photos 7/24" in json.dumps(str(b.proto)) for b in bars), [str(b.proto) for b in bars]


def test_cli_train_prints_the_expected_time_after_a_comparable_run(tiny_dataset, hotdog_home, capsys):
    from hotdog.cli import main

    args = ["train", "--data", str(tiny_dataset), "--preset", "quick", "--input-size", "32", "--epochs", "1",
            "--json"]
    assert main(args) == 0
    assert "expected time" not in capsys.readouterr().err  # nothing timed this machine yet
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "expected time: about" in err and "from run " in err
