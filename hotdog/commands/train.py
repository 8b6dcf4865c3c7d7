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

from hotdog import runpick
from hotdog.commands._common import (WEIGHT_WORDS, accuracy_fields, accuracy_text, add_json_flag, emit_json,
                                     progress_bar, run_accuracy_fields)
from hotdog.errors import HotdogError

log = logging.getLogger("hotdog.train")

EXIT_USAGE = 2


def _knob_args(parser) -> None:
    """One flag per knob of the settings table (hotdog.settings.KNOBS): help and defaults
    come from there, so the CLI cannot drift from the app."""
    from hotdog import settings

    for name, knob in settings.KNOBS.items():
        if name in settings.PRESET_KNOBS:
            default = f" (default: {settings.describe_default(name)})"
        elif knob.default is not None:
            default = f" (default: {knob.default})"
        else:
            default = ""
        if knob.kind is bool:
            parser.add_argument(knob.cli_flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=knob.help + default)
        elif knob.choices:
            parser.add_argument(knob.cli_flag, dest=name, choices=knob.choices, default=None, help=knob.help + default)
        else:
            parser.add_argument(knob.cli_flag, dest=name, type=knob.kind, default=None, metavar="N",
                                help=knob.help + default)


def register(sub) -> None:
    from hotdog import settings

    t = sub.add_parser("train", help="fine-tune (or train from scratch) on an image-folder data set",
                       description="The chapter's train_fine_tuning (SGD) with the settings of a preset: "
                                   + "; ".join(f"{p}: {h.rstrip('.')}" for p, h in settings.PRESET_HELP.items())
                                   + " Explicit flags override single settings. Ctrl-C stops after the "
                                     "current batch and keeps completed epochs.")
    t.add_argument("--data", required=True, help="data set folder (train/ and test/, or one folder per class)")
    t.add_argument("--source", choices=settings.SOURCES, default=settings.DEFAULT_SOURCE,
                   help=f"source model (default {settings.DEFAULT_SOURCE}; see `sources`)")
    t.add_argument("--mode", choices=settings.MODES, default="finetune")
    t.add_argument("--preset", choices=settings.PRESETS, default=None,
                   help="settings to start from (default, as the app: quick when training on CPUs only, "
                        "stable with a GPU)")
    _knob_args(t)
    t.add_argument("--devices", default=None,
                   help="e.g. 'cpu(0),cpu(1)' or 'gpu(0),gpu(1)' (quote it in a shell; default: all GPUs, else CPU)")
    t.add_argument("--runs-dir", default=None, help="run store folder (default $HOTDOG_HOME/runs)")
    t.add_argument("--also-eval", action="append", default=None, metavar="DIR", dest="also_eval",
                   help="after training, also score the run on this folder (one sub-folder per class; "
                        "repeatable); results per source go into the run's sources.json")
    add_json_flag(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="accuracy, per-class precision/recall and confusion matrix of a saved run")
    e.add_argument("--run", required=True, help=RUN_HELP)
    e.add_argument("--data", required=True, help="split folder with one folder per class (or a root with test/)")
    e.add_argument("--weights", choices=WEIGHTS, default=None, help=WEIGHTS_HELP)
    e.add_argument("--runs-dir", default=None)
    e.add_argument("--record", action=argparse.BooleanOptionalAction, default=True,
                   help="add the result to the run's per-source metrics (sources.json; default: yes)")
    add_json_flag(e)
    e.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="class probabilities of photos with a saved run",
                       description="Exit status: 0 all predicted, 1 some images failed, 2 usage error.")
    p.add_argument("--run", required=True, help=RUN_HELP)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--weights", choices=WEIGHTS, default=None, help=WEIGHTS_HELP)
    p.add_argument("--runs-dir", default=None)
    add_json_flag(p)
    p.set_defaults(func=cmd_predict)

    r = sub.add_parser("runs", help="list training runs (a run whose process died shows as failed/stale, "
                                    "one with a damaged file as damaged, with the reason)")
    r.add_argument("--runs-dir", default=None)
    r.add_argument("--delete", metavar="RUN_ID", default=None, help="delete one run")
    add_json_flag(r)
    r.set_defaults(func=cmd_runs)


