"""The README's "Experiments" figures: the chapter's three exercises as sweeps, the frozen-sweep
timing and the learning-rate finder, on a real photo set.

    .venv/bin/python scripts/exercises.py [--data DIR] [--home DIR] [--input-size 128] [--epochs 5] \
        [--seeds 2] [--steps frozen_timing,sweep,lr_find]

Everything goes to ``--home`` (a HOTDOG_HOME of its own, default /tmp/hotdog-exercises), so the
app can be pointed at it afterwards (``HOTDOG_HOME=... streamlit run streamlit_app.py``) to show
the measured sweep. Prints one ``RESULT {json}`` line per figure; an interrupted sweep is resumed
(only its unfinished points run) when the script is started again with the same ``--home``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hotdog-mini"
LRS = [1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]


def result(name: str, **values) -> None:
    print("RESULT " + json.dumps({"name": name, **values}), flush=True)


def find_or_create(title: str, spec) -> str:
    from hotdog import sweeps

    for rec in sweeps.list_sweeps():
        if rec["spec"].title == title and rec["spec"].to_dict() == spec.to_dict():
            return rec["sweep_id"]
    return sweeps.create(spec)


def run_sweep(title: str, spec) -> dict:
    from hotdog import sweeps

    sweep_id = find_or_create(title, spec)
    t0 = time.time()
    summary = sweeps.run(sweep_id, on_point=lambda p, r: print(
        f"  [{title}] point {p.number}: {r.status} {r.test_acc} ({r.seconds:.0f} s)", flush=True))
    return {"sweep_id": sweep_id, "wall_seconds": round(time.time() - t0, 1), "summary": summary}


def frozen_timing(args) -> None:
    """One frozen run vs a 7-point frozen lr sweep (feature extraction shared by the points)."""
    from hotdog import settings, sweeps
    from hotdog.train import train

    base = {"epochs": args.epochs, "input_size": args.input_size}
    train(settings.config_for(args.data, freeze=True, **{**base, "epochs": 1}))  # warm-up: source weights loaded
    t0 = time.time()
    one = train(settings.config_for(args.data, freeze=True, **base))
    single = time.time() - t0
    lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    spec = sweeps.SweepSpec(str(args.data), {"lr": lrs, "freeze": [True]}, base=base,
                            title=f"Frozen lr sweep (7 points, {args.input_size} px, {time.time():.0f})")
    out = run_sweep(spec.title, spec)
    result("frozen_timing", one_run_seconds=round(single, 1), one_run_acc=one.test_acc,
           sweep_seconds=out["wall_seconds"], ratio=round(out["wall_seconds"] / single, 2),
           sweep_accs=[p["test_acc"] for p in out["summary"]["points"]], sweep_id=out["sweep_id"])


def exercises_sweep(args) -> None:
    from hotdog import sweeps

    spec = sweeps.SweepSpec(str(args.data), {"lr": LRS, "mode": ["finetune", "scratch"], "freeze": [False, True]},
                            seeds=args.seeds, base={"epochs": args.epochs, "input_size": args.input_size},
                            title=f"Exercises 1-3 ({args.epochs} epochs, {args.input_size} px, {args.seeds} seeds)")
    out = run_sweep(spec.title, spec)
    summary = out["summary"]
    result("exercises", sweep_id=out["sweep_id"], wall_seconds=out["wall_seconds"],
           aggregate=sweeps.aggregate(summary), findings=sweeps.findings(summary))


def lr_find_step(args) -> None:
    from hotdog import settings
    from hotdog.lr_find import lr_find
    from hotdog.train import train

    for preset, iters in (("stable", 60), ("chapter", 30)):
        cfg = settings.config_for(args.data, preset=preset, epochs=args.epochs, input_size=args.input_size)
        t0 = time.time()
        found = lr_find(cfg, num_iter=iters, end_lr=10.0)
        seconds = time.time() - t0
        result("lr_find", preset=preset, suggested_lr=found.suggested_lr, steepest_lr=found.steepest_lr,
               min_lr=found.min_lr, steps=len(found.lrs), stopped_early=found.stopped_early,
               seconds=round(seconds, 1), lrs=found.lrs, losses=found.losses)
        accs = {}
        for name, lr in (("at_preset_lr", cfg.lr), ("at_suggested_lr", found.suggested_lr)):
            if lr is None:
                continue
            r = train(settings.config_for(args.data, preset=preset, epochs=args.epochs, input_size=args.input_size,
                                          lr=lr))
            accs[name] = {"lr": lr, "status": r.status, "test_acc": [round(e.test_acc, 3) for e in r.epochs]}
        result("lr_find_runs", preset=preset, **accs)


STEPS = {"frozen_timing": frozen_timing, "sweep": exercises_sweep, "lr_find": lr_find_step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--home", default="/tmp/hotdog-exercises")
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", default="frozen_timing,sweep,lr_find")
    args = ap.parse_args()
    os.environ["HOTDOG_HOME"] = args.home
    import logging

    logging.basicConfig(level=logging.WARNING)
    for step in args.steps.split(","):
        t0 = time.time()
        STEPS[step](args)
        print(f"step {step} took {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
