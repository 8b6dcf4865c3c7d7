"""Grad-CAM, feature contributions and the deletion check (hotdog.explain) and ``python -m
hotdog explain``: tiny generated photos at 64 px, one tiny fine-tuned run per module."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from conftest import make_dataset, make_image
from hotdog import cli
from hotdog.errors import HotdogError, ModelError, RunStoreError
from hotdog.explain import Explainer, _peak, _photo_heat, deletion_check, split_at_pooling
from hotdog.imagenet import UnknownClassError
from hotdog.settings import TrainConfig
from hotdog.train import train

SIZE = 64


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One finished fine-tuning run at 64 px (a 2x2 last feature map) on generated photos."""
    root = make_dataset(tmp_path_factory.mktemp("data") / "tiny", size=(80, 64))
    res = train(TrainConfig(str(root), input_size=SIZE, batch_size=8, epochs=1),
                runs_dir=tmp_path_factory.mktemp("runs"))
    assert res.status == "finished"
    return Path(res.run_dir), root


@pytest.fixture(scope="module")
def explainer(tiny_run):
    return Explainer.from_run(tiny_run[0])


def run_cli(*argv) -> tuple[int, object]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(list(map(str, argv)))
    return rc, json.loads(out.getvalue())


def test_the_feature_map_is_found_at_the_pooling_layer_of_both_sources():
    from hotdog import models

    for source in ("efficientnet_lite0", "resnet18_v2"):
        net = models.build_scratch(source, 2)
        body, head = split_at_pooling(net)
        assert type(head[0]).__name__ == "GlobalAvgPool2D" and len(body) + len(head) == len(net.features)
        x = mx.nd.random.uniform(shape=(1, 3, SIZE, SIZE))
        a = x
        for b in body:
            a = b(a)
        assert a.ndim == 4 and a.shape[2] == a.shape[3] == SIZE // 32  # the last conv map, 32x smaller
        ex = Explainer(net, ["a", "b"], models.get_spec(source).preprocess.scaled(SIZE), source, "run")
        cam, probs, idx = mx_run(ex._gradcam, x, 1)
        assert cam.shape == (1, 2, 2) and (cam >= 0).all() and probs.shape == (1, 2) and list(idx) == [1]


def mx_run(fn, *a):
    from hotdog.mxthread import mx_call

    return mx_call(fn, *a)


def test_gradcam_equals_the_class_activation_map_for_pooling_plus_dense(explainer, tiny_run):
    """With global average pooling + a dense layer, the Grad-CAM channel weights are the class
    row divided by the map's area, so the map is relu(sum_k w_ck A_k) / HW."""
    photo = sorted((tiny_run[1] / "test" / "hotdog").iterdir())[0]
    x = mx_run(lambda: mx.nd.stack(explainer._tensor(Image.open(photo).convert("RGB"))))
    cam, _, _ = mx_run(explainer._gradcam, x, 0)
    A = mx_run(lambda: explainer._feature_map(x).asnumpy())[0]
    w = explainer.net.output.weight.data().asnumpy()[0]
    expected = np.maximum(np.tensordot(w, A, axes=1), 0) / (A.shape[1] * A.shape[2])
    np.testing.assert_allclose(cam[0], expected, rtol=1e-4, atol=1e-7)


