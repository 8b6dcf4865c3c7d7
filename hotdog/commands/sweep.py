"""``sweep`` and ``lr-find``: the chapter's exercises as sweeps, and the learning-rate finder.

``sweep --json`` prints one document: ``{"sweep_id", "points": [{"run_id", "config",
"values", "status", "accuracy", "test_acc", "epochs"}], "best", "findings"}`` (``accuracy``: the
run's, i.e. its saved model's test accuracy as every page shows it; ``test_acc``: the last epoch's); ``lr-find --json``:
``{"lrs", "losses", "suggested_lr", ...}``.
"""

from __future__ import annotations

import signal
import sys
import threading

from hotdog.commands._common import accuracy_text, add_json_flag, emit_json, run_accuracy_fields
from hotdog.errors import ConfigError


def register(sub) -> None:
    from hotdog import settings, sweeps

    s = sub.add_parser("sweep", help="train a grid of settings (the chapter's exercises), or resume one",
                       description="Every point is a normal run tagged with the sweep's id. A diverged point is "
                                   "recorded and the sweep goes on; Ctrl-C stops after the current batch and keeps "
                                   "finished points; --resume runs only the points not yet finished.")
    s.add_argument("--data", help="data set folder")
    s.add_argument("--resume", metavar="SWEEP_ID", help="run the unfinished points of a sweep")
    s.add_argument("--show", metavar="SWEEP_ID", help="print a sweep's results without training")
    s.add_argument("--list", action="store_true", help="list the sweeps")
    s.add_argument("--exercise", choices=sorted(sweeps.EXERCISES),
                   help="a ready-made grid: " + "; ".join(f"{k}: {v['title']}" for k, v in sweeps.EXERCISES.items()))
    s.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help=f"one setting and its values (repeatable); keys: {', '.join(sweeps.GRID_KEYS)}")
    s.add_argument("--seeds", type=int, default=1, help="repeat each point with this many seeds (default 1)")
    s.add_argument("--source", choices=settings.SOURCES, default=settings.DEFAULT_SOURCE)
    s.add_argument("--preset", choices=settings.PRESETS, default=settings.DEFAULT_PRESET)
    for name in ("epochs", "batch_size", "input_size", "seed"):
        knob = settings.KNOBS[name]
        s.add_argument(knob.cli_flag, dest=name, type=knob.kind, default=None, metavar="N",
                       help=f"{knob.help} (every point)")
    s.add_argument("--runs-dir", default=None, help="run store folder (default $HOTDOG_HOME/runs)")
    add_json_flag(s)
    s.set_defaults(func=cmd_sweep)

    f = sub.add_parser("lr-find", help="the learning-rate range test (fastai's lr_find): loss vs learning rate")
    f.add_argument("--data", required=True)
    f.add_argument("--source", choices=settings.SOURCES, default=settings.DEFAULT_SOURCE)
    f.add_argument("--preset", choices=settings.PRESETS, default=settings.DEFAULT_PRESET)
    f.add_argument("--mode", choices=settings.MODES, default="finetune")
    f.add_argument("--freeze", action="store_true", help="frozen features: only the output layer learns")
    for name in ("batch_size", "input_size", "seed"):
        knob = settings.KNOBS[name]
        f.add_argument(knob.cli_flag, dest=name, type=knob.kind, default=None, metavar="N", help=knob.help)
    f.add_argument("--start-lr", type=float, default=1e-6)
    f.add_argument("--end-lr", type=float, default=1.0)
    f.add_argument("--num-iter", type=int, default=100, help="batches in the pass (default 100)")
    add_json_flag(f)
    f.set_defaults(func=cmd_lr_find)


