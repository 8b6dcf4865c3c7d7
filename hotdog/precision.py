"""Mixed precision on GPUs (the ``amp`` knob): MXNet's ``contrib.amp`` in float16.

``mx.contrib.amp.init()`` rewrites MXNet's operator functions for the whole process (the
float16-safe ones run in float16, the rest stay float32), so it must run before the network
is built, and it cannot be undone: a process that trained with amp keeps it, so a later run without
amp in the same process (the app reuses its training worker) is refused rather than run in
float16 without loss scaling.
The Trainer gets dynamic loss scaling (``amp.init_trainer``; a step whose gradients overflow
is skipped and the scale halved) and every backward pass goes through ``amp.scale_loss``.

On a CPU float16 convolutions have no fast kernels in MXNet 1.9, so a run with ``amp`` on a
CPU device is refused with a ConfigError rather than silently run in float32: the user asked
for something this machine cannot give. Nothing here could be checked on this machine (no
GPU): only the refusal and the wiring are tested (tests/test_distributed.py).
"""

from __future__ import annotations

from typing import Sequence

from hotdog.errors import ConfigError


def check(config, ctxs: Sequence) -> None:
    """ConfigError when ``amp`` is asked for on anything but GPUs."""
    if not getattr(config, "amp", False):
        return
    cpus = [f"{c.device_type}({c.device_id})" for c in ctxs if c.device_type != "gpu"]
    if cpus:
        raise ConfigError(f"mixed precision (amp) needs GPU devices, but this run would use {', '.join(cpus)}: "
                          "turn amp off or choose GPUs")


def init(config) -> None:
    """Switch the process to float16 mixed precision (before the network is built). A run
    without amp in a process that already switched would train in float16 without loss
    scaling: refused (the app's training worker is reused between runs)."""
    from mxnet.contrib import amp

    if config.amp:
        amp.init(target_dtype="float16")
    elif getattr(amp.amp, "_amp_initialized", False):
        raise ConfigError("this process trained with mixed precision (amp) before, which cannot be undone: "
                          "turn amp on for this run or restart the app / command")


def init_trainer(config, trainer) -> None:
    if config.amp:
        from mxnet.contrib import amp

        amp.init_trainer(trainer)


def backward(config, trainer, losses) -> None:
    """``autograd.backward(losses)``, with amp's loss scaling when the run uses amp."""
    from mxnet import autograd

    if not config.amp:
        autograd.backward(losses)
        return
    from mxnet.contrib import amp

    with amp.scale_loss(losses, trainer) as scaled:
        autograd.backward(scaled)
