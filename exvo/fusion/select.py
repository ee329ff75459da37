"""Per-subtask scores of candidate runs, their ranking and the fusion weights.

The three subtasks and the metric that decides each (scored with :mod:`exvo.metrics`
on the run's own ``val.csv``, so every candidate is judged the same way):

=========  ======  =============  =========================  ===========================
subtask    metric  better         columns it owns            weight when ``weighted``
=========  ======  =============  =========================  ===========================
emotion    CCC     higher         the 10 emotion columns     max(CCC, 0)
country    UAR     higher         Country + probabilities    UAR
age        MAE     lower (years)  Age                        1 / MAE
=========  ======  =============  =========================  ===========================

Ties (scores equal to 12 significant digits) are broken by run name (alphabetical),
and the tie is reported.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from exvo.metrics import CCCConvention, mean_ccc, mae, uar
from exvo.predictions import Predictions

SUBTASKS: tuple[str, ...] = ("emotion", "country", "age")
SLOT = {"emotion": "intensities", "country": "class", "age": "value"}
"""The task slot (:mod:`exvo.tasks`) each subtask fuses: another task fuses the subtasks of its slots."""


def subtasks(task) -> tuple[str, ...]:
    """The subtasks of ``task`` (ExVo-MTL: all three; A-VB High: emotion; A-VB Type: country)."""
    return tuple(s for s in SUBTASKS if task.has(SLOT[s]))
METRIC = {"emotion": "ccc", "country": "uar", "age": "mae"}
METRIC_LABEL = {"emotion": "CCC", "country": "UAR", "age": "MAE"}
HIGHER_BETTER = {"emotion": True, "country": True, "age": False}


def subtask_score(subtask: str, pred: Predictions, labels: tuple[np.ndarray, np.ndarray, np.ndarray],
                  idx: np.ndarray | None = None, convention: CCCConvention = "challenge") -> float:
    """The deciding metric of ``subtask`` for predictions aligned with ``labels``.

    ``labels`` = ``(emotions (n, 10), country (n,), age (n,))``; ``idx`` restricts both to
    those rows (a cross-validation half); None = all rows.
    """
    emo, cou, age = labels
    sel = slice(None) if idx is None else idx
    if subtask == "emotion":
        with warnings.catch_warnings():
            # a constant predictor scores 0 here; the warning adds nothing to the ranking
            warnings.simplefilter("ignore", RuntimeWarning)
            return mean_ccc(emo[sel], pred.emotions[sel], convention)[0]
    if subtask == "country":
        return uar(cou[sel], pred.country[sel])
    if subtask == "age":
        return mae(age[sel], pred.age[sel])
    raise ValueError(f"unknown subtask {subtask!r}; expected one of {SUBTASKS}")


def _key(subtask: str, score: float) -> float:
    r = float(f"{score:.12g}")
    return -r if HIGHER_BETTER[subtask] else r


def rank(subtask: str, scores: dict[str, float]) -> list[str]:
    """Run names, best first; equal scores (12 significant digits) in name order."""
    return sorted(scores, key=lambda n: (_key(subtask, scores[n]), n))


def score_weight(subtask: str, score: float) -> float:
    """A run's weight in a weighted average (see the module table); never negative."""
    if subtask == "age":
        return 1.0 / max(score, 1e-9)
    return max(float(score), 0.0)


@dataclass
class Choice:
    """What one subtask takes: ``weights`` {run: w} summing to 1 (chosen runs only)."""

    subtask: str
    ranking: list[str]                     # every candidate, best first
    scores: dict[str, float]               # every candidate's score
    weights: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def chosen(self) -> list[str]:
        return [n for n in self.ranking if n in self.weights]

    def to_json(self) -> dict:
        return {
            "metric": METRIC[self.subtask],
            "higher_is_better": HIGHER_BETTER[self.subtask],
            "chosen": self.chosen,
            "weights": {n: self.weights[n] for n in self.chosen},
            "candidates": [{"run": n, METRIC[self.subtask]: self.scores[n]} for n in self.ranking],
            "notes": self.notes,
        }


def choose(subtask: str, scores: dict[str, float], mode: str, top: int = 1, weighted: bool = False) -> Choice:
    """Pick the runs and weights of one subtask from their scores.

    ``mode="hybrid"``: the ``top`` best runs; ``mode="mean"``: every run. Weights are
    uniform, or proportional to :func:`score_weight` when ``weighted``.
    """
    order = rank(subtask, scores)
    notes: list[str] = []
    label = METRIC_LABEL[subtask]
    if mode == "hybrid":
        k = min(top, len(order))
        chosen = order[:k]
        if k < len(order) and _key(subtask, scores[order[k - 1]]) == _key(subtask, scores[order[k]]):
            tied = [n for n in order if _key(subtask, scores[n]) == _key(subtask, scores[order[k - 1]])]
            notes.append(f"tie on {subtask} ({label} {scores[order[k - 1]]:.4f}) between {', '.join(tied)}: "
                         f"took {', '.join(n for n in tied if n in chosen)} by name order")
    elif mode == "mean":
        chosen = order
    else:
        raise ValueError(f"unknown fusion mode {mode!r}; expected 'hybrid' or 'mean'")
    if weighted and len(chosen) > 1:
        raw = {n: score_weight(subtask, scores[n]) for n in chosen}
        total = sum(raw.values())
        if total > 0:
            weights = {n: raw[n] / total for n in chosen}
        else:
            notes.append(f"every chosen run has {label} <= 0 on {subtask}: weights fall back to uniform")
            weights = {n: 1.0 / len(chosen) for n in chosen}
    else:
        weights = {n: 1.0 / len(chosen) for n in chosen}
    return Choice(subtask, order, dict(scores), weights, notes)
