"""ExVo Multi-Task metrics: CCC (two conventions), UAR, MAE and S_MTL.

All functions take 1-D array-likes of equal length and return Python floats.

CCC conventions
---------------
``population``  the textbook Lin (1989) form: means, variances and the covariance
                all normalised by ``n``::

                    ccc = 2 cov / (var_t + var_p + (mean_t - mean_p)**2)

``challenge``   the official ExVo 2022 baseline code: the two variances are
                normalised by ``n - 1`` while the covariance is normalised by ``n``.
                It is therefore slightly *smaller* than the population CCC
                (by about a factor ``(n-1)/n`` when the means agree).  This is the
                default for ExVo reporting so numbers are comparable with the
                published tables; unlike the official code we never round.

A constant pair (both variances zero and equal means) has no defined CCC;
we return 0.0 and warn, so a degenerate predictor scores as "no agreement"
instead of raising ``ZeroDivisionError``.
"""
from __future__ import annotations

import warnings
from typing import Literal, Sequence

import numpy as np

EMOTIONS: tuple[str, ...] = (
    "Awe", "Excitement", "Amusement", "Awkwardness", "Fear",
    "Horror", "Distress", "Triumph", "Sadness", "Surprise",
)
"""The 10 ExVo emotions in the official order (used in submission files)."""

COUNTRIES: tuple[str, ...] = ("China", "South Africa", "United States", "Venezuela")
"""Country names by integer code 0-3."""

CCCConvention = Literal["challenge", "population"]
CCC_CONVENTIONS: tuple[str, ...] = ("challenge", "population")


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} values but y_pred has {p.size}; they must match")
    if t.size == 0:
        raise ValueError("cannot score an empty set of predictions")
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        raise ValueError("y_true / y_pred contain NaN or inf; clean the predictions before scoring")
    return t, p


def ccc(y_true, y_pred, convention: CCCConvention = "challenge") -> float:
    """Concordance correlation coefficient of two 1-D arrays, in [-1, 1].

    ``convention`` is ``"challenge"`` (ExVo official: variances /(n-1),
    covariance /n) or ``"population"`` (everything /n). See the module docstring.
    """
    if convention not in CCC_CONVENTIONS:
        raise ValueError(f"unknown CCC convention {convention!r}; expected one of {CCC_CONVENTIONS}")
    t, p = _pair(y_true, y_pred)
    n = t.size
    mt, mp = t.mean(), p.mean()
    dt, dp = t - mt, p - mp
    cov = float(np.mean(dt * dp))
    if convention == "challenge":
        if n < 2:
            raise ValueError("the challenge CCC needs at least 2 values (variances use n-1)")
        vt, vp = float(np.sum(dt**2) / (n - 1)), float(np.sum(dp**2) / (n - 1))
    else:
        vt, vp = float(np.mean(dt**2)), float(np.mean(dp**2))
    denom = vt + vp + float(mt - mp) ** 2
    if denom == 0.0:
        warnings.warn("CCC undefined: both series are the same constant; returning 0.0", RuntimeWarning, stacklevel=2)
        return 0.0
    return 2.0 * cov / denom


def ccc_along(t: np.ndarray, p: np.ndarray, axis: int = -2, convention: CCCConvention = "population") -> np.ndarray:
    """CCC of many pairs at once: reduces ``axis`` of two equal-shape arrays (e.g. ``(R, n, k)``
    bootstrap resamples → ``(R, k)``); 0 where undefined (both constant and equal), no warning.
    The same formula as :func:`ccc`, vectorised."""
    if convention not in CCC_CONVENTIONS:
        raise ValueError(f"unknown CCC convention {convention!r}; expected one of {CCC_CONVENTIONS}")
    t, p = np.asarray(t, np.float64), np.asarray(p, np.float64)
    n = t.shape[axis]
    mt, mp = t.mean(axis, keepdims=True), p.mean(axis, keepdims=True)
    dt, dp = t - mt, p - mp
    cov = (dt * dp).mean(axis)
    ddof = 1 if convention == "challenge" else 0
    den = (dt * dt).sum(axis) / (n - ddof) + (dp * dp).sum(axis) / (n - ddof) \
        + (np.squeeze(mt, axis) - np.squeeze(mp, axis)) ** 2
    return np.divide(2 * cov, den, out=np.zeros_like(cov), where=den > 0)


def mean_ccc(y_true, y_pred, convention: CCCConvention = "challenge") -> tuple[float, list[float]]:
    """Mean CCC over columns of two ``(n_clips, n_emotions)`` arrays.

    Returns ``(mean, per_column)``.
    """
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.ndim != 2 or t.shape != p.shape:
        raise ValueError(f"expected two (n_clips, n_emotions) arrays of equal shape, got {t.shape} and {p.shape}")
    per = [ccc(t[:, j], p[:, j], convention) for j in range(t.shape[1])]
    return float(np.mean(per)), per


