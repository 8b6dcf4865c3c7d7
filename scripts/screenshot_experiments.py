"""docs/screenshots/experiments.png: the Experiments page over the measured sweeps.

    .venv/bin/python scripts/screenshot_experiments.py [--home /tmp/hotdog-exercises] \
        [--data ../shared/data/hotdog-mini] [--sweep SWEEP_ID] [--out docs/screenshots/experiments.png]

Starts ``streamlit run streamlit_app.py`` with ``HOTDOG_HOME=--home`` (where scripts/exercises.py
put its runs and sweeps), opens the Experiments page in /usr/bin/chromium through playwright,
picks the sweep (default: the newest), waits for the charts and saves a full-height screenshot.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default="/tmp/hotdog-exercises")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "hotdog-mini"))
    ap.add_argument("--sweep", default=None, help="the sweep's title starts with this (default: the newest)")
    ap.add_argument("--out", default=str(REPO / "docs" / "screenshots" / "experiments.png"))
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HOTDOG_HOME": args.home, "HOTDOG_DATA": args.data,
           "HOTDOG_DATA_ROOTS": str(Path(args.data).parent)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=5) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                time.sleep(0.5)
        from playwright.sync_api import expect, sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(180_000)
            expect.set_options(timeout=180_000)
            page.goto(url + "/experiments")
            expect(page.get_by_role("heading", level=1, name="Experiments")).to_be_visible()
            if args.sweep:
                page.get_by_label("Sweep").click()  # the selectbox
                page.get_by_role("option").filter(has_text=args.sweep).first.click()
            expect(page.get_by_text("points done").first).to_be_visible()
            expect(page.locator('[data-testid="stVegaLiteChart"]').first).to_be_visible()
            page.wait_for_timeout(4000)  # charts finish their layout
            height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
            page.set_viewport_size({"width": 1400, "height": min(int(height) + 40, 4000)})
            page.wait_for_timeout(3000)
            page.screenshot(path=args.out)
            browser.close()
        print(f"saved {args.out}")
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
