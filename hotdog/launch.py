"""Start a distributed (``kvstore=dist_sync``) training on this machine, the way MXNet's own
``tools/launch.py --launcher local`` does: one scheduler, M servers and N workers, each a
process that finds the others through the ``DMLC_*`` environment variables. The scheduler
and the servers are ``python -c "import mxnet"`` with their role set (importing MXNet with
``DMLC_ROLE=server`` serves until the workers are done); the workers run the training
command. Across machines the same variables are set by ssh/MPI/Kubernetes launchers (README).

The launcher is also the run's watchdog. In ``dist_sync`` every worker waits for every other
one at each step, so a worker that dies would leave the rest waiting forever: as soon as a
worker exits with an error (or is killed), or a server/scheduler dies, every remaining process
is ended, the run that rank 0 was recording is marked ``failed`` in the run store, and the
launcher returns a non-zero exit code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from hotdog.distributed import RUN_FILE_ENV, read_announced
from hotdog.errors import ConfigError

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
# After the workers are done the servers and the scheduler exit by themselves; after a
# SIGTERM any process gets this long before SIGKILL.
GRACE_SECONDS = 10.0


@dataclass
class LaunchResult:
    status: str  # "finished" or "failed"
    message: str
    exit_code: int
    seconds: float
    run_id: str | None = None
    run_dir: str | None = None
    logs: str | None = None  # the folder with every process's output, kept when the run failed
    rank0_output: str = ""  # what rank 0 printed on stdout (the train command's result)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with status {rc}"


def hotdog_command(args: Sequence[str]) -> list[str]:
    """``train ...`` -> the worker command line, with ``--kvstore dist_sync`` unless given."""
    args = list(args)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args or args[0] != "train":
        raise ConfigError("launch runs a `train` command: python -m hotdog launch --workers 2 -- train --data DIR ...")
    kv = [a for a in args if a == "--kvstore" or a.startswith("--kvstore=")]
    if not kv:
        args += ["--kvstore", "dist_sync"]
    else:
        i = args.index(kv[0])
        value = kv[0].split("=", 1)[1] if "=" in kv[0] else (args[i + 1] if i + 1 < len(args) else "")
        if not value.startswith("dist"):
            raise ConfigError(f"launch needs a distributed kvstore (dist_sync), not --kvstore {value!r}")
    return [sys.executable, "-m", "hotdog", *args]


class Launcher:
    """Scheduler, servers and workers of one distributed run on localhost.

    ``command`` is the full worker command line (see :func:`hotdog_command`)."""

    def __init__(self, command: Sequence[str], workers: int = 2, servers: int = 1, timeout: float | None = None,
                 env: dict | None = None, grace: float = GRACE_SECONDS, logs_root: str | os.PathLike | None = None):
        if not 1 <= int(workers) <= 64:
            raise ConfigError(f"workers must be between 1 and 64, not {workers!r}")
        if not 1 <= int(servers) <= 64:
            raise ConfigError(f"servers must be between 1 and 64, not {servers!r}")
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"the timeout must be a positive number of seconds, not {timeout!r}")
        self.command, self.num_workers, self.num_servers = list(command), int(workers), int(servers)
        self.timeout, self.grace = timeout, grace
        self.base_env = dict(os.environ if env is None else env)
        self.logs = Path(tempfile.mkdtemp(prefix="hotdog-launch-", dir=logs_root))
        self.run_file = self.logs / "run.json"
        self.scheduler: subprocess.Popen | None = None
        self.servers: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        self._files: list = []

    # -- processes
    def _env(self, role: str, port: int) -> dict:
        env = dict(self.base_env)
        package_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env.update(DMLC_ROLE=role, DMLC_PS_ROOT_URI="127.0.0.1", DMLC_PS_ROOT_PORT=str(port),
                   DMLC_NODE_HOST="127.0.0.1", DMLC_NUM_SERVER=str(self.num_servers),
                   DMLC_NUM_WORKER=str(self.num_workers))
        if role == "worker":
            env[RUN_FILE_ENV] = str(self.run_file)
            # The workers share this machine's cores (a user's own setting wins).
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.num_workers)))
        else:
            env["OMP_NUM_THREADS"] = "1"  # they only add up gradients
        return env

    def _spawn(self, argv, role: str, name: str, port: int, stdout_to_file: bool, stderr_to_file: bool):
        out = open(self.logs / f"{name}.out", "wb") if stdout_to_file else subprocess.DEVNULL
        err = open(self.logs / f"{name}.log", "wb") if stderr_to_file else None
        self._files += [f for f in (out, err) if hasattr(f, "close")]
        # Own process group: ending it also ends the DataLoader workers a trainer may have.
        return subprocess.Popen(argv, env=self._env(role, port), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True)

    def start(self) -> None:
        port = free_port()
        server_argv = [sys.executable, "-c", "import mxnet"]
        self.scheduler = self._spawn(server_argv, "scheduler", "scheduler", port, True, True)
        self.servers = [self._spawn(server_argv, "server", f"server-{i}", port, True, True)
                        for i in range(self.num_servers)]
        # Worker 0's progress goes to this terminal; every worker's output is also kept in files.
        self.workers = [self._spawn(self.command, "worker", f"worker-{i}", port, True, i > 0)
                        for i in range(self.num_workers)]
        log.info("launched 1 scheduler, %d server(s), %d worker(s) on 127.0.0.1:%d (logs in %s)",
                 self.num_servers, self.num_workers, port, self.logs)

    def _all(self) -> list[subprocess.Popen]:
        return [p for p in (self.scheduler, *self.servers, *self.workers) if p is not None]

    def kill_all(self) -> None:
        """SIGTERM to every live process group, then SIGKILL to what is left after the grace."""
        live = [p for p in self._all() if p.poll() is None]
        for p in live:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for p in live:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self._all():
            if p.poll() is None:
                _signal_group(p, signal.SIGKILL)
                p.wait()

    # -- the watchdog
    def _failure(self, started: float, server_done_at: list) -> str | None:
        """One sentence when the run cannot finish any more, else None."""
        for i, w in enumerate(self.workers):
            rc = w.poll()
            if rc not in (None, 0):
                return f"worker {i} (pid {w.pid}) {_describe_exit(rc)}"
        workers_running = any(w.poll() is None for w in self.workers)
        for name, p in [("the scheduler", self.scheduler)] + [(f"server {i}", s) for i, s in enumerate(self.servers)]:
            rc = p.poll()
            if rc is None or not workers_running:
                continue
            if rc != 0:
                return f"{name} (pid {p.pid}) {_describe_exit(rc)}"
            # A clean exit while workers still run: they are normally just shutting down.
            server_done_at.append(time.monotonic())
            if time.monotonic() - server_done_at[0] > self.grace:
                return f"{name} exited but worker(s) kept running for {self.grace:g} s"
        if self.timeout is not None and time.monotonic() - started > self.timeout:
            return f"the run took longer than the timeout of {self.timeout:g} s"
        return None

    def wait(self) -> LaunchResult:
        started = time.monotonic()
        server_done_at: list = []
        failure = None
        try:
            while failure is None and any(w.poll() is None for w in self.workers):
                failure = self._failure(started, server_done_at)
                if failure is None:
                    time.sleep(POLL_SECONDS)
            failure = failure or self._failure(started, server_done_at)
        except KeyboardInterrupt:
            failure = "interrupted"
        if failure is None:
            # Servers and scheduler end once every worker has finalised; wait for that, briefly.
            for p in (self.scheduler, *self.servers):
                try:
                    p.wait(timeout=self.grace)
                except subprocess.TimeoutExpired:
                    log.warning("pid %d did not exit after the workers; ending it", p.pid)
        self.kill_all()
        for f in self._files:
            f.close()
        return self._result(failure, time.monotonic() - started)

    def _result(self, failure: str | None, seconds: float) -> LaunchResult:
        announced = read_announced(self.run_file) or {}
        run_dir = announced.get("run_dir")
        output = ""
        pids = {w.pid: i for i, w in enumerate(self.workers)}
        if announced.get("pid") in pids:
            try:
                output = (self.logs / f"worker-{pids[announced['pid']]}.out").read_text(errors="replace")
            except OSError:
                pass
        if failure is None:
            shutil.rmtree(self.logs, ignore_errors=True)
            return LaunchResult("finished", f"{self.num_workers} workers finished", 0, seconds,
                                announced.get("run_id"), run_dir, None, output)
        message = f"distributed run failed: {failure}; every other process was ended (logs in {self.logs})"
        if run_dir:
            _mark_failed(Path(run_dir), message)
        code = 130 if failure == "interrupted" else 1
        return LaunchResult("failed", message, code, seconds, announced.get("run_id"), run_dir, str(self.logs),
                            output)

    def run(self) -> LaunchResult:
        try:
            self.start()
        except BaseException:
            self.kill_all()
            raise
        return self.wait()


def _signal_group(p: subprocess.Popen, sig) -> None:
    try:
        os.killpg(p.pid, sig)  # start_new_session: the group id is the pid
    except (ProcessLookupError, PermissionError):
        pass


def _mark_failed(run_dir: Path, message: str) -> None:
    """Record the failure in rank 0's run, unless it already recorded its own end."""
    from hotdog.runs import RunStore, read_status

    try:
        state = read_status(run_dir).get("state")
    except Exception:  # noqa: BLE001 - a damaged or missing status is overwritten below
        state = "running"
    if state != "running":
        return
    try:
        RunStore(run_dir.parent).write_status(run_dir.name, "failed", message)
    except Exception as err:  # noqa: BLE001 - the launcher's own exit code still says failed
        log.warning("could not mark run %s failed: %s", run_dir.name, err)


def launch(args: Sequence[str], workers: int = 2, servers: int = 1, timeout: float | None = None) -> LaunchResult:
    """``python -m hotdog launch``: run ``train ...`` on ``workers`` workers and ``servers`` servers."""
    return Launcher(hotdog_command(args), workers, servers, timeout).run()


def announced_json(result: LaunchResult) -> dict | None:
    """Rank 0's ``--json`` document, when the train command printed one."""
    try:
        d = json.loads(result.rank0_output)
    except ValueError:
        return None
    return d if isinstance(d, dict) else None
