"""``explain`` (Grad-CAM heatmaps of photos) and ``export`` (a run as MXNet or ONNX files)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hotdog.commands._common import add_json_flag, emit_json, print_per_photo
from hotdog.errors import HotdogError

EXIT_USAGE = 2


def register(sub) -> None:
    e = sub.add_parser(
        "explain", help="Grad-CAM heatmaps: where in each photo the model looked",
        description="Grad-CAM of each photo for a class (default: the predicted one): gradients of the "
                    "class score w.r.t. the last convolutional feature map, upsampled and overlaid on the "
                    "photo, written as PNG. Exit status: 0 all explained, 1 some images failed, 2 usage error.")
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="run folder (or run id in the run store)")
    which.add_argument("--imagenet", action="store_true", help="the pretrained ImageNet classifier of --source")
    which.add_argument("--zero-shot", metavar="DATA", dest="zero_shot",
                       help="the zero-shot ImageNet head for the classes of data set DATA")
    e.add_argument("images", nargs="+", metavar="IMAGE")
    e.add_argument("--class", dest="class_name", default=None,
                   help="class to explain (default: each photo's predicted class)")
    e.add_argument("--out", default="explain-out", help="folder for the heatmap PNGs (default ./explain-out)")
    e.add_argument("--source", default="efficientnet_lite0", help="source model for --imagenet / --zero-shot")
    e.add_argument("--runs-dir", default=None)
    add_json_flag(e)
    e.set_defaults(func=cmd_explain)

    x = sub.add_parser(
        "export", help="export a saved run as ONNX or MXNet files (+ preprocess.json)",
        description="Write the run's network and preprocess.json (resize, crop, mean/std, classes) into "
                    "--out. onnx: model.onnx (output: probabilities, dynamic batch); mxnet: "
                    "model-symbol.json + model-0000.params for SymbolBlock.imports (output: logits).")
    x.add_argument("--run", required=True, help="run folder (or run id in the run store)")
    x.add_argument("--format", required=True, choices=("onnx", "mxnet"))
    x.add_argument("--out", required=True, help="folder to write into (created)")
    x.add_argument("--runs-dir", default=None)
    add_json_flag(x)
    x.set_defaults(func=cmd_export)


def _fail(args, err: BaseException) -> int:
    print(f"error: {err}", file=sys.stderr)
    if args.json:
        emit_json({"error": str(err)})
    return EXIT_USAGE


def _explainer(args):
    from hotdog.commands.train import _resolve_run
    from hotdog.explain import Explainer

    if args.run:
        return Explainer.from_run(_resolve_run(args.run, args.runs_dir))
    if args.imagenet:
        return Explainer.imagenet(args.source)
    from hotdog.data import load_splits

    splits = load_splits(args.zero_shot)
    return Explainer.zero_shot(args.source, splits.classes, splits.train)


def _png_names(results) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for r in results:
        stem = Path(r.name).stem or "image"
        n = seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}-heatmap.png" if n == 1 else f"{stem}-{n}-heatmap.png")
    return names


def cmd_explain(args: argparse.Namespace) -> int:
    try:
        explainer = _explainer(args)
        if args.class_name is not None:
            explainer.class_index(args.class_name)  # an unknown class is a usage error, before any photo
        results = explainer.explain(args.images, class_name=args.class_name)
        out = Path(args.out)
        if any(r.ok for r in results):
            out.mkdir(parents=True, exist_ok=True)
    except (HotdogError, OSError) as err:
        return _fail(args, err)
    docs = []
    for r, name in zip(results, _png_names(results)):
        if not r.ok:
            docs.append(r.to_dict())
            continue
        png = out / name
        r.overlay.save(png)
        docs.append(r.to_dict(heatmap_png=str(png)))
    if args.json:
        emit_json(docs)
    else:
        print_per_photo(docs, lambda d: f"{d['path']}: {d['class']} ({d['probability']:.3f}), peak at "
                                        f"x={d['peak'][0]} y={d['peak'][1]} -> {d['heatmap_png']}")
    return 0 if all(r.ok for r in results) else 1


def cmd_export(args: argparse.Namespace) -> int:
    from hotdog.commands.train import _resolve_run
    from hotdog.export import export_run

    try:
        result = export_run(_resolve_run(args.run, args.runs_dir), args.format, args.out)
    except HotdogError as err:
        return _fail(args, err)
    if args.json:
        emit_json(result)
        return 0
    print(f"exported {args.format} into {result['out']}: {', '.join(result['files'])}")
    if result.get("opset"):
        print(f"ONNX opset {result['opset']}; output: class probabilities; input: "
              f"N x 3 x {result['preprocess']['crop']} x {result['preprocess']['crop']} float32")
    if result.get("max_abs_diff") is not None:
        print(f"checked with onnxruntime: largest probability difference to MXNet {result['max_abs_diff']:.2e}")
    return 0
