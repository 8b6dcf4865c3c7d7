"""``launch``: a distributed (``kvstore=dist_sync``) training on this machine.

``python -m hotdog launch --workers 2 --servers 1 -- train --data DIR ...`` starts MXNet's
scheduler, the servers and the workers (see :mod:`hotdog.launch`). ``--json`` prints
``{"status", "message", "exit_code", "seconds", "run_id", "run_dir", "logs", "train"}``, where
``train`` is rank 0's own ``train --json`` document when the train command has ``--json``.
Exit status: 0 when every worker finished, 1 when the run failed, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from hotdog.commands._common import add_json_flag, emit_json


def register(sub) -> None:
    p = sub.add_parser(
        "launch", help="run a training on several worker processes with MXNet's parameter server (kvstore dist_sync)",
        description="Starts 1 scheduler, M servers and N workers on this machine with the DMLC_* variables "
                    "MXNet's own launcher sets; each worker trains on its share of every batch and rank 0 "
                    "records the run. When a worker dies the rest are ended and the run is marked failed. "
                    "Across machines, set the same DMLC_* variables with ssh/MPI/Kubernetes (README).")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--servers", type=int, default=1, help="parameter-server processes (default 1)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="end the whole run as failed after this long (default: no limit)")
    add_json_flag(p)
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- train ...",
                   help="the train command every worker runs (--kvstore dist_sync is added)")
    p.set_defaults(func=cmd_launch)


def cmd_launch(args) -> int:
    from hotdog.launch import announced_json, launch

    command = list(args.command)
    if args.json and "--json" not in command:
        command.append("--json")  # rank 0's result document goes into ours
    # The processes run in their own sessions (so a terminal's Ctrl-C reaches only us): a
    # SIGTERM/SIGHUP to the launcher must end them too, as Ctrl-C does.
    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            old[sig] = signal.signal(sig, _interrupt)
    try:
        result = launch(command, workers=args.workers, servers=args.servers, timeout=args.timeout)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if args.json:
        emit_json({**result.to_dict(), "rank0_output": None, "train": announced_json(result)})
    else:
        if result.rank0_output:
            sys.stdout.write(result.rank0_output)
        # stdout is rank 0's own output (a `train --json` document stays parseable).
        print(f"launch: {result.status}: {result.message}", file=sys.stderr)
    return result.exit_code


def _interrupt(signum, frame):
    raise KeyboardInterrupt
