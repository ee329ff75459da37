"""Per-emotion bins of real clips, the reference sets of ExVo-Generate's FID.

Paper ``002`` §4 (EXVO-GENERATE): "The independent training bins for each class are created
by selecting all samples with an emotional value of 1 for that class"; §6.2 trains one
generator per emotion on such a bin and Table 3 compares bins of Train and Val.

Rules (``BIN_RULES``):

``one``     the paper's: the clip's intensity for the emotion is 1 (within ``ONE_TOL``).
            A clip may sit in several bins (ties at 1).
``argmax``  the clip's intensity for the emotion equals its largest intensity (ties: every
            tied emotion). On a corpus whose intensities are scaled so that each clip's
            strongest emotion is 1 this is the same as ``one``; on a corpus without that
            scaling (the procedural demo corpus) ``one`` leaves most bins nearly empty.
"""
from __future__ import annotations

import numpy as np

from exvo.corpus import Corpus
from exvo.metrics import EMOTIONS

BIN_RULES = ("one", "argmax")
ONE_TOL = 1e-6
"""Intensities ≥ 1 − ONE_TOL count as 1 (CSV round-off)."""


def check_emotion(emotion: str) -> str:
    """The canonical spelling of ``emotion`` (case-insensitive); a clear error otherwise."""
    for e in EMOTIONS:
        if e.lower() == str(emotion).strip().lower():
            return e
    raise ValueError(f"unknown emotion {emotion!r}; choose one of {', '.join(EMOTIONS)}")


def bin_mask(emotions: np.ndarray, emotion: str, rule: str = "one") -> np.ndarray:
    """``(n,)`` bool: which rows of ``emotions`` ``(n, 10)`` (EMOTIONS order) are in the bin of ``emotion``."""
    if rule not in BIN_RULES:
        raise ValueError(f"unknown bin rule {rule!r}; choose one of {BIN_RULES}")
    j = EMOTIONS.index(check_emotion(emotion))
    E = np.asarray(emotions, dtype=np.float64)
    if rule == "one":
        return E[:, j] >= 1.0 - ONE_TOL
    return np.isfinite(E[:, j]) & (E[:, j] >= np.nanmax(E, axis=1))


def emotion_bin(corpus: Corpus, split: str, emotion: str, rule: str = "one") -> list[str]:
    """File_IDs of ``split`` in the bin of ``emotion`` (corpus order)."""
    if split not in ("Train", "Val"):
        raise ValueError(f"--against must be Train or Val (labelled splits), got {split!r}")
    emo, _, _ = corpus.labels(split)
    ids = corpus.split_ids(split)
    m = bin_mask(emo, emotion, rule)
    return [i for i, keep in zip(ids, m) if keep]


def bin_sizes(corpus: Corpus, split: str, rule: str) -> dict[str, int]:
    """``{emotion: clips in its bin}`` for one split."""
    emo, _, _ = corpus.labels(split)
    return {e: int(bin_mask(emo, e, rule).sum()) for e in EMOTIONS}
