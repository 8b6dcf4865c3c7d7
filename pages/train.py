"""Train: the chapter's fine-tuning vs training from scratch, live, in a background job."""

from __future__ import annotations

import contextlib
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from hotdog import models, settings
from hotdog.errors import ConfigError, HotdogError
import ui
import ui_robust
from i18n import engine, knob_help, knob_label, preset_help, preset_title, t, tr

S = "session"  # knobs keep their values across page switches
PRESET_KEY = "train_preset"  # the preset last applied (plain state, not a widget)
PRESET_SOURCE_KEY = "train_preset_source"  # the source the preset values were taken for
SCRATCH_LR = "lr_scratch"  # the one sidebar value that is not a knob of its own
# Widget choices; a knob's bounds (hotdog.settings.KNOBS) drop the ones outside them.
CHOICES = {
    "lr": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
    "wd": (0.0, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2),
    "batch_size": (8, 16, 32, 64, 128, 256),
    "input_size": (32, 64, 96, 128, 160, 192, 224, 256, 288),
    "val_fraction": (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3),
    "wise_alpha": tuple(i / 10 for i in range(11)),
    "l2sp": (0.0, 0.1, 1.0, 10.0, 100.0),
}
# One colour per overlaid run, in the order the runs are chosen: the chart's lines and the
# picker's chips use the same list (see run_chip_css).
RUN_COLORS = ("#d9480f", "#1c7ed6", "#2f9e44", "#7048e8", "#f59f00", "#868e96")
# Sidebar knobs outside the presets (their defaults are the table's).
OTHER_KNOBS = ("seed", "input_size", "warmup_epochs", "feature_cache", "augment_views",
               "micro_batch", "amp", "val_fraction", "l2sp", "proxy_eval")
ROBUST_KNOBS = ("warmup_epochs", "l2sp", "wise_alpha", "proxy_eval")  # their own sidebar group
ALSO_EVAL = "also_eval_text"  # extra test folders, one per line (not a knob: not part of the recipe)


def _choice(value) -> str:
    """A knob's choice in words: a name (bn_mode's "frozen") is translated, a number is not."""
    return t(value) if isinstance(value, str) else str(value)


def _fmt(x) -> str:
    return "0" if x == 0 else f"{x:g}"


def _preset_values(preset: str, source: str) -> dict:
    """Sidebar key -> value of a preset for this source (the scratch lr included)."""
    values = settings.preset_values(preset, "finetune", source)
    values[SCRATCH_LR] = settings.preset_values(preset, "scratch", source)["lr"]
    return values


def apply_preset(preset: str, source: str) -> None:
    st.session_state.update(_preset_values(preset, source))
    st.session_state[PRESET_KEY] = preset
    st.session_state[PRESET_SOURCE_KEY] = source


def _seed_sidebar(source: str) -> None:
    """First visit: every knob at its default. A new source: the preset knobs still at the
    old source's preset value follow the new source's (ResNet-18's stable lr is 0.01)."""
    if PRESET_KEY not in st.session_state:  # the CLI's default too: quick on a CPU, stable with a GPU
        apply_preset(settings.default_preset(ui.devices()), source)
    old = st.session_state.get(PRESET_SOURCE_KEY)
    if old != source:
        preset = st.session_state[PRESET_KEY]
        before, after = _preset_values(preset, old), _preset_values(preset, source)
        for key, value in after.items():
            if st.session_state.get(key) == before[key]:
                st.session_state[key] = value
        st.session_state[PRESET_SOURCE_KEY] = source
    defaults = {name: settings.KNOBS[name].default for name in OTHER_KNOBS}
    defaults["input_size"] = models.get_spec(source).preprocess.input_size
    defaults["devices"] = ui.devices()
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)


def _allowed(name: str, value) -> bool:
    try:
        settings.check_value(name, value)
    except ConfigError:
        return False
    return True


def knob_widget(name: str, container, key: str | None = None, label: str | None = None, help: str = ""):
    """The widget of one knob of hotdog.settings.KNOBS: its label, help text and bounds."""
    knob = settings.KNOBS[name]
    key = key or name
    words = knob_help(name)
    text = words[:1].upper() + words[1:] + "."
    if name in settings.PRESET_KNOBS:
        # describe_default: the presets' values, written by hotdog.settings (English by i18n's rule)
        text += " " + t("Presets: {values}.", values=engine(settings.describe_default(name)))
    common = {"label": label or knob_label(name), "key": key, "help": " ".join(x for x in (text, help) if x),
              "persist_state": S}
    if knob.kind is bool:
        return container.checkbox(**common)
    if knob.choices:
        return container.radio(options=list(knob.choices), horizontal=True, format_func=_choice, **common)
    if name in CHOICES:
        options = {v for v in CHOICES[name] if _allowed(name, v)} | {st.session_state[key]}
        return container.select_slider(options=sorted(options), format_func=_fmt, **common)
    step = knob.kind(1)
    return container.number_input(min_value=knob.kind(knob.lo), max_value=knob.kind(knob.hi), step=step,
                                  **common)


