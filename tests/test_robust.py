"""Robust fine-tuning (issue 15): WiSE-FT ends, the alpha curve without retraining, L2-SP,
the out-of-source proxy, and per-source metrics stored in the run. Tiny generated images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_dataset

SRC = "efficientnet_lite0"


def _tiny_config(root, **kw):
    from hotdog.settings import config_for

    return config_for(root, **{"epochs": 1, "batch_size": 8, "input_size": 32, **kw})


def test_wise_alpha_0_is_the_zero_shot_model_and_1_the_fine_tuned_one(tiny_dataset, hotdog_home):
    import mxnet as mx

    from hotdog import models, robust
    from hotdog.data import load_splits

    splits = load_splits(tiny_dataset)
    build = dict(init_output_from_imagenet=True, class_names=splits.classes, init_items=splits.train)
    net = models.build_finetune(SRC, 2, bn_mode="update", **build)
    # "Fine-tuning": every parameter moves, BatchNorm running statistics included.
    rng = np.random.RandomState(0)
    for name, p in models._structural_params(net).items():
        w = p.data().asnumpy()
        noise = 0.05 * rng.standard_normal(w.shape).astype(w.dtype)
        p.set_data(mx.nd.array(w * np.exp(noise) if name.endswith("running_var") else w + noise * (np.abs(w) + 0.1)))
    x = mx.nd.array(rng.standard_normal((3, 3, 32, 32)))
    out_ft = net(x).asnumpy()
    finetuned = robust.current_state(net)
    zero_shot, why = robust.zero_shot_state(net, SRC, splits.classes, splits.train)
    assert why == "" and zero_shot is not None
    out_zs = models.build_finetune(SRC, 2, **build)(x).asnumpy()  # the zero-shot model, built on its own
    assert np.abs(out_zs - out_ft).max() > 1e-2  # the two ends differ, so the checks below mean something

    robust.interpolate(net, zero_shot, finetuned, 0.0)
    np.testing.assert_allclose(net(x).asnumpy(), out_zs, atol=1e-5, rtol=0)
    robust.interpolate(net, zero_shot, finetuned, 1.0)
    np.testing.assert_allclose(net(x).asnumpy(), out_ft, atol=1e-5, rtol=0)
    robust.interpolate(net, zero_shot, finetuned, 0.5)
    bn = next(k for k in finetuned if k.endswith("running_mean"))
    mixed = models._structural_params(net)[bn].data().asnumpy()
    np.testing.assert_allclose(mixed, 0.5 * zero_shot[bn] + 0.5 * finetuned[bn], atol=1e-6)


def test_alpha_curve_is_computed_after_training_without_retraining(tiny_dataset, hotdog_home, monkeypatch):
    from hotdog import train as train_mod
    from hotdog.predict import Predictor, evaluate
    from hotdog.robust import ALPHAS, PROXY_NAME, TEST_NAME
    from hotdog.runs import read_sources, read_wise

    steps = []
    real_step = train_mod._Fit.step
    monkeypatch.setattr(train_mod._Fit, "step", lambda self, *a, **k: (steps.append(1), real_step(self, *a, **k)))
    res = train_mod.train(_tiny_config(tiny_dataset, wise_alpha=0.3, epochs=2))
    assert res.status == "finished"
    assert len(steps) == 4  # 16 training photos, batch 8, 2 epochs: the 11 alphas trained nothing
    wise, warning = read_wise(res.run_dir)
    assert warning == "" and wise["alphas"] == list(ALPHAS) and wise["chosen"] == 0.3
    assert len(wise["clean"]) == len(wise["proxy"]) == 11 and len(wise["clean_recall"][0]) == 2
    sources, _ = read_sources(res.run_dir)
    by_name = {s["name"]: s for s in sources}
    assert set(by_name) == {TEST_NAME, PROXY_NAME}
    assert by_name[TEST_NAME]["alpha"] == 0.3 and by_name[TEST_NAME]["n"] == 8
    assert by_name[TEST_NAME]["accuracy"] == pytest.approx(wise["clean"][3])
    assert by_name[PROXY_NAME]["accuracy"] == pytest.approx(wise["proxy"][3])
    # the saved model is the one at the chosen alpha
    saved = evaluate(res.run_dir, tiny_dataset / "test", Predictor.from_run(res.run_dir))
    assert saved.accuracy == pytest.approx(wise["clean"][3])
    assert "WiSE-FT alpha 0.3" in res.message
    # the run list ranks by the saved model's accuracy, not the last epoch's before the mix
    from hotdog.runpick import score
    from hotdog.runs import RunStore

    summary = next(r for r in RunStore(Path(res.run_dir).parent).list() if r.run_id == res.run_id)
    assert summary.saved_test_acc == pytest.approx(wise["clean"][3]) == score(summary)
    # the mixed model was scored after each epoch and the fine-tuned weights restored exactly
    assert len(wise["epochs_clean"]) == 2 and wise["epochs_clean"][-1] == pytest.approx(wise["clean"][3])
    plain = train_mod.train(_tiny_config(tiny_dataset, epochs=2, proxy_eval=False))
    assert [e.to_dict() | {"seconds": 0} for e in plain.epochs] == [e.to_dict() | {"seconds": 0} for e in res.epochs]


def test_wise_ft_is_skipped_with_a_sentence_when_no_class_is_an_imagenet_class(tmp_path, hotdog_home):
    from hotdog.runs import read_sources, read_wise
    from hotdog.train import train

    root = make_dataset(tmp_path / "odd", classes={"blorp": (200, 60, 40), "zzyzx": (40, 90, 200)})
    res = train(_tiny_config(root, wise_alpha=0.5, init_output_from_imagenet=False))
    assert res.status == "finished"
    assert "WiSE-FT skipped" in res.message and "'blorp', 'zzyzx' match no ImageNet class" in res.message
    wise, _ = read_wise(res.run_dir)
    assert wise["skipped"].startswith("WiSE-FT skipped")
    sources, _ = read_sources(res.run_dir)
    assert {s["kind"] for s in sources} == {"test", "proxy"} and all(s["alpha"] is None for s in sources)
    assert res.test_acc == res.epochs[-1].test_acc  # the fine-tuned weights, untouched


def test_weights_that_overflowed_end_the_run_as_diverged_unmixed_and_unsaved(tiny_dataset, hotdog_home):
    """lr 1e6 on frozen features: each epoch's loss is finite (measured before the update) but the
    last update overflows the output layer to inf. The run is diverged (nothing saved, nothing
    ranked) and no mix of inf weights is ever made (numpy warned "invalid value" doing it)."""
    import warnings

    from hotdog.runs import RunStore
    from hotdog.train import train

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = train(_tiny_config(tiny_dataset, lr=1e6, freeze=True, wise_alpha=0.6, epochs=3, batch_size=6))
    assert res.status == "diverged", res.message
    assert "the weights became non-finite (inf or NaN) in epoch" in res.message and "learning rate 1e+06" in res.message
    assert not (Path(res.run_dir) / "model.params").exists()
    summary = RunStore(Path(res.run_dir).parent).summary(res.run_id)
    assert summary.status == "diverged" and summary.accuracy == summary.test_acc  # the last recorded epoch's


def test_the_wise_mix_is_skipped_for_weights_that_are_not_finite(tiny_dataset, hotdog_home, tmp_path):
    """robust_check on a network holding inf (a run that diverged unnoticed): the fine-tuned
    weights are kept exactly as they are, wise.json says why, and numpy never warns."""
    import warnings

    import mxnet as mx

    from hotdog import models, robust
    from hotdog.data import load_splits
    from hotdog.runs import read_wise

    cfg = _tiny_config(tiny_dataset, wise_alpha=0.5, proxy_eval=True)
    splits = load_splits(tiny_dataset)
    net = models.build_finetune(SRC, 2, bn_mode="update", init_output_from_imagenet=True,
                                class_names=splits.classes, init_items=splits.train)
    w = net.output.weight.data().asnumpy()
    w[0, :3] = [np.inf, -np.inf, np.nan]
    net.output.weight.set_data(mx.nd.array(w))
    before = robust.current_state(net)
    assert not robust.finite_state(before)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        report = robust.robust_check(net, cfg, splits, models.get_spec(SRC).preprocess.scaled(32), [mx.cpu()],
                                     run_dir)
    assert report.curve is None and report.wise_skipped == robust.NOT_FINITE and robust.NOT_FINITE in report.notes
    assert all(s["alpha"] is None for s in report.sources)
    after = robust.current_state(net)
    assert all(np.array_equal(after[k], before[k], equal_nan=True) for k in before)  # kept, not turned to NaN
    assert read_wise(run_dir)[0] == {"skipped": robust.NOT_FINITE}


class _Toy:
    """A two-part network like the fine-tune ones: copied ``features``, a new ``output``."""

    def __init__(self, seed: int):
        import mxnet as mx
        from mxnet.gluon import nn

        mx.random.seed(seed)
        self.features, self.output = nn.Dense(4, in_units=3), nn.Dense(2, in_units=4)
        self.features.initialize(mx.init.Xavier())
        self.output.initialize(mx.init.Xavier())
        self.output.collect_params().setattr("lr_mult", 10.0)

    def params(self):
        return list(self.features.collect_params().values()) + list(self.output.collect_params().values())

    def step(self, trainer, x, y, hook=None):
        from mxnet import autograd, gluon

        with autograd.record():
            loss = gluon.loss.SoftmaxCrossEntropyLoss()(self.output(self.features(x)), y)
        loss.backward()
        grads = [p.grad().asnumpy().copy() for p in self.params()]
        if hook is not None:
            hook.add_to_grads(x.shape[0])
        trainer.step(x.shape[0])
        return grads


def _trainer(toy, lr=0.1, wd=0.01):
    from mxnet import gluon

    return gluon.Trainer(toy.params(), "sgd", {"learning_rate": lr, "wd": wd})


def test_l2sp_at_strength_0_is_plain_sgd_and_above_0_decays_toward_the_pretrained_weights():
    import mxnet as mx

    from hotdog.robust import L2SP

    rng = np.random.RandomState(1)
    x, y = mx.nd.array(rng.standard_normal((5, 3))), mx.nd.array([0, 1, 1, 0, 1])
    plain, zero = _Toy(7), _Toy(7)
    hook0 = L2SP(zero, 0.0, [mx.cpu()])
    t_plain, t_zero = _trainer(plain), _trainer(zero)
    for _ in range(3):
        plain.step(t_plain, x, y)
        zero.step(t_zero, x, y, hook0)
    for a, b in zip(plain.params(), zero.params()):
        assert np.array_equal(a.data().asnumpy(), b.data().asnumpy())  # exactly, not approximately

    toy = _Toy(7)
    hook = L2SP(toy, 0.5, [mx.cpu()])
    pretrained = [p.data().asnumpy().copy() for p in toy.features.collect_params().values()]
    for p in toy.features.collect_params().values():  # moved away from the pretrained weights
        p.set_data(p.data() + 0.3)
    before = [p.data().asnumpy().copy() for p in toy.params()]
    grads = toy.step(_trainer(toy), x, y, hook)
    after = [p.data().asnumpy() for p in toy.params()]
    n, lr, wd = 5, 0.1, 0.01
    for i in range(2):  # features: toward the pretrained weights, no plain decay
        want = before[i] - lr * (grads[i] / n + 0.5 * (before[i] - pretrained[i]))
        np.testing.assert_allclose(after[i], want, atol=1e-6)
    for i in range(2, 4):  # the new layer: plain weight decay, its lr multiplier
        want = before[i] - lr * 10.0 * (grads[i] / n + wd * before[i])
        np.testing.assert_allclose(after[i], want, atol=1e-6)


def test_proxy_is_deterministic_cached_and_never_written_into_the_data_set(tiny_dataset, tmp_path):
    from PIL import Image

    from hotdog.data import load_splits
    from hotdog.robust import PROXY_UPSCALE, proxy_folder

    splits = load_splits(tiny_dataset)
    before = sorted(p for p in tiny_dataset.rglob("*"))
    a = proxy_folder(splits.test, splits.classes, home=tmp_path / "h1")
    b = proxy_folder(splits.test, splits.classes, home=tmp_path / "h2")
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert len(files_a) == 8 and files_a == sorted(p.relative_to(b) for p in b.rglob("*.jpg"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    assert min(Image.open(a / files_a[0]).size) == PROXY_UPSCALE
    stamp = (a / files_a[0]).stat().st_mtime_ns
    assert proxy_folder(splits.test, splits.classes, home=tmp_path / "h1") == a  # cached, not rebuilt
    assert (a / files_a[0]).stat().st_mtime_ns == stamp
    assert sorted(p for p in tiny_dataset.rglob("*")) == before


def test_extra_folders_are_scored_and_recorded_per_source_and_a_damaged_file_is_a_warning(tiny_dataset, tmp_path,
                                                                                        hotdog_home, capsys):
    from hotdog.cli import main
    from hotdog.runs import SOURCES_FILE, RunStore, read_sources

    other = make_dataset(tmp_path / "other", per_class={"test": 3})
    third = make_dataset(tmp_path / "third", per_class={"test": 2})
    assert main(["train", "--data", str(tiny_dataset), "--epochs", "1", "--batch-size", "8", "--input-size", "32",
                 "--no-proxy-eval", "--also-eval", str(other), "--json"]) == 0
    run_dir = Path(json.loads(capsys.readouterr().out)["run_dir"])
    sources, _ = read_sources(run_dir)
    assert [(s["kind"], s["name"], s["n"]) for s in sources] == [("test", "test split (clean)", 8),
                                                                 ("folder", "other", 6)]
    assert main(["evaluate", "--run", str(run_dir), "--data", str(third), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    sources, _ = read_sources(run_dir)
    assert sources[-1]["name"] == "third" and sources[-1]["n"] == report["n"] == 4
    assert sources[-1]["accuracy"] == report["accuracy"]
    assert main(["evaluate", "--run", str(run_dir), "--data", str(third), "--no-record", "--json"]) == 0
    assert len(read_sources(run_dir)[0]) == 3

    (run_dir / SOURCES_FILE).write_text('{"sources": [{"name": "x", "kind": "test", "accuracy": 7}]}')
    found, warning = read_sources(run_dir)
    assert found == [] and "sources.json" in warning and "accuracy" in warning
    assert RunStore().load(run_dir.name).state == "finished"  # the run itself is fine
    assert [r.status for r in RunStore().list()] == ["finished"]


@pytest.mark.parametrize("bad", [dict(wise_alpha=1.5), dict(wise_alpha=-0.1), dict(l2sp=-1.0),
                                 dict(l2sp=float("nan")), dict(proxy_eval="yes"), dict(also_eval=[3])])
def test_robust_knobs_are_validated(bad):
    from hotdog.errors import ConfigError
    from hotdog.settings import TrainConfig

    with pytest.raises(ConfigError):
        TrainConfig("x", **bad)


def test_a_scratch_run_has_no_wise_or_l2sp():
    from hotdog.settings import TrainConfig

    c = TrainConfig("x", mode="scratch", wise_alpha=0.5, l2sp=1.0)
    assert (c.wise_alpha, c.l2sp) == (1.0, 0.0)


def test_train_page_shows_sources_and_the_alpha_curve_and_scores_a_shared_folder(hotdog_home, tmp_path, monkeypatch):
    from test_app import assert_clean, new_app

    from hotdog.runs import SOURCES_FILE, read_sources
    from hotdog.train import train

    monkeypatch.delenv("HOTDOG_DATA", raising=False)
    app_home = hotdog_home
    make_dataset(app_home / "data" / "tiny")

    res = train(_tiny_config(app_home / "data" / "tiny", wise_alpha=0.6))
    run_dir = Path(res.run_dir)
    make_dataset(app_home / "data" / "elsewhere", per_class={"test": 2})
    outside = make_dataset(tmp_path / "outside", per_class={"test": 2})
    at = new_app()
    at.switch_page("pages/train.py").run()
    assert_clean(at)
    table = next(d.value for d in at.dataframe if "kind" in d.value.columns)
    assert list(table["source"]) == ["test split (clean)", "proxy (test split at 64 px, JPEG q15)"]
    assert set(table["model"]) == {"WiSE-FT alpha 0.6"} and "hotdog recall" in table.columns
    assert any("accuracy vs alpha" in m.value and "alpha 0.6" in m.value for m in at.markdown)
    charts = [c for c in at.get("vega_lite_chart") if "alpha (0 = zero-shot" in str(c.proto.spec)]
    assert charts  # the curve

    at.text_input(key=f"eval_folder-{res.run_id}").set_value(str(outside))  # not a shared folder: refused
    at.button[[b.label for b in at.button].index("Add this folder")].click().run()
    assert any("only reads data sets from the data folders" in e.value for e in at.error)
    assert len(read_sources(run_dir)[0]) == 2
    at.text_input(key=f"eval_folder-{res.run_id}").set_value("elsewhere")
    at.button[[b.label for b in at.button].index("Add this folder")].click().run()
    assert_clean(at)
    sources, _ = read_sources(run_dir)
    assert sources[-1]["name"] == "elsewhere" and sources[-1]["n"] == 4 and sources[-1]["alpha"] == 0.6
    table = next(d.value for d in at.dataframe if "kind" in d.value.columns)
    assert list(table["source"])[-1] == "elsewhere"  # shown after the rerun

    (run_dir / SOURCES_FILE).write_text("{not json")
    at = new_app()
    at.switch_page("pages/train.py").run()
    assert_clean(at)
    assert any("sources.json is not valid JSON" in w.value.replace("\\", "") for w in at.warning), \
        [w.value for w in at.warning] + [e.value for e in at.error] + [c.value for c in at.caption]


def test_frozen_runs_score_the_alpha_curve_on_features_computed_once(tiny_dataset, hotdog_home, monkeypatch):
    """With frozen features WiSE-FT mixes only the head: the curve from backbone features
    computed once per photo set equals the one from whole-network passes, with the backbone run
    once per set instead of once per alpha."""
    from hotdog import robust
    from hotdog import train as train_mod
    from hotdog.runs import read_sources, read_wise

    cfg = dict(freeze=True, wise_alpha=0.4, epochs=2, seed=3)
    calls = []
    real_forward = robust._forward
    monkeypatch.setattr(robust, "_forward", lambda block, *a, **k: (calls.append(block), real_forward(block, *a, **k))[1])
    fast = train_mod.train(_tiny_config(tiny_dataset, **cfg))
    backbone_passes = len(calls)
    # test + proxy once each in the check, test once for the per-epoch scoring: not 11 x 2
    assert backbone_passes == 3, backbone_passes
    monkeypatch.setattr(robust._Scorer, "__init__", lambda self, net, config, ctx: (
        setattr(self, "net", net), setattr(self, "ctx", ctx), setattr(self, "frozen", False),
        setattr(self, "_features", {}))[0])
    slow = train_mod.train(_tiny_config(tiny_dataset, **cfg))
    (a, _), (b, _) = read_wise(fast.run_dir), read_wise(slow.run_dir)
    for key in ("clean", "proxy", "clean_recall", "proxy_recall", "epochs_clean"):
        assert a[key] == b[key], key
    strip = [{k: v for k, v in s.items() if k != "time"} for s in read_sources(fast.run_dir)[0]]
    assert strip == [{k: v for k, v in s.items() if k != "time"} for s in read_sources(slow.run_dir)[0]]
