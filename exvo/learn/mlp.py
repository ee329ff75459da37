"""The ExVo multitask MLP (Sys-1 / Sys-2) as a :class:`~exvo.learn.multitask.MultitaskModule`.

Network (the official ExVo 2022 baseline, ``HumeAI/competitions`` ExVo-MultiTask ``models.py``)::

    trunk   Linear(D, h1) → LayerNorm → LeakyReLU → Linear(h1, h2) → LayerNorm → LeakyReLU
    heads   emotions Linear(h2, hh) → LeakyReLU → Linear(hh, 10) → sigmoid
            country  Linear(h2, hh) → LeakyReLU → Linear(hh, 4)    (logits)
            age      Linear(h2, hh) → LeakyReLU → Linear(hh, 1)    (standardised years)

``sys1`` is (h1, h2, hh) = (128, 64, 32), the baseline; ``sys2`` doubles it: (256, 128, 64)
(Idiap's "Sys-2"). Weights start from ``nn.Linear``'s default init under
``torch.manual_seed(2k)`` for seed ``k`` (the framework's rule); the task losses and their
combination come from :class:`~exvo.learn.multitask.LossConfig`. Training is
:func:`exvo.learn.framework.train_seeds` (all seeds at once, autograd, public Adam).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from torch import nn

from exvo.learn.multitask import LossConfig, MultitaskModule, head_sizes, scale_intensities

ARCHS = {"sys1": (128, 64, 32), "sys2": (256, 128, 64)}
HEADS = head_sizes()
"""ExVo-MTL's heads; another task's are :func:`~exvo.learn.multitask.head_sizes` of it."""
LN_EPS = 1e-5       # LayerNorm default


@dataclass
class MLPConfig:
    """The MLP's own settings (optimisation and losses are shared: ``TrainConfig``, ``LossConfig``).

    ``fast_path``: compute each step's gradient with the hand-derived batched GEMMs of
    :mod:`exvo.learn.mlp_fast` instead of ``vmap`` + autograd (same trainer, optimiser and
    results within float rounding; baseline losses only)."""

    arch: str = "sys2"
    fast_path: bool = False

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unknown MLP arch {self.arch!r}; choose one of {sorted(ARCHS)}")
        if not isinstance(self.fast_path, bool):
            raise ValueError(f"fast_path must be true or false, got {self.fast_path!r}")


class MultitaskMLP(MultitaskModule):
    """``outputs({"x": (B, D)})`` → emotions ``(B, 10)`` in [0, 1], country logits ``(B, 4)``,
    standardised age ``(B,)`` (another task: its heads, see :mod:`exvo.learn.multitask`)."""

    def __init__(self, dim: int, arch: str = "sys2", loss_cfg: LossConfig | None = None, task=None):
        super().__init__(loss_cfg, task)
        h1, h2, hh = ARCHS[arch]
        self.trunk = nn.Sequential(nn.Linear(dim, h1), nn.LayerNorm(h1, eps=LN_EPS), nn.LeakyReLU(),
                                   nn.Linear(h1, h2), nn.LayerNorm(h2, eps=LN_EPS), nn.LeakyReLU())
        with warnings.catch_warnings():
            # a slot the task lacks has a 0-wide head (its init is a no-op, which torch warns about)
            warnings.filterwarnings("ignore", "Initializing zero-element tensors", UserWarning)
            self.heads = nn.ModuleList(nn.Sequential(nn.Linear(h2, hh), nn.LeakyReLU(), nn.Linear(hh, k))
                                       for _, k in head_sizes(self.task))

    def outputs(self, batch):
        z = self.trunk(batch["x"])
        return {"emotions": scale_intensities(self.heads[0](z), self.task), "country": self.heads[1](z),
                "age": self.heads[2](z)[..., 0]}
