"""Use a trained model elsewhere: export a saved run as an MXNet symbol + params pair or as
ONNX, with a ``preprocess.json`` that lets any runtime reproduce the model's input.

* ``mxnet``: ``HybridBlock.export`` -> ``model-symbol.json`` + ``model-0000.params``, loadable
  with ``mx.gluon.SymbolBlock.imports("model-symbol.json", ["data"], "model-0000.params")``;
  the output is the run's logits.
* ``onnx``: the same graph with a softmax appended, converted by MXNet's own exporter
  (``mx.onnx.export_model``) -> ``model.onnx``; the output is class probabilities, the batch
  dimension is dynamic, the spatial size is fixed at ``crop``. The opset is the ``onnx``
  package's default (19 with the pinned onnx 1.14.1; MXNet translates with its opset-13
  tables). When ``onnxruntime`` is installed the file is checked against MXNet on a random
  input and the largest difference is reported.

``preprocess.json`` (exactly these keys)::

    {"resize": 256, "resize_mode": "squash", "crop": 224, "mean": [r, g, b], "std": [r, g, b],
     "classes": [...], "input": "NCHW float32 RGB", "output": "logits" | "probabilities"}

``resize_mode`` is "squash": the test transform (Gluon ``transforms.Resize(resize)``, whose
``keep_ratio`` is False) resizes both sides to ``resize``, then takes the centre ``crop``;
pixels are scaled to 0..1, then ``(x - mean) / std`` per channel.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from hotdog.errors import ConfigError, HotdogError, ModelError
from hotdog.mxthread import mx_call

log = logging.getLogger(__name__)

FORMATS = ("onnx", "mxnet")
PREPROCESS_FILE = "preprocess.json"
ONNX_FILE = "model.onnx"
MXNET_PREFIX = "model"
INPUT_NAME = "data"
# The preprocessing the test transform applies (hotdog.data.transforms): Resize(int) squashes.
RESIZE_MODE = "squash"


def preprocess_json(pre, classes, output: str) -> dict:
    """The model's input recipe for any runtime (the keys are documented above)."""
    return {"resize": int(pre.resize), "resize_mode": RESIZE_MODE, "crop": int(pre.input_size),
            "mean": [float(v) for v in pre.mean], "std": [float(v) for v in pre.std],
            "classes": [str(c) for c in classes], "input": "NCHW float32 RGB", "output": output}


def onnx_opset() -> int:
    """The opset MXNet's exporter writes: the installed onnx package's default."""
    try:
        from onnx.defs import onnx_opset_version
    except ImportError as err:
        raise ModelError("ONNX export needs the 'onnx' package (pip install -r requirements.txt)") from err
    return int(onnx_opset_version())


def _traced(run_dir: Path):
    """(hybridized plain net that has run once at its input size, model info, Preprocess)."""
    import mxnet as mx

    from hotdog.efficientnet import configure_same_padding
    from hotdog.explain import load_run_net

    net, info, pre = load_run_net(run_dir)
    s = pre.input_size
    example = mx.nd.zeros((1, 3, s, s))
    configure_same_padding(net, example)  # exact static SAME padding at the export size
    net.hybridize()
    net(example).wait_to_read()
    return net, info, pre


def _strip_initializer_inputs(path: Path) -> None:
    """MXNet's exporter lists every weight as a graph input too (runtimes then treat them as
    overridable inputs: onnxruntime warns once per weight and skips constant folding) and
    leaves unused initializers behind; keep the image input and the used weights only."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    used = {name for node in graph.node for name in node.input}
    weights = [t for t in graph.initializer if t.name in used]  # the softmax leaves two unused
    names = {t.name for t in weights}
    inputs = [i for i in graph.input if i.name not in names and i.name not in
              {t.name for t in graph.initializer}]
    del graph.initializer[:]
    graph.initializer.extend(weights)
    del graph.input[:]
    graph.input.extend(inputs)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _export_onnx(net, pre, out: Path) -> dict:
    import mxnet as mx

    opset = onnx_opset()
    s = pre.input_size
    with tempfile.TemporaryDirectory() as tmp:
        net.export(str(Path(tmp) / "m"))
        sym, arg, aux = mx.model.load_checkpoint(str(Path(tmp) / "m"), 0)
    probs = mx.sym.softmax(sym, axis=1)
    path = out / ONNX_FILE
    import mxnet.onnx  # noqa: F401 - registers mx.onnx

    try:
        mx.onnx.export_model(probs, {**arg, **aux}, in_shapes=[(1, 3, s, s)], in_types=[np.float32],
                             onnx_file_path=str(path), dynamic=True, dynamic_input_shapes=[(None, 3, s, s)])
    except ImportError as err:
        raise ModelError("ONNX export needs the 'onnx' package (pip install -r requirements.txt)") from err
    _strip_initializer_inputs(path)
    return {"opset": opset, "files": [ONNX_FILE]}


def _check_onnx(net, pre, path: Path) -> float | None:
    """Largest |probability difference| between onnxruntime and MXNet on two random inputs,
    or None when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import mxnet as mx

    x = np.random.RandomState(0).standard_normal((2, 3, pre.input_size, pre.input_size)).astype(np.float32)
    ref = mx.nd.softmax(net(mx.nd.array(x)), axis=1).asnumpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float(np.abs(got - ref).max())


def export_run(run_dir: str | os.PathLike, fmt: str, out_dir: str | os.PathLike) -> dict:
    """Export a saved run (finished or stopped with weights) into ``out_dir`` (created);
    returns ``{"format", "out", "files", "preprocess", "opset", "max_abs_diff"}``."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    run_dir, out = Path(run_dir), Path(out_dir)

    def work():
        net, info, pre = _traced(run_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise HotdogError(f"cannot create the export folder {out}: {err.strerror or err}") from err
        result = {"format": fmt, "out": str(out), "opset": None, "max_abs_diff": None}
        if fmt == "mxnet":
            net.export(str(out / MXNET_PREFIX))
            files = [f"{MXNET_PREFIX}-symbol.json", f"{MXNET_PREFIX}-0000.params"]
            output = "logits"
        else:
            done = _export_onnx(net, pre, out)
            files, output = done["files"], "probabilities"
            result["opset"] = done["opset"]
            result["max_abs_diff"] = _check_onnx(net, pre, out / ONNX_FILE)
        pre_json = preprocess_json(pre, info["classes"], output)
        (out / PREPROCESS_FILE).write_text(json.dumps(pre_json, indent=2) + "\n", encoding="utf-8")
        result.update(files=files + [PREPROCESS_FILE], preprocess=pre_json)
        return result

    try:
        return mx_call(work)
    except OSError as err:
        raise HotdogError(f"cannot write the export into {out}: {err.strerror or err}") from err


def export_zip(run_dir: str | os.PathLike, fmt: str) -> bytes:
    """The exported files of a run as one zip (for a download button)."""
    tmp = Path(tempfile.mkdtemp(prefix="hotdog-export-"))
    try:
        result = export_run(run_dir, fmt, tmp)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name in result["files"]:
                z.write(tmp / name, arcname=name)
        return buf.getvalue()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_exported_mxnet(out_dir: str | os.PathLike):
    """``SymbolBlock.imports`` of an ``mxnet`` export (the way a user would load it)."""
    import mxnet as mx

    out = Path(out_dir)

    def load():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mx.gluon.SymbolBlock.imports(str(out / f"{MXNET_PREFIX}-symbol.json"), [INPUT_NAME],
                                                str(out / f"{MXNET_PREFIX}-0000.params"))

    return mx_call(load)
