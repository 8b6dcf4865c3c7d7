"""docs/screenshots/*.png (but experiments.png): the README's pictures from one real session
with the DEFAULT settings on hotdog-mini, on a fresh HOTDOG_HOME (no leftover runs).

    .venv/bin/python scripts/readme_screenshots.py [--data ../shared/data/hotdog-mini] \
        [--out docs/screenshots] [--keep-home DIR]

Starts ``streamlit run`` with an empty HOTDOG_HOME and no HOTDOG_DATA, opens it in
/usr/bin/chromium through playwright, and walks as a new user does: Data (choose the folder),
Train (the default preset, one click on Fine-tune; a picture while it runs and one after),
Predict (two test photos per class, then with heatmaps), Weights, Home. The pages are checked
and the pictures taken by the browser test's own helpers (tests/test_browser.py ``shoot``:
wait until idle, full height, not blank). Prints the run's preset, epochs, accuracy and time
as JSON, for the README's caption. experiments.png comes from scripts/screenshot_experiments.py
over the measured sweeps.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WIDTH_FREE_X = 1390  # a point at the window's right edge, over no element
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "hotdog-mini"))
    ap.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    ap.add_argument("--keep-home", default=None, help="use (and keep) this empty folder as HOTDOG_HOME")
    args = ap.parse_args()
    photos = Path(args.data).resolve()
    if not (photos / "train").is_dir():
        sys.exit(f"no data set at {photos} (a folder with train/ and test/)")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="hotdog-readme-"))
    home = Path(args.keep_home).resolve() if args.keep_home else tmp / "home"
    if home.exists() and any(home.iterdir()):
        sys.exit(f"{home} is not empty: the pictures must show a fresh HOTDOG_HOME")
    os.environ["HOTDOG_ARTIFACTS"] = str(out)  # where test_browser.shoot saves
    import test_browser as tb

    try:
        with tb.streamlit_server(tmp, {"HOTDOG_HOME": str(home), "HOTDOG_DATA_ROOTS": str(photos)}) as url:
            server = {"url": url, "tmp": tmp, "home": home}
            from playwright.sync_api import expect, sync_playwright

            expect.set_options(timeout=tb.UI)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=tb.CHROMIUM, args=["--headless", "--no-sandbox"])
                try:
                    summary = walk(tb, tb.new_page(browser), server, photos, out)
                finally:
                    browser.close()
    finally:
        if not args.keep_home:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(summary, indent=2))


def walk(tb, page, server, photos: Path, out: Path) -> dict:
    from playwright.sync_api import expect

    from hotdog.runs import RunStore

    opened = time.monotonic()
    page.goto(server["url"])
    expect(tb.heading(page, "Home")).to_be_visible()
    tb.goto(page, "Data")
    tb.use_local_folder(page, photos)
    tb.shoot(page, server, "data", "Data", ["What is in it", "Images per class", "Augmentation preview"])

    # Train with whatever the app starts with (its default preset): no knob is touched.
    tb.goto(page, "Train")
    page.get_by_role("button", name="Fine-tune").click()
    stop = page.get_by_role("button", name="Stop")
    expect(stop).to_be_visible(timeout=tb.TRAINING)
    # while it runs: the start-up checklist with its bars, or the first epochs
    expect(page.get_by_text(re.compile(r"Caching features|Decoding|Epoch \d")).first).to_be_visible(
        timeout=tb.TRAINING)
    page.screenshot(path=str(out / "train_live.png"))
    tb.wait_for_new_run(server, 0, tb.TRAINING)
    expect(page.get_by_text(re.compile(r"Run finished \(fine-tune\)"))).to_be_visible(timeout=tb.TRAINING)
    first = time.monotonic() - opened
    # the clicked button would show its pressed colour in the picture
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    page.mouse.move(WIDTH_FREE_X, 10)
    tb.shoot(page, server, "train", "Train", ["Run finished (fine-tune)", "Test accuracy", "Expected time"])
    run = tb.runs(server)[0]
    rec = RunStore(server["home"] / "runs").load(run.run_id)

    tb.goto(page, "Predict")
    picks = [p for c in ("hotdog", "not-hotdog") for p in sorted((photos / "test" / c).iterdir())[:2]]
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files([str(p) for p in picks])
    expect(page.get_by_text(re.compile(r"^→ "))).to_have_count(len(picks))
    tb.shoot(page, server, "predict", "Predict", [p.name for p in picks])
    page.get_by_text("Show heatmaps").first.click()
    expect(page.get_by_text(re.compile(r"^heatmap: "))).to_have_count(len(picks), timeout=tb.TRAINING)
    tb.shoot(page, server, "predict-heatmaps", "Predict", [p.name for p in picks])
    page.get_by_text("Show heatmaps").first.click()

    tb.goto(page, "Weights")
    tb.shoot(page, server, "weights", "Weights", ["After fine-tuning"])
    tb.goto(page, "Home")
    tb.shoot(page, server, "home", "Home", ["Latest runs"])
    cfg = rec.config
    return {"run": run.run_id, "preset": cfg.get("preset"), "epochs": run.epochs, "freeze": run.freeze,
            "lr": run.lr, "batch_size": cfg.get("batch_size"), "input_size": cfg.get("input_size"),
            "test_acc": run.test_acc, "accuracy": run.accuracy, "accuracy_weights": run.accuracy_weights,
            "seconds": rec.status.get("seconds"),
            "seconds_open_to_classifier": round(first, 1)}


if __name__ == "__main__":
    main()