def sidebar_knobs() -> dict:
    """Every sidebar setting: {"source", "preset", "values" (knob -> value), "lr_scratch", "devices"}.

    Defaults are the default preset's (hotdog.settings, the same as `python -m hotdog train`);
    a preset button sets every knob it covers, single knobs can then be changed.
    """
    sb = st.sidebar
    source = ui.source_select()
    _seed_sidebar(source)
    sb.caption(t("PRESETS"))
    # Buttons as wide as their titles, wrapping to a second line rather than cutting "Chapter's".
    row = sb.container(horizontal=True, gap="small")
    for preset in settings.PRESETS:
        row.button(preset_title(preset), key=f"preset_{preset}", on_click=apply_preset,
                   args=(preset, source), width="content", help=preset_help(preset),
                   type="primary" if st.session_state[PRESET_KEY] == preset else "secondary")
    values = {}
    sb.caption(t("OPTIMISER"))
    values["lr"] = knob_widget("lr", sb, label=t("{label} (fine-tuning)", label=knob_label("lr")))
    lr_scratch = knob_widget("lr", sb, key=SCRATCH_LR, label=t("{label} (from scratch)", label=knob_label("lr")),
                             help=t("The chapter trains the scratch model 10x faster."))
    for name in ("lr_mult", "wd", "batch_size", "epochs"):
        values[name] = knob_widget(name, sb)
    sb.caption(t("MODEL"))
    for name in ("freeze", "init_output_from_imagenet"):
        values[name] = knob_widget(name, sb)
    with sb.expander(t("More settings")):
        for name in ("input_size", "bn_mode", "seed", "feature_cache", "augment_views", "micro_batch",
                     "val_fraction"):
            values[name] = knob_widget(name, st)
        devices = st.multiselect(t("Devices"), ui.devices(), key="devices", persist_state=S,
                                 help=t("Empty: every GPU, else the CPU."))
        if ui.num_gpus():  # float16 mixed precision exists only on GPUs (hotdog.precision)
            values["amp"] = knob_widget("amp", st)
    with sb.expander(t("Robust fine-tuning")):
        for name in ROBUST_KNOBS:
            values[name] = knob_widget(name, st)
        also = st.text_area(t("Also test on these folders"), key=ALSO_EVAL, persist_state=S, height=68,
                            placeholder=t("one folder per line, inside the shared data folders"),
                            help=t("Scored after training beside the test split (one sub-folder per class); "
                                   "the results per source are kept with the run."))
    return {"source": source, "preset": st.session_state[PRESET_KEY], "values": values,
            SCRATCH_LR: lr_scratch, "devices": list(devices) or None, ALSO_EVAL: also or ""}


def make_config(k: dict, mode: str, root: str) -> settings.TrainConfig:
    """The sidebar as a TrainConfig, built the way `python -m hotdog train` builds it:
    the applied preset, then every sidebar value as an explicit setting."""
    values = dict(k["values"])
    if mode == "scratch":
        values["lr"] = k[SCRATCH_LR]
    return settings.config_for(root, source=k["source"], mode=mode, preset=k["preset"], devices=k["devices"],
                               also_eval=ui_robust.folder_list(k.get(ALSO_EVAL, "")), **values)


st.title(t("Train"))
knobs = sidebar_knobs()
root = ui.current_dataset()

if not root:
    st.info(t("Choose a data set on the Data page first."), icon=":material/info:")
