"""``python -m hotdog bench``: the performance ratios of issue 6, as a table or one JSON document."""

from __future__ import annotations

import logging
import sys

from hotdog.commands._common import add_json_flag, emit_json

log = logging.getLogger("hotdog.bench")


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="measure training/prediction efficiency ratios on a data set",
        description="Measure, in one process on the same data: frozen feature-cache speedup, "
        "input-pipeline and prediction efficiency, training overhead, source-model images/s, "
        "MKLDNN-fused and bfloat16 inference. Ratios only mean something within one run.",
    )
    p.add_argument("--data", metavar="DIR", default=None,
                   help="data set root (train/ and test/ class folders); default: a small generated set")
    p.add_argument("--quick", action="store_true", help="tiny images and few steps (seconds, for tests)")
    p.add_argument("--from-json", metavar="FILE", default=None,
                   help="re-render a document saved from --json instead of measuring")
    p.add_argument("--only", metavar="STAGES", default="",
                   help="comma-separated stages to run (threads, memory, inference_variants, source_models, "
                   "pipeline_and_overhead, predict, frozen); the others report null")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    p.add_argument("--scale", metavar="N[,N...]", default=None,
                   help="instead: build N generated JPEG photos and measure scan time, one input-pipeline "
                   "pass and the first training batches (images/s, peak RSS); several N (200,20000) are "
                   "measured in alternation and compared against the targets; see hotdog/bench_scale.py")
    p.add_argument("--scale-rounds", metavar="R", type=int, default=1,
                   help="with several --scale N: measure each stage R times per N, order reversed every "
                   "other round (default 1)")
    p.add_argument("--scale-input-size", metavar="PX", type=int, default=None,
                   help="crop size for --scale (default 64, small so large N stays feasible)")
    p.add_argument("--keep", action="store_true", help="with --scale: keep the generated photos for a rerun")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from hotdog import bench_report

    def progress(msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    if args.scale is not None:
        return _run_scale(args, progress)
    if args.from_json:  # re-rendering needs neither MXNet nor data
        import json
        from pathlib import Path

        from hotdog.errors import HotdogError

        try:
            result = bench_report.BenchResult.from_dict(json.loads(Path(args.from_json).read_text()))
        except (OSError, ValueError, AttributeError) as err:
            raise HotdogError(f"cannot read benchmark results from {args.from_json}: {err}") from None
    else:
        from hotdog import bench
        from hotdog.errors import HotdogError

        only = tuple(x.strip() for x in args.only.split(",") if x.strip())
        unknown = [x for x in only if x not in bench.STAGES]
        if unknown:
            raise HotdogError(f"unknown bench stage {unknown[0]!r}; choose from {', '.join(bench.STAGES)}")
        result = bench.run_bench(args.data, quick=args.quick, progress=progress, only=only)
    if args.json:
        emit_json(_finite(result.to_dict()))
    elif args.markdown:
        print(bench_report.format_markdown(result))
    else:
        print(bench_report.format_table(result))
    return 0


def _run_scale(args, progress) -> int:
    from hotdog import bench_scale

    ns = bench_scale.parse_ns(args.scale)
    settings = bench_scale.ScaleSettings(n=ns[0], keep=args.keep)
    if args.scale_input_size is not None:
        settings.input_size = args.scale_input_size
    if len(ns) == 1:
        result = bench_scale.run_scale(settings, progress=progress)
        text = bench_scale.format_scale
    else:
        result = bench_scale.run_scales(ns, settings, rounds=args.scale_rounds, progress=progress)
        text = bench_scale.format_scales
    if args.json:
        emit_json(_finite({"scale": result}))
    else:
        print(text(result))
    return 0


def _finite(obj):
    """JSON has no NaN/Infinity; a measurement that could not be taken becomes null."""
    import math

    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
