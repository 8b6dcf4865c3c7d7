"""How the engine hybridizes networks: static memory planning.

Why: with plain ``hybridize()`` MXNet allocates every intermediate buffer afresh on each
call, and a third of a training step's wall time was the kernel serving page faults on
those fresh buffers (profiled, issue 17). ``static_alloc=True`` plans the buffers once per
input shape and reuses them: measured 1.37x (issue, idle) to 2.3x (README "Training speed
and threads", busy machine) faster training at batch 32, 224 px, with bitwise-equal
first-step loss and weights (tests/test_speed.py). The price: each shape's plan stays
allocated (+18% peak RSS over 2 training and 2 evaluation shapes at 224 px).

``static_shape`` is deliberately off: it adds ~5% on a fixed shape, but a training run
alternates between the batch shape, the smaller last batch and the evaluation batches, and
with ``static_shape`` every change of shape re-plans the whole graph; ``static_alloc``
alone keeps one plan per shape without that cost or risk.
"""

from __future__ import annotations


def hybridize_for_training(net) -> None:
    """Hybridize ``net`` (a Gluon HybridBlock) with static memory planning, and switch
    EfficientNet blocks to their faster training formulations (same values and gradients,
    :func:`hotdog.efficientnet.set_training_kernels`; README "Training speed and threads")."""
    from hotdog.efficientnet import set_training_kernels

    set_training_kernels(net)
    net.hybridize(static_alloc=True)


def hybridize_for_inference(net) -> None:
    """The same planning for forward-only networks (predictors, the source model)."""
    net.hybridize(static_alloc=True)