else:
    report = ui.or_error(ui.dataset_report, root)
    if report is not None:
        n = ui.split_totals(report)
        st.text(t("Data: {name} · {classes} classes · {train} train / {test} test images", name=Path(root).name,
                  classes=len(report['classes']), train=n['train'], test=n['test']))
        per_class = list((report.get("counts") or {}).get("train", {}).values())
        if (rec := settings.recommended_val_fraction(per_class)) and not knobs["values"].get("val_fraction"):
            st.caption(t("Best epoch: this data set has {n}+ training photos per class, enough to hold {rec} of "
                         "them out and keep the best epoch too (More settings → validation fraction); off, only "
                         "the last epoch's weights are kept.", n=min(per_class), rec=f"{rec:g}"))
        with contextlib.suppress(HotdogError):  # a bad knob says so when a button is clicked
            kind, text = ui.memory_estimate(make_config(knobs, "finetune", root), n["train"] + n["test"])
            {"info": st.caption, "warning": st.warning, "error": st.error}[kind](ui.md_escape(text))


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
b1.button(t("Fine-tune"), type="primary", icon=":material/play_arrow:", key="btn_finetune", width="stretch",
          disabled=busy or not root, on_click=start, args=(["finetune"],))
b2.button(t("Train from scratch"), icon=":material/restart_alt:", key="btn_scratch", width="stretch",
          disabled=busy or not root, on_click=start, args=(["scratch"],))
b3.button(t("Run the chapter's comparison"), icon=":material/compare_arrows:", key="btn_compare", width="stretch",
          disabled=busy or not root, on_click=start, args=(["finetune", "scratch"],),
          help=t("Fine-tune, then train the same network from scratch at its own learning rate."))
if root and report is not None:
    with contextlib.suppress(HotdogError):  # a bad knob says so when a button is clicked
        splits = ui.dataset_splits(root)
        # names shown through t by ui.cost_estimate: t("Fine-tune"), t("From scratch")
        ui.cost_estimate({"Fine-tune": make_config(knobs, "finetune", root),
                          "From scratch": make_config(knobs, "scratch", root)},
                         n["train"], n["test"], splits.train, len(report["classes"]), busy)


def use_lr(lr: float) -> None:
    st.session_state["lr"] = lr  # before the sidebar widget is drawn on the next run


with st.expander(t("Find a learning rate"), icon=":material/trending_down:"):
    st.caption(t("fastai's lr_find: one short pass with the learning rate growing from 1e-6 by a constant "
                 "factor per batch, on the sidebar's settings; the loss (smoothed) is plotted against it and "
                 "the pass stops when the loss explodes. The network is thrown away afterwards."))
    if st.button(t("Find a learning rate"), key="btn_lr_find", icon=":material/search:", disabled=busy or not root):
        try:
            st.session_state["lr_find"] = ui.find_lr(make_config(knobs, "finetune", root))
        except HotdogError as err:
            ui.show_error(err)
    found = st.session_state.get("lr_find")
    if found:
        st.altair_chart(ui.lr_find_chart(found), width="stretch")
        if found.get("suggested_lr"):
            lr = float(f"{found['suggested_lr']:.2g}")
            st.caption(t("Lowest loss at lr {min}: suggested a tenth of it, {lr} (steepest descent at {steep}, "
                         "fastai's valley at {valley}).", min=f"{found['min_lr']:.2g}", lr=f"{lr:g}",
                         steep=f"{found['steepest_lr']:.2g}", valley=f"{found['valley_lr']:.2g}"))
            st.button(t("Use lr {lr}", lr=f"{lr:g}"), key="btn_use_lr", on_click=use_lr, args=(lr,))
        else:
            st.caption(t("The loss exploded too soon for a suggestion: try a smaller batch or the frozen features."))


def comparison_flags(runs) -> list[str]:
    """hotdog.compare.summarize's flags, in the interface's language (t("fine-tuned"): a run's title)."""
    flags = [t("{title} predicts '{cls}' for every test photo: its accuracy is the share of that class in the "
               "test split, not something it learned", title=t(r.title), cls=r.one_class) for r in runs if r.one_class]
    flags += [t("{title} did not finish ({status} after {n} epoch)" if r.epochs_done == 1 else
                "{title} did not finish ({status} after {n} epochs)", title=t(r.title), status=t(r.status),
                n=r.epochs_done) for r in runs if r.status != "finished"]
    return flags


