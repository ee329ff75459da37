"""Speaker-disjoint splits of Train: the one hold-out rule and the one fold function of exvo.

Every part of exvo that chooses a model on Train speakers it did not fit on uses these:
``exvo learn`` (:mod:`exvo.learn.selection`), few-shot, enrol-to-verify, the task CNNs' 90:10
split and their ``--crossfit`` folds. Rows are positions in the caller's arrays; a speaker's
rows always fall on one side.

* :func:`holdout_split` — per country, ``round(frac × that country's speakers)`` speakers
  held out, at least 1 and never all (a speaker's country is its most frequent one), drawn
  with ``seed``; without countries, one stratum.
* :func:`speaker_folds` — K folds of whole speakers (scikit-learn's ``StratifiedGroupKFold``
  over countries, or ``GroupKFold`` without them), shuffled with ``seed``.
"""
from __future__ import annotations

import numpy as np


def speaker_rows(speakers: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(unique speakers (S,) sorted, [positions (ascending) of each one's rows in speakers (n,)])``.

    One sort, O(n log n): a ``speakers == s`` mask per speaker is O(S·n), quadratic in the
    corpus size when speakers grow with it (ExVo: 1,702 speakers, 59,201 clips).
    """
    speakers = np.asarray(speakers)
    uniq, inv = np.unique(speakers, return_inverse=True)
    order = np.argsort(inv.ravel(), kind="stable")
    return uniq, np.split(order, np.cumsum(np.bincount(inv.ravel(), minlength=uniq.size))[:-1])


def speaker_countries(speakers: np.ndarray, country: np.ndarray) -> dict[str, int]:
    """Each speaker's most frequent country (ties: the lowest code)."""
    out = {}
    country = np.asarray(country)
    for s, rows in zip(*speaker_rows(speakers)):
        c = country[rows]
        c = c[c >= 0]
        out[str(s)] = int(np.bincount(c).argmax()) if c.size else -1
    return out


def holdout_speakers(speakers: np.ndarray, country: np.ndarray, frac: float, seed: int) -> set[str]:
    """The held-out speakers among ``speakers`` ``(n,)`` with clip countries ``country`` ``(n,)``."""
    sc = speaker_countries(speakers, country)
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for c in sorted(set(sc.values())):
        group = sorted(s for s, v in sc.items() if v == c)
        k = min(len(group) - 1, max(1, int(round(frac * len(group)))))
        if k > 0:
            held.update(rng.choice(group, size=k, replace=False).tolist())
    if not held:
        raise ValueError(f"a speaker-disjoint hold-out needs a country with at least 2 Train speakers; found "
                         f"{len(sc)} speaker(s). Use --stop-on val on so small a corpus (Val scores are then optimistic)")
    return held


def holdout_split(train_rows: np.ndarray, speakers: np.ndarray, country: np.ndarray | None = None,
                  frac: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Speaker-disjoint ``(fit rows, held-out rows)`` of ``train_rows`` — the one hold-out rule of
    exvo (learn, fewshot, verify, task CNNs). ``speakers`` and ``country`` are aligned with
    ``train_rows``; ``country=None`` (a corpus or task without countries): one stratum, at
    least one speaker on each side."""
    speakers = np.asarray(speakers)
    if country is None:
        n = np.unique(speakers).size
        if n < 2:
            raise ValueError(f"a speaker-disjoint hold-out needs at least 2 speakers, got {n}")
        country = np.full(speakers.shape[0], -1)
    held = holdout_speakers(speakers, np.asarray(country), frac, seed)
    mask = np.array([s in held for s in speakers], dtype=bool)
    return train_rows[~mask], train_rows[mask]


def speaker_folds(speakers: np.ndarray, k: int, seed: int, country: np.ndarray | None = None) -> np.ndarray:
    """``(n_rows,)`` fold index in ``0..k-1`` for rows with ``speakers`` ``(n_rows,)``: every
    speaker's rows share one fold, folds are balanced in clips (and, given ``country``
    ``(n_rows,)``, stratified by it), every fold has at least one speaker."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    speakers = np.asarray(speakers)
    n_spk = np.unique(speakers).size
    if not 2 <= int(k) <= n_spk:
        raise ValueError(f"--crossfit {k}: need 2 <= K <= number of Train speakers ({n_spk})")
    X = np.zeros((speakers.size, 1))
    if country is not None and np.unique(country).size > 1:
        splitter = StratifiedGroupKFold(n_splits=int(k), shuffle=True, random_state=int(seed))
        parts = splitter.split(X, np.asarray(country), groups=speakers)
    else:
        parts = GroupKFold(n_splits=int(k), shuffle=True, random_state=int(seed)).split(X, groups=speakers)
    fold = np.full(speakers.size, -1, dtype=np.int64)
    for i, (_, test) in enumerate(parts):
        fold[test] = i
    empty = sorted(set(range(int(k))) - set(fold.tolist()))
    if empty:
        raise ValueError(f"{k} speaker folds left fold(s) {empty} empty ({n_spk} speakers); choose a smaller K")
    return fold
