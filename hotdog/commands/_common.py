"""Output conventions shared by every sub-command.

``--json`` prints exactly one JSON document on stdout; everything else (logs, progress
bars) goes to stderr so scripts can pipe stdout straight into a JSON parser.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def emit_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def add_json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def progress_bar(total: int | None, desc: str, unit: str = "it", **kwargs):
    """A terminal progress bar on stderr (disabled when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, **kwargs)
