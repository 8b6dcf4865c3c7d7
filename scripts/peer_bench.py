"""Hotdog Lab (MXNet) vs PyTorch + timm ``tf_efficientnet_lite0``: same architecture, batch 32,
224 px, float32, training steps and inference, in alternation.

Usage (torch and timm are NOT project requirements; install them in a separate venv):

    /path/to/torch-venv/bin/python scripts/peer_bench.py [--project-python .venv/bin/python]
        [--rounds 5] [--size 224] [--batch 32] [--threads N] [--json]

The interpreter that runs this script drives; every setting runs in its own long-lived
child process (``--child NAME``): the project under ``--project-python`` (default: this
interpreter if it can import mxnet, else ``.venv/bin/python``), the PyTorch settings under
this interpreter. Each child builds and warms its model once; then, round after round,
every setting in turn times one training step, one inference batch and single-photo
forwards, so a drift in the machine's load hits all of them alike. Medians are reported,
with the ratios the issue asks for (project training / PyTorch channels_last, project
inference / torch.compile). Weights are random on both sides (speed does not depend on
them; no download is needed).

Threads: every child gets the same ``OMP_NUM_THREADS``: ``--threads``, else the user's,
else the project's policy (:mod:`hotdog.threads`, idle CPUs at start), and PyTorch is told
the same with ``torch.set_num_threads``.

Without torch or timm the script says so and exits 0 (never run in CI).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH_SETTINGS = ("torch_eager", "torch_channels_last", "torch_compile")
PROJECT = "project"


# --------------------------------------------------------------------------- child side

def _timer(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _project_child(batch: int, size: int):
    sys.path.insert(0, str(ROOT))
    from hotdog import malloc_tuning, threads

    threads.apply("peer_bench")
    malloc_tuning.apply()  # as the training worker and the CLI run
    import mxnet as mx
    import numpy as np
    from mxnet import autograd, gluon

    from hotdog import inference, models
    from hotdog.hybrid import hybridize_for_training

    mx.random.seed(0)
    net = models.build_scratch("efficientnet_lite0", 1000)
    hybridize_for_training(net)
    x = mx.nd.random.normal(shape=(batch, 3, size, size))
    y = mx.nd.array(np.arange(batch) % 1000)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.01, "momentum": 0.9})

    def train():
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(batch)
        mx.nd.waitall()

    train()
    # Inference as the product runs it: the MKLDNN-fused copy when it matches (hotdog.inference).
    fast = inference.fast_inference_block(net, x).block
    one = x[:1]

    def infer():
        fast(x).wait_to_read()

    def photo():
        fast(one).wait_to_read()

    return train, infer, photo, {"omp_num_threads": threads.current().omp_num_threads}


def _torch_child(name: str, batch: int, size: int):
    import timm
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()))
    torch.manual_seed(0)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    fmt = torch.channels_last if name != "torch_eager" else torch.contiguous_format
    net = net.to(memory_format=fmt)
    x = torch.randn(batch, 3, size, size).to(memory_format=fmt)
    y = torch.arange(batch) % 1000
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    info = {"torch": torch.__version__, "timm": timm.__version__, "threads": torch.get_num_threads()}

    def train():
        net.train()
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    train()
    infer_net = net
    if name == "torch_compile":
        try:
            net.eval()
            infer_net = torch.compile(net)
            with torch.no_grad():
                infer_net(x)
                infer_net(x[:1])
        except Exception as err:  # noqa: BLE001 - report, do not die: compile needs a toolchain
            info["compile_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            infer_net = None
    one = x[:1].contiguous(memory_format=fmt)

    def infer():
        net.eval()
        with torch.no_grad():
            infer_net(x)

    def photo():
        net.eval()
        with torch.no_grad():
            infer_net(one)

    if infer_net is None:
        return train, None, None, info
    return train, infer, photo, info


def child_main(name: str, batch: int, size: int) -> None:
    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not corrupt the protocol
    try:
        fns = _project_child(batch, size) if name == PROJECT else _torch_child(name, batch, size)
    except Exception as err:  # noqa: BLE001
        print(json.dumps({"error": f"{type(err).__name__}: {err}"}), file=out, flush=True)
        return
    train, infer, photo, info = fns
    if infer is not None:
        infer()
        photo()
    print(json.dumps({"ready": info}), file=out, flush=True)
    for line in sys.stdin:
        what, n = line.split()
        fn = {"train": train, "infer": infer, "photo": photo}[what]
        print(json.dumps({"times": _timer(fn, int(n)) if fn is not None else None}), file=out, flush=True)


# --------------------------------------------------------------------------- driver side

def _threads(arg: int | None) -> int:
    if arg:
        return arg
    sys.path.insert(0, str(ROOT))
    from hotdog import threads  # stdlib only: importable from the torch venv too

    return threads.current().omp_num_threads


def _project_python(arg: str | None) -> str:
    if arg:
        return arg
    if importlib.util.find_spec("mxnet") is not None:
        return sys.executable
    return str(ROOT / ".venv" / "bin" / "python")


class Child:
    def __init__(self, name: str, python: str, args, env: dict):
        self.name = name
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--child", name, "--batch", str(args.batch),
             "--size", str(args.size)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            cwd=str(ROOT))
        self.info: dict = {}
        self.error: str | None = None

    def wait_ready(self, timeout: float) -> None:
        """Wait for the child's warm-up (torch.compile can take minutes); past ``timeout`` the
        setting is dropped, so one slow setting cannot lose the others' figures."""
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not box:
            self.proc.kill()
            self.error = f"not ready within {timeout:.0f} s"
            return
        msg = json.loads(box[0]) if box[0].strip() else {"error": "the process ended before it was ready"}
        self.info, self.error = msg.get("ready", {}), msg.get("error")

    def ask(self, what: str, n: int):
        self.proc.stdin.write(f"{what} {n}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["times"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--project-python", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--photos", type=int, default=5, help="single-photo forwards per round")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--settings", default=",".join((PROJECT,) + TORCH_SETTINGS))
    ap.add_argument("--ready-timeout", type=float, default=900, help="seconds a setting may take to warm up")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.child:
        child_main(args.child, args.batch, args.size)
        return 0
    missing = [m for m in ("torch", "timm") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"peer_bench skipped: {' and '.join(missing)} not importable here; run it with a "
              "Python that has PyTorch and timm (they are not project requirements)")
        return 0
    n_threads = _threads(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(n_threads))
    names = [s for s in args.settings.split(",") if s]
    children = []
    for name in names:
        python = _project_python(args.project_python) if name == PROJECT else sys.executable
        children.append(Child(name, python, args, env))
    try:
        for c in children:  # sequentially warmed: their start-ups must not compete either
            c.wait_ready(args.ready_timeout)
            print(f"peer_bench: {c.name} ready {c.info or c.error}", file=sys.stderr, flush=True)
        live = [c for c in children if c.error is None]
        times = {c.name: {"train": [], "infer": [], "photo": []} for c in live}
        for r in range(args.rounds):
            print(f"peer_bench: round {r + 1}/{args.rounds}, load {os.getloadavg()[0]:.1f}", file=sys.stderr,
                  flush=True)
            for what, n in (("train", 1), ("infer", 1), ("photo", args.photos)):
                for c in list(live):
                    try:
                        got = c.ask(what, n)
                    except (OSError, ValueError, TypeError):  # died (e.g. killed for memory)
                        c.error = f"the process died (exit code {c.proc.poll()}) in round {r + 1}"
                        live.remove(c)
                        continue
                    if got is not None:
                        times[c.name][what].extend(got)
    finally:
        for c in children:
            c.close()
    result = {"batch": args.batch, "size": args.size, "omp_num_threads": n_threads, "rounds": args.rounds,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "load_average": list(os.getloadavg()), "settings": {}}
    for c in children:
        t = times.get(c.name, {})
        med = {k: statistics.median(v) if v else None for k, v in t.items()}
        result["settings"][c.name] = {
            "info": c.info, "error": c.error,
            "train_img_s": args.batch / med["train"] if med.get("train") else None,
            "infer_img_s": args.batch / med["infer"] if med.get("infer") else None,
            "photo_ms": 1000 * med["photo"] if med.get("photo") else None,
        }
    s = result["settings"]

    def ratio(a, b, key):
        x, y = (s.get(a) or {}).get(key), (s.get(b) or {}).get(key)
        return x / y if x and y else None

    result["ratios"] = {
        "train_vs_torch_channels_last": ratio(PROJECT, "torch_channels_last", "train_img_s"),
        "train_vs_torch_eager": ratio(PROJECT, "torch_eager", "train_img_s"),
        "infer_vs_torch_compile": ratio(PROJECT, "torch_compile", "infer_img_s"),
        "infer_vs_torch_channels_last": ratio(PROJECT, "torch_channels_last", "infer_img_s"),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"batch {args.batch}, {args.size} px, float32, {n_threads} OpenMP thread(s), {args.rounds} rounds, "
              f"medians; load {result['load_average'][0]:.1f}")
        print(f"{'setting':22} {'train img/s':>12} {'infer img/s':>12} {'one photo ms':>13}")
        for name, v in s.items():
            def f(x, d=2):
                return "-" if x is None else f"{x:.{d}f}"
            print(f"{name:22} {f(v['train_img_s']):>12} {f(v['infer_img_s']):>12} {f(v['photo_ms'], 1):>13}"
                  + (f"  ({v['error'] or v['info'].get('compile_error')})" if v['error'] or
                     v['info'].get('compile_error') else ""))
        for k, v in result["ratios"].items():
            print(f"{k}: {'-' if v is None else f'{v:.2f}x'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
