"""``FinetuneConfig``: what ``exvo finetune`` trains end to end — a speech model with the
Burst2Vec head on raw audio — on the shared pieces of :mod:`exvo.config`."""
from __future__ import annotations

from dataclasses import dataclass, field

from exvo.config import Seeds, SelectionConfig, TrainConfig
from exvo.learn.burst2vec import Burst2VecConfig
from exvo.preprocess import check_level

MODELS = ("hubert", "wav2vec2", "wavlm")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@dataclass
class FinetuneConfig:
    """``model`` hubert | wav2vec2 | wavlm; ``checkpoint`` a hub id or local folder (default: the
    extractor's default checkpoint). ``head``: the Burst2Vec settings (its ``train`` is ignored
    here: this config's own ``train`` applies, Adam over the whole model). ``select``: the rows
    that stop training (a speaker-disjoint Train hold-out of ``holdout_frac``, or Val †).
    ``rms_db``: RMS-normalise every clip to this level (dBFS) before the feature extractor,
    None = off."""

    model: str = "hubert"
    checkpoint: str | None = None
    head: Burst2VecConfig = field(default_factory=Burst2VecConfig)
    seeds: Seeds = field(default_factory=lambda: Seeds(n=1))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=100, patience=10, batch_size=32, lr=1e-5,
                                                                   weight_decay=0.0))
    select: SelectionConfig = field(default_factory=SelectionConfig)
    precision: str = "auto"
    freeze_feature_encoder: bool = True
    rms_db: float | None = None
    device: str = "auto"

    def validate(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r} for fine-tuning; choose one of {MODELS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {PRECISIONS}")
        if self.rms_db is not None:
            check_level(self.rms_db)
