"""Streamlit helpers shared by the pages: cached engine calls, the chosen data set and source.

Not a page itself (the router lists pages explicitly). Cached objects are shared between
sessions and threads, so callers treat them as read-only; training builds its own networks.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from hotdog import app_support as sup
from hotdog.errors import HotdogError

DATA_KEY = "data_root"        # the data set every page works on (plain state, not a widget)
SOURCE_KEY = "source_model"   # the source model, shared by Train, Predict and Weights
FOLDERS_KEY = "typed_folders"  # local folders the user typed in this session
ROUTED_KEY = "_hotdog_routed"  # set by streamlit_app.py before it runs a page


def app_pages() -> list:
    return [
        st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("pages/data.py", title="Data", icon=":material/photo_library:"),
        st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("pages/predict.py", title="Predict", icon=":material/image_search:"),
        st.Page("pages/weights.py", title="Weights", icon=":material/grid_on:"),
    ]


def require_router() -> None:
    """Make sure this page runs inside the router.

    Because the pages live in ``pages/``, the very first run of a fresh server process that
    lands on a page URL (a bookmark of /data) runs that file directly with Streamlit's legacy
    folder navigation, which would also list this helper module as a page. Calling
    ``st.navigation`` switches Streamlit to the router for good; the rerun then goes
    through streamlit_app.py and lands on the same page.
    """
    if st.session_state.get(ROUTED_KEY):
        return
    st.navigation(app_pages(), position="hidden")
    st.rerun()


def show_error(err: BaseException, prefix: str = "") -> None:
    """A HotdogError is a sentence for people: show it, never a traceback."""
    msg = str(err) if isinstance(err, HotdogError) else f"{type(err).__name__}: {err}"
    st.error(sup.md_escape(prefix + msg), icon=":material/error:")


def _stamp(root: str) -> float:
    """Changes when files are added or removed anywhere two levels down (cache key)."""
    p = Path(root)
    stamp = 0.0
    try:
        stamp = p.stat().st_mtime
        for child in p.iterdir():
            if child.is_dir():
                stamp = max(stamp, child.stat().st_mtime)
                for grandchild in child.iterdir():
                    if grandchild.is_dir():
                        stamp = max(stamp, grandchild.stat().st_mtime)
    except OSError:
        pass
    return stamp


@st.cache_data(show_spinner="Checking the data set…", max_entries=16)
def _report(root: str, stamp: float) -> dict:
    from hotdog import data

    return data.validate_dataset(root).to_dict()


def dataset_report(root: str) -> dict:
    return _report(str(root), _stamp(root))


@st.cache_data(show_spinner=False, max_entries=16)
def _splits(root: str, stamp: float):
    from hotdog import data

    return data.load_splits(root)


def dataset_splits(root: str):
    return _splits(str(root), _stamp(root))


@st.cache_data(show_spinner=False, max_entries=16)
def _sizes(root: str, stamp: float):
    s = _splits(root, stamp)
    return sup.image_sizes_frame([p for p, _ in s.train + s.test])


def image_sizes(root: str):
    return _sizes(str(root), _stamp(root))


def installed_datasets() -> list[Path]:
    from hotdog import data

    try:
        return list(data.installed_datasets())
    except HotdogError:
        return []


def dataset_choices() -> list[sup.DatasetChoice]:
    return sup.dataset_choices(installed_datasets(), extra=st.session_state.get(FOLDERS_KEY, []))


def current_dataset() -> str | None:
    """The data set the user picked, else $HOTDOG_DATA, else an installed one."""
    root = st.session_state.get(DATA_KEY)
    if root:
        return root
    root = sup.default_dataset(dataset_choices())
    if root:
        st.session_state[DATA_KEY] = root
    return root


def set_dataset(root: str) -> None:
    st.session_state[DATA_KEY] = str(root)


def remember_folder(root: str) -> None:
    folders = list(st.session_state.get(FOLDERS_KEY, []))
    if root not in folders:
        folders.append(root)
    st.session_state[FOLDERS_KEY] = folders


def current_source() -> str:
    from hotdog import models

    return st.session_state.get(SOURCE_KEY) or models.DEFAULT_SOURCE


@st.cache_data(show_spinner=False)
def source_titles() -> dict:
    from hotdog import models

    out = {}
    for name in models.list_sources():
        try:
            out[name] = models.get_spec(name).title
        except HotdogError:
            out[name] = name
    return out


def source_select(container=None, key: str = "source_select") -> str:
    """One source-model picker whose value is shared by every page."""
    container = container or st.sidebar
    titles = source_titles()
    names = list(titles)
    current = current_source()

    def _sync():
        st.session_state[SOURCE_KEY] = st.session_state[key]

    # Re-seed the widget from the shared value so switching pages keeps the choice.
    if st.session_state.get(key) != current:
        st.session_state[key] = current if current in names else names[0]
    choice = container.selectbox("Source model", names, key=key,
                                 format_func=lambda n: titles.get(n, n), on_change=_sync,
                                 help="The ImageNet-pretrained network whose features are fine-tuned.")
    st.session_state[SOURCE_KEY] = choice
    return choice


@st.cache_resource(show_spinner=False)
def num_gpus() -> int:
    import mxnet as mx

    try:
        return int(sup.mx_call(mx.context.num_gpus))
    except Exception:  # no CUDA runtime at all is the same as no GPU here
        return 0


def job_manager():
    from hotdog import train

    return train.job_manager()


def sidebar_status(page_title: str = "") -> None:
    """Data set, source model and the running job, on every page."""
    root = current_dataset()
    st.caption("**Data set:** " + (sup.md_escape(Path(root).name) if root else "none yet"))
    try:
        st.caption("**Source:** " + sup.md_escape(source_titles().get(current_source(), current_source())))
    except (HotdogError, ImportError):
        pass
    # Poll only while something runs: an idle tab learns of a new job on its next rerun.
    (_job_status_live if job_snapshot() is not None else _job_status)(link=page_title != "Train")


def _job_status(link: bool = True) -> None:
    snap = job_snapshot()
    if snap is None:
        st.caption("**Training:** idle")
        return
    p = snap.get("progress")
    where = f" · {sup.progress_fraction(p):.0%}" if p is not None else ""
    st.caption(f"**Training:** {snap['mode']} running{where}")
    if link:
        st.page_link("pages/train.py", label="Watch it", icon=":material/monitoring:")


_job_status_live = st.fragment(run_every=2.0)(_job_status)


def start_jobs(configs) -> str:
    return sup.start_sequence(configs, job_manager())


def stop_job() -> None:
    sup.cancel_pending()
    job_manager().stop()


def job_snapshot() -> dict | None:
    """What runs now in this server (any tab), or None when idle."""
    s = job_manager().current()
    queued = sup.pending_configs()
    if not s.running and not queued:
        return None
    cfg = s.config
    mode = {"finetune": "fine-tune", "scratch": "from scratch"}.get(getattr(cfg, "mode", ""), "training")
    source = source_titles().get(getattr(cfg, "source", ""), getattr(cfg, "source", ""))
    return {
        "run_id": s.run_id or "…",
        "mode": mode,
        "label": f"{mode} of {source} · run {s.run_id}" + (" · stopping…" if s.state == "stopping" else ""),
        "progress": s.progress if s.running else None,
        "metrics": list(s.epochs) if s.running else [],
        "queued": [{"finetune": "fine-tune", "scratch": "from scratch"}.get(c.mode, c.mode) for c in queued],
        "message": "Waiting for the next run…" if not s.running else ("Stopping…" if s.state == "stopping" else None),
    }


def last_job():
    """The JobState of the most recent training in this server (for its end message)."""
    s = job_manager().current()
    return None if s.running or s.state == "idle" else s


# ------------------------------------------------------------------------------ runs & prediction

def run_store():
    from hotdog.runs import RunStore

    return RunStore()


def all_runs() -> list:
    try:
        return run_store().list()
    except HotdogError:
        return []


def finished_runs() -> list:
    return [r for r in all_runs() if r.status == "finished"]


def run_label(r) -> str:
    acc = "" if r.test_acc is None else f", test acc {r.test_acc:.3f}"
    rec = run_record(r.run_id)
    data = Path(rec.config.get("data_root") or "").name if rec else ""
    return (f"{r.run_id} · {r.mode or '?'} · {source_titles().get(r.source, r.source)}"
            + (f" · {data}" if data else "") + acc)


def _params_stamp(run_dir: str) -> float:
    try:
        return (Path(run_dir) / "model.params").stat().st_mtime
    except OSError:
        return 0.0


@st.cache_resource(show_spinner="Loading the run's weights…", max_entries=4)
def _predictor(run_dir: str, stamp: float):
    from hotdog.train import Predictor

    return Predictor.from_run(run_dir)


def predictor(run_dir: str):
    return _predictor(str(run_dir), _params_stamp(run_dir))


@st.cache_resource(show_spinner="Fitting the zero-shot head on the training split…", max_entries=4)
def _zero_shot(source: str, root: str, stamp: float):
    from hotdog import models

    splits = _splits(root, stamp)
    net = sup.mx_call(
        models.build_finetune, source, len(splits.classes), init_output_from_imagenet=True,
        class_names=splits.classes, init_items=sup.sample_items(splits.train, per_class=32),
    )
    return sup.HeadClassifier(net, splits.classes, models.get_spec(source).preprocess)


def zero_shot(source: str, root: str):
    return _zero_shot(source, str(root), _stamp(root))


def run_classifier(pred):
    """Adapter: Predictor.predict(bytes) -> [(probabilities, label, error)]."""

    def classify(images, raws):
        return [(p.probabilities, p.label, p.error) for p in pred.predict(list(raws))]

    return classify


def predict_files(kind: str, files, *, source: str, predictor=None, zero_shot=None):
    if predictor is not None:
        classify = run_classifier(predictor)
    elif zero_shot is not None:
        classify = zero_shot
    else:
        classify = None
    with st.spinner("Classifying…"):
        return sup.predict_photos(files, source, classify)


@st.cache_data(show_spinner="Reading the output layer…", max_entries=32)
def class_weights(source: str, class_name: str, k: int):
    from hotdog import models

    return sup.mx_call(models.class_weights, source, class_name, k=k)


def run_output_rows(run_dir: str) -> dict:
    """The fine-tuned run's output row per class, read from its saved parameters."""
    return sup.run_output_rows(run_dir, run_classes(run_dir))


