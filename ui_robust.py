"""Streamlit helpers of the robust fine-tuning section (issue 15): a run's results per source
(test split, out-of-source proxy, other folders), its WiSE-FT accuracy-vs-alpha curve, and
scoring a finished run on another shared folder. The engine work is :mod:`hotdog.robust`;
the files are read through :mod:`hotdog.runs` (validated; a damaged file is a warning, never
a broken page). Pure reshaping first (tests call it without a session), Streamlit below.
"""

from __future__ import annotations

from typing import Sequence

import altair as alt
import pandas as pd
import streamlit as st

import ui
from hotdog.errors import HotdogError
from i18n import engine, t

# Shown through t: t("own test split"), t("out-of-source proxy"), t("other folder")
KIND_TITLES = {"test": "own test split", "proxy": "out-of-source proxy", "folder": "other folder"}


# ------------------------------------------------------------------------------ pure reshaping

def sources_frame(sources: Sequence[dict]) -> pd.DataFrame:
    """One row per source: name, kind, images, accuracy, each class's recall, the alpha used."""
    rows = []
    for s in sources:
        kind = s["kind"]
        row = {"source": s["name"], "kind": t(KIND_TITLES[kind]) if kind in KIND_TITLES else kind, "images": s["n"],
               "accuracy": s["accuracy"]}
        for c, v in s["per_class"].items():
            row[f"{c} recall"] = v["recall"]
        row["model"] = (t("fine-tuned") if s.get("alpha") in (None, 1.0)
                        else t("WiSE-FT alpha {alpha}", alpha=f"{s['alpha']:g}"))
        rows.append(row)
    return pd.DataFrame(rows)


def alpha_frame(wise: dict) -> pd.DataFrame:
    clean, proxy = t("test split (clean)"), t("out-of-source proxy")
    rows = [{"alpha": a, "set": clean, "accuracy": c} for a, c in zip(wise["alphas"], wise["clean"])]
    for a, p in zip(wise["alphas"], wise.get("proxy") or []):
        rows.append({"alpha": a, "set": proxy, "accuracy": p})
    return pd.DataFrame(rows)


def alpha_chart(wise: dict):
    """Accuracy vs WiSE-FT alpha (clean and proxy), the saved model's alpha marked."""
    df = alpha_frame(wise)
    lines = alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("alpha:Q", title=t("alpha (0 = zero-shot ImageNet head, 1 = fine-tuned)"),
                scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("accuracy:Q", title=t("accuracy"), scale=alt.Scale(zero=False)),
        color=alt.Color("set:N", title=None, scale=alt.Scale(range=["#1c7ed6", "#d9480f"])),
        tooltip=["set", alt.Tooltip("alpha:Q", format=".1f"), alt.Tooltip("accuracy:Q", format=".3f")])
    rule = alt.Chart(pd.DataFrame([{"alpha": wise["chosen"], "label": t("saved: alpha {alpha}", alpha=f"{wise['chosen']:g}")}])).encode(
        x="alpha:Q")
    return (lines + rule.mark_rule(strokeDash=[4, 3], color="#495057")
            + rule.mark_text(align="left", dx=4, dy=-6, color="#495057").encode(
                text="label:N", y=alt.value(8))).properties(height=240)


# ------------------------------------------------------------------------------ Streamlit

def evaluate_on_folder(run_dir: str, text: str) -> dict:
    """Score a finished run on a folder the user typed (only inside the shared data folders,
    hotdog.data.resolve_user_folder) and record it in the run."""
    from hotdog import data
    from hotdog.robust import evaluate_folder

    folder = data.resolve_user_folder(text)
    _, entry = evaluate_folder(run_dir, folder, predictor=ui.predictor(run_dir))
    return entry


def robustness_section(run_dir: str, key: str) -> None:
    """A run's results per source, its alpha curve, and 'score on another folder'."""
    from hotdog.runs import read_sources, read_wise

    st.markdown(f"**{t('Other sources')}**")
    sources, warn = read_sources(run_dir)
    wise, wise_warn = read_wise(run_dir)
    for w in (warn, wise_warn):
        if w:
            st.warning(ui.md_escape(engine(w) + "."), icon=":material/warning:")  # starts with a file name: no capital
    if sources:
        frame = sources_frame(sources)
        # Headers in words (t("source"), t("kind"), t("images"), t("accuracy"), t("model")); a class's
        # recall column says its class name (data)
        config = {c: {"label": t(c) if c in ("source", "kind", "images", "accuracy", "model")
                      else t("{name} recall", name=c[:-len(" recall")]) if c.endswith(" recall") else c}
                  for c in frame.columns}
        for c in frame.columns:
            if c == "accuracy" or c.endswith("recall"):
                config[c] = {**st.column_config.NumberColumn(format="%.3f"), **config[c]}
        st.dataframe(frame, hide_index=True, width="stretch", column_config=config)
    else:
        st.caption(t("No results beyond the test split yet (the out-of-source check was off, or the run is older)."))
    if wise and "alphas" in wise:
        st.markdown(t("**WiSE-FT: accuracy vs alpha** (saved model: alpha {alpha})", alpha=f"{wise['chosen']:g}"))
        st.altair_chart(alpha_chart(wise), width="stretch")
        st.caption(t("Weights mixed as (1 - alpha) x zero-shot (source features + ImageNet-row head) + alpha x "
                     "fine-tuned, computed once after training without retraining (Wortsman et al. 2022)."))
    elif wise and wise.get("skipped"):
        # the engine's reason (hotdog.robust), English by i18n's rule
        st.info(ui.md_escape(engine(wise["skipped"][:1].upper() + wise["skipped"][1:] + ".")), icon=":material/info:")
    with st.form(key=f"eval_folder_form-{key}", border=False):
        text = st.text_input(t("Score this run on another folder"), key=f"eval_folder-{key}",
                             placeholder=t("a folder in the shared data folders, one sub-folder per class"),
                             help=t("Only folders inside the data folders this server shares (its data folder, "
                                    "HOTDOG_DATA, HOTDOG_DATA_ROOTS). The result is kept with the run."))
        go = st.form_submit_button(t("Add this folder"), icon=":material/add:")
    if go:
        try:
            entry = evaluate_on_folder(run_dir, text)
        except HotdogError as err:
            ui.show_error(err)
        else:
            st.session_state[f"eval_folder_done-{key}"] = t("{name}: accuracy {acc} on {n} photos", name=entry['name'],
                                                            acc=f"{entry['accuracy']:.3f}", n=entry['n'])
            st.rerun()
    done = st.session_state.get(f"eval_folder_done-{key}")
    if done:
        st.success(ui.md_escape(done), icon=":material/check_circle:")


def folder_list(text: str) -> list[str] | None:
    """The extra test folders typed one per line, each resolved inside the shared data
    folders (AccessError / DatasetError as a sentence otherwise); None when empty."""
    from hotdog import data

    folders = [str(data.resolve_user_folder(line)) for line in text.splitlines() if line.strip()]
    return folders or None
