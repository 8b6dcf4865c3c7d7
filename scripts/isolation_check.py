"""The app's training path (jobs.TrainingJob, worker process) measured from outside.

    python scripts/isolation_check.py limit --data DIR   # the Chapter's preset to the end (run it under a limit)
    python scripts/isolation_check.py startup --data DIR # first run in a fresh worker vs a warm one

Prints one JSON line per run: the memory plan, the worker's peak RSS (VmHWM, polled), the
seconds from start() to the first training batch, the result.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _hwm(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_once(job, config, label: str) -> dict:
    from hotdog import memory

    t0 = time.time()
    run_id = job.start(config)
    first_batch = None
    peak = 0.0
    while job.is_running():
        s = job.current()
        if first_batch is None and s.progress is not None and s.progress.phase == "train":
            first_batch = time.time() - t0
        pid = job.worker_pid()
        if pid:
            peak = max(peak, _hwm(pid) or 0.0)
        time.sleep(0.2)
    s = job.current()
    return {"label": label, "run_id": run_id, "state": s.state, "message": s.error or (s.result and s.result.message),
"micro_batch": s.config.micro_batch, "batch_size": s.config.batch_size,
            "epochs": [round(e.test_acc, 3) for e in s.epochs], "worker_peak_rss_mb": round(peak),
            "seconds_to_first_batch": first_batch and round(first_batch, 1), "seconds": round(time.time() - t0, 1),
            "available": memory.available().__dict__, "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("limit", "startup"))
    p.add_argument("--data", required=True)
    p.add_argument("--epochs", type=int, default=None)
    a = p.parse_args()
    from hotdog.jobs import TrainingJob
    from hotdog.settings import config_for
    from hotdog.train import prepare

    import tempfile

    job = TrainingJob(runs_dir=tempfile.mkdtemp(prefix="hotdog-iso-"))
    try:
        if a.what == "limit":
            cfg = config_for(a.data, preset="chapter", epochs=a.epochs)
            plan = prepare(cfg).memory
            print(json.dumps({"plan": plan.to_dict()}), flush=True)
            print(json.dumps(run_once(job, cfg, "chapter preset")), flush=True)
        else:
            cfg = config_for(a.data, epochs=1)
            for label in ("fresh worker", "warm worker", "warm worker again"):
                print(json.dumps(run_once(job, cfg, label)), flush=True)
            inproc = TrainingJob(runs_dir=job.runs_dir, isolate=False)
            print(json.dumps(run_once(inproc, cfg, "in-process (no isolation), first")), flush=True)
            print(json.dumps(run_once(inproc, cfg, "in-process (no isolation), second")), flush=True)
            inproc.close()
    finally:
        job.close()


if __name__ == "__main__":
    main()
