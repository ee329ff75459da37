"""Encoder losses of Exp I in Huang et al. (paper 004, §3.3.2, §4.2): a registry of ``nn.Module`` s.

Every loss is called as ``loss(emb, logits, y, n_per_class)`` on one seed's episodic batch:
``emb`` ``(K·N, E)`` embeddings P, ``logits`` ``(K·N, K)`` of the linear classifier, ``y``
``(K·N,)`` class indices 0..K−1, the batch ordered class by class (``N`` clips of class 0,
then ``N`` of class 1, …; see :mod:`exvo.verify.episodes`). Learned quantities (scale
``w``, margin ``m``, class weights) are parameters of the loss module, so they train with
the encoder and are stacked over seeds like any other parameter.

Episodic losses (``proto``, ``aproto``, ``amproto``, ``namp``, ``namp-eq4``) take the LAST clip
of each class as its query and the first ``N − 1`` as its support (Eq. 2):
``c_k = 1/(N−1) Σ_{i<N} P_{k,i}``; the loss is the mean over the K queries of
``−log softmax_k S_{j,k}`` (Eq. 5), plus the classifier's cross-entropy (``L = L_ce + L_NAMP``).

**NAMP: Eq. 4 and the paper's text disagree.** Eq. 4 as printed adds the margin to the target
similarity, ``S_jj = w·(cos(P_j, c_j) + m)``, ``S_jk = w·cos(P_j, c_k)``, with ``m < 0``: that
*lowers* the target logit by ``w·|m|``, the CosFace / AM-softmax margin, which makes the loss
*more* discriminative (it asks the query to beat the other centroids by ``|m|`` in cosine). The
text says the opposite purpose: m is constrained negative "to penalize the over-discriminated
decision boundaries", after its ref. 48 (Liu et al. 2020, "Negative margin matters"). Liu et
al. write the margin the AM-softmax way, subtracted from the target cosine,
``s·(cos θ_y − m)``, and show that ``m < 0`` — a *raised* target logit — makes the loss *less*
discriminative and transfers better to unseen classes. The paper's stated intent is therefore

    S_jj = w·(cos(P_j, c_j) − m),   S_jk = w·cos(P_j, c_k),   m < 0   (target raised by w·|m|),

which is Eq. 4 with the sign of m's term flipped. exvo implements both:

* ``namp`` (default): the text's intent, ``S_jj = w·(cos − m)``, ``m < 0``: less discriminative;
* ``namp-eq4``: Eq. 4 as printed, ``S_jj = w·(cos + m)``, ``m < 0``: CosFace-like, more
  discriminative;
* ``amproto``: the positive-margin counterpart in the same (text's, AM-softmax) convention,
  ``S_jj = w·(cos − m)``, ``m > 0``; it computes the same logits as ``namp-eq4`` (a margin
  that lowers the target by ``w·|m|``), as it must once Eq. 4's sign is read the text's way.
  (exvo ≤ 0.1 used Eq. 4's sign for ``amproto`` too, i.e. it raised the target.)

``w > 0`` (``w = softplus(ρ)``) and ``|m| = m_max·sigmoid(θ)`` are learned with the encoder
(same optimiser and learning rate). Whatever the reading, a *learned* margin drifts towards the
bound that makes the target logit largest, because that lowers the loss: ``namp`` towards
``−m_max``, ``namp-eq4`` towards 0, ``amproto`` towards 0 (``|∂L/∂m| = w·(1 − p_jj)/K``); it
moves by about ``lr × steps × ∂m/∂θ`` (Adam steps θ by ≈ lr), a few thousandths over a demo
run at lr 1e-3, so the learned ``m`` stays near its start. The learned ``m`` is reported, never
assumed.

The other losses add the cross-entropy too when ``ce_weight > 0`` (the paper's framework
trains every encoder with its classifier, Fig. 1); ``sm`` is the cross-entropy alone;
``am`` (CosFace, ``s·(cos θ_y − m)``) and ``aam`` (ArcFace, ``s·cos(θ_y + m)``) replace the
linear classifier by their own normalised class weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LossConfig:
    """``margin_init``: |m| at the start (paper Fig. 2: best at ±0.3); ``margin_max``: the bound
    on |m|; ``learn_margin`` False keeps m fixed at ``margin_init`` (sign from the loss: namp and
    namp-eq4 m < 0, amproto m > 0);
    ``scale_init``: w at the start (AProto's 10); ``ce_weight``: weight of the classifier's
    cross-entropy added to the metric losses; AM/AAM: ``am_scale`` s and ``am_margin``;
    triplet: ``triplet_margin`` on cosine distance."""

    margin_init: float = 0.3
    margin_max: float = 0.5
    learn_margin: bool = True
    scale_init: float = 10.0
    ce_weight: float = 1.0
    am_scale: float = 30.0
    am_margin: float = 0.2
    triplet_margin: float = 0.3

    def __post_init__(self):
        if not 0.0 < self.margin_max:
            raise ValueError(f"margin_max must be > 0, got {self.margin_max}")
        if not 0.0 < self.margin_init < self.margin_max:
            raise ValueError(f"margin_init is |m| and must lie in (0, margin_max={self.margin_max}), got "
                             f"{self.margin_init}; the sign comes from the loss (namp: m < 0, amproto: m > 0)")
        if self.scale_init <= 0:
            raise ValueError(f"scale_init (w) must be > 0, got {self.scale_init}")
        if self.ce_weight < 0:
            raise ValueError(f"ce_weight must be >= 0, got {self.ce_weight}")


def _inv_softplus(v: float) -> float:
    return v + math.log(-math.expm1(-v))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def queries_and_centroids(emb: torch.Tensor, n_per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K·N, E)`` class-ordered → queries ``(K, E)`` (the last clip of each class) and
    centroids ``(K, E)`` of the other ``N − 1`` (Eq. 2)."""
    N = int(n_per_class)
    if N < 2:
        raise ValueError(f"episodic losses need at least 2 clips per class (1 query + support), got N = {N}")
    e = emb.reshape(-1, N, emb.shape[-1])
    return e[:, -1], e[:, :-1].mean(1)


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(n, E)``, ``(k, E)`` → ``(n, k)`` cosine similarities."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


class EncoderLoss(nn.Module):
    """Base: ``forward(emb, logits, y, n_per_class) -> scalar``; ``margin()`` → m or None."""

    episodic = False     # needs N ≥ 2 clips per class in a batch
    uses_classifier = True

    def __init__(self, n_classes: int, emb_dim: int, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y) * self.cfg.ce_weight if self.cfg.ce_weight else logits.sum() * 0.0

    def margin(self) -> torch.Tensor | None:
        return None

    def scale(self) -> torch.Tensor | None:
        return None

    def margin_kind(self) -> str | None:
        """``"learned"``, ``"fixed"`` or None (no margin)."""
        return None


class Softmax(EncoderLoss):
    """SM: the classifier's cross-entropy alone."""

    def forward(self, emb, logits, y, n_per_class):
        return F.cross_entropy(logits, y)


class _CosineClassifier(EncoderLoss):
    uses_classifier = False

    def __init__(self, n_classes: int, emb_dim: int, cfg: LossConfig):
        super().__init__(n_classes, emb_dim, cfg)
        self.weight = nn.Parameter(torch.randn(n_classes, emb_dim) / math.sqrt(emb_dim))

    def margin(self):
        return torch.tensor(self.cfg.am_margin)

    def margin_kind(self):
        return "fixed"

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, emb, logits, y, n_per_class):
        cos = cosine_matrix(emb, self.weight)                      # (B, K)
        onehot = (y[:, None] == torch.arange(cos.shape[1], device=y.device)).to(cos.dtype)
        out = self.cfg.am_scale * (onehot * self.target_logit(cos) + (1 - onehot) * cos)
        return F.cross_entropy(out, y)


