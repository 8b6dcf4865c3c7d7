"""The interface language (English, Tiếng Việt): ``t("English text", **fmt)`` and the sidebar switch.

Gettext-style: the English text written in the UI code is the key, the Vietnamese catalog is
``locales/vi.json`` (its glossary, taken from the chapter's Vietnamese translation, comes first).
A key missing from the catalog shows its English text, so a string added later never breaks a
page, and is recorded in :data:`MISSING`, so ``tests/test_i18n.py`` renders the pages in
Vietnamese and fails listing it. Format strings keep their placeholders in both languages:
``t("Epoch {n}", n=3)``.

What goes through ``t`` (the rule the test enforces):

* UI text: every literal a person reads that is written in ``streamlit_app.py``, ``pages/`` or
  ``ui.py`` (titles, labels, help, captions, messages, chart titles, table headers), and the words
  the UI takes from ``hotdog/`` tables to label its widgets: ``settings.KNOBS`` labels and help,
  ``settings.PRESET_TITLES``/``PRESET_HELP``, ``sweeps.EXERCISES`` titles and questions
  (:func:`knob_label`, :func:`knob_help`, ...). ``hotdog/`` itself never imports this module.
* Engine sentences stay English: text computed in ``hotdog/`` (``HotdogError`` messages, sweep
  findings, memory estimates, data set reports). A page shows one through :func:`engine` (errors
  through ``ui.show_error``/``ui.or_error``, whose ``st.error`` the test skips), which marks it
  as deliberately English; the page may frame it with translated words.
* Data is never translated: names of data sets, classes, files, runs, source models; numbers.
  A path or name shown on its own goes through :func:`verbatim` (marked like an engine sentence).

The language is remembered on disk (``hotdog.prefs``, like the data set), so a reload, a new tab
or a restart keeps it; each browser session reads it once and the switch writes it.
"""

from __future__ import annotations

import json
import logging
import string
from pathlib import Path

import streamlit as st

from hotdog import prefs
from hotdog.errors import HotdogError

log = logging.getLogger(__name__)

LANGUAGES = {"en": "English", "vi": "Tiếng Việt"}
DEFAULT = "en"
SESSION_KEY = "language"  # this session's language (plain state, read once from prefs)
SWITCH_KEY = "language_select"
LOCALES = Path(__file__).resolve().parent / "locales"

# Process-wide records. MISSING: English keys shown without a translation (bounded by the keys
# in the code; each is logged once). SHOWN: every text known to be deliberately what it is
# (translated, or an engine sentence), so the test can tell hard-coded English from both; it
# holds formatted texts, so it is only kept while a test records (never in a long-lived server).
MISSING: set[str] = set()
SHOWN: set[str] = set()
_recording = False


def reset_record() -> None:
    """Start recording what pages show (tests): both records emptied."""
    global _recording
    _recording = True
    MISSING.clear()
    SHOWN.clear()


def _missing(text: str) -> None:
    if text not in MISSING:
        MISSING.add(text)
        log.info("no %s translation for %r", language(), text)


def _shown(text: str) -> None:
    if _recording:
        SHOWN.add(text)


_catalogs: dict[str, tuple[float, dict]] = {}


def catalog_file(lang: str) -> Path:
    return LOCALES / f"{lang}.json"


def load_catalog(lang: str) -> dict:
    """The whole catalog file of ``lang`` ({"glossary": [...], "messages": {...}}); {} for English."""
    if lang == DEFAULT:
        return {}
    path = catalog_file(lang)
    try:
        stamp = path.stat().st_mtime
    except OSError:
        return {}
    cached = _catalogs.get(lang)
    if cached and cached[0] == stamp:
        return cached[1]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # a broken catalog shows English, never an error page
        log.warning("ignoring unreadable %s: %s", path, err)
        data = {}
    _catalogs[lang] = (stamp, data)
    return data


def messages(lang: str) -> dict[str, str]:
    return load_catalog(lang).get("messages") or {}


def placeholders(text: str) -> set[str]:
    """The ``{names}`` of a format string."""
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def _in_session() -> bool:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    return get_script_run_ctx(suppress_warning=True) is not None


def language() -> str:
    """This session's language: chosen with the switch, else remembered on disk, else English."""
    if not _in_session():  # unit tests of ui helpers, CLI imports: the keys themselves
        return DEFAULT
    lang = st.session_state.get(SESSION_KEY)
    if lang not in LANGUAGES:
        lang = prefs.get("language", DEFAULT)
        lang = lang if lang in LANGUAGES else DEFAULT
        st.session_state[SESSION_KEY] = lang
    return lang


def t(text: str, /, **fmt) -> str:
    """``text`` in the session's language, formatted with ``fmt``; English (recorded as missing)
    when the catalog has no translation."""
    lang = language()
    found = messages(lang).get(text) if lang != DEFAULT else None
    if lang != DEFAULT and not found:
        _missing(text)
    out = found or text
    if fmt:
        try:
            out = out.format(**fmt)
        except (KeyError, IndexError, ValueError):  # a translation that lost a placeholder
            _missing(text)
            found, out = None, text.format(**fmt)
    if found:
        _shown(out)
    return out


def engine(text) -> str:
    """An engine sentence shown as it is (English by the rule above), marked as deliberate."""
    text = str(text)
    _shown(text)
    return text


def verbatim(text) -> str:
    """Data shown as it is (a folder path, a file name): never translated, marked like :func:`engine`."""
    return engine(text)


def tr(text: str) -> str:
    """``t`` for a ``format_func``/table value that may be any object: strings are translated."""
    return t(text) if isinstance(text, str) else text


def knob_label(name: str) -> str:
    from hotdog import settings

    return t(settings.KNOBS[name].label)


def knob_help(name: str) -> str:
    from hotdog import settings

    return t(settings.KNOBS[name].help)


def preset_title(preset: str) -> str:
    from hotdog import settings

    return t(settings.PRESET_TITLES.get(preset, preset))


def preset_help(preset: str) -> str:
    from hotdog import settings

    return t(settings.PRESET_HELP.get(preset, ""))


def set_language(lang: str) -> None:
    """Use ``lang`` in this session and remember it on disk (a busy or read-only HOTDOG_HOME
    keeps it for this session only, with a note in the log)."""
    if lang not in LANGUAGES:
        raise ValueError(f"unknown language {lang!r}; known: {', '.join(LANGUAGES)}")
    st.session_state[SESSION_KEY] = lang
    try:
        prefs.save("language", lang)
    except (HotdogError, OSError) as err:
        log.warning("language %s kept for this session only: %s", lang, err)


def language_switch(container=None, key: str = SWITCH_KEY) -> str:
    """The sidebar's language picker; its label is in both languages so either reader finds it."""
    container = container or st.sidebar
    current = language()
    if st.session_state.get(key) != current:  # re-seed: the widget forgets across page switches
        st.session_state[key] = current
    container.radio("Language · Ngôn ngữ", list(LANGUAGES), format_func=LANGUAGES.get, key=key,
                    horizontal=True, on_change=lambda: set_language(st.session_state[key]))
    return language()
