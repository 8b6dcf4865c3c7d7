"""The pure display helpers of ui.py (the module the pages share): no browser, no script run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import ui
from hotdog import data
from hotdog.callbacks import BatchProgress, EpochMetrics
from hotdog.jobs import JobState


def test_dataset_choices_env_first_then_installed_then_typed(tmp_path):
    a, b = tmp_path / "a", tmp_path / "hotdog"
    choices = ui.dataset_choices_from([a, b], env={"HOTDOG_DATA": str(b)}, extra=[str(tmp_path / "mine"), str(a)])
    assert [c.origin for c in choices] == ["env", "installed", "folder"]  # duplicates dropped
    assert ui.default_dataset(choices) == str(b)
    no_env = ui.dataset_choices_from([a, b], env={})
    assert ui.default_dataset(no_env) == str(b)  # the chapter's set wins among installed ones
    assert ui.default_dataset(ui.dataset_choices_from([a], env={})) == str(a)
    assert ui.default_dataset([]) is None


def test_counts_and_split_totals_from_a_dataset_report():
    report = {"counts": {"train": {"hotdog": 3, "not-hotdog": 4}, "test": {"hotdog": 1, "not-hotdog": 2}}}
    df = ui.counts_frame(report)
    assert list(df.columns) == ["split", "class", "images"] and len(df) == 4
    assert ui.split_totals(report) == {"train": 7, "test": 3}
    assert ui.split_totals({}) == {"train": 0, "test": 0}


def test_image_sizes_frame_counts_sizes_and_skips_unreadable_files(tmp_path):
    for i, size in enumerate([(40, 30), (40, 30), (20, 10)]):
        Image.new("RGB", size).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    df = ui.image_sizes_frame(sorted(tmp_path.iterdir()))
    assert {(r.width, r.height): r.images for r in df.itertuples()} == {(40, 30): 2, (20, 10): 1}
    assert list(ui.image_sizes_frame([]).columns) == ["width", "height", "images"]


def test_sample_grid_first_of_first_class_last_of_others():
    items = [(Path(f"{c}{i}"), c) for c in range(3) for i in range(10)]
    rows = ui.sample_grid(["hotdog", "not-hotdog", "other"], items, per_class=8)
    assert [name for name, _ in rows] == ["hotdog", "not-hotdog", "other"]
    assert rows[0][1][0] == Path("00") and rows[1][1][-1] == Path("19") and rows[2][1][0] == Path("22")
    assert all(len(paths) == 8 for _, paths in rows)


def test_to_display_image_undoes_normalisation():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    rgb = np.array([0.2, 0.5, 0.9], np.float32)
    chw = ((rgb - mean) / std).reshape(3, 1, 1).repeat(2, 1).repeat(3, 2)
    out = ui.to_display_image(chw, mean, std)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert np.allclose(out[0, 0], np.round(rgb * 255), atol=1)


def test_augmentation_views_are_displayable_images_of_the_input_size():
    image = Image.new("RGB", (80, 60), (200, 60, 40))
    views, test_view = ui.augmentation_views(image, data.Preprocess().scaled(32), n=3)
    assert len(views) == 3
    assert all(v.shape == (32, 32, 3) and v.dtype == np.uint8 for v in views + [test_view])


def _progress(**changes) -> BatchProgress:
    base = dict(epoch=2, epochs=5, batch=5, batches=10, loss=0.0, acc=0.0, images_per_sec=42.0, eta_seconds=75.0)
    return BatchProgress(**{**base, **changes})


def test_progress_text_and_fraction():
    assert ui.progress_fraction(_progress()) == pytest.approx(0.3)
    text = ui.progress_text(_progress())
    assert text.startswith("Epoch 2/5 · batch 5/10 · 42.0 images/s · ETA 1m 15s")
    assert "loss" not in text  # 0/0 means "not measured yet"
    assert "loss 0.500, acc 0.750" in ui.progress_text(_progress(loss=0.5, acc=0.75))
    assert ui.progress_text(_progress(phase="cache")).startswith("Computing features once")


def test_format_duration():
    assert ui.format_duration(None) == "–" and ui.format_duration(float("nan")) == "–"
    assert ui.format_duration(42) == "42s" and ui.format_duration(75) == "1m 15s"
    assert ui.format_duration(3700) == "1h 01m"


def test_curves_frame_skips_non_finite_values():
    df = ui.curves_frame([{"epoch": 1, "train_loss": float("nan"), "train_acc": 0.5, "test_acc": 0.6}], run="r")
    assert set(df.metric) == {"train acc", "test acc"} and set(df.run) == {"r"}
    df = ui.curves_frame([EpochMetrics(epoch=1, train_loss=0.7, train_acc=0.5, test_acc=0.6, seconds=1.0)])
    assert dict(zip(df.metric, df.value)) == {"train loss": 0.7, "train acc": 0.5, "test acc": 0.6}


def test_md_escape_makes_markup_inert():
    assert ui.md_escape("<img src=x onerror=alert(1)>") == r"\<img src=x onerror=alert\(1\)\>"
    assert ui.md_escape("[x](javascript:y) **b** :red[c]") == r"\[x\]\(javascript\:y\) \*\*b\*\* \:red\[c\]"


def test_cosine_of_rows():
    assert ui.cosine([1, 0], [2, 0]) == pytest.approx(1.0)
    assert ui.cosine([1, 0], [0, 3]) == pytest.approx(0.0)
    assert ui.cosine([1, 1], [-1, -1]) == pytest.approx(-1.0)
    assert np.isnan(ui.cosine([0, 0], [1, 0]))


def test_probabilities_frame_sorted_most_likely_first():
    df = ui.probabilities_frame({"not-hotdog": 0.2, "hotdog": 0.8})
    assert list(df["class"]) == ["hotdog", "not-hotdog"] and list(df.probability) == [0.8, 0.2]


def test_misclassified_caption_and_eval_split(tmp_path):
    m = {"path": "/x/test/hotdog/001.png", "label": "hotdog", "predicted": "not-hotdog",
         "probabilities": {"hotdog": 0.3, "not-hotdog": 0.7}}
    # the probability says what it is the probability of (#12: an unlabelled "(0.70)" before)
    assert ui.misclassified_caption(m) == "001.png\ntrue hotdog → not-hotdog\np(not-hotdog) 0.70"
    assert ui.eval_split(str(tmp_path)) == str(tmp_path)  # a flat set: the whole folder
    (tmp_path / "test").mkdir()
    assert ui.eval_split(str(tmp_path)) == str(tmp_path / "test")


def test_job_view_of_a_running_sequence_and_of_idle():
    assert ui.job_view(JobState()) is None
    cfg = SimpleNamespace(mode="finetune", source="efficientnet_lite0")
    state = JobState(state="running", run_id="r1", config=cfg, progress=_progress(), pending=1,
                     epochs=[EpochMetrics(1, 0.7, 0.5, 0.6, 1.0)])
    view = ui.job_view(state, {"efficientnet_lite0": "EfficientNet-Lite0"})
    assert view["label"] == "fine-tune of EfficientNet-Lite0 · run r1"
    assert view["pending"] == 1 and len(view["metrics"]) == 1 and view["message"] is None
    stopping = ui.job_view(JobState(state="stopping", run_id="r1", config=cfg))
    assert stopping["label"].endswith("stopping…") and stopping["message"] == "Stopping…"


def test_job_end_message_per_end_state(hotdog_home):
    import json

    from test_runs import fake_run

    cfg = SimpleNamespace(mode="scratch")
    run = fake_run(hotdog_home / "runs", "r1")  # last epoch 0.82; its saved model a WiSE-FT mix at 0.875
    info = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**info, "wise": {"alpha": 0.6, "test_acc": 0.875}}))
    done = JobState(state="finished", run_id="r1", config=cfg, result=SimpleNamespace(test_acc=0.82),
                    started=0.0, ended=75.0)
    assert ui.job_end_message(done) == (
        "success", "Run finished (from scratch): r1, test acc (saved model) 0.875: WiSE-FT mix (1m 15s)")
    gone = JobState(state="finished", run_id="r9", config=cfg, result=SimpleNamespace(test_acc=0.82),
                    started=0.0, ended=75.0)
    assert ui.job_end_message(gone) == ("success", "Run finished (from scratch): r9 (1m 15s)")  # unreadable: no number rather than the last epoch under the saved model's name
    stopped = JobState(state="stopped", run_id="r2", config=cfg, epochs=[1, 2])
    assert ui.job_end_message(stopped) == (
        "info", "Run stopped: r2: stopped by request after 2 completed epochs; the weights after epoch 2 are kept.")
    # 0 epochs: exactly what happened, nothing "kept" (#12: "after 0 epoch(s); completed epochs are kept")
    nothing = JobState(state="stopped", run_id="r4", config=cfg, epochs=[])
    text = ui.job_end_message(nothing)[1]
    assert "nothing" in text or "no weights were saved" in text
    assert "kept" not in text and "0 completed" not in text and "epoch(s)" not in text
    failed = JobState(state="diverged", run_id="r3", config=cfg, error="loss is nan")
    assert ui.job_end_message(failed) == ("error", "Run diverged: r3: loss is nan")


def test_dataset_name_from_file():
    """The Data page's default 'Install as' name for an uploaded zip (hotdog.data)."""
    assert data.dataset_name_from_file("photos (1).zip") == "photos-1"
    assert data.dataset_name_from_file("...zip") == "dataset"


