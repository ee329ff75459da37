"""Training targets aligned with a feature matrix, and the score used for model selection."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from exvo.corpus import Corpus
from exvo.metrics import COUNTRIES, mae, mean_ccc, uar

CCC_FLOOR = 1e-3
"""Selection score floor: S_MTL is undefined for CCC ≤ 0, but early stopping still needs an order."""


@dataclass
class Targets:
    """Labels for every row of a feature matrix (NaN / -1 where unknown, e.g. Test).

    ``emotions`` ``(n, 10)`` float32 in [0, 1]; ``country`` ``(n,)`` int64 0-3;
    ``age`` ``(n,)`` float64 years; ``age_mean``/``age_std`` years, from Train only
    (the MLP learns ``(age - age_mean) / age_std``).
    """

    emotions: np.ndarray
    country: np.ndarray
    age: np.ndarray
    age_mean: float
    age_std: float

    @property
    def age_z(self) -> np.ndarray:
        return ((self.age - self.age_mean) / self.age_std).astype(np.float32)


def make_targets(corpus: Corpus, ids: list[str], rows: dict[str, np.ndarray],
                 splits=("Train", "Val")) -> Targets:
    n = len(ids)
    emo = np.full((n, 10), np.nan, dtype=np.float32)
    cou = np.full(n, -1, dtype=np.int64)
    age = np.full(n, np.nan, dtype=np.float64)
    pos = {i: k for k, i in enumerate(corpus.ids)}
    for sp in splits:
        r = rows[sp]
        if r.size == 0:
            continue
        src = np.array([pos[ids[k]] for k in r], dtype=np.int64)
        emo[r], cou[r], age[r] = corpus.emotions[src], corpus.country[src], corpus.age[src]
    tr = rows["Train"]
    a = age[tr]
    std = float(a.std()) if a.size > 1 and a.std() > 0 else 1.0
    return Targets(emo, cou, age, float(a.mean()), std)


def selection_score(emo_t, emo_p, cou_t, cou_p, age_t, age_p) -> float:
    """S_MTL with CCC and UAR floored at ``CCC_FLOOR`` (always defined, monotone in each subtask).

    Used only to choose epochs/layers; reported scores use :func:`exvo.metrics.score_all`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        c, _ = mean_ccc(emo_t, emo_p)
    u = uar(cou_t, cou_p)
    m = mae(age_t, age_p)
    return 3.0 / (1.0 / max(c, CCC_FLOOR) + 1.0 / max(u, CCC_FLOOR) + m)


N_COUNTRIES = len(COUNTRIES)