def comparison_card(run_ids: list[str]) -> None:
    """The chapter's comparison in one card: each run's test accuracy and time, and a flag on
    a model that predicts one class for every test photo."""
    summary = ui.comparison(run_ids)
    if summary is None:
        return
    with st.container(border=True, key="comparison_card"):
        # hotdog.compare's headline and flags, said again in words from their fields (same English)
        headline = (" " + t("vs") + " ").join(f"{t(r.title)} {ui.acc_text(r.accuracy)}" for r in summary.runs)
        st.markdown(f"**{t('The comparison:')}** {ui.md_escape(headline)}")
        for col, r in zip(st.columns(len(summary.runs)), summary.runs):
            col.metric(t("{title} · test accuracy (saved model)", title=t(r.title)), ui.acc_text(r.accuracy),
                       help=t("run {run}, saved model: {weights} ({n} epochs trained)", run=r.run_id,
                              weights=ui.saved_model_title(r.weights, r.best_epoch), n=r.epochs_done))
            col.caption(t("took {time} · run {run}", time=ui.format_duration(r.seconds), run=r.run_id))
        for flag in comparison_flags(summary.runs):
            st.warning(ui.md_escape(flag[:1].upper() + flag[1:] + "."), icon=":material/flag:")


if st.session_state.get("train_error"):
    st.error(ui.md_escape(st.session_state["train_error"]), icon=":material/error:")
elif not busy and (last := ui.last_job()) is not None:
    kind, message = ui.job_end_message(last)
    show = {"success": (st.success, ":material/check_circle:"), "info": (st.info, ":material/stop_circle:"),
            "error": (st.error, ":material/error:")}[kind]
    show[0](ui.md_escape(message), icon=show[1])
    if len(last.run_ids) > 1 and not getattr(last, "sweep", None):  # a sweep has its own page
        comparison_card(list(last.run_ids))


def metric_order() -> list[str]:
    """The metrics' names as ui.curves_frame writes them (translated), in the chapter's order."""
    return [t(label) for label in ui.METRIC_LABELS.values()]