def test_explain_a_run_bad_photos_get_their_own_error(explainer, tiny_run, tmp_path):
    good = sorted((tiny_run[1] / "test" / "hotdog").iterdir())[:2]
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a photo")
    buf = io.BytesIO()
    Image.new("RGB", (90, 70), (200, 60, 40)).save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[:150])
    sources = [good[0], tmp_path / "empty.jpg", tmp_path / "missing.png", tmp_path / "notes.txt",
               tmp_path / "cut.jpg", good[1]]
    res = explainer.explain(sources)
    assert [r.ok for r in res] == [True, False, False, False, False, True]
    assert all(r.error and "Traceback" not in r.error for r in res[1:5])
    for r in (res[0], res[-1]):
        assert r.class_name in ("hotdog", "not-hotdog") and 0 <= r.probability <= 1
        assert r.heatmap.shape == (r.image.size[1], r.image.size[0]) and 0 <= r.heatmap.min() <= r.heatmap.max() <= 1
        assert r.overlay.size == r.image.size
        assert r.to_dict("x.png").keys() == {"path", "class", "probability", "heatmap_png", "peak"}
    # the predicted class is each photo's argmax, with predict's probabilities
    from hotdog.predict import Predictor

    pred = Predictor.from_run(tiny_run[0]).predict(good)
    for r, p in zip((res[0], res[-1]), pred):
        assert r.class_name == p.label and abs(r.probability - p.probabilities[p.label]) < 1e-4
    # a chosen class: its probability, whatever the prediction
    forced = explainer.explain(good[:1], class_name="Not_Hotdog")[0]
    assert forced.class_name == "not-hotdog"
    assert abs(forced.probability - pred[0].probabilities["not-hotdog"]) < 1e-4


def test_an_unknown_class_is_one_error_before_any_photo(explainer, tiny_run):
    photo = sorted((tiny_run[1] / "test" / "hotdog").iterdir())[0]
    with pytest.raises(ModelError, match="unknown class 'pizza'.*hotdog, not-hotdog"):
        explainer.explain([photo], class_name="pizza")
    rc, doc = run_cli("explain", "--run", tiny_run[0], photo, "--class", "pizza", "--json")
    assert rc == 2 and doc.keys() == {"error"} and "pizza" in doc["error"]


def test_peak_and_heat_geometry():
    from hotdog.data import Preprocess

    pre = Preprocess(input_size=224, resize=256)
    cam = np.zeros((7, 7), np.float32)
    cam[0, 6] = 1.0  # top right of the model input
    heat = _photo_heat(cam, (512, 256), pre)
    assert heat.shape == (256, 512)
    # the model saw the central 224/256 of each axis only: no heat outside it
    assert heat[:, :32].max() == 0 and heat[:, -32:].max() == 0 and heat[:16].max() == 0
    x, y = _peak(heat, (1024, 512))  # peak in the original photo's pixels (twice the decoded size)
    assert x > 700 and y < 150
    assert _peak(np.zeros((4, 4), np.float32), (8, 8)) is None


def test_cli_explain_writes_pngs_and_one_json_document(tiny_run, tmp_path):
    run_dir, root = tiny_run
    photos = sorted((root / "test" / "hotdog").iterdir())[:2]
    out = tmp_path / "heat"
    rc, doc = run_cli("explain", "--run", run_dir, *photos, tmp_path / "nope.jpg", "--out", out, "--json")
    assert rc == 1 and len(doc) == 3
    assert doc[2] == {"path": str(tmp_path / "nope.jpg"), "error": doc[2]["error"]} and doc[2]["error"]
    for d, photo in zip(doc[:2], photos):
        assert d.keys() == {"path", "class", "probability", "heatmap_png", "peak"}
        with Image.open(d["heatmap_png"]) as im:
            assert im.format == "PNG" and im.size == Image.open(photo).size
        assert d["peak"] is None or (0 <= d["peak"][0] < 80 and 0 <= d["peak"][1] < 64)
    rc, doc = run_cli("explain", "--run", run_dir, photos[0], "--out", out, "--class", "hotdog", "--json")
    assert rc == 0 and doc[0]["class"] == "hotdog"


