"""The chapter's comparison in one sentence: "fine-tuned 0.820 vs from scratch 0.500".

:func:`summarize` turns the runs of one comparison (each with its accuracy: the recorded test
accuracy of its saved model, :attr:`hotdog.runs.RunSummary.accuracy`,
wall time and, when evaluated, its confusion matrix on the test split) into a
:class:`Comparison`: one row per run, the headline, and a flag on a model that predicts the
same class for every test photo (an accuracy of 0.50 on a balanced set can be exactly that:
it learned nothing but a constant).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

MODE_WORDS = {"finetune": "fine-tuned", "scratch": "from scratch"}


@dataclass
class ComparedRun:
    run_id: str
    mode: str | None
    # The run's accuracy (hotdog.runs.RunSummary.accuracy: the saved model's, as every page shows)
    accuracy: float | None
    seconds: float | None
    # The one class predicted for every test photo, else None (also when not evaluated).
    one_class: str | None = None
    epochs_done: int = 0
    status: str = "finished"
    weights: str = "last"  # which saved weights ``accuracy`` is of (RunSummary.accuracy_weights)
    best_epoch: int | None = None

    @property
    def title(self) -> str:
        return MODE_WORDS.get(self.mode or "", self.mode or "run")


@dataclass
class Comparison:
    runs: list[ComparedRun]
    headline: str
    flags: list[str]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def one_class(confusion: Sequence[Sequence[int]] | None, classes: Sequence[str]) -> str | None:
    """The class a model predicted for *every* photo of an evaluation (its confusion matrix,
    rows = true class, columns = predicted), or None when it predicted at least two classes
    (or saw fewer than two photos, where "always the same" means nothing)."""
    if not confusion or not classes:
        return None
    columns = [sum(int(row[j]) for row in confusion) for j in range(len(classes))]
    if sum(columns) < 2:
        return None
    used = [j for j, n in enumerate(columns) if n > 0]
    return classes[used[0]] if len(used) == 1 else None


def _acc(x) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) and math.isfinite(x) else "—"


def summarize(runs: Sequence[ComparedRun]) -> Comparison:
    """Headline ("fine-tuned 0.820 vs from scratch 0.500") and flags of a comparison's runs,
    in the order they ran."""
    runs = list(runs)
    headline = " vs ".join(f"{r.title} {_acc(r.accuracy)}" for r in runs)
    flags = [f"{r.title} predicts '{r.one_class}' for every test photo: its accuracy is the share of that "
             "class in the test split, not something it learned" for r in runs if r.one_class]
    flags += [f"{r.title} did not finish ({r.status} after {r.epochs_done} epoch"
              f"{'s' if r.epochs_done != 1 else ''})" for r in runs if r.status != "finished"]
    return Comparison(runs, headline, flags)
