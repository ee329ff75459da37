"""The Fréchet distance between two sets of embeddings (ExVo-Generate's FID).

Paper ``002`` (ExVo 2022 challenge), §5.2, Equation (3)::

    FID = ‖μ − μ*‖² + Tr(C + C* − 2 (C C*)^{1/2})

where μ, C (resp. μ*, C*) are the empirical mean and covariance of the generated (resp.
real) clips, "first mapped to the feature space of a classifier trained on the HUME-VB
data" (§3.2: in place of Inception features). The formula is Heusel et al. (2017)'s.

Numerics. ``C C*`` is not symmetric, so its square root is not taken directly. With
``S = C^{1/2}``, ``C C* = S (S C*)`` and ``M = (S C*) S = S C* S`` share their eigenvalues
(``AB`` and ``BA`` always do), and ``M`` is symmetric PSD, so
``Tr (C C*)^{1/2} = Σ_i sqrt(λ_i(M))``. ``C^{1/2}`` and the
eigenvalues of ``M`` come from ``numpy.linalg.eigh`` in float64; eigenvalues that
are below ``d · ε · λ_max`` (round-off: M is PSD, and a singular covariance gives exact
zeros that round-off turns into ±1e-16 · λ_max) count as zero.
No matrix inverse is taken, so singular covariances (fewer clips than dimensions) are
fine numerically, although the estimate is then poor: :func:`fid` warns.

Covariances use ``n − 1`` (``numpy.cov``'s default, as Heusel et al.'s reference code).
A tiny negative total from round-off is returned as 0.0 (the distance is ≥ 0).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


class FIDError(ValueError):
    """The sets cannot be compared (too few clips, mismatched dimensions, non-finite values)."""


class SmallSampleWarning(UserWarning):
    """Fewer clips than dimensions: the covariance is singular and the FID estimate is biased."""


@dataclass(frozen=True)
class GaussianStats:
    """Empirical moments of one set: ``mean`` ``(d,)``, ``cov`` ``(d, d)`` (ddof = 1), ``n`` clips."""

    mean: np.ndarray
    cov: np.ndarray
    n: int

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])


def gaussian_stats(X: np.ndarray, what: str = "set") -> GaussianStats:
    """Mean and covariance (ddof = 1) of ``X`` ``(n_clips, dim)``, in float64.

    Raises :class:`FIDError` for fewer than 2 clips, a non-2-D array or non-finite values.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise FIDError(f"{what}: expected embeddings of shape (n_clips, dim), got shape {X.shape}")
    if X.shape[0] < 2:
        raise FIDError(f"{what}: a covariance needs at least 2 clips, got {X.shape[0]}; "
                       "add clips (or choose a larger emotion bin)")
    if not np.isfinite(X).all():
        bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
        raise FIDError(f"{what}: {bad.size} clip(s) have non-finite embeddings (rows {bad[:10].tolist()}); "
                       "re-extract them")
    mu = X.mean(axis=0)
    D = X - mu
    cov = D.T @ D / (X.shape[0] - 1)
    return GaussianStats(mu, (cov + cov.T) / 2.0, int(X.shape[0]))


def sqrt_psd(C: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix ``(d, d)`` via ``eigh`` (negative
    round-off eigenvalues clipped to 0); ``sqrt_psd(C) @ sqrt_psd(C) ≈ C``."""
    C = np.asarray(C, dtype=np.float64)
    w, V = np.linalg.eigh((C + C.T) / 2.0)
    return (V * np.sqrt(np.clip(w, 0.0, None))) @ V.T


def trace_sqrt_product(C1: np.ndarray, C2: np.ndarray, sqrt_c1: np.ndarray | None = None) -> float:
    """``Tr (C1 C2)^{1/2}`` for symmetric PSD ``C1``, ``C2``, as ``Σ sqrt(λ(C1^{1/2} C2 C1^{1/2}))``.

    ``sqrt_c1``: a precomputed :func:`sqrt_psd` of ``C1`` (saves one eigendecomposition when
    one set is compared with many).
    """
    S = sqrt_psd(C1) if sqrt_c1 is None else sqrt_c1
    M = S @ np.asarray(C2, dtype=np.float64) @ S
    lam = np.linalg.eigvalsh((M + M.T) / 2.0)
    # eigenvalues at round-off level are zeros of M (e.g. the null space of a singular
    # covariance): left in, each would add sqrt(noise) ~ 1e-8 x the largest one
    cut = max(float(lam.max(initial=0.0)), 0.0) * lam.size * np.finfo(np.float64).eps
    return float(np.sqrt(lam[lam > cut]).sum())


def frechet_distance(mu1: np.ndarray, C1: np.ndarray, mu2: np.ndarray, C2: np.ndarray,
                     sqrt_c1: np.ndarray | None = None) -> float:
    """Equation (3) of paper 002 (§5.2) from the moments: ``‖μ1 − μ2‖² + Tr(C1 + C2 − 2 (C1 C2)^{1/2})``.

    ``mu*`` ``(d,)``, ``C*`` ``(d, d)`` symmetric PSD. Units: squared embedding units.
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    C1, C2 = np.asarray(C1, dtype=np.float64), np.asarray(C2, dtype=np.float64)
    if mu1.shape != mu2.shape or C1.shape != C2.shape or C1.shape != (mu1.size, mu1.size):
        raise FIDError(f"the two sets live in different spaces: means {mu1.shape} vs {mu2.shape}, "
                       f"covariances {C1.shape} vs {C2.shape}; embed both with the same features")
    diff = mu1 - mu2
    d = float(diff @ diff) + float(np.trace(C1) + np.trace(C2)) - 2.0 * trace_sqrt_product(C1, C2, sqrt_c1)
    return max(d, 0.0)


def warn_small(n: int, dim: int, what: str) -> str | None:
    """A warning (issued and returned) when ``n`` clips are fewer than ``dim`` dimensions."""
    if n < dim:
        msg = (f"{what} has {n} clips but the embeddings have {dim} dimensions: its covariance is singular "
               "and the FID is biased upwards (it shrinks as clips are added); compare FIDs only at equal "
               "clip counts, or use more clips / a smaller feature space")
        warnings.warn(msg, SmallSampleWarning, stacklevel=3)
        return msg
    return None


def fid(X: np.ndarray, Y: np.ndarray, names: tuple[str, str] = ("generated", "real")) -> float:
    """FID between embeddings ``X`` ``(n1, d)`` and ``Y`` ``(n2, d)`` (Equation (3) of paper 002).

    Symmetric in ``X`` and ``Y`` up to round-off; 0 for a set against itself. Warns
    (:class:`SmallSampleWarning`) when a set has fewer clips than dimensions.
    """
    a, b = gaussian_stats(X, names[0]), gaussian_stats(Y, names[1])
    if a.dim != b.dim:
        raise FIDError(f"{names[0]} embeddings have {a.dim} dims but {names[1]} have {b.dim}; "
                       "embed both with the same features")
    warn_small(a.n, a.dim, names[0])
    warn_small(b.n, b.dim, names[1])
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)
