"""End to end in a real headless Chromium against ``streamlit run``.

Starts the app on a free local port with a temporary HOTDOG_HOME holding a tiny generated data
set, trains one tiny epoch, predicts an uploaded photo, checks that hostile class names stay
text, and saves a screenshot of every page into an artifacts folder ($HOTDOG_ARTIFACTS, else a
pytest temp folder). With HOTDOG_UPDATE_SCREENSHOTS=1 they also replace docs/screenshots/ (the
README's pictures), so an ordinary test run leaves the working tree clean.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import make_dataset, make_image

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
HOTDOG_MINI = Path(os.environ.get("HOTDOG_MINI", REPO.parent / "shared" / "data" / "hotdog-mini"))
CHROMIUM = "/usr/bin/chromium"
SHOTS = REPO / "docs" / "screenshots"
XSS = "<img src=x onerror=alert(1)>"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (scripts/test.sh installs Debian's chromium)")
    pytest.importorskip("playwright.sync_api", reason="Python playwright is not installed")
    tmp = tmp_path_factory.mktemp("browser")
    home = tmp / "home"
    data = make_dataset(home / "data" / "tiny")
    hostile = make_dataset(tmp / "hostile", classes={XSS: (200, 60, 40), "plain": (40, 90, 200)},
                           per_class={"train": 2, "test": 1})
    port = _free_port()
    env = {**os.environ, "HOTDOG_HOME": str(home), "HOTDOG_DATA": str(data), "PYTHONUNBUFFERED": "1"}
    log = open(tmp / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("streamlit did not start:\n" + (tmp / "streamlit.log").read_text()[-3000:])
        time.sleep(0.3)
    yield {"url": url, "tmp": tmp, "hostile": hostile, "log": tmp / "streamlit.log"}
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
        pg = ctx.new_page()
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def artifacts(server) -> Path:
    out = Path(os.environ.get("HOTDOG_ARTIFACTS") or server["tmp"] / "artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


def shoot(page, server, name: str) -> None:
    """Screenshot once the app is idle (no 'Running…' indicator, no spinners)."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " && !document.querySelector('[data-testid=\"stSpinner\"]')",
        timeout=60_000,
    )
    page.wait_for_timeout(700)  # charts draw after the data arrives
    # Streamlit scrolls inside its main container, so a "full page" shot would stop at the
    # viewport: grow the viewport to the content instead, then put it back.
    height = page.evaluate(
        "() => Math.max(...['stMain', 'stAppViewContainer', 'stSidebarContent'].map("
        "id => document.querySelector(`[data-testid=\"${id}\"]`)?.scrollHeight || 0))")
    page.set_viewport_size({"width": 1400, "height": max(1000, min(int(height) + 40, 5000))})
    page.wait_for_timeout(800)
    target = artifacts(server) / f"{name}.png"
    page.screenshot(path=str(target))
    page.set_viewport_size({"width": 1400, "height": 1000})
    if os.environ.get("HOTDOG_UPDATE_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(target, SHOTS / target.name)


def goto(page, label: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text(label, exact=True).click()


def no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]').first.inner_text()
    assert page.get_by_text("hit an unexpected error").count() == 0


def test_every_page_in_a_real_browser(server, page):
    try:
        _walk_every_page(server, page)
    except BaseException:
        page.screenshot(path=str(artifacts(server) / "failure.png"), full_page=True)
        print("streamlit log tail:\n" + server["log"].read_text()[-3000:])
        print(f"failure screenshot: {artifacts(server) / 'failure.png'}")
        raise


def _walk_every_page(server, page):
    url = server["url"]
    t0 = time.time()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    # The fresh server's first request is a page URL (a bookmark): it must still get the
    # router's navigation, not Streamlit's legacy pages/ folder listing (which shows 'ui').
    page.goto(url + "/data")
    page.get_by_text("What is in it").wait_for()
    nav = page.locator('[data-testid="stSidebarNav"]')
    nav.get_by_text("Weights", exact=True).wait_for()
    assert nav.get_by_text("ui", exact=True).count() == 0
    goto(page, "Home")
    page.get_by_text("Hotdog Lab", exact=False).first.wait_for()
    page.get_by_text("Latest runs").wait_for()
    no_exception(page)

    # ---- Data
    goto(page, "Data")
    page.get_by_text("Images per class").wait_for()
    page.get_by_text("Augmentation preview").wait_for()
    no_exception(page)
    shoot(page, server, "data")

    # ---- Train: 1 epoch, 32 px, batch 8
    goto(page, "Train")
    page.get_by_role("button", name="Fine-tune").wait_for()
    sidebar = page.locator('[data-testid="stSidebar"]')
    epochs = sidebar.get_by_label("Epochs", exact=True)
    epochs.fill("1")
    epochs.press("Enter")
    sidebar.get_by_role("slider", name="Batch size").press("Home")
    sidebar.get_by_text("More settings").click()
    sidebar.get_by_role("slider", name="Image size").press("Home")
    page.wait_for_timeout(800)
    page.get_by_role("button", name="Fine-tune").click()
    page.get_by_text("finished", exact=False).first.wait_for(timeout=90_000)
    page.get_by_text("Run finished").wait_for(timeout=90_000)
    no_exception(page)
    page.get_by_text("Misclassified test photos").wait_for()
    shoot(page, server, "train")

    # ---- a longer run, watched live, then stopped (fine-tuning: scratch at lr 0.1 may diverge)
    epochs.fill("30")
    epochs.press("Enter")
    page.wait_for_timeout(500)
    page.get_by_role("button", name="Fine-tune").click()
    page.get_by_text(re.compile(r"Epoch ([3-9]|\d\d)/30")).first.wait_for(timeout=60_000)
    page.wait_for_timeout(1200)  # let the curves draw
    live = SHOTS / "train_live.png"
    page.screenshot(path=str(live))
    shutil.copy(live, artifacts(server) / live.name)
    page.get_by_role("button", name="Stop").click()
    page.get_by_text("Run stopped", exact=False).first.wait_for(timeout=60_000)
    no_exception(page)

    # ---- Predict with the run just trained
    goto(page, "Predict")
    page.get_by_text("Photos (jpg").wait_for()
    photo = make_image(server["tmp"] / "my-hotdog.png", (200, 60, 40), size=(64, 48), seed=99)
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(photo))
    page.get_by_text("→ hotdog").or_(page.get_by_text("→ not-hotdog")).first.wait_for(timeout=60_000)
    no_exception(page)
    shoot(page, server, "predict")

    # ---- Weights
    goto(page, "Weights")
    page.get_by_text("Nearest ImageNet classes").wait_for()
    page.get_by_text("After fine-tuning").wait_for()
    no_exception(page)
    shoot(page, server, "weights")

    # ---- Home last, so it lists the run
    goto(page, "Home")
    page.get_by_text("Latest runs").wait_for()
    no_exception(page)
    shoot(page, server, "home")

    # ---- hostile class names are text, never HTML
    goto(page, "Data")
    page.get_by_role("tab", name="Use a local folder").click()
    box = page.get_by_label("Folder on the server")
    box.fill(str(server["hostile"]))
    box.press("Enter")
    page.get_by_role("button", name="Use this folder").click()
    page.get_by_text(XSS, exact=True).first.wait_for()
    no_exception(page)
    assert page.locator("img[onerror]").count() == 0
    goto(page, "Train")
    page.get_by_role("button", name="Fine-tune").wait_for()
    goto(page, "Predict")
    page.get_by_text("Photos (jpg").wait_for()
    page.wait_for_timeout(500)
    assert page.locator("img[onerror]").count() == 0
    assert dialogs == [], "no script from a class name ever ran"
    assert time.time() - t0 < 150


