"""Classifying photos: one way for a finished run, the zero-shot ImageNet head and the
pretrained ImageNet classifier, used by the CLI, the app and ``evaluate``.

* :class:`Predictor`: a network + its classes + its preprocessing -> per-class
  probabilities, many photos per batched forward, a bad photo gets its own error.
  ``Predictor.from_run(run_dir)`` loads a finished run; ``Predictor.zero_shot(source, splits)``
  is the source network with a head made of ImageNet rows (no training).
* :func:`classify_photos`: uploaded files -> decoded photo, ImageNet top-5 and (with a
  predictor) the predictor's probabilities, per file.
* :func:`evaluate`: a run on a split folder: accuracy, per-class precision/recall, confusion
  matrix, misclassified photos.

Every forward pass runs on the process-wide MXNet thread (:func:`hotdog.mxthread.mx_call`),
so callers on short-lived threads (Streamlit reruns) neither race nor leak memory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hotdog.errors import DatasetError, HotdogError, ImageDecodeError, RunStoreError
from hotdog.mxthread import mx_call
from hotdog.weights import ParamsFileError, check_params_file, first_line

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """One photo's result: ``probabilities`` per class (in the model's class order) or an
    ``error``; ``top5`` is the ImageNet top-5 when asked for, ``image`` the decoded photo
    when the caller wants to show it."""

    path: str | None
    name: str
    probabilities: dict[str, float] | None = None
    label: str | None = None
    error: str | None = None
    top5: list[dict] | None = None
    image: Any = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        where = self.path if self.path is not None else self.name
        if self.error is not None:
            return {"path": where, "error": self.error}
        d = {"path": where, "probabilities": self.probabilities, "label": self.label}
        if self.top5 is not None:
            d["top5"] = self.top5
        return d


def _fast_inference(net, pre, ctx):
    """MKLDNN-fused copy of ``net`` when it matches the plain one to 1e-4 (about 2x faster
    on a CPU), else the plain network hybridized."""
    import mxnet as mx

    if ctx.device_type == "cpu":
        try:
            from hotdog.inference import fast_inference_block

            # A private RNG: drawing from MXNet's global one would shift a running training's draws.
            rng = np.random.RandomState(0)
            example = mx.nd.array(rng.standard_normal((2, 3, pre.input_size, pre.input_size)), ctx=ctx)
            choice = fast_inference_block(net, example)
            log.debug("predictor: %s (%s)", "fused" if choice.fused else "plain", choice.reason)
            return choice.block
        except Exception as err:  # never let an optimisation break prediction
            log.warning("fused inference unavailable: %s", err)
    net.hybridize(static_alloc=True)
    return net


def run_model_info(run_dir: str | os.PathLike) -> dict:
    """model.json of a finished (or stopped) run, validated by the run store (known source,
    unique class names, sane preprocessing, weights file present): the one record of the
    run's classes. RunStoreError (one sentence) when the run is damaged or has no saved model."""
    from hotdog.runs import load_run_dir

    run_dir = Path(run_dir)
    rec = load_run_dir(run_dir)
    info = rec.model
    if info is None:
        msg = rec.status.get("message")
        raise RunStoreError(f"run {rec.run_id} has no saved model (status {rec.state}"
                            + (f": {msg}" if msg else "") + ")")
    return info


