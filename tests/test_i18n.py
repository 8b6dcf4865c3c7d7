"""The interface in Tiếng Việt: the catalog, the sidebar switch, and every translated page rendered
in Vietnamese with nothing left in English (the rule of what is translated is in i18n.py)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import make_dataset

import i18n

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "streamlit_app.py")
CHAPTER = REPO.parent / "shared" / "seed" / "fine-tuning-chapter.md"

# Pages whose every string goes through i18n.t; the render test checks each in every state.
# Add a page here once it is wrapped (phase 2: home, data, train, predict).
TRANSLATED_PAGES = ["pages/home.py", "pages/data.py", "pages/train.py", "pages/predict.py", "pages/weights.py",
                    "pages/experiments.py"]
# Source files whose literal t("...") keys must all be in the catalog (router, shared sidebar too).
TRANSLATED_FILES = ["streamlit_app.py", "ui.py", "ui_robust.py", *TRANSLATED_PAGES]

# English words that never survive a translation (checked only in text that did not come from
# i18n.t or i18n.engine, so Vietnamese words spelled alike cannot collide).
ENGLISH = re.compile(r"(?<![\w-])(the|of|and|is|are|with|from|this|your|not|yet|no|a|an|to|on|in|for|by|at|"
                     r"or|it|be|has|have|was|will|run|runs|choose|click|first|page|data|set|test|train|acc|"
                     r"accuracy|loss|image|images|photo|photos|point|points|running|idle|none|stop|start)(?![\w-])",
                     re.IGNORECASE)


def catalog() -> dict:
    return json.loads((REPO / "locales" / "vi.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------ catalog

def test_glossary_terms_are_the_chapters_own_words():
    if not CHAPTER.is_file():
        pytest.skip(f"the chapter is not at {CHAPTER} (it lives beside the checkout in ../shared/seed)")
    text = CHAPTER.read_text(encoding="utf-8")
    comments = " ".join(re.findall(r"<!--(.*?)-->", text, re.S))
    prose = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    glossary = catalog()["glossary"]
    assert len(glossary) >= 20
    for term in glossary:
        assert term["chapter_en"] in comments, term
        assert term["chapter_vi"] in prose, term
        # the term itself is in the translators' sentence (case aside; some terms list two forms)
        assert any(form.strip().lower() in term["chapter_vi"].lower()
                   for form in re.split(r"[;/]", term["vi"].split(" (")[0])), term
    vi = {g["en"]: g["vi"] for g in glossary}
    assert vi["learning rate"] == "tốc độ học" and vi["output layer"] == "tầng đầu ra"


def test_every_translation_keeps_its_placeholders_and_is_not_empty():
    for key, value in catalog()["messages"].items():
        assert value.strip(), key
        assert i18n.placeholders(value) == i18n.placeholders(key), (key, value)


def test_the_catalog_uses_the_glossary_terms():
    """Where an English message says a glossary term, its translation says the chapter's word."""
    messages = catalog()["messages"]
    terms = {"learning rate": "tốc độ học", "output layer": "tầng đầu ra", "source model": "mô hình gốc",
             "fine-tun": "tinh chỉnh", "from scratch": "từ đầu", "data set": "tập dữ liệu"}
    wrong = [(k, v) for k, v in messages.items() for en, vi in terms.items()
             if en in k.lower() and vi not in v.lower()]
    assert not wrong, wrong


def test_settings_table_words_and_source_titles_are_in_the_catalog():
    """The sidebar labels come from hotdog tables: a knob, preset or exercise added there must be
    translated here too."""
    from hotdog import models, settings, sweeps

    messages = catalog()["messages"]
    words = [w for k in settings.KNOBS.values() for w in (k.label, k.help)]
    words += list(settings.PRESET_TITLES.values()) + list(settings.PRESET_HELP.values())
    words += [w for ex in sweeps.EXERCISES.values() for w in (ex["title"], ex["question"])]
    words += [models.get_spec(s).title for s in models.list_sources()]
    assert not [w for w in words if w not in messages]


def literal_keys(path: Path) -> set[str]:
    keys = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "t"
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            keys.add(node.args[0].value)
    return keys


