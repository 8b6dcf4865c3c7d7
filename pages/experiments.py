"""Experiments: the chapter's exercises as one-click sweeps, a custom grid, and their results."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from hotdog import settings, sweeps
from hotdog.errors import HotdogError
from i18n import engine, t, tr
import i18n
import ui

S = "session"
SIZES = (32, 64, 96, 128, 160, 192, 224)

st.title(t("Experiments"))
st.caption(t("The chapter ends with exercises that are experiments. Each button runs one as a sweep: a list of "
             "ordinary training runs (one per point of the grid, in the background job, one after the other). "
             "Stop keeps the finished points; *Resume* runs only the rest."))
source = ui.source_select()
root = ui.current_dataset()
if not root:
    st.info(t("Choose a data set on the Data page first."), icon=":material/info:")

with st.sidebar:
    st.caption(t("EVERY POINT"))
    preset = st.radio(t("Preset"), settings.PRESETS, format_func=i18n.preset_title, horizontal=True,
                      key="exp_preset", persist_state=S, help=" ".join(map(i18n.preset_help, settings.PRESETS)))
    epochs = st.number_input(i18n.knob_label("epochs"), 1, 100, 5, key="exp_epochs", persist_state=S)
    input_size = st.select_slider(i18n.knob_label("input_size"), SIZES, value=224, key="exp_input_size",
                                  persist_state=S, help=t("Smaller images train much faster (128 px: about 3x)."))
    seeds = st.number_input(t("Seeds per point"), 1, sweeps.MAX_SEEDS, 1, key="exp_seeds", persist_state=S,
                            help=t("Repeat every point with this many seeds: error bars show the spread."))


def make_spec(grid: dict, title: str) -> sweeps.SweepSpec:
    return sweeps.SweepSpec(root, grid, seeds=int(seeds), source=source, preset=preset,
                            base={"epochs": int(epochs), "input_size": int(input_size)}, title=title)


def start(grid: dict, title: str) -> None:
    try:
        st.session_state["exp_sweep"] = ui.start_sweep(make_spec(grid, title))
    except HotdogError as err:
        st.session_state["exp_error"] = str(err)
    else:
        st.session_state.pop("exp_error", None)


def custom_grid() -> dict:
    """The custom grid's text fields, parsed by the sweep engine (its errors are sentences)."""
    specs = [f"{k}={st.session_state.get(f'exp_grid_{k}', '')}" for k in ("lr", "mode", "freeze", "lr_mult")
             if str(st.session_state.get(f"exp_grid_{k}", "")).strip()]
    return sweeps.parse_grid(specs)


def start_custom() -> None:
    try:
        grid = custom_grid()
    except HotdogError as err:
        st.session_state["exp_error"] = str(err)
        return
    start(grid, "Custom grid")  # a record title, kept in English like run names


busy = ui.job_snapshot() is not None
cols = st.columns(len(sweeps.EXERCISES))
for col, (key, ex) in zip(cols, sweeps.EXERCISES.items()):
    with col.container(border=True):
        n = len(ui.or_error(sweeps.expand, make_spec(ex["grid"], ex["title"])) or []) if root else 0
        st.markdown(f"**{t(ex['title'])}**")
        st.caption(t("{question} ({n} runs)", question=t(ex["question"]), n=n))
        st.button(t("Run"), key=f"exp_run_{key}", icon=":material/play_arrow:", type="primary", width="stretch",
                  disabled=busy or not root, on_click=start, args=(ex["grid"], ex["title"]))

with st.expander(t("Custom grid")):
    c1, c2 = st.columns(2)
    c1.text_input(t("Learning rates"), "1e-3,1e-2", key="exp_grid_lr", persist_state=S,
                  help=t("Comma-separated, e.g. 1e-4,1e-3,1e-2"))
    c2.text_input(t("Modes"), "finetune", key="exp_grid_mode", persist_state=S,
                  help=t("finetune (fine-tuning), scratch (training from scratch)"))
    c1.text_input(t("Freeze the features"), "", key="exp_grid_freeze", persist_state=S,
                  help=t("e.g. 0,1 (empty: no)"))
    c2.text_input(i18n.knob_label("lr_mult"), "", key="exp_grid_lr_mult", persist_state=S,
                  help=t("e.g. 1,10 (empty: the preset's)"))
    st.button(t("Run the custom grid"), key="exp_run_custom", icon=":material/tune:", disabled=busy or not root,
              on_click=start_custom)
if st.session_state.get("exp_error"):
    st.error(ui.md_escape(st.session_state["exp_error"]), icon=":material/error:")