def _pick(page, label: str, option: str) -> None:
    """Choose the first option containing ``option`` in the selectbox labelled ``label``."""
    page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first.click()
    page.get_by_role("option").filter(has_text=option).first.click()


def test_showcase_screenshots_on_real_photos(server, page):
    """README screenshots on the real photo set: the chapter's comparison, real predictions.

    Runs after the functional walk (same server) and overwrites its screenshots of noise images.
    """
    if not (HOTDOG_MINI / "train").is_dir():
        pytest.skip(f"real photo set not found at {HOTDOG_MINI}: keeping the screenshots of generated data")
    try:
        _showcase(server, page)
    except BaseException:
        page.screenshot(path=str(artifacts(server) / "showcase-failure.png"), full_page=True)
        raise


def _showcase(server, page):
    page.goto(server["url"] + "/data")
    page.get_by_role("tab", name="Use a local folder").click()
    box = page.get_by_label("Folder on the server")
    box.fill(str(HOTDOG_MINI))
    box.press("Enter")
    page.get_by_role("button", name="Use this folder").click()
    page.get_by_text("Folder checked").wait_for()
    page.get_by_text("Augmentation preview").wait_for()
    shoot(page, server, "data")

    # The chapter's defaults (batch 128, 5 epochs) with frozen features at 160 px: the
    # features are computed once, so this stays quick even on a busy CPU.
    goto(page, "Train")
    page.get_by_role("button", name="Fine-tune").wait_for()
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("Freeze the copied features").click()
    sidebar.get_by_text("More settings").click()
    size = sidebar.get_by_role("slider", name="Image size")
    size.press("Home")
    for _ in range(4):
        size.press("ArrowRight")  # 32 -> 160
    page.wait_for_timeout(800)
    page.get_by_role("button", name="Fine-tune").click()
    page.get_by_text(re.compile(r"Run finished \(fine-tune\)")).wait_for(timeout=150_000)
    no_exception(page)
    page.get_by_text("Misclassified test photos").wait_for()
    shoot(page, server, "train")

    goto(page, "Predict")
    page.get_by_text("Photos (jpg").wait_for()
    photos = [sorted((HOTDOG_MINI / "test" / c).iterdir())[0] for c in ("hotdog", "not-hotdog")]
    bad = server["tmp"] / "notes.jpg"
    bad.write_text("this is a text file, not a photo")
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(
        [str(p) for p in photos] + [str(bad)])
    page.get_by_text("→ ", exact=False).nth(1).wait_for(timeout=60_000)
    no_exception(page)
    shoot(page, server, "predict")

    goto(page, "Weights")
    page.get_by_text("After fine-tuning").wait_for()
    shoot(page, server, "weights")

    goto(page, "Home")
    page.get_by_text("Latest runs").wait_for()
    shoot(page, server, "home")


