"""#12 items 4, 6, 7 and 8 in the app: the comparison's summary, Predict's default run,
the stopping state, and the small display fixes (AppTest and the pure helpers behind them)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

import test_app as T
import ui
from conftest import make_dataset, make_image
from hotdog import compare
from hotdog.callbacks import EpochMetrics
from hotdog.jobs import JobState
from hotdog.runs import RunStore
from hotdog.settings import TrainConfig
from hotdog.train import train

SMALL = {"input_size": 32, "batch_size": 8}


def plain(markdown: str) -> str:
    """Text shown through ui.md_escape, without its backslashes."""
    return markdown.replace("\\", "")


# ------------------------------------------------------------------ pure helpers

def test_one_class_flag_comes_from_the_confusion_matrix():
    classes = ["hotdog", "not-hotdog"]
    assert compare.one_class([[25, 0], [25, 0]], classes) == "hotdog"  # 0.50, all "hotdog"
    assert compare.one_class([[0, 25], [0, 25]], classes) == "not-hotdog"
    assert compare.one_class([[20, 5], [4, 21]], classes) is None
    assert compare.one_class([[1, 0], [0, 0]], classes) is None  # one photo says nothing
    assert compare.one_class(None, classes) is None


def test_comparison_headline_times_and_flags():
    s = compare.summarize([compare.ComparedRun("a", "finetune", 0.82, 95.0),
                           compare.ComparedRun("b", "scratch", 0.5, 60.0, one_class="hotdog")])
    assert s.headline == "fine-tuned 0.820 vs from scratch 0.500"
    assert len(s.flags) == 1 and "from scratch predicts 'hotdog' for every test photo" in s.flags[0]
    stopped = compare.summarize([compare.ComparedRun("a", "finetune", None, 3.0, None, 0, "stopped")])
    assert stopped.headline == "fine-tuned —" and "did not finish (stopped after 0 epochs)" in stopped.flags[0]


def test_accuracy_text_and_duplicate_photos():
    assert ui.acc_text(0.5) == "0.500" and ui.acc_text(None) == "—" and ui.acc_text(float("nan")) == "—"
    a, b = b"photo-a", b"photo-b"
    kept, repeats = ui.unique_photos([("a.png", a), ("b.png", b), ("a-again.png", a), ("camera photo", b)])
    assert [n for n, _ in kept] == ["a.png", "b.png"]
    assert repeats == [("a-again.png", "a.png"), ("camera photo", "b.png")]


def test_stopping_state_and_exact_wording_of_what_is_kept():
    cfg = SimpleNamespace(mode="finetune", source="efficientnet_lite0")
    none_yet = ui.job_view(JobState(state="stopping", run_id="r1", config=cfg, pending=1))
    assert none_yet["stopping"] and none_yet["pending"] == 0  # the queued scratch run will not start
    assert ui.stopping_note(none_yet) == ("Stopping after this batch… No epoch has completed yet, so nothing "
                                          "would be kept.")
    two = ui.job_view(JobState(state="stopping", run_id="r1", config=cfg,
                               epochs=[EpochMetrics(1, 1, 1, 1, 1), EpochMetrics(2, 1, 1, 1, 1)]))
    assert ui.stopping_note(two).endswith("The weights after epoch 2 (the last completed one) are kept.")
    assert not ui.job_view(JobState(state="running", run_id="r1", config=cfg))["stopping"]


# ------------------------------------------------------------------ AppTest

class _FakeJob:
    """The job manager as the pages see it, running until asked to stop (no real training:
    the stopping state is checked without racing a run that ends by itself)."""

    def __init__(self, epochs=()):
        self.state = JobState(state="running", run_id="20990101-000000-abcdef", started=1.0,
                              config=SimpleNamespace(mode="finetune", source="efficientnet_lite0"),
                              epochs=list(epochs))
        self.stops = 0

    def current(self):
        return replace(self.state, epochs=list(self.state.epochs))

    def stop(self, wait=None, owner=None, force=False):
        self.stops += 1
        self.state.state = "stopping"
        return False


def test_stop_click_shows_the_stopping_state_at_once(T_home, monkeypatch):
    fake = _FakeJob()
    monkeypatch.setattr("hotdog.jobs.job_manager", lambda: fake)
    at = T.new_app()
    at.switch_page("pages/train.py").run()
    T.assert_clean(at)
    assert any(m.value.startswith("**Running:**") for m in at.markdown)
    at.button(key="btn_stop").click().run()
    T.assert_clean(at)
    assert fake.stops == 1
    assert [i.value for i in at.info if i.value.startswith("Stopping after this batch")] == [
        "Stopping after this batch… No epoch has completed yet, so nothing would be kept."]
    assert any(m.value.startswith("**Stopping:**") for m in at.markdown)
    assert at.button(key="btn_stop").disabled  # one click is enough
    assert at.session_state[ui.STOP_KEY] == fake.state.run_id


def test_someone_elses_stop_says_exactly_what_would_be_kept(T_home, monkeypatch):
    fake = _FakeJob(epochs=[EpochMetrics(1, 1, 1, 1, 1)])
    fake.state.owner = "another-browser"
    monkeypatch.setattr("hotdog.jobs.job_manager", lambda: fake)
    at = T.new_app()
    at.switch_page("pages/train.py").run()
    warnings = [w.value for w in at.warning if "someone else started" in w.value]
    assert warnings == ["This ends a training someone else started. The weights after epoch 1 (the last "
                        "completed one) are kept."]


@pytest.fixture
def T_home(hotdog_home, monkeypatch):
    """As test_app's app_home: a HOTDOG_HOME with one installed tiny data set, $HOTDOG_DATA unset."""
    monkeypatch.delenv("HOTDOG_DATA", raising=False)
    make_dataset(hotdog_home / "data" / "tiny")
    return hotdog_home