def test_explain_imagenet_and_zero_shot(tiny_run, tmp_path):
    run_dir, root = tiny_run
    photo = make_image(tmp_path / "p.png", (200, 60, 40), size=(96, 80))
    ex = Explainer.imagenet("efficientnet_lite0")
    r = ex.explain([photo], class_name="Hot Dog")[0]
    assert r.ok and r.class_name == "hotdog" and r.heatmap.shape == (80, 96)
    with pytest.raises(UnknownClassError):
        ex.explain([photo], class_name="hotdgo")
    rc, doc = run_cli("explain", "--imagenet", photo, "--out", tmp_path / "o", "--json")
    assert rc == 0 and isinstance(doc[0]["class"], str) and Path(doc[0]["heatmap_png"]).is_file()
    from hotdog.data import load_splits

    splits = load_splits(root)
    zs = Explainer.zero_shot("efficientnet_lite0", splits.classes, splits.train)
    z = zs.explain_images([Image.open(photo).convert("RGB")])[0]
    assert z.ok and z.class_name in splits.classes and set(z.probabilities) == set(splits.classes)


def test_a_run_whose_weights_are_damaged_is_one_error(tiny_run, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_run[0], broken)
    params = broken / "model.params"
    params.write_bytes(params.read_bytes()[: params.stat().st_size // 2])
    with pytest.raises(RunStoreError, match="cannot load the weights"):
        Explainer.from_run(broken)
    photo = sorted((tiny_run[1] / "test" / "hotdog").iterdir())[0]
    rc, doc = run_cli("explain", "--run", broken, photo, "--json")
    assert rc == 2 and "cannot load the weights" in doc["error"]
    params.unlink()
    with pytest.raises(RunStoreError, match="weights file model.params is missing"):
        Explainer.from_run(broken)


def test_feature_contributions_add_up_to_the_class_score(explainer, tiny_run):
    photo = Image.open(sorted((tiny_run[1] / "test" / "hotdog").iterdir())[0]).convert("RGB")
    c = explainer.contributions(photo, "hotdog", k=5)
    assert c["class"] == "hotdog" and len(c["dimensions"]) == 5
    mags = [abs(d["contribution"]) for d in c["dimensions"]]
    assert mags == sorted(mags, reverse=True)
    assert all(abs(d["contribution"] - d["weight"] * d["feature"]) < 1e-5 for d in c["dimensions"])
    x = mx_run(lambda: mx.nd.stack(explainer._tensor(photo)))
    logit = mx_run(lambda: explainer.net(x).asnumpy())[0, 0]
    assert abs(c["score"] - logit) < 1e-3 and abs(c["positive"] + c["negative"] + c["bias"] - logit) < 1e-3
    with pytest.raises(HotdogError):
        explainer.contributions(photo, "pizza")


def test_deletion_check_reports_both_drops(explainer, tiny_run):
    paths = sorted((tiny_run[1] / "test" / "hotdog").iterdir())
    rep = deletion_check(explainer, paths, "hotdog", fraction=0.2, seed=0)
    assert rep.n == len(paths) == len(rep.per_photo) and rep.class_name == "hotdog"
    for r in rep.per_photo:
        assert 0 <= r["heatmap_blanked"] <= 1 and 0 <= r["random_blanked"] <= 1
    assert np.isclose(rep.mean_drop_heatmap, np.mean([r["probability"] - r["heatmap_blanked"] for r in rep.per_photo]))
    again = deletion_check(explainer, paths, "hotdog", fraction=0.2, seed=0)
    assert again.to_dict() == rep.to_dict()  # seeded: the random pixels are the same
    with pytest.raises(ValueError):
        deletion_check(explainer, paths, "hotdog", fraction=1.5)


def test_heatmaps_beat_random_blanking_on_real_hot_dogs(hotdog_mini):
    """The deletion check on hotdog-mini's 25 test hot dogs with the pretrained classifier (no
    training needed; scripts/explain_check.py runs it on a fine-tuned run, figures in README)."""
    ex = Explainer.imagenet("efficientnet_lite0")
    paths = sorted((hotdog_mini / "test" / "hotdog").iterdir())
    assert len(paths) == 25
    rep = deletion_check(ex, paths, "hotdog", fraction=0.2, seed=0)
    assert rep.mean_drop_heatmap > 1.3 * rep.mean_drop_random > 0  # measured 0.235 vs 0.145
    assert rep.heatmap_wins >= 0.6 and rep.mean_drop_coldest < rep.mean_drop_heatmap / 3
