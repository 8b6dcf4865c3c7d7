"""Train: the chapter's fine-tuning vs training from scratch, live, in a background job."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from hotdog import app_support as sup
from hotdog import models
from hotdog.errors import HotdogError
from hotdog.train import TrainConfig, chapter_config, recommended_config
from pages import ui

ui.require_router()

LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
WDS = [0.0, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2]
BATCHES = [8, 16, 32, 64, 128, 256]
SIZES = [32, 64, 96, 128, 160, 192, 224, 256, 288]
S = "session"  # knobs keep their values across page switches


def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:g}"


# Sidebar keys that a preset sets, and the TrainConfig field each one mirrors.
PRESET_KEYS = {"lr_ft": "lr", "lr_mult": "lr_mult", "batch": "batch_size", "init_head": "init_output_from_imagenet",
               "bn_mode": "bn_mode"}


def _apply_preset(source: str, which: str) -> None:
    make = recommended_config if which == "recommended" else chapter_config
    cfg = make(".", source)
    for key, field in PRESET_KEYS.items():
        value = getattr(cfg, field)
        st.session_state[key] = cfg.resolved_lr() if field == "lr" else value


def sidebar_knobs() -> dict:
    """Every knob of TrainConfig; returns plain values.

    Defaults are the settings measured stable for the source (hotdog.train.RECOMMENDED): the
    chapter's lr 0.01 with batch statistics updating swings test accuracy between 0.5 and
    0.9 on a small set. The chapter's exact settings are one click away.
    """
    sb = st.sidebar
    source = ui.source_select()
    spec = models.get_spec(source)
    rec = recommended_config(".", source)
    k = {"source": source}
    sb.caption("PRESETS")
    left, right = sb.columns(2)
    left.button("Stable", key="preset_recommended", on_click=_apply_preset, args=(source, "recommended"),
                width="stretch", help="BatchNorm keeps its pretrained statistics, lr 0.001 for EfficientNet-Lite0, "
                                      "batch 32, output layer from ImageNet's rows: steady on small data sets.")
    right.button("Chapter's", key="preset_chapter", on_click=_apply_preset, args=(source, "chapter"),
                 width="stretch", help="The chapter's train_fine_tuning exactly: lr 0.01, x10 head, batch 128, "
                                       "BatchNorm statistics updating, random output layer.")
    sb.caption("OPTIMISER")
    k["lr_finetune"] = sb.select_slider("Learning rate (fine-tune)", LRS, value=rec.resolved_lr(), format_func=_fmt,
                                        key="lr_ft", persist_state=S)
    k["lr_scratch"] = sb.select_slider("Learning rate (from scratch)", LRS, value=1e-1, format_func=_fmt,
                                       key="lr_sc", persist_state=S,
                                       help="The chapter trains the scratch model 10x faster.")
    k["lr_mult"] = sb.number_input("Output layer lr multiplier", 0.1, 100.0, float(rec.lr_mult), step=1.0,
                                   key="lr_mult", persist_state=S,
                                   help="The new output layer learns this many times faster than the copied features.")
    k["wd"] = sb.select_slider("Weight decay", WDS, value=1e-3, format_func=_fmt, key="wd", persist_state=S)
    k["batch_size"] = sb.select_slider("Batch size", BATCHES, value=rec.batch_size, key="batch", persist_state=S)
    k["epochs"] = int(sb.number_input("Epochs", 1, 100, 5, key="epochs", persist_state=S))
    sb.caption("MODEL")
    k["freeze"] = sb.checkbox("Freeze the copied features", value=False, key="freeze", persist_state=S,
                              help="Train only the output layer (much faster: features are computed once).")
    k["init_output_from_imagenet"] = sb.checkbox(
        "Start the output layer from ImageNet's rows", value=rec.init_output_from_imagenet, key="init_head",
        persist_state=S,
        help="A class named like an ImageNet class ('hotdog') starts from that row; 'not-hotdog' from its negative.")
    with sb.expander("More settings"):
        size_default = spec.preprocess.input_size
        sizes = sorted(set(SIZES) | {size_default})
        k["input_size"] = st.select_slider(
            "Image size", sizes, value=size_default, key="input_size", persist_state=S,
            help=f"{spec.title} was trained on {size_default} px; smaller is much faster and less accurate.")
        k["bn_mode"] = st.radio("BatchNorm", ["keep", "update"], index=["keep", "update"].index(rec.bn_mode),
                                key="bn_mode", persist_state=S, horizontal=True,
                                help="keep: pretrained running statistics, frozen (stable on small data); "
                                     "update: the chapter's behaviour.")
        k["seed"] = int(st.number_input("Seed", 0, 2**31 - 1, 0, key="seed", persist_state=S))
        k["warmup_epochs"] = int(st.number_input(
            "Head warm-up epochs", 0, 100, 0, key="warmup", persist_state=S,
            help="Fine-tuning only: the first epochs train just the new output layer (on cached "
                 "features), so its early random gradients never disturb the pretrained features."))
        k["feature_cache"] = st.checkbox(
            "Compute frozen features once", value=True, key="feature_cache", persist_state=S,
            help="With frozen features, run the network body once per image and train the head on the results.")
        k["augment_views"] = int(st.number_input(
            "Augmented views per photo (frozen, cached)", 0, 20, 0, key="augment_views", persist_state=S,
            help="0 = the test view only; more = that many random training crops per photo are cached."))
        devices = sup.available_devices(ui.num_gpus())
        k["devices"] = st.multiselect("Devices", devices, default=devices, key="devices", persist_state=S)
    return k


def make_config(k: dict, mode: str, root: str) -> TrainConfig:
    spec_size = models.get_spec(k["source"]).preprocess.input_size
    return TrainConfig(
        data_root=root, source=k["source"], mode=mode,
        freeze=k["freeze"] if mode == "finetune" else False,
        lr=k["lr_finetune"] if mode == "finetune" else k["lr_scratch"],
        lr_mult=float(k["lr_mult"]), wd=float(k["wd"]), batch_size=int(k["batch_size"]),
        epochs=int(k["epochs"]),
        init_output_from_imagenet=k["init_output_from_imagenet"] if mode == "finetune" else False,
        bn_mode=k["bn_mode"], seed=int(k["seed"]), devices=list(k["devices"]) or None,
        input_size=None if int(k["input_size"]) == spec_size else int(k["input_size"]),
        warmup_epochs=min(int(k["warmup_epochs"]), int(k["epochs"])) if mode == "finetune" else 0,
        feature_cache=bool(k["feature_cache"]), augment_views=int(k["augment_views"]),
    )


st.title("Train")
knobs = sidebar_knobs()
root = ui.current_dataset()

if not root:
    st.info("Choose a data set on the Data page first.", icon=":material/info:")
else:
    try:
        report = ui.dataset_report(root)
    except HotdogError as err:
        ui.show_error(err)
        report = None
    if report is not None:
        counts = sup.counts_frame(report)
        n_train = int(counts.loc[counts.split == "train", "images"].sum())
        n_test = int(counts.loc[counts.split == "test", "images"].sum())
        st.text(f"Data: {Path(root).name} · {len(report['classes'])} classes · "
                f"{n_train} train / {n_test} test images")


def start(modes: list[str]) -> None:
    try:
        configs = [make_config(knobs, m, root) for m in modes]
        ui.start_jobs(configs)
    except HotdogError as err:
        st.session_state["train_error"] = str(err)
    else:
        st.session_state.pop("train_error", None)


busy = ui.job_snapshot() is not None
b1, b2, b3 = st.columns(3)
b1.button("Fine-tune", type="primary", icon=":material/play_arrow:", key="btn_finetune", width="stretch",
          disabled=busy or not root, on_click=start, args=(["finetune"],))
b2.button("Train from scratch", icon=":material/restart_alt:", key="btn_scratch", width="stretch",
          disabled=busy or not root, on_click=start, args=(["scratch"],))
b3.button("Run the chapter's comparison", icon=":material/compare_arrows:", key="btn_compare", width="stretch",
          disabled=busy or not root, on_click=start, args=(["finetune", "scratch"],),
          help="Fine-tune, then train the same network from scratch at its own learning rate.")
if st.session_state.get("train_error"):
    st.error(sup.md_escape(st.session_state["train_error"]), icon=":material/error:")
elif not busy and (last := ui.last_job()) is not None:
    res = last.result
    took = sup.format_duration((last.ended or 0) - (last.started or 0))
    mode = {"finetune": "fine-tune", "scratch": "from scratch"}.get(getattr(last.config, "mode", ""), "")
    if last.state == "finished":
        acc = f", test accuracy {res.test_acc:.3f}" if res is not None and res.test_acc is not None else ""
        st.success(sup.md_escape(f"Run finished ({mode}): {last.run_id}{acc} ({took})"),
                   icon=":material/check_circle:")
    elif last.state == "stopped":
        st.info(sup.md_escape(f"Run stopped: {last.run_id} after {len(last.epochs)} epoch(s); "
                              "completed epochs are kept."), icon=":material/stop_circle:")
    else:
        st.error(sup.md_escape(f"Run {last.state}: {last.run_id}: {last.error or ''}"), icon=":material/error:")


def curves_chart(df: pd.DataFrame, height: int = 260):
    """The chapter's plot: train loss, train acc, test acc per epoch; one colour per run."""
    many = df["run"].nunique() > 1
    base = alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1, format="d"),
                scale=alt.Scale(domainMin=1, nice=False)),
        y=alt.Y("value:Q", title=None),
        tooltip=["run", "metric", "epoch", alt.Tooltip("value:Q", format=".3f")],
    )
    if many:
        return (base.encode(color=alt.Color("run:N", title="run",
                                            scale=alt.Scale(range=["#d9480f", "#1c7ed6", "#2f9e44", "#7048e8",
                                                                   "#f59f00", "#868e96"]),
                                            legend=alt.Legend(orient="bottom", labelLimit=400, columns=1)))
                .properties(height=height, width=260)
                .facet(column=alt.Column("metric:N", title=None, sort=list(sup.METRIC_LABELS.values())))
                .resolve_scale(y="independent"))
    return base.encode(
        color=alt.Color("metric:N", title=None, sort=list(sup.METRIC_LABELS.values()),
                        scale=alt.Scale(range=["#1c7ed6", "#d9480f", "#2f9e44"])),
        strokeDash=alt.StrokeDash("metric:N", title=None, sort=list(sup.METRIC_LABELS.values())),
    ).properties(height=height)