class AM(_CosineClassifier):
    """AM-softmax / CosFace: target logit ``s·(cos θ_y − m)``."""

    def target_logit(self, cos):
        return cos - self.cfg.am_margin


class AAM(_CosineClassifier):
    """AAM-softmax / ArcFace: target logit ``s·cos(θ_y + m)`` (``cos θ − m·sin(π − m)`` past θ = π − m,
    where ``cos(θ + m)`` stops decreasing)."""

    def target_logit(self, cos):
        m = self.cfg.am_margin
        c = cos.clamp(-1 + 1e-6, 1 - 1e-6)
        phi = c * math.cos(m) - torch.sqrt(1 - c * c) * math.sin(m)
        return torch.where(c > math.cos(math.pi - m), phi, c - math.sin(math.pi - m) * m)


class Triplet(EncoderLoss):
    """Batch-hard triplet loss on cosine distance: per anchor, the farthest positive and the nearest
    negative, ``max(0, d_ap − d_an + margin)``, averaged; plus the weighted CE."""

    episodic = True

    def forward(self, emb, logits, y, n_per_class):
        d = 1.0 - cosine_matrix(emb, emb)                            # (B, B)
        same = y[:, None] == y[None, :]
        eye = torch.eye(len(y), dtype=torch.bool, device=y.device)
        d_ap = torch.where(same & ~eye, d, torch.zeros_like(d)).amax(1)
        d_an = torch.where(~same, d, torch.full_like(d, 4.0)).amin(1)
        return F.relu(d_ap - d_an + self.cfg.triplet_margin).mean() + self.ce(logits, y)


