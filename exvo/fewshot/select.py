"""Few-shot model selection on held-out Train speakers: one hold-out, or K speaker folds.

A :class:`Part` is ``(fit rows, held-out episodes)``; held-out speakers get the Val protocol
(first 2 clips support, the rest query) so that epochs and fine-tuning settings are chosen on
the very task that is scored, never on Val.

* ``select.on="folds"`` (the default): the K speaker folds of :func:`exvo.learn.selection.selection_folds`,
  the same folds (and fold code) as ``exvo learn``. Every Train speaker is held out by exactly
  one fold model; those models' personalised query predictions are the run's out-of-fold (OOF)
  estimate. The final model of each seed is refitted on all of Train for the median over
  seeds × folds of the chosen epochs: a few-shot model has one speaker head per fit speaker,
  so fold models of different speakers are not averaged.
* ``select.on="holdout"``: one speaker-disjoint part of Train (``select.holdout_frac``), as
  :func:`holdout_protocol`; the model trained on the rest is the final one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from exvo.fewshot import protocol as P
from exvo.fewshot.train import episode_enrolment
from exvo.learn.selection import selection_folds
from exvo.splits import holdout_split, speaker_rows


@dataclass
class Part:
    """One selection part: models fit on ``fit_rows`` and are scored on the queries of ``eps``.
    Rows are feature-matrix rows. ``q`` ``(n,)`` the query rows, ``enr`` ``(n, 2)`` their
    enrolment (support) rows."""

    fit_rows: np.ndarray
    eps: list[P.Episode]

    def __post_init__(self):
        self.q, self.enr = episode_enrolment(self.eps)


def held_episodes(held_rows: np.ndarray, spk: np.ndarray, shots: int = P.SHOTS) -> list[P.Episode]:
    """Val-protocol episodes of the speakers of ``held_rows`` (first ``shots`` clips = support, in
    row order); a speaker with no clip beyond its support has nothing to score and is left out.
    ``support_y`` is filled by the caller (zeros here)."""
    eps = []
    own = dict(zip(*speaker_rows(spk[held_rows])))       # one grouping, not a mask per speaker
    for s in dict.fromkeys(spk[held_rows].tolist()):
        r = held_rows[own[s]]
        if r.size > shots:
            eps.append(P.Episode(str(s), r[:shots], r[shots:], np.zeros((shots, 10))))
    return eps


def holdout_protocol(rows: np.ndarray, spk: np.ndarray, frac: float, seed: int = 0, shots: int = P.SHOTS):
    """Speaker-disjoint ``(fit rows, hold-out episodes)`` of Train rows (feature-matrix rows),
    by the one hold-out rule (:func:`exvo.splits.holdout_split`, one stratum)."""
    if len(set(spk[rows].tolist())) < 2:
        raise ValueError("few-shot training needs at least 2 Train speakers (one is held out for model selection)")
    fit, held_rows = holdout_split(rows, spk[rows], None, frac, seed)
    eps = held_episodes(held_rows, spk, shots)
    if not eps:
        raise ValueError(f"no held-out Train speaker has more than {shots} clips; the hold-out needs query clips")
    return fit, eps


def make_parts(corpus, fm, spk: np.ndarray, select, note: Callable[[str], None]) -> list[Part]:
    """The selection parts of a few-shot run over the feature matrix ``fm`` (``spk`` ``(N,)`` the
    speaker of every row): K speaker folds or one hold-out, as ``select`` says."""
    train = fm.rows["Train"]
    if select.on == "holdout":
        return [Part(*holdout_protocol(train, spk, select.holdout_frac, seed=select.holdout_seed))]
    parts = []
    for k, (fit, held) in enumerate(selection_folds(corpus, fm.ids, fm.rows, select, note)):
        eps = held_episodes(held, spk)
        if not eps:
            raise ValueError(f"speaker fold {k + 1} has no speaker with more than {P.SHOTS} clips, so nothing to "
                             "choose epochs on; use fewer --folds or --stop-on holdout")
        parts.append(Part(fit, eps))
    return parts