@pytest.mark.parametrize("name", TRANSLATED_FILES)
def test_every_literal_key_in_the_source_is_translated(name):
    """Also the branches a render does not reach (errors, a running job)."""
    missing = sorted(literal_keys(REPO / name) - set(catalog()["messages"]))
    assert not missing, f"{name}: no Vietnamese for {missing}"


# ------------------------------------------------------------------ t()

def test_t_is_english_outside_a_session_and_formats():
    assert i18n.language() == "en"
    assert i18n.t("Epoch {n}", n=3) == "Epoch 3"
    assert i18n.t("Weights") == "Weights"


def test_a_damaged_catalog_shows_english(tmp_path, monkeypatch):
    (tmp_path / "vi.json").write_text("{not json", encoding="utf-8")
    monkeypatch.setattr(i18n, "LOCALES", tmp_path)
    assert i18n.messages("vi") == {}


# ------------------------------------------------------------------ rendering in Vietnamese

def _vi_home(home: Path, monkeypatch) -> Path:
    from hotdog import prefs

    monkeypatch.setenv("HOTDOG_HOME", str(home))
    monkeypatch.delenv("HOTDOG_DATA", raising=False)
    prefs.save("language", "vi")
    return home


@pytest.fixture(scope="module")
def finished_home(tmp_path_factory) -> Path:
    """A HOTDOG_HOME with the tiny data set and a finished one-point sweep (so one finished
    fine-tuning run too), made once per module: Results, the runs table and the weights table show."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("i18n") / "home"
    mp.setenv("HOTDOG_HOME", str(home))
    try:
        from hotdog import sweeps

        root = make_dataset(home / "data" / "tiny")
        spec = sweeps.SweepSpec(str(root), {"lr": [1e-3]}, title=sweeps.EXERCISES["lr"]["title"],
                                base={"epochs": 1, "input_size": 32, "batch_size": 8})
        sweep_id = sweeps.create(spec)
        sweeps.run(sweep_id)
        assert sweeps.summarize(sweep_id)["complete"]
    finally:
        mp.undo()
    return home


@pytest.fixture(scope="module")
def results_home(tmp_path_factory) -> Path:
    """A HOTDOG_HOME holding the chapter's comparison on the tiny set: a fine-tuning run that kept
    its best epoch (validation split) and a from-scratch run (Train's card, Predict's picker)."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("i18n-results") / "home"
    mp.setenv("HOTDOG_HOME", str(home))
    try:
        from hotdog.settings import TrainConfig
        from hotdog.train import train

        root = make_dataset(home / "data" / "tiny")
        small = {"input_size": 32, "batch_size": 8}
        best = train(TrainConfig(str(root), epochs=2, val_fraction=0.25, **small))
        scratch = train(TrainConfig(str(root), mode="scratch", epochs=1, proxy_eval=False, **small))
        assert best.status == scratch.status == "finished"
        (home / "comparison.json").write_text(json.dumps([best.run_id, scratch.run_id]))
    finally:
        mp.undo()
    return home


class _Jobs:
    """The job manager as the pages see it, holding one fixed JobState (no training runs)."""

    def __init__(self, state):
        self.state = state

    def current(self):
        return self.state


def _job_state(state: str, home: Path):
    """A finished comparison, a run in its start-up steps, or a run stopping after an epoch."""
    from types import SimpleNamespace

    from hotdog.callbacks import BatchProgress, EpochMetrics
    from hotdog.jobs import JobState

    cfg = SimpleNamespace(mode="finetune", source="efficientnet_lite0")
    if state == "compared runs":
        ids = json.loads((home / "comparison.json").read_text())
        return JobState(state="finished", run_id=ids[-1], run_ids=ids, config=SimpleNamespace(mode="scratch"),
                        result=SimpleNamespace(test_acc=0.5), started=1.0, ended=31.0)
    if state == "starting job":
        return JobState(state="running", run_id="20990101-000000-abcdef", config=cfg, started=1.0, pending=1,
                        phases={"load": (1, 1), "decode": (5, 24)},
                        progress=BatchProgress(0, 2, 5, 24, float("nan"), float("nan"), 12.5, float("nan"), "decode"))
    return JobState(state="stopping", run_id="20990101-000000-abcdef", config=cfg, started=1.0,
                    epochs=[EpochMetrics(1, 0.6, 0.7, 0.75, 3.0)],
                    progress=BatchProgress(2, 2, 1, 3, 0.5, 0.75, 12.5, 4.0))


