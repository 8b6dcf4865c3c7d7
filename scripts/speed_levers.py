"""Time training-speed levers against each other in alternation (issue 17, item 1).

Each setting runs in its own long-lived process (environment knobs such as
``MXNET_ENGINE_TYPE`` or ``OMP_WAIT_POLICY`` are read once, when MXNet loads), with the
product's EfficientNet-Lite0 (random weights, all layers training, ``static_alloc`` as the
training loop hybridizes it) and one fixed batch. Rounds give every setting its turn, so
all of them see the same drift in load on a shared machine: compare the ratios of the
medians, not the absolute img/s. Prints one JSON line with medians, ratios to the first
setting and the load average.

A setting is ``name`` or ``name:KEY=VALUE,KEY=VALUE``; keys in upper case are environment
variables (set before the child starts); ``relu6=clip`` trains with the inference ReLU6
(BatchNorm, then ``clip``), ``split=0`` keeps 5x5 depthwise convolutions whole
(``efficientnet.set_training_kernels``), ``malloc=0`` leaves glibc's malloc defaults
(``hotdog.malloc_tuning``, applied otherwise, as the training worker does),
``static_shape=1`` adds ``static_shape`` to the hybridization. Each child also reports its
minor page faults per step.

    python scripts/speed_levers.py --batch 16 --rounds 5 now before:relu6=clip,split=0,malloc=0
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_setting(text: str) -> tuple[str, dict, dict]:
    name, _, rest = text.partition(":")
    env, opts = {}, {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        (env if key.isupper() else opts)[key] = value
    return name, env, opts


def _child(conn, env: dict, opts: dict, batch: int, size: int) -> None:
    os.environ.update(env)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(ROOT))
    if opts.get("malloc") != "0":  # as the training worker and the CLI do, before MXNet loads
        from hotdog import malloc_tuning

        malloc_tuning.apply()
    import mxnet as mx
    import numpy as np

    from hotdog import efficientnet
    from hotdog.bench_timing import raw_step, serve_timed_steps
    from hotdog.hybrid import hybridize_for_training

    mx.random.seed(0)
    net = efficientnet.EfficientNetLite0(classes=2)
    net.initialize(mx.init.Xavier())
    hybridize_for_training(net)
    efficientnet.set_training_kernels(net, relu6=opts.get("relu6") != "clip",
                                      split_depthwise=opts.get("split") != "0")
    if opts.get("static_shape") == "1":
        net.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.random.normal(shape=(batch, 3, size, size))
    y = mx.nd.array(np.arange(batch) % 2)
    step = raw_step(net, x, y, lr=0.01, wd=1e-4)
    step()
    conn.send("ready")
    serve_timed_steps(conn, step, lambda times: (times, resource.getrusage(resource.RUSAGE_SELF).ru_minflt))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("settings", nargs="+")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args(argv)
    settings = [parse_setting(s) for s in args.settings]
    ctx = multiprocessing.get_context("spawn")
    procs, conns = [], []
    load_before = os.getloadavg()
    try:
        for _, env, opts in settings:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_child, args=(child, env, opts, args.batch, args.size), daemon=True)
            saved = dict(os.environ)
            os.environ.update(env)  # the child's C runtime (malloc tunables) reads it at start
            try:
                p.start()
            finally:
                os.environ.clear()
                os.environ.update(saved)
            child.close()
            procs.append(p)
            conns.append(parent)
            parent.recv()  # one at a time: builds do not compete with each other
        samples = [[] for _ in settings]
        faults = [[] for _ in settings]  # minor page faults at the end of each round
        for r in range(args.rounds):
            order = range(len(settings)) if r % 2 == 0 else reversed(range(len(settings)))
            for i in order:
                conns[i].send(args.steps)
                times, minflt = conns[i].recv()
                samples[i].extend(times)
                faults[i].append(minflt)
            print(f"round {r + 1}: " + "  ".join(
                f"{s[0]} {args.batch / statistics.median(v):.2f}" for s, v in zip(settings, samples)),
                file=sys.stderr, flush=True)
    finally:
        for c in conns:
            try:
                c.send(None)
            except (OSError, BrokenPipeError):
                pass
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    img_s = {s[0]: args.batch / statistics.median(v) for s, v in zip(settings, samples)}
    base = settings[0][0]
    print(json.dumps({
        "img_s": {k: round(v, 3) for k, v in img_s.items()},
        "ratio_to_" + base: {k: round(v / img_s[base], 3) for k, v in img_s.items()},
        "page_faults_per_step": {s[0]: round((f[-1] - f[0]) / (args.steps * (len(f) - 1)))
                                 for s, f in zip(settings, faults) if len(f) > 1},
        "batch": args.batch, "size": args.size, "rounds": args.rounds, "steps": args.steps,
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
