"""``python -m hotdog export``: MXNet symbol + params and ONNX (checked with onnxruntime against
``python -m hotdog predict --run``), preprocess.json, stopped and damaged runs, and the README's
onnxruntime + Pillow snippet run exactly as printed."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from conftest import make_dataset
from hotdog import cli
from hotdog.errors import ConfigError, RunStoreError
from hotdog.export import export_run, export_zip, load_exported_mxnet
from hotdog.settings import TrainConfig
from hotdog.train import train

REPO = Path(__file__).resolve().parents[1]
PRE_KEYS = {"resize", "resize_mode", "crop", "mean", "std", "classes", "input", "output"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("data") / "tiny", size=(80, 64))
    res = train(TrainConfig(str(root), input_size=64, batch_size=8, epochs=1),
                runs_dir=tmp_path_factory.mktemp("runs"))
    assert res.status == "finished"
    return Path(res.run_dir), root


def run_cli(*argv) -> tuple[int, object]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(list(map(str, argv)))
    return rc, json.loads(out.getvalue())


def predict_json(run_dir, photos) -> dict[str, dict]:
    rc, doc = run_cli("predict", "--run", run_dir, *photos, "--json")
    assert rc == 0
    return {d["path"]: d["probabilities"] for d in doc}


def onnx_probs(onnx_path, run_dir, photos) -> np.ndarray:
    """onnxruntime on the run's own preprocessing (decoded and transformed exactly as predict)."""
    import onnxruntime as ort

    from hotdog.data import decode_image, test_transform
    from hotdog.explain import preprocess_of
    from hotdog.mxthread import mx_call
    from hotdog.predict import run_model_info

    pre = preprocess_of(run_model_info(run_dir))
    tf = test_transform(pre)
    x = mx_call(lambda: np.stack([tf(decode_image(p, min_side=pre.resize)).asnumpy() for p in photos]))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["data"]  # the weights are not graph inputs
    return sess.run(None, {"data": x})[0]


def assert_onnx_matches_predict(run_dir, out, photos) -> float:
    rc, doc = run_cli("export", "--run", run_dir, "--format", "onnx", "--out", out, "--json")
    assert rc == 0 and doc["opset"] == 19 and doc["max_abs_diff"] < 1e-5
    assert sorted(doc["files"]) == ["model.onnx", "preprocess.json"]
    pre = json.loads((Path(out) / "preprocess.json").read_text())
    assert pre.keys() == PRE_KEYS and pre["output"] == "probabilities"
    want = predict_json(run_dir, photos)
    got = onnx_probs(Path(out) / "model.onnx", run_dir, photos)
    diff = max(abs(got[i][j] - want[str(p)][c]) for i, p in enumerate(photos) for j, c in enumerate(pre["classes"]))
    assert diff < 1e-4, diff
    return diff


def test_onnx_matches_predict_on_generated_photos(tiny_run, tmp_path):
    run_dir, root = tiny_run
    photos = sorted((root / "test").rglob("*.png"))
    assert_onnx_matches_predict(run_dir, tmp_path / "onnx", photos)
    pre = json.loads((tmp_path / "onnx" / "preprocess.json").read_text())
    assert pre == {"resize": 73, "resize_mode": "squash", "crop": 64, "mean": [0.5, 0.5, 0.5],
                   "std": [0.5, 0.5, 0.5], "classes": ["hotdog", "not-hotdog"], "input": "NCHW float32 RGB",
                   "output": "probabilities"}


def test_onnx_matches_predict_on_hotdog_mini(hotdog_mini, tmp_path):
    """The 50 real test photos, a quick frozen run at 64 px."""
    res = train(TrainConfig(str(hotdog_mini), input_size=64, batch_size=32, epochs=1, freeze=True),
                runs_dir=tmp_path / "runs")
    assert res.status == "finished"
    photos = sorted((hotdog_mini / "test").rglob("*.jpg"))
    assert len(photos) == 50
    assert_onnx_matches_predict(res.run_dir, tmp_path / "onnx", photos)


def test_mxnet_export_loads_with_symbolblock_imports(tiny_run, tmp_path):
    run_dir, root = tiny_run
    result = export_run(run_dir, "mxnet", tmp_path / "mx")
    assert sorted(result["files"]) == ["model-0000.params", "model-symbol.json", "preprocess.json"]
    pre = json.loads((tmp_path / "mx" / "preprocess.json").read_text())
    assert pre.keys() == PRE_KEYS and pre["output"] == "logits" and pre["crop"] == 64
    block = load_exported_mxnet(tmp_path / "mx")
    photos = sorted((root / "test").rglob("*.png"))
    want = predict_json(run_dir, photos)
    from hotdog.data import decode_image, test_transform
    from hotdog.explain import preprocess_of
    from hotdog.mxthread import mx_call
    from hotdog.predict import run_model_info

    pre_obj = preprocess_of(run_model_info(run_dir))
    tf = test_transform(pre_obj)
    probs = mx_call(lambda: mx.nd.softmax(block(mx.nd.stack(*[tf(decode_image(p, min_side=pre_obj.resize))
                                                                for p in photos])), axis=1).asnumpy())
    for i, p in enumerate(photos):
        assert np.allclose(probs[i], [want[str(p)][c] for c in pre["classes"]], atol=1e-4)


