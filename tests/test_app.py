"""AppTest for every page of the Streamlit app: page switches, widgets, uploads, a tiny training."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app_helpers import APP, assert_clean, new_app
from conftest import make_dataset, make_image

REPO = str(Path(__file__).resolve().parents[1])
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def app_home(hotdog_home, monkeypatch):
    """A HOTDOG_HOME holding one installed tiny data set; $HOTDOG_DATA unset."""
    monkeypatch.delenv("HOTDOG_DATA", raising=False)
    make_dataset(hotdog_home / "data" / "tiny")
    return hotdog_home


def walk(node):
    yield node
    for child in getattr(node, "children", {}).values():
        yield from walk(child)


def html_bodies(at: AppTest) -> list[str]:
    """Every piece of markdown the app allowed to contain raw HTML."""
    out = []
    for node in walk(at._tree):
        proto = getattr(node, "proto", None)
        if proto is not None and getattr(proto, "allow_html", False):
            out.append(proto.body)
    return out


def texts(at: AppTest) -> list[str]:
    return [t.value for t in at.text]


def png_bytes(color=(200, 60, 40), size=(48, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_home_lists_dataset_source_and_runs(app_home):
    at = new_app()
    assert_clean(at)
    assert at.title[0].value.endswith("Hotdog Lab")
    assert "tiny" in texts(at)
    assert any("2 classes" in t for t in texts(at))
    status = [c.value for c in at.sidebar.caption]
    assert any(c.startswith("**Source:**") for c in status) and "**Training:** idle" in status
    assert any("No training runs yet" in c.value for c in at.caption)


def test_data_page_shows_counts_grid_and_augmentations(app_home):
    at = new_app()
    at.switch_page("pages/data.py").run()
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Classes"] == "2" and metrics["Train images"] == "16" and metrics["Test images"] == "8"
    # 8 + 8 grid images, original + 6 train views + 1 test view
    assert len(at.image) == 16 + 8
    at.select_slider(key="aug_size").set_value(64).run()
    at.button(key="aug_again").click().run()
    assert_clean(at)
    assert len(at.image) == 16 + 8


def test_data_page_local_folder_and_zip_upload(app_home, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    monkeypatch.setenv("HOTDOG_DATA_ROOTS", str(shared))
    other = make_dataset(shared / "other", classes={"cat": (200, 200, 40), "dog": (40, 40, 40), "fox": (250, 120, 0)})
    at = new_app()
    at.switch_page("pages/data.py").run()
    at.segmented_control(key="data_get").set_value("Use a local folder").run()
    at.text_input(key="folder_path").set_value(str(other)).run()
    at.button(key="use_folder").click().run()
    assert_clean(at)
    assert at.session_state["data_root"] == str(other.resolve())
    assert {m.label: m.value for m in at.metric}["Classes"] == "3"
    # still on the section the user was using, not back on the first one
    assert at.segmented_control(key="data_get").value == "Use a local folder"
    assert at.text_input(key="folder_path").value == str(other)
    assert any("now in use" in m.value for m in at.success)

    at.text_input(key="folder_path").set_value(str(shared / "missing")).run()
    at.button(key="use_folder").click().run()
    assert_clean(at)
    assert at.error, "a missing folder is an error message"
    assert at.session_state["data_root"] == str(other.resolve())

    # Outside the shared data folders: refused with a sentence that names no server path and
    # does not tell whether the folder exists.
    secret = make_dataset(tmp_path / "private", classes={"keys": (1, 2, 3), "db": (4, 5, 6)})
    (secret / "train" / "keys" / "id_rsa").write_text("-----BEGIN KEY-----")
    refusals = []
    for outside in (str(secret), "/etc", str(tmp_path / "nothing-here"), "~/.ssh", "../../.."):
        at.text_input(key="folder_path").set_value(outside).run()
        at.button(key="use_folder").click().run()
        assert_clean(at)
        refusals.append([e.value for e in at.error])
        assert at.session_state["data_root"] == str(other.resolve())
        shown = " ".join(texts(at) + [e.value for e in at.error])
        assert not any(w in shown for w in ("id_rsa", "PackageKit", "private", "nothing-here", ".ssh", "/etc"))
    assert all(r == refusals[0] and len(r) == 1 for r in refusals), refusals

    at.segmented_control(key="data_get").set_value("Upload a zip").run()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted((app_home / "data" / "tiny").rglob("*.png")):
            zf.write(p, p.relative_to(app_home / "data" / "tiny"))
    at.file_uploader(key="zip_upload").set_value(("my set (1).zip", buf.getvalue(), "application/zip")).run()
    at.button(key="install_zip").click().run()  # name taken from the file name
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["data_root"] == str(app_home / "data" / "my-set-1")
    at.text_input(key="zip_name").set_value("zipped").run()
    at.button(key="install_zip").click().run()
    assert_clean(at)
    assert at.session_state["data_root"] == str(app_home / "data" / "zipped")
    # the same name again: installed beside it, the first one untouched
    at.button(key="install_zip").click().run()
    assert_clean(at)
    assert at.session_state["data_root"] == str(app_home / "data" / "zipped-2")
    assert any("as 'zipped-2'" in s.value for s in at.success)
    # replacing is an explicit choice
    at.checkbox(key="zip_replace").check().run()
    at.button(key="install_zip").click().run()
    assert_clean(at)
    assert at.session_state["data_root"] == str(app_home / "data" / "zipped")
    assert not (app_home / "data" / "zipped-3").exists()

    bad = io.BytesIO()
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../evil.png", png_bytes())
    at.file_uploader(key="zip_upload").set_value(("evil.zip", bad.getvalue(), "application/zip")).run()
    at.text_input(key="zip_name").set_value("evil").run()
    at.button(key="install_zip").click().run()
    assert_clean(at)
    assert at.error
    assert not (app_home / "data" / "evil").exists()
    assert at.session_state["data_root"] == str(app_home / "data" / "zipped")


def test_hostile_class_and_file_names_are_never_html(hotdog_home, monkeypatch, tmp_path):
    root = make_dataset(hotdog_home / "data" / "xss", classes={XSS: (200, 60, 40), "plain": (40, 90, 200)})
    monkeypatch.setenv("HOTDOG_DATA", str(root))
    at = new_app()
    assert_clean(at)
    pages = ["pages/home.py", "pages/data.py", "pages/train.py", "pages/weights.py", "pages/predict.py"]
    for page in pages:
        at.switch_page(page).run()
        assert_clean(at)
        assert not any("onerror" in b for b in html_bodies(at)), page
    at.switch_page("pages/data.py").run()
    assert XSS in texts(at), "the class name is shown, as plain text"
    at.switch_page("pages/predict.py").run()
    at.radio(key="predict_kind").set_value("Pretrained ImageNet classifier").run()
    at.file_uploader(key="photos").set_value([(XSS + ".png", png_bytes(), "image/png"),
                                              (XSS + ".jpg", b"<html>" + XSS.encode(), "image/jpeg")]).run()
    assert_clean(at)
    assert XSS + ".png" in texts(at)
    assert not any("onerror" in b for b in html_bodies(at))
    assert len(at.error) == 1


def test_predict_each_bad_file_gets_its_own_error(app_home, tmp_path):
    good = make_image(tmp_path / "dog.png", (200, 60, 40)).read_bytes()
    files = [
        ("good.png", good, "image/png"),
        ("empty.jpg", b"", "image/jpeg"),
        ("page.jpg", b"<html><body>hi</body></html>", "image/jpeg"),
        ("truncated.jpg", _jpeg()[:200], "image/jpeg"),
        ("noise.webp", bytes(range(256)) * 8, "image/webp"),
        ("also-good.gif", _gif(), "image/gif"),
    ]
    at = new_app()
    at.switch_page("pages/predict.py").run()
    assert_clean(at)
    at.radio(key="predict_kind").set_value("Pretrained ImageNet classifier").run()
    at.file_uploader(key="photos").set_value(files).run()
    assert_clean(at)
    assert len(at.error) == 4, [e.value for e in at.error]
    shown = texts(at)
    assert sum(t.startswith("→ ") for t in shown) == 2  # both good photos have a prediction
    assert len(at.dataframe) == 0 and len(at.get("vega_lite_chart")) == 2

    at.radio(key="predict_kind").set_value("Zero-shot ImageNet 'hotdog' head").run()
    assert_clean(at)
    assert len(at.error) == 4
    assert len(at.dataframe) == 2  # the ImageNet top-5 beside each good photo
    assert sum(t in ("→ hotdog", "→ not-hotdog") for t in texts(at)) == 2

    at.radio(key="predict_kind").set_value("A finished training run").run()
    assert_clean(at)
    assert any("No finished run" in i.value for i in at.info)


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(buf, format="JPEG")
    return buf.getvalue()


def _gif() -> bytes:
    frames = [Image.new("P", (32, 32), i * 40) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def test_weights_page_finds_hotdog_by_name(app_home):
    from hotdog import imagenet

    at = new_app()
    at.switch_page("pages/weights.py").run()
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Index"] == str(imagenet.class_index("hotdog"))
    assert any(imagenet.class_names()[713] in w.value for w in at.warning)
    at.text_input(key="weights_class").set_value("hotdgo").run()
    assert_clean(at)
    assert at.error and "hotdog" in at.error[0].value
    at.text_input(key="weights_class").set_value("photocopier")
    at.slider(key="weights_k").set_value(5).run()
    assert {m.label: m.value for m in at.metric}["Index"] == "713"


def _wait_idle(at: AppTest, timeout: float = 600) -> None:
    """Wait for the training (and any queued run) to end, then let the page see it."""
    from hotdog.jobs import job_manager

    if job_manager().wait(timeout).running:
        pytest.fail("training did not finish in time")
    at.run()  # the live view notices the end and redraws the whole page
    assert_clean(at)
    assert at.session_state["job_was_running"] is False


def _tiny_knobs(at: AppTest) -> None:
    at.number_input(key="epochs").set_value(1)
    at.select_slider(key="batch_size").set_value(8)
    at.select_slider(key="input_size").set_value(32)
    at.run()


@pytest.mark.timeout(1800)  # above _wait_idle's deadlines: those report a hang first
def test_train_tiny_finetune_reaches_finished_then_predict_and_weights(app_home, tmp_path):
    at = new_app()
    at.switch_page("pages/train.py").run()
    assert_clean(at)
    _tiny_knobs(at)
    # knobs survive a page switch
    at.switch_page("pages/home.py").run()
    at.switch_page("pages/train.py").run()
    assert at.number_input(key="epochs").value == 1 and at.select_slider(key="input_size").value == 32

    at.number_input(key="warmup_epochs").set_value(1).run()
    at.button(key="btn_finetune").click().run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    _wait_idle(at)
    assert any("Run finished" in s.value for s in at.success), [s.value for s in at.success]
    from hotdog import settings
    from hotdog.runs import RunStore

    config = RunStore().load(RunStore().list()[0].run_id).config
    assert (config["epochs"], config["batch_size"], config["input_size"], config["warmup_epochs"]) == (1, 8, 32, 1)
    # the default preset's settings (hotdog.settings), not the chapter's
    default = settings.default_preset()
    values = settings.preset_values(default, "finetune", "efficientnet_lite0")
    assert {k: config[k] for k in ("lr", "wd", "lr_mult", "bn_mode", "init_output_from_imagenet", "freeze")} == {
        k: values[k] for k in ("lr", "wd", "lr_mult", "bn_mode", "init_output_from_imagenet", "freeze")}
    assert config["preset"] == default
    runs = at.dataframe[0].value
    assert list(runs["status"]) == ["finished"] and list(runs["mode"]) == ["finetune"]
    assert at.metric[0].label == "Test accuracy"
    assert at.get("download_button"), "the run's params can be downloaded"
    assert len(at.get("vega_lite_chart")) >= 2  # overlay curves + confusion matrix

    # the finished run predicts uploaded photos, bad files get their own error
    at.switch_page("pages/predict.py").run()
    assert at.radio(key="predict_kind").value == "A finished training run"
    photo = make_image(tmp_path / "p.png", (200, 60, 40)).read_bytes()
    at.file_uploader(key="photos").set_value([("p.png", photo, "image/png"), ("x.jpg", b"nope", "image/jpeg")]).run()
    assert_clean(at)
    assert len(at.error) == 1
    assert sum(t in ("→ hotdog", "→ not-hotdog") for t in texts(at)) == 1

    # the weights page compares the learned row with ImageNet's
    at.switch_page("pages/weights.py").run()
    assert_clean(at)
    table = at.dataframe[0].value
    assert set(table["run class"]) == {"hotdog", "not-hotdog"}

    # the data set changes after training: the run says so where its figures are shown
    at.switch_page("pages/train.py").run()
    assert not [w for w in at.warning if "has changed" in w.value]
    make_image(app_home / "data" / "tiny" / "test" / "hotdog" / "late.png", (1, 2, 3))
    at.run()
    assert_clean(at)
    assert [w for w in at.warning if "has changed since this run was trained" in w.value]


@pytest.mark.timeout(1800)  # above _wait_idle's deadlines: those report a hang first
def test_train_comparison_runs_both_and_stop_works(app_home):
    from hotdog.runs import RunStore

    at = new_app()
    at.switch_page("pages/train.py").run()
    _tiny_knobs(at)
    at.button(key="btn_compare").click().run()
    assert_clean(at)
    assert any("1 more run" in c.value for c in at.caption), "the queued scratch run is announced"
    # a second tab is told that a job runs and cannot start another
    other = new_app()
    other.switch_page("pages/train.py").run()
    assert other.button(key="btn_finetune").disabled
    assert any("Running" in m.value for m in other.markdown)
    _wait_idle(at)
    runs = RunStore().list()
    assert sorted(r.mode for r in runs) == ["finetune", "scratch"]
    assert all(r.status == "finished" for r in runs)
    assert {r.lr for r in runs} == {0.001, 0.1}  # scratch at its own learning rate
    at.multiselect[0].set_value([r.run_id for r in runs]).run()
    assert_clean(at)

    # stop: a longer run, stopped at once
    at.number_input(key="epochs").set_value(50).run()
    at.button(key="btn_scratch").click().run()
    at.button(key="btn_stop").click().run()
    _wait_idle(at)
    assert any(i.value.startswith("Run stopped") for i in at.info), [i.value for i in at.info]
    assert RunStore().list()[0].status == "stopped"


def test_only_the_session_that_started_a_run_gets_its_stop_button(app_home):
    """Another session sees the run, its progress and when it started, but a plain Stop only
    in the session that started it; stopping someone else's run takes an explicit, labelled click."""
    from hotdog.runs import RunStore

    at = new_app()
    at.switch_page("pages/train.py").run()
    _tiny_knobs(at)
    at.number_input(key="epochs").set_value(50).run()
    at.button(key="btn_finetune").click().run()
    other = new_app()
    other.switch_page("pages/train.py").run()
    assert any("Running" in m.value for m in other.markdown)
    assert not [b for b in other.button if b.key == "btn_stop"], "no plain Stop for another session's run"
    assert any("Started by another browser session" in c.value for c in other.caption)
    assert [b for b in at.button if b.key == "btn_stop"], "the owner has its Stop"
    other.button(key="btn_stop_other").click().run()  # the labelled, confirmed stop
    _wait_idle(at)
    assert RunStore().list()[0].status == "stopped"


