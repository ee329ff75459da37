"""Audio preprocessing shared by extraction and fine-tuning."""
from __future__ import annotations

import numpy as np


def check_level(db: float) -> float:
    """``db`` as a float; raises ``ValueError`` unless it is a finite level in dBFS."""
    db = float(db)
    if not np.isfinite(db):
        raise ValueError(f"--rms-db must be a finite level in dBFS (e.g. -3), got {db}")
    return db


def rms_normalise(wav: np.ndarray, db: float) -> np.ndarray:
    """Scale ``wav`` ``(n,)`` so that its RMS level is ``db`` dBFS (20·log10 RMS; −3 → RMS 0.708).

    Burst2Vec's preprocessing (§4.1: "normalised to −3 decibels with the RMS method"). Peaks may
    exceed ±1 afterwards: samples stay float32 and are not clipped. A silent clip (RMS 0) is
    returned unchanged. Note that checkpoints whose feature extractor has ``do_normalize=True``
    standardise every clip anyway, which undoes any constant gain: for them the option changes
    nothing but rounding.
    """
    db = check_level(db)
    x = np.asarray(wav, dtype=np.float32)
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    if rms == 0.0:
        return x
    return (x * np.float32(10.0 ** (db / 20.0) / rms)).astype(np.float32, copy=False)