def curves_chart(df: pd.DataFrame, height: int = 260, runs: list[str] | None = None):
    """The chapter's plot: train loss, train acc, test acc per epoch; one colour per run,
    RUN_COLORS in the order of ``runs`` (default: as they appear in ``df``)."""
    many = df["run"].nunique() > 1
    order = list(runs or dict.fromkeys(df["run"]))
    base = alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("epoch:Q", title=t("epoch"), axis=alt.Axis(tickMinStep=1, format="d"),
                scale=alt.Scale(domainMin=1, nice=False)),
        y=alt.Y("value:Q", title=None),
        tooltip=["run", "metric", "epoch", alt.Tooltip("value:Q", format=".3f")],
    )
    if many:
        return (base.encode(color=alt.Color("run:N", title=t("run"), sort=order,
                                            scale=alt.Scale(domain=order,
                                                            range=list(RUN_COLORS[:len(order)]) or None),
                                            legend=alt.Legend(orient="bottom", labelLimit=400, columns=1)))
                # The facets share ~780 px (a 1400 px window): 3 metrics, or 4 with "val acc".
                .properties(height=height, width=780 // max(df["metric"].nunique(), 3))
                .facet(column=alt.Column("metric:N", title=None, sort=metric_order()))
                .resolve_scale(y="independent"))
    return base.encode(
        color=alt.Color("metric:N", title=None, sort=metric_order(),
                        scale=alt.Scale(range=["#1c7ed6", "#d9480f", "#2f9e44", "#7048e8"])),
        strokeDash=alt.StrokeDash("metric:N", title=None, sort=metric_order()),
    ).properties(height=height)


def run_chip_css(key: str, n: int) -> str:
    """A style that paints the picker's i-th chip with the i-th run colour of the chart."""
    # Streamlit 1.65's multiselect marks its chips with data-tag-index (0-based, in value order).
    rules = [f".st-key-{key} [data-tag-index='{i}'] {{ background-color: {c}; color: white; }}"
             for i, c in enumerate(RUN_COLORS[:n])]
    return "<style>" + "\n".join(rules) + "</style>"


def live_body(snap: dict) -> None:
    p = snap.get("progress")
    # start-up steps until the first batch; "robust" is the check after training
    starting = p is None or getattr(p, "phase", "train") not in ("train", "robust")
    if starting:  # each start-up step with its own line, the current one with its bar
        ui.startup_checklist(snap)
    elif p is not None:
        st.progress(ui.progress_fraction(p), text=ui.progress_text(p))
    if snap["pending"]:
        st.caption(t("Then {n} more run(s), one after the other.", n=snap['pending']))
    df = ui.curves_frame(snap.get("metrics") or [], run=snap["run_id"])
    if df.empty:
        st.caption(t("Curves appear after the first epoch."))
    else:
        st.altair_chart(curves_chart(df), width="stretch")


ui.live_panel("job_was_running", "btn_stop", live_body)


def confusion_chart(classes: list[str], confusion: list[list[int]]):
    df = pd.DataFrame([{"true": true, "predicted": p, "images": int(confusion[i][j])}
                       for i, true in enumerate(classes) for j, p in enumerate(classes)])
    base = alt.Chart(df).encode(x=alt.X("predicted:N", sort=classes, title=t("predicted")),
                                y=alt.Y("true:N", sort=classes, title=t("true")))
    step = max(36, min(80, 320 // max(len(classes), 1)))
    return (base.mark_rect().encode(color=alt.Color("images:Q", scale=alt.Scale(scheme="oranges"), legend=None))
            + base.mark_text(fontSize=14).encode(
                text="images:Q",
                color=alt.condition(alt.datum.images > 0, alt.value("black"), alt.value("#868e96")))
            ).properties(width=alt.Step(step), height=alt.Step(step))


def weights_choice(run, key: str) -> str:
    """"last" or "best": a choice only for a run that kept its best epoch's weights."""
    if not run.best_epoch:
        return "last"
    return st.radio(t("Weights"), ["best", "last"], key=key, horizontal=True,
                    format_func=lambda w: ui.weights_title(run, w),
                    help=t("Last: after the final epoch (the chapter keeps these). Best: the epoch with the "
                           "highest accuracy on the validation split carved from train (never the test split)."))


def inspect_run(run) -> None:
    """Confusion matrix, misclassified photos and the weights of one finished run."""
    drift = ui.data_drift(run.run_id)
    if drift:
        st.warning(ui.md_escape(engine(drift[0].upper() + drift[1:] + ".")), icon=":material/warning:")
    weights = weights_choice(run, key=f"inspect_weights-{run.run_id}")
    ev = ui.or_error(ui.evaluation, run.run_dir, weights)
    if ev is None:
        return
    classes = list(ev.get("classes") or ui.run_classes(run.run_dir))
    left, right = st.columns([1, 2])
    with left:
        st.metric(t("Test accuracy"), f"{ev['accuracy']:.3f}", help=t("{n} test images", n=ev.get('n', '?')))
        st.caption(ui.md_escape(t("Weights: {which}", which=ui.weights_title(run, weights))))
        if ev.get("confusion") is not None and classes:
            st.altair_chart(confusion_chart(classes, ev["confusion"]), width="content")
        params = Path(run.run_dir) / "model.params"
        if params.is_file():
            st.download_button(t("Download model.params"), params.read_bytes(), file_name=f"{run.run_id}.params",
                               mime="application/octet-stream", icon=":material/download:", key="dl_params")
            fmt = st.radio(t("Export as"), ["onnx", "mxnet"], horizontal=True, key="export_format",
                           format_func=lambda f: "ONNX" if f == "onnx" else t("MXNet symbol + params"),
                           help=t("A zip with the model and preprocess.json (resize, crop, mean/std, "
                                  "classes): run it without Hotdog Lab, e.g. with onnxruntime."))
            st.download_button(t("Download the {fmt} export", fmt="ONNX" if fmt == "onnx" else "MXNet"),
                               # Exported on click (a second or two), cached until the weights change.
                               lambda run_dir=run.run_dir, fmt=fmt: ui.export_zip(run_dir, fmt),
                               file_name=f"{run.run_id}-{fmt}.zip", mime="application/zip",
                               icon=":material/deployed_code:", key="dl_export", on_click="ignore")
    with right:
        wrong = list(ev.get("misclassified") or [])
        st.markdown(t("**Misclassified test photos** ({n})", n=len(wrong)))
        if not wrong:
            st.caption(t("None."))
        show_heat = bool(wrong) and st.toggle(
            t("Show heatmaps"), value=True, key="gallery_heatmaps",
            help=t("Grad-CAM for the class the run wrongly predicted: where it saw that class."))
        heat = (ui.or_error(ui.gallery_heatmaps, run.run_dir, wrong[:16]) or []) if show_heat else []
        cols = st.columns(4)
        for i, m in enumerate(wrong[:16]):
            with cols[i % 4]:
                try:
                    # Square crops keep the gallery a tidy grid whatever the photos' shapes.
                    st.image(ui.thumbnail(m["path"], square=True), width="stretch")
                except HotdogError:
                    pass
                if i < len(heat) and heat[i] is not None:
                    st.image(heat[i], width="stretch")
                    st.caption(ui.md_escape(t("where it saw '{name}'", name=m['predicted'])))
                st.text(ui.misclassified_caption(m))
        if len(wrong) > 16:
            st.caption(t("…and {n} more.", n=len(wrong) - 16))
    ui_robust.robustness_section(run.run_dir, key=run.run_id)


# ------------------------------------------------------------------ history
SHORT_COLUMNS = ("status", "mode", "freeze", "epochs", "size", "duration")
# Pixels for the message column: "stopped by request after 1 completed epoch; the weights after
# epoch 1 are kept" in full, beside the run's id, mode, status and accuracies, in a 1400 px window.
MESSAGE_WIDTH = 520

@ui.fragment(run_every=2.0 if busy else None)
def runs_table() -> None:
    """Refreshes itself while a job runs, so the running row's epochs and message stay current."""
    runs = ui.all_runs()
    if not runs:
        st.caption(t("No runs yet."))
        return
    rows = []
    for r in runs:
        rec = ui.run_record(r.run_id)
        root = (rec.config.get("data_root") if rec else None) or ""
        rows.append({
            # What a run gave first (its message is a sentence and needs the room), details after.
            "run": r.run_id, "mode": tr(r.mode), "status": tr(r.status),  # t("finetune"), t("scratch")
            "test acc (saved model)": ui.acc_text(r.accuracy),
            "saved model": ui.saved_model_title(r.accuracy_weights, r.best_epoch) if r.accuracy is not None else "—",
            "message": r.message,
            "data": Path(root).name, "source": ui.source_titles().get(r.source, r.source),
            "lr": r.lr, "freeze": r.freeze, "epochs": f"{r.epochs_done}/{r.epochs}",
            "size": rec.config.get("input_size") if rec else None,  # a damaged run: empty, not a word
            "duration": ui.format_duration(ui.run_seconds(r, rec)),
        })
    config = {"lr": st.column_config.NumberColumn(format="%g"),
              "test acc (saved model)": st.column_config.TextColumn(help=ui.acc_help()),
              "saved model": st.column_config.TextColumn(
                  help=t("which weights the run predicts with: its best epoch by the validation split "
                         "(model-best.params; runs with a validation fraction), a WiSE-FT mix or the last epoch "
                         "(model.params)")),
              # Messages are sentences: room for them, the short columns shrink.
              **{c: st.column_config.Column(width="small") for c in SHORT_COLUMNS},
              "message": st.column_config.TextColumn(width=MESSAGE_WIDTH)}
    # Headers in words, the data keys stay (t("run"), t("mode"), t("status"), t("test acc (saved model)"),
    # t("saved model"),
    # t("message"), t("data"), t("source"), t("freeze"), t("epochs"), t("size"), t("duration")); the
    # message cells are the run store's sentences (English by i18n's rule)
    for c in rows[0]:
        config[c] = {**config.get(c, {}), "label": t(c) if c != "lr" else "lr"}
    st.dataframe(rows, hide_index=True, width="stretch", column_config=config)


st.subheader(t("Runs"))
runs_table()
runs = [r for r in ui.all_runs() if r.status != "running"]
if runs:
    labels = {r.run_id: f"{r.run_id} · {tr(r.mode)}" for r in runs}
    with_metrics = [r.run_id for r in runs if r.epochs_done]
    data_of = {r.run_id: ui.run_data_root(r.run_id) for r in runs}
    newest_data = data_of.get(with_metrics[0]) if with_metrics else None
    # A new run resets the choice to the newest two on the same data set (the chapter's
    # fine-tune vs scratch); curves of different data sets are rarely worth comparing.
    default = [r for r in with_metrics if data_of.get(r) == newest_data][:2]
    overlay_key = f"overlay-{len(with_metrics)}"
    chosen = st.multiselect(t("Overlay the curves of"), with_metrics, default=default,
                            format_func=labels.get, key=overlay_key)
    if len(chosen) > 1:
        st.html(run_chip_css(overlay_key, len(chosen)))
    if chosen:
        frames = [ui.curves_frame(ui.run_metrics(r), run=labels[r]) for r in chosen]
        # Several runs are drawn as one small chart per metric, which cannot stretch.
        st.altair_chart(curves_chart(pd.concat(frames, ignore_index=True), runs=[labels[r] for r in chosen]),
                        width="stretch" if len(chosen) == 1 else "content")
        ui.curves_note()

    finished = [r for r in runs if r.status in ("finished", "stopped") and r.epochs_done]
    if finished:
        st.subheader(t("Inspect a run"))
        # Keyed by the newest run: a run that just finished is the one shown.
        inspect_run(ui.pick_run(finished, key=f"inspect-{finished[0].run_id}"))
