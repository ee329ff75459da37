"""Seed by seed: pair the seeds of fused runs, score every seed, summarise over seeds.

A learn run keeps every seed's predictions (``per_seed/<split>.npz``,
:class:`exvo.predictions.SeedPredictions`). Fusion combines **seed k of every source**
into fused seed k, so a fusion row has a mean ± std over seeds like a learn row, and its
seed ensemble is the average of its fused seeds.

Pairing rule: seeds are paired by position in each run's seed list (not by seed value),
up to the smallest seed count among the sources; the extra seeds of larger runs are not
used, and a note says so. When a source has no per-seed file (runs written before
per-seed files existed) there is nothing to pair: the fusion falls back to its sources'
seed-averaged ``val.csv`` and has no mean ± std.

S_MTL is undefined for a seed whose CCC <= 0 or UAR <= 0 (:func:`exvo.metrics.s_mtl`
reports 0.0 for it); :func:`summarise` leaves such seeds out of the S_MTL mean and counts
them, instead of averaging a 0 in.
"""
from __future__ import annotations

import warnings

import numpy as np

from exvo.metrics import EMOTIONS, score_all
from exvo.predictions import Predictions, SeedPredictions

METRICS = ("ccc", "uar", "mae", "s_mtl")
ALL_KEYS = ("ccc", "uar", "mae", "s_mtl", "score")
"""Every score key a task can have (:attr:`exvo.tasks.TaskSpec.metric_keys`), in display order."""


def keys_of(scores: dict) -> list[str]:
    """The score keys a score dict holds (ExVo: ccc, uar, mae, s_mtl)."""
    return [k for k in ALL_KEYS if k in scores]


def s_mtl_defined(scores: dict) -> bool:
    """True when the seed's S_MTL is defined (CCC > 0 and UAR > 0, as :func:`exvo.metrics.s_mtl`); a
    task scored by another rule (``score``) counts as defined."""
    if "s_mtl" not in scores and "score" in scores:
        return True
    if isinstance(scores.get("s_mtl_defined"), bool):
        return scores["s_mtl_defined"]
    try:
        return float(scores["ccc"]) > 0 and float(scores["uar"]) > 0
    except (KeyError, TypeError, ValueError):
        return False


def pair_count(sources: dict[str, SeedPredictions]) -> tuple[int, list[str]]:
    """``(K, notes)``: fused seeds = the smallest seed count among ``sources`` (paired by index)."""
    counts = {n: len(sp.seeds) for n, sp in sources.items()}
    k = min(counts.values())
    notes = []
    if len(set(counts.values())) > 1:
        more = ", ".join(f"{n} ({c})" for n, c in sorted(counts.items()) if c > k)
        notes.append(f"sources have different seed counts; seeds paired by index up to the smallest count ({k}): "
                     f"the extra seeds of {more} are not used")
    return k, notes


def broadcast_fixed(sources: dict[str, SeedPredictions], fixed: set[str]) -> tuple[dict[str, SeedPredictions], list[str]]:
    """A ``fixed`` source with ONE seed (a single trained model whose predictions no learner seed
    changes, e.g. a task CNN's own posteriors) is repeated to the largest seed count of the
    others, so that it does not cut every fused run down to one seed; ``(sources, notes)``."""
    others = [len(sp.seeds) for n, sp in sources.items() if n not in fixed]
    k = max(others) if others else 1
    out, notes = dict(sources), []
    for n in sorted(fixed & set(sources)):
        sp = sources[n]
        if len(sp.seeds) == 1 and k > 1:
            out[n] = SeedPredictions(sp.ids, list(sp.seeds) * k, np.repeat(sp.emotions, k, 0),
                                     np.repeat(sp.country_proba, k, 0), np.repeat(sp.age, k, 0), sp.task)
            notes.append(f"{n} is one model: its predictions enter each of the {k} fused seeds unchanged")
    return out, notes