def uar(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Unweighted average recall (macro recall), in [0, 1].

    Follows ``sklearn.metrics.recall_score(average="macro")`` as used by the
    official baseline: the classes are those present in ``y_true`` or ``y_pred``;
    a class that only occurs in the predictions has recall 0.
    """
    t = np.asarray(y_true).ravel()
    p = np.asarray(y_pred).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}; they must match")
    if t.size == 0:
        raise ValueError("cannot score an empty set of predictions")
    recalls = []
    for c in np.union1d(t, p):
        mask = t == c
        recalls.append(float(np.mean(p[mask] == c)) if mask.any() else 0.0)
    return float(np.mean(recalls))


def mae(y_true, y_pred) -> float:
    """Mean absolute error, in the unit of the inputs (years for age)."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def s_mtl(ccc_value: float, uar_value: float, mae_value: float) -> float:
    """ExVo multi-task score: harmonic-style mean ``3 / (1/CCC + 1/UAR + MAE)``.

    Higher is better. Undefined when CCC <= 0 or UAR <= 0 (the reciprocals blow
    up or flip sign); we then return 0.0 and emit a ``RuntimeWarning`` saying why.
    """
    if not (ccc_value > 0 and uar_value > 0):
        warnings.warn(
            f"S_MTL undefined for CCC={ccc_value:.4f}, UAR={uar_value:.4f} (both must be > 0); reporting 0.0",
            RuntimeWarning,
            stacklevel=2,
        )
        return 0.0
    return 3.0 / (1.0 / ccc_value + 1.0 / uar_value + mae_value)


def score_all(
    emo_true, emo_pred, country_true, country_pred, age_true, age_pred,
    convention: CCCConvention = "challenge", task=None,
) -> dict:
    """All scores of a task at once (``task``: a :class:`exvo.tasks.TaskSpec`; None → ExVo-MTL's three
    groups and S_MTL).

    Shapes: the task's intensities ``(n, k)`` in its column order (ExVo: the 10 emotions),
    class ``(n,)`` int codes, value ``(n,)`` (ExVo: age in years); a group the task lacks is
    ignored. Returns a JSON-able dict with keys ``ccc``, ``uar``, ``mae`` (those of the task's
    groups), the combined score (``s_mtl`` for ExVo, ``score`` otherwise), ``ccc_per_emotion``
    (per intensities column) and ``ccc_convention``.
    """
    has = (lambda slot: True) if task is None else task.has
    out: dict = {}
    per: list[float] = []
    if has("intensities"):
        out["ccc"], per = mean_ccc(emo_true, emo_pred, convention)
    if has("class"):
        out["uar"] = uar(country_true, country_pred)
    if has("value"):
        out["mae"] = mae(age_true, age_pred)
    out["s_mtl" if task is None else task.score_name] = combined_score(task, out)
    if has("intensities"):
        cols = EMOTIONS if task is None else task.reg_columns
        names = cols if len(per) == len(cols) else tuple(f"emo{j}" for j in range(len(per)))
        out["ccc_per_emotion"] = dict(zip(names, per))
    out["ccc_convention"] = convention
    return out


def combined_score(task, m: dict, floor: float | None = None) -> float:
    """The task's one score from its group metrics ``m`` (keys ``ccc``/``uar``/``mae``).

    ``harmonic``: ``G / (Σ 1/m_higher + Σ MAE)`` (S_MTL for ExVo's three groups; undefined, 0.0 with a
    warning, when a higher-is-better metric is <= 0); ``mean``: the mean of the groups' metrics.
    ``floor`` (selection): higher-is-better metrics are first raised to ``floor`` so that the score is
    always defined and monotone in each metric. ``task`` None → ExVo-MTL (harmonic, S_MTL).
    """
    hi = [m[k] for k in ("ccc", "uar") if k in m]
    if floor is not None:
        hi = [max(v, floor) for v in hi]
    combine, name = ("harmonic", "s_mtl") if task is None else (task.combine, task.score_name)
    if combine == "mean":
        return float(sum(hi) / len(hi))
    if floor is None and set(m) == {"ccc", "uar", "mae"}:
        return s_mtl(m["ccc"], m["uar"], m["mae"])
    if not all(v > 0 for v in hi):
        warnings.warn(f"{name} undefined for " + ", ".join(f"{k.upper()}={m[k]:.4f}" for k in ("ccc", "uar")
                      if k in m) + " (all must be > 0); reporting 0.0", RuntimeWarning, stacklevel=2)
        return 0.0
    den = 0.0
    for v in hi:
        den += 1.0 / v
    if "mae" in m:
        den += m["mae"]
    return (len(hi) + ("mae" in m)) / den


def speaker_bootstrap(emo_true, emo_pred, country_true, country_pred, age_true, age_pred, speakers,
                      resamples: int = 500, level: float = 0.95, seed: int = 0,
                      task=None) -> dict[str, tuple[float, float]]:
    """Percentile ``level`` intervals of CCC, UAR, MAE and S_MTL over ``resamples`` draws of the
    speakers with replacement (a speaker's clips stay together: clips of one speaker are not
    independent). Shapes as :func:`score_all`, ``speakers`` ``(n,)``; CCC in the population
    convention. ``task``: the task whose scores these are (None → ExVo-MTL)."""
    from exvo.splits import speaker_rows

    uniq, members = speaker_rows(speakers)
    rng = np.random.default_rng(seed)
    vals: dict[str, list[float]] = {k: [] for k in (("ccc", "uar", "mae", "s_mtl") if task is None
                                                   else task.metric_keys)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # an undefined S_MTL in one draw counts as 0
        for _ in range(int(resamples)):
            idx = np.concatenate([members[i] for i in rng.integers(0, uniq.size, uniq.size)])
            s = score_all(emo_true[idx], emo_pred[idx], country_true[idx], country_pred[idx], age_true[idx],
                          age_pred[idx], "population", task)
            for k in vals:
                vals[k].append(s[k])
    q = (1.0 - level) / 2
    return {k: (float(np.quantile(v, q)), float(np.quantile(v, 1 - q))) for k, v in vals.items()}
