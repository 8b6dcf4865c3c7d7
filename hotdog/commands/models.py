"""``python -m hotdog classify|imagenet|sources``: look at the pretrained source models."""

from __future__ import annotations

import argparse
import sys

from hotdog.commands._common import add_json_flag, emit_json, print_per_photo


def _add_source_args(p) -> None:
    p.add_argument("--source", default="efficientnet_lite0",
                   help="source model (default: efficientnet_lite0, offline); see `sources`")
    p.add_argument("--params", metavar="FILE",
                   help="local .params file for resnet18_v2 (else $HOTDOG_RESNET18_PARAMS, else download)")


def register(sub) -> None:
    c = sub.add_parser("classify", help="top-5 ImageNet classes of photos with a source model",
                       description="Run photos through a pretrained source model and print the "
                                   "top-5 ImageNet classes of each (one batched forward pass).")
    c.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    c.add_argument("-k", "--top", type=int, default=5, help="how many classes per image (default 5)")
    _add_source_args(c)
    add_json_flag(c)
    c.set_defaults(func=cmd_classify)

    i = sub.add_parser("imagenet", help="an ImageNet class's output-layer row (e.g. the hot dog weights)",
                       description="Show the output-layer row of an ImageNet class (the chapter's "
                                   "hotdog_w): norm, bias, statistics and the nearest classes by cosine.")
    i.add_argument("--class", dest="class_name", default="hotdog",
                   help="ImageNet class name or index (default: hotdog; case and aliases are tolerated)")
    i.add_argument("-k", "--nearest", type=int, default=10, help="how many nearest classes (default 10)")
    _add_source_args(i)
    add_json_flag(i)
    i.set_defaults(func=cmd_imagenet)

    s = sub.add_parser("sources", help="list the source models")
    add_json_flag(s)
    s.set_defaults(func=cmd_sources)


def cmd_classify(args: argparse.Namespace) -> int:
    from hotdog.data import decode_image
    from hotdog.errors import HotdogError
    from hotdog.models import get_spec, imagenet_topk

    get_spec(args.source)  # unknown source: one error line before decoding anything
    results: list[dict] = []
    images, slots = [], []
    for path in args.images:
        try:
            images.append(decode_image(path))
            slots.append(len(results))
            results.append({"path": path})
        except HotdogError as err:
            results.append({"path": path, "error": str(err)})
    if images:
        for slot, top in zip(slots, imagenet_topk(args.source, images, k=max(1, args.top),
                                                   params_path=args.params)):
            results[slot]["top5"] = top
    failed = sum("error" in r for r in results)
    if args.json:
        emit_json(results)
    else:
        print_per_photo(results, lambda r: "\n".join(
            [r["path"]] + [f"  {t['probability']:6.1%}  {t['index']:4d}  {t['name']}" for t in r["top5"]]))
    if failed:
        print(f"{failed} of {len(results)} image(s) could not be classified", file=sys.stderr)
    return 1 if failed else 0


def cmd_imagenet(args: argparse.Namespace) -> int:
    from hotdog import imagenet
    from hotdog.models import class_weights

    cw = class_weights(args.source, args.class_name, k=max(0, args.nearest), params_path=args.params)
    if args.json:
        emit_json(cw.to_dict())
        return 0
    print(f"{args.source}: ImageNet class {cw.index} '{cw.name}'")
    print(f"  row length {cw.length}, L2 norm {cw.norm:.4f}, bias {cw.bias:+.4f}, "
          f"mean {cw.mean:+.5f}, std {cw.std:.5f}")
    print("  nearest classes by cosine similarity:")
    for n in cw.nearest:
        print(f"    {n['cosine']:+.3f}  {n['index']:4d}  {n['name']}")
    chapter_row = imagenet.CHAPTER_HOTDOG_ROW
    if cw.index != chapter_row and cw.index == imagenet.find_class("hotdog"):
        print(f"  note: the d2l chapter's MXNet code reads row {chapter_row}, which is "
              f"'{imagenet.full_name(chapter_row)}', not the hot dog class")
    return 0


def cmd_sources(args: argparse.Namespace) -> int:
    from hotdog.models import DEFAULT_SOURCE, get_spec, list_sources

    specs = [get_spec(n) for n in list_sources()]
    if args.json:
        emit_json({"default": DEFAULT_SOURCE, "sources": [s.to_dict() for s in specs]})
        return 0
    for s in specs:
        mark = " (default)" if s.name == DEFAULT_SOURCE else ""
        print(f"{s.name}{mark}: {s.title}; input {s.preprocess.input_size}px, "
              f"{'offline' if s.offline else 'needs weights file or download'}")
    return 0
