"""Hotdog Lab: the d2l.ai Fine-Tuning chapter as an app.  Run: ``streamlit run streamlit_app.py``.

This file is the router: it holds the page list and the sidebar status shared by every page.
Each page lives in ``pages/`` and is a thin UI over the ``hotdog`` package; the helpers the
pages share are in ``ui.py`` beside this file.

A ``pages/`` folder beside this file also means Streamlit's legacy multipage mode until
``st.navigation`` first runs in the server process: ``.streamlit/config.toml`` keeps that mode
from listing the folder, and ``ui.py`` hands a fresh server's first request (even a bookmark
of /data) over to this router (see ``ui._leave_legacy_pages_mode``).

Environment: ``HOTDOG_HOME`` (where data sets, runs and caches live, default ``~/.hotdog``),
``HOTDOG_DATA`` (a data set folder to select by default).
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# `streamlit run` puts this folder on sys.path, AppTest and other launchers may not.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from hotdog import threads  # noqa: E402

# Before ui (and through it MXNet) is imported: MXNet reads OMP_NUM_THREADS once, at import;
# the training worker inherits the decision (hotdog.threads).
threads.apply("app")

import ui  # noqa: E402
from i18n import t  # noqa: E402
import i18n  # noqa: E402

# (file, English title, icon); the English title names the page in code and logs.
PAGES = (
    ("pages/home.py", "Home", ":material/home:"),
    ("pages/data.py", "Data", ":material/photo_library:"),
    ("pages/train.py", "Train", ":material/model_training:"),
    ("pages/experiments.py", "Experiments", ":material/science:"),
    ("pages/predict.py", "Predict", ":material/image_search:"),
    ("pages/weights.py", "Weights", ":material/grid_on:"),
)


def app_pages() -> list:
    return [st.Page(path, title=t(title), icon=icon, default=path == PAGES[0][0]) for path, title, icon in PAGES]


def english_title(page) -> str:
    """The page's English title (``page.title`` is in the reader's language)."""
    return {Path(path).stem: title for path, title, _ in PAGES}.get(page.url_path or "home", page.title)


st.set_page_config(page_title="Hotdog Lab", page_icon=":material/lunch_dining:", layout="wide")

page = st.navigation(app_pages(), position="sidebar")
status_box = st.sidebar.container()
with ui.guarded(f"{english_title(page)} page"):
    page.run()
# Drawn after the page so it reflects what the page just did (new data set, new job).
with status_box:
    ui.sidebar_status(english_title(page))
    i18n.language_switch(st)
