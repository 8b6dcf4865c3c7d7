"""Source registry, builders (copy not share, freeze, BatchNorm modes, lr_mult), class weights,
zero-shot heads and the models CLI. Real forward passes on small random tensors."""

from __future__ import annotations

import argparse
import json
import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from PIL import Image

from hotdog import imagenet, models
from hotdog.errors import HotdogError, ModelError

SRC = models.DEFAULT_SOURCE


@pytest.fixture(autouse=True)
def _home(hotdog_home):
    """Converted weights go to a temp HOTDOG_HOME, never the user's."""
    return hotdog_home


@pytest.fixture(scope="session")
def resnet_params(tmp_path_factory):
    """A resnet18_v2 with random weights saved the way a user's .params file would be."""
    from mxnet.gluon.model_zoo import vision

    net = vision.resnet18_v2()
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))  # finish deferred initialisation
    path = tmp_path_factory.mktemp("resnet") / "resnet18_v2-random.params"
    net.save_parameters(str(path))
    return path


def _snapshot(block) -> dict[str, np.ndarray]:
    mx.nd.waitall()  # oneDNN may still be reordering weights of a forward in flight
    return {k: p.data().asnumpy().copy() for k, p in block._collect_params_with_prefix().items()}


def _train_step(net, size=32, n=4, lr=0.1):
    x = mx.nd.random.uniform(-1, 1, shape=(n, 3, size, size))
    y = mx.nd.array(np.arange(n) % 2)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr})
    with autograd.record():
        loss = gluon.loss.SoftmaxCrossEntropyLoss()(net(x), y)
    loss.backward()
    trainer.step(n)
    mx.nd.waitall()


# ------------------------------------------------------------------ registry

def test_registry_lists_sources_and_rejects_unknown_names():
    assert models.list_sources() == ["efficientnet_lite0", "resnet18_v2"]
    assert models.DEFAULT_SOURCE in models.list_sources()
    spec = models.get_spec("efficientnet_lite0")
    assert spec.offline and spec.preprocess.mean == (0.5, 0.5, 0.5) and spec.preprocess.std == (0.5, 0.5, 0.5)
    r = models.get_spec("resnet18_v2")
    assert not r.offline and r.preprocess.input_size == 224
    for call in (lambda: models.get_spec("resnet50"), lambda: models.load_source("resnet50"),
                 lambda: models.build_finetune("vgg", 2), lambda: models.build_scratch("nope", 2)):
        with pytest.raises(ModelError, match="valid sources: efficientnet_lite0, resnet18_v2"):
            call()


def test_load_source_is_pretrained_cached_and_has_the_chapter_split():
    net = models.load_source(SRC)
    assert models.load_source(SRC) is net
    assert isinstance(net.features, gluon.nn.HybridSequential)
    assert isinstance(net.output, gluon.nn.Dense) and net.output.weight.shape == (1000, 1280)
    out = net(mx.nd.random.uniform(-1, 1, shape=(2, 3, 64, 64)))
    assert out.shape == (2, 1000) and np.isfinite(out.asnumpy()).all()


def test_load_source_cache_is_thread_safe(resnet_params):
    from concurrent.futures import ThreadPoolExecutor

    models.clear_source_cache()
    with ThreadPoolExecutor(4) as pool:
        nets = list(pool.map(lambda _: models.load_source("resnet18_v2", params_path=resnet_params), range(4)))
    assert all(n is nets[0] for n in nets)


def test_params_option_is_refused_for_efficientnet(resnet_params):
    with pytest.raises(ModelError, match="resnet18_v2 only"):
        models.load_source(SRC, params_path=resnet_params)


# ------------------------------------------------------------------ resnet18_v2 with a local file

def test_resnet_from_params_file_and_env(resnet_params, monkeypatch):
    net = models.load_source("resnet18_v2", params_path=resnet_params)
    assert net.output.weight.shape == (1000, 512)
    assert net(mx.nd.random.uniform(shape=(1, 3, 32, 32))).shape == (1, 1000)
    monkeypatch.setenv(models.RESNET18_ENV, str(resnet_params))
    assert models.load_source("resnet18_v2") is net  # same file -> same cached net

    ft = models.build_finetune("resnet18_v2", 3)
    assert ft(mx.nd.random.uniform(shape=(2, 3, 32, 32))).shape == (2, 3)
    src = _snapshot(net.features)
    for k, v in _snapshot(ft.features).items():
        np.testing.assert_array_equal(v, src[k])

    cw = models.class_weights("resnet18_v2", "hot dog", k=3)
    np.testing.assert_array_equal(cw.vector, net.output.weight.data().asnumpy()[imagenet.class_index("hotdog")])
    assert cw.length == 512 and len(cw.nearest) == 3