def _print_summary(summary: dict) -> None:
    from hotdog import sweeps

    print(f"sweep {summary['sweep_id']}: {summary['done']}/{summary['total']} points done")
    for p in summary["points"]:
        acc = f"{p['accuracy']:.3f}" if isinstance(p["accuracy"], (int, float)) else "-"
        values = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in p["values"].items())
        print(f"  {p['index'] + 1:>3}  {p['status']:<9} {acc:>6}  {values}  {p['run_id'] or ''}")
    if summary["best"]:
        print(f"best: point {summary['best']['index'] + 1}, test acc (saved model) {summary['best']['accuracy']:.3f}")
    for sentence in sweeps.findings(summary):
        print(sentence)


def _document(summary: dict) -> dict:
    from hotdog import sweeps

    return {**summary, "findings": sweeps.findings(summary)}


def cmd_sweep(args) -> int:
    from hotdog import sweeps

    if args.list:
        recs = sweeps.list_sweeps()
        if args.json:
            emit_json({"sweeps": [sweeps.summarize(r["sweep_id"]) for r in recs]})
        for r in recs if not args.json else ():
            s = sweeps.summarize(r["sweep_id"])
            print(f"{r['sweep_id']}  {s['done']}/{s['total']} done  {r['spec'].title}")
        return 0
    if args.show:
        summary = sweeps.summarize(args.show)
        emit_json(_document(summary)) if args.json else _print_summary(summary)
        return 0
    if args.resume:
        sweep_id = args.resume
    else:
        if not args.data:
            raise ConfigError("give --data DIR (or --resume SWEEP_ID)")
        grid = dict(sweeps.EXERCISES[args.exercise]["grid"]) if args.exercise else {}
        grid.update(sweeps.parse_grid(args.grid))
        if not grid:
            raise ConfigError("give at least one --grid KEY=V1,V2 (or --exercise)")
        base = {k: getattr(args, k) for k in ("epochs", "batch_size", "input_size", "seed")
                if getattr(args, k) is not None}
        title = sweeps.EXERCISES[args.exercise]["title"] if args.exercise else "custom grid"
        spec = sweeps.SweepSpec(args.data, grid, seeds=args.seeds, source=args.source, preset=args.preset,
                                base=base, title=title)
        sweep_id = sweeps.create(spec, runs_dir=args.runs_dir)
    total = len(sweeps.expand(sweeps.load(sweep_id)["spec"]))
    print(f"sweep {sweep_id}: {total} points", file=sys.stderr)
    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping after the current batch (Ctrl-C again to abort)", file=sys.stderr)

    def on_point(p, result):
        acc = accuracy_text(run_accuracy_fields(result.run_dir))
        acc = f", {acc}" if acc else ""
        print(f"point {p.number}/{total}: {result.status}{acc} ({result.seconds:.0f} s) run {result.run_id}",
              file=sys.stderr)

    old = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        summary = sweeps.run(sweep_id, on_point=on_point, stop_event=stop)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    emit_json(_document(summary)) if args.json else _print_summary(summary)
    if stop.is_set():
        print(f"stopped; resume with: python -m hotdog sweep --resume {sweep_id}", file=sys.stderr)
        return 130
    return 0


def cmd_lr_find(args) -> int:
    from hotdog import settings
    from hotdog.lr_find import lr_find

    config = settings.config_for(args.data, source=args.source, mode=args.mode, preset=args.preset,
                                 freeze=args.freeze or None, batch_size=args.batch_size,
                                 input_size=args.input_size, seed=args.seed)
    res = lr_find(config, start_lr=args.start_lr, end_lr=args.end_lr, num_iter=args.num_iter)
    if args.json:
        emit_json(res.to_dict())
        return 0
    for lr, loss in zip(res.lrs, res.losses):
        print(f"lr {lr:10.3g}  loss {loss:.4f}")
    if res.suggested_lr is None:
        print("no suggestion: too few steps before the loss exploded")
    else:
        print(f"suggested lr {res.suggested_lr:.3g} (a tenth of the lowest loss's {res.min_lr:.3g}; steepest "
              f"descent {res.steepest_lr:.3g}, valley {res.valley_lr:.3g})")
    return 0
