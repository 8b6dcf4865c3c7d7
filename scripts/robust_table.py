"""Robust fine-tuning figures (issue 15): clean test vs out-of-source proxy accuracy.

    python scripts/robust_table.py measure --data ../shared/data/hotdog-mini --out docs/robust-runs.jsonl
    python scripts/robust_table.py table --in docs/robust-runs.jsonl --alpha 0.5

``measure`` trains each method through the engine (``hotdog.train.train`` with the stable
preset, 5 epochs, efficientnet_lite0, seeds 0 and 1), reading back what the run recorded
(metrics.jsonl, sources.json, wise.json via hotdog.runs), and appends one JSON line per run to
``--out`` as soon as it ends, so an interrupted measurement keeps what it finished. It also
records the no-training ImageNet threshold baseline (``hotdog.robust.ThresholdClassifier``).
WiSE-FT needs no run of its own: the plain runs' alpha curves hold every alpha (one pass
after training). ``table`` prints the README's markdown table and the alpha curve of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before MXNet is imported: a fair neighbour
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The stable preset now mixes at alpha 0.6 (WiSE-FT): every other method sets alpha 1 (no mix).
METHODS = {
    "plain fine-tune": {"wise_alpha": 1.0},
    "LP-FT (2 head-only epochs, then 3 full)": {"warmup_epochs": 2, "wise_alpha": 1.0},
    # No alpha curve (11 extra passes, slow on a loaded machine): the proxy is scored once after.
    "L2-SP (strength 10)": {"l2sp": 10.0, "proxy_eval": False, "wise_alpha": 1.0},
    "frozen features (head only)": {"freeze": True, "wise_alpha": 1.0},
    # The plain recipe with the mix applied at the end: its curve's alpha 1 is the plain
    # fine-tune's end, its metrics the plain per-epoch figures, wise.json the mixed ones.
    "WiSE-FT (alpha 0.6)": {"wise_alpha": 0.6},
}
PLAIN = "plain fine-tune"


def _run_line(method: str, seed: int, result, run_dir: str, classes: list[str]) -> dict:
    from hotdog.runs import read_metrics, read_sources, read_wise

    metrics, _ = read_metrics(run_dir)
    sources, _ = read_sources(run_dir)
    wise, _ = read_wise(run_dir)
    by_kind = {s["kind"]: s for s in sources}
    return {"method": method, "seed": seed, "run_id": result.run_id, "status": result.status,
            "seconds": round(result.seconds, 1), "epochs_test_acc": [m.get("test_acc") for m in metrics],
            "classes": classes,
            "clean": by_kind.get("test", {}).get("accuracy"), "proxy": by_kind.get("proxy", {}).get("accuracy"),
            "clean_recall": {c: v["recall"] for c, v in by_kind.get("test", {}).get("per_class", {}).items()},
            "proxy_recall": {c: v["recall"] for c, v in by_kind.get("proxy", {}).get("per_class", {}).items()},
            "wise": wise, "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load": os.getloadavg()[0]}


def _score_after(run_dir, splits) -> None:
    """The test split and the proxy scored once on the saved model, recorded in the run (for a
    run trained without the out-of-source check)."""
    from hotdog import robust
    from hotdog.predict import evaluate
    from hotdog.runs import record_sources

    proxy_dir = robust.proxy_folder(splits.test, splits.classes)
    test_dir = Path(splits.test[0][0]).parent.parent
    record_sources(run_dir, [robust.report_metrics(robust.TEST_NAME, "test", evaluate(run_dir, test_dir)),
                             robust.report_metrics(robust.PROXY_NAME, "proxy", evaluate(run_dir, proxy_dir))])


def _append(path: Path, line: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(line) + "\n")
    print(json.dumps({k: line[k] for k in line if k not in ("wise",)}), flush=True)


def measure(args) -> int:
    from hotdog import data, robust
    from hotdog.predict import split_items
    from hotdog.settings import config_for
    from hotdog.train import train

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    splits = data.load_splits(args.data)
    done = set()
    if out.exists():
        for ln in out.read_text().splitlines():
            if ln.strip():
                d = json.loads(ln)
                done.add((d["method"], d["seed"]))
    baseline = not args.only or any(o in "ImageNet threshold" for o in args.only)
    if baseline and ("ImageNet threshold (no training)", None) not in done:
        clf = robust.fit_threshold_classifier(args.source, splits.classes, splits.train)
        line = {"method": "ImageNet threshold (no training)", "seed": None, "classes": splits.classes,
                "threshold": clf.threshold, "train_accuracy": clf.train_accuracy}
        proxy = split_items(robust.proxy_folder(splits.test, splits.classes), splits.classes)
        for key, items in (("clean", splits.test), ("proxy", proxy)):
            labels, pred = clf.predict(items)
            m = robust.source_metrics(key, "test", splits.classes, labels, pred)
            line[key] = m["accuracy"]
            line[f"{key}_recall"] = {c: v["recall"] for c, v in m["per_class"].items()}
        _append(out, line)
    for seed in args.seeds:
        for method, knobs in METHODS.items():
            if (method, seed) in done or (args.only and not any(o in method for o in args.only)):
                continue
            cfg = config_for(args.data, source=args.source, epochs=args.epochs, seed=seed, **knobs)
            result = train(cfg)
            if not cfg.proxy_eval and result.status == "finished":
                _score_after(result.run_dir, splits)
            _append(out, _run_line(method, seed, result, result.run_dir, splits.classes))
    return 0


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _at_alpha(d: dict, alpha: float, epochs=None) -> dict:
    """A table entry read off a run's alpha curve."""
    w, cls = d["wise"], d["classes"]
    i = min(range(len(w["alphas"])), key=lambda k: abs(w["alphas"][k] - alpha))
    return {"seed": d["seed"], "clean": w["clean"][i], "proxy": (w.get("proxy") or [None] * (i + 1))[i],
            "clean_recall": dict(zip(cls, w["clean_recall"][i])) if w.get("clean_recall") else {},
            "proxy_recall": dict(zip(cls, w["proxy_recall"][i])) if w.get("proxy_recall") else {},
            "epochs_test_acc": epochs}