def test_upload_limit_and_xsrf_are_enforced(server, page):
    """Issue 7 item 5 at the server: uploads need the XSRF token and are capped at 25 MB."""
    page.goto(server["url"] + "/predict")
    page.get_by_text("Photos (jpg").wait_for()
    page.get_by_text("Pretrained ImageNet classifier").click()
    page.wait_for_timeout(500)
    photo = make_image(server["tmp"] / "small.png", (200, 60, 40), size=(32, 32))
    uploader = page.locator('[data-testid="stFileUploader"] input[type="file"]').first
    with page.expect_request(lambda r: "/_stcore/upload_file/" in r.url and r.method == "PUT") as info:
        uploader.set_input_files(str(photo))
    url = info.value.url
    token = info.value.headers.get("x-xsrftoken")
    assert token, "the app sends an XSRF token with uploads"
    part = {"file": {"name": "x.png", "mimeType": "image/png", "buffer": photo.read_bytes()}}
    assert page.request.put(url, multipart=part).status == 403  # no token: refused
    assert page.request.put(url, multipart=part, headers={"X-Xsrftoken": "forged"}).status == 403
    cookies = "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())
    assert _raw_put(url, 26 * 1024 * 1024, {"X-Xsrftoken": token, "Cookie": cookies}) == 413

    # the browser refuses it too, with a message, and the app keeps working
    huge = server["tmp"] / "huge.jpg"
    with open(huge, "wb") as fh:
        fh.truncate(26 * 1024 * 1024)
    uploader.set_input_files(str(huge))
    page.get_by_text("or smaller", exact=False).first.wait_for()
    no_exception(page)
    page.get_by_text("Upload photos").first.wait_for()


def _raw_put(url: str, size: int, headers: dict) -> int:
    """PUT a multipart body of ``size`` bytes, streamed, and return the HTTP status."""
    import http.client
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    boundary = "hotdogboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.putrequest("PUT", u.path)
    for k, v in {**headers, "Content-Type": f"multipart/form-data; boundary={boundary}",
                 "Content-Length": str(len(head) + size + len(tail))}.items():
        conn.putheader(k, v)
    conn.endheaders()
    try:  # the server may answer (and close) before the body is through
        conn.send(head)
        chunk = b"\0" * (1 << 20)
        for _ in range(size // len(chunk)):
            conn.send(chunk)
        conn.send(tail)
    except OSError:
        pass
    status = conn.getresponse().status
    conn.close()
    return status
