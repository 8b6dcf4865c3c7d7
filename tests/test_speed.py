"""Speed levers keep results equal (hotdog.hybrid) and the thread policy (hotdog.threads)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hotdog import threads

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------- static allocation

def _twin_nets():
    import mxnet as mx

    from hotdog.efficientnet import EfficientNetLite0

    nets = []
    for _ in range(2):
        mx.random.seed(3)
        net = EfficientNetLite0(classes=2)
        net.initialize(mx.init.Xavier())
        nets.append(net)
    return nets


def _train_and_eval(net, hybridize, batches, eval_x):
    import mxnet as mx
    from mxnet import autograd, gluon

    hybridize(net)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.05, "momentum": 0.9})
    losses = []
    for x, y in batches:
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(x.shape[0])
        losses.append(loss.asnumpy())
    outs = [net(e).asnumpy() for e in eval_x]
    mx.nd.waitall()
    weights = {k.split("_", 1)[1]: p.data().asnumpy() for k, p in net.collect_params().items()}
    return losses, outs, weights


def test_static_alloc_training_equals_plain_hybridize():
    """Batch, smaller last batch, batch again, then two evaluation shapes: the loss of every
    step, the outputs and the weights equal the plain ``hybridize()`` path."""
    import mxnet as mx

    from hotdog.efficientnet import set_training_kernels
    from hotdog.hybrid import hybridize_for_training

    rng = np.random.RandomState(0)

    def batch(n):
        return mx.nd.array(rng.rand(n, 3, 32, 32).astype("float32")), mx.nd.array(rng.randint(0, 2, n))

    batches = [batch(4), batch(3), batch(4)]
    eval_x = [mx.nd.array(rng.rand(n, 3, 32, 32).astype("float32")) for n in (5, 2)]
    plain, static = _twin_nets()
    # the same graph (training kernels, tested separately below), planned or not
    l0, o0, w0 = _train_and_eval(plain, lambda n: (set_training_kernels(n), n.hybridize()), batches, eval_x)
    l1, o1, w1 = _train_and_eval(static, hybridize_for_training, batches, eval_x)
    assert np.array_equal(l0[0], l1[0])  # first step bitwise
    for a, b in zip(l0, l1):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    for a, b in zip(o0, o1):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    assert w0.keys() == w1.keys()
    for k in w0:
        np.testing.assert_allclose(w0[k], w1[k], rtol=0, atol=1e-6, err_msg=k)


def test_training_and_inference_paths_use_static_alloc(monkeypatch, tiny_dataset, hotdog_home):
    """The product's training loop hybridizes through hotdog.hybrid (not a plain hybridize)."""
    from hotdog import hybrid, settings, train

    seen = []
    real = hybrid.hybridize_for_training
    monkeypatch.setattr(hybrid, "hybridize_for_training", lambda net: (seen.append(net), real(net)))
    cfg = settings.config_for(str(tiny_dataset), mode="scratch", epochs=1, batch_size=4, input_size=32,
                              num_workers=0)
    result = train.train(cfg, runs_dir=str(hotdog_home / "runs"))
    assert result.status == "finished"
    assert len(seen) == 1
    assert dict(seen[0]._flags).get("static_alloc") is True  # Gluon keeps hybridize()'s flags here


# ----------------------------------------------------------------------- thread policy

@pytest.mark.parametrize("nproc,load,want", [
    (2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 7.5, 1), (8, 2.2, 6), (1, 0.0, 1), (4, None, 4),
])
def test_policy_uses_idle_cpus(nproc, load, want):
    assert threads.policy_threads(nproc, load) == want


def test_user_setting_wins():
    c = threads.decide("cli", environ={"OMP_NUM_THREADS": "3"}, nproc=2, load=0.0)
    assert (c.omp_num_threads, c.source) == (3, "user")
    c = threads.decide("cli", environ={"OMP_NUM_THREADS": "1"}, nproc=2, load=0.0)
    assert (c.omp_num_threads, c.source) == (1, "user")