def home_for(state: str, tmp_path: Path, finished_home: Path, results_home: Path | None = None,
             monkeypatch=None) -> Path:
    home = tmp_path / "home"
    if state in ("data set chosen", "starting job", "stopping job"):
        make_dataset(home / "data" / "tiny")
    elif state == "finished run":
        home = finished_home  # read-only for the pages (config.json holds its absolute paths)
    elif state == "compared runs":
        home = results_home
    if state in ("compared runs", "starting job", "stopping job"):
        job = _Jobs(_job_state(state, home))
        monkeypatch.setattr("hotdog.jobs.job_manager", lambda: job)
    return home


def walk(node):
    yield node
    for child in getattr(node, "children", {}).values():
        yield from walk(child)


def shown_texts(at) -> list[str]:
    """What a reader sees as words: bodies, labels, help, options and placeholders of every element.
    ``st.error`` is skipped: it carries engine sentences (English by the rule)."""
    out = []
    for node in walk(getattr(at, "_tree", at)):
        proto = getattr(node, "proto", None)
        if proto is None or getattr(node, "type", "") == "error":
            continue
        for field in ("body", "label", "help", "placeholder", "text"):  # text: a progress bar's
            value = getattr(proto, field, None)
            if isinstance(value, str) and value:
                out.append(value)
        options = getattr(proto, "options", None)
        if options is not None and not isinstance(options, str):
            out.extend(o for o in options if isinstance(o, str))
        expandable = getattr(proto, "expandable", None)
        if expandable is not None and getattr(expandable, "label", ""):
            out.append(expandable.label)
    return out


def _plain(text: str) -> str:
    """Markdown escapes and emphasis off, so a translated text matches what the element holds."""
    return text.replace("\\", "").replace("**", "").replace("*", "")


def untranslated(texts: list[str]) -> list[str]:
    """Texts that still hold English words once every translated or engine text is taken out,
    or that are an English catalog key shown as it is (one-word labels have no telltale words)."""
    known = sorted({_plain(s) for s in i18n.SHOWN if s.strip()}, key=len, reverse=True)
    keys = {_plain(k).strip() for k in catalog()["messages"]}
    left = []
    for text in texts:
        rest = _plain(text)
        for k in known:
            rest = rest.replace(k, " ")
        if ENGLISH.search(rest) or rest.strip() in keys:
            left.append(text)
    return left


def render_vi(page: str) -> AppTest:
    i18n.reset_record()
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    if page != "pages/home.py":
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not [e.value for e in at.error if "unexpected error" in e.value]
    return at


STATES = ["no data set", "data set chosen", "finished run", "compared runs", "starting job", "stopping job"]
# What each state must show, so a state that silently stopped drawing its part fails (Vietnamese
# words of that part, per page; pages not listed show nothing of their own in that state).
EXPECT = {
    ("pages/train.py", "compared runs"): ["Thí nghiệm so sánh:", "epoch tốt nhất", "Ảnh kiểm tra bị phân loại sai",
                                          "Các nguồn khác"],
    ("pages/predict.py", "compared runs"): ["Lượt chạy (tốt nhất trước)", "độ chính xác kiểm tra (mô hình đã lưu)"],
    ("pages/home.py", "compared runs"): ["Các lượt chạy gần nhất"],
    ("pages/train.py", "starting job"): ["Đang chạy", "Đang giải mã ảnh 5/24", "Đang nạp mô hình gốc"],
    ("pages/train.py", "stopping job"): ["Đang dừng", "Sẽ dừng sau batch này", "Epoch 2/2"],
}


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("page", TRANSLATED_PAGES)
def test_page_renders_fully_in_vietnamese(page, state, tmp_path, monkeypatch, finished_home, results_home):
    _vi_home(home_for(state, tmp_path, finished_home, results_home, monkeypatch), monkeypatch)
    at = render_vi(page)
    for words in EXPECT.get((page, state), []):
        assert any(words in x for x in shown_texts(at)), (page, state, words)
    assert at.session_state["language"] == "vi"
    missing = sorted(i18n.MISSING)
    assert not missing, f"{page} ({state}): no Vietnamese for {missing}"
    english = untranslated(shown_texts(at))
    assert not english, f"{page} ({state}): English not passed through i18n.t: {english}"