def test_server_config_keeps_xsrf_on_uploads_small_stats_off_and_no_legacy_page_list():
    import tomllib

    cfg = tomllib.loads((Path(APP).parent / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["enableXsrfProtection"] is True
    assert cfg["server"]["maxUploadSize"] <= 25
    assert cfg["browser"]["gatherUsageStats"] is False
    # Streamlit's legacy pages/ mode never lists the folder's files (ui.py hands the sidebar
    # navigation to the router; tests/test_browser.py opens /data first on a fresh server).
    assert cfg["client"]["showSidebarNavigation"] is False


def test_pages_folder_holds_only_pages_and_no_page_imports_another():
    import ast

    pages = sorted(p.name for p in (Path(APP).parent / "pages").iterdir() if p.suffix == ".py")
    assert pages == ["data.py", "experiments.py", "home.py", "predict.py", "train.py", "weights.py"]
    for name in pages:
        tree = ast.parse((Path(APP).parent / "pages" / name).read_text())
        imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in imported if m == "pages" or m.startswith("pages.")}, name


def test_download_offline_is_a_clear_message_and_success_selects_the_set(app_home, monkeypatch):
    from hotdog import data
    from hotdog.errors import DownloadError

    def offline(**kwargs):
        kwargs["progress"](0, None)
        raise DownloadError("cannot reach d2l-data.s3-accelerate.amazonaws.com: you seem to be offline")

    monkeypatch.setattr(data, "download_hotdog", offline)
    at = new_app()
    at.switch_page("pages/data.py").run()
    at.button(key="download").click().run()
    assert_clean(at)
    assert "offline" in at.error[0].value
    assert any("local folder" in i.value for i in at.info)

    def fake_download(**kwargs):
        kwargs["progress"](50, 100)
        kwargs["progress"](100, 100)
        return make_dataset(app_home / "data" / "hotdog")

    monkeypatch.setattr(data, "download_hotdog", fake_download)
    at.button(key="download").click().run()
    assert_clean(at)
    assert not at.error
    assert at.session_state["data_root"] == str(app_home / "data" / "hotdog")


def test_app_mxnet_work_runs_on_the_engine_thread(app_home, monkeypatch, tmp_path):
    """Streamlit reruns in fresh threads; MXNet keeps native memory per thread it ever ran on."""
    import threading

    from hotdog import data, models

    seen = []

    def spy(fn):
        def wrapper(*a, **k):
            seen.append((fn.__name__, threading.current_thread().name))
            return fn(*a, **k)
        return wrapper

    monkeypatch.setattr(models, "imagenet_topk", spy(models.imagenet_topk))
    monkeypatch.setattr(models, "class_weights", spy(models.class_weights))
    monkeypatch.setattr(data, "train_transform", spy(data.train_transform))
    at = new_app()
    at.switch_page("pages/data.py").run()
    at.select_slider(key="aug_size").set_value(96).run()  # uncached views
    at.switch_page("pages/weights.py").run()
    at.text_input(key="weights_class").set_value("pretzel").run()  # uncached row
    at.switch_page("pages/predict.py").run()
    at.radio(key="predict_kind").set_value("Pretrained ImageNet classifier").run()
    at.file_uploader(key="photos").set_value(("a.png", png_bytes((10, 10, 10)), "image/png")).run()
    assert_clean(at)
    assert {name for name, _ in seen} == {"imagenet_topk", "class_weights", "train_transform"}
    assert all(thread.startswith("hotdog-mx") for _, thread in seen), seen


def test_predict_camera_toggle_and_zero_shot_note(app_home):
    at = new_app()
    at.switch_page("pages/predict.py").run()
    assert not at.get("camera_input")
    at.toggle(key="use_camera").set_value(True).run()
    assert_clean(at)
    assert at.get("camera_input"), "the camera widget appears on demand (it asks for permission)"
    at.radio(key="predict_kind").set_value("Zero-shot ImageNet 'hotdog' head").run()
    assert_clean(at)
    note = " ".join(c.value for c in at.caption)
    assert "row 934" in note and "everything but row 934" in note


def test_a_page_bug_is_one_message_not_a_traceback(app_home, monkeypatch):
    from hotdog.runs import RunStore

    def broken(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(RunStore, "list", broken)
    at = new_app()  # Home lists runs
    assert not at.exception
    assert any("unexpected error" in e.value for e in at.error)
    assert not any("disk on fire" in e.value for e in at.error)
    assert at.sidebar.selectbox(key="sidebar_data_pick").value, "the rest still renders"


def _hostile_photos() -> list[tuple[str, bytes, str]]:
    """Every odd kind of photo a public demo gets (issue 7 item 1), generated here."""
    import struct
    import zlib

    def save(im, fmt, **kw):
        buf = io.BytesIO()
        im.save(buf, format=fmt, **kw)
        return buf.getvalue()

    png = save(Image.new("RGB", (8, 8), (200, 60, 40)), "PNG")
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    bomb = png[:8] + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + png[33:]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    pal = Image.new("P", (40, 30), 1)
    pal.putpalette([255, 255, 255, 200, 60, 40] + [0] * 762)
    rgba = Image.new("RGBA", (40, 30), (200, 60, 40, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 20, 30))
    return [
        ("empty.jpg", b"", "image/jpeg"),
        ("page.jpg", b"<html><body>not a photo</body></html>", "image/jpeg"),
        ("truncated.jpg", save(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")[:300], "image/jpeg"),
        ("bomb.png", bomb, "image/png"),
        ("gray16.png", save(Image.new("I;16", (40, 30), 30000), "PNG"), "image/png"),
        ("cmyk.jpg", save(Image.new("CMYK", (40, 30), (0, 200, 200, 0)), "JPEG"), "image/jpeg"),
        ("palette.png", save(pal, "PNG", transparency=0), "image/png"),
        ("rgba.png", save(rgba, "PNG"), "image/png"),
        ("anim.gif", _gif(), "image/gif"),
        ("photo.webp", save(Image.new("RGB", (40, 30), (200, 60, 40)), "WEBP"), "image/webp"),
        ("gray.jpg", save(Image.new("L", (40, 30), 128), "JPEG"), "image/jpeg"),
        ("rotated.jpg", save(Image.new("RGB", (40, 20), (200, 60, 40)), "JPEG", exif=exif), "image/jpeg"),
        ("dot.png", save(Image.new("RGB", (1, 1), (200, 60, 40)), "PNG"), "image/png"),
        ("strip.png", save(Image.new("RGB", (8000, 20), (200, 60, 40)), "PNG"), "image/png"),
        ("photo.heic", b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64, "image/heic"),
        ("noise.bin", bytes(range(256)) * 16, "application/octet-stream"),
    ]


def test_predict_page_survives_every_hostile_photo_in_one_upload(app_home):
    files = _hostile_photos()
    at = new_app()
    at.switch_page("pages/predict.py").run()
    at.radio(key="predict_kind").set_value("Pretrained ImageNet classifier").run()
    at.file_uploader(key="photos").set_value(files).run()
    assert_clean(at)
    names = [t for t in texts(at) if t in {n for n, _, _ in files}]
    assert names == [n for n, _, _ in files], "every file gets its own card, in order"
    predicted = sum(t.startswith("→ ") for t in texts(at))
    assert predicted + len(at.error) == len(files)
    assert len(at.error) >= 6  # empty, html, truncated, bomb, heic, noise at least
    assert predicted >= 9  # the odd-but-valid images are still classified
    # and the page still works afterwards
    at.file_uploader(key="photos").set_value(("ok.png", png_bytes(), "image/png")).run()
    assert_clean(at)
    assert not at.error and sum(t.startswith("→ ") for t in texts(at)) == 1


def test_presets_are_one_click_away_and_come_from_the_settings_table(app_home):
    from hotdog import settings

    knobs = ("lr", "lr_mult", "wd", "batch_size", "epochs")

    def shown():
        values = {k: _widget(at, k).value for k in knobs}
        values.update(bn_mode=at.radio(key="bn_mode").value,
                      init_output_from_imagenet=at.checkbox(key="init_output_from_imagenet").value,
                      lr_scratch=at.select_slider(key="lr_scratch").value)
        return values

    def preset(name):
        values = settings.preset_values(name, "finetune", "efficientnet_lite0")
        return {**{k: values[k] for k in knobs + ("bn_mode", "init_output_from_imagenet")},
                "lr_scratch": settings.preset_values(name, "scratch")["lr"]}

    at = new_app()
    at.switch_page("pages/train.py").run()
    assert shown() == preset(settings.default_preset())  # the CLI's default on this machine
    assert [b.label for b in at.button if b.key.startswith("preset_")] == [
        settings.PRESET_TITLES[p] for p in settings.PRESETS]
    at.button(key="preset_chapter").click().run()
    assert_clean(at)
    assert shown() == preset("chapter")
    at.button(key="preset_stable").click().run()
    assert shown() == preset("stable")
    assert at.checkbox(key="freeze").value is False
    at.button(key="preset_quick").click().run()
    assert shown() == preset("quick") and at.checkbox(key="freeze").value is True


def _widget(at: AppTest, key: str):
    for kind in ("select_slider", "number_input"):
        found = [w for w in at.get(kind) if w.key == key]
        if found:
            return found[0]
    raise KeyError(key)


def test_sidebar_labels_help_and_bounds_come_from_the_settings_table(app_home):
    from hotdog import settings

    at = new_app()
    at.switch_page("pages/train.py").run()
    for name in ("lr_mult", "epochs", "seed", "warmup_epochs", "augment_views", "micro_batch"):
        knob, w = settings.KNOBS[name], at.number_input(key=name)
        assert (w.label, w.min, w.max) == (knob.label, knob.lo, knob.hi)
        assert w.help.startswith(knob.help[:1].upper() + knob.help[1:])
    for name in ("batch_size", "wd", "input_size"):
        knob, w = settings.KNOBS[name], at.select_slider(key=name)
        assert w.label == knob.label and all(knob.lo <= o <= knob.hi for o in map(float, w.options))
    for name in ("freeze", "init_output_from_imagenet", "feature_cache"):
        assert at.checkbox(key=name).label == settings.KNOBS[name].label
    assert at.radio(key="bn_mode").options == list(settings.BN_MODES)
    assert at.select_slider(key="lr").label.startswith(settings.KNOBS["lr"].label)
    assert "Presets: quick 0.001" in at.select_slider(key="lr").help and "stable 0.001" in at.select_slider(key="lr").help


def test_switching_source_moves_preset_knobs_left_at_the_preset(app_home):
    from hotdog import settings

    at = new_app()
    at.switch_page("pages/train.py").run()
    at.number_input(key="epochs").set_value(2).run()  # changed by hand: stays
    at.selectbox(key="source_select").set_value("resnet18_v2").run()
    assert_clean(at)
    assert at.select_slider(key="lr").value == settings.preset_values("stable", "finetune", "resnet18_v2")["lr"]
    assert at.number_input(key="epochs").value == 2


def test_default_sidebar_finetune_trains_exactly_what_the_cli_trains(app_home):
    """The Fine-tune button with the untouched sidebar == `python -m hotdog train --data ROOT`."""
    import json

    from hotdog.cli import build_parser
    from hotdog.commands.train import _config_from_args
    from hotdog.jobs import job_manager
    from hotdog.runs import RunStore
    from hotdog.train import prepare

    from hotdog.cli import main

    at = new_app()
    at.switch_page("pages/train.py").run()
    root = at.session_state["data_root"]
    at.button(key="btn_finetune").click().run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    run_id = job_manager().current().run_ids[0]
    started = json.loads((RunStore().run_dir(run_id) / "config.json").read_text())
    cli = prepare(_config_from_args(build_parser().parse_args(["train", "--data", root])))
    assert started == cli.record()  # every resolved knob and the data fingerprint
    # ... and so the same numbers: the whole default run (5 epochs at 224 px on 16 tiny photos)
    _wait_idle(at)
    app_epochs = [m["test_acc"] for m in RunStore().load(run_id).metrics]
    assert main(["train", "--data", root, "--json"]) == 0
    cli_run = next(r for r in RunStore().list() if r.run_id != run_id)
    assert [m["test_acc"] for m in RunStore().load(cli_run.run_id).metrics] == app_epochs
    assert len(app_epochs) == 5


def test_predict_request_over_the_photo_budget_is_one_message(app_home):
    from hotdog.data import MAX_PHOTOS_PER_REQUEST

    at = new_app()
    at.switch_page("pages/predict.py").run()
    at.radio(key="predict_kind").set_value("Pretrained ImageNet classifier").run()
    # Distinct photos: identical uploads are classified once (ui.unique_photos).
    at.file_uploader(key="photos").set_value(
        [(f"p{i}.png", png_bytes(color=(i % 256, i // 256, 40)), "image/png")
         for i in range(MAX_PHOTOS_PER_REQUEST + 1)]).run()
    assert_clean(at)
    assert len(at.error) == 1 and str(MAX_PHOTOS_PER_REQUEST) in at.error[0].value


def test_a_bug_inside_an_auto_refreshing_fragment_is_one_message():
    """Fragment reruns skip the router's guard, so ui.fragment guards its own body."""
    def script(repo):
        import sys

        sys.path.insert(0, repo)
        import streamlit as st

        import ui

        @ui.fragment(run_every=None)
        def live():
            raise RuntimeError("/srv/secret/path exploded")

        live()
        st.write("the page goes on")

    at = AppTest.from_function(script, args=(REPO,), default_timeout=60)
    at.run()
    assert not at.exception
    assert [e.value for e in at.error if "unexpected error" in e.value]
    assert not [e.value for e in at.error if "secret" in e.value]
    assert "the page goes on" in [m.value for m in at.markdown]


# ------------------------------------------------------------------ explain and export

def _tiny_finished_run(home: Path, epochs: int = 1) -> Path:
    from hotdog.settings import TrainConfig
    from hotdog.train import train

    res = train(TrainConfig(str(home / "data" / "tiny"), input_size=32, batch_size=8, epochs=epochs))
    assert res.status == "finished"
    return Path(res.run_dir)


def _heat_captions(at: AppTest) -> list[str]:
    shown = [c.value.replace("\\", "") for c in at.caption]  # captions are markdown-escaped
    return [c for c in shown if c.startswith("heatmap: ")]


def test_predict_heatmap_toggle_shows_a_heatmap_beside_each_good_photo(app_home, tmp_path):
    good = make_image(tmp_path / "dog.png", (200, 60, 40), size=(64, 48)).read_bytes()
    at = new_app()
    at.switch_page("pages/predict.py").run()
    at.radio(key="predict_kind").set_value("Pretrained ImageNet classifier").run()
    at.file_uploader(key="photos").set_value([("a.png", good, "image/png"), ("b.jpg", b"nope", "image/jpeg"),
                                              ("c.png", png_bytes(), "image/png")]).run()
    assert_clean(at)
    photos = len(at.get("image"))
    assert not _heat_captions(at) and at.toggle(key="show_heatmaps").value is False
    at.toggle(key="show_heatmaps").set_value(True).run()
    assert_clean(at)
    assert len(_heat_captions(at)) == 2 and len(at.get("image")) == photos + 2  # one beside each good photo
    assert len(at.error) == 1  # the bad file keeps its own error
    at.radio(key="predict_kind").set_value("Zero-shot ImageNet 'hotdog' head").run()
    assert_clean(at)
    assert sorted(_heat_captions(at)) in (sorted(f"heatmap: {c}" for c in pair) for pair in
                                          (("hotdog", "hotdog"), ("hotdog", "not-hotdog"), ("not-hotdog", "not-hotdog")))
    _tiny_finished_run(app_home)
    at.radio(key="predict_kind").set_value("A finished training run").run()
    assert_clean(at)
    assert len(_heat_captions(at)) == 2
    at.toggle(key="show_heatmaps").set_value(False).run()
    assert not _heat_captions(at) and len(at.get("image")) == photos


def test_train_page_exports_a_run_as_a_zip_download_and_shows_gallery_heatmaps(app_home, monkeypatch):
    import json
    import zipfile

    import streamlit as st

    from hotdog.predict import evaluate

    served = {}
    real = st.download_button

    def spy(label, data, *a, **k):  # keep what a click would fetch
        served[label] = data
        return real(label, data, *a, **k)

    monkeypatch.setattr(st, "download_button", spy)
    run_dir = _tiny_finished_run(app_home)
    # a blue photo filed under hotdog: misclassified, so the gallery has something to explain
    make_image(app_home / "data" / "tiny" / "test" / "hotdog" / "zz-blue.png", (40, 90, 200), seed=99)
    at = new_app()
    at.switch_page("pages/train.py").run()
    assert_clean(at)
    assert "Download the ONNX export" in {b.proto.label for b in at.get("download_button")}
    at.radio(key="export_format").set_value("mxnet").run()
    proto = {b.proto.label: b.proto for b in at.get("download_button")}["Download the MXNet export"]
    assert proto.deferred_file_id  # exported only when clicked
    data = served["Download the MXNet export"]()
    z = zipfile.ZipFile(io.BytesIO(data))
    assert sorted(z.namelist()) == ["model-0000.params", "model-symbol.json", "preprocess.json"]
    assert json.loads(z.read("preprocess.json"))["classes"] == ["hotdog", "not-hotdog"]
    onnx_zip = zipfile.ZipFile(io.BytesIO(served["Download the ONNX export"]()))
    assert sorted(onnx_zip.namelist()) == ["model.onnx", "preprocess.json"]
    # the gallery: a heatmap per misclassified photo, for the class the run wrongly chose
    wrong = evaluate(run_dir, app_home / "data" / "tiny" / "test").misclassified
    captions = [c.value.replace("\\", "") for c in at.caption]
    assert wrong and len([c for c in captions if c.startswith("where it saw")]) == min(len(wrong), 16)
    if wrong:
        at.toggle(key="gallery_heatmaps").set_value(False).run()
        assert not [c for c in at.caption if c.value.replace("\\", "").startswith("where it saw")]


def test_weights_page_shows_what_drives_the_hotdog_score_for_a_photo(app_home):
    at = new_app()
    at.switch_page("pages/weights.py").run()
    charts = len(at.get("vega_lite_chart"))
    samples = at.selectbox(key="weights_sample").options
    assert len(samples) > 1
    at.selectbox(key="weights_sample").set_value(at.selectbox(key="weights_sample").options[1]).run()
    assert_clean(at)
    assert len(at.get("vega_lite_chart")) == charts + 1
    metrics = {m.label: m.value for m in at.metric}
    assert "Score" in metrics and "Bias" in metrics


@pytest.mark.timeout(1800)
def test_experiments_page_runs_a_custom_sweep_and_shows_its_results(app_home):
    from hotdog import sweeps
    from hotdog.jobs import job_manager

    at = new_app()
    at.switch_page("pages/experiments.py").run()
    assert_clean(at)
    shown = " ".join(m.value for m in at.markdown)
    assert all(ex["title"] in shown for ex in sweeps.EXERCISES.values())
    assert any("No sweeps yet" in c.value for c in at.caption)
    at.number_input(key="exp_epochs").set_value(1)
    at.select_slider(key="exp_input_size").set_value(32)
    at.text_input(key="exp_grid_lr").set_value("1e-3,1e6")
    at.run()
    at.button(key="exp_run_custom").click().run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    if job_manager().wait(600).running:
        pytest.fail("the sweep did not finish in time")
    at.run()
    assert_clean(at)
    table = at.dataframe[0].value
    assert len(table) == 2 and set(table["status"]) <= {"finished", "diverged"} and "finished" in set(table["status"])
    assert list(table["lr"])[0] in (1e-3, 1e6)  # sorted by accuracy, best first
    assert any("2/2 points done" in m.value for m in at.markdown)
    assert any("best test accuracy" in m.value.replace("\\", "") for m in at.markdown)  # a computed finding
    assert len(at.get("vega_lite_chart")) >= 2  # accuracy vs lr, overlaid curves
    # a bad grid is one sentence, nothing starts
    at.text_input(key="exp_grid_lr").set_value("fast").run()
    at.button(key="exp_run_custom").click().run()
    assert_clean(at)
    assert [e.value for e in at.error if "number" in e.value]
    assert not job_manager().is_running()


def test_train_page_finds_a_learning_rate_and_uses_it(app_home):
    at = new_app()
    at.switch_page("pages/train.py").run()
    _tiny_knobs(at)
    at.button(key="btn_lr_find").click().run()
    found = at.session_state["lr_find"]  # the finder ran on the engine's thread, its curve is kept
    assert_clean(at)
    assert found["suggested_lr"] and len(found["lrs"]) == len(found["losses"]) >= 5
    use = [b for b in at.button if b.key == "btn_use_lr"][0]
    use.click().run()
    assert_clean(at)
    assert at.session_state["lr"] == float(f"{found['suggested_lr']:.2g}")
    assert at.select_slider(key="lr").value == at.session_state["lr"]
