"""The bench's thread-policy stage: training images/s with 1 OpenMP thread vs the policy's
choice (and every CPU), each in its own long-lived process, driven in alternation.

Why processes: MXNet reads ``OMP_NUM_THREADS`` once, when it is imported, so each thread
count needs its own interpreter. Why alternation: the machine is shared; giving every
setting a round in turn exposes all of them to the same drift in load, so the ratio of
their medians means something even when absolute figures do not.

Each child builds the product's network (``models.build_finetune``, all layers training,
hybridized as the training loop does, :mod:`hotdog.hybrid`) and times forward + backward +
SGD step on a pre-made batch of the bench's shape (:func:`hotdog.bench_timing.raw_step`).
"""

from __future__ import annotations

import contextlib
import os
import statistics
from dataclasses import dataclass

from hotdog.bench_timing import ratio


@dataclass
class ThreadsFigures:
    threads_training_speedup: float  # the policy's choice over 1 thread, same run
    training_img_s: float  # with the policy's choice
    details: dict


@contextlib.contextmanager
def _environ(env: dict):
    """``os.environ`` swapped for ``env`` while a spawned child starts (it copies it)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _child(conn, source: str, classes: int, batch: int, size: int) -> None:
    """A timing process: build once, then one message per round: ``steps`` -> seconds list."""
    from hotdog import malloc_tuning

    malloc_tuning.apply()  # before MXNet, as in the training worker this stands in for
    import mxnet as mx
    import numpy as np

    from hotdog import models, threads
    from hotdog.bench_timing import raw_step, serve_timed_steps
    from hotdog.hybrid import hybridize_for_training

    choice = threads.apply("bench")
    net = models.build_finetune(source, classes, freeze=False)
    hybridize_for_training(net)
    x = mx.nd.random.normal(shape=(batch, 3, size, size))
    y = mx.nd.array(np.arange(batch) % classes)
    step = raw_step(net, x, y, lr=0.01, wd=1e-4)
    step()  # graph build and memory planning
    conn.send(("ready", choice.omp_num_threads))
    serve_timed_steps(conn, step, lambda times: ("times", times))


def measure(source: str, classes: int, batch: int, size: int, rounds: int, steps: int,
            progress=lambda msg: None) -> ThreadsFigures:
    import multiprocessing

    from hotdog import threads

    policy = threads.current()
    counts = sorted({1, policy.omp_num_threads, policy.nproc})
    ctx = multiprocessing.get_context("spawn")
    procs, conns = {}, {}
    try:
        for n in counts:
            progress(f"threads: starting a training process with {n} OpenMP thread(s)")
            parent, child = ctx.Pipe()
            with _environ(threads.child_env(n)):
                p = ctx.Process(target=_child, args=(child, source, classes, batch, size), daemon=True)
                p.start()
            child.close()
            procs[n], conns[n] = p, parent
        for n in counts:
            kind, got = conns[n].recv()
            if got != n:
                raise RuntimeError(f"the {n}-thread bench process computes with {got} threads")
        samples: dict[int, list[float]] = {n: [] for n in counts}
        for r in range(rounds):
            progress(f"threads: round {r + 1}/{rounds} ({', '.join(str(n) for n in counts)} threads in turn)")
            for n in counts:
                conns[n].send(steps)
                samples[n].extend(conns[n].recv()[1])
    finally:
        for n, c in conns.items():
            with contextlib.suppress(OSError, BrokenPipeError):
                c.send(None)
        for p in procs.values():
            p.join(30)
            if p.is_alive():
                p.kill()
    img_s = {n: ratio(batch, statistics.median(v)) for n, v in samples.items()}
    best = max(img_s, key=img_s.get)
    return ThreadsFigures(
        threads_training_speedup=ratio(img_s[policy.omp_num_threads], img_s[1]),
        training_img_s=img_s[policy.omp_num_threads],
        details={
            "policy": policy.to_dict(),
            "images_per_sec_by_threads": {str(n): v for n, v in img_s.items()},
            "best_threads_this_run": best,
            "policy_matches_best": best == policy.omp_num_threads,
            "batch": batch, "input_size": size, "rounds": rounds, "steps_per_round": steps,
            "load_average_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "how": "one spawned process per thread count, product network (all layers, static_alloc), "
                   "raw forward/backward/SGD step on a fixed batch, rounds in alternation, medians",
        },
    )