def run_metrics(run_id: str) -> list[dict]:
    try:
        return run_store().load(run_id).metrics
    except HotdogError:
        return []


def run_record(run_id: str):
    try:
        return run_store().load(run_id)
    except HotdogError:
        return None


def run_data_root(run_id: str) -> str | None:
    rec = run_record(run_id)
    return rec.config.get("data_root") if rec else None


def run_seconds(summary, rec=None) -> float | None:
    """Wall time of a run: recorded at the end, else the sum of its epochs."""
    rec = rec or run_record(summary.run_id)
    if rec is None:
        return None
    seconds = rec.status.get("seconds")
    if isinstance(seconds, (int, float)):
        return float(seconds)
    total = sum(float(m.get("seconds") or 0) for m in rec.metrics)
    return total or None


def run_classes(run_dir: str) -> list[str]:
    try:
        return list(predictor(run_dir).classes)
    except HotdogError:
        return []


def eval_split(root: str) -> str:
    """The folder evaluate() should read: the test split of a d2l layout, else the whole folder."""
    test = Path(root) / "test"
    return str(test) if test.is_dir() else str(root)


@st.cache_data(show_spinner="Evaluating on the test split…", max_entries=16)
def _evaluation(run_dir: str, stamp: float, split: str, split_stamp: float) -> dict:
    from hotdog.train import evaluate

    return evaluate(run_dir, split, predictor=_predictor(run_dir, stamp)).to_dict()


