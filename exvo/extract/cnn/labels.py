"""Hard labels for the task CNNs (the speaker-level splits they train on are :mod:`exvo.splits`).

* ER: the emotion with the highest intensity. After the raters' max-normalisation several
  emotions of a clip can be exactly equal (often all 1.0); taking the first (``argmax``)
  would send every tie to Awe, the first emotion in the official order. Ties are broken
  by the clip's ``File_ID``: among the tied emotions (official order) the one at
  ``int(sha256(File_ID), 16) mod n_tied`` is chosen (:func:`tie_break`). The choice is
  uniform over the tied emotions across clips, independent of row order and split, and
  the same on every machine.
* CR: ``Country`` (4 codes); custom columns: their distinct strings, sorted.
* The paper's split: 90:10 of Train by speaker (seeded; per country where the corpus has them);
  the 10 % only drive the learning-rate schedule and model selection (:func:`exvo.splits.holdout_split`).
* Cross-fitting: K folds of Train speakers (:func:`exvo.splits.speaker_folds`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from exvo.corpus import Corpus
from exvo.metrics import COUNTRIES, EMOTIONS

EMOTION_LABEL = "emotion"
"""Pseudo label column: the strongest of the 10 emotion intensities (the ER task)."""


@dataclass
class Labels:
    """Hard labels of every corpus row: ``y`` ``(n_clips,)`` int, -1 where missing; ``classes`` names."""

    y: np.ndarray
    classes: list[str]
    source: str          # "emotion" (strongest, ties by File_ID), "Country", or a CSV column
    n_ties: int = 0      # ER: labelled clips whose strongest emotion was tied


def tie_break(file_id: str, n_tied: int) -> int:
    """Index in ``range(n_tied)`` chosen for a clip whose strongest emotions tie (see module docstring)."""
    return int(hashlib.sha256(str(file_id).encode("utf-8")).hexdigest(), 16) % n_tied


def strongest_emotion(intensities: np.ndarray, file_ids) -> tuple[np.ndarray, int]:
    """``(n, 10)`` intensities → ``((n,) int64 class, -1 where any is NaN; number of tied rows)``."""
    e = np.asarray(intensities, dtype=np.float64)
    ok = np.isfinite(e).all(axis=1)
    y = np.full(len(e), -1, dtype=np.int64)
    ties = 0
    for r in np.flatnonzero(ok):
        top = np.flatnonzero(e[r] == e[r].max())
        if top.size > 1:
            ties += 1
            y[r] = top[tie_break(file_ids[r], top.size)]
        else:
            y[r] = top[0]
    return y, ties


def task_labels(corpus: Corpus, label_column: str) -> Labels:
    """Class labels from ``label_column``: ``"emotion"`` (strongest of the 10 intensities),
    ``"Country"`` (names of the 4 codes) or any other column of ``data_info.csv`` (strings;
    empty cells are unlabelled)."""
    if label_column == EMOTION_LABEL and EMOTION_LABEL not in corpus.extra:
        y, ties = strongest_emotion(corpus.emotions, corpus.ids)
        return Labels(y, list(EMOTIONS), EMOTION_LABEL, ties)
    if label_column == "Country":
        return Labels(corpus.country.astype(np.int64), list(COUNTRIES), "Country")
    if label_column in ("Subject_ID", "File_ID", "Split"):
        raise ValueError(f"--label-column {label_column!r} cannot be a class label here (training holds out whole "
                         "speakers and needs a label shared across them)")
    if label_column not in corpus.extra:
        cols = sorted(corpus.extra) + ["Country", EMOTION_LABEL]
        raise ValueError(f"label column {label_column!r} not found in {corpus.root}/data_info.csv; "
                         f"available: {', '.join(cols)}")
    raw = np.array([str(v).strip() for v in corpus.extra[label_column]], dtype=object)
    classes = sorted({v for v in raw if v})
    if len(classes) < 2:
        raise ValueError(f"label column {label_column!r} has {len(classes)} distinct non-empty value(s); "
                         "a classifier needs at least 2")
    pos = {c: k for k, c in enumerate(classes)}
    y = np.array([pos.get(v, -1) for v in raw], dtype=np.int64)
    return Labels(y, classes, label_column)
