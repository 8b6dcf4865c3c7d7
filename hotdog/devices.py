"""Which MXNet devices a run uses: names like ``cpu(0)`` / ``gpu(1)`` -> contexts.

The code is device-generic (a list of contexts; data-parallel over all of them); with no
GPU it runs on the CPU, and ``[cpu(0), cpu(1)]`` exercises the multi-device path in tests.
"""

from __future__ import annotations

from typing import Any, Sequence

from hotdog.errors import ConfigError


def num_gpus() -> int:
    import mxnet as mx

    try:
        return mx.context.num_gpus()
    except Exception:  # a CPU build without the CUDA runtime can raise instead of saying 0
        return 0


def available_devices() -> list[str]:
    """Device names a run can use: every GPU, else the CPU."""
    return [f"gpu({i})" for i in range(num_gpus())] or ["cpu(0)"]


def parse_device(spec) -> Any:
    import mxnet as mx

    if isinstance(spec, mx.Context):
        return spec
    s = str(spec).strip().lower().replace(" ", "")
    kind, _, rest = s.partition("(")
    idx = rest.rstrip(")") if rest else "0"
    if kind not in ("cpu", "gpu") or not idx.isdigit() or len(idx) > 3:
        raise ConfigError(f"bad device {str(spec)[:40]!r}: use cpu(0), cpu(1), gpu(0), ...")
    if kind == "gpu" and int(idx) >= num_gpus():
        raise ConfigError(f"device {spec!r} does not exist ({num_gpus()} GPUs found)")
    return mx.Context(kind, int(idx))


def resolve_devices(devices: Sequence | None) -> list:
    """The chapter's ``d2l.try_all_gpus()``: the named devices, else every GPU, else the CPU."""
    import mxnet as mx

    if devices:
        return [parse_device(d) for d in devices]
    return [mx.gpu(i) for i in range(num_gpus())] or [mx.cpu()]


def device_name(ctx) -> str:
    return f"{ctx.device_type}({ctx.device_id})"
