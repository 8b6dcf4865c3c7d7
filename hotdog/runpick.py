"""Which finished run to predict with, when the user has not said: the best, or the latest.

After the chapter's comparison the newest run is the from-scratch one (0.50 on hotdog-mini),
so "newest" is a poor default; the app's Predict page and ``python -m hotdog predict --run
best`` take the finished run with the highest recorded test accuracy instead, preferring the
current data set. A run's score is :attr:`hotdog.runs.RunSummary.accuracy`, the test accuracy
of the weights it predicts with by default (:func:`default_weights`): the best epoch's when it
kept one (chosen on its validation split, never on the test split), else the saved
model.params's (a WiSE-FT mix, else the last epoch).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from hotdog.errors import RunStoreError
from hotdog.runs import RunSummary

CHOICES = ("best", "latest")


def default_weights(summary_or_model) -> str:
    """"best" when the run kept best-epoch weights (a RunSummary or a model.json dict), else "last"."""
    if isinstance(summary_or_model, dict):
        return "best" if summary_or_model.get("best") else "last"
    return "best" if getattr(summary_or_model, "best_epoch", None) else "last"


def score(s: RunSummary) -> float | None:
    """The run's accuracy (:attr:`RunSummary.accuracy`, the one every page and the CLI show):
    the recorded test accuracy of its default weights, None when not recorded."""
    return s.accuracy


def _same_folder(a: str | None, b: str | os.PathLike | None) -> bool:
    if not a or not b:
        return False
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, RuntimeError):
        return str(a) == str(b)


def ranked(runs: Sequence[RunSummary], data_root: str | os.PathLike | None = None) -> list[RunSummary]:
    """Finished runs, best first: those of ``data_root`` before the others, then by score
    (unscored last), then newest first. ``runs`` come newest first (RunStore.list)."""
    finished = [r for r in runs if r.status == "finished"]
    order = {r.run_id: i for i, r in enumerate(finished)}
    return sorted(finished, key=lambda r: (not _same_folder(r.data_root, data_root),
                                           -(score(r) if score(r) is not None else -1.0), order[r.run_id]))


def pick(runs: Sequence[RunSummary], which: str = "best",
         data_root: str | os.PathLike | None = None) -> RunSummary:
    """The ``which`` ("best" | "latest") finished run; RunStoreError when there is none."""
    if which not in CHOICES:
        raise RunStoreError(f"choose a run with one of {', '.join(CHOICES)}, not {which!r}")
    finished = [r for r in runs if r.status == "finished"]
    if not finished:
        raise RunStoreError("no finished run yet (train one with `python -m hotdog train`)")
    return ranked(finished, data_root)[0] if which == "best" else finished[0]
