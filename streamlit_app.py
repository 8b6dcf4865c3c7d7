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


def app_pages() -> list:
    return [
        st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("pages/data.py", title="Data", icon=":material/photo_library:"),
        st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("pages/experiments.py", title="Experiments", icon=":material/science:"),
        st.Page("pages/predict.py", title="Predict", icon=":material/image_search:"),
        st.Page("pages/weights.py", title="Weights", icon=":material/grid_on:"),
    ]


st.set_page_config(page_title="Hotdog Lab", page_icon=":material/lunch_dining:", layout="wide")

page = st.navigation(app_pages(), position="sidebar")
status_box = st.sidebar.container()
with ui.guarded(f"{page.title} page"):
    page.run()
# Drawn after the page so it reflects what the page just did (new data set, new job).
with status_box:
    ui.sidebar_status(page.title)
