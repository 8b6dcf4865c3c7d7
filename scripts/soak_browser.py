"""Soak: three browser sessions on one server for N minutes, with a run folder corrupted midway.

    .venv/bin/python scripts/soak_browser.py [--minutes 10] [--data DIR]

Session A trains again and again (the Train page's Fine-tune button), B uploads photos to
Predict, C walks every page; halfway through, one finished run gets garbage appended to its
metrics.jsonl and another a status.json of ``[]``. Every page view is checked for Python
tracebacks and Streamlit exception boxes; the server's resident memory is sampled every 5 s.
At the end every finished run that was not corrupted must still load and predict.
Needs Debian's chromium and Python playwright (as the browser test). Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
BAD = ("Traceback (most recent call last)", "stException", "unexpected error")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Soak:
    def __init__(self, url: str, deadline: float, home: Path, photos: list[Path]):
        self.url, self.deadline, self.home, self.photos = url, deadline, home, photos
        self.problems: list[str] = []
        self.counts = {"trainings": 0, "predictions": 0, "page_views": 0}
        self.lock = threading.Lock()

    def check(self, page, who: str) -> None:
        page.wait_for_selector("[data-testid='stApp']", timeout=120_000)
        # wait until Streamlit is idle before reading the page
        page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=300_000)
        body = page.inner_text("body")
        with self.lock:
            self.counts["page_views"] += 1
            for bad in BAD:
                if bad in body or page.query_selector("[data-testid='stException']"):
                    self.problems.append(f"{who}: {bad!r} on {page.url}")

    def trainer(self, browser) -> None:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(self.url + "/train")
        while time.time() < self.deadline:
            self.check(page, "trainer")
            button = page.get_by_role("button", name="Fine-tune")
            button.wait_for(timeout=120_000)
            if button.is_disabled():  # someone's run is going: wait for it
                page.wait_for_timeout(2000)
                page.reload()
                continue
            button.click()
            page.get_by_text("Run finished").first.wait_for(timeout=900_000)
            with self.lock:
                self.counts["trainings"] += 1
            page.reload()

    def predictor(self, browser) -> None:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        while time.time() < self.deadline:
            page.goto(self.url + "/predict")
            self.check(page, "predictor")
            # Upload first (the uploader keeps its files across reruns), then pick the model: a
            # file sent while the radio's rerun is still running could be dropped.
            page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(
                [str(p) for p in self.photos])
            page.get_by_text(self.photos[-1].name).first.wait_for(timeout=120_000)  # the upload landed
            self.check(page, "predictor")
            page.get_by_text("Pretrained ImageNet classifier").click()
            page.get_by_text(re.compile(r"^→ ")).nth(len(self.photos) - 1).wait_for(timeout=300_000)
            self.check(page, "predictor")
            with self.lock:
                self.counts["predictions"] += len(self.photos)

    def walker(self, browser) -> None:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        while time.time() < self.deadline:
            for path in ("/", "/data", "/train", "/weights", "/predict"):
                page.goto(self.url + path)
                self.check(page, "walker")


def corrupt_two_runs(home: Path) -> list[str]:
    from hotdog.runs import RunStore

    done = [r for r in RunStore(home / "runs").list() if r.status == "finished"]
    hit = []
    if done:
        with open(Path(done[0].run_dir) / "metrics.jsonl", "ab") as fh:
            fh.write(os.urandom(2000))
        hit.append(done[0].run_id)
    if len(done) > 1:
        (Path(done[1].run_dir) / "status.json").write_text("[]")
        hit.append(done[1].run_id)
    return hit


def main() -> int:
    from conftest import make_dataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--data", help="data set (default: a generated tiny one, so trainings are short)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hotdog-soak-"))
    home = tmp / "home"
    data = Path(args.data) if args.data else make_dataset(home / "data" / "tiny")
    photos = sorted((data / "test").rglob("*.*"))[:4]
    port = _free_port()
    env = {**os.environ, "HOTDOG_HOME": str(home), "HOTDOG_DATA": str(data)}
    log = open(tmp / "streamlit.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port",
                               str(port), "--server.address", "127.0.0.1", "--server.headless", "true"],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read().strip() == b"ok":
                break
        except OSError:
            time.sleep(0.3)
    start = time.time()
    soak = Soak(url, start + args.minutes * 60, home, photos)
    rss: list[tuple[float, float]] = []
    corrupted: list[str] = []
    try:
        # Playwright's sync API is bound to its thread: one thread and instance per session.
        threads = [threading.Thread(target=_own_playwright, args=(soak, role), daemon=True)
                   for role in (soak.trainer, soak.predictor, soak.walker)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            rss.append((time.time() - start, _rss_mb(server.pid)))
            if not corrupted and time.time() - start > args.minutes * 30:
                corrupted = corrupt_two_runs(home)
            time.sleep(5)
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    from hotdog.predict import Predictor
    from hotdog.runs import RunStore

    runs = RunStore(home / "runs").list()
    intact = [r for r in runs if r.run_id not in corrupted and r.status == "finished"]
    broken = []
    for r in intact:
        try:
            Predictor.from_run(r.run_dir).predict(photos[:1])
        except Exception as err:  # noqa: BLE001 - reported
            broken.append(f"{r.run_id}: {err}")
    log_text = (tmp / "streamlit.log").read_text()
    values = [v for _, v in rss]
    report = {
        "minutes": args.minutes, **soak.counts, "problems": soak.problems[:20],
        "corrupted_runs": corrupted,
        "corrupted_listed_as": {r.run_id: r.status for r in runs if r.run_id in corrupted},
        "finished_runs_intact": len(intact) - len(broken), "finished_runs_broken": broken,
        "server_rss_mb": {"first": values[0] if values else None, "max": max(values) if values else None,
                          "last": values[-1] if values else None,
                          "after_first_minute_max": max((v for t, v in rss if t > 60), default=None)},
        "tracebacks_in_server_log": log_text.count("Traceback (most recent call last)"),
    }
    print(json.dumps(report, indent=2))
    return 0 if not soak.problems and not broken else 1


def _own_playwright(soak: Soak, role) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium")
        try:
            role(browser)
        except Exception as err:  # noqa: BLE001 - a session that dies is a finding
            shot = soak.home.parent / f"failed-{role.__name__}.png"
            try:
                browser.contexts[0].pages[0].screenshot(path=str(shot), full_page=True)
            except Exception:  # noqa: BLE001 - best effort
                shot = None
            with soak.lock:
                soak.problems.append(f"session {role.__name__} stopped: {str(err).splitlines()[0]}"
                                     + (f" (screenshot {shot})" if shot else ""))
        finally:
            browser.close()


if __name__ == "__main__":
    sys.exit(main())
