"""K speaker folds of Train for any learner: fold models, their ensemble or a refit, and the
out-of-fold (OOF) predictions that are the run's honest estimate from Train alone.

With ``SelectionConfig(on="folds")`` every seed trains one model per fold, each early-stopped
on its own held-out speakers (:func:`exvo.splits.speaker_folds`). A learner that trains many
models at once (the module learners: ``"folds"`` in its ``uses``) gets every fold in one call
and trains seeds × folds together; any other learner (XGBoost, Burst2Vec, a plug-in) is
called once per fold. Both give a :class:`FoldFitted`:

* ``predict(X)`` — per seed, the mean over its K fold models (emotions, country
  probabilities, standardised age), ``final="ensemble"``;
* ``oof`` — every Train row predicted by the fold model that never saw its speaker,
  ``(S, n_train, …)`` in the order of the Train rows.

``final="refit"`` trains one model per seed on all of Train for the median over folds of
the chosen epoch count (:func:`refit`).

Saved under ``models/``: ``folds.json`` (K, the fold of every Train row, how the models are
laid out) and either one stack of S × K models (seed-major) or ``fold<k>/`` per fold.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

FOLDS_META = "folds.json"


class FoldFitted:
    """The K fold models of every seed. ``parts``: one fitted learner per fold (each with all S
    seeds), or ``[one fitted with S × K models, seed-major]`` (``stacked=True``)."""

    def __init__(self, parts: list, seeds: list[int], k: int, stacked: bool, fold_of_train: np.ndarray,
                 history: dict | None = None):
        self.parts, self.seeds, self.k, self.stacked = parts, list(seeds), int(k), stacked
        self.fold_of_train = np.asarray(fold_of_train, dtype=np.int64)
        self.history = history
        self.info: dict = {"folds": self.k}
        self.best_epoch: list[int | None] = [None] * len(self.seeds)
        self.fold_epochs: list[list[int | None]] = [[None] * self.k for _ in self.seeds]   # [seed][fold]
        self.oof: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def stack(self):
        """The S × K models' stacked weights (module learners), else None."""
        return getattr(self.parts[0], "stack", None) if self.stacked else None

    def fold_outputs(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every fold model's outputs: ``(emotions (S, K, n, 10), country proba (S, K, n, 4),
        standardised age (S, K, n))``."""
        S, K = len(self.seeds), self.k
        if self.stacked:
            e, p, a = self.parts[0].predict(X)
            return (e.reshape(S, K, *e.shape[1:]), p.reshape(S, K, *p.shape[1:]), a.reshape(S, K, *a.shape[1:]))
        outs = [f.predict(X) for f in self.parts]                 # K × (S, n, …)
        return tuple(np.stack([o[i] for o in outs], axis=1) for i in range(3))

    def predict(self, X: np.ndarray):
        """Per seed, the mean of its fold models: ``(S, n, 10), (S, n, 4), (S, n)``."""
        e, p, a = self.fold_outputs(X)
        return e.mean(1), p.mean(1), a.mean(1)

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        if self.stacked:
            self.parts[0].save(folder)
        else:
            for k, f in enumerate(self.parts):
                (folder / f"fold{k}").mkdir(parents=True, exist_ok=True)
                f.save(folder / f"fold{k}")
        (folder / FOLDS_META).write_text(json.dumps({"k": self.k, "stacked": self.stacked, "seeds": self.seeds,
                                                     "fold_of_train": self.fold_of_train.tolist(),
                                                     "fold_epochs": self.fold_epochs}, indent=1))


def load_fitted(folder: Path, load: Callable[[Path, str], object], device: str = "cpu"):
    """A run's saved models: a :class:`FoldFitted` when ``folder`` holds ``folds.json``, else
    ``load(folder, device)`` (the learner's own)."""
    folder = Path(folder)
    meta_path = folder / FOLDS_META
    if not meta_path.is_file():
        return load(folder, device)
    meta = json.loads(meta_path.read_text())
    k = int(meta["k"])
    parts = [load(folder, device)] if meta["stacked"] else [load(folder / f"fold{i}", device) for i in range(k)]
    out = FoldFitted(parts, meta["seeds"], k, bool(meta["stacked"]), np.asarray(meta["fold_of_train"]))
    out.fold_epochs = meta.get("fold_epochs") or out.fold_epochs
    return out


def fold_of(train_rows: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """``(n_train,)``: the fold whose selection rows hold each Train row (every row exactly once)."""
    pos = {int(r): i for i, r in enumerate(train_rows)}
    out = np.full(len(train_rows), -1, dtype=np.int64)
    for k, (_, held) in enumerate(folds):
        for r in held:
            if out[pos[int(r)]] != -1:
                raise ValueError(f"Train row {int(r)} is held out by folds {out[pos[int(r)]]} and {k}")
            out[pos[int(r)]] = k
    if (out < 0).any():
        raise ValueError(f"{int((out < 0).sum())} Train row(s) are held out by no fold")
    return out


def fit_folds(learner, data, lcfg, folds: list[tuple[np.ndarray, np.ndarray]], train_rows: np.ndarray) -> FoldFitted:
    """Train every seed on every fold (``data``: a :class:`~exvo.learn.registry.FitData`; its
    ``fit_rows``/``select_rows`` are replaced per fold) and assemble the OOF predictions."""
    fold = fold_of(train_rows, folds)
    if "folds" in learner.uses:
        fitted = learner.fit(replace(data, folds=folds), lcfg)
        ff = FoldFitted([fitted], data.seeds, len(folds), True, fold, fitted.history)
        epochs = np.asarray(fitted.best_epoch, dtype=object).reshape(len(data.seeds), len(folds))
    else:
        parts, hist = [], []
        for k, (fit_rows, held) in enumerate(folds):
            data.echo(f"  fold {k + 1}/{len(folds)}: fit {fit_rows.size} clips, early stopping on {held.size}")
            parts.append(learner.fit(replace(data, fit_rows=fit_rows, select_rows=held), lcfg))
            hist.append(parts[-1].history)
        ff = FoldFitted(parts, data.seeds, len(folds), False, fold, {"folds": hist})
        epochs = np.array([[p.best_epoch[j] for p in parts] for j in range(len(data.seeds))], dtype=object)
    ff.fold_epochs = [[None if v is None else int(v) for v in row] for row in epochs]
    ff.best_epoch = [median_epoch(row) for row in ff.fold_epochs]
    ff.info["fold_epochs"] = ff.fold_epochs
    ff.oof = out_of_fold(ff, data.X, train_rows, fold)
    return ff


def refit(learner, data, lcfg, ff: FoldFitted, train_rows: np.ndarray):
    """One model per seed on all of Train for the median over seeds × folds of the chosen epoch
    count (no early stopping: the last epoch is kept). Its ``oof`` and ``fold_epochs`` are the
    fold models' (the refit has no held-out rows of its own)."""
    if dataclass_has(lcfg, "rounds"):             # boosters: each head's median number of trees
        return _refit_rounds(learner, data, lcfg, ff, train_rows)
    epochs = median_epoch([v for row in ff.fold_epochs for v in row])
    if epochs is None:
        raise ValueError(f"--final refit needs a learner with an epoch loop; {learner.name!r} chose no epochs "
                         "(use --final ensemble)")
    if "train" in learner.uses:
        data = replace(data, train=fixed_epochs(data.train, epochs))
        epochs = data.train.epochs
    elif dataclass_has(lcfg, "train"):
        lcfg = replace(lcfg, train=fixed_epochs(lcfg.train, epochs))
        epochs = lcfg.train.epochs
    else:
        raise ValueError(f"--final refit: {learner.name!r} has no epoch settings to refit with (use --final ensemble)")
    data.echo(f"  refit on all {len(train_rows)} Train clips for {epochs} epoch(s) (median over folds)")
    fitted = learner.fit(replace(data, fit_rows=train_rows, select_rows=train_rows, folds=None), lcfg)
    fitted.oof, fitted.fold_epochs = ff.oof, ff.fold_epochs
    fitted.info = {**(fitted.info or {}), "refit_epochs": epochs, "fold_epochs": ff.fold_epochs}
    return fitted


def fixed_epochs(train, epochs: int):
    """``train`` (a :class:`exvo.config.TrainConfig`) for a refit without selection rows: exactly
    ``max(1, epochs)`` epochs, no early stopping, the last epoch kept. The refit of every learner
    that chooses epochs on speaker folds (learn, few-shot, enrol-to-verify)."""
    e = max(1, int(epochs))
    return replace(train, epochs=e, patience=e + 1, restore="last")


def _refit_rounds(learner, data, lcfg, ff: FoldFitted, train_rows: np.ndarray):
    """XGBoost's refit: every head with the median over seeds × folds of its chosen trees."""
    best = [b for part in ff.parts for b in (part.info or {}).get("best_iteration", [])]
    rounds = {t: int(np.floor(np.median([b[t] + 1 for b in best]) + 0.5)) for t in best[0]}
    data.echo("  refit on all Train clips with " + ", ".join(f"{t} {n} trees" for t, n in rounds.items())
              + " (median over folds)")
    fitted = learner.fit(replace(data, fit_rows=train_rows, select_rows=train_rows, folds=None),
                         replace(lcfg, rounds=rounds))
    fitted.oof, fitted.fold_epochs = ff.oof, ff.fold_epochs
    fitted.info = {**(fitted.info or {}), "refit_rounds": rounds,
                   "fold_best_iteration": [(p.info or {}).get("best_iteration") for p in ff.parts]}
    return fitted


def dataclass_has(obj, name: str) -> bool:
    import dataclasses

    return dataclasses.is_dataclass(obj) and name in {f.name for f in dataclasses.fields(obj)}


def out_of_fold(ff: FoldFitted, X: np.ndarray, train_rows: np.ndarray, fold: np.ndarray):
    """``(emotions (S, n_train, 10), country proba (S, n_train, 4), standardised age (S, n_train))``:
    each Train row from the fold model that held its speaker out."""
    e, p, a = ff.fold_outputs(X[train_rows])                      # (S, K, n_train, …)
    idx = np.arange(len(train_rows))
    return e[:, fold, idx], p[:, fold, idx], a[:, fold, idx]


def median_epoch(epochs: list[int | None]) -> int | None:
    """The median chosen epoch over folds (rounded half up), None when the learner has none."""
    vals = [v for v in epochs if v is not None]
    return int(np.floor(np.median(vals) + 0.5)) if vals else None


def first_epoch_heads(ff: FoldFitted) -> list[str]:
    """Warnings for seeds whose chosen epoch was the first (or none improved) on most folds: the
    selection rows stopped the model before it learned (too few speakers per fold?)."""
    out = []
    for seed, row in zip(ff.seeds, ff.fold_epochs):
        vals = [v for v in row if v is not None]
        if vals and sum(v <= 1 for v in vals) > len(vals) / 2:
            out.append(f"seed {seed}: the chosen epoch was the first (or the initial weights) on "
                       f"{sum(v <= 1 for v in vals)} of {len(vals)} folds; the folds may be too small to early-stop "
                       "on (fewer --folds, or more patience)")
    best = [b for part in ff.parts for b in ((part.info or {}).get("best_iteration") or []) if b]
    for head in (best[0] if best else {}):
        first = sum(b[head] == 0 for b in best)
        if first > len(best) / 2:
            out.append(f"the {head} booster kept only its first tree on {first} of {len(best)} seed × fold fits: "
                       "it learned nothing its selection rows could see (fewer --folds, or more speakers)")
    return out
