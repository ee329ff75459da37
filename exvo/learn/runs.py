"""Run folders of ``exvo learn``: names, metrics, and atomic writing.

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
     "summary": {"ccc": {"mean": f, "std": f}, "uar": {...}, "mae": {...}, "s_mtl": {...}},
     "per_seed": [{"seed", "ccc", "uar", "mae", "s_mtl", "ccc_per_emotion", "best_epoch"}, ...],
     "ensemble": {"ccc", "uar", "mae", "s_mtl", "ccc_per_emotion"},
     "ccc_per_emotion": {emotion: mean over seeds},
     "selection": {"select_on": "holdout" | "val", "optimistic": bool, "note": str},
     "val_optimistic": bool}

Standard deviations are over seeds with ``ddof = 0`` (as ``np.std``). ``optimistic`` /
``val_optimistic`` is true when Val chose the model (``--stop-on val``): its Val scores are
then shown with †. ``best_epoch`` is the epoch whose weights were kept (``None`` for learners
without epochs, e.g. XGBoost).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from exvo.corpus import Corpus
from exvo.metrics import EMOTIONS
from exvo.predictions import Predictions, score

METRICS = ("ccc", "uar", "mae", "s_mtl")


def derive_name(specs: Sequence[str], learner: str, arch: str | None) -> str:
    """``["egemaps", "wavlm@12"]``, mlp, sys2 → ``egemaps+wavlm@12_mlp_sys2`` (safe file name)."""
    base = "+".join(specs) + f"_{learner}" + (f"_{arch}" if learner == "mlp" and arch else "")
    return re.sub(r"[^A-Za-z0-9_.@+-]", "-", base)


def check_name(name: str) -> str:
    if not name or name in (".", "..") or not re.fullmatch(r"[A-Za-z0-9_.@+-]+", name):
        raise ValueError(f"run name {name!r} must be a plain folder name (letters, digits, _ . @ + -)")
    return name


def ensemble(emo: np.ndarray, proba: np.ndarray, age_years: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seed average of ``(S, n, ...)`` outputs: emotions, country probabilities, age (years)."""
    return emo.mean(0), proba.mean(0), age_years.mean(0)


def score_quiet(pred: Predictions, corpus: Corpus, split: str) -> tuple[dict, list[str]]:
    """:func:`exvo.predictions.score` with its warnings (undefined S_MTL) returned, not printed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = score(pred, corpus, split)
    return s, [str(w.message) for w in caught]


def metrics_json(per_seed: list[dict], seeds: Sequence[int], best_epochs: Sequence[int | None],
                 ens: dict, split: str, n: int) -> dict:
    """Assemble ``metrics.json`` (exact schema in the module docstring)."""
    def pick(s: dict) -> dict:
        return {k: float(s[k]) for k in METRICS} | {"ccc_per_emotion": {e: float(s["ccc_per_emotion"][e]) for e in EMOTIONS}}

    rows = [{"seed": int(sd), **pick(s), "best_epoch": (None if be is None else int(be))}
            for sd, s, be in zip(seeds, per_seed, best_epochs)]
    summary = {k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows]))}
               for k in METRICS}
    return {
        "split": split, "n": int(n), "ccc_convention": "challenge",
        "summary": summary,
        "per_seed": rows,
        "ensemble": pick(ens),
        "ccc_per_emotion": {e: float(np.mean([r["ccc_per_emotion"][e] for r in rows])) for e in EMOTIONS},
    }


def summary_line(run_dir: Path | str, metrics: dict) -> str:
    s = metrics["summary"]

    def f(k, d=3):
        return f"{s[k]['mean']:.{d}f}±{s[k]['std']:.{d}f}"

    split = metrics["split"] + ("†" if metrics.get("val_optimistic") else "")
    return (f"{run_dir}: {split} CCC {f('ccc')} UAR {f('uar')} MAE {f('mae', 2)} "
            f"S_MTL {f('s_mtl')} (ensemble {metrics['ensemble']['s_mtl']:.3f}; "
            f"mean ± std over {len(metrics['per_seed'])} seeds)")


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, default=_jsonable))


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def staging_dir(runs_dir: Path, name: str) -> Path:
    """A fresh temporary folder next to the final one; :func:`commit` renames it into place."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    tmp = runs_dir / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def commit(tmp: Path, final: Path) -> Path:
    """Replace ``final`` by ``tmp`` so that a reader never sees a half-written run."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_config(run_dir: Path) -> dict:
    p = Path(run_dir) / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json); pass a folder made by `exvo learn`")
    cfg = json.loads(p.read_text())
    if cfg.get("kind") != "learn":
        raise ValueError(f"{run_dir} is a {cfg.get('kind')!r} run; `exvo predict` applies `exvo learn` runs only")
    return cfg
