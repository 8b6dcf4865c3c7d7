"""Inference copies (MKLDNN fusion, bfloat16) must match the plain network and leave it untouched."""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from hotdog import inference


def _conv_bn_net(classes: int = 5, deferred_head: bool = False) -> gluon.HybridBlock:
    """A small conv-BN-relu stack: the pattern MKLDNN folds, with non-trivial BN statistics."""
    mx.random.seed(1)
    net = gluon.nn.HybridSequential()
    with net.name_scope():
        for channels in (8, 16):
            net.add(gluon.nn.Conv2D(channels, 3, padding=1, use_bias=False), gluon.nn.BatchNorm(), gluon.nn.Activation("relu"))
        net.add(gluon.nn.GlobalAvgPool2D())
        net.add(gluon.nn.Dense(classes) if deferred_head else gluon.nn.Dense(classes, in_units=16))
    net.initialize(mx.init.Xavier())
    if not deferred_head:
        net(mx.nd.zeros((1, 3, 16, 16)))
        for name, param in net.collect_params().items():
            if name.endswith("running_mean"):
                param.set_data(mx.nd.random.normal(0, 0.3, param.shape))
            elif name.endswith("running_var"):
                param.set_data(mx.nd.random.uniform(0.5, 2.0, param.shape))
            elif name.endswith("gamma"):
                param.set_data(mx.nd.random.uniform(0.5, 1.5, param.shape))
    return net


def _snapshot(net):
    return {name: p.data().asnumpy().copy() for name, p in net.collect_params().items()}


def test_fused_copy_is_exact_and_leaves_original_untouched():
    net = _conv_bn_net()
    before = _snapshot(net)
    x = mx.nd.random.uniform(shape=(4, 3, 24, 24))
    choice = inference.fast_inference_block(net, x)
    if inference.mkldnn_enabled():
        assert choice.fused, choice.reason
    assert choice.max_abs_diff <= 1e-4
    # other batch sizes and image sizes than the example still agree
    for shape in [(1, 3, 24, 24), (3, 3, 32, 40)]:
        y = mx.nd.random.uniform(shape=shape)
        assert inference.max_abs_diff(net, choice.block, y) <= 1e-4
    after = _snapshot(net)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not net._active  # the shared network was not hybridized behind the caller's back


def test_fused_graph_really_fuses():
    if not inference.mkldnn_enabled():
        pytest.skip("MXNet built without MKLDNN")
    net = _conv_bn_net()
    x = mx.nd.random.uniform(shape=(2, 3, 16, 16))
    block = inference.fused_forward_block(net, x)
    block(x).wait_to_read()
    ops = block._cached_graph[1].tojson()
    assert "_sg_mkldnn_conv" in ops


def test_deferred_head_is_initialised_from_example():
    net = _conv_bn_net(deferred_head=True)
    x = mx.nd.random.uniform(shape=(2, 3, 16, 16))
    choice = inference.fast_inference_block(net, x)
    assert choice.block(x).shape == (2, 5)


def test_copy_is_independent_of_later_training():
    net = _conv_bn_net()
    x = mx.nd.random.uniform(shape=(2, 3, 16, 16))
    copy = inference.inference_copy(net)
    expected = copy(x).asnumpy()
    for param in net.collect_params().values():
        param.set_data(param.data() * 0)
    np.testing.assert_allclose(copy(x).asnumpy(), expected)


def test_cpu_introspection():
    assert isinstance(inference.bf16_supported(), bool)
    assert isinstance(inference.cpu_flags(), frozenset)
    assert inference.cpu_model()


def test_bf16_copy_agrees_on_top1():
    if not inference.bf16_supported():
        pytest.skip("no AVX512-BF16/AMX on this CPU")
    net = _conv_bn_net(classes=10)
    x = mx.nd.random.uniform(shape=(16, 3, 16, 16))
    block = inference.bf16_block(net, x)
    out = block(x)
    assert out.dtype == np.float32
    ref = net(x).asnumpy()
    got = out.asnumpy()
    assert np.abs(got - ref).max() < 0.1 * (np.abs(ref).max() + 1e-3)


def _random_efficientnet():
    """EfficientNet-Lite0 with random weights and BatchNorm statistics of ordinary size."""
    from hotdog.efficientnet import EfficientNetLite0

    mx.random.seed(3)
    net = EfficientNetLite0(classes=7)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net(mx.nd.zeros((1, 3, 32, 32)))
    for name, param in net.collect_params().items():
        if name.endswith("running_mean") or name.endswith("beta"):
            param.set_data(mx.nd.random.normal(0, 0.1, param.shape))
        elif name.endswith("running_var") or name.endswith("gamma"):
            param.set_data(mx.nd.random.uniform(0.5, 1.5, param.shape))
    return net


def _ops(block) -> set:
    import json

    return {node["op"] for node in json.loads(block._cached_graph[1].tojson())["nodes"]}


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 65, 65), (2, 3, 64, 71), (3, 3, 97, 38)])
def test_efficientnet_fused_copy_folds_same_padding_into_its_convolutions(shape):
    """MXNet's Pad has no oneDNN kernel: each of the 5 stride-2 SAME pads cost two layout
    reorders (31% of a fused forward at 224 px). The fused copy folds them into the
    convolutions (a zero-extended kernel on even sides, the convolution's own pad on odd
    ones): no Pad op left, the same outputs, and the network itself is untouched."""
    from hotdog.efficientnet import SamePadConv, _walk

    net = _random_efficientnet()
    before = _snapshot(net)
    x = mx.nd.random.uniform(-1, 1, shape=shape)
    with mx.autograd.predict_mode():
        ref = net(x).asnumpy()
    assert np.abs(ref).max() > 1e-2  # outputs of a size where a wrong pad would show
    plain = inference.inference_copy(net, x.context, x, fold_same_padding=True)
    folded = [k for k in plain.collect_params() if k.rsplit("_same", 1)[-1] in ("00", "01", "10", "11")]
    assert len(folded) == 5  # the stem and the four stride-2 depthwise convolutions
    np.testing.assert_allclose(plain(x).asnumpy(), ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    assert "Pad" not in _ops(plain)
    if inference.mkldnn_enabled():
        fused = inference.fused_forward_block(net, x)
        np.testing.assert_allclose(fused(x).asnumpy(), ref, rtol=0, atol=1e-4)
        assert "Pad" not in _ops(fused)
    after = _snapshot(net)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not any(b.fold_pad for b in _walk(net) if isinstance(b, SamePadConv))
    with mx.autograd.predict_mode():  # the network still pads as before
        np.testing.assert_array_equal(net(x).asnumpy(), ref)
