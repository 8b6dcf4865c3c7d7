"""Output conventions shared by every sub-command.

``--json`` prints exactly one JSON document on stdout; everything else (logs, progress
bars) goes to stderr so scripts can pipe stdout straight into a JSON parser. The document is
strict JSON (NaN and infinities become null); an error is ``{"error": "<sentence>"}``
(printed by :func:`hotdog.cli.main`).
"""

from __future__ import annotations

import sys
from typing import Any

from hotdog.fileio import to_json


def emit_json(obj: Any) -> None:
    sys.stdout.write(to_json(obj, default=str, indent=2))
    sys.stdout.write("\n")
    sys.stdout.flush()


def add_json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def progress_bar(total: int | None, desc: str, unit: str = "it", **kwargs):
    """A terminal progress bar on stderr (disabled when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, **kwargs)


def print_per_photo(docs, describe) -> None:
    """One line (or block) per photo: ``path: error: ...`` for a failed one, ``describe(doc)``
    for the others (the per-photo commands share this layout)."""
    for d in docs:
        print(f"{d['path']}: error: {d['error']}" if "error" in d else describe(d))


# A run's accuracy, as every command and page shows it: hotdog.runs.RunSummary.accuracy (the saved
# model's), named with the weights it is of. ``test_acc`` in a document stays the last epoch's.
WEIGHT_WORDS = {"best": "best epoch", "wise": "WiSE-FT mix", "last": "last epoch"}


def accuracy_fields(summary) -> dict:
    """{"accuracy", "accuracy_weights"} of a RunSummary, for a --json document."""
    return {"accuracy": summary.accuracy, "accuracy_weights": summary.accuracy_weights}


def run_accuracy_fields(run_dir) -> dict:
    """:func:`accuracy_fields` of the run in ``run_dir`` (both None when it cannot be read)."""
    from pathlib import Path

    from hotdog.errors import HotdogError
    from hotdog.runs import RunStore

    d = Path(run_dir)
    try:
        return accuracy_fields(RunStore(d.parent).summary(d.name))
    except HotdogError:
        return {"accuracy": None, "accuracy_weights": None}


def accuracy_text(fields: dict) -> str:
    """'test acc (saved model) 0.920, WiSE-FT mix' ('' when not recorded)."""
    if not isinstance(fields.get("accuracy"), (int, float)):
        return ""
    return f"test acc (saved model) {fields['accuracy']:.3f}, {WEIGHT_WORDS.get(fields['accuracy_weights'], '?')}"