def table(args) -> int:
    lines = [json.loads(ln) for ln in Path(args.inp).read_text().splitlines() if ln.strip()]
    rows: dict[str, list[dict]] = {}
    wise_row = f"WiSE-FT alpha {args.alpha:g} (the plain fine-tune's weights mixed)"
    for d in sorted(lines, key=lambda d: (d["seed"] is not None, d["seed"] or 0)):
        curve = d.get("wise") if d.get("wise") and "alphas" in d["wise"] else None
        if d["method"].startswith("WiSE-FT") and curve:
            rows.setdefault(PLAIN, []).append(_at_alpha(d, 1.0, d["epochs_test_acc"]))
            rows.setdefault(wise_row, []).append(_at_alpha(d, args.alpha, curve.get("epochs_clean") or None))
            continue
        rows.setdefault(d["method"], []).append(d)
        if d["method"] == PLAIN and curve:
            rows.setdefault(wise_row, []).append(_at_alpha(d, args.alpha))
    classes = lines[0]["classes"]
    head = ["model", "seeds", "test acc per epoch", "test (clean)", "proxy"] + \
        [f"{c} recall (clean / proxy)" for c in classes]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for method, rs in rows.items():
        seeds = ", ".join("-" if r.get("seed") is None else str(r["seed"]) for r in rs)
        per_epoch = " / ".join(" ".join(f"{a:.2f}" for a in r["epochs_test_acc"]) if r.get("epochs_test_acc")
                               else "(not recorded)" for r in rs) if any(r.get("epochs_test_acc") for r in rs) else "-"
        cells = [method, seeds, per_epoch,
                 " / ".join(_fmt(r.get("clean")) for r in rs) + (f" (mean {_fmt(_mean([r.get('clean') for r in rs]))})"
                                                                  if len(rs) > 1 else ""),
                 " / ".join(_fmt(r.get("proxy")) for r in rs) + (f" (mean {_fmt(_mean([r.get('proxy') for r in rs]))})"
                                                                  if len(rs) > 1 else "")]
        for c in classes:
            cells.append(_fmt(_mean([(r.get("clean_recall") or {}).get(c) for r in rs])) + " / "
                         + _fmt(_mean([(r.get("proxy_recall") or {}).get(c) for r in rs])))
        print("| " + " | ".join(cells) + " |")
    curve_of = [d for d in lines if d.get("wise") and "alphas" in d["wise"]]
    if curve_of:
        d = curve_of[0]
        w = d["wise"]
        print(f"\nWiSE-FT accuracy vs alpha, {d['method']} seed {d['seed']} (run {d['run_id']}):\n")
        print("| alpha | " + " | ".join(f"{a:g}" for a in w["alphas"]) + " |")
        print("|---|" + "---|" * len(w["alphas"]))
        print("| test (clean) | " + " | ".join(_fmt(x) for x in w["clean"]) + " |")
        if w.get("proxy"):
            print("| proxy | " + " | ".join(_fmt(x) for x in w["proxy"]) + " |")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--data", required=True)
    m.add_argument("--out", default="docs/robust-runs.jsonl")
    m.add_argument("--source", default="efficientnet_lite0")
    m.add_argument("--epochs", type=int, default=5)
    m.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    m.add_argument("--only", nargs="*", default=None, help="methods whose name contains one of these words")
    m.set_defaults(func=measure)
    t = sub.add_parser("table")
    t.add_argument("--in", dest="inp", default="docs/robust-runs.jsonl")
    t.add_argument("--alpha", type=float, default=0.5, help="the WiSE-FT row's alpha")
    t.set_defaults(func=table)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