# ------------------------------------------------------------------------------- train

def _config_from_args(args):
    from hotdog import settings

    knobs = {name: getattr(args, name) for name in settings.KNOBS}
    preset = args.preset or settings.default_preset(args.devices)
    return settings.config_for(args.data, source=args.source, mode=args.mode, preset=preset,
                               devices=args.devices, also_eval=args.also_eval, **knobs)


def _print_estimate(prepared, runs_dir) -> None:
    """The expected time, when a finished run with comparable settings timed this machine (the
    app's line under its buttons; no probe here: the run itself is about to start)."""
    from hotdog import estimate
    from hotdog.runs import RunStore

    speed = estimate.speed_from_runs(prepared.config, RunStore(runs_dir))
    if speed is None:
        return
    est = estimate.estimate(prepared.config, len(prepared.splits.train), len(prepared.splits.test), speed)
    print(f"expected time: about {est.seconds:.0f} s (start-up {est.startup_seconds:.0f} s, "
          f"{est.epochs} epochs of {est.epoch_seconds:.1f} s; from {speed.basis})", file=sys.stderr)


def cmd_train(args) -> int:
    from hotdog.callbacks import PHASES
    from hotdog.train import prepare, train

    config = _config_from_args(args)
    # The memory estimate first: a run that cannot fit is refused before anything starts.
    prepared = prepare(config)
    if prepared.memory is not None:
        print(f"memory: {prepared.memory.message}", file=sys.stderr)
    _print_estimate(prepared, args.runs_dir)
    stop = threading.Event()
    bar = None if args.json else progress_bar(None, "training", unit="batch")

    def on_batch(p):
        if bar is None:
            return
        total = p.batches * (p.epochs if p.phase == "train" else 1)
        if bar.total != total:
            bar.reset(total=total)
        bar.set_description(f"epoch {p.epoch}/{p.epochs}" if p.phase == "train" else PHASES.get(p.phase, p.phase))
        bar.n = (p.epoch - 1) * p.batches + p.batch if p.phase == "train" else p.batch
        post = {"img/s": f"{p.images_per_sec:.1f}"} if p.images_per_sec else {}
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
        result = train(prepared.config, on_batch=on_batch, on_epoch=on_epoch, stop_event=stop,
                       runs_dir=args.runs_dir, prepared=prepared)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
        if bar is not None:
            bar.close()
    acc = run_accuracy_fields(result.run_dir)  # the saved model's; result.test_acc is the last epoch's
    if args.json:
        emit_json({**result.to_dict(), **acc, "memory": prepared.memory.to_dict() if prepared.memory else None})
    else:
        print(f"run {result.run_id}: {result.status}: {result.message}")
        if result.status == "finished" and accuracy_text(acc):
            print(accuracy_text(acc))
        print(f"saved in {result.run_dir}")
    if result.status == "finished":
        return 0
    if result.status == "stopped":
        return 130 if stop.is_set() else 0
    return 1


# ------------------------------------------------------------------------------- evaluate / predict

WEIGHTS = ("last", "best")
RUN_HELP = ("run folder, run id in the run store, 'best' (finished run with the highest recorded test "
            "accuracy) or 'latest' (newest finished run)")
WEIGHTS_HELP = ("last: the last epoch's weights (the chapter's); best: the best epoch by the validation split "
                "(runs trained with --val-fraction); default: best when the run kept it, else last")


def _weights(run_dir: Path, asked: str | None) -> str:
    from hotdog.predict import run_model_info

    return asked or runpick.default_weights(run_model_info(run_dir))


def _weights_label(run_dir: Path, weights: str) -> str:
    """'best-epoch weights (epoch 4 of 5, val acc 0.950)' or 'last-epoch weights (epoch 5)'."""
    from hotdog.runs import load_run_dir

    rec = load_run_dir(run_dir)
    total = rec.config.get("epochs")
    best = (rec.model or {}).get("best") or {}
    if weights == "best" and best:
        val = best.get("val_acc")
        return (f"best-epoch weights (epoch {best['epoch']} of {total}"
                + (f", val acc {val:.3f}" if isinstance(val, (int, float)) else "") + ")")
    wise = (rec.model or {}).get("wise")
    if wise:  # model.params is not the last epoch's own weights
        return f"WiSE-FT mix of the last epoch ({len(rec.metrics)} of {total}), alpha {wise['alpha']:g}"
    return f"last-epoch weights (epoch {len(rec.metrics)} of {total})"

