"""How many OpenMP threads MXNet computes with: one decision per process tree, made before
MXNet is imported.

Why a policy at all: unset, MXNet 1.9.1's engine halves ``omp_get_num_procs()`` on x86-64
(it assumes hyperthreads), so a 2-vCPU machine trains on one thread. Measured (issue 17,
README "Threads"): two threads train +49% faster on an idle 2-vCPU machine but 17% slower
while another CPU-bound job competes, and inference behaves the same way. So the rule is
"as many threads as there are idle CPUs": ``round(nproc - loadavg_1min)``, at least 1, at
most ``nproc``. Every path (app, training worker, CLI, bench) measured the same direction,
so they share this one rule; what differs is only when it is decided:

* the top process (``streamlit_app.py``, ``python -m hotdog``) calls :func:`apply` first
  thing, before anything imports MXNet;
* child processes (the training worker, the bench's timing children) inherit the decision
  through the environment (``OMP_NUM_THREADS`` plus the ``HOTDOG_THREADS`` marker), so the
  figure recorded in a run's config.json is the one its training process used.

A user's own ``OMP_NUM_THREADS`` always wins (it is left as it is and recorded as
``source: "user"``). The marker tells a value the policy exported apart from the user's.

Module state: the process's decision, made once (documented process-wide cache).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV = "OMP_NUM_THREADS"
MARKER = "HOTDOG_THREADS"  # JSON of the ThreadChoice the policy exported to children


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count a process computes with and why."""

    omp_num_threads: int
    source: str  # "user": OMP_NUM_THREADS was set by the user; "policy": chosen here
    nproc: int
    load_1min: float | None  # the load average the policy read (None for "user")
    path: str = ""  # who decided first: "app", "cli", "bench", ...
    late: bool = False  # MXNet was already imported: the value may not be in effect

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_choice: ThreadChoice | None = None


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def policy_threads(nproc: int, load: float | None) -> int:
    """Threads for ``nproc`` CPUs with ``load`` runnable tasks already there: the idle CPUs,
    rounded half up, within [1, nproc]; all of them when the load is unknown."""
    if load is None:
        return max(1, nproc)
    return max(1, min(nproc, int(nproc - load + 0.5)))


def _user_value(environ) -> int | None:
    """The user's OMP_NUM_THREADS as an int, or None when unset, invalid or exported by us."""
    raw = environ.get(ENV)
    if raw is None or raw.strip() == "":
        return None
    marker = environ.get(MARKER)
    if marker:
        try:
            if str(json.loads(marker).get("omp_num_threads")) == raw.strip():
                return None  # our own export, inherited by a child
        except (ValueError, AttributeError):
            pass
    try:
        # OpenMP accepts a list ("2,1" for nested levels); the first level is what counts.
        value = int(raw.split(",")[0])
    except ValueError:
        return None
    return value if value >= 1 else None


def decide(path: str = "", environ=None, nproc: int | None = None, load: float | None = None) -> ThreadChoice:
    """The choice for a process whose environment is ``environ`` (pure: reads, never sets)."""
    environ = os.environ if environ is None else environ
    nproc = _cpu_count() if nproc is None else nproc
    user = _user_value(environ)
    if user is not None:
        return ThreadChoice(user, "user", nproc, None, path)
    marker = environ.get(MARKER)
    if marker and environ.get(ENV):
        try:  # inherited from the parent: keep its decision (and the load it was made at)
            d = json.loads(marker)
            return ThreadChoice(int(d["omp_num_threads"]), "policy", int(d.get("nproc", nproc)),
                                d.get("load_1min"), d.get("path") or path)
        except (ValueError, KeyError, TypeError):
            pass
    load = _load() if load is None else load
    return ThreadChoice(policy_threads(nproc, load), "policy", nproc, load, path)


def apply(path: str) -> ThreadChoice:
    """Decide once for this process and export it (``OMP_NUM_THREADS`` and the marker) so
    MXNet, imported later, and every child process use it. Later calls return the first
    decision. Called after MXNet was imported, the choice is marked ``late``."""
    global _choice
    if _choice is not None:
        return _choice
    choice = decide(path)
    if "mxnet" in sys.modules:
        choice = dataclasses.replace(choice, late=True)
        log.debug("thread policy applied after MXNet was imported; it reads OMP_NUM_THREADS only at import")
    if choice.source == "policy":
        os.environ[ENV] = str(choice.omp_num_threads)
        os.environ[MARKER] = json.dumps(choice.to_dict())
    _choice = choice
    return choice


def current() -> ThreadChoice:
    """This process's choice (applied now if nothing applied it yet)."""
    return _choice if _choice is not None else apply("")


def child_env(omp_num_threads: int | None = None, base=None) -> dict:
    """An environment for a child process: this process's decision, or ``omp_num_threads``
    forced (the bench's 1-thread reference), marked so the child records it as policy."""
    env = dict(os.environ if base is None else base)
    choice = current()
    if omp_num_threads is not None:
        choice = dataclasses.replace(choice, omp_num_threads=omp_num_threads, source="policy")
    env[ENV] = str(choice.omp_num_threads)
    env[MARKER] = json.dumps(choice.to_dict())
    return env
