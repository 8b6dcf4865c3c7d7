"""Why did it say hot dog: Grad-CAM heatmaps, per-dimension contributions to a class score,
and an honest check that the heatmaps mean something.

* :class:`Explainer`: a *plain* (never fused) network with its classes and preprocessing.
  ``Explainer.from_run(run_dir)``, ``Explainer.imagenet(source)`` (the pretrained 1000-way
  classifier) and ``Explainer.zero_shot(source, classes, train_items)`` (the ImageNet-row
  head). Fused MKLDNN inference copies cannot give gradients, so explain never borrows the
  Predictor's network for a run: it rebuilds the architecture and loads ``model.params``.
* :meth:`Explainer.explain`: Grad-CAM (Selvaraju et al. 2017) per photo: the gradients of the
  chosen class's logit w.r.t. the last convolutional feature map (the input of the global
  pooling layer, found structurally in ``.features``), averaged per channel, weigh the
  channels; ReLU; upsampled to the photo and overlaid. A bad photo gets its own error.
* :meth:`Explainer.contributions`: the class row's weights times the photo's pooled
  features: which feature dimensions drive the class score.
* :func:`deletion_check`: blank the pixels the heatmap ranks highest vs. random pixels and
  compare how much the class probability drops.

Every forward runs on the process-wide MXNet thread (:func:`hotdog.mxthread.mx_call`).
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from hotdog.errors import HotdogError, ModelError, RunStoreError
from hotdog.mxthread import mx_call
from hotdog.predict import first_per_class, run_model_info, source_names

POOL_TYPES = ("GlobalAvgPool2D", "GlobalMaxPool2D")


# ------------------------------------------------------------------------------ networks

def load_run_net(run_dir: str | os.PathLike, ctx=None):
    """(plain network, model info, Preprocess) of a saved run; RunStoreError when it has no
    saved model or its weights cannot be loaded. Call on the MXNet thread."""
    import mxnet as mx

    from hotdog import models
    from hotdog.runs import PARAMS_FILE
    from hotdog.weights import load_params_file

    run_dir = Path(run_dir)
    info = run_model_info(run_dir)
    ctx = ctx or mx.cpu()
    net = models.build_scratch(info["source"], len(info["classes"]), ctx=[ctx])
    try:
        load_params_file(net, run_dir / PARAMS_FILE, ctx=ctx)
    except ModelError as err:
        raise RunStoreError(f"cannot load the weights of run {run_dir.name}: {err}") from err
    return net, info, preprocess_of(info)


def preprocess_of(info: dict):
    from hotdog.data import Preprocess

    return Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in info["preprocess"].items()})


def _imagenet_net(source: str, params_path=None):
    """A private copy of the pretrained 1000-way classifier (the shared cached source is for
    forward passes under its lock only; explain needs its own for gradients)."""
    import mxnet as mx

    from hotdog import models

    net = models.build_finetune(source, 1000, params_path=params_path)
    w, b = models.output_layer(source, params_path)
    net.output.weight.set_data(mx.nd.array(w))
    net.output.bias.set_data(mx.nd.array(b))
    return net


def split_at_pooling(net) -> tuple[list, list]:
    """(blocks before the global pooling, the pooling and what follows) of ``net.features``.
    The pooling layer is found by type, not by index, so any ``.features`` ending in global
    pooling + flatten works (efficientnet_lite0, resnet18_v2)."""
    children = list(net.features._children.values())
    for i, b in enumerate(children):
        if type(b).__name__ in POOL_TYPES:
            return children[:i], children[i:]
    raise ModelError(f"{type(net).__name__}: no global pooling layer in .features, cannot find the last feature map")


# ------------------------------------------------------------------------------ results

@dataclass
class Explanation:
    """One photo's Grad-CAM: the explained ``class_name`` and its ``probability``, the
    ``heatmap`` (H x W in 0..1, over ``image``, the photo as decoded for the model),
    ``overlay`` (heatmap blended over ``image``), ``peak`` (x, y) in the original photo's
    pixels (None when the heatmap is all zero), or ``error``."""

    path: str | None
    name: str
    class_name: str | None = None
    probability: float | None = None
    probabilities: dict[str, float] | None = None
    heatmap: np.ndarray | None = field(default=None, repr=False)
    overlay: Any = field(default=None, repr=False)
    image: Any = field(default=None, repr=False)
    peak: tuple[int, int] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self, heatmap_png: str | None = None) -> dict:
        where = self.path if self.path is not None else self.name
        if self.error is not None:
            return {"path": where, "error": self.error}
        return {"path": where, "class": self.class_name, "probability": self.probability,
                "heatmap_png": heatmap_png, "peak": list(self.peak) if self.peak else None}

    def png_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.overlay.save(buf, format="PNG")
        return buf.getvalue()


# ------------------------------------------------------------------------------ the explainer

class Explainer:
    """A plain network with its classes and test preprocessing; Grad-CAM and contributions.
    Thread-safe: every forward runs on the one MXNet thread."""

    def __init__(self, net, classes: Sequence[str], preprocess, source: str, kind: str, run_dir=None,
                 imagenet_names: bool = False):
        from hotdog.data import test_transform

        self.net = net
        self.classes = list(classes)
        self.preprocess = preprocess
        self.source = source
        self.kind = kind  # "run" | "imagenet" | "zero_shot"
        self.run_dir = Path(run_dir) if run_dir else None
        self._imagenet_names = imagenet_names
        self._transform = test_transform(preprocess)
        self._lock = threading.Lock()
        self.body, self.head = split_at_pooling(net)
        # Gradients are wanted w.r.t. the feature map only, never the weights.
        net.collect_params().setattr("grad_req", "null")

    # -- constructors
    @classmethod
    def from_run(cls, run_dir: str | os.PathLike) -> "Explainer":
        def build():
            net, info, pre = load_run_net(run_dir)
            return cls(net, info["classes"], pre, info["source"], "run", run_dir)

        return mx_call(build)

    @classmethod
    def imagenet(cls, source: str, params_path=None) -> "Explainer":
        from hotdog import imagenet, models

        spec = models.get_spec(source)
        net = mx_call(_imagenet_net, source, params_path)
        return cls(net, imagenet.class_names(), spec.preprocess, source, "imagenet", imagenet_names=True)

    @classmethod
    def zero_shot(cls, source: str, classes: Sequence[str], train_items=None, per_class: int = 32) -> "Explainer":
        """The zero-shot head of :meth:`hotdog.predict.Predictor.zero_shot`, as a plain net."""
        from hotdog import models

        def build():
            return models.build_finetune(source, len(classes), init_output_from_imagenet=True,
                                         class_names=list(classes),
                                         init_items=first_per_class(train_items or [], per_class) or None)

        return cls(mx_call(build), classes, models.get_spec(source).preprocess, source, "zero_shot")

    # -- class names
    def class_index(self, name: str | int) -> int:
        """Position of a class in the output; ImageNet names are forgiving ('Hot Dog', '934'),
        a run's must match one of its classes (case and separators ignored)."""
        if self._imagenet_names:
            from hotdog import imagenet

            return imagenet.class_index(name)
        text = str(name).strip()
        if text in self.classes:
            return self.classes.index(text)
        key = _squash_name(text)
        matches = [i for i, c in enumerate(self.classes) if _squash_name(c) == key]
        if len(matches) == 1:
            return matches[0]
        raise ModelError(f"unknown class {text!r}: this model's classes are {', '.join(self.classes)}")

    def class_label(self, i: int) -> str:
        if self._imagenet_names:
            from hotdog import imagenet

            return imagenet.short_name(i)
        return self.classes[i]

    # -- forward pieces (MXNet thread only)
    def _tensor(self, image):
        return self._transform(image)

    def _feature_map(self, X):
        from hotdog.efficientnet import configure_same_padding

        configure_same_padding(self.net, X)  # static SAME padding for this size (no-op on ResNet)
        A = X
        for b in self.body:
            A = b(A)
        return A

    def _head(self, A):
        for b in self.head:
            A = b(A)
        return self.net.output(A)

    def _gradcam(self, X, class_idx: int | None):
        """(cam (N, h, w) >= 0, probabilities (N, C), explained class per photo)."""
        import mxnet as mx
        from mxnet import autograd

        with self._lock:
            A = self._feature_map(X)
            A.attach_grad()
            with autograd.record(train_mode=False):
                z = self._head(A)
            probs = mx.nd.softmax(z, axis=1).asnumpy()
            idx = np.argmax(probs, axis=1) if class_idx is None else np.full(len(probs), class_idx)
            onehot = mx.nd.one_hot(mx.nd.array(idx, ctx=X.context), z.shape[1])
            z.backward(onehot)  # d(sum_i z[i, idx_i]) / dA: each photo's own class score
            grads, fmap = A.grad.asnumpy(), A.asnumpy()
        alpha = grads.mean(axis=(2, 3), keepdims=True)
        cam = np.maximum((alpha * fmap).sum(axis=1), 0.0)
        return cam, probs, idx

    def _input_heat(self, cam: np.ndarray) -> np.ndarray:
        """A cam upsampled (bilinear) to the model input, normalised to 0..1."""
        s = self.preprocess.input_size
        return _normalise(_resize_float(cam, (s, s)))

    # -- public
    def explain(self, sources: Sequence[bytes | str | os.PathLike], names: Sequence[str] | None = None,
                class_name: str | int | None = None) -> list[Explanation]:
        """Grad-CAM of every source (path or bytes) for ``class_name`` (default: each photo's
        predicted class). An unknown class name raises before any photo is read; a photo that
        cannot be decoded gets ``error`` and the others are still explained."""
        class_idx = None if class_name is None else self.class_index(class_name)
        return mx_call(self._explain, list(sources), names, class_idx)

    def explain_images(self, images: Sequence, class_name: str | int | None = None) -> list[Explanation]:
        """Grad-CAM of already decoded PIL images (e.g. the Predict page's uploads)."""
        class_idx = None if class_name is None else self.class_index(class_name)
        exps = [Explanation(path=None, name=f"image {i + 1}", image=im) for i, im in enumerate(images)]
        return mx_call(self._fill, exps, [(im, im.size) for im in images], class_idx)

    def _explain(self, sources, names, class_idx) -> list[Explanation]:
        from hotdog.data import decode_image

        exps, loaded = [], []
        for i, src in enumerate(sources):
            path, name = source_names(sources, names, i)
            is_bytes = path is None
            e = Explanation(path=path, name=name)
            exps.append(e)
            try:
                # Decoded exactly as Predictor decodes, so the probabilities are predict's.
                e.image = decode_image(bytes(src) if is_bytes else src, min_side=self.preprocess.resize)
                loaded.append((e, _upright_size(bytes(src) if is_bytes else src) or e.image.size))
            except HotdogError as err:  # ImageDecodeError: missing, empty, corrupt, not an image
                e.error = str(err)
        good = [e for e, _ in loaded]
        self._fill(good, [(e.image, size) for e, size in loaded], class_idx)
        return exps

    def _fill(self, exps, images_sizes, class_idx) -> list[Explanation]:
        import mxnet as mx

        tensors, slots = [], []
        for e, (im, _) in zip(exps, images_sizes):
            try:
                tensors.append(self._tensor(im))
                slots.append(e)
            except Exception as err:  # a transform failing on an odd image must not sink the batch
                e.error = f"cannot process this image: {err}"
        sizes = {id(e): size for e, (_, size) in zip(exps, images_sizes)}
        for start in range(0, len(tensors), 16):
            X = mx.nd.stack(*tensors[start:start + 16])
            cam, probs, idx = self._gradcam(X, class_idx)
            for k, e in enumerate(slots[start:start + 16]):
                heat = _photo_heat(cam[k], e.image.size, self.preprocess)
                e.class_name = self.class_label(int(idx[k]))
                e.probability = float(probs[k, idx[k]])
                if not self._imagenet_names:
                    e.probabilities = {c: float(p) for c, p in zip(self.classes, probs[k])}
                e.heatmap = heat
                e.overlay = overlay(e.image, heat)
                e.peak = _peak(heat, sizes[id(e)])
        return exps

    def contributions(self, image, class_name: str | int = "hotdog", k: int = 15) -> dict:
        """What drives one class's score for one photo: the class row's weights times the
        photo's pooled features. ``score = bias + sum(contribution)``; the top ``k``
        dimensions by absolute contribution, largest first."""
        idx = self.class_index(class_name)

        def work():
            import mxnet as mx

            X = mx.nd.stack(self._tensor(image))
            with self._lock:
                A = self._feature_map(X)
                f = A
                for b in self.head:
                    f = b(f)
                feats = f.asnumpy()[0]
                w = self.net.output.weight.data().asnumpy()[idx]
                b_ = float(self.net.output.bias.data().asnumpy()[idx])
            return feats, w, b_

        feats, w, bias = mx_call(work)
        contrib = w * feats
        top = np.argsort(-np.abs(contrib), kind="stable")[:max(0, int(k))]
        return {
            "class": self.class_label(idx), "score": float(contrib.sum() + bias), "bias": bias,
            "positive": float(contrib[contrib > 0].sum()), "negative": float(contrib[contrib < 0].sum()),
            "dimensions": [{"dimension": int(d), "weight": float(w[d]), "feature": float(feats[d]),
                            "contribution": float(contrib[d])} for d in top],
        }


