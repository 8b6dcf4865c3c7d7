"""Peak resident memory of real trainings, one child process each (the footprint table of
hotdog/memory.py). Each case runs ``python -m hotdog train ... --epochs 1`` on a data set and
reads the child's peak RSS from the kernel (``os.wait4`` rusage) and its peak virtual size.

    python scripts/measure_memory.py --data ../shared/data/hotdog-mini CASE...  # CASE: b32, b128, b128m32, f32 ...

Run one at a time on a shared machine (batch 128 at 224 px needs ~12 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time


def parse_case(case: str) -> list[str]:
    """b32 -> batch 32 full fine-tune; f32 -> frozen; b128m32 -> micro-batch 32; s... -> input size."""
    args, freeze = [], case.startswith("f")
    rest = case[1:]
    size = None
    if "s" in rest:
        rest, size = rest.split("s", 1)
    batch, _, micro = rest.partition("m")
    # Always explicit: a micro-batch left to the app may be chosen by the memory estimate.
    args += ["--batch-size", batch, "--micro-batch", micro or batch]
    if freeze:
        args += ["--freeze"]
    if size:
        args += ["--input-size", size]
    return args


def measure(data: str, case: str, extra: list[str]) -> dict:
    runs = tempfile.mkdtemp(prefix="hotdog-mem-")
    cmd = [sys.executable, "-m", "hotdog", "train", "--data", data, "--epochs", "1", "--runs-dir", runs,
           "--json", *parse_case(case), *extra]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak_vm = [0]

    def watch():
        while proc.poll() is None:
            try:
                for line in open(f"/proc/{proc.pid}/status"):
                    if line.startswith("VmPeak:"):
                        peak_vm[0] = max(peak_vm[0], int(line.split()[1]) // 1024)
            except OSError:
                pass
            time.sleep(0.5)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    try:
        doc = json.loads(out)
    except ValueError:
        doc = {}
    return {"case": case, "args": parse_case(case) + extra, "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "peak_vm_mb": peak_vm[0], "exit": proc.returncode, "status": doc.get("status"),
            "message": doc.get("message") or doc.get("error"), "seconds": round(time.time() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", default=None, help="append one JSON line per case here")
    p.add_argument("cases", nargs="+")
    a, extra = p.parse_known_args()
    for case in a.cases:
        row = measure(a.data, case, extra)
        print(json.dumps(row), flush=True)
        if a.out:
            with open(a.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