def evaluation(run_dir: str) -> dict:
    """The run evaluated on the test split of the data set it was trained on."""
    rec = run_store().load(Path(run_dir).name)
    root = rec.config.get("data_root")
    if not root or not Path(root).is_dir():
        raise HotdogError(f"the data set this run was trained on is gone ({root})")
    split = eval_split(root)
    return _evaluation(str(run_dir), _params_stamp(run_dir), split, _stamp(split))


def misclassified_caption(m: dict) -> str:
    p = (m.get("probabilities") or {}).get(m.get("predicted"))
    conf = f" ({p:.2f})" if isinstance(p, (int, float)) else ""
    return f"{Path(str(m.get('path'))).name}\ntrue {m.get('label')} → {m.get('predicted')}{conf}"


@st.cache_data(show_spinner=False, max_entries=512)
def _thumbnail(path: str, stamp: float, size: int, square: bool):
    from PIL import ImageOps

    from hotdog import data

    im = data.decode_image(path)
    if square:
        return ImageOps.fit(im, (size, size))
    im.thumbnail((size, size))
    return im


def thumbnail(path, size: int = 256, square: bool = False):
    """A small decoded copy of a photo on disk, cached (pages redraw on every click)."""
    try:
        stamp = Path(path).stat().st_mtime
    except OSError:
        stamp = 0.0
    return _thumbnail(str(path), stamp, size, square)