class Predictor:
    """A network with its classes and test preprocessing, ready to classify photos.
    Thread-safe: every forward runs on the one MXNet thread."""

    MAX_BATCH = 32

    def __init__(self, net, classes: Sequence[str], preprocess, source: str, ctx=None, run_dir=None):
        import mxnet as mx

        from hotdog.data import test_transform

        self.net = net
        self.classes = list(classes)
        self.preprocess = preprocess
        self.source = source
        self.ctx = ctx or mx.cpu()
        self.run_dir = Path(run_dir) if run_dir else None
        self._transform = test_transform(preprocess)
        self._lock = threading.Lock()

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, ctx=None) -> "Predictor":
        return mx_call(cls._from_run, Path(run_dir), ctx)

    @classmethod
    def _from_run(cls, run_dir: Path, ctx=None) -> "Predictor":
        import mxnet as mx

        from hotdog import models
        from hotdog.data import Preprocess
        from hotdog.errors import ModelError
        from hotdog.runs import PARAMS_FILE
        from hotdog.weights import load_params_file

        info = run_model_info(run_dir)
        classes = info["classes"]
        ctx = ctx or mx.cpu()
        try:
            pre = Preprocess(**{k: info["preprocess"][k] for k in ("input_size", "resize", "mean", "std")})
            # The scratch architecture equals the fine-tune one and needs no pretrained weights.
            net = models.build_scratch(info["source"], len(classes), ctx=[ctx])
        except (ModelError, ValueError, TypeError) as err:
            raise RunStoreError(f"cannot rebuild the model of run {run_dir.name}: {first_line(err)}") from err
        try:
            load_params_file(net, run_dir / PARAMS_FILE, ctx=ctx)
        except ParamsFileError as err:
            raise RunStoreError(f"cannot load the weights of run {run_dir.name}: {err.reason}") from err
        except ModelError as err:
            raise RunStoreError(f"cannot load the weights of run {run_dir.name}: {first_line(err)}") from err
        return cls(_fast_inference(net, pre, ctx), classes, pre, info["source"], ctx, run_dir)

    @classmethod
    def zero_shot(cls, source: str, classes: Sequence[str], train_items=None, per_class: int = 32) -> "Predictor":
        """The source network with a head of ImageNet rows ('hotdog' = row 934, 'not-hotdog'
        its negative fitted on up to ``per_class`` training photos per class): no training."""
        from hotdog import models
        from hotdog.hybrid import hybridize_for_inference

        def build():
            net = models.build_finetune(source, len(classes), init_output_from_imagenet=True,
                                        class_names=list(classes),
                                        init_items=first_per_class(train_items or [], per_class) or None)
            hybridize_for_inference(net)
            return net

        return cls(mx_call(build), classes, models.get_spec(source).preprocess, source)

    def _load(self, src) -> Any:
        from hotdog.data import decode_image

        return self._transform(decode_image(src, min_side=self.preprocess.resize))

    def predict(self, sources: Sequence[bytes | str | os.PathLike], names: Sequence[str] | None = None) -> list[Prediction]:
        """Per-class probabilities for every source (path or bytes), in order; a photo that
        cannot be decoded gets ``error`` set and the others are still predicted."""
        return mx_call(self._predict, list(sources), names)

    def predict_images(self, images: Sequence) -> list[dict[str, float]]:
        """Per-class probabilities of already decoded PIL images."""
        return mx_call(lambda: [self._probs_dict(p) for p in self._forward([self._transform(im) for im in images])])

    def _probs_dict(self, p) -> dict[str, float]:
        return {c: float(v) for c, v in zip(self.classes, p)}

    def _forward(self, tensors: list) -> np.ndarray:
        """Softmax probabilities, MAX_BATCH photos per forward."""
        import mxnet as mx

        out = []
        for start in range(0, len(tensors), self.MAX_BATCH):
            X = mx.nd.stack(*tensors[start:start + self.MAX_BATCH]).as_in_context(self.ctx)
            with self._lock:
                out.append(mx.nd.softmax(self.net(X), axis=1).asnumpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def _predict(self, sources, names) -> list[Prediction]:
        results: list[Prediction] = []
        tensors, slots = [], []
        for i, src in enumerate(sources):
            path, name = source_names(sources, names, i)
            is_bytes = path is None
            pred = Prediction(path=path, name=name)
            try:
                tensors.append(self._load(bytes(src) if is_bytes else src))
                slots.append(i)
            except ImageDecodeError as err:
                pred.error = str(err)
            except Exception as err:  # a transform failing on an odd image must not sink the batch
                pred.error = f"cannot process this image: {err}"
            results.append(pred)
        for slot, p in zip(slots, self._forward(tensors)):
            results[slot].probabilities = self._probs_dict(p)
            results[slot].label = self.classes[int(np.argmax(p))]
        return results


def source_names(sources: Sequence, names: Sequence[str] | None, i: int) -> tuple[str | None, str]:
    """(path, display name) of ``sources[i]``: a path names itself, bytes are "image N"
    unless ``names`` says otherwise. Bytes have no path (None)."""
    src = sources[i]
    is_bytes = isinstance(src, (bytes, bytearray, memoryview))
    given = names[i] if names is not None and i < len(names) else None
    return (None if is_bytes else str(src)), given or (f"image {i + 1}" if is_bytes else Path(str(src)).name)


def first_per_class(items: Sequence[tuple[Any, int]], per_class: int) -> list[tuple[Any, int]]:
    """The first ``per_class`` items of each label (enough to fit a zero-shot bias quickly)."""
    seen: dict[int, int] = {}
    out = []
    for path, label in items:
        if seen.get(label, 0) < per_class:
            seen[label] = seen.get(label, 0) + 1
            out.append((path, label))
    return out


# Uploaded photos are decoded straight to this shorter side: enough for every source
# network's preprocessing (resize 256-320, crop 224-300) and for showing the photo on the
# page, and a 64-megapixel upload then costs ~1 MB to keep instead of ~190 MB.
DISPLAY_MIN_SIDE = 512


def classify_photos(files: Sequence[tuple[str, bytes]], source: str, predictor: Predictor | None = None,
                    top_k: int = 5) -> list[Prediction]:
    """Uploaded files -> one Prediction each (decoded image kept for display, shorter side
    at most ``DISPLAY_MIN_SIDE``). Every photo gets the source's ImageNet top-k; with
    ``predictor`` its probabilities are the predictor's, else the top-k themselves. One bad
    file never spoils the others; a request over the budget (``hotdog.data.check_request_budget``:
    photo count, total pixels from the headers) is refused whole with ``RequestBudgetError``
    before anything is decoded."""
    from hotdog import data, models

    files = list(files)
    data.check_request_budget(files)
    results = [Prediction(path=None, name=str(name)) for name, _ in files]
    good: list[int] = []
    for i, (_, raw) in enumerate(files):
        try:
            results[i].image = data.decode_image(raw, min_side=DISPLAY_MIN_SIDE)
            good.append(i)
        except HotdogError as err:
            results[i].error = str(err)
    if not good:
        return results
    images = [results[i].image for i in good]
    try:
        tops = mx_call(models.imagenet_topk, source, images, k=top_k)
        probs = predictor.predict_images(images) if predictor is not None else \
            [{d["name"]: d["probability"] for d in t} for t in tops]
    except HotdogError as err:
        for i in good:
            results[i].error = str(err)
        return results
    for i, top, p in zip(good, tops, probs):
        results[i].top5, results[i].probabilities = top, p
        results[i].label = max(p, key=p.get) if p else None
    return results


def run_output_rows(run_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Each class's row of a saved run's output layer, read from its ``.params`` file
    (``mx.nd.load`` reads plain tensors only, no pickle)."""
    from hotdog.runs import PARAMS_FILE

    run_dir = Path(run_dir)
    classes = run_model_info(run_dir)["classes"]

    def load():
        import mxnet as mx

        check_params_file(run_dir / PARAMS_FILE)  # before MXNet allocates what a damaged header claims
        return {k: v.asnumpy() for k, v in mx.nd.load(str(run_dir / PARAMS_FILE)).items()
                if k.endswith("output.weight")}

    try:
        found = mx_call(load)
    except ParamsFileError as err:
        raise RunStoreError(f"cannot read the weights of run {run_dir.name}: {err.reason}") from err
    except Exception as err:  # a corrupt file is the user's to know about, not a crash
        raise RunStoreError(f"cannot read the weights of run {run_dir.name}: the file is corrupted or "
                            f"truncated ({first_line(err, hide=run_dir / PARAMS_FILE)})") from err
    if len(found) != 1:
        raise RunStoreError(f"run {run_dir.name}: no single output layer in {PARAMS_FILE}")
    w = next(iter(found.values()))
    if len(w) != len(classes):
        raise RunStoreError(f"run {run_dir.name}: its weights have {len(w)} output rows for {len(classes)} classes")
    return {c: w[i] for i, c in enumerate(classes)}


# ------------------------------------------------------------------------------ evaluation

@dataclass
class EvalReport:
    accuracy: float
    n: int
    classes: list[str]
    per_class: dict[str, dict]
    confusion: list[list[int]]
    misclassified: list[dict]
    skipped: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def split_items(split_dir: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    """(path, label) of every image in ``split_dir/<class>/`` (a d2l root: its ``test/``);
    what counts as an image is the data set's own rule (content, not extension)."""
    from hotdog.data import list_images

    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir.name or split_dir} is not a folder")
    subdirs = {p.name: p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if not set(subdirs) & set(classes) and (split_dir / "test").is_dir():
        return split_items(split_dir / "test", classes)
    unknown = sorted(set(subdirs) - set(classes))
    if unknown:
        raise DatasetError(f"{split_dir.name} has folders that are not classes of this run: {', '.join(unknown)} "
                           f"(the run knows {', '.join(classes)})")
    items = [(p, label) for label, c in enumerate(classes) if c in subdirs for p in list_images(subdirs[c])]
    if not items:
        raise DatasetError(f"no images found in {split_dir.name} (expected one folder per class: {', '.join(classes)})")
    return items


def evaluate(run_dir: str | os.PathLike, split_dir: str | os.PathLike, predictor: Predictor | None = None) -> EvalReport:
    """A saved run on a folder with one sub-folder per class."""
    predictor = predictor or Predictor.from_run(run_dir)
    classes = predictor.classes
    items = split_items(Path(split_dir), classes)
    preds = predictor.predict([p for p, _ in items])
    k = len(classes)
    confusion = np.zeros((k, k), dtype=int)
    mis, skipped = [], []
    for (path, label), pred in zip(items, preds):
        if pred.error:
            skipped.append({"path": str(path), "reason": pred.error})
            continue
        guess = classes.index(pred.label)
        confusion[label, guess] += 1
        if guess != label:
            mis.append({"path": str(path), "label": classes[label], "predicted": pred.label,
                        "probabilities": pred.probabilities})
    n = int(confusion.sum())
    per_class = {}
    for i, c in enumerate(classes):
        tp = int(confusion[i, i])
        col, row = int(confusion[:, i].sum()), int(confusion[i, :].sum())
        per_class[c] = {"precision": tp / col if col else 0.0, "recall": tp / row if row else 0.0,
                        "support": row}
    return EvalReport(accuracy=float(np.trace(confusion)) / n if n else 0.0, n=n, classes=list(classes),
                      per_class=per_class, confusion=confusion.tolist(), misclassified=mis, skipped=skipped)
