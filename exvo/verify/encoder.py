"""The emotion prototype encoder (paper 004, §3.3.1) and its learner module.

* :class:`FrameEncoder` — frame sequences ``x`` ``(B, T, D)`` with lengths ``len`` ``(B,)``:
  a one-layer GRU (256) → 1–2 transformer encoder layers (multi-head self-attention,
  padded frames masked) → mean over the valid frames → embedding P ``(B, 256)``. The GRU
  is unidirectional, so its outputs at valid frames do not depend on the padding after
  them; no packing is needed. ``nn.GRU`` cannot run under ``vmap``, so seeds train in a
  loop (``TrainConfig(vectorise=False)``).
* :class:`MLPEncoder` — utterance vectors ``x`` ``(B, D)``: Linear → ReLU → dropout → Linear
  → P ``(B, emb)``; the default when no frame cache exists (vectorised over seeds).

:class:`VerifyModule` wraps an encoder, the linear classifier of the CE term and the
encoder loss (:mod:`exvo.verify.losses`). ``outputs(batch)`` → ``{"emb": (B, E),
"logits": (B, K)}``; ``loss`` reads ``batch["y"]`` (class indices) and the episode's ``N``
from the batch shape (K·N clips, class-ordered).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from exvo.learn.framework import Batch, LearnerModule
from exvo.verify.losses import LossConfig, make_loss

ENCODERS = ("mlp", "gru")


@dataclass
class EncoderConfig:
    """``kind`` mlp | gru. MLP: ``hidden``, ``emb`` (P's size), ``dropout``. GRU-transformer:
    ``gru`` units (paper 256), ``layers`` transformer layers (1–2), ``heads``, ``ff`` feed-forward
    width (paper {64…512}), ``dropout``."""

    kind: str = "mlp"
    hidden: int = 256
    emb: int = 128
    dropout: float = 0.2
    gru: int = 256
    layers: int = 1
    heads: int = 2
    ff: int = 512

    def __post_init__(self):
        if self.kind not in ENCODERS:
            raise ValueError(f"unknown encoder {self.kind!r}; choose one of {ENCODERS}")
        if self.kind == "gru" and not 1 <= int(self.layers) <= 2:
            raise ValueError(f"the GRU-transformer has 1 or 2 transformer layers (paper §4.1.3), got {self.layers}")
        if self.kind == "gru" and self.gru % self.heads:
            raise ValueError(f"gru units ({self.gru}) must be divisible by the number of heads ({self.heads})")

    @property
    def out_dim(self) -> int:
        return self.emb if self.kind == "mlp" else self.gru


class MLPEncoder(nn.Module):
    def __init__(self, in_dim: int, cfg: EncoderConfig):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.hidden, cfg.emb))

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.net(batch["x"])


class FrameEncoder(nn.Module):
    def __init__(self, in_dim: int, cfg: EncoderConfig):
        super().__init__()
        self.gru = nn.GRU(in_dim, cfg.gru, batch_first=True)
        layer = nn.TransformerEncoderLayer(cfg.gru, cfg.heads, cfg.ff, cfg.dropout, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)

    def forward(self, batch: Batch) -> torch.Tensor:
        x, n = batch["x"], batch["len"]                   # (B, T, D), (B,) valid frames (≥ 1)
        h, _ = self.gru(x)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < n[:, None]      # (B, T)
        h = self.transformer(h, src_key_padding_mask=~valid)
        w = valid.to(h.dtype)[..., None]
        return (h * w).sum(1) / w.sum(1).clamp_min(1.0)


class VerifyModule(LearnerModule):
    """Encoder + linear classifier (CE term) + encoder loss for ``n_classes`` seen classes."""

    def __init__(self, in_dim: int, n_classes: int, loss: str, enc: EncoderConfig, loss_cfg: LossConfig):
        super().__init__()
        self.encoder = MLPEncoder(in_dim, enc) if enc.kind == "mlp" else FrameEncoder(in_dim, enc)
        self.classifier = nn.Linear(enc.out_dim, n_classes)
        self.criterion = make_loss(loss, n_classes, enc.out_dim, loss_cfg)
        self.n_classes = n_classes

    def outputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        emb = self.encoder(batch)
        return {"emb": emb, "logits": self.classifier(emb)}

    def loss(self, outputs: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        y = batch["y"]
        n_per_class = y.shape[0] // self.n_classes
        return self.criterion(outputs["emb"], outputs["logits"], y, n_per_class)