def test_export_of_a_stopped_run_and_of_one_without_weights(tmp_path):
    root = make_dataset(tmp_path / "tiny", per_class={"train": 4, "test": 2}, size=(48, 40))
    stop = threading.Event()
    res = train(TrainConfig(str(root), input_size=32, batch_size=8, epochs=3),
                runs_dir=tmp_path / "runs", stop_event=stop, on_epoch=lambda m: stop.set())
    assert res.status == "stopped" and len(res.epochs) == 1
    rc, doc = run_cli("export", "--run", res.run_dir, "--format", "onnx", "--out", tmp_path / "o", "--json")
    assert rc == 0 and (tmp_path / "o" / "model.onnx").is_file()

    stop_now = threading.Event()
    stop_now.set()
    none = train(TrainConfig(str(root), input_size=32, batch_size=8, epochs=1), runs_dir=tmp_path / "runs",
                 stop_event=stop_now)
    assert none.status == "stopped" and not none.epochs
    with pytest.raises(RunStoreError, match="no saved model"):
        export_run(none.run_dir, "mxnet", tmp_path / "x")
    rc, doc = run_cli("export", "--run", none.run_dir, "--format", "mxnet", "--out", tmp_path / "x", "--json")
    assert rc == 2 and "no saved model" in doc["error"]


def test_export_of_damaged_weights_or_an_unknown_format_is_one_error(tiny_run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run[0], broken)
    (broken / "model.params").write_bytes(b"\x00" * 100)
    rc, doc = run_cli("export", "--run", broken, "--format", "onnx", "--out", tmp_path / "o", "--json")
    assert rc == 2 and doc.keys() == {"error"} and "cannot load the weights" in doc["error"]
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="unknown export format"):
        export_run(tiny_run[0], "tflite", tmp_path / "o")


def test_export_zip_holds_the_files(tiny_run):
    import zipfile

    z = zipfile.ZipFile(io.BytesIO(export_zip(tiny_run[0], "onnx")))
    assert sorted(z.namelist()) == ["model.onnx", "preprocess.json"]


def readme_snippet() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- onnx-snippet:start -->\s*```python\n(.*?)```\s*<!-- onnx-snippet:end -->", text, re.S)
    assert m, "README.md lost its onnxruntime snippet markers"
    return m.group(1)


def test_readme_onnx_snippet_runs_as_printed_without_mxnet(tiny_run, tmp_path):
    code = readme_snippet()
    assert len(code.strip().splitlines()) <= 10
    run_dir, root = tiny_run
    export_run(run_dir, "onnx", tmp_path / "export")
    photo = sorted((root / "test" / "hotdog").iterdir())[0]
    shutil.copy(photo, tmp_path / "photo.jpg")  # the snippet's file name; Pillow reads by content
    # The snippet exactly as printed, then a check that MXNet was never imported.
    check = code + "\nimport sys\nassert 'mxnet' not in sys.modules\nprint(repr({k: float(v) for k, v in zip(pre['classes'], probs)}))\n"
    out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    got = eval(lines[-1])  # noqa: S307 - our own repr of a dict of floats
    assert lines[0].startswith("{") and "hotdog" in lines[0]
    want = predict_json(run_dir, [photo])[str(photo)]
    # Pillow's bilinear resize is not OpenCV's: close, not bit-identical (README says so).
    assert max(abs(got[c] - want[c]) for c in want) < 0.02


def test_a_resnet18_v2_run_exports_and_explains(tmp_path):
    """The chapter's architecture (trained from scratch here: no pretrained download needed)."""
    from hotdog.explain import Explainer

    root = make_dataset(tmp_path / "tiny", per_class={"train": 4, "test": 2}, size=(48, 40))
    res = train(TrainConfig(str(root), source="resnet18_v2", mode="scratch", input_size=32, batch_size=8,
                            epochs=1), runs_dir=tmp_path / "runs")
    assert res.status == "finished"
    result = export_run(res.run_dir, "onnx", tmp_path / "onnx")
    assert result["max_abs_diff"] < 1e-5 and result["preprocess"]["mean"] == [0.485, 0.456, 0.406]
    photos = sorted((root / "test").rglob("*.png"))
    assert_onnx_matches_predict(res.run_dir, tmp_path / "onnx2", photos)
    exp = Explainer.from_run(res.run_dir).explain(photos[:1], class_name="hotdog")[0]
    assert exp.ok and exp.heatmap.shape == exp.image.size[::-1] and exp.overlay.size == exp.image.size
