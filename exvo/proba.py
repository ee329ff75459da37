"""Class-probability files beside a submission (``<split>_country_proba.csv`` for ExVo-MTL): their
validation and reading, and the prediction-file error type (both re-exported by :mod:`exvo.predictions`)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from exvo.metrics import COUNTRIES
from exvo.tables import listing, repeated


class PredictionError(ValueError):
    """A prediction file does not fit the submission format or the corpus."""


PROBA_SUM_TOL = 1e-3
"""How far a row of country probabilities may sum from 1 (files hold full float precision)."""


def check_proba(proba: np.ndarray, where: str, rows: Sequence[str] | None = None,
                classes: Sequence[str] = COUNTRIES) -> np.ndarray:
    """Validate class probabilities ``(..., n, len(classes))`` (ExVo: the 4 countries): finite, in
    [0, 1], rows summing to 1.

    ``where`` names the file in messages; ``rows`` labels the rows (e.g. ``line 7``).
    Raises :class:`PredictionError` saying what was found and what is expected.
    """
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim < 2 or p.shape[-1] != len(classes):
        raise PredictionError(f"{where}: country probabilities have shape {p.shape}; expected (n, {len(classes)}) "
                              f"columns {', '.join(classes)}")
    flat = p.reshape(-1, len(classes))
    label = (lambda k: rows[k % len(rows)]) if rows else (lambda k: f"row {k % max(1, p.shape[-2]) + 1}")
    bad = np.flatnonzero(~np.isfinite(flat).all(axis=1))
    if bad.size:
        raise PredictionError(f"{where}: NaN/inf country probabilities at {listing(label(k) for k in bad)}")
    bad = np.flatnonzero(((flat < 0) | (flat > 1)).any(axis=1))
    if bad.size:
        raise PredictionError(
            f"{where}: country probabilities outside [0, 1] at {listing(label(k) for k in bad)} (largest "
            f"{flat.max():.6g}, smallest {flat.min():.6g}); expected probabilities, not percentages or logits")
    sums = flat.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > PROBA_SUM_TOL)
    if bad.size:
        raise PredictionError(
            f"{where}: country probability rows must sum to 1; {bad.size} row(s) do not, at "
            f"{listing(label(k) for k in bad)} (e.g. sum {sums[bad[0]]:.6g})")
    return p


def read_proba(proba_path: str | Path, ids: Sequence[str], sub_path: str | Path,
               classes: Sequence[str] = COUNTRIES) -> np.ndarray:
    """``(n, len(classes))`` probabilities of ``<split>_country_proba.csv`` (or another class group's)
    aligned to ``ids`` (validated)."""
    proba_path = Path(proba_path)
    try:
        with open(proba_path, newline="", encoding="utf-8-sig") as f:
            prow = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PredictionError(f"{proba_path} cannot be read ({e})") from None
    expected = ["File_ID", *classes]
    if not prow or [h.strip() for h in prow[0]] != expected:
        raise PredictionError(f"{proba_path}: header {prow[0] if prow else '(empty file)'}; expected {','.join(expected)}")
    body = prow[1:]
    short = [n + 2 for n, r in enumerate(body) if len(r) != len(expected)]
    if short:
        raise PredictionError(f"{proba_path}: wrong number of cells on line(s) {listing(short)} "
                              f"(expected {len(expected)})")
    pids = [r[0].strip() for r in body]
    if len(set(pids)) != len(pids):
        raise PredictionError(f"{proba_path} has duplicate File_ID(s): {listing(repeated(pids))}")
    if set(pids) != set(ids):
        have, want = set(pids), set(ids)      # once, not per id
        miss = [i for i in ids if i not in have]
        extra = [i for i in pids if i not in want]
        raise PredictionError(f"{proba_path} ids differ from {sub_path}: {len(miss)} missing [{listing(miss)}], "
                              f"{len(extra)} extra [{listing(extra)}]")
    try:
        vals = np.array([[float(v) for v in r[1:]] for r in body], dtype=np.float64).reshape(len(body), len(classes))
    except ValueError as e:
        raise PredictionError(f"{proba_path}: a non-numeric probability ({e})") from None
    check_proba(vals, str(proba_path), [f"line {n + 2}" for n in range(len(body))], classes)
    pos = {i: k for k, i in enumerate(pids)}
    return vals[[pos[i] for i in ids]] if ids else np.zeros((0, len(classes)))