def seed_views(sources: dict[str, SeedPredictions], k: int, ids: list[str]) -> dict[str, Predictions]:
    """Seed index ``k`` of every source, rows in the order of ``ids``."""
    return {n: sp.seed(k).take(ids) for n, sp in sources.items()}


def ensemble_views(sources: dict[str, SeedPredictions], n_seeds: int, ids: list[str]) -> dict[str, Predictions]:
    """Each source's ensemble of its first ``n_seeds`` seeds (the paired ones), rows in ``ids`` order."""
    out = {}
    for n, sp in sources.items():
        sub = SeedPredictions(sp.ids, sp.seeds[:n_seeds], sp.emotions[:n_seeds], sp.country_proba[:n_seeds],
                              sp.age[:n_seeds], sp.task)
        out[n] = sub.ensemble().take(ids)
    return out


def stack(preds: list[Predictions], seeds: list[int]) -> SeedPredictions:
    """Per-seed predictions (aligned, with country probabilities) → one :class:`SeedPredictions`."""
    ids = list(preds[0].ids)
    proba = []
    for p in preds:
        if p.country_proba is None:     # a single-source copy of a run without probabilities: one-hot
            oh = np.zeros((len(p), p.task.n_classes))
            oh[np.arange(len(p)), p.country] = 1.0
            proba.append(oh)
        else:
            proba.append(p.country_proba)
    return SeedPredictions(ids, list(seeds), np.stack([p.emotions for p in preds]), np.stack(proba),
                           np.stack([p.age for p in preds]), preds[0].task)


def score(pred: Predictions, labels, idx: np.ndarray | None = None) -> dict:
    """The task's scores of ``pred`` (aligned with ``labels``), optionally on rows ``idx`` only."""
    emo, cou, age = labels
    sel = slice(None) if idx is None else idx
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # undefined S_MTL: counted by summarise()
        return score_all(emo[sel], pred.emotions[sel], cou[sel], pred.country[sel], age[sel], pred.age[sel],
                         task=pred.task)


def seed_row(k: int, sc: dict, sources: dict[str, int] | None = None) -> dict:
    """One ``metrics.json`` ``per_seed`` entry (the learn format, plus ``s_mtl_defined``)."""
    row = {"seed": int(k), **{m: float(sc[m]) for m in keys_of(sc)}, "s_mtl_defined": s_mtl_defined(sc)}
    if "ccc_per_emotion" in sc:
        row["ccc_per_emotion"] = {e: float(v) for e, v in sc["ccc_per_emotion"].items()}
    if sources is not None:
        row["sources"] = sources
    return row


def summarise(per_seed: list[dict]) -> dict:
    """``{metric: {"mean", "std", "n"}}`` over seeds; ``std`` None for one seed (undefined, not 0).

    S_MTL is averaged over the seeds where it is defined (``n`` says how many); when none
    is, its mean is None. Standard deviations use ``ddof = 0`` as the learn runs do.
    """
    out = {}
    for m in keys_of(per_seed[0]) if per_seed else METRICS:
        rows = [r for r in per_seed if m != "s_mtl" or s_mtl_defined(r)]
        vals = [float(r[m]) for r in rows if r.get(m) is not None]
        out[m] = {"mean": float(np.mean(vals)) if vals else None,
                  "std": float(np.std(vals)) if len(vals) > 1 else None, "n": len(vals)}
    return out


def per_emotion(per_seed: list[dict]) -> tuple[dict[str, float], dict[str, float | None]]:
    """Per-emotion CCC mean and std over seeds (std None for one seed)."""
    mean, std = {}, {}
    first = next((r["ccc_per_emotion"] for r in per_seed if isinstance(r.get("ccc_per_emotion"), dict)), None)
    for e in (EMOTIONS if first is None else list(first)):
        vals = [float(r["ccc_per_emotion"][e]) for r in per_seed
                if isinstance(r.get("ccc_per_emotion"), dict) and e in r["ccc_per_emotion"]]
        if vals:
            mean[e] = float(np.mean(vals))
            std[e] = float(np.std(vals)) if len(vals) > 1 else None
    return mean, std