def test_resnet_download_failure_names_the_offline_alternative(monkeypatch, tmp_path):
    from mxnet.gluon.model_zoo import model_store

    def offline(*a, **k):
        raise ConnectionError("Name or service not known")

    monkeypatch.delenv(models.RESNET18_ENV, raising=False)
    monkeypatch.setenv("MXNET_HOME", str(tmp_path))
    monkeypatch.setattr(model_store, "get_model_file", offline)
    with pytest.raises(ModelError) as info:
        models.load_source("resnet18_v2")
    msg = str(info.value)
    assert "efficientnet_lite0" in msg and "Name or service not known" in msg and models.RESNET18_ENV in msg


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing", "other-model", "nan"])
def test_bad_params_files_give_model_error(resnet_params, tmp_path, damage):
    path = tmp_path / "bad.params"
    data = resnet_params.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif damage == "garbage":
        path.write_bytes(b"\x12\x01" + b"\xff" * 4000)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "other-model":
        dense = gluon.nn.Dense(3, in_units=2)
        dense.initialize()
        dense.save_parameters(str(path))
    elif damage == "nan":
        from mxnet.gluon.model_zoo import vision

        net = vision.resnet18_v2()
        net.load_parameters(str(resnet_params))
        w = net.output.weight.data()
        w[0, 0] = float("nan")
        net.save_parameters(str(path))
    with pytest.raises(ModelError, match="bad.params"):
        models.load_source("resnet18_v2", params_path=path)


# ------------------------------------------------------------------ builders

@pytest.mark.parametrize("hybridize", [False, True])
def test_finetune_copies_features_and_leaves_the_source_pristine(hybridize):
    src = models.load_source(SRC)
    before = _snapshot(src)
    net = models.build_finetune(SRC, 2, bn_mode="update")
    assert not set(map(id, net.collect_params().values())) & set(map(id, src.collect_params().values()))
    for k, v in _snapshot(net.features).items():
        np.testing.assert_array_equal(v, before["features." + k])
    if hybridize:
        net.hybridize()
    _train_step(net)
    after = _snapshot(src)
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)
    trained = _snapshot(net.features)
    assert any(not np.array_equal(v, before["features." + k]) for k, v in trained.items())


def test_output_layer_is_new_xavier_with_lr_mult():
    net = models.build_finetune(SRC, 3, lr_mult=7.5)
    assert net.output.weight.shape == (3, 1280) and net.output.bias.shape == (3,)
    assert all(p.lr_mult == 7.5 for p in net.output.collect_params().values())
    assert all(p.lr_mult == 1.0 for p in net.features.collect_params().values())
    assert models.build_finetune(SRC, 2).output.weight.lr_mult == 10.0
    w = net.output.weight.data().asnumpy()
    bound = math.sqrt(3.0 / ((1280 + 3) / 2))  # Xavier uniform, avg fan, magnitude 3
    assert np.abs(w).max() <= bound and w.std() > bound / 4
    assert np.all(net.output.bias.data().asnumpy() == 0)


def _bn_stats(net):
    mx.nd.waitall()
    return [(bn.running_mean.data().asnumpy().copy(), bn.running_var.data().asnumpy().copy())
            for bn in models.batchnorm_layers(net.features)]


def _moved(a, b) -> float:
    return max(max(np.abs(m1 - m2).max(), np.abs(v1 - v2).max()) for (m1, v1), (m2, v2) in zip(a, b))


@pytest.mark.parametrize("hybridize", [False, True])
def test_freeze_keeps_weights_and_batchnorm_statistics(hybridize):
    net = models.build_finetune(SRC, 2, freeze=True, bn_mode="update")
    assert all(p.grad_req == "null" for p in net.features.collect_params().values())
    assert all(p.grad_req == "write" for p in net.output.collect_params().values())
    stats, weights, head = _bn_stats(net), _snapshot(net.features), _snapshot(net.output)
    if hybridize:
        net.hybridize()
    _train_step(net)
    assert _moved(stats, _bn_stats(net)) == 0.0
    for k, v in _snapshot(net.features).items():
        np.testing.assert_array_equal(v, weights[k])
    assert any(not np.array_equal(v, head[k]) for k, v in _snapshot(net.output).items())

    models.set_freeze(net, False)  # back to the net's own bn_mode ('update'): statistics move
    _train_step(net)
    assert _moved(stats, _bn_stats(net)) > 1e-3