class Proto(EncoderLoss):
    """Prototypical network (Snell et al.): logits = −squared Euclidean distance to the centroids."""

    episodic = True

    def forward(self, emb, logits, y, n_per_class):
        q, c = queries_and_centroids(emb, n_per_class)
        s = -((q[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        return F.cross_entropy(s, torch.arange(len(q), device=q.device)) + self.ce(logits, y)


class AProto(EncoderLoss):
    """Angular prototypical (Chung et al. 2020, Eq. 3): ``S = w·cos(P, c) + b``, w > 0 learned, b learned."""

    episodic = True

    def __init__(self, n_classes, emb_dim, cfg):
        super().__init__(n_classes, emb_dim, cfg)
        self.rho = nn.Parameter(torch.tensor(_inv_softplus(cfg.scale_init)))
        self.b = nn.Parameter(torch.tensor(-5.0))

    def scale(self):
        return F.softplus(self.rho)

    def logits_(self, q, c):
        return self.scale() * cosine_matrix(q, c) + self.b

    def forward(self, emb, logits, y, n_per_class):
        q, c = queries_and_centroids(emb, n_per_class)
        s = self.logits_(q, c)
        return F.cross_entropy(s, torch.arange(len(q), device=q.device)) + self.ce(logits, y)


class _MarginProto(AProto):
    """Prototypical loss with a margin on the target similarity (Eq. 4 family).

    ``m = sign·m_max·sigmoid(θ)``; the target similarity is ``w·(cos + shift·m)`` with
    ``shift = −1`` for the AM-softmax convention of the paper's text (``cos − m``) and
    ``shift = +1`` for Eq. 4 as printed (``cos + m``); ``S_jk = w·cos`` off the diagonal.
    """

    sign = -1.0
    shift = -1.0

    def __init__(self, n_classes, emb_dim, cfg):
        super().__init__(n_classes, emb_dim, cfg)
        del self.b                                            # Eq. 4 has no bias (softmax ignores it)
        theta = torch.tensor(_logit(cfg.margin_init / cfg.margin_max))
        if cfg.learn_margin:
            self.theta = nn.Parameter(theta)
        else:
            self.register_buffer("theta", theta)

    def margin(self):
        return self.sign * self.cfg.margin_max * torch.sigmoid(self.theta)

    def margin_kind(self):
        return "learned" if self.cfg.learn_margin else "fixed"

    def logits_(self, q, c):
        cos = cosine_matrix(q, c)                                # (K, K): row j = query of class j
        eye = torch.eye(cos.shape[0], dtype=cos.dtype, device=cos.device)
        return self.scale() * (cos + eye * (self.shift * self.margin()))


class AMProto(_MarginProto):
    """AMProto: a learned positive margin subtracted from the target cosine, ``w·(cos − m)``, m > 0
    (the AM-softmax convention of the paper's text; more discriminative)."""

    sign, shift = 1.0, -1.0


class NAMP(_MarginProto):
    """NAMP as the paper's text intends (after Liu et al. 2020): ``S_jj = w·(cos − m)`` with a
    learned m < 0, so the target logit is raised by ``w·|m|`` and the loss is LESS discriminative;
    + cross-entropy (Eq. 5). Eq. 4 as printed has ``+ m`` instead: see :class:`NAMPEq4`."""

    sign, shift = -1.0, -1.0


class NAMPEq4(_MarginProto):
    """NAMP by Eq. 4 as printed: ``S_jj = w·(cos + m)`` with a learned m < 0, so the target logit is
    lowered by ``w·|m|`` (CosFace-like, MORE discriminative, against the text's stated purpose)."""

    sign, shift = -1.0, 1.0


LOSSES: dict[str, type[EncoderLoss]] = {
    "sm": Softmax, "am": AM, "aam": AAM, "triplet": Triplet,
    "proto": Proto, "aproto": AProto, "amproto": AMProto, "namp": NAMP, "namp-eq4": NAMPEq4,
}
"""``--loss`` choices, in the order of the paper's Table 4 (``namp-eq4``: its Eq. 4 as printed)."""
MARGIN_LOSSES = tuple(n for n, c in LOSSES.items() if issubclass(c, _MarginProto))
"""The losses with a margin m (``--margin``, ``--fixed-margin`` apply)."""


def make_loss(name: str, n_classes: int, emb_dim: int, cfg: LossConfig | None = None) -> EncoderLoss:
    if name not in LOSSES:
        raise ValueError(f"unknown encoder loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name](n_classes, emb_dim, cfg or LossConfig())
