"""Compose predictions column by column from weighted source runs.

Each subtask owns its columns: emotion → the 10 emotion columns, country → ``Country``
and the 4 country probabilities, age → ``Age``. A subtask taken from one run (weight 1)
copies that run's columns exactly; several runs are averaged with their weights:
emotions and age as weighted means, country as the argmax of the weighted mean of the
probabilities (a run without probabilities counts as one-hot on its ``Country``).
"""
from __future__ import annotations

import numpy as np

from exvo.metrics import COUNTRIES
from exvo.predictions import Predictions


def _one_hot(country: np.ndarray, k: int = len(COUNTRIES)) -> np.ndarray:
    out = np.zeros((country.size, k))
    out[np.arange(country.size), country] = 1.0
    return out


def compose(preds: dict[str, Predictions], weights: dict[str, dict[str, float]]) -> tuple[Predictions, list[str]]:
    """``(predictions, notes)`` from ``preds`` {run: Predictions, all aligned to the same ids}.

    ``weights`` = ``{"emotion": {run: w}, "country": {...}, "age": {...}}``, each summing to 1; a
    subtask the task lacks (:func:`exvo.fusion.select.subtasks`) has no entry and stays empty.
    """
    first = next(iter(preds.values()))
    weights = dict(weights)
    for sub in ("emotion", "country", "age"):
        weights.setdefault(sub, {next(iter(preds)): 1.0})     # absent from the task: the (empty) slot of one run
    ids = list(first.ids)
    for n, p in preds.items():
        if list(p.ids) != ids:
            raise ValueError(f"run {n}: predictions not aligned with {ids[:3]}…; align them with .take(ids) first")
    notes: list[str] = []

    def mix(sub: str, get) -> np.ndarray:
        w = weights[sub]
        if abs(sum(w.values()) - 1.0) > 1e-9:
            raise ValueError(f"{sub} weights must sum to 1, got {w}")
        return sum(wt * get(preds[n]) for n, wt in w.items())

    def single(sub: str) -> str | None:
        w = weights[sub]
        return next(iter(w)) if len(w) == 1 else None

    src = single("emotion")
    emotions = preds[src].emotions.copy() if src else mix("emotion", lambda p: p.emotions)
    src = single("age")
    age = preds[src].age.copy() if src else mix("age", lambda p: p.age)
    src = single("country")
    if src:
        p = preds[src]
        country = p.country.copy()
        proba = None if p.country_proba is None else p.country_proba.copy()
    else:
        no_proba = sorted(n for n in weights["country"] if preds[n].country_proba is None)
        if no_proba:
            notes.append(f"run(s) {', '.join(no_proba)} have no country probabilities: their Country counts as one-hot")
        k = first.task.n_classes
        proba = mix("country", lambda p: p.country_proba if p.country_proba is not None else _one_hot(p.country, k))
        country = proba.argmax(axis=1)
    return Predictions(ids, emotions, country, age, proba, first.task), notes
