"""``@best``: choose an SSL layer with a closed-form ridge probe (fit rows → selection rows).

For every layer: standardise with Train statistics, fit one multi-output ridge regression
to ``[10 emotions, one-hot country (4), standardised age]`` and score its predictions on the
selection rows by the selection S_MTL (emotions clipped to [0, 1], country = argmax of its 4
outputs, age in years). A grid of 5 ridge strengths costs one eigendecomposition per layer
(of XᵀX when dim ≤ n_fit, else of XXᵀ). The layer with the best score wins.

The rows follow :mod:`exvo.learn.selection`, the same rule and code as the learners: with
``on="folds"`` (the default presets) the probe is fitted once per speaker fold of Train and its
out-of-fold predictions on every Train clip are scored; with ``on="holdout"`` it is fitted on
Train minus a speaker-disjoint hold-out and scored on the hold-out; either way Val labels never
choose the layer. With ``on="val"`` it is fitted on Train and scored on Val (the choice is then
optimistic for Val numbers, †).
"""
from __future__ import annotations

import numpy as np

from exvo.config import SelectionConfig
from exvo.corpus import Corpus
from exvo.extract.cache import EmbeddingCache
from exvo.learn.features import Scaler
from exvo.learn.selection import selection_folds
from exvo.learn.targets import make_targets, selection_score

ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
"""Ridge strengths relative to n_train (the mean eigenvalue of XᵀX for standardised X)."""


def ridge_val_scores(Xtr: np.ndarray, Ytr: np.ndarray, Xva: np.ndarray, alphas=ALPHAS) -> list[np.ndarray]:
    """Val predictions ``(n_val, T)`` of ridge fits for each alpha (X standardised on Train, Y any)."""
    Xtr = Xtr.astype(np.float64); Xva = Xva.astype(np.float64)
    ymean = Ytr.mean(axis=0)
    Yc = Ytr - ymean
    n, d = Xtr.shape
    if d <= n:
        e, V = np.linalg.eigh(Xtr.T @ Xtr)
        A = Xva @ V
        B = V.T @ (Xtr.T @ Yc)
    else:  # dual (kernel) form: same solution, n × n instead of d × d
        e, U = np.linalg.eigh(Xtr @ Xtr.T)
        A = (Xva @ Xtr.T) @ U
        B = U.T @ Yc
    e = np.maximum(e, 0.0)
    return [A @ (B / (e + a * n)[:, None]) + ymean for a in alphas]


def probe_layers(cache: EmbeddingCache, corpus: Corpus, sel: SelectionConfig | None = None) -> tuple[int, dict]:
    """``(best layer, {"method", "layer_scores": {layer: score}, "alpha": {layer: alpha}})``."""
    sel = sel or SelectionConfig()
    cached = set(cache.ids)        # once: a set per id made this quadratic (hours at 59,201 clips)
    ids = [i for i in corpus.ids if i in cached]
    pos = {i: k for k, i in enumerate(ids)}
    rows = {sp: np.array([pos[i] for i in corpus.split_ids(sp) if i in pos], dtype=np.int64)
            for sp in ("Train", "Val", "Test")}
    if sel.on == "val" and rows["Val"].size < 2:
        raise ValueError(f"@best with --stop-on val needs labelled Val clips in {cache.path.name}; found {rows['Val'].size}")
    t = make_targets(corpus, ids, rows)
    folds = selection_folds(corpus, ids, rows, sel)     # [(fit, held)]: K folds, one hold-out, or Train → Val
    va = np.concatenate([held for _, held in folds])    # with folds: every Train clip, once
    k, C = t.task.n_reg, t.task.n_classes                 # the task's widths (ExVo: 10 emotions, 4 countries)
    lo, hi = t.task.group("intensities").range if t.task.has("intensities") else (0.0, 1.0)
    Y = np.concatenate([t.emotions, np.eye(C)[np.maximum(t.country, 0)], t.age_z[:, None]], axis=1)
    scores, alphas = {}, {}
    for pos_, layer in enumerate(cache.layer_ids):    # the model's layer indices (a --layers cache keeps some)
        X = cache.layer(pos_, ids)
        Scaler.fit(X, rows["Train"]).apply_(X)
        # per alpha, the predictions of the selection rows, each from the fit that did not see its speaker
        per_fold = [ridge_val_scores(X[fit], Y[fit], X[held]) for fit, held in folds]
        best = (-1.0, None)
        for j, a in enumerate(ALPHAS):
            P = np.concatenate([f[j] for f in per_fold])
            s = selection_score(t.emotions[va], np.clip(P[:, :k], lo, hi), t.country[va],
                                P[:, k:k + C].argmax(1), t.age[va], P[:, -1] * t.age_std + t.age_mean, t.task)
            if s > best[0]:
                best = (s, a)
        scores[layer], alphas[layer] = round(best[0], 5), best[1]
    layer = max(scores, key=lambda k: scores[k])
    where = {"val": "Train → Val", "folds": f"{len(folds)} speaker folds of Train, out-of-fold",
             "holdout": "Train minus hold-out → speaker-disjoint Train hold-out"}[sel.on]
    return layer, {"method": f"ridge probe, {where} selection S_MTL", "selected_on": sel.on,
                   "layer_scores": scores, "alpha": alphas}
