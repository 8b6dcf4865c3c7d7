"""Faster inference copies of a network: MKLDNN graph fusion and bfloat16.

Public helpers other modules may call (feature caching, prediction, the benchmark):

- ``inference_copy(net)``: a detached, hybridized ``SymbolBlock`` copy of ``net`` with its own
  parameter arrays, so optimizing it can never touch the original (``models.load_source``
  caches its networks and callers must not mutate them).
- ``fused_forward_block(net, example)``: that copy partitioned by MXNet's MKLDNN subgraph
  backend (conv + BatchNorm folding, conv + activation fusion). Inference only: the folding
  bakes the running statistics in, so it must never be trained.
- ``fast_inference_block(net, example, atol=1e-4)``: the fused copy when its outputs agree with
  the plain network to ``atol`` on ``example``, else the plain copy; plus the measured difference.
- ``bf16_supported()`` / ``bf16_block(net, example)``: a bfloat16 copy through MXNet AMP, only
  meaningful on CPUs with AVX512-BF16 or AMX.

Nothing here keeps global state besides the memoised CPU flag set (it cannot change while the
process runs).
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass

import mxnet as mx
import numpy as np
from mxnet import gluon

log = logging.getLogger(__name__)

FUSION_BACKEND = "MKLDNN"
DEFAULT_ATOL = 1e-4
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (empty where that file does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def mkldnn_enabled() -> bool:
    return bool(mx.runtime.Features().is_enabled("MKLDNN"))


def bf16_supported() -> bool:
    """True when this CPU has native bfloat16 dot products and MXNet was built with oneDNN."""
    return mkldnn_enabled() and any(flag in cpu_flags() for flag in BF16_FLAGS)


def _ctx_of(net: gluon.Block) -> mx.Context:
    for param in net.collect_params().values():
        try:
            return param.list_ctx()[0]
        except Exception:  # deferred / uninitialised parameter
            continue
    return mx.cpu()


def inference_copy(
    net: gluon.HybridBlock, ctx: mx.Context | None = None, example: mx.nd.NDArray | None = None,
    fold_same_padding: bool = False,
) -> gluon.SymbolBlock:
    """A hybridized SymbolBlock computing ``net``'s forward pass with copied parameters.

    Tracing with a symbol (rather than ``hybridize`` + forward) leaves ``net`` exactly as it
    was: no hybridization flag flipped, no cached graph built on a shared, cached network.
    ``example`` is only used to finish deferred parameter initialisation (a fresh head).
    ``fold_same_padding`` (EfficientNet, with ``example``): see
    :func:`hotdog.efficientnet.inference_kernels`.
    """
    ctx = ctx or (example.context if example is not None else _ctx_of(net))
    _finish_deferred_init(net, example)
    if example is not None:
        # Tracing with a bare symbol cannot see the input size: give EfficientNet's SAME
        # padding the example's size first so the copy gets the fast static padding.
        from hotdog.efficientnet import configure_same_padding

        configure_same_padding(net, example)
    from hotdog.efficientnet import inference_kernels, same_padded_weight

    data = mx.sym.var("data", dtype="float32")
    # a training network's fast kernels would defeat oneDNN fusion
    with inference_kernels(net, fold_same_padding=fold_same_padding and example is not None):
        out = net(data)
    block = gluon.SymbolBlock(out, data)
    source = net.collect_params()
    for name, param in block.collect_params().items():
        value = source[name].data(ctx).copy() if name in source else same_padded_weight(name, source, ctx)
        param._load_init(value, ctx)
    block.hybridize(static_alloc=True)
    return block


def _finish_deferred_init(net: gluon.Block, example: mx.nd.NDArray | None) -> None:
    try:
        for param in net.collect_params().values():
            param.data()
    except gluon.parameter.DeferredInitializationError:
        if example is None:
            raise
        with mx.autograd.predict_mode():
            net(example[:1]).wait_to_read()


def fused_forward_block(net: gluon.HybridBlock, example: mx.nd.NDArray) -> gluon.SymbolBlock:
    """An MKLDNN-fused inference copy of ``net`` (any batch size / image size works later).

    ``example`` only fixes dtype and context for the partitioning pass. Do not train the
    result: BatchNorm is folded into the convolutions with the current running statistics.
    """
    block = inference_copy(net, example.context, example, fold_same_padding=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block.optimize_for(example, backend=FUSION_BACKEND, static_alloc=True)
    return block


def max_abs_diff(a: gluon.Block, b: gluon.Block, x: mx.nd.NDArray) -> float:
    with mx.autograd.predict_mode():
        ya = a(x).astype("float32").asnumpy()
        yb = b(x).astype("float32").asnumpy()
    return float(np.abs(ya - yb).max())


@dataclass
class InferenceChoice:
    """Which inference copy was picked and why; ``max_abs_diff`` is vs the plain network."""

    block: gluon.HybridBlock
    fused: bool
    max_abs_diff: float
    reason: str


def fast_inference_block(net: gluon.HybridBlock, example: mx.nd.NDArray, atol: float = DEFAULT_ATOL) -> InferenceChoice:
    """The fastest inference copy of ``net`` that is exact to ``atol`` on ``example``.

    Use it for forward-only work (feature caching, prediction); the original ``net`` is left
    untouched. Falls back to a plain hybridized copy when oneDNN is missing, fusion fails, or
    the fused outputs drift beyond ``atol``.
    """
    if not mkldnn_enabled():
        return InferenceChoice(inference_copy(net, example.context, example), False, 0.0, "MXNet built without MKLDNN")
    try:
        fused = fused_forward_block(net, example)
        diff = max_abs_diff(net, fused, example)
    except mx.base.MXNetError as err:  # an op the backend cannot partition
        log.warning("MKLDNN fusion failed, using the plain network: %s", str(err).splitlines()[0])
        return InferenceChoice(inference_copy(net, example.context, example), False, float("nan"), f"fusion failed: {err}")
    if not diff <= atol:
        log.warning("MKLDNN fusion differs by %.3g (> %.1g), using the plain network", diff, atol)
        return InferenceChoice(inference_copy(net, example.context, example), False, diff, f"max abs diff {diff:.3g} > {atol:g}")
    return InferenceChoice(fused, True, diff, "fused")


def bf16_block(net: gluon.HybridBlock, example: mx.nd.NDArray, fuse: bool = False) -> gluon.HybridBlock:
    """A bfloat16 copy of ``net`` (float32 in, float32 out) via MXNet AMP.

    Only worth it where ``bf16_supported()``; elsewhere oneDNN emulates bfloat16 slowly.
    Convolutions and dense layers run in bfloat16, so outputs differ by ~1e-2 relative: check
    top-1 agreement before using it.
    """
    from mxnet.contrib import amp

    plain = inference_copy(net, example.context, example)
    plain(example).wait_to_read()  # convert_hybrid_block needs the cached graph
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block = amp.convert_hybrid_block(plain, target_dtype="bfloat16", ctx=example.context, cast_optional_params=True)
        if fuse:
            block.optimize_for(example, backend=FUSION_BACKEND, static_alloc=True)
        else:
            block.hybridize(static_alloc=True)
    return block
