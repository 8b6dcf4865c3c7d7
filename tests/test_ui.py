"""The UI-free glue behind the pages (hotdog.app_support): no Streamlit, no browser."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from hotdog import app_support as sup
from hotdog import data
from hotdog.errors import TrainingBusyError


def test_dataset_choices_env_first_then_installed_then_typed(tmp_path):
    a, b = tmp_path / "a", tmp_path / "hotdog"
    choices = sup.dataset_choices([a, b], env={"HOTDOG_DATA": str(b)}, extra=[str(tmp_path / "mine"), str(a)])
    assert [c.origin for c in choices] == ["env", "installed", "folder"]  # duplicates dropped
    assert sup.default_dataset(choices) == str(b)
    no_env = sup.dataset_choices([a, b], env={})
    assert sup.default_dataset(no_env) == str(b)  # the chapter's set wins among installed ones
    assert sup.default_dataset(sup.dataset_choices([a], env={})) == str(a)
    assert sup.default_dataset([]) is None


def test_sample_grid_first_of_first_class_last_of_others():
    items = [(Path(f"{c}{i}"), c) for c in range(3) for i in range(10)]
    rows = sup.sample_grid(["hotdog", "not-hotdog", "other"], items, per_class=8)
    assert [name for name, _ in rows] == ["hotdog", "not-hotdog", "other"]
    assert rows[0][1][0] == Path("00") and rows[1][1][-1] == Path("19") and rows[2][1][0] == Path("22")
    assert all(len(paths) == 8 for _, paths in rows)


def test_to_display_image_undoes_normalisation():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    rgb = np.array([0.2, 0.5, 0.9], np.float32)
    chw = ((rgb - mean) / std).reshape(3, 1, 1).repeat(2, 1).repeat(3, 2)
    out = sup.to_display_image(chw, mean, std)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert np.allclose(out[0, 0], np.round(rgb * 255), atol=1)


@dataclass
class P:
    epoch: int = 2
    epochs: int = 5
    batch: int = 5
    batches: int = 10
    loss: float = 0.0
    acc: float = 0.0
    images_per_sec: float = 42.0
    eta_seconds: float = 75.0
    phase: str = "train"


def test_progress_text_and_fraction():
    assert sup.progress_fraction(P()) == pytest.approx(0.3)
    text = sup.progress_text(P())
    assert text.startswith("Epoch 2/5 · batch 5/10 · 42.0 images/s · ETA 1m 15s")
    assert "loss" not in text  # 0/0 means "not measured yet"
    assert "loss 0.500, acc 0.750" in sup.progress_text(P(loss=0.5, acc=0.75))
    assert sup.progress_text(P(phase="cache")).startswith("Computing features once")
    assert sup.format_duration(None) == "–" and sup.format_duration(3700) == "1h 01m"


def test_curves_frame_skips_non_finite_values():
    df = sup.curves_frame([{"epoch": 1, "train_loss": float("nan"), "train_acc": 0.5, "test_acc": 0.6}], run="r")
    assert set(df.metric) == {"train acc", "test acc"}


def test_md_escape_makes_markup_inert():
    assert sup.md_escape("<img src=x onerror=alert(1)>") == r"\<img src=x onerror=alert\(1\)\>"
    assert sup.md_escape("[x](javascript:y) **b** :red[c]") == r"\[x\]\(javascript\:y\) \*\*b\*\* \:red\[c\]"


def test_dataset_name_from_file():
    assert data.dataset_name_from_file("photos (1).zip") == "photos-1"
    assert data.dataset_name_from_file("...zip") == "dataset"


def test_predict_photos_keeps_going_past_bad_files(monkeypatch):
    from hotdog import models

    monkeypatch.setattr(models, "imagenet_topk", lambda source, images, k=5: [
        [{"index": 934, "name": "hotdog", "probability": 0.9}] for _ in images])
    from PIL import Image
    import io

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    out = sup.predict_photos([("a.png", buf.getvalue()), ("b.jpg", b"nope"), ("c.png", buf.getvalue())], "x")
    assert [r.error is None for r in out] == [True, False, True]
    assert out[0].label == "hotdog" and out[2].probabilities == {"hotdog": 0.9}


class FakeManager:
    """The engine's TrainingJob surface the sequence uses: start, wait, current."""

    def __init__(self, outcome="finished", seconds=0.2):
        self.started, self.outcome, self.seconds = [], outcome, seconds
        self._done = threading.Event()
        self._done.set()
        self._lock = threading.Lock()

    def start(self, config):
        with self._lock:
            if not self._done.is_set():
                raise TrainingBusyError("busy")
            self._done.clear()
            self.started.append(config)
        threading.Timer(self.seconds, self._done.set).start()
        return f"run{len(self.started)}"

    def wait(self, timeout=None):
        self._done.wait(timeout)
        return type("S", (), {"state": self.outcome})()


def _settle():
    deadline = time.time() + 5
    while sup.pending_configs() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)


def test_sequence_runs_configs_one_after_the_other():
    m = FakeManager()
    assert sup.start_sequence(["finetune", "scratch"], m) == "run1"
    assert m.started == ["finetune"] and sup.pending_configs() == ["scratch"]
    with pytest.raises(TrainingBusyError):
        sup.start_sequence(["other"], m)  # another tab is told, nothing starts
    _settle()
    assert m.started == ["finetune", "scratch"] and sup.pending_configs() == []


def test_sequence_stops_after_a_run_that_did_not_finish():
    m = FakeManager(outcome="stopped")
    sup.start_sequence(["finetune", "scratch"], m)
    _settle()
    assert m.started == ["finetune"] and sup.pending_configs() == []


def test_cancel_pending_drops_the_rest():
    m = FakeManager(seconds=0.5)
    sup.start_sequence(["a", "b", "c"], m)
    sup.cancel_pending()
    _settle()
    assert m.started == ["a"]
