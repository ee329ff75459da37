"""Run folders of ``exvo learn``: names and metrics (written by :class:`exvo.runs.store.RunWriter`).

``runs/<name>/``::

    config.json                 everything needed to reproduce the run ("kind": "learn")
    metrics.json                Val scores: mean ± std over seeds, per seed, seed-ensemble (schema below)
    history.json                per-epoch selection scores and train losses (torch learners)
    val.csv, test.csv           submission format, the seed-averaged ensemble's predictions
    val_country_proba.csv, test_country_proba.csv
    per_seed/val.npz, per_seed/test.npz   every seed's predictions (exvo.predictions.SeedPredictions)
    models/                     scaler.npz, learner.json (registry name + learner config) and the
                                learner's files: stack.pt + module.json (torch learners, all seeds)
                                or xgb_seed<k>_<task>.ubj + xgb.json

``metrics.json``::

    {"split": "Val", "n": int, "ccc_convention": "challenge",
     "summary": {"ccc": {"mean": f, "std": f}, "uar": {...}, "mae": {...},
                 "s_mtl": {"mean", "std", "n_defined"}},   # S_MTL over the seeds where it is defined
     "per_seed": [{"seed", "ccc", "uar", "mae", "s_mtl", "ccc_per_emotion", "best_epoch"}, ...],
     "ensemble": {"ccc", "uar", "mae", "s_mtl", "ccc_per_emotion"},
     "ccc_per_emotion": {emotion: mean over seeds},
     "selection": {"select_on": "holdout" | "val", "optimistic": bool, "note": str},
     "val_optimistic": bool}

Another task (:mod:`exvo.tasks`) has its own score keys (``TaskSpec.metric_keys``, e.g. ``ccc``,
``score`` for A-VB High; ``uar``, ``score`` for A-VB Type) in place of ccc/uar/mae/s_mtl, and
``ccc_per_emotion`` holds its intensity columns (absent when it has none).

Standard deviations are over seeds with ``ddof = 0`` (as ``np.std``). A seed whose CCC or UAR
is <= 0 has no defined S_MTL (its ``per_seed`` entry says 0.0): the S_MTL summary is over the
``n_defined`` other seeds (mean and std None when there are none). ``optimistic`` /
``val_optimistic`` is true when Val chose the model (``--stop-on val``): its Val scores are
then shown with †. ``best_epoch`` is the epoch whose weights were kept (``None`` for learners
without epochs, e.g. XGBoost).
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from exvo.corpus import Corpus
from exvo.predictions import Predictions, score

METRICS = ("ccc", "uar", "mae", "s_mtl")


def derive_name(specs: Sequence[str], learner: str, arch: str | None) -> str:
    """``["egemaps", "wavlm@12"]``, mlp, sys2 → ``egemaps+wavlm@12_mlp_sys2`` (safe file name)."""
    base = "+".join(specs) + f"_{learner}" + (f"_{arch}" if learner == "mlp" and arch else "")
    return re.sub(r"[^A-Za-z0-9_.@+-]", "-", base)


def ensemble(emo: np.ndarray, proba: np.ndarray, age_years: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seed average of ``(S, n, ...)`` outputs: emotions, country probabilities, age (years)."""
    return emo.mean(0), proba.mean(0), age_years.mean(0)


def score_quiet(pred: Predictions, corpus: Corpus, split: str) -> tuple[dict, list[str]]:
    """:func:`exvo.predictions.score` with its warnings (undefined S_MTL) returned, not printed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = score(pred, corpus, split)
    return s, [str(w.message) for w in caught]


def defined(task, s: dict) -> bool:
    """Whether the combined score of one score dict is defined (a harmonic score needs CCC, UAR > 0)."""
    return task.combine != "harmonic" or (s.get("ccc", 1) > 0 and s.get("uar", 1) > 0)


def metrics_json(per_seed: list[dict], seeds: Sequence[int], best_epochs: Sequence[int | None],
                 ens: dict, split: str, n: int, task=None) -> dict:
    """Assemble ``metrics.json`` (exact schema in the module docstring); ``task`` None → ExVo-MTL."""
    from exvo.tasks import get_task

    task = get_task(task)
    keys, cols, top = task.metric_keys, task.reg_columns, task.score_name

    def pick(s: dict) -> dict:
        return {k: float(s[k]) for k in keys} | ({"ccc_per_emotion": {e: float(s["ccc_per_emotion"][e]) for e in cols}}
                                                 if cols else {})

    rows = [{"seed": int(sd), **pick(s), "best_epoch": (None if be is None else int(be))}
            for sd, s, be in zip(seeds, per_seed, best_epochs)]
    summary = {}
    for k in keys:
        # S_MTL is undefined for a seed with CCC or UAR <= 0 (scored 0.0): left out, not averaged in as 0
        vals = [r[k] for r in rows if k != top or defined(task, r)]
        summary[k] = {"mean": float(np.mean(vals)) if vals else None, "std": float(np.std(vals)) if vals else None}
    summary[top]["n_defined"] = sum(defined(task, r) for r in rows)
    out = {
        "split": split, "n": int(n), "ccc_convention": "challenge",
        "summary": summary,
        "per_seed": rows,
        "ensemble": pick(ens),
    }
    if cols:
        out["ccc_per_emotion"] = {e: float(np.mean([r["ccc_per_emotion"][e] for r in rows])) for e in cols}
    if task.name != "exvo-mtl":
        out["task"] = task.name
    return out


LABELS = {"ccc": ("CCC", 3), "uar": ("UAR", 3), "mae": ("MAE", 2), "s_mtl": ("S_MTL", 3), "score": ("score", 3)}


def score_text(s: dict) -> str:
    """``CCC 0.512 UAR 0.401 MAE 4.20 S_MTL 0.300``: the scores a dict holds (any task), in order."""
    return " ".join(f"{LABELS.get(k, (k, 3))[0]} {s[k]:.{LABELS.get(k, (k, 3))[1]}f}" for k in LABELS if k in s)


def _ens(e: dict, top: str = "s_mtl") -> str:
    """The ensemble's S_MTL, or "S_MTL undefined" where CCC or UAR <= 0 (metrics.json then holds 0.0)."""
    name = LABELS.get(top, (top, 3))[0]
    if top == "s_mtl" and (e.get("ccc", 1) <= 0 or e.get("uar", 1) <= 0):
        return f"{name} undefined"
    return f"{e[top]:.3f}"


def summary_line(run_dir: Path | str, metrics: dict) -> str:
    s = metrics["summary"]

    one = len(metrics["per_seed"]) == 1    # one seed has no spread: "± 0.000" would claim one

    def f(k, d=3):
        if s[k]["mean"] is None:
            return "undefined"
        n_def = s[k].get("n_defined", len(metrics["per_seed"]))
        part = f" ({n_def}/{len(metrics['per_seed'])} seeds defined)" if n_def != len(metrics["per_seed"]) else ""
        return f"{s[k]['mean']:.{d}f}" + ("" if one else f"±{s[k]['std']:.{d}f}") + part

    split = metrics["split"] + ("†" if metrics.get("val_optimistic") else "")
    top = [k for k in LABELS if k in s][-1]
    shown = " ".join(f"{LABELS[k][0]} {f(k, LABELS[k][1])}" for k in LABELS if k in s)
    return (f"{run_dir}: {split} {shown} (ensemble {_ens(metrics['ensemble'], top)}; "
            + ("one seed, std undefined)" if one else f"mean ± std over {len(metrics['per_seed'])} seeds)"))
