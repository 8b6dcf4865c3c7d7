"""Training across processes and machines with MXNet's own parameter server (``kvstore=dist_sync``).

A distributed run is N copies of the same ``python -m hotdog train ... --kvstore dist_sync``
(the *workers*), plus MXNet's scheduler and server processes; every process finds the others
through the ``DMLC_*`` environment variables (:mod:`hotdog.launch` sets them on one machine;
ssh/MPI/Kubernetes launchers set the same ones across machines). Per step:

* the training split's epoch batches are the single-process ones (same seed, same order);
  worker ``rank`` of ``num_workers`` trains on ``batch[rank::num_workers]``
  (:class:`ShardedBatches`), so the shards of one step together are exactly that batch;
* gradients are summed on the servers (``pushpull``) and every worker applies the same SGD
  update locally, dividing by the *global* batch size (``update_on_kvstore=False``: the
  servers' optimizer would freeze the divisor at the first batch's size and get the smaller
  last batch wrong). So, without augmentation and with BatchNorm statistics kept, the final
  weights equal a single-process run's up to float rounding (tests/test_distributed.py);
* only rank 0 writes the run store; the other ranks train with a :class:`NullStore`.

``dist_async`` is not offered: its updates use stale weights by design and MXNet forces the
optimizer onto the servers, so no run could be checked against a single-process one.

Module state: the process's one kvstore connection (ps-lite starts once per process).
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotdog.errors import ConfigError
from hotdog.fileio import atomic_write_json

log = logging.getLogger(__name__)

# The launcher tells rank 0 where to write its run id (so it can mark the run failed when a
# worker dies and rank 0 is killed with the rest).
RUN_FILE_ENV = "HOTDOG_LAUNCH_RUN_FILE"
DMLC_VARS = ("DMLC_ROLE", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_SERVER", "DMLC_NUM_WORKER")

_KV: Any = None  # the process's dist kvstore, created on first use


def is_distributed(config) -> bool:
    return str(getattr(config, "kvstore", "device")).startswith("dist")


def check(config) -> None:
    """ConfigError when a distributed config cannot run in this process."""
    if not is_distributed(config):
        return
    missing = [v for v in DMLC_VARS if not os.environ.get(v)]
    if missing:
        raise ConfigError(f"kvstore {config.kvstore} needs the parameter-server environment ({', '.join(missing)} "
                          "unset): start it with `python -m hotdog launch --workers N -- train ...`")
    if os.environ["DMLC_ROLE"] != "worker":
        raise ConfigError(f"this process has DMLC_ROLE={os.environ['DMLC_ROLE']}: only workers train")
    if config.warmup_epochs and not config.freeze:
        # The head warm-up would need a second Trainer on the same kvstore, whose keys clash.
        raise ConfigError(f"head warm-up epochs cannot be combined with kvstore {config.kvstore}; set them to 0")


@dataclass
class Cluster:
    """This worker's place in a distributed run."""

    kv: Any
    rank: int
    num_workers: int

    @property
    def records(self) -> bool:
        return self.rank == 0


def connect(config) -> Cluster | None:
    """The kvstore of a distributed config (None otherwise); blocks until every worker and
    server has joined the scheduler."""
    global _KV
    if not is_distributed(config):
        return None
    check(config)
    import mxnet as mx

    if _KV is None:
        _KV = mx.kv.create(config.kvstore)
    log.info("distributed worker %d of %d (kvstore %s)", _KV.rank, _KV.num_workers, _KV.type)
    return Cluster(_KV, int(_KV.rank), int(_KV.num_workers))


# A kvstore key no Trainer uses (they number their parameters from 0).
_AGREE_KEY = 999_999
# Knobs that may differ between workers without changing the SGD (where the data set lives,
# which devices a machine has, how it loads data).
_LOCAL_KEYS = ("data_root", "devices", "num_workers", "micro_batch")


def _digest(record: dict) -> list[float]:
    import hashlib

    shared = {k: v for k, v in record.items() if k not in _LOCAL_KEYS}
    return list(hashlib.sha256(json.dumps(shared, sort_keys=True, default=str).encode()).digest()[:16])


def check_same_run(cluster: Cluster | None, record: dict) -> None:
    """ConfigError on every worker unless all of them train the same config on the same data
    (the data set's content fingerprint included): with different flags or photos the shares
    would not add up to one run, and workers with different step counts would wait forever.
    Each worker adds its digest's bytes on the servers; the sum is N times each worker's own
    digest only when all agree (small integers: exact in float32)."""
    if cluster is None:
        return
    import mxnet as mx

    import numpy as np

    digest = np.array(_digest(record), dtype=np.float32)
    cluster.kv.init(_AGREE_KEY, mx.nd.zeros(digest.shape))
    total = mx.nd.zeros(digest.shape)
    # pushpull, not push then pull: a separate pull may be answered before every worker pushed.
    # (On a CPU the kvstore uses the pushed array as its receive buffer: compare with a copy.)
    cluster.kv.pushpull(_AGREE_KEY, mx.nd.array(digest), out=total)
    if not np.array_equal(total.asnumpy(), digest * cluster.num_workers):
        raise ConfigError(f"the {cluster.num_workers} workers were not started with the same settings and data set "
                          "(flags, data files or labels differ): give every worker the same train command and data")


