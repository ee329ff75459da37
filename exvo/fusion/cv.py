"""Speaker-disjoint halves of Val, to measure the optimism of selecting on Val.

Choosing the best run per subtask on Val and then reporting the Val score is biased
upwards (the winner is partly the luckiest). With ``select_on="cv"`` we choose on one
half of the Val speakers and score on the other half, then swap the halves and average.
"""
from __future__ import annotations

import hashlib

import numpy as np


def speaker_halves(speakers: np.ndarray | list[str], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(half_a, half_b)`` splitting ``speakers`` (n,) speaker-disjointly.

    Speakers are ordered by ``sha256("<seed>:<speaker>")`` and the first ``ceil(m/2)``
    of the ``m`` speakers form half A: deterministic, independent of row order, and
    balanced in speakers (not necessarily in clips).
    """
    spk = np.asarray(speakers).astype(str)
    uniq = sorted(set(spk.tolist()), key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    if len(uniq) < 2:
        raise ValueError(
            f"--select-on cv needs at least 2 Val speakers to split them in halves, found {len(uniq)}; "
            "use --select-on val")
    a = set(uniq[: (len(uniq) + 1) // 2])
    in_a = np.array([s in a for s in spk])
    return np.flatnonzero(in_a), np.flatnonzero(~in_a)