def test_importing_ui_outside_a_script_run_has_no_side_effects():
    from streamlit.runtime.pages_manager import PagesManager

    before = PagesManager.uses_pages_directory
    import importlib

    importlib.reload(ui)
    assert PagesManager.uses_pages_directory == before


def test_xsrf_token_is_the_same_for_two_maskings_of_one_token():
    """Tornado re-masks its XSRF cookie on every page load; the owner of a run must not change."""
    token = bytes.fromhex("ac2937898bce487dfe03f007b3c923a1")

    def cookie(mask: bytes) -> str:
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(token))
        return f"2|{mask.hex()}|{masked.hex()}|1796180571"

    a, b = cookie(bytes.fromhex("ca6090ed")), cookie(bytes.fromhex("8486d892"))
    assert a != b and ui.xsrf_token(a) == ui.xsrf_token(b) == token
    assert ui.xsrf_token("2|zz|00|1") is None and ui.xsrf_token("plain") == b"plain"


def test_a_repeated_start_of_this_browsers_running_job_is_not_an_error(monkeypatch):
    """Streamlit can replay a button click when it merges reruns on a busy machine: the second
    start meets this browser's own job and is a no-op; another session's job is still an error."""
    import ui
    from hotdog.errors import TrainingBusyError
    from hotdog.jobs import JobState

    class Busy:
        def __init__(self, owner):
            self.owner = owner

        def start(self, configs, owner=None):
            raise TrainingBusyError("training run r1 is already running in this server")

        def current(self):
            return JobState(state="running", owner=self.owner)

    monkeypatch.setattr(ui, "session_owner", lambda: "me")
    monkeypatch.setattr(ui, "job_manager", lambda: Busy("me"))
    assert ui.start_jobs(["config"]) is None
    monkeypatch.setattr(ui, "job_manager", lambda: Busy("someone else"))
    with pytest.raises(TrainingBusyError):
        ui.start_jobs(["config"])
