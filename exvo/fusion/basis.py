"""What chose a fusion's runs, on which quantity: printed under each subtask by ``exvo fuse`` and kept
in ``fusion.json`` (each subtask's ``notes``).

The choice ranks each candidate's **seed-ensemble** score (its paired seeds averaged) on Val, or on
its out-of-fold Train predictions with ``--select-on oof``; the tables show **seed means ± std**.
The two can disagree (a source with a better ensemble and a worse, noisier seed mean):
:func:`basis_note` says which quantity chose, lists the seed mean ± std of every candidate and
names the run the seed means would have chosen when it differs, and by how much.
"""
from __future__ import annotations

import numpy as np

from exvo.fusion.select import METRIC, METRIC_LABEL, Choice, rank, subtask_score
from exvo.predictions import Predictions
from exvo.runs.reader import Run


def seed_spread(preds: dict[str, Predictions], seed_preds: list[dict[str, Predictions]], labels,
                subtask: str) -> dict[str, tuple[float, float]]:
    """``{run: (mean, std)}`` over the paired seeds ``seed_preds`` (fused seed k → {run: its seed k})
    of each candidate's Val score on ``subtask`` ({} without seeds): the quantity the tables show,
    beside the seed-ensemble score (``preds``) that chose."""
    if not seed_preds:
        return {}
    out = {}
    for n in preds:
        v = np.array([subtask_score(subtask, sp[n], labels, None) for sp in seed_preds])
        out[n] = (float(v.mean()), float(v.std()))
    return out


def oof_spread(by_name: dict[str, Run], subtask: str) -> dict[str, tuple[float, float]]:
    """``{run: (mean, std)}`` over seeds of each source's out-of-fold Train score on ``subtask``
    (``metrics.json["oof"]["per_seed"]``); {} when a source lacks them."""
    out = {}
    for n, r in by_name.items():
        per = [x.get(METRIC[subtask]) for x in ((r.metrics.get("oof") or {}).get("per_seed") or [])
               if isinstance(x, dict)]
        if not per or not all(isinstance(v, (int, float)) for v in per):
            return {}
        out[n] = (float(np.mean(per)), float(np.std(per)))
    return out


def basis_note(choice: Choice, spread: dict[str, tuple[float, float]], on: str = "Val") -> str:
    """What chose ``choice`` and on which quantity: each candidate's seed-ensemble score on ``on``
    (``Val``, or ``out-of-fold Train``; the scores printed and ranked), its seed mean ± std beside
    it, and whether the seed means would have chosen otherwise."""
    s, label = choice.subtask, METRIC_LABEL[choice.subtask]
    d = 2 if s == "age" else 3
    if not spread:
        return (f"{s}: chosen on each candidate's {on} {label} of its seed-averaged predictions (the seed "
                "ensemble); no per-seed scores of every source, so no seed mean ± std to compare")
    text = (f"{s}: chosen on each candidate's {on} {label} of its seed ensemble (the scores above); "
            f"seed mean ± std of the same {label}: "
            + ", ".join(f"{n} {spread[n][0]:.{d}f} ± {spread[n][1]:.{d}f}" for n in choice.ranking if n in spread))
    by_mean = rank(s, {n: m for n, (m, _) in spread.items()})
    k = len(choice.chosen)
    if set(by_mean[:k]) != set(choice.chosen):
        a, b = choice.chosen[0], next(n for n in by_mean if n not in choice.chosen)
        gap = abs(spread[a][0] - spread[b][0])
        text += (f"; the seed means would choose {', '.join(by_mean[:k])} instead ({b} {spread[b][0]:.{d}f} vs "
                 f"{a} {spread[a][0]:.{d}f}: a gap of {gap:.{d}f}, "
                 + ("within" if gap <= max(spread[a][1], spread[b][1]) else "beyond") + " one seed-std)")
    return text
