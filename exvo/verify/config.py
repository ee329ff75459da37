"""``VerifyConfig``: what enrol-to-verify pretrains, enrols and scores, on the shared pieces of
:mod:`exvo.config`."""
from __future__ import annotations

from dataclasses import dataclass, field

from exvo.config import Seeds, SelectionConfig, TrainConfig
from exvo.verify.encoder import ENCODERS, EncoderConfig
from exvo.verify.episodes import parse_classes
from exvo.verify.losses import LOSSES, LossConfig

CURVE = (1, 5, 10, 20, 50)
"""Numbers of enrolled clips per class for the N_p curve (paper Fig. 4)."""


@dataclass
class VerifyConfig:
    """``features``: one feature set (utterance cache spec, or the name of a frame cache);
    ``seen``: the pretraining classes; ``task``: the new task's classes (at least one unseen);
    ``enrol``: N_p clips per task class; ``n_per_class``: N clips per class in a training
    episode (paper 10); ``encoder``: auto (gru when a frame cache exists, else mlp) | mlp | gru;
    ``reference``: also train the "All" classifier. ``seeds``, ``train`` (Adam; its batch size is
    set by the episodes: ``n_per_class`` × classes) and ``select`` (where epochs are chosen: K
    speaker folds of the seen-class Train clips, then a refit for their median epoch — the default —
    or one held-out fraction of the speakers): the shared pieces of :mod:`exvo.config`."""

    features: str
    seen: list[str]
    task: list[str]
    enrol: int = 10
    loss: str = "namp"
    encoder: str = "auto"
    seeds: Seeds = field(default_factory=Seeds)
    n_per_class: int = 10
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=40, patience=10, lr=1e-3, weight_decay=1e-4))
    select: SelectionConfig = field(default_factory=lambda: SelectionConfig(on="folds", holdout_frac=0.15))
    curve: tuple[int, ...] = CURVE
    reference: bool = True
    device: str = "auto"
    max_frames: int = 512
    encoder_cfg: EncoderConfig = field(default_factory=EncoderConfig)
    loss_cfg: LossConfig = field(default_factory=LossConfig)

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown --loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.encoder not in ("auto", *ENCODERS):
            raise ValueError(f"unknown --encoder {self.encoder!r}; choose auto, {' or '.join(ENCODERS)}")
        self.seen = parse_classes(self.seen, "--seen")
        self.task = parse_classes(self.task, "--task")
        if len(self.seen) < 2:
            raise ValueError(f"--seen needs at least 2 classes to pretrain on, got {self.seen}")
        if len(self.task) < 2:
            raise ValueError(f"--task needs at least 2 classes (e.g. a seen one and the new one), got {self.task}")
        if all(c in self.seen for c in self.task):
            raise ValueError(f"--task {','.join(self.task)}: every class is seen in pretraining; an enrol-to-verify "
                             "task needs at least one class missing from --seen")
        if self.select.on not in ("folds", "holdout"):
            raise ValueError(f"verify stops on held-out Train speakers (--stop-on folds or holdout; Val holds the "
                             f"enrolment pools); got --stop-on {self.select.on!r}")
        for k in ("enrol", "n_per_class"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"--{k.replace('_', '-')} must be >= 1, got {getattr(self, k)}")
        if LOSSES[self.loss].episodic and self.n_per_class < 2:
            raise ValueError(f"--loss {self.loss} needs --n-per-class >= 2 (one query + support per class)")

