"""Do the Grad-CAM heatmaps mean something? The deletion check on real photos.

On the hot dog photos of a data set's test split (hotdog-mini: 25), blank the 20% of
model-input pixels the heatmap ranks highest, and separately a random 20%, and compare how
much the hotdog probability of a fine-tuned run drops. Heatmaps that point at the evidence
must make the first drop clearly larger.

    .venv/bin/python scripts/explain_check.py                       # trains a quick run first
    .venv/bin/python scripts/explain_check.py --run RUN_DIR [--json]

Without --run it fine-tunes efficientnet_lite0 on --data (default ../shared/data/hotdog-mini)
at --input-size 224 for --epochs 3 with the stable preset, into a temporary run store.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def quick_run(data: str, input_size: int, epochs: int, runs_dir: str) -> str:
    from hotdog import settings
    from hotdog.train import train

    config = settings.config_for(data, source="efficientnet_lite0", mode="finetune", preset="stable",
                                 input_size=input_size, epochs=epochs)
    result = train(config, runs_dir=runs_dir)
    if result.status != "finished":
        raise SystemExit(f"training {result.status}: {result.message}")
    print(f"trained run {result.run_id}: test accuracy {result.test_acc:.3f} ({result.seconds:.0f} s)",
          file=sys.stderr)
    return result.run_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a fine-tuned run folder (else one is trained)")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "hotdog-mini"))
    ap.add_argument("--class", dest="class_name", default="hotdog")
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs-dir", help="keep the trained run here (default: a temporary folder)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from hotdog.explain import Explainer, deletion_check
    from hotdog.predict import split_items

    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or quick_run(args.data, args.input_size, args.epochs, args.runs_dir or tmp)
        explainer = Explainer.from_run(run_dir)
        label = explainer.class_index(args.class_name)
        items = split_items(Path(args.data) / "test", explainer.classes)
        paths = [p for p, y in items if y == label]
        report = deletion_check(explainer, paths, args.class_name, fraction=args.fraction, seed=args.seed)
    summary = {k: v for k, v in report.to_dict().items() if k != "per_photo"}
    summary["seconds"] = round(time.time() - t0, 1)
    if args.json:
        print(json.dumps({**summary, "per_photo": report.per_photo}, indent=2))
    else:
        print(f"{report.n} '{report.class_name}' photos, mean p({report.class_name}) {report.mean_probability:.3f}")
        print(f"blank the heatmap's top {report.fraction:.0%}: mean drop {report.mean_drop_heatmap:.3f}")
        print(f"blank a random {report.fraction:.0%}:        mean drop {report.mean_drop_random:.3f}")
        print(f"ratio {report.ratio:.2f}; the heatmap's drop is larger on {report.heatmap_wins:.0%} of the photos")
        print(f"(a random {report.fraction:.0%} square instead: mean drop {report.mean_drop_block:.3f}, "
              f"ratio {report.ratio_block:.2f}; the heatmap's lowest {report.fraction:.0%}: "
              f"mean drop {report.mean_drop_coldest:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