@pytest.mark.parametrize("state", STATES)
def test_router_sidebar_renders_in_vietnamese(state, tmp_path, monkeypatch, finished_home, results_home):
    """The sidebar every page shares (status, source model, the switch), drawn by the router."""
    _vi_home(home_for(state, tmp_path, finished_home, results_home, monkeypatch), monkeypatch)
    at = render_vi("pages/home.py")
    texts = shown_texts(at.sidebar)
    assert any("Huấn luyện" in x for x in texts)
    assert not i18n.MISSING, sorted(i18n.MISSING)
    english = untranslated(texts)
    assert not english, f"sidebar ({state}): English not passed through i18n.t: {english}"


def test_switch_in_the_sidebar_translates_at_once_and_is_remembered(hotdog_home, monkeypatch):
    from hotdog import prefs

    monkeypatch.delenv("HOTDOG_DATA", raising=False)
    make_dataset(hotdog_home / "data" / "tiny")
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()  # the router's page (AppTest's switch_page runs a page file without the router's sidebar)
    assert "**Training:** idle" in [c.value for c in at.sidebar.caption]
    at.radio(key=i18n.SWITCH_KEY).set_value("vi").run()
    assert not at.exception
    assert "**Huấn luyện:** đang nghỉ" in [c.value for c in at.sidebar.caption]
    assert prefs.get("language") == "vi"
    at.switch_page("pages/weights.py").run()
    assert at.title[0].value == "Trọng số"
    # a reload (a new session) starts in Vietnamese, and switching back is remembered too
    again = AppTest.from_file(APP, default_timeout=300)
    again.run()
    assert again.radio(key=i18n.SWITCH_KEY).value == "vi"
    assert "**Huấn luyện:** đang nghỉ" in [c.value for c in again.sidebar.caption]
    again.radio(key=i18n.SWITCH_KEY).set_value("en").run()
    assert "**Training:** idle" in [c.value for c in again.sidebar.caption] and prefs.get("language") == "en"


def test_a_damaged_or_unknown_language_preference_is_english(hotdog_home, monkeypatch):
    from hotdog import prefs

    monkeypatch.delenv("HOTDOG_DATA", raising=False)
    prefs.prefs_path().parent.mkdir(parents=True, exist_ok=True)
    prefs.prefs_path().write_text('{"language": "klingon"}')
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    assert not at.exception and at.radio(key=i18n.SWITCH_KEY).value == "en"
    assert "**Training:** idle" in [c.value for c in at.sidebar.caption]


def test_the_fallback_is_english_and_recorded(hotdog_home, monkeypatch):
    """A string added without a translation shows English and is listed by the render test."""
    _vi_home(hotdog_home, monkeypatch)
    i18n.reset_record()
    at = AppTest.from_string(
        "from i18n import t\nimport streamlit as st\n"
        "st.title(t('Weights'))\nst.caption(t('A sentence nobody translated, {n} times', n=2))\n",
        default_timeout=60)
    import sys
    monkeypatch.setattr(sys, "path", [str(REPO), *sys.path])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Trọng số"
    assert at.caption[0].value == "A sentence nobody translated, 2 times"
    assert i18n.MISSING == {"A sentence nobody translated, {n} times"}
    assert untranslated([at.caption[0].value]) == [at.caption[0].value]
    assert untranslated([at.title[0].value]) == []



def test_a_preference_that_cannot_be_saved_still_switches_this_session(hotdog_home, monkeypatch):
    from hotdog import prefs

    monkeypatch.delenv("HOTDOG_DATA", raising=False)
    prefs.prefs_path().mkdir(parents=True)  # prefs.json is a folder: every save fails
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.radio(key=i18n.SWITCH_KEY).set_value("vi").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "**Huấn luyện:** đang nghỉ" in [c.value for c in at.sidebar.caption]


def test_a_server_keeps_no_growing_record_of_shown_texts(monkeypatch):
    monkeypatch.setattr(i18n, "_recording", False)
    i18n.SHOWN.clear()
    for n in range(3):
        i18n.engine(f"point {n} finished")
    assert not i18n.SHOWN