def _resolve_run(run: str, runs_dir) -> Path:
    from hotdog.errors import RunStoreError
    from hotdog.runs import RunStore

    if run in runpick.CHOICES:
        return Path(runpick.pick(RunStore(runs_dir).list(), run).run_dir)
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
    from hotdog.robust import evaluate_folder

    run_dir = _resolve_run(args.run, args.runs_dir)
    weights = _weights(run_dir, args.weights)
    report, _ = evaluate_folder(run_dir, args.data, record=args.record, weights=weights)
    if args.json:
        emit_json({**report.to_dict(), "run_id": run_dir.name, "weights": weights})
        return 0
    print(f"run {run_dir.name}, {_weights_label(run_dir, weights)}")
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
    from hotdog.predict import Predictor

    try:
        run_dir = _resolve_run(args.run, args.runs_dir)
        weights = _weights(run_dir, args.weights)
        predictor = Predictor.from_run(run_dir, weights=weights)
    except HotdogError as err:
        print(f"error: {err}", file=sys.stderr)
        if args.json:
            emit_json({"error": str(err)})
        return EXIT_USAGE
    results = predictor.predict(args.images)
    print(f"run {run_dir.name}, {_weights_label(run_dir, weights)}", file=sys.stderr)  # which model answers
    if args.json:
        emit_json([r.to_dict() for r in results])  # keys scripts rely on; which run: stderr
    else:
        for r in results:
            if r.error:
                print(f"{r.path}: error: {r.error}")
            else:
                probs = ", ".join(f"{c} {p:.3f}" for c, p in r.probabilities.items())
                print(f"{r.path}: {r.label} ({probs})")
    return 0 if all(r.ok for r in results) else 1


# ------------------------------------------------------------------------------- runs

# "accuracy" is the run's (its saved model's, as every page shows; "accuracy_weights": best | wise |
# last says which); "test_acc" the last epoch's, "best_*" the best epoch by validation.
_RUN_KEYS = ("run_id", "status", "mode", "source", "data", "lr", "lr_mult", "epochs", "epochs_done",
             "test_acc", "created", "message", "warning", "best_epoch", "best_val_acc", "best_test_acc")


def cmd_runs(args) -> int:
    from hotdog.runs import RunStore

    store = RunStore(args.runs_dir)
    if args.delete:
        store.delete(args.delete)
        if not args.json:
            print(f"deleted run {args.delete}")
    runs = store.list()
    if args.json:
        emit_json({"runs": [{**{k: getattr(s, k) for k in _RUN_KEYS}, **accuracy_fields(s)} for s in runs]})
        return 0
    if not runs:
        print(f"no runs in {store.root}")
        return 0
    import time

    # The run's accuracy (its saved model's) and which weights those are: the best epoch by
    # validation (model-best.params, runs with --val-fraction), a WiSE-FT mix or the last epoch.
    print(f"{'run id':<24} {'status':<9} {'mode':<9} {'data':<14} {'lr':>7} {'epochs':>6} {'test acc':>8} "
          f"{'(saved model)':<16}  created")
    for s in runs:
        acc = f"{s.accuracy:.3f}" if s.accuracy is not None else "-"
        lr = f"{s.lr:g}" if isinstance(s.lr, (int, float)) else "-"
        ep = f"{s.epochs_done}/{s.epochs}" if s.epochs else "-"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.created)) if s.created else "-"
        of = (f"best epoch {s.best_epoch}" if s.accuracy_weights == "best" else WEIGHT_WORDS[s.accuracy_weights]) \
            if s.accuracy is not None else "-"
        print(f"{s.run_id:<24} {s.status:<9} {str(s.mode):<9} {str(s.data)[:14]:<14} {lr:>7} {ep:>6} {acc:>8} "
              f"{of:<16}  {when}"
              + (f"  ({s.message})" if s.status in ("failed", "diverged", "damaged") and s.message else "")
              + (f"  [{s.warning}]" if s.warning else ""))
    return 0
