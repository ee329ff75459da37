"""Loss terms shared by every stage-2 learner; each works per seed, so they run under ``vmap``.

Shapes: ``B`` clips in a batch; emotions ``(B, 10)`` in [0, 1]; country logits ``(B, 4)`` and
integer labels ``(B,)``; age ``(B,)`` (standardised years or years scaled to [0, 1]).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8


def batch_ccc(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Concordance correlation of each column over the batch (population moments), ``(B, k)`` → ``(k,)``.

    ``2 cov / (var_p + var_t + (mean_p − mean_t)²)``, the form Burst2Vec and EIHW train with.
    """
    mp, mt = pred.mean(0), target.mean(0)
    dp, dt = pred - mp, target - mt
    cov = (dp * dt).mean(0)
    return 2 * cov / ((dp * dp).mean(0) + (dt * dt).mean(0) + (mp - mt) ** 2 + EPS)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 − mean_j CCC_j`` over the emotion columns of one batch (scalar; 0 for no columns)."""
    if pred.shape[-1] == 0:
        return pred.sum()
    return 1.0 - batch_ccc(pred, target).mean()


def mse_sum(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Σ_j mean_b (ŷ_bj − y_bj)²: the official baseline's emotion loss (the 10 MSEs summed)."""
    return ((pred - target) ** 2).mean(0).sum()


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean_b (ŷ_b − y_b)² on ``(B,)`` vs ``(B,)`` (never ``(B, 1)`` vs ``(B,)``, which broadcasts)."""
    return ((pred.reshape(target.shape) - target) ** 2).mean()


def mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred.reshape(target.shape) - target).abs().mean()


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


EMOTION_LOSSES = {"mse": mse_sum, "ccc": ccc_loss}
AGE_LOSSES = {"mse": mse, "mae": mae}


def grad_reverse(x: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Identity forward; the gradient flowing back is multiplied by ``−scale`` (Ganin & Lempitsky 2015).

    Written with ``detach`` rather than a custom ``autograd.Function`` so that it runs
    unchanged under ``torch.func.vmap`` (every seed at once): the value is
    ``x·(−scale) + (x·(1+scale)).detach() = x`` while only the first term carries gradient.
    """
    return x * (-scale) + (x * (1.0 + scale)).detach()


COMBINES = ("uncertainty", "mean", "fixed")


def combine(losses: torch.Tensor, mode: str = "mean", log_vars: torch.Tensor | None = None,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """Combine ``(T,)`` task losses into one scalar.

    * ``uncertainty``: Σ_i ½ exp(−s_i) L_i + ½ s_i with learned ``log_vars`` s (Kendall et al. 2018,
      as the ExVo baseline);
    * ``mean``: (Σ_i L_i) / T;
    * ``fixed``: Σ_i w_i L_i with the given ``weights``.
    """
    if mode == "uncertainty":
        if log_vars is None:
            raise ValueError("combine(mode='uncertainty') needs the learned log_vars, one per task")
        return (0.5 * torch.exp(-log_vars) * losses + 0.5 * log_vars).sum()
    if mode == "mean":
        return losses.mean()
    if mode == "fixed":
        if weights is None:
            raise ValueError("combine(mode='fixed') needs weights, one per task")
        return (weights * losses).sum()
    raise ValueError(f"unknown loss combination {mode!r}; choose one of {COMBINES}")
