"""``FewShotConfig``: what the few-shot personalisation track trains (EIHW's variants, heads,
per-speaker fine-tuning), on the shared pieces of :mod:`exvo.config`."""
from __future__ import annotations

from dataclasses import dataclass, field

from exvo.config import Seeds, SelectionConfig, TrainConfig
from exvo.fewshot.models import parse_heads
from exvo.fewshot.registry import FT_LOSSES, FT_PARAMS, VARIANTS, ZNORM_MODES

@dataclass
class FewShotConfig:
    """What to train. ``seeds``, ``train`` (AdamW, best epoch restored), ``select`` (where epochs are
    chosen: K speaker folds of Train, the default, or one held-out fraction of the Train speakers;
    held-out speakers get the Val protocol, :mod:`exvo.fewshot.select`): the shared
    pieces of :mod:`exvo.config`, with this track's defaults. ``rev_hold``/``rev_reach``: epochs
    of the reversal warm-up (default: epochs/12 and epochs/2, EIHW's 10 and 60 of 120). Make one
    from flat settings with ``exvo.config.build(FewShotConfig, features=[…], epochs=30, …)``."""

    features: list[str]
    variant: str = "none"
    heads: list[str] = field(default_factory=list)
    seeds: Seeds = field(default_factory=Seeds)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=30, patience=8, batch_size=16, lr=1e-3,
                                                                   weight_decay=1e-4, optimizer="adamw"))
    select: SelectionConfig = field(default_factory=lambda: SelectionConfig(on="folds", holdout_frac=0.2))
    hidden: int = 256
    zdim: int = 128
    dropout: float = 0.2
    ft_steps: int = 1
    ft_lr: float = 1e-4
    ft_loss: str = "mse"
    ft_params: str = "all"
    ft_select: bool = False
    znorm: str = "features"
    rev_hold: int | None = None
    rev_reach: int | None = None
    support_seed: int | None = None
    support_file: str | None = None
    resamples: int = 1000
    device: str = "cpu"

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown few-shot variant {self.variant!r}; choose one of {list(VARIANTS)}")
        self.heads = list(parse_heads(self.heads))
        if self.heads and self.variant not in ("none", "enrol"):
            raise ValueError(f"auxiliary heads {self.heads} apply to --variant none (h) or enrol; got {self.variant}")
        if self.ft_loss not in FT_LOSSES:
            raise ValueError(f"unknown --ft-loss {self.ft_loss!r}; choose one of {FT_LOSSES}")
        if self.ft_params not in FT_PARAMS:
            raise ValueError(f"unknown --ft-params {self.ft_params!r}; choose one of {list(FT_PARAMS)}")
        if self.znorm not in ZNORM_MODES:
            raise ValueError(f"unknown --znorm {self.znorm!r}; choose one of {ZNORM_MODES}")
        if self.select.on not in ("folds", "holdout"):
            raise ValueError("few-shot models are chosen on held-out Train speakers (--stop-on folds or holdout; Val "
                             f"is the personalisation protocol's own data); got --stop-on {self.select.on!r}")
        if int(self.resamples) < 10:
            raise ValueError(f"--resamples must be >= 10, got {self.resamples}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"unknown device {self.device!r}; choose cpu, cuda or auto")

    @property
    def reversal(self) -> tuple[int, int]:
        hold = self.rev_hold if self.rev_hold is not None else max(1, round(self.train.epochs / 12))
        reach = self.rev_reach if self.rev_reach is not None else max(hold + 1, round(self.train.epochs / 2))
        return int(hold), int(reach)
