"""Training targets aligned with a feature matrix, and the score used for model selection."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from exvo.corpus import Corpus
from exvo.metrics import COUNTRIES, combined_score, mae, mean_ccc, uar

CCC_FLOOR = 1e-3
"""Selection score floor: S_MTL is undefined for CCC ≤ 0, but early stopping still needs an order."""


@dataclass
class Targets:
    """Labels of a task for every row of a feature matrix (NaN / -1 where unknown, e.g. Test).

    The three fields are the task's slots (:mod:`exvo.tasks`), named after ExVo-MTL's:
    ``emotions`` ``(n, k)`` float32 the intensities (ExVo: 10 emotions in [0, 1]; width 0 when the
    task has none); ``country`` ``(n,)`` int64 class codes (ExVo: 0-3; all 0 when the task has no
    class); ``age`` ``(n,)`` float64 the value (ExVo: years; 0 when none); ``age_mean``/``age_std``
    from Train only (learners learn ``(age - age_mean) / age_std``). ``task``: None → ExVo-MTL.
    """

    emotions: np.ndarray
    country: np.ndarray
    age: np.ndarray
    age_mean: float
    age_std: float
    task: object = None

    def __post_init__(self):
        from exvo.tasks import get_task

        self.task = get_task(self.task)

    @property
    def age_z(self) -> np.ndarray:
        return ((self.age - self.age_mean) / self.age_std).astype(np.float32)


def make_targets(corpus: Corpus, ids: list[str], rows: dict[str, np.ndarray],
                 splits=("Train", "Val")) -> Targets:
    """The labels of ``corpus.task`` for the rows of a feature matrix (``rows``: split → row indices)."""
    n = len(ids)
    task = corpus.task
    reg, cls, val = corpus.task_labels
    emo = np.full((n, reg.shape[1]), np.nan, dtype=np.float32)
    cou = np.full(n, -1 if task.has("class") else 0, dtype=np.int64)
    age = np.full(n, np.nan if task.has("value") else 0.0, dtype=np.float64)
    pos = {i: k for k, i in enumerate(corpus.ids)}
    for sp in splits:
        r = rows[sp]
        if r.size == 0:
            continue
        src = np.array([pos[ids[k]] for k in r], dtype=np.int64)
        emo[r], cou[r], age[r] = reg[src], cls[src], val[src]
    tr = rows["Train"]
    a = age[tr]
    std = float(a.std()) if a.size > 1 and a.std() > 0 else 1.0
    return Targets(emo, cou, age, float(a.mean()), std, task)


def selection_score(emo_t, emo_p, cou_t, cou_p, age_t, age_p, task=None) -> float:
    """The task's combined score with CCC and UAR floored at ``CCC_FLOOR`` (always defined, monotone
    in each group); ExVo-MTL: S_MTL. Used only to choose epochs/layers; reported scores use
    :func:`exvo.metrics.score_all`. ``task`` None → ExVo-MTL."""
    from exvo.tasks import get_task

    task = get_task(task)
    m = {}
    if task.has("intensities"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            m["ccc"], _ = mean_ccc(emo_t, emo_p)
    if task.has("class"):
        m["uar"] = uar(cou_t, cou_p)
    if task.has("value"):
        m["mae"] = mae(age_t, age_p)
    return combined_score(task, m, floor=CCC_FLOOR)


N_COUNTRIES = len(COUNTRIES)
