"""The closing-note figures of the training-engine issue, on a real photo set.

    .venv/bin/python scripts/experiments.py stability [--data DIR] [--epochs 5] [--batch-size 32]
    .venv/bin/python scripts/experiments.py compare   [--data DIR] [--epochs 3] [--batch-size 32]

``stability``: fine-tuning with the chapter's preset (SGD lr 0.01, head x10) with BatchNorm
statistics updating (the chapter) vs kept, and the stable preset (the default), plus any extra
variants given with ``--variant key=value,...`` (on the stable preset unless the variant says
``preset=chapter``); per-epoch test accuracy.
``compare``: fine-tune vs scratch, frozen (feature cache) vs full fine-tune, and the head
initialised from ImageNet's output layer before and after training.

Every run's config comes from ``hotdog.settings.config_for(data, source, mode, preset, ...)``:
a row names its preset and only the knobs it changes; ``--batch-size``, ``--input-size`` and
``--seed`` apply to every row.

Prints one JSON line per run (prefixed ``RESULT``) plus a readable table; runs go to
``--runs-dir`` (default a temp folder) so they never clutter the user's run list.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hotdog.settings import config_for  # noqa: E402
from hotdog.train import train  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "hotdog-mini"


def run_one(name: str, runs_dir: Path, data: str, source: str, preset: str, mode: str = "finetune", **kw) -> dict:
    cfg = config_for(data, source, mode, preset, **kw)
    t0 = time.time()
    last = {"t": 0.0}

    def on_batch(p):
        if time.time() - last["t"] > 30:
            last["t"] = time.time()
            print(f"  [{name}] epoch {p.epoch} batch {p.batch}/{p.batches} {p.phase} "
                  f"{p.images_per_sec:.1f} img/s", flush=True)

    def on_epoch(m):
        print(f"  [{name}] epoch {m.epoch}: train loss {m.train_loss:.4f} train acc {m.train_acc:.3f} "
              f"test acc {m.test_acc:.3f} ({m.seconds:.0f} s)", flush=True)

    res = train(cfg, runs_dir=runs_dir, on_batch=on_batch, on_epoch=on_epoch)
    out = {"name": name, "config": cfg.to_dict(), "status": res.status, "message": res.message,
           "test_acc": [round(e.test_acc, 4) for e in res.epochs],
           "train_acc": [round(e.train_acc, 4) for e in res.epochs],
           "train_loss": [round(e.train_loss, 4) for e in res.epochs],
           "seconds": round(time.time() - t0, 1), "run_dir": res.run_dir}
    print("RESULT " + json.dumps(out), flush=True)
    return out


def init_head_before(data: str, source: str, input_size: int) -> float:
    """Test accuracy of the ImageNet-initialised head before any training."""
    from hotdog import data as hdata
    from hotdog import models

    splits = hdata.load_splits(data)
    net = models.build_finetune(source, len(splits.classes), init_output_from_imagenet=True,
                                class_names=splits.classes, init_items=splits.train)
    from hotdog.predict import Predictor
    from hotdog.train import resolve_preprocess

    net.hybridize()
    pred = Predictor(net, splits.classes, resolve_preprocess(source, input_size), source)
    res = pred.predict([p for p, _ in splits.test])
    correct = sum(r.label == splits.classes[lab] for r, (_, lab) in zip(res, splits.test))
    return correct / len(splits.test)


def parse_variant(text: str) -> tuple[str, dict]:
    kw = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        if v.lower() in ("true", "false"):
            kw[k] = v.lower() == "true"
        else:
            try:
                kw[k] = int(v)
            except ValueError:
                try:
                    kw[k] = float(v)
                except ValueError:
                    kw[k] = v
    return text, kw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["stability", "compare"])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--source", default="efficientnet_lite0")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--variant", action="append", default=[], help="extra stability run, e.g. lr=0.003,bn_mode=keep")
    ap.add_argument("--only", default=None, help="semicolon-separated run names to do")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    runs_dir = Path(args.runs_dir or tempfile.mkdtemp(prefix="hotdog-exp-"))
    base = dict(data=args.data, source=args.source, batch_size=args.batch_size,
                input_size=args.input_size, seed=args.seed)
    only = set(args.only.split(";")) if args.only else None
    results = []
    print(f"# {args.what} on {args.data}, {args.source}, {args.input_size} px, batch {args.batch_size}, "
          f"seed {args.seed}, {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    if args.what == "stability":
        epochs = args.epochs or 5
        plan = [("bn_update_chapter", dict(preset="chapter")),
                ("bn_keep", dict(preset="chapter", bn_mode="keep")),
                ("recommended", dict(preset="stable"))]
        plan += [parse_variant(v) for v in args.variant]
        if args.variant and not only:
            only = set(args.variant)
        for name, kw in plan:
            if only and name not in only:
                continue
            results.append(run_one(name, runs_dir, **base, epochs=epochs, **{"preset": "stable", **kw}))
    else:
        epochs = args.epochs or 3
        chapter_keep = dict(preset="chapter", bn_mode="keep")  # the chapter's learning rates, BatchNorm kept
        plan = [
            ("finetune_lr0.01_x10", dict(chapter_keep)),
            ("scratch_lr0.1", dict(preset="chapter", mode="scratch")),
            ("frozen_cache", dict(chapter_keep, freeze=True)),
            ("init_imagenet_after", dict(chapter_keep, init_output_from_imagenet=True)),
            # the stable preset (lr 0.001 for every source, as the names say)
            ("frozen_cache_init_lr0.001", dict(preset="stable", freeze=True, lr=0.001)),
            ("finetune_init_lr0.001", dict(preset="stable", lr=0.001)),
        ]
        if not only or "init_imagenet_before" in only:
            acc = init_head_before(args.data, args.source, args.input_size)
            out = {"name": "init_imagenet_before", "test_acc": [round(acc, 4)]}
            print("RESULT " + json.dumps(out), flush=True)
            results.append(out)
        for name, kw in plan:
            if only and name not in only:
                continue
            results.append(run_one(name, runs_dir, **base, epochs=epochs, **kw))
    print("\n| run | per-epoch test acc | seconds |\n|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {' '.join(f'{a:.3f}' for a in r['test_acc'])} | {r.get('seconds', '')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