def _squash_name(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


# ------------------------------------------------------------------------------ heatmap geometry & drawing

def _resize_float(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D float array to ``size`` = (width, height)."""
    im = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    return np.asarray(im.resize(size, Image.BILINEAR), dtype=np.float32)


def _normalise(a: np.ndarray) -> np.ndarray:
    a = np.maximum(a, 0.0)
    top = float(a.max()) if a.size else 0.0
    return a / top if top > 0 else np.zeros_like(a)


def _photo_heat(cam: np.ndarray, photo_size: tuple[int, int], pre) -> np.ndarray:
    """A cam over the model input, placed on the photo. The test transform squashes the photo
    to resize x resize and takes the centre input_size crop, so the crop covers the central
    input_size/resize of each axis; outside it the model saw nothing (heat 0)."""
    w, h = photo_size
    frac = min(1.0, pre.input_size / pre.resize)
    cw, ch = max(1, int(round(w * frac))), max(1, int(round(h * frac)))
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    heat = np.zeros((h, w), np.float32)
    heat[y0:y0 + ch, x0:x0 + cw] = _normalise(_resize_float(cam, (cw, ch)))
    return heat


def _peak(heat: np.ndarray, original_size: tuple[int, int]) -> tuple[int, int] | None:
    """(x, y) of the hottest pixel in the original photo's pixels; None when the heatmap is
    all zero (no positive evidence for the class anywhere: Grad-CAM's ReLU removed it all)."""
    if not heat.size or float(heat.max()) <= 0:
        return None
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    (ow, oh), (h, w) = original_size, heat.shape
    return int(min(ow - 1, (x + 0.5) * ow / w)), int(min(oh - 1, (y + 0.5) * oh / h))


def _upright_size(src: bytes | str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) of the photo as shown (EXIF orientation applied), read from its header."""
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - the decoder reports bad files; this is a hint only
        return None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


# A perceptual colormap (inferno's anchors), interpolated to 256 entries.
_ANCHORS = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                     [245, 125, 21], [250, 193, 39], [252, 255, 164]], np.float32)
COLORMAP = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c])
                     for c in range(3)], axis=1).astype(np.uint8)


def overlay(image, heat: np.ndarray, strength: float = 0.6) -> Image.Image:
    """The heatmap (0..1, same size as ``image``) coloured and blended over the photo: the
    hotter a pixel, the more of the colour shows."""
    photo = np.asarray(image.convert("RGB"), np.float32)
    colour = COLORMAP[np.clip((heat * 255).round(), 0, 255).astype(np.uint8)].astype(np.float32)
    a = (strength * np.sqrt(np.clip(heat, 0, 1)))[..., None]
    return Image.fromarray((photo * (1 - a) + colour * a).round().clip(0, 255).astype(np.uint8))


# ------------------------------------------------------------------------------ the deletion check

@dataclass
class DeletionReport:
    """Mean drop of the class probability when the heatmap's top ``fraction`` of input pixels
    are blanked vs. a random ``fraction`` of pixels; ``ratio`` = heatmap drop / random drop.
    Also: a random square of the same area (``*_block``: contiguous, as a heatmap's hot region
    is, without the salt-and-pepper pattern of scattered pixels), ``mean_drop_coldest`` (the
    ``fraction`` the heatmap ranks lowest) and ``heatmap_wins``, the share of photos whose
    heatmap drop beats their random-pixel drop."""

    class_name: str
    fraction: float
    n: int
    mean_probability: float
    mean_drop_heatmap: float
    mean_drop_random: float
    ratio: float
    mean_drop_block: float = float("nan")
    ratio_block: float = float("nan")
    mean_drop_coldest: float = float("nan")
    heatmap_wins: float = float("nan")
    per_photo: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def deletion_check(explainer: Explainer, paths: Sequence[str | os.PathLike], class_name: str = "hotdog",
                   fraction: float = 0.2, seed: int = 0) -> DeletionReport:
    """On each photo: the class probability as is, with the ``fraction`` of model-input pixels
    the Grad-CAM heatmap ranks highest blanked, and with a random ``fraction`` blanked.
    Blanked = 0 after normalisation (the preprocessing's mean colour), all three channels.
    Ties in the heatmap (e.g. zero heat) are broken at random."""
    if not 0 < fraction < 1:
        raise ValueError("fraction must be between 0 and 1")
    idx = explainer.class_index(class_name)

    def work():
        import mxnet as mx

        from hotdog.data import decode_image

        rng = np.random.RandomState(seed)
        rows = []
        for p in paths:
            image = decode_image(p, min_side=explainer.preprocess.resize)
            x = explainer._tensor(image)
            cam, probs, _ = explainer._gradcam(mx.nd.stack(x), idx)
            heat = explainer._input_heat(cam[0])
            s = heat.size
            k = int(round(fraction * s))
            order = np.lexsort((rng.random_sample(s), -heat.ravel()))  # by heat, ties at random
            top, coldest = order[:k], order[::-1][:k]
            rand = rng.choice(s, size=k, replace=False)
            side = heat.shape[0]
            b = max(1, min(side, int(round(np.sqrt(fraction) * side))))
            y0, x0 = rng.randint(0, side - b + 1, size=2)
            block = (np.arange(y0, y0 + b)[:, None] * side + np.arange(x0, x0 + b)[None, :]).ravel()
            batch = []
            for chosen in (top, rand, block, coldest):
                mask = np.ones(s, np.float32)
                mask[chosen] = 0.0
                batch.append(x * mx.nd.array(mask.reshape(1, *heat.shape)))
            with explainer._lock:
                z = explainer.net(mx.nd.stack(*batch))
            p_del = mx.nd.softmax(z, axis=1).asnumpy()[:, idx]
            p0 = float(probs[0, idx])
            rows.append({"path": str(p), "probability": p0, "heatmap_blanked": float(p_del[0]),
                         "random_blanked": float(p_del[1]), "block_blanked": float(p_del[2]),
                         "coldest_blanked": float(p_del[3])})
        return rows

    rows = mx_call(work)
    if not rows:
        raise HotdogError("no photos to check")
    d_heat = float(np.mean([r["probability"] - r["heatmap_blanked"] for r in rows]))
    d_rand = float(np.mean([r["probability"] - r["random_blanked"] for r in rows]))
    d_block = float(np.mean([r["probability"] - r["block_blanked"] for r in rows]))

    def ratio(a, b):
        return a / b if b > 0 else float("inf") if a > 0 else float("nan")

    return DeletionReport(class_name=explainer.class_label(idx), fraction=fraction, n=len(rows),
                          mean_probability=float(np.mean([r["probability"] for r in rows])),
                          mean_drop_heatmap=d_heat, mean_drop_random=d_rand, ratio=ratio(d_heat, d_rand),
                          mean_drop_block=d_block, ratio_block=ratio(d_heat, d_block),
                          mean_drop_coldest=float(np.mean([r["probability"] - r["coldest_blanked"] for r in rows])),
                          heatmap_wins=float(np.mean([r["heatmap_blanked"] < r["random_blanked"] for r in rows])),
                          per_photo=rows)