@pytest.mark.parametrize("hybridize", [False, True])
def test_bn_mode_keep_vs_update(hybridize):
    keep = models.build_finetune(SRC, 2)  # default: keep pretrained statistics
    update = models.build_finetune(SRC, 2, bn_mode="update")
    for net in (keep, update):
        if hybridize:
            net.hybridize()
            net(mx.nd.zeros((1, 3, 32, 32)))  # graph already built: the mode switch must still apply
    s_keep, s_update = _bn_stats(keep), _bn_stats(update)
    g_keep = _snapshot(keep.features)
    _train_step(keep)
    _train_step(update)
    assert _moved(s_keep, _bn_stats(keep)) == 0.0
    assert _moved(s_update, _bn_stats(update)) > 1e-3
    gammas = [k for k in g_keep if k.endswith("gamma")]
    assert any(not np.array_equal(_snapshot(keep.features)[k], g_keep[k]) for k in gammas)  # still trains

    models.set_bn_mode(update, "keep")
    s = _bn_stats(update)
    _train_step(update)
    assert _moved(s, _bn_stats(update)) == 0.0
    with pytest.raises(ModelError, match="keep, update"):
        models.set_bn_mode(update, "frozen")
    with pytest.raises(ModelError):
        models.build_finetune(SRC, 2, bn_mode="sometimes")


def test_scratch_is_all_random():
    src = _snapshot(models.load_source(SRC).features)
    net = models.build_scratch(SRC, 2)
    snap = _snapshot(net.features)
    conv = [k for k in snap if k.endswith("weight")]
    assert all(not np.allclose(snap[k], src[k]) for k in conv)
    assert all(np.all(snap[k] == 0) for k in snap if k.endswith("running_mean"))
    assert net(mx.nd.random.uniform(-1, 1, shape=(2, 3, 32, 32))).shape == (2, 2)
    _train_step(net)  # trains with the chapter's BatchNorm behaviour
    assert any(not np.all(_snapshot(net.features)[k] == 0) for k in snap if k.endswith("running_mean"))


def test_builders_take_a_context_list():
    ctx = [mx.cpu(0), mx.cpu(1)]
    for net in (models.build_finetune(SRC, 2, ctx=ctx), models.build_scratch(SRC, 2, ctx=ctx)):
        assert all(len(p.list_ctx()) == 2 for p in net.collect_params().values())


# ------------------------------------------------------------------ class weights, top-k

def test_class_weights_hotdog_row():
    cw = models.class_weights(SRC, "Hot Dog", k=5)
    w = models.load_source(SRC).output.weight.data().asnumpy()
    hot = imagenet.class_index("hotdog")
    assert cw.index == hot and cw.name == imagenet.full_name(hot)
    np.testing.assert_array_equal(cw.vector, w[hot])
    assert cw.length == 1280 and math.isclose(cw.norm, float(np.linalg.norm(w[hot])), rel_tol=1e-5)
    d = cw.to_dict()
    assert set(d) == {"index", "name", "length", "norm", "bias", "mean", "std", "nearest"}
    assert [n["cosine"] for n in d["nearest"]] == sorted((n["cosine"] for n in d["nearest"]), reverse=True)
    assert hot not in [n["index"] for n in d["nearest"]] and len(d["nearest"]) == 5
    json.dumps(d)
    with pytest.raises(HotdogError):
        models.class_weights(SRC, "no such thing")


