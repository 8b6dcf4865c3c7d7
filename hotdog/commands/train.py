"""``train``, ``evaluate``, ``predict`` and ``runs``: the training engine on the command line.

Scripts and the benchmark depend on the JSON keys printed with ``--json`` (one document on
stdout; logs and progress on stderr).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from hotdog.commands._common import add_json_flag, emit_json, progress_bar
from hotdog.errors import HotdogError

log = logging.getLogger("hotdog.train")

EXIT_USAGE = 2


def register(sub) -> None:
    t = sub.add_parser("train", help="fine-tune (or train from scratch) on an image-folder data set",
                       description="The chapter's train_fine_tuning: SGD, weight decay 1e-3, head lr x10. "
                                   "Ctrl-C stops after the current batch and keeps completed epochs.")
    t.add_argument("--data", required=True, help="data set folder (train/ and test/, or one folder per class)")
    t.add_argument("--source", default=None, help="source model (default efficientnet_lite0; see `sources`)")
    t.add_argument("--mode", choices=["finetune", "scratch"], default="finetune")
    t.add_argument("--freeze", action="store_true", help="train only the output layer")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default 0.01 fine-tune, 0.1 scratch)")
    t.add_argument("--lr-mult", type=float, default=None, help="output-layer learning-rate multiplier (default 10)")
    t.add_argument("--wd", type=float, default=None, help="weight decay (default 0.001)")
    t.add_argument("--batch-size", type=int, default=None, help="default 128")
    t.add_argument("--epochs", type=int, default=None, help="default 5")
    t.add_argument("--seed", type=int, default=None, help="default 0")
    t.add_argument("--init-from-imagenet", action="store_true",
                   help="start output rows from matching ImageNet classes (e.g. hotdog)")
    t.add_argument("--input-size", type=int, default=None, help="crop size in pixels (default: the source's, 224)")
    t.add_argument("--bn-mode", choices=["keep", "update"], default=None,
                   help="BatchNorm statistics: keep the pretrained ones (default) or update them (the chapter)")
    t.add_argument("--devices", default=None, help="e.g. cpu(0),cpu(1) or gpu(0),gpu(1) (default: all GPUs, else CPU)")
    t.add_argument("--no-feature-cache", action="store_true",
                   help="with --freeze, run the full network every batch instead of caching features")
    t.add_argument("--augment-views", type=int, default=None,
                   help="with --freeze, also cache K randomly augmented views of each training image")
    t.add_argument("--warmup-epochs", type=int, default=None,
                   help="fine-tune: train only the output layer (on cached features) for the first N epochs")
    t.add_argument("--runs-dir", default=None, help="run store folder (default $HOTDOG_HOME/runs)")
    add_json_flag(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="accuracy, per-class precision/recall and confusion matrix of a saved run")
    e.add_argument("--run", required=True, help="run folder (or run id in the run store)")
    e.add_argument("--data", required=True, help="split folder with one folder per class (or a root with test/)")
    e.add_argument("--runs-dir", default=None)
    add_json_flag(e)
    e.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="class probabilities of photos with a saved run",
                       description="Exit status: 0 all predicted, 1 some images failed, 2 usage error.")
    p.add_argument("--run", required=True, help="run folder (or run id in the run store)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--runs-dir", default=None)
    add_json_flag(p)
    p.set_defaults(func=cmd_predict)

    r = sub.add_parser("runs", help="list training runs (a run whose process died shows as failed/stale)")
    r.add_argument("--runs-dir", default=None)
    r.add_argument("--delete", metavar="RUN_ID", default=None, help="delete one run")
    add_json_flag(r)
    r.set_defaults(func=cmd_runs)


# ------------------------------------------------------------------------------- train

def _config_from_args(args):
    from hotdog.train import TrainConfig

    kw = {"data_root": args.data, "mode": args.mode, "freeze": args.freeze,
          "init_output_from_imagenet": args.init_from_imagenet}
    for name in ("source", "lr", "lr_mult", "wd", "batch_size", "epochs", "seed", "input_size",
                 "bn_mode", "augment_views", "warmup_epochs"):
        v = getattr(args, name)
        if v is not None:
            kw[name] = v
    if args.devices:
        kw["devices"] = [d.strip() for d in args.devices.replace(";", ",").split(",") if d.strip()]
    if args.no_feature_cache:
        kw["feature_cache"] = False
    return TrainConfig(**kw)


def cmd_train(args) -> int:
    from hotdog.train import train

    config = _config_from_args(args)
    stop = threading.Event()
    bar = None if args.json else progress_bar(None, "training", unit="batch")

    def on_batch(p):
        if bar is None:
            return
        total = p.batches * (p.epochs if p.phase == "train" else 1)
        if bar.total != total:
            bar.reset(total=total)
        bar.set_description("caching features" if p.phase == "cache" else f"epoch {p.epoch}/{p.epochs}")
        bar.n = (p.epoch - 1) * p.batches + p.batch if p.phase == "train" else p.batch
        post = {"img/s": f"{p.images_per_sec:.1f}"}
        if p.phase == "train":
            post.update(loss=f"{p.loss:.3f}", acc=f"{p.acc:.3f}")
        bar.set_postfix(post, refresh=False)
        bar.refresh()

    def on_epoch(m):
        msg = (f"epoch {m.epoch}: train loss {m.train_loss:.4f}, train acc {m.train_acc:.3f}, "
               f"test acc {m.test_acc:.3f} ({m.seconds:.1f} s)")
        if bar is not None:
            bar.write(msg, file=sys.stderr)
        else:
            log.info(msg)

    # First Ctrl-C: stop after the current batch and keep the run; second: abort.
    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping after the current batch (Ctrl-C again to abort)", file=sys.stderr)

    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = train(config, on_batch=on_batch, on_epoch=on_epoch, stop_event=stop, runs_dir=args.runs_dir)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
        if bar is not None:
            bar.close()
    if args.json:
        emit_json(result.to_dict())
    else:
        print(f"run {result.run_id}: {result.status}: {result.message}")
        print(f"saved in {result.run_dir}")
    if result.status == "finished":
        return 0
    if result.status == "stopped":
        return 130 if stop.is_set() else 0
    return 1


# ------------------------------------------------------------------------------- evaluate / predict

def _resolve_run(run: str, runs_dir) -> Path:
    from hotdog.errors import RunStoreError
    from hotdog.runs import RunStore

    p = Path(run).expanduser()
    if p.is_dir():
        return p
    store = RunStore(runs_dir)
    try:
        if store.exists(run):
            return store.run_dir(run)
    except RunStoreError:
        pass
    raise RunStoreError(f"no run folder {run!r} (give a run folder, or a run id from `python -m hotdog runs`)")


def cmd_evaluate(args) -> int:
    from hotdog.train import evaluate

    report = evaluate(_resolve_run(args.run, args.runs_dir), args.data)
    if args.json:
        emit_json(report.to_dict())
        return 0
    print(f"accuracy {report.accuracy:.4f} on {report.n} images")
    width = max(len(c) for c in report.classes)
    print(f"{'class':<{width}}  precision  recall  support")
    for c, v in report.per_class.items():
        print(f"{c:<{width}}  {v['precision']:9.3f}  {v['recall']:6.3f}  {v['support']:7d}")
    print("confusion (rows = true class, columns = predicted):")
    for c, row in zip(report.classes, report.confusion):
        print(f"  {c:<{width}}  " + "  ".join(f"{x:5d}" for x in row))
    for m in report.misclassified[:20]:
        print(f"misclassified: {m['path']} ({m['label']} -> {m['predicted']}, p={m['probabilities'][m['predicted']]:.3f})")
    if len(report.misclassified) > 20:
        print(f"... and {len(report.misclassified) - 20} more (see --json)")
    for s in report.skipped:
        print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)
    return 0


def cmd_predict(args) -> int:
    from hotdog.train import Predictor

    try:
        predictor = Predictor.from_run(_resolve_run(args.run, args.runs_dir))
    except HotdogError as err:
        print(f"error: {err}", file=sys.stderr)
        if args.json:
            emit_json({"error": str(err)})
        return EXIT_USAGE
    results = predictor.predict(args.images)
    if args.json:
        emit_json([r.to_dict() for r in results])
    else:
        for r in results:
            if r.error:
                print(f"{r.path}: error: {r.error}")
            else:
                probs = ", ".join(f"{c} {p:.3f}" for c, p in r.probabilities.items())
                print(f"{r.path}: {r.label} ({probs})")
    return 0 if all(r.ok for r in results) else 1


# ------------------------------------------------------------------------------- runs

_RUN_KEYS = ("run_id", "status", "mode", "source", "test_acc", "created", "message")


def cmd_runs(args) -> int:
    from hotdog.runs import RunStore

    store = RunStore(args.runs_dir)
    if args.delete:
        store.delete(args.delete)
        if not args.json:
            print(f"deleted run {args.delete}")
    runs = store.list()
    if args.json:
        emit_json({"runs": [{k: getattr(s, k) for k in _RUN_KEYS} for s in runs]})
        return 0
    if not runs:
        print(f"no runs in {store.root}")
        return 0
    import time

    print(f"{'run id':<24} {'status':<9} {'mode':<9} {'source':<18} {'test acc':>8}  created")
    for s in runs:
        acc = f"{s.test_acc:.3f}" if isinstance(s.test_acc, (int, float)) else "-"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.created)) if s.created else "-"
        print(f"{s.run_id:<24} {s.status:<9} {str(s.mode):<9} {str(s.source):<18} {acc:>8}  {when}"
              + (f"  ({s.message})" if s.status in ("failed", "diverged") and s.message else ""))
    return 0
