"""Run folders of ``exvo learn``: names, metrics, and atomic writing.

``runs/<name>/``::

    config.json                 everything needed to reproduce the run ("kind": "learn")
    metrics.json                Val scores: mean ± std over seeds, per seed, seed-ensemble (schema below)
    history.json                per-epoch Val selection scores and train losses (MLP)
    val.csv, test.csv           submission format, the seed-averaged ensemble's predictions
    val_country_proba.csv, test_country_proba.csv
    per_seed/val.npz, per_seed/test.npz   every seed's predictions (exvo.predictions.SeedPredictions)
    models/                     scaler.npz + mlp.pt (all seeds) or xgb_seed<k>_<task>.ubj

``metrics.json``::

    {"split": "Val", "n": int, "ccc_convention": "challenge",
     "summary": {"ccc": {"mean": f, "std": f}, "uar": {...}, "mae": {...}, "s_mtl": {...}},
     "per_seed": [{"seed", "ccc", "uar", "mae", "s_mtl", "ccc_per_emotion", "best_epoch"}, ...],
     "ensemble": {"ccc", "uar", "mae", "s_mtl", "ccc_per_emotion"},
     "ccc_per_emotion": {emotion: mean over seeds}}

Standard deviations are over seeds with ``ddof = 0`` (as ``np.std``).
"""
from __future__ import annotations

import atexit
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

    return (f"{run_dir}: {metrics['split']} CCC {f('ccc')} UAR {f('uar')} MAE {f('mae', 2)} "
            f"S_MTL {f('s_mtl')} (ensemble {metrics['ensemble']['s_mtl']:.3f}; "
            f"mean ± std over {len(metrics['per_seed'])} seeds)")


def write_json(path: Path, obj) -> None:
    _write(Path(path), json.dumps(obj, indent=1, default=_jsonable).encode())


def save_torch(obj, path: Path) -> None:
    """``torch.save`` through memory, then one Python write: a full disk raises ``OSError``
    (ENOSPC), which the CLI reports, instead of torch's ``RuntimeError`` from its zip writer."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    _write(Path(path), buf.getvalue())


def _write(path: Path, data: bytes) -> None:
    """Write a file; an OSError names it (a failed ``write`` alone carries no file name)."""
    try:
        path.write_bytes(data)
    except OSError as e:
        if e.filename:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None


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


class RunExists(ValueError):
    """A run folder of that name exists and replacing it was not asked for."""


_STAGED: set[Path] = set()
"""Staging folders made by this process and not yet committed (removed at exit)."""


def check_free(runs_dir: Path, name: str, overwrite: bool = False) -> None:
    """Refuse early (before any training) to replace an existing run unless ``overwrite``."""
    final = Path(runs_dir) / name
    if final.exists() and not overwrite:
        raise RunExists(
            f"a run named {name!r} already exists ({final}); it is kept. Pass --overwrite to replace it, or "
            "--name NEW to keep both"
        )
    if Path(runs_dir).exists() and not Path(runs_dir).is_dir():
        raise ValueError(f"--runs {runs_dir} is a file, not a folder; pass --runs DIR naming a folder "
                         "(it is created if absent)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True      # exists, owned by someone else
    return True


def _sweep_dead(runs_dir: Path) -> None:
    """Remove staging folders of processes that no longer run (killed mid-write)."""
    for p in runs_dir.glob(".*.tmp*"):
        m = re.fullmatch(r"\..+\.(?:tmp|old)(\d+)", p.name)
        if m and p.is_dir() and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


def staging_dir(runs_dir: Path, name: str) -> Path:
    """A fresh temporary folder next to the final one; :func:`commit` renames it into place.

    If the run fails or is interrupted before :func:`commit`, the folder is removed by
    :func:`discard_staging` (called by the CLI on any error, and at interpreter exit);
    one left by a killed process is removed by the next call here.
    """
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    _sweep_dead(runs_dir)
    tmp = runs_dir / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _STAGED.add(tmp)
    return tmp


def discard_staging(tmp: Path | None = None) -> None:
    """Remove ``tmp`` (or every staging folder of this process not yet committed)."""
    for p in ([Path(tmp)] if tmp is not None else list(_STAGED)):
        shutil.rmtree(p, ignore_errors=True)
        _STAGED.discard(p)


atexit.register(discard_staging)


def commit(tmp: Path, final: Path, overwrite: bool = False) -> Path:
    """Rename the complete run ``tmp`` to ``final`` so that a reader never sees a half-written run.

    An existing ``final`` is replaced only with ``overwrite`` (else :class:`RunExists`,
    and ``tmp`` is removed); the old folder stays whole until the new one is in place.
    """
    tmp, final = Path(tmp), Path(final)
    try:
        old = None
        if final.exists():
            if not overwrite:
                raise RunExists(
                    f"a run named {final.name!r} already exists ({final}); it is kept and this run is discarded. "
                    "Pass --overwrite to replace it, or --name NEW to keep both"
                )
            old = final.with_name(f".{final.name}.old{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        discard_staging(tmp)
        raise
    _STAGED.discard(tmp)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_config(run_dir: Path) -> dict:
    p = Path(run_dir) / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no {p}); pass a folder made by `exvo learn`")
    try:
        cfg = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p} cannot be read as JSON ({e}); the run folder is damaged: run `exvo learn` again") from None
    if cfg.get("kind") != "learn":
        raise ValueError(f"{run_dir} is a {cfg.get('kind')!r} run; `exvo predict` applies `exvo learn` runs only")
    return cfg