def _set_test_acc(run_dir: Path, acc: float) -> None:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(dict(r, test_acc=acc)) + "\n" for r in rows))


def test_predict_defaults_to_the_best_run_of_the_data_set_with_its_accuracy_and_weights(T_home, tmp_path):
    root = T_home / "data" / "tiny"
    good = train(TrainConfig(str(root), epochs=2, val_fraction=0.25, **SMALL))
    newer = train(TrainConfig(str(root), mode="scratch", epochs=1, **SMALL))
    _set_test_acc(Path(good.run_dir), 0.875)
    _set_test_acc(Path(newer.run_dir), 0.5)
    info = json.loads((Path(good.run_dir) / "model.json").read_text())
    info["best"]["test_acc"] = 0.875
    (Path(good.run_dir) / "model.json").write_text(json.dumps(info))
    at = T.new_app()
    at.switch_page("pages/predict.py").run()
    T.assert_clean(at)
    picker = at.selectbox(key="predict_run")
    assert picker.value == good.run_id, "the best run, not the newest (the from-scratch one)"
    best_epoch = info["best"]["epoch"]
    # the closed picker's label is short (accuracy first, no run id); the id is in full below it
    label = picker.format_func(good.run_id)
    assert label.startswith("0.875 · fine-tune · tiny · ") and good.run_id not in label and len(label) <= 40, label
    assert picker.format_func(newer.run_id).startswith("0.500 · from scratch · tiny · ")
    details = [c.value.replace("\\", "") for c in at.caption if c.value.replace("\\", "").startswith("run ")]
    assert details == [f"run {good.run_id} · EfficientNet-Lite0 (offline) · test acc (saved model) 0.875: best epoch {best_epoch}"]
    assert picker.help and "saved model" in picker.help
    weights = at.radio(key="predict_weights")
    # the default preset mixes (WiSE-FT alpha 0.6): "last" is that mix, not the last epoch's own weights
    assert weights.value == "best" and weights.format_func("last") == "WiSE-FT mix of the last epoch (2)"
    photo = make_image(tmp_path / "p.png", (200, 60, 40)).read_bytes()
    at.file_uploader(key="photos").set_value([("p.png", photo, "image/png"),
                                              ("same.png", photo, "image/png")]).run()
    T.assert_clean(at)
    assert sum(t in ("→ hotdog", "→ not-hotdog") for t in T.texts(at)) == 1, "the same photo is classified once"
    assert any(c.value.replace("\\", "").endswith("same.png is the same photo as p.png") for c in at.caption)
    # "hotdog 71.2%": a long bar carries its number inside, so the chart's edge never cuts it
    bars = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    texts = [layer["mark"] for layer in bars["layer"] if layer["mark"]["type"] == "text"]
    assert {m.get("align") for m in texts} == {"left", "right"}
    top5 = at.dataframe[0].proto
    widths = {c: json.loads(top5.columns).get(c, {}).get("width") for c in ("class", "probability")}
    assert all(isinstance(w, int) for w in widths.values()), widths  # a long name cannot push it out