def test_imagenet_topk_batches_images():
    images = [Image.new("RGB", (40, 30), c) for c in ("red", "blue", "white")]
    out = models.imagenet_topk(SRC, images, k=5)
    assert len(out) == 3
    for top in out:
        assert len(top) == 5 and set(top[0]) == {"index", "name", "probability"}
        probs = [t["probability"] for t in top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
        assert top[0]["name"] == imagenet.full_name(top[0]["index"])


# ------------------------------------------------------------------ zero-shot heads

def test_init_output_from_imagenet_without_data():
    hot = imagenet.class_index("hotdog")
    w, b = models.output_layer(SRC)
    net = models.build_finetune(SRC, 3, init_output_from_imagenet=True,
                                class_names=["hot_dog", "not-hotdog", "my cat"])
    head = net._hotdog_head_init
    assert head.rules == [f"imagenet:{hot}", f"not:{hot}", "random"] and not head.fitted
    ow, ob = net.output.weight.data().asnumpy(), net.output.bias.data().asnumpy()
    np.testing.assert_allclose(ow[0], w[hot])
    assert math.isclose(ob[0], b[hot], rel_tol=1e-6)
    others = np.arange(1000) != hot
    np.testing.assert_allclose(ow[1], w[others].mean(axis=0), rtol=1e-4, atol=1e-6)
    assert math.isclose(ob[1], b[others].mean() + math.log(999), rel_tol=1e-5)
    assert not np.allclose(ow[2], 0)  # unmatched class keeps its Xavier row
    with pytest.raises(ModelError, match="class_names"):
        models.build_finetune(SRC, 2, init_output_from_imagenet=True)


def test_zero_shot_head_fit_on_data_reproduces_its_rule(tiny_dataset):
    from hotdog.data import load_splits

    splits = load_splits(tiny_dataset)
    net = models.build_finetune(SRC, 2, init_output_from_imagenet=True, class_names=splits.classes,
                                init_items=splits.train)
    head = net._hotdog_head_init
    assert head.fitted and 0.5 <= head.train_accuracy <= 1.0
    # The head applied to the source's features makes exactly the fitted threshold decision.
    feats, _, labels = models.items_forward(SRC, splits.train)
    w, b = net.output.weight.data().asnumpy(), net.output.bias.data().asnumpy()
    acc = float(np.mean((feats @ w.T + b).argmax(axis=1) == labels))
    assert math.isclose(acc, head.train_accuracy, abs_tol=1e-6)
    assert "'hotdog' = ImageNet row 934" in models.head_note(splits.classes)
    assert "'not-hotdog' = everything but row 934" in models.head_note(splits.classes)


# ------------------------------------------------------------------ CLI

def _run(argv, capsys):
    """Dispatch like hotdog.cli.main, with only this module's commands registered."""
    from hotdog.commands import models as cmd

    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except HotdogError as err:
        print(f"error: {err}", file=__import__("sys").stderr)
        code = 1
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_classify_json(tmp_path, capsys):
    good = tmp_path / "red.png"
    Image.new("RGB", (50, 40), (200, 40, 30)).save(good)
    bad = tmp_path / "notes.jpg"
    bad.write_text("<html>not an image</html>")
    code, out, _ = _run(["classify", str(good), str(bad), "--json"], capsys)
    assert code == 1
    doc = json.loads(out)
    assert doc[0]["path"] == str(good) and len(doc[0]["top5"]) == 5
    assert set(doc[0]["top5"][0]) == {"index", "name", "probability"}
    assert doc[1]["path"] == str(bad) and doc[1]["error"] and "top5" not in doc[1]
    code, out, _ = _run(["classify", str(good), "--json"], capsys)
    assert code == 0 and len(json.loads(out)) == 1


def test_cli_imagenet_json_and_errors(resnet_params, capsys):
    code, out, _ = _run(["imagenet", "--class", "hotdog", "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["index"] == imagenet.class_index("hotdog")
    assert set(doc) == {"index", "name", "length", "norm", "bias", "mean", "std", "nearest"}
    assert set(doc["nearest"][0]) == {"index", "name", "cosine"}

    code, out, _ = _run(["imagenet", "--source", "resnet18_v2", "--params", str(resnet_params), "--json"], capsys)
    assert code == 0 and json.loads(out)["length"] == 512
    code, out, _ = _run(["classify", "--source", "resnet18_v2", "--params", str(resnet_params), "--json",
                         str(resnet_params)], capsys)
    assert code == 1 and "error" in json.loads(out)[0]

    code, out, err = _run(["imagenet", "--source", "alexnet", "--json"], capsys)
    assert code == 1 and out == "" and "efficientnet_lite0" in err
    code, out, err = _run(["imagenet", "--class", "hotdgo"], capsys)
    assert code == 1 and "did you mean" in err
    code, out, _ = _run(["imagenet"], capsys)
    assert "photocopier" in out  # the chapter's row 713 pointed out


def test_cli_is_wired_into_the_main_dispatcher(capsys):
    try:
        from hotdog import cli

        parser = cli.build_parser()
    except ImportError as err:  # another area's commands are not there yet
        pytest.skip(f"hotdog.cli not importable yet: {err}")
    args = parser.parse_args(["sources", "--json"])
    assert args.func(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["default"] == "efficientnet_lite0" and len(doc["sources"]) == 2
