"""``wsum``: a learned softmax-weighted sum of layers in front of the multitask MLP head.

Input: the ``(B, L, F)`` block of a multi-layer feature spec (``wavlm@all``, ``wavlm@3-8``,
``wavlm@0,6,12``), every layer standardised with its own Train statistics
(:mod:`exvo.learn.features`). For task set ``t``::

    w_t   = softmax(a_t)                 (L,)  a_t zero-initialised: every layer 1/L at the start
    mix_t = Σ_l w_t[l] · x[:, l, :]      (B, F)
    then the ExVo MLP (:class:`~exvo.learn.mlp.MultitaskMLP`): trunk → three heads

``weights="shared"``: one set ``a`` (T = 1) mixes one input for the trunk and all three heads,
as s3prl's Featurizer. ``weights="task"``: one set per task (T = 3: emotions, country, age);
the trunk (one set of weights) runs on each task's mix and each head reads its own task's
trunk output, so the tasks can draw on different depths for 2 × L extra parameters and
3 × the trunk's compute. The MLP part starts from the MLP's own initial weights of that seed
(it is built first under the same ``torch.manual_seed``), so on a one-layer input ``wsum``
trains exactly as ``mlp`` (softmax of one logit is 1, its gradient 0).

Trained by :func:`exvo.learn.torch_learner.fit_module` (all seeds — and speaker folds — at
once, autograd, public Adam). Saved under ``models/``: ``stack.pt`` + ``module.json`` (the
framework's) and ``layer_weights.json``: ``{"tasks", "n_layers", "models": seed of every
model, "weights": (models, T, L)}``, the softmax weights the report draws.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from exvo.config import from_dict
from exvo.learn.mlp import ARCHS, MultitaskMLP
from exvo.learn.multitask import TASKS, LossConfig, scale_intensities
from exvo.tasks import get_task
from exvo.learn.torch_learner import TorchFitted, fit_module, load_stack

HELP = ("softmax-weighted sum of the layers of a multi-layer set (NAME@all, @a-b, @a,b,c) in front of the MLP; "
        "--opt weights=shared|task")
USES = frozenset({"train", "loss", "folds", "layers"})
WEIGHTS = ("shared", "task")
WEIGHTS_FILE = "layer_weights.json"


@dataclass
class WSumConfig:
    """``arch``: the MLP head (sys1 | sys2); ``weights``: ``shared`` (one softmax over layers) or
    ``task`` (one per task: emotions, country, age)."""

    arch: str = "sys2"
    weights: str = "shared"
    logit_scale: float = 10.0

    def __post_init__(self):
        if not float(self.logit_scale) > 0:
            raise ValueError(f"wsum logit_scale must be > 0, got {self.logit_scale}")
        self.logit_scale = float(self.logit_scale)
        if self.arch not in ARCHS:
            raise ValueError(f"unknown MLP arch {self.arch!r}; choose one of {sorted(ARCHS)}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"wsum weights must be one of {WEIGHTS} (--opt weights=shared|task), got {self.weights!r}")

    @property
    def tasks(self) -> tuple[str, ...]:
        return ("all",) if self.weights == "shared" else TASKS


class WeightedSumMLP(MultitaskMLP):
    """``outputs({"x": (B, L, F)})`` → emotions ``(B, 10)``, country logits ``(B, 4)``, standardised
    age ``(B,)``; ``layer_logits`` ``(T, L)`` (T = 1 shared, 3 per task)."""

    def __init__(self, n_layers: int, dim: int, cfg: WSumConfig, loss_cfg: LossConfig | None = None, task=None):
        super().__init__(dim, cfg.arch, loss_cfg, task)      # the MLP first: its init = the MLP's
        self.n_layers, self.dim, self.shared = int(n_layers), int(dim), cfg.weights == "shared"
        self.scale = float(cfg.logit_scale)
        self.layer_logits = nn.Parameter(torch.zeros(1 if self.shared else len(TASKS), self.n_layers))

    def layer_weights(self) -> torch.Tensor:
        """``(T, L)`` softmax weights (rows sum to 1)."""
        return torch.softmax(self.scale * self.layer_logits, dim=-1)

    def outputs(self, batch):
        x = batch["x"]
        if x.dim() != 3 or tuple(x.shape[1:]) != (self.n_layers, self.dim):
            raise ValueError(f"wsum expects x of shape (B, {self.n_layers}, {self.dim}) (layers × features), got "
                             f"{tuple(x.shape)}; give it a multi-layer feature set such as NAME@all")
        w = self.layer_weights()
        if self.shared:
            z = self.trunk(torch.einsum("l,blf->bf", w[0], x))
            zs = (z, z, z)
        else:
            z = self.trunk(torch.einsum("tl,blf->tbf", w, x))       # (3, B, h2): the trunk on each task's mix
            zs = (z[0], z[1], z[2])
        return {"emotions": scale_intensities(self.heads[0](zs[0]), self.task), "country": self.heads[1](zs[1]),
                "age": self.heads[2](zs[2])[..., 0]}


class WSumFitted(TorchFitted):
    """Every seed's :class:`WeightedSumMLP`; ``predict`` takes ``(n, L, F)`` or the flat ``(n, L·F)``
    matrix of the run (layer-major columns, as :func:`exvo.learn.features.load_features` builds it)."""

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.meta["n_layers"]), int(self.meta["dim"])

    def block(self, X: np.ndarray) -> np.ndarray:
        L, F = self.shape
        if X.ndim == 2 and X.shape[1] == L * F:
            return X.reshape(X.shape[0], L, F)
        if X.ndim == 3 and X.shape[1:] == (L, F):
            return X
        raise ValueError(f"this wsum run was trained on {L} layers × {F} features; got features of shape "
                         f"{X.shape[1:]} (expected ({L * F},) or ({L}, {F})). Give the run's own feature set")

    def predict(self, X: np.ndarray):
        return super().predict(self.block(X))

    def weights(self) -> np.ndarray:
        """``(models, T, L)`` softmax layer weights of every trained model."""
        scale = float(self.meta["config"].get("logit_scale", 1.0))
        return torch.softmax(scale * self.stack.params["layer_logits"].detach().cpu().double(), dim=-1).numpy()

    def weights_record(self) -> dict:
        cfg = WSumConfig(**self.meta["config"])
        return {"tasks": list(cfg.tasks), "n_layers": self.shape[0], "models": list(self.meta["seeds"]),
                "weights": np.round(self.weights(), 6).tolist()}

    def save(self, folder: Path) -> None:
        super().save(folder)
        (Path(folder) / WEIGHTS_FILE).write_text(json.dumps(self.weights_record()))


def as_block(X: np.ndarray) -> np.ndarray:
    """``(n, L, F)`` as given; a flat ``(n, D)`` matrix is one layer, ``(n, 1, D)`` (a view)."""
    if X.ndim == 3:
        return X
    if X.ndim == 2:
        return X[:, None, :]
    raise ValueError(f"wsum expects features (n, L, F) or (n, D), got shape {X.shape}")


def fit(data, cfg: WSumConfig) -> WSumFitted:
    """Train every seed (× fold) on ``data.X`` ``(n, L, F)`` (a :class:`~exvo.learn.registry.FitData`)."""
    X = as_block(data.X)
    L, F = X.shape[1:]
    f = fit_module(lambda _dim: WeightedSumMLP(L, F, cfg, data.loss, data.targets.task), replace(data, X=X), cfg)
    meta = f.meta | {"dim": int(F), "n_layers": int(L)}
    out = WSumFitted(f.stack, meta, f.best_epoch, f.history, f.info, f.vectorise, f.eval_batch)
    if L > 1:
        w = out.weights().mean(0)                              # (T, L), mean over seeds
        for t, row in zip(cfg.tasks, w):
            top = np.argsort(-row)[:3]
            data.echo(f"  wsum layer weights ({t}, mean over models): largest at block position(s) "
                      + ", ".join(f"{k} ({row[k]:.2f})" for k in top) + f" of {L} (uniform {1 / L:.2f})")
    return out


def load(folder: Path, device: str) -> WSumFitted:
    def build(meta: dict) -> WeightedSumMLP:
        return WeightedSumMLP(int(meta["n_layers"]), int(meta["dim"]), WSumConfig(**meta["config"]),
                              from_dict(LossConfig, meta["loss"]), get_task(meta.get("task")))

    stack, meta = load_stack(folder, TorchFitted.META, build, device,
                             "the folder holds no wsum models; re-run `exvo learn --learner wsum`")
    return WSumFitted(stack, meta, [None] * len(stack.seeds), None, {})


def read_weights(models_dir: Path) -> dict | None:
    """A wsum run's ``models/layer_weights.json`` (None if absent or unreadable)."""
    try:
        return json.loads((Path(models_dir) / WEIGHTS_FILE).read_text())
    except (OSError, ValueError):
        return None


def weights_by_seed(record: dict) -> tuple[list[int], np.ndarray]:
    """``(seeds, (S, T, L))``: a seed's fold models averaged (one model per seed without folds)."""
    W = np.asarray(record["weights"], dtype=np.float64)
    models = list(record["models"])
    seeds = list(dict.fromkeys(models))
    return seeds, np.stack([W[[j for j, m in enumerate(models) if m == s]].mean(0) for s in seeds])