def trainer_args(config, cluster: Cluster | None) -> dict:
    """``gluon.Trainer`` keyword arguments for the config's kvstore."""
    if cluster is None:
        return {"kvstore": config.kvstore}
    return {"kvstore": cluster.kv, "update_on_kvstore": False}


def make_trainer(params, optimizer_params: dict, config, cluster: Cluster | None):
    """An SGD ``gluon.Trainer`` for the config's kvstore. In a distributed run its parameters
    are put on the servers now, and every worker waits until all have pulled rank 0's
    values: left to the first ``step()`` (Gluon's default), a fast worker's first gradient
    push could reach the server before a slow worker's initial pull, which then received
    something other than the weights (the two workers diverged; the test comparing with one
    process failed about one run in six)."""
    from mxnet import gluon

    trainer = gluon.Trainer(params, "sgd", optimizer_params, **trainer_args(config, cluster))
    if cluster is not None:
        import mxnet as mx

        # Gluon has no public call for this; these two are what step() runs first (MXNet 1.9.1).
        trainer._init_kvstore()
        trainer._init_params()
        mx.nd.waitall()  # the initial pulls have landed on this worker
        cluster.kv._barrier()  # ... and on every other one
    return trainer


class ShardedBatches:
    """One worker's part of every batch of ``batches`` (an iterable of index lists): items
    ``rank, rank + W, ...``. Every worker gets the same number of steps; a worker whose part
    of a (last, small) batch is empty trains on the batch's first item with its gradient
    zeroed, so the step's sum is unchanged and no worker waits for a missing push.

    The loader may read ahead, so the global size of each yielded part waits in a queue
    until its step (:meth:`step_size`) takes it, in order."""

    def __init__(self, batches, rank: int, num_workers: int):
        if not 0 <= rank < num_workers:
            raise ValueError(f"rank {rank} outside 0..{num_workers - 1}")
        self.batches, self.rank, self.num_workers = batches, rank, num_workers
        self._pending: deque = deque()

    def __iter__(self):
        self._pending.clear()
        for batch in self.batches:
            part = list(batch[self.rank::self.num_workers])
            padded = not part
            self._pending.append((len(batch), padded))
            yield part if not padded else list(batch[:1])

    def __len__(self) -> int:
        return len(self.batches)

    def step_size(self, trainer, n: int) -> int:
        """The global batch size of the step whose gradients are ready; zeroes them when this
        worker's part was a padding item."""
        global_n, padded = self._pending.popleft()
        if padded:
            for p in trainer._params:  # the trainer's own list: exactly what it will push
                if p.grad_req != "null":
                    for g in p.list_grad():
                        g[:] = 0
        return global_n


def shard(batches, cluster: Cluster | None):
    return batches if cluster is None else ShardedBatches(batches, cluster.rank, cluster.num_workers)


class NullStore:
    """The run store of a worker that does not record (rank != 0): every write is dropped."""

    def __init__(self, rank: int):
        self.rank = rank

    def create(self, config, run_id: str | None = None):
        run_id = run_id or f"worker-rank-{self.rank}"
        return run_id, self.run_dir(run_id)

    def run_dir(self, run_id: str) -> Path:
        return Path(f"(not recorded: worker rank {self.rank}; rank 0 records the run)")

    def write_status(self, *a, **k) -> dict:
        return {}

    def heartbeat(self, *a, **k) -> None: ...
    def append_metrics(self, *a, **k) -> None: ...
    def save_model(self, *a, **k) -> None: ...


def store_for(cluster: Cluster | None, store):
    return store if cluster is None or cluster.records else NullStore(cluster.rank)


def announce_run(cluster: Cluster | None, run_id: str, run_dir) -> None:
    """Rank 0 tells the launcher (when one asked, via HOTDOG_LAUNCH_RUN_FILE) which run it records."""
    path = os.environ.get(RUN_FILE_ENV)
    if cluster is None or not cluster.records or not path:
        return
    atomic_write_json(Path(path), {"run_id": run_id, "run_dir": str(run_dir), "pid": os.getpid(),
                                   "num_workers": cluster.num_workers})


def read_announced(path) -> dict | None:
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and isinstance(d.get("run_dir"), str) else None