@st.fragment(run_every=1.0)
def live() -> None:
    snap = ui.job_snapshot()
    was = st.session_state.get("job_was_running")
    st.session_state["job_was_running"] = snap is not None
    if snap is None:
        if was:  # the job just ended: redraw the whole page (buttons, history)
            st.rerun(scope="app")
        return
    with st.container(border=True):
        top_l, top_r = st.columns([5, 1], vertical_alignment="center")
        top_l.markdown(f"**Running:** {sup.md_escape(snap['label'])}")
        if top_r.button("Stop", icon=":material/stop:", key="btn_stop", width="stretch"):
            ui.stop_job()
            st.toast("Stopping after the current batch…")
        p = snap.get("progress")
        if p is not None:
            st.progress(sup.progress_fraction(p), text=sup.progress_text(p))
        else:
            st.progress(0.0, text=snap.get("message") or "Starting…")
        if snap.get("queued"):
            st.caption("Next: " + sup.md_escape(", ".join(snap["queued"])))
        df = sup.curves_frame(snap.get("metrics") or [], run=snap["run_id"])
        if df.empty:
            st.caption("Curves appear after the first epoch.")
        else:
            st.altair_chart(curves_chart(df), width="stretch")


live()

def confusion_chart(classes: list[str], confusion: list[list[int]]):
    df = pd.DataFrame([{"true": t, "predicted": p, "images": int(confusion[i][j])}
                       for i, t in enumerate(classes) for j, p in enumerate(classes)])
    base = alt.Chart(df).encode(x=alt.X("predicted:N", sort=classes), y=alt.Y("true:N", sort=classes))
    step = max(36, min(80, 320 // max(len(classes), 1)))
    return (base.mark_rect().encode(color=alt.Color("images:Q", scale=alt.Scale(scheme="oranges"), legend=None))
            + base.mark_text(fontSize=14).encode(
                text="images:Q",
                color=alt.condition(alt.datum.images > 0, alt.value("black"), alt.value("#868e96")))
            ).properties(width=alt.Step(step), height=alt.Step(step))


def inspect_run(run) -> None:
    """Confusion matrix, misclassified photos and the weights of one finished run."""
    try:
        ev = ui.evaluation(run.run_dir)
    except HotdogError as err:
        ui.show_error(err)
        return
    classes = list(ev.get("classes") or ui.run_classes(run.run_dir))
    left, right = st.columns([1, 2])
    with left:
        st.metric("Test accuracy", f"{ev['accuracy']:.3f}", help=f"{ev.get('n', '?')} test images")
        if ev.get("confusion") is not None and classes:
            st.altair_chart(confusion_chart(classes, ev["confusion"]), width="content")
        params = Path(run.run_dir) / "model.params"
        if params.is_file():
            st.download_button("Download model.params", params.read_bytes(), file_name=f"{run.run_id}.params",
                               mime="application/octet-stream", icon=":material/download:", key="dl_params")
    with right:
        wrong = list(ev.get("misclassified") or [])
        st.markdown(f"**Misclassified test photos** ({len(wrong)})")
        if not wrong:
            st.caption("None.")
        cols = st.columns(4)
        for i, m in enumerate(wrong[:16]):
            with cols[i % 4]:
                try:
                    # Square crops keep the gallery a tidy grid whatever the photos' shapes.
                    st.image(ui.thumbnail(m["path"], square=True), width="stretch")
                except HotdogError:
                    pass
                st.text(ui.misclassified_caption(m))
        if len(wrong) > 16:
            st.caption(f"…and {len(wrong) - 16} more.")


# ------------------------------------------------------------------ history
@st.fragment(run_every=2.0 if busy else None)
def runs_table() -> None:
    """Refreshes itself while a job runs, so the running row's epochs and message stay current."""
    runs = ui.all_runs()
    if not runs:
        st.caption("No runs yet.")
        return
    rows = []
    for r in runs:
        rec = ui.run_record(r.run_id)
        root = (rec.config.get("data_root") if rec else None) or ""
        rows.append({
            "run": r.run_id, "status": r.status, "mode": r.mode, "data": Path(root).name,
            "source": ui.source_titles().get(r.source, r.source),
            "lr": r.lr, "freeze": r.freeze, "epochs": f"{r.epochs_done}/{r.epochs}",
            "size": (rec.config.get("input_size") if rec else None) or "default",
            "test acc": r.test_acc, "duration": sup.format_duration(ui.run_seconds(r, rec)),
            "message": r.message,
        })
    st.dataframe(rows, hide_index=True, width="stretch",
                 column_config={"test acc": st.column_config.NumberColumn(format="%.3f"),
                                "lr": st.column_config.NumberColumn(format="%g")})


st.subheader("Runs")
runs_table()
runs = [r for r in ui.all_runs() if r.status != "running"]
if runs:
    labels = {r.run_id: f"{r.run_id} · {r.mode}" for r in runs}
    with_metrics = [r.run_id for r in runs if r.epochs_done]
    data_of = {r.run_id: ui.run_data_root(r.run_id) for r in runs}
    newest_data = data_of.get(with_metrics[0]) if with_metrics else None
    # A new run resets the choice to the newest two on the same data set (the chapter's
    # fine-tune vs scratch); curves of different data sets are rarely worth comparing.
    default = [r for r in with_metrics if data_of.get(r) == newest_data][:2]
    chosen = st.multiselect("Overlay the curves of", with_metrics, default=default,
                            format_func=labels.get, key=f"overlay-{len(with_metrics)}")
    if chosen:
        frames = [sup.curves_frame(ui.run_metrics(r), run=labels[r]) for r in chosen]
        # Several runs are drawn as one small chart per metric, which cannot stretch.
        st.altair_chart(curves_chart(pd.concat(frames, ignore_index=True)),
                        width="stretch" if len(chosen) == 1 else "content")

    finished = [r for r in runs if r.status in ("finished", "stopped") and r.epochs_done]
    if finished:
        st.subheader("Inspect a run")
        # Keyed by the newest run: a run that just finished is the one shown.
        run_id = st.selectbox("Run", [r.run_id for r in finished], format_func=lambda i: ui.run_label(
            next(r for r in finished if r.run_id == i)), key=f"inspect-{finished[0].run_id}")
        inspect_run(next(r for r in finished if r.run_id == run_id))