def test_train_runs_table_and_home_show_accuracies_the_same_way(T_home):
    root = T_home / "data" / "tiny"
    done = train(TrainConfig(str(root), epochs=1, **SMALL))
    _set_test_acc(Path(done.run_dir), 0.5)
    import threading

    stop = threading.Event()
    stop.set()
    train(TrainConfig(str(root), epochs=1, **SMALL), stop_event=stop)  # 0 epochs: no accuracy
    at = T.new_app()
    T.assert_clean(at)
    home = at.dataframe[0].value
    assert sorted(home["test acc (saved model)"]) == ["0.500", "—"]
    at.switch_page("pages/train.py").run()
    T.assert_clean(at)
    table = at.dataframe[0].value
    assert sorted(table["test acc (saved model)"]) == ["0.500", "—"] and "None" not in table.to_string()
    assert list(table.columns[:6]) == ["run", "mode", "status", "test acc (saved model)", "saved model", "message"]
    stopped = table[table["status"] == "stopped"]["message"].iloc[0]
    assert stopped.startswith("stopped by request before the first epoch ended") and "0 completed" not in stopped
    config = json.loads(at.dataframe[0].proto.columns)
    assert config["message"]["width"] >= 500


@pytest.mark.timeout(1800)
def test_comparison_ends_with_a_summary_card_and_matching_run_colours(T_home):
    at = T.new_app()
    at.switch_page("pages/train.py").run()
    T._tiny_knobs(at)
    at.button(key="btn_compare").click().run()
    T._wait_idle(at)
    runs = {r.mode: r for r in RunStore().list()}
    heads = [plain(m.value) for m in at.markdown if m.value.startswith("**The comparison:**")]
    acc = {m: ui.acc_text(r.accuracy) for m, r in runs.items()}
    assert heads == [f"**The comparison:** fine-tuned {acc['finetune']} vs from scratch {acc['scratch']}"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["fine-tuned · test accuracy (saved model)"] == acc["finetune"]
    assert metrics["from scratch · test accuracy (saved model)"] == acc["scratch"]
    assert sum(c.value.startswith("took ") for c in at.caption) == 2
    # The tiny set's solid colours: a model that answers one class for all 8 test photos gets a flag.
    for mode, r in runs.items():
        ev = ui.evaluation(r.run_dir)
        single = compare.one_class(ev["confusion"], ev["classes"])
        title = compare.MODE_WORDS[mode]
        flagged = [w.value for w in at.warning if plain(w.value).startswith(title[:1].upper() + title[1:] + " predicts")]
        assert bool(flagged) == bool(single), (mode, single, flagged)
    # chips painted with the chart's colours, in the chosen order
    chosen = at.multiselect[0].value
    assert len(chosen) == 2
    css = [h.proto.body for h in at.get("html") if "data-tag-index" in h.proto.body]
    assert css and "[data-tag-index='0'] { background-color: #d9480f" in css[0]
    assert "[data-tag-index='1'] { background-color: #1c7ed6" in css[0]
    chart = [c for c in at.get("vega_lite_chart") if '"run"' in c.proto.spec]
    spec = json.loads(chart[0].proto.spec)
    scale = spec["spec"]["encoding"]["color"]["scale"]
    assert scale["range"] == ["#d9480f", "#1c7ed6"] and [d.split(" · ")[0] for d in scale["domain"]] == chosen
