"""The multitask contract shared by every torch learner: batch keys, outputs, losses.

The three keys are the task's slots (:mod:`exvo.tasks`), named after ExVo-MTL's; shapes below are
ExVo's, another task's follow its spec (``k`` intensities, ``C`` classes; a slot the task lacks has
width 0 / one placeholder class, and its loss is left out). A multitask learner's
``outputs(batch)`` returns, for one seed and a batch of ``B`` clips::

    "emotions"  (B, 10)  intensities in [0, 1] (after a sigmoid; another range is scaled to it)
    "country"   (B, 4)   logits (softmax gives the country probabilities)
    "age"       (B,)     standardised age, (years − Train mean) / Train std

and reads its inputs from the batch::

    "x"         (B, D)   standardised features
    "emotions"  (B, 10)  labels in [0, 1]
    "country"   (B,)     int64 0-3
    "age"       (B,)     standardised age

:class:`MultitaskModule` supplies ``loss``: the three task losses chosen by a
:class:`LossConfig`, combined by learned uncertainty weights (log-variances are module
parameters, so they train with the rest), a plain mean, or fixed weights. A new learner
subclasses it and writes ``outputs`` only (see ``docs/learners.md``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from exvo.learn import losses
from exvo.learn.framework import Batch, LearnerModule
from exvo.learn.targets import Targets

N_EMO = 10
S_INIT = -0.33
"""Initial log-variances of the uncertainty weighting (the ExVo baseline's value)."""
TASKS = ("emotions", "country", "age")


@dataclass
class LossConfig:
    """Task losses and how they are combined into one training loss.

    ``emotions``: ``mse`` (Σ over the 10 emotions of the batch MSE, the baseline) | ``ccc``
    (1 − mean batch CCC, as Burst2Vec and EIHW); ``age``: ``mse`` | ``mae`` (on standardised
    age); the country loss is cross-entropy. ``combine``: ``uncertainty`` (Σ ½e^(−s)L + ½s with
    learned s, Kendall et al. 2018, as the baseline) | ``mean`` (the three averaged, as Idiap)
    | ``fixed`` (Σ wᵢLᵢ with ``weights`` in the order emotions, country, age).
    """

    emotions: str = "mse"
    age: str = "mse"
    combine: str = "uncertainty"
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self):
        if self.emotions not in losses.EMOTION_LOSSES:
            raise ValueError(f"unknown emotion loss {self.emotions!r}; choose one of {sorted(losses.EMOTION_LOSSES)}")
        if self.age not in losses.AGE_LOSSES:
            raise ValueError(f"unknown age loss {self.age!r}; choose one of {sorted(losses.AGE_LOSSES)}")
        if self.combine not in losses.COMBINES:
            raise ValueError(f"unknown loss combination {self.combine!r}; choose one of {losses.COMBINES}")
        w = tuple(float(v) for v in self.weights)
        if len(w) != 3 or any(not np.isfinite(v) or v < 0 for v in w):
            raise ValueError(f"loss weights must be 3 finite numbers >= 0 (emotions, country, age), got {self.weights}")
        self.weights = w


class MultitaskModule(LearnerModule):
    """Base class of multitask learners: implement ``outputs``; the loss comes from ``loss_cfg``.
    ``task`` (:class:`exvo.tasks.TaskSpec`, None → ExVo-MTL) sizes the heads (see :func:`head_sizes`)
    and says which of the three losses count."""

    def __init__(self, loss_cfg: LossConfig | None = None, task=None):
        from exvo.tasks import get_task

        super().__init__()
        self.loss_cfg = loss_cfg or LossConfig()
        self.task = get_task(task)
        present = [self.task.has(s) for s in SLOTS]
        # None when every slot is present (ExVo-MTL), so that its loss is computed exactly as before
        self._present = None if all(present) else [i for i, p in enumerate(present) if p]
        # one per task, used only by the uncertainty combination (a parameter either way so
        # that the saved state has the same keys whatever the loss)
        self.log_vars = nn.Parameter(torch.full((3,), S_INIT))

    def task_losses(self, out: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """``(3,)``: emotions, country, age losses of one seed's batch."""
        c = self.loss_cfg
        return torch.stack([losses.EMOTION_LOSSES[c.emotions](out["emotions"], batch["emotions"]),
                            losses.cross_entropy(out["country"], batch["country"]),
                            losses.AGE_LOSSES[c.age](out["age"], batch["age"])])

    def loss(self, out: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        c = self.loss_cfg
        w = torch.tensor(c.weights, dtype=out["age"].dtype, device=out["age"].device) if c.combine == "fixed" else None
        tl = self.task_losses(out, batch)
        if self._present is None:
            return losses.combine(tl, c.combine, log_vars=self.log_vars, weights=w)
        keep = self._present           # the task's slots only: an absent slot's loss is not trained
        return losses.combine(tl[keep], c.combine, log_vars=self.log_vars[keep],
                              weights=None if w is None else w[keep])


SLOTS = ("intensities", "class", "value")
"""The task slots in the order of ``task_losses`` (emotions, country, age)."""


def head_sizes(task=None) -> tuple[tuple[str, int], ...]:
    """``(("emotions", k), ("country", C), ("age", 1))`` of a task (ExVo: 10, 4, 1)."""
    from exvo.tasks import get_task

    t = get_task(task)
    return (("emotions", t.n_reg), ("country", t.n_classes), ("age", 1))


def scale_intensities(z: torch.Tensor, task) -> torch.Tensor:
    """Sigmoid of the intensities head, scaled to the task's range ([0, 1]: the plain sigmoid)."""
    g = task.group("intensities")
    s = torch.sigmoid(z)
    if g is None or g.range == (0.0, 1.0):
        return s
    return g.range[0] + (g.range[1] - g.range[0]) * s


def data_tensors(X: np.ndarray, t: Targets, device: str | torch.device = "cpu") -> Batch:
    """Every row of the feature matrix and its labels as tensors (unknown labels filled with 0;
    only rows with labels are ever batched). ``X`` is shared, not copied, on the CPU."""
    return {"x": torch.from_numpy(X).to(device),
            "emotions": torch.as_tensor(np.nan_to_num(t.emotions), dtype=torch.float32, device=device),
            "country": torch.as_tensor(np.where(t.country < 0, 0, t.country), dtype=torch.long, device=device),
            "age": torch.as_tensor(np.nan_to_num(t.age_z), dtype=torch.float32, device=device)}


def check_outputs(out: dict[str, torch.Tensor], B: int, task=None) -> None:
    """Raise if a learner's outputs break the contract above for ``task`` (checked once per fit)."""
    (_, k), (_, c), _ = head_sizes(task)
    want = {"emotions": (B, k), "country": (B, c), "age": (B,)}
    for k, shape in want.items():
        if k not in out:
            raise ValueError(f"the learner's outputs() returned {sorted(out)}; a multitask learner must return "
                             f"{sorted(want)} (see docs/learners.md)")
        if tuple(out[k].shape) != shape:
            raise ValueError(f"the learner's output {k!r} has shape {tuple(out[k].shape)}, expected {shape} "
                             f"(batch of {B}; see docs/learners.md)")
