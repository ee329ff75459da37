"""``LearnConfig``: what ``exvo learn`` trains — features, learner, seeds, the preset's training
and selection pieces (:mod:`exvo.config`) and the task losses."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from exvo.config import Seeds, SelectionConfig, TrainConfig
from exvo.learn import registry
from exvo.learn.mlp import ARCHS
from exvo.learn.multitask import LossConfig
from exvo.learn.presets import preset as preset_values
from exvo.learn.threads import resolve_threads

COMBINES = ("uncertainty", "mean", "fixed")


@dataclass
class LearnConfig:
    """What to learn: ``seeds`` models (:class:`~exvo.config.Seeds`) of ``learner`` on ``features``.

    ``learner``: a registry name (:mod:`exvo.learn.registry`); ``options``: that learner's own
    settings (``{field: value}`` of its config dataclass; ``arch`` and the ``xgb_*`` fields are
    shorthands for the MLP's and XGBoost's). ``preset``: default | paper | baseline | fast
    (:mod:`exvo.learn.presets`). ``train`` (:class:`~exvo.config.TrainConfig`) and ``select``
    (:class:`~exvo.config.SelectionConfig`): None = the preset's (for a learner with its own
    optimisation settings, burst2vec: its config's ``train``); filled in at construction, so a
    saved config holds what was used. Losses, None = the preset's: ``loss`` = how the task
    losses are combined (uncertainty | mean | fixed with ``loss_weights``), ``emotion_loss``
    mse | ccc, ``age_loss`` mse | mae. ``threads``: CPU threads, 0 = automatic (backs off under
    load). ``device``: auto | cpu | cuda. Make one from flat settings (``epochs=3``,
    ``stop_on="val"``, ``seeds=2``, as the CLI takes them) with :func:`exvo.config.build`: each
    goes on top of the preset's value.
    """

    features: list[str]
    learner: str = "mlp"
    preset: str = "default"
    arch: str | None = None
    seeds: Seeds = field(default_factory=Seeds)
    train: TrainConfig | None = None
    select: SelectionConfig | None = None
    loss: str | None = None
    emotion_loss: str | None = None
    age_loss: str | None = None
    loss_weights: tuple[float, float, float] | None = None
    device: str = "auto"
    threads: int = 0
    options: dict = field(default_factory=dict)
    xgb_estimators: int | None = None
    xgb_depth: int | None = None
    xgb_jobs: int | None = None
    progress: bool = False

    def __post_init__(self):
        if self.train is None:
            self.train = self.piece_default("train", vars(self))
        if self.select is None:
            self.select = self.piece_default("select", vars(self))

    @staticmethod
    def piece_default(name: str, settings: dict):
        """The ``train``/``select`` a run with these ``settings`` (its preset, learner) starts from."""
        v = preset_values(settings.get("preset", "default"))
        if name == "select":
            return SelectionConfig(on=v["stop_on"], monitor=v["monitor"])
        if name == "train":
            own = registry.get(settings.get("learner", "mlp"))
            if "train" not in own.uses and "train" in {f.name for f in dataclasses.fields(own.config)}:
                return own.config().train          # burst2vec: its own optimisation settings, not the preset's
            return TrainConfig(**{f.name: v[f.name] for f in dataclasses.fields(TrainConfig) if f.name in v})
        return Seeds()

    def resolved(self) -> dict:
        """The preset's loss and architecture values with every explicitly set field on top."""
        v = preset_values(self.preset)
        for k in ("arch", "loss", "emotion_loss", "age_loss", "loss_weights"):
            if getattr(self, k) is not None:
                v[k] = getattr(self, k)
        return v

    def validate(self) -> None:
        v = self.resolved()
        learner = registry.get(self.learner)
        if v["loss"] not in COMBINES:
            raise ValueError(f"unknown loss {v['loss']!r}; choose one of {COMBINES}")
        if "arch" in {f.name for f in dataclasses.fields(learner.config)} and v["arch"] not in ARCHS:
            raise ValueError(f"unknown arch {v['arch']!r}; choose one of {sorted(ARCHS)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"unknown device {self.device!r}; choose auto, cpu or cuda")
        self.loss_config(), self.learner_config()
        resolve_threads(self.threads)

    def loss_config(self) -> LossConfig:
        v = self.resolved()
        return LossConfig(emotions=v["emotion_loss"], age=v["age_loss"], combine=v["loss"],
                          weights=tuple(v["loss_weights"]))

    def learner_config(self):
        learner = registry.get(self.learner)
        known = {f.name for f in dataclasses.fields(learner.config)}
        opts = {}
        shorthands = {"arch": self.resolved()["arch"], "n_estimators": self.xgb_estimators,
                      "max_depth": self.xgb_depth, "n_jobs": self.xgb_jobs}
        if "train" not in learner.uses:
            # a learner with its own optimisation settings (burst2vec) gets this run's train
            shorthands["train"] = self.train
        if "loss" not in learner.uses:
            shorthands |= {"emotion_loss": self.emotion_loss, "age_loss": self.age_loss}
        for k, val in shorthands.items():
            if k in known and val is not None:
                opts[k] = val
        opts.update(self.options)
        return learner.make_config(opts)