@pytest.mark.parametrize("bad", ["", "zero", "0", "-2"])
def test_unusable_user_value_falls_back_to_policy(bad):
    c = threads.decide("cli", environ={"OMP_NUM_THREADS": bad}, nproc=2, load=1.5)
    assert (c.omp_num_threads, c.source) == (1, "policy")


def test_child_inherits_the_parents_decision_not_as_user():
    parent = threads.decide("app", environ={}, nproc=2, load=0.1)
    env = {"OMP_NUM_THREADS": str(parent.omp_num_threads), threads.MARKER: json.dumps(parent.to_dict())}
    child = threads.decide("worker", environ=env, nproc=2, load=5.0)  # the load has changed since
    assert child.source == "policy"
    assert child.omp_num_threads == parent.omp_num_threads == 2
    assert child.path == "app" and child.load_1min == 0.1
    # The user changed OMP_NUM_THREADS after the marker was written: theirs wins.
    env["OMP_NUM_THREADS"] = "1"
    assert threads.decide("worker", environ=env, nproc=2).source == "user"


def _run(code: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


PROBE = ("import json, os, sys; from hotdog import threads; c = threads.apply('cli'); import mxnet;"
         "print(json.dumps({'choice': c.to_dict(), 'env': os.environ.get('OMP_NUM_THREADS')}))")


def test_apply_exports_before_mxnet_and_user_value_is_kept(monkeypatch):
    import os

    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", threads.MARKER)}
    got = _run(PROBE, base)
    assert got["choice"]["source"] == "policy" and not got["choice"]["late"]
    assert got["env"] == str(got["choice"]["omp_num_threads"])
    got = _run(PROBE, {**base, "OMP_NUM_THREADS": "1"})
    assert got["choice"] == {**got["choice"], "omp_num_threads": 1, "source": "user"}
    assert got["env"] == "1"


def test_cli_entry_applies_the_policy_before_mxnet():
    """``python -m hotdog`` decides before any command module can import MXNet."""
    src = (ROOT / "hotdog" / "__main__.py").read_text()
    assert src.index("threads.apply(") < src.index("from hotdog.cli import")
    app = (ROOT / "streamlit_app.py").read_text()
    assert app.index("threads.apply(") < app.index("import ui")


def test_run_config_records_the_threads(tiny_dataset, hotdog_home):
    from hotdog import settings, train
    from hotdog.runs import RunStore

    cfg = settings.config_for(str(tiny_dataset), mode="scratch", epochs=1, batch_size=4, input_size=32,
                              num_workers=0)
    prepared = train.prepare(cfg)
    record = prepared.record()
    assert record["threads"] == threads.current().to_dict()
    assert record["threads"]["omp_num_threads"] >= 1
    store = RunStore(hotdog_home / "runs")
    run_id, run_dir = store.create(record)
    saved = json.loads((Path(run_dir) / "config.json").read_text())
    assert saved["threads"]["source"] in ("user", "policy")
    assert settings.TrainConfig.from_dict(saved) == prepared.config  # the extra key is not a knob


# ----------------------------------------------------------------------- bench threads stage

@pytest.mark.timeout(600)
def test_bench_threads_stage_reports_speedup_and_records_threads(hotdog_home):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", threads.MARKER)}
    env["HOTDOG_HOME"] = str(hotdog_home)
    proc = subprocess.run([sys.executable, "-m", "hotdog", "bench", "--quick", "--only", "threads", "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=590)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    t = doc["details"]["threads"]
    by = t["images_per_sec_by_threads"]
    assert "1" in by and all(v > 0 for v in by.values()), t
    policy = t["policy"]["omp_num_threads"]
    assert doc["training_img_s"] == pytest.approx(by[str(policy)])
    assert doc["threads_training_speedup"] == pytest.approx(by[str(policy)] / by["1"])
    assert doc["machine"]["threads"] == t["policy"]
    assert doc["pipeline_efficiency"] is None  # a stage that did not run reports null, not a figure


def test_bench_rejects_an_unknown_stage(hotdog_home):
    proc = subprocess.run([sys.executable, "-m", "hotdog", "bench", "--only", "warp", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "unknown bench stage 'warp'" in json.loads(proc.stdout)["error"]


def test_peer_bench_skips_cleanly_without_torch():
    import importlib.util

    if importlib.util.find_spec("torch") is not None and importlib.util.find_spec("timm") is not None:
        pytest.skip("torch and timm are importable here: the skip path cannot be exercised")
    proc = subprocess.run([sys.executable, "scripts/peer_bench.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("peer_bench skipped:")


# ----------------------------------------------------------------------- training kernels

def test_fast_relu6_block_is_bitwise_equal_and_keeps_nan():
    """ConvBNReLU6 with the training ReLU6 (maximum, then clip): output, input gradient,
    parameter gradients and running statistics bitwise equal to BatchNorm + clip, on
    pre-activations spanning both clip bounds; a NaN stays NaN (divergence detection)."""
    import mxnet as mx
    from mxnet import autograd

    from hotdog import efficientnet as E

    rng = np.random.RandomState(0)
    blocks = [E.ConvBNReLU6(8, 16, 3, 1) for _ in range(2)]
    blocks[0].fast_relu6 = True
    got = []
    head = rng.normal(size=(4, 16, 12, 12)).astype("float32")
    x_np = rng.normal(0, 3, (4, 8, 12, 12)).astype("float32")
    w = rng.normal(size=(16, 8, 3, 3)).astype("float32")
    for b in blocks:
        b.initialize(mx.init.One())
        b.conv.conv.weight.set_data(mx.nd.array(w))
        # beta 3, gamma 4: BatchNorm outputs N(3, 4^2), well below 0 and above 6
        b.bn.beta.set_data(mx.nd.full((16,), 3.0))
        b.bn.gamma.set_data(mx.nd.full((16,), 4.0))
        b.hybridize(static_alloc=True)
        x = mx.nd.array(x_np)
        x.attach_grad()
        with autograd.record():
            y = b(x)
        y.backward(mx.nd.array(head))
        grads = [p.grad().asnumpy() for p in b.collect_params().values() if p.grad_req != "null"]
        got.append([y.asnumpy(), x.grad.asnumpy(), b.bn.running_mean.data().asnumpy(),
                    b.bn.running_var.data().asnumpy()] + grads)
    out = got[0][0]
    assert (out == 0).mean() > 0.1 and (out == 6).mean() > 0.1  # both bounds exercised
    for a, b in zip(*got):
        assert np.array_equal(a, b)
    bad = x_np.copy()
    bad[0, 0, 0, 0] = np.nan
    with autograd.predict_mode():
        assert np.isnan(blocks[0](mx.nd.array(bad)).asnumpy()).any()


def _hybridize_with(**kernels):
    """hybridize_for_training, then some training kernels switched back off."""
    from hotdog.efficientnet import set_training_kernels
    from hotdog.hybrid import hybridize_for_training

    def go(net):
        hybridize_for_training(net)
        set_training_kernels(net, **kernels)
    return go


def test_relu6_network_step_equals_clip_network():
    """One hybridized (static_alloc) training step of EfficientNet-Lite0 with the training
    ReLU6 and with plain ``clip``: bitwise-equal loss, equal outputs and weights."""
    import mxnet as mx

    rng = np.random.RandomState(1)
    batches = [(mx.nd.array(rng.normal(0, 2, (4, 3, 40, 40)).astype("float32")),
                mx.nd.array(rng.randint(0, 2, 4)))]
    eval_x = [mx.nd.array(rng.normal(0, 2, (3, 3, 40, 40)).astype("float32"))]
    fast, slow = _twin_nets()
    l0, o0, w0 = _train_and_eval(fast, _hybridize_with(split_depthwise=False), batches, eval_x)
    l1, o1, w1 = _train_and_eval(slow, _hybridize_with(relu6=False, split_depthwise=False), batches, eval_x)
    assert np.array_equal(l0[0], l1[0])
    np.testing.assert_allclose(o0[0], o1[0], rtol=0, atol=1e-5)
    for k in w0:
        np.testing.assert_allclose(w0[k], w1[k], rtol=0, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("stride,size", [(1, 9), (1, 6), (2, 10), (2, 11)])
def test_split_wide_depthwise_equals_one_convolution(stride, size):
    """A 5x5 depthwise SamePadConv run as 3-wide + 2-wide convolutions gives the output, the
    input gradient and the weight gradient of the single 5x5 convolution."""
    import mxnet as mx
    from mxnet import autograd

    from hotdog import efficientnet as E

    convs = [E.SamePadConv(16, 16, 5, stride, groups=16) for _ in range(2)]
    assert type(convs[0].conv) is E._WideDepthwise
    assert E.set_training_kernels(convs[0]) and not E.set_training_kernels(convs[1], split_depthwise=False)
    rng = np.random.RandomState(stride * 100 + size)
    w = rng.normal(size=(16, 1, 5, 5)).astype("float32")
    x_np = rng.normal(size=(2, 16, size, size + 1)).astype("float32")
    head = None
    got = []
    for conv in convs:
        conv.initialize()
        conv.conv.weight.set_data(mx.nd.array(w))
        E.configure_same_padding(conv, x_np.shape)
        conv.hybridize(static_alloc=True)
        x = mx.nd.array(x_np)
        x.attach_grad()
        with autograd.record():
            y = conv(x)
        head = rng.normal(size=y.shape).astype("float32") if head is None else head
        y.backward(mx.nd.array(head))
        got.append((y.asnumpy(), x.grad.asnumpy(), conv.conv.weight.grad().asnumpy()))
    assert got[0][0].shape == got[1][0].shape == (2, 16, -(-size // stride), -(-(size + 1) // stride))
    for a, b in zip(*got):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_split_network_step_equals_unsplit():
    """One training step with the split gives the loss and weights of the unsplit network,
    up to float summation order: within 1e-5 of the step's largest weight change (about 1)."""
    import mxnet as mx

    rng = np.random.RandomState(2)
    # 96 px: at smaller sizes the last BatchNorms see a handful of values and amplify rounding.
    batches = [(mx.nd.array(rng.rand(4, 3, 96, 96).astype("float32")), mx.nd.array([0, 1, 1, 0]))]
    split, plain = _twin_nets()
    before = {k.split("_", 1)[1]: p.data().asnumpy() for k, p in plain.collect_params().items()}
    l0, o0, w0 = _train_and_eval(split, _hybridize_with(), batches, [batches[0][0]])
    l1, o1, w1 = _train_and_eval(plain, _hybridize_with(split_depthwise=False), batches, [batches[0][0]])
    np.testing.assert_allclose(l0[0], l1[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(o0[0], o1[0], rtol=0, atol=1e-5)
    scale = max(1.0, max(np.abs(w1[k] - before[k]).max() for k in w1))
    for k in w0:
        np.testing.assert_allclose(w0[k], w1[k], rtol=0, atol=1e-5 * scale, err_msg=k)


def _ops(sym) -> set:
    return {node["op"] for node in json.loads(sym.tojson())["nodes"]}


def test_training_net_uses_fast_kernels_and_inference_copies_do_not():
    """hybridize_for_training switches the graph to the training kernels; a fresh network and
    the inference copy of a training network trace today's graph (conv + BN + clip, one 5x5
    convolution: what oneDNN fuses and ONNX exports), and copying leaves the training
    network's flags as they were."""
    import mxnet as mx

    from hotdog import efficientnet as E
    from hotdog.hybrid import hybridize_for_training
    from hotdog.inference import inference_copy

    net, _ = _twin_nets()
    x = mx.nd.random.uniform(shape=(2, 3, 32, 32))
    E.configure_same_padding(net, x)
    data = mx.sym.var("data")
    plain_ops = _ops(net(data))
    assert "_maximum_scalar" not in plain_ops and "slice_axis" not in plain_ops and "clip" in plain_ops
    hybridize_for_training(net)
    train_ops = _ops(net(data))
    assert {"_maximum_scalar", "slice_axis", "clip"} <= train_ops
    n_split = sum(isinstance(b, E._WideDepthwise) and b.split for b in E._walk(net))
    assert n_split == sum(1 for b in E.BLOCKS if b[3] == 5)
    copy = inference_copy(net, example=x)
    assert _ops(copy._cached_graph[1]) == plain_ops  # a SymbolBlock keeps its traced symbol here
    with E.inference_kernels(net):
        assert _ops(net(data)) == plain_ops
    assert _ops(net(data)) == train_ops  # restored
    np.testing.assert_allclose(copy(x).asnumpy(), net(x).asnumpy(), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------- malloc tuning

MALLOC_PROBE = (
    "import json, resource; from hotdog import malloc_tuning; t = malloc_tuning.apply();"
    "import mxnet as mx, numpy as np; from mxnet import autograd, gluon;"
    "from hotdog.efficientnet import EfficientNetLite0; from hotdog.hybrid import hybridize_for_training;"
    "mx.random.seed(5); net = EfficientNetLite0(classes=2); net.initialize(mx.init.Xavier());"
    "hybridize_for_training(net); rng = np.random.RandomState(5);"
    "x = mx.nd.array(rng.rand(3, 3, 40, 40).astype('float32')); y = mx.nd.array([0, 1, 0]);"
    "tr = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1});"
    "losses = []\n"
    "for _ in range(2):\n"
    "    with autograd.record(): l = gluon.loss.SoftmaxCrossEntropyLoss()(net(x), y)\n"
    "    l.backward(); tr.step(3); losses.append(l.asnumpy().tolist())\n"
    "print(json.dumps({'tuning': t.to_dict(), 'losses': losses,"
    " 'w': float(net.features[0].conv.conv.weight.data().sum().asscalar())}))"
)


def test_malloc_tuning_applies_keeps_results_and_yields_to_the_user():
    """In a fresh process the tuning applies (glibc) and training gives bitwise the results
    of a process with glibc's defaults; a user's MALLOC_* setting is left alone."""
    import os
    import platform

    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    base["OMP_NUM_THREADS"] = "1"
    tuned = _run(MALLOC_PROBE, base)
    user = _run(MALLOC_PROBE, {**base, "MALLOC_ARENA_MAX": "4"})
    assert user["tuning"] == {"applied": False, "reason": "user setting MALLOC_ARENA_MAX kept"}
    if platform.libc_ver()[0] == "glibc":
        assert tuned["tuning"]["applied"] is True
    assert tuned["losses"] == user["losses"] and tuned["w"] == user["w"]


def test_training_processes_tune_malloc_before_mxnet():
    """The training worker and ``python -m hotdog`` apply it before anything imports MXNet;
    the app process (streamlit_app.py) does not (its memory must go back to the system)."""
    main = (ROOT / "hotdog" / "__main__.py").read_text()
    assert main.index("malloc_tuning.apply()") < main.index("from hotdog.cli import")
    worker = (ROOT / "hotdog" / "worker.py").read_text()
    entry = worker[worker.index("def _child_entry"):worker.index("def _child_main")]
    assert entry.index("malloc_tuning.apply()") < entry.index("_child_main(")
    assert "malloc_tuning" not in (ROOT / "streamlit_app.py").read_text()
    # the bench's training-speed children stand in for the worker (bench_threads)
    bench = (ROOT / "hotdog" / "bench_threads.py").read_text()
    child = bench[bench.index("def _child("):]
    assert child.index("malloc_tuning.apply()") < child.index("import mxnet")
    import subprocess
    import sys

    probe = "import sys, hotdog.bench_threads; print('mxnet' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip() == "False"  # importing the child's module loads no MXNet


def test_training_kernels_only_on_cpu(monkeypatch):
    """A network whose parameters live on a GPU keeps today's graph (the kernels work around
    oneDNN costs and were measured on CPU only)."""
    import mxnet as mx

    from hotdog import efficientnet as E
    from hotdog import hybrid

    net, other = _twin_nets()
    hybrid.hybridize_for_training(net)
    assert all(getattr(b, a) for b, a in E._switches(net))
    param = next(iter(other.collect_params().values()))
    monkeypatch.setattr(type(param), "list_ctx", lambda self: [mx.gpu(0)])
    assert not hybrid.on_cpu(other)
    hybrid.hybridize_for_training(other)
    assert not any(getattr(b, a) for b, a in E._switches(other))
