"""``python -m hotdog data|download|install-zip``: get a data set onto disk and check it."""

from __future__ import annotations

import argparse
import sys

from hotdog.commands._common import add_json_flag, emit_json, progress_bar


def _add_home(parser) -> None:
    parser.add_argument("--home", help="Hotdog Lab home (default: $HOTDOG_HOME or ~/.hotdog)")


def register(sub) -> None:
    p = sub.add_parser("data", help="validate an image-folder data set and print per-class counts",
                       description="Validate train/<class>/* + test/<class>/* (or flat <class>/*) and "
                                   "print per-split, per-class counts and skipped files.")
    p.add_argument("--root", help="data set folder (default: the downloaded hot dog set)")
    p.add_argument("--test-ratio", type=float, default=0.2,
                   help="held-out fraction for flat <class>/* folders (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the flat-layout split (default 0)")
    add_json_flag(p)
    p.set_defaults(func=cmd_data)

    d = sub.add_parser("download", help="download the chapter's hot dog data set (checksummed)")
    _add_home(d)
    d.add_argument("--url", help="download from this URL instead (e.g. a mirror)")
    d.add_argument("--sha1", help="expected SHA-1 of the zip (default: the chapter's)")
    add_json_flag(d)
    d.set_defaults(func=cmd_download)

    z = sub.add_parser("install-zip", help="install a data set zip (class folders of images)")
    z.add_argument("zip", help="path to the .zip")
    z.add_argument("--name", help="name of the installed data set (default: the zip's file name); letters, "
                                  "digits, spaces, '.', '_', '-', '(', ')', '+', at most 64 characters")
    z.add_argument("--replace", action="store_true",
                   help="replace an installed data set of the same name (default: install the new one "
                        "as NAME-2, NAME-3, ... and keep the old one)")
    _add_home(z)
    add_json_flag(z)
    z.set_defaults(func=cmd_install_zip)


def _print_report(report, out=None) -> None:
    out = out or sys.stdout  # looked up per call: tests and pipes swap sys.stdout
    print(f"data set: {report.root}  (layout: {report.layout}, {len(report.classes)} classes)", file=out)
    width = max([len("class")] + [len(c) for c in report.classes])
    print(f"  {'class':<{width}}  {'train':>7}  {'test':>7}", file=out)
    for cls in report.classes:
        print(f"  {cls:<{width}}  {report.counts['train'][cls]:>7}  {report.counts['test'][cls]:>7}", file=out)
    tr, te = sum(report.counts["train"].values()), sum(report.counts["test"].values())
    print(f"  {'total':<{width}}  {tr:>7}  {te:>7}", file=out)
    if report.skipped:
        print(f"skipped {len(report.skipped)} file(s):", file=out)
        for s in report.skipped:
            print(f"  {s['path']}: {s['reason']}", file=out)
    for w in report.warnings:
        print(f"warning: {w}", file=out)


def cmd_data(args: argparse.Namespace) -> int:
    from hotdog.data import validate_dataset
    from hotdog.errors import DatasetError
    from hotdog.paths import data_root

    root = args.root
    if root is None:
        root = data_root() / "hotdog"
        if not root.is_dir():
            raise DatasetError(
                f"no --root given and the hot dog data set is not downloaded yet ({root}); "
                "run `python -m hotdog download` or pass --root DIR"
            )
    report = validate_dataset(root, test_ratio=args.test_ratio, seed=args.seed)
    if args.json:
        emit_json(report.to_dict())
    else:
        _print_report(report)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from hotdog.data import HOTDOG_SHA1, HOTDOG_URL, download_hotdog, validate_dataset

    bar = None

    def progress(done: int, total: int | None) -> None:
        nonlocal bar
        if bar is None:
            bar = progress_bar(total, "hotdog.zip", unit="B", unit_scale=True, unit_divisor=1024)
        bar.update(done - bar.n)

    try:
        path = download_hotdog(home=args.home, url=args.url or HOTDOG_URL,
                               sha1=args.sha1 or HOTDOG_SHA1, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    report = validate_dataset(path)
    if args.json:
        emit_json({"path": str(path), "counts": report.counts})
    else:
        print(f"hot dog data set ready at {path}")
        _print_report(report)
    return 0


def cmd_install_zip(args: argparse.Namespace) -> int:
    from hotdog.data import check_dataset_name, dataset_name_from_file, install_zip, validate_dataset

    # Zip file names often carry spaces or brackets ("photos (1).zip"): the default name is
    # cleaned up; a typed --name must pass the same rule as is (no silent rewriting).
    name = check_dataset_name(args.name) if args.name is not None else dataset_name_from_file(args.zip)
    path = install_zip(args.zip, name, home=args.home, replace=args.replace)
    report = validate_dataset(path)
    if args.json:
        emit_json({"path": str(path), "name": path.name, "requested_name": name,
                   "renamed": path.name != name, "counts": report.counts})
    else:
        if path.name != name:
            print(f"a data set called {name!r} already exists and was kept; "
                  f"installed the new one as {path.name!r} (use --replace to replace it)")
        print(f"installed data set {path.name!r} at {path}")
        _print_report(report)
    return 0
