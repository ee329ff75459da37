"""Burst2Vec: adversarial multitask learning with shared and task-specific representations.

Anuchitanukul & Specia, "Burst2Vec" (ExVo 2022, best Multi-Task system), §3 and App. C. Over a pooled
utterance representation ``x`` ``(B, D)`` (cached embeddings here; the encoder's average-pooled
last layer in :mod:`exvo.learn.finetune`)::

    p        = proj(x)                               Linear(D, P) → LeakyReLU
    r_shared = E_shared(p)                           Linear(P, H) → LeakyReLU → Linear(H, H) → LeakyReLU
    r_t      = E_t(p)        t ∈ {emotion, age, country}   (same shape, own weights)
    c_t      = C_t([r_shared ‖ r_t])                 Linear(2H, H) → LeakyReLU   ("projected concatenation")
    head_t(r)                                        Linear(H, Hh) → LeakyReLU → Linear(Hh, k_t)
    disc(r)                                          Linear(H, Hh) → LeakyReLU → Linear(Hh, 3)

Outputs at inference come from the concatenation path: emotions ``sigmoid(head_emo(c_emo))``
``(B, 10)``, country logits ``head_cou(c_cou)`` ``(B, 4)``, age ``head_age(c_age)`` ``(B,)`` on
the [0, 1] scale of the Train ages (``(years − min) / (max − min)``).

Losses of a batch drawn for task ``j`` (App. C: every batch belongs to one task):

* ``L_O^j = L_j(head_j(r_shared)) + L_j(head_j(r_j)) + L_j(head_j(c_j))``  (Eq. 5), with
  ``L_emotion = 1 − CCC`` over the 10 emotions (Eq. 1-2), ``L_age = MAE`` on [0, 1] ages
  (Eq. 3), ``L_country = CE`` (Eq. 4);
* ``L_D^j = CE(disc(r_shared), j)`` (Eq. 6);
* ``L_Adv^j = Σ_{t≠j} L_j(head_j(r_t))`` (Eq. 7): the other tasks' specific representations
  fed to task ``j``'s head.

Eq. 8, ``L^j = L_O^j − α1 L_D^j − α2 L_Adv^j``, is what the *feature extractors* descend:
the minus signs are realised with gradient reversal layers, as the paper says, so the
adversaries still descend their own losses. The scalar that autograd differentiates is ::

    L_O^j + α1 · L_D^j(disc(GRL_1(r_shared))) + α2 · L_Adv^j(head_j(GRL_1(r_t)))

so the gradients are (tested in ``tests/test_burst2vec.py``)

=============================  ==================================================
shared extractor               ∂L_O − α1 ∂L_D
extractor of a task t ≠ j      −α2 ∂L_Adv          (L_O^j does not reach it)
extractor of task j            ∂L_O
projection layer               ∂L_O − α1 ∂L_D − α2 ∂L_Adv   (below every GRL)
discriminator                  α1 ∂L_D             (it learns to tell the tasks apart)
task j's head                  ∂L_O + α2 ∂L_Adv    (the adversary of the t ≠ j extractors)
=============================  ==================================================

The discriminator learns at weight α1, as Eq. 8 weighs L_D for both of its players (the paper's
reversal layer only flips the sign the shared extractor sees, as α2 weighs L_Adv for task j's
head and, reversed, for the other extractors). exvo ≤ 0.1 trained the discriminator at weight 1
and scaled only the reversed gradient by α1; under Adam (the paper's optimiser and ours) a constant
loss weight changes a parameter's steps only through Adam's ε, so the two differ little, but this
is the paper's. With α1 = 0 the discriminator no longer learns (it has nothing to push). With α1 = α2 = 0
every weight outside the discriminator follows exactly the plain multitask model without
adversaries (``adversarial=False``, the paper's "−Adv"); tested.

Note on real ExVo data: every clip carries all three labels, so batches of the three tasks
come from the same clips and the discriminator cannot beat chance by much; the term matters
when tasks are trained on different data (the tests' synthetic case).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exvo.config import TrainConfig
from exvo.learn import losses
from exvo.device import resolve_device
from exvo.learn.framework import LearnerModule, SeedFit, SeedStack, predict, train_seeds
from exvo.learn.targets import selection_score
from exvo.learn.task_batches import AGE_EDGES, TASKS, joint_cells, task_batches

N_EMO, N_COU = 10, 4
OUT_DIMS = (N_EMO, 1, N_COU)       # per task id: emotion, age, country
EMOTION_LOSSES = {"ccc": losses.ccc_loss, "mse": losses.mse_sum}
AGE_LOSSES = {"mae": losses.mae, "mse": losses.mse}


@dataclass
class Burst2VecConfig:
    """Settings of the Burst2Vec head and its training over cached embeddings.

    ``alpha1``/``alpha2``: weights of the reversed task-discrimination and task-specific
    adversarial losses (the paper's 0.5 and 0.25; both 0 is its "−Adv" ablation).
    ``proj_dim``/``hidden``/``head_hidden``: P, H, Hh above (the paper does not give sizes).
    ``emotion_loss`` ccc (the paper) | mse; ``age_loss`` mae (the paper) | mse.
    ``oversample``: fill up the joint (country, age range, dominant emotion) cells of Train
    every epoch (``age_edges`` in years). ``train`` (:class:`~exvo.config.TrainConfig`): Adam,
    batch 32, up to 100 epochs (the paper); ``lr`` 1e-4 over cached embeddings (the paper's 1e-5 is for fine-tuning the whole
    speech model, see :mod:`exvo.learn.finetune`; at 1e-3 the adversarial terms made training
    unstable on the demo corpus: selection S_MTL .26 vs .41 at 1e-4), early stopping with
    ``patience`` 10 epochs.
    """

    alpha1: float = 0.5
    alpha2: float = 0.25
    proj_dim: int = 256
    hidden: int = 128
    head_hidden: int = 64
    dropout: float = 0.0
    emotion_loss: str = "ccc"
    age_loss: str = "mae"
    oversample: bool = False
    age_edges: tuple = AGE_EDGES
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=100, patience=10, batch_size=32, lr=1e-4,
                                                                   weight_decay=0.0))

    def __post_init__(self):
        for k in ("alpha1", "alpha2"):
            v = float(getattr(self, k))
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"--{k} must be a finite number >= 0, got {v} (0 switches the term off)")
        if self.emotion_loss not in EMOTION_LOSSES:
            raise ValueError(f"unknown emotion loss {self.emotion_loss!r}; choose one of {sorted(EMOTION_LOSSES)}")
        if self.age_loss not in AGE_LOSSES:
            raise ValueError(f"unknown age loss {self.age_loss!r}; choose one of {sorted(AGE_LOSSES)}")
        for k in ("proj_dim", "hidden", "head_hidden"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        self.age_edges = tuple(float(e) for e in self.age_edges)



def _mlp(d_in: int, d_out: int, dropout: float, depth: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(depth):
        layers += [nn.Linear(d_in if k == 0 else d_out, d_out), nn.LeakyReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class Burst2Vec(LearnerModule):
    """The Burst2Vec head over ``batch["x"]`` ``(B, in_dim)``; see the module docstring.

    Training batches also carry ``"emotions"`` ``(B, 10)``, ``"age01"`` ``(B,)``,
    ``"country"`` ``(B,)`` int64 and ``"task"`` ``(B,)`` int64 (one task id per batch; missing
    labels of the other tasks may hold any finite filler, they get weight 0).
    ``adversarial=False`` builds no discriminator and skips the adversarial terms.
    """

    def __init__(self, in_dim: int, cfg: Burst2VecConfig | None = None, adversarial: bool = True):
        super().__init__()
        cfg = cfg or Burst2VecConfig()
        self.cfg, self.adversarial = cfg, bool(adversarial)
        P, H, Hh, dp = cfg.proj_dim, cfg.hidden, cfg.head_hidden, cfg.dropout
        self.proj = _mlp(in_dim, P, dp)
        self.shared = _mlp(P, H, dp, depth=2)
        self.specific = nn.ModuleList([_mlp(P, H, dp, depth=2) for _ in TASKS])
        self.concat = nn.ModuleList([_mlp(2 * H, H, dp) for _ in TASKS])
        self.heads = nn.ModuleList([nn.Sequential(nn.Linear(H, Hh), nn.LeakyReLU(), nn.Linear(Hh, k))
                                    for k in OUT_DIMS])
        # built last, so that every other weight is drawn exactly as in the model without it
        self.discriminator = (nn.Sequential(nn.Linear(H, Hh), nn.LeakyReLU(), nn.Linear(Hh, len(TASKS)))
                              if self.adversarial else None)
        self._emo_loss = EMOTION_LOSSES[cfg.emotion_loss]
        self._age_loss = AGE_LOSSES[cfg.age_loss]

    # ------------------------------------------------------------------ forward
    def representations(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(r_shared (B, H), [r_emotion, r_age, r_country] each (B, H))``."""
        p = self.proj(x)
        return self.shared(p), [e(p) for e in self.specific]

    def _head(self, t: int, r: torch.Tensor) -> torch.Tensor:
        out = self.heads[t](r)
        if t == 0:
            return torch.sigmoid(out)
        if t == 1:
            return out[..., 0]
        return out

    def outputs(self, batch):
        shared, spec = self.representations(batch["x"])
        concat = [self.concat[t](torch.cat([shared, spec[t]], -1)) for t in range(len(TASKS))]
        out = {"emotions": self._head(0, concat[0]), "age01": self._head(1, concat[1]),
               "country": self._head(2, concat[2])}
        if self.training:
            out |= {"r_shared": shared, "r_spec": torch.stack(spec), "r_concat": torch.stack(concat)}
        return out

    # ------------------------------------------------------------------ losses
    def task_loss(self, t: int, pred: torch.Tensor, batch) -> torch.Tensor:
        if t == 0:
            return self._emo_loss(pred, batch["emotions"])
        if t == 1:
            return self._age_loss(pred, batch["age01"])
        return losses.cross_entropy(pred, batch["country"])

    def loss_terms(self, out, batch, reverse: bool = True) -> dict[str, torch.Tensor]:
        """Per-task ``(3,)`` vectors ``L_O``, ``L_Adv`` and the scalar ``L_D`` of this batch.

        ``reverse``: put the gradient reversal layers in (training); without them the terms
        are plain functions of the weights (the tests compare gradients against them).
        """
        shared, spec, concat = out["r_shared"], out["r_spec"], out["r_concat"]
        T = len(TASKS)
        grl = (lambda r, s: losses.grad_reverse(r, s)) if reverse else (lambda r, s: r)
        L_O, L_Adv = [], []
        for j in range(T):
            L_O.append(sum(self.task_loss(j, self._head(j, r), batch) for r in (shared, spec[j], concat[j])))
            if self.adversarial:
                L_Adv.append(sum(self.task_loss(j, self._head(j, grl(spec[t], 1.0)), batch)
                                 for t in range(T) if t != j))
        terms = {"L_O": torch.stack(L_O)}
        if self.adversarial:
            terms["L_Adv"] = torch.stack(L_Adv)
            logits = self.discriminator(grl(shared, 1.0))
            terms["L_D"] = F.cross_entropy(logits, batch["task"])
        return terms

    def loss(self, out, batch):
        # a batch belongs to one task: its one-hot weights select that task's terms
        # (a vmap-safe select: no Python branch on the tensor's value)
        w = F.one_hot(batch["task"], len(TASKS)).to(out["r_shared"].dtype).mean(0)
        terms = self.loss_terms(out, batch)
        total = (w * terms["L_O"]).sum()
        if self.adversarial:
            total = total + float(self.cfg.alpha1) * terms["L_D"] + float(self.cfg.alpha2) * (w * terms["L_Adv"]).sum()
        return total


# ---------------------------------------------------------------------- data
@dataclass
class AgeScale:
    """Age in years ↔ the [0, 1] scale Burst2Vec learns (min/max of the Train ages)."""

    lo: float
    hi: float

    @classmethod
    def fit(cls, age_years: np.ndarray) -> "AgeScale":
        a = np.asarray(age_years, dtype=np.float64)
        a = a[np.isfinite(a)]
        if a.size == 0:
            raise ValueError("no Train ages to scale; Burst2Vec needs labelled Train clips")
        lo, hi = float(a.min()), float(a.max())
        return cls(lo, hi if hi > lo else lo + 1.0)

    def to01(self, years):
        return (np.asarray(years, dtype=np.float64) - self.lo) / (self.hi - self.lo)

    def years(self, a01):
        return np.asarray(a01, dtype=np.float64) * (self.hi - self.lo) + self.lo


def label_tensors(emotions: np.ndarray, country: np.ndarray, age_years: np.ndarray, scale: AgeScale,
                  device="cpu") -> dict[str, torch.Tensor]:
    """Labels as the module's batch keys; unknown labels (NaN / −1) become finite fillers."""
    return {"emotions": torch.as_tensor(np.nan_to_num(np.asarray(emotions, np.float32)), device=device),
            "country": torch.as_tensor(np.where(np.asarray(country) < 0, 0, country), dtype=torch.long, device=device),
            "age01": torch.as_tensor(np.nan_to_num(scale.to01(age_years)).astype(np.float32), device=device)}


def task_rows_of(rows: np.ndarray, emotions: np.ndarray, country: np.ndarray, age_years: np.ndarray) -> dict[int, np.ndarray]:
    """``{task id: the rows among rows that have that task's label}``."""
    rows = np.asarray(rows)
    have = (np.isfinite(emotions[rows]).all(1), np.isfinite(age_years[rows]), country[rows] >= 0)
    return {t: rows[h] for t, h in enumerate(have)}


def make_sampler(X: torch.Tensor, labels: dict[str, torch.Tensor], fit_rows: np.ndarray, emotions: np.ndarray,
                 country: np.ndarray, age_years: np.ndarray, cfg: Burst2VecConfig):
    """The per-task sampler over ``fit_rows`` (oversampled over joint cells with ``cfg.oversample``)."""
    task_rows = task_rows_of(fit_rows, emotions, country, age_years)
    cells = None
    if cfg.oversample:
        cells = {t: joint_cells(country[r], age_years[r], emotions[r], cfg.age_edges) for t, r in task_rows.items()}
    return task_batches({"x": X, **labels}, task_rows, cfg.train.batch_size, cells)


def predict_burst2vec(stack: SeedStack, X: torch.Tensor, rows: np.ndarray, scale: AgeScale,
                      eval_batch: int = 4096, vectorise: bool = True):
    """Every seed's emotions ``(S, n, 10)``, country probabilities ``(S, n, 4)``, age ``(S, n)`` years."""
    out = predict(stack, {"x": X}, rows, eval_batch, vectorise)
    proba = torch.softmax(torch.from_numpy(out["country"]), -1).numpy()
    return out["emotions"], proba, scale.years(out["age01"])


def train_burst2vec(X: np.ndarray | torch.Tensor, fit_rows: np.ndarray, sel_rows: np.ndarray, emotions: np.ndarray,
                    country: np.ndarray, age_years: np.ndarray, seeds, cfg: Burst2VecConfig, device: str = "cpu",
                    echo: Callable[[str], None] | None = None, adversarial: bool = True) -> tuple[SeedFit, AgeScale]:
    """Train one Burst2Vec per seed on ``X[fit_rows]``; early stopping on ``X[sel_rows]``.

    ``X`` ``(n, D)`` float32 (standardised features); labels row-aligned with it: ``emotions``
    ``(n, 10)``, ``country`` ``(n,)`` int (−1 unknown), ``age_years`` ``(n,)`` (NaN unknown).
    Selection score: :func:`exvo.learn.targets.selection_score` (S_MTL with floors) per seed,
    the best epoch restored. Returns the fit and the Train age scale (fitted on ``fit_rows``).
    """
    dev = torch.device(resolve_device(device))
    Xt = (torch.from_numpy(X) if isinstance(X, np.ndarray) else X).to(dev)
    scale = AgeScale.fit(age_years[fit_rows])
    labels = label_tensors(emotions, country, age_years, scale, dev)
    sampler = make_sampler(Xt, labels, fit_rows, emotions, country, age_years, cfg)
    sel_rows = np.asarray(sel_rows)
    se, sc, sa = emotions[sel_rows], country[sel_rows], age_years[sel_rows]
    tcfg = cfg.train

    def evaluate(stack: SeedStack) -> np.ndarray:
        e, p, a = predict_burst2vec(stack, Xt, sel_rows, scale, tcfg.eval_batch, tcfg.vectorise)
        return np.array([selection_score(se, e[j], sc, p[j].argmax(1), sa, a[j]) for j in range(stack.n)])

    def progress(epoch: int, score: np.ndarray) -> None:
        if echo:
            echo(f"  epoch {epoch:3d}: selection score " + " ".join(f"{s:.3f}" for s in score))

    D = Xt.shape[1]
    fit = train_seeds(lambda: Burst2Vec(D, cfg, adversarial), sampler, evaluate, [int(s) for s in seeds], tcfg,
                      dev, progress)
    return fit, scale
