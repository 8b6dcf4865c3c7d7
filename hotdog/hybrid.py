"""How the engine hybridizes networks: static memory planning.

Why: with plain ``hybridize()`` MXNet allocates every intermediate buffer afresh on each
call, and a third of a training step's wall time was the kernel serving page faults on
those fresh buffers (profiled, issue 17). ``static_alloc=True`` plans the buffers once per
input shape and reuses them: measured 1.37x (issue, idle) to 2.3x (README "Training speed
and threads", busy machine) faster training at batch 32, 224 px, with bitwise-equal
first-step loss and weights (tests/test_speed.py). The price: each shape's plan stays
allocated (+18% peak RSS over 2 training and 2 evaluation shapes at 224 px).

``static_shape`` is deliberately off: on a fixed shape it measured 1.32x over
``static_alloc`` alone, but only 1.06x once the training process tunes malloc
(:mod:`hotdog.malloc_tuning`), while raising peak memory by 50-60% (it pre-allocates every
fallback copy); and a training run alternates between the batch shape, the smaller last
batch and the evaluation batches, each change re-planning the whole graph.

Training on CPU also switches EfficientNet to its training kernels (same values, faster graph:
:func:`hotdog.efficientnet.set_training_kernels`).
"""

from __future__ import annotations


def hybridize_for_training(net) -> None:
    """Hybridize ``net`` (a Gluon HybridBlock) with static memory planning and, on CPU,
    switch EfficientNet blocks to their faster training formulations (same values and
    gradients, :func:`hotdog.efficientnet.set_training_kernels`; README "Training speed and
    threads"). They work around MXNet-on-oneDNN costs; on a GPU (cuDNN) they were never
    measured, so GPU networks keep today's graph."""
    from hotdog.efficientnet import set_training_kernels

    set_training_kernels(net, relu6=on_cpu(net), split_depthwise=on_cpu(net))
    net.hybridize(static_alloc=True)


def on_cpu(net) -> bool:
    """Whether every (initialized or deferred) parameter of ``net`` lives on a CPU."""
    for param in net.collect_params().values():
        try:
            ctxs = param.list_ctx()
        except RuntimeError:  # not initialized yet: no device chosen
            continue
        if any(c.device_type != "cpu" for c in ctxs):
            return False
    return True


def hybridize_for_inference(net) -> None:
    """The same planning for forward-only networks (predictors, the source model)."""
    net.hybridize(static_alloc=True)