def live_body(snap: dict) -> None:
    sweep = snap.get("sweep")
    if sweep:
        st.progress(min(max(sweep["fraction"], 0.0), 1.0), text=sweep["text"])
    elif snap.get("progress") is not None:
        st.progress(ui.progress_fraction(snap["progress"]), text=ui.progress_text(snap["progress"]))


ui.live_panel("exp_job_was_running", "exp_stop", live_body)

# ------------------------------------------------------------------ results
def results() -> None:
    records = sweeps.list_sweeps()
    if not records:
        st.caption(t("No sweeps yet."))
        return
    st.subheader(t("Results"))
    labels = {r["sweep_id"]: t("{title} · {sweep_id} · {n} points", title=t(r["spec"].title or "sweep"),
                               sweep_id=r["sweep_id"], n=r["points"]) for r in records}
    ids = list(labels)
    wanted = st.session_state.get("exp_sweep")
    chosen = st.selectbox(t("Sweep"), ids, index=ids.index(wanted) if wanted in ids else 0, format_func=labels.get,
                          key=f"exp_pick-{ids[0]}")
    summary = ui.or_error(sweeps.summarize, chosen)
    if summary is None:
        return
    running_this = (snap := ui.job_snapshot()) is not None and (snap.get("sweep") or {}).get("sweep_id") == chosen
    head_l, head_r = st.columns([4, 1], vertical_alignment="center")
    head_l.markdown(t("**{done}/{total} points done**", done=summary["done"], total=summary["total"])
                    + (t(" · best test accuracy (saved model) {acc} (point {point})", acc=f"{summary['best']['accuracy']:.3f}",
                         point=summary["best"]["index"] + 1) if summary["best"] else ""))
    elsewhere = any(p["status"] == "running" for p in summary["points"])  # e.g. `python -m hotdog sweep`
    if not summary["complete"] and not running_this:
        head_r.button(t("Resume"), key="exp_resume", icon=":material/resume:", disabled=busy or elsewhere,
                      width="stretch", on_click=lambda: ui.resume_sweep(chosen),
                      help=t("A point of this sweep is running in another process.") if elsewhere
                      else t("Run only the points not finished yet."))

    for sentence in sweeps.findings(summary):
        st.markdown(f"- {ui.md_escape(engine(sentence))}")

    chart = ui.accuracy_vs_lr_chart(summary)
    if chart is not None:
        st.altair_chart(chart, width="stretch")

    table = ui.sweep_table(summary).sort_values(ui.acc_header(), ascending=False, na_position="last")
    # Headers and the status words are read; setting names (lr, mode, freeze...) stay as typed in the grid.
    table["status"] = table["status"].map(tr)
    table = table.rename(columns={c: t(c) for c in ("point", "status", "seconds", "run")})
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={ui.acc_header(): st.column_config.NumberColumn(format="%.3f", help=ui.acc_help()),
                                "lr": st.column_config.NumberColumn(format="%g"),
                                t("seconds"): st.column_config.NumberColumn(format="%.0f")})

    with_curves = [p for p in summary["points"] if p["epochs"]]
    if with_curves:
        names = {p["run_id"]: t("point {n}: ", n=p["index"] + 1) + ", ".join(
            f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in p["values"].items()) for p in with_curves}
        top = sorted(with_curves, key=lambda p: -(p["accuracy"] or 0))[:3]
        picked = st.multiselect(t("Overlay the curves of"), list(names), default=[p["run_id"] for p in top],
                                format_func=names.get, key=f"exp_curves-{chosen}-{len(with_curves)}")
        frames = [ui.curves_frame(p["epochs"], run=names[p["run_id"]]) for p in with_curves if p["run_id"] in picked]
        if frames:
            df = pd.concat(frames, ignore_index=True)
            st.altair_chart(alt.Chart(df).mark_line(point=True).encode(
                x=alt.X("epoch:Q", title=t("epoch"), axis=alt.Axis(tickMinStep=1, format="d")), y=alt.Y("value:Q", title=None),
                color=alt.Color("run:N", title=None, legend=alt.Legend(orient="bottom", columns=1, labelLimit=400)),
                tooltip=["run", "metric", "epoch", alt.Tooltip("value:Q", format=".3f")],
            ).properties(height=220, width=250).facet(column=alt.Column("metric:N", title=None))
                .resolve_scale(y="independent"), width="content")
            ui.curves_note()
    st.caption(t("Every point is an ordinary run: inspect, predict with or delete it on the Train and Predict pages."))


results()
