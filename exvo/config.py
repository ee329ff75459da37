"""The config spine: the pieces every track's config embeds, and the round trip of configs.

Shared pieces, declared and validated once:

* :class:`Seeds` — ``n`` models with seeds ``first, first+1, …``;
* :class:`TrainConfig` — optimisation and early stopping (epochs, patience, batch size, lr,
  weight decay, optimiser, restore, schedule);
* :class:`SelectionConfig` — which rows choose the model (a speaker-disjoint Train hold-out,
  or Val †) and by what.

:class:`~exvo.learn.api.LearnConfig`, :class:`~exvo.fewshot.api.FewShotConfig`,
:class:`~exvo.verify.api.VerifyConfig`, :class:`~exvo.learn.finetune.FinetuneConfig` and
:class:`~exvo.learn.burst2vec.Burst2VecConfig` embed them as fields (``seeds``, ``train``,
``select``) with their own defaults, instead of re-declaring seeds, epochs, patience, lr and
weight decay. :func:`build` makes any of them from flat settings (``epochs=3, seeds=2``, as
the CLI and :mod:`exvo.api` take them); ``asdict`` saves one with its run and :func:`from_dict`
reads it back (also a config saved flat by exvo 0.1); :func:`exvo.runs.reader.config_of`
gives back the dataclass a run was made with, from its ``config.json``.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

import numpy as np


@dataclass
class Seeds:
    """``n`` models, seeded ``first, first+1, …`` (each seed's init and batch order follow from it)."""

    n: int = 5
    first: int = 0

    def __post_init__(self):
        if int(self.n) < 1:
            raise ValueError(f"--seeds must be >= 1, got {self.n}")
        self.n, self.first = int(self.n), int(self.first)

    @property
    def list(self) -> list[int]:
        return [self.first + k for k in range(self.n)]


@dataclass
class TrainConfig:
    """Optimisation settings shared by every learner.

    ``optimizer``: ``adam`` (L2 ``weight_decay`` added to the gradient, as the ExVo baseline)
    or ``adamw`` (decoupled decay). ``restore``: ``best`` (the epoch with the highest selection
    score) or ``last`` (the epoch the seed stopped at, as the official baseline). An epoch
    counts as an improvement only when the score rises by more than ``min_delta``.
    """

    epochs: int = 20
    patience: int = 5
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adam"
    restore: str = "best"
    min_delta: float = 0.0
    vectorise: bool = True
    eval_batch: int = 4096
    warmup_epochs: float = 0.0
    decay: str = "none"

    def __post_init__(self):
        for k in ("epochs", "patience", "batch_size", "eval_batch"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose adam or adamw")
        if self.restore not in ("best", "last"):
            raise ValueError(f"unknown restore {self.restore!r}; choose best or last")
        if self.decay not in DECAYS:
            raise ValueError(f"unknown learning-rate decay {self.decay!r}; choose one of {DECAYS}")
        if float(self.warmup_epochs) < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")

    def lr_factor(self, t: float) -> float:
        """Learning-rate multiplier at training progress ``t`` (epochs done, fractional).

        Linear warm-up from 0 (floored at 1e-3) to 1 over ``warmup_epochs``, then ``decay``:
        ``none`` keeps 1; ``cosine`` falls to 0 at ``epochs`` (a large-batch schedule: the
        scaled learning rate would be unstable in the first steps and too coarse at the end).
        """
        w = float(self.warmup_epochs)
        if w > 0 and t < w:
            return max(t / w, 1e-3)
        if self.decay == "cosine":
            span = max(float(self.epochs) - w, 1e-9)
            return 0.5 * (1.0 + np.cos(np.pi * min(max(t - w, 0.0) / span, 1.0)))
        return 1.0


DECAYS = ("none", "cosine")


SELECT_ON = ("folds", "holdout", "val")
MONITORS = ("score", "loss")
FINALS = ("ensemble", "refit")
DEFAULT_FOLDS = 5


@dataclass
class SelectionConfig:
    """Which rows choose the model (early stopping, best epoch, boosting rounds, ``@best`` layer).

    ``on``: ``folds`` — K speaker folds of Train (:func:`exvo.splits.speaker_folds`): every seed
    trains one model per fold, early-stopped on that fold; the run's predictions come from
    ``final`` = ``ensemble`` (the mean of the K fold models) or ``refit`` (one model per seed on
    all of Train for the folds' median epoch count); the folds' own predictions on their held
    speakers are the run's out-of-fold (OOF) estimate | ``holdout`` — one speaker-disjoint part
    of Train (``holdout_frac``, per country; ``holdout_seed``) | ``val`` — Val itself, the
    papers' protocol (Val scores optimistic †). ``k``: folds (None: 5, or as many as Train has
    speakers when fewer, said in the log; an explicit K above that is refused); ``monitor``: ``score`` (the
    selection S_MTL, higher is better) | ``loss`` (the learner's training loss on the selection
    rows, as the baseline's Val loss)."""

    on: str = "holdout"
    monitor: str = "score"
    holdout_frac: float = 0.1
    holdout_seed: int = 0
    k: int | None = None
    final: str = "ensemble"

    def __post_init__(self):
        if self.on not in SELECT_ON:
            raise ValueError(f"unknown --stop-on {self.on!r}; choose one of {SELECT_ON}")
        if self.monitor not in MONITORS:
            raise ValueError(f"unknown selection monitor {self.monitor!r}; choose one of {MONITORS}")
        if not 0.0 < float(self.holdout_frac) < 1.0:
            raise ValueError(f"holdout_frac must be in (0, 1), got {self.holdout_frac}")
        if self.k is not None and int(self.k) < 2:
            raise ValueError(f"--folds must be >= 2 speaker folds, got {self.k}")
        if self.final not in FINALS:
            raise ValueError(f"unknown --final {self.final!r}; choose one of {FINALS}")

    @property
    def optimistic(self) -> bool:
        """True when Val chose the model: its Val scores are optimistic (shown with †)."""
        return self.on == "val"

    def describe(self) -> str:
        what = "loss" if self.monitor == "loss" else "selection S_MTL"
        if self.on == "val":
            return ("fit on all of Train; early stopping / epoch / @best layer chosen on Val "
                    f"({'Val loss' if self.monitor == 'loss' else 'Val selection S_MTL'}) — Val scores optimistic (†)")
        if self.on == "folds":
            final = ("the mean of the fold models" if self.final == "ensemble"
                     else "one model per seed refitted on all of Train for the folds' median epochs")
            return (f"{self.k or DEFAULT_FOLDS} speaker folds of Train (seed {self.holdout_seed}): each fold model "
                    "early-stopped on its "
                    f"own held-out speakers ({what}); predictions from {final}; out-of-fold predictions are the "
                    "Train estimate; Val labels unused until scoring")
        return (f"fit on Train minus a speaker-disjoint hold-out (per country round({self.holdout_frac:g} × speakers), "
                f"≥ 1, never all; seed {self.holdout_seed}); early stopping / epoch / @best layer chosen on the hold-out "
                f"({what}); Val labels unused until scoring")


SPINE = (Seeds, TrainConfig, SelectionConfig)
ALIASES = {"Seeds": {"seeds": "n", "seed": "first"},
           "SelectionConfig": {"stop_on": "on", "holdout": "holdout_frac", "folds": "k"}}
"""Flat names (CLI flags, :mod:`exvo.api` keywords, exvo 0.1 configs) of the pieces' fields."""


def _pieces(cls) -> dict[str, type]:
    """``{field name: spine class}`` of the pieces ``cls`` embeds."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        kinds = [t for t in (hints.get(f.name), *typing.get_args(hints.get(f.name))) if t in SPINE]
        if kinds:                         # TrainConfig or TrainConfig | None
            out[f.name] = kinds[0]
    return out


def _route(piece: type, key: str) -> str | None:
    names = {f.name for f in dataclasses.fields(piece)}
    key = ALIASES.get(piece.__name__, {}).get(key, key)
    return key if key in names else None


def flat_fields(cls) -> dict[str, tuple[type, dataclasses.Field]]:
    """Every flat setting name :func:`build` takes for ``cls``: ``{name: (owning class, field)}``
    (its own fields, then those of the pieces it embeds, with their flat aliases)."""
    pieces = _pieces(cls)
    out = {f.name: (cls, f) for f in dataclasses.fields(cls)}      # a piece by name takes a whole one
    for piece in pieces.values():
        fields = {f.name: f for f in dataclasses.fields(piece)}
        for name, f in fields.items():
            out.setdefault(name, (piece, f))
        for alias, name in ALIASES.get(piece.__name__, {}).items():
            out.setdefault(alias, (piece, fields[name]))
    return out


def build(cls, settings: dict | None = None, strict: bool = True, **kw):
    """``cls`` from flat settings: its own fields by name; ``seeds``/``seed`` into its
    :class:`Seeds`, a :class:`TrainConfig` field into ``train``, a :class:`SelectionConfig` field
    (or ``stop_on``, ``holdout``) into ``select`` — each on top of ``cls``'s own default for that
    piece. A piece given whole (a dataclass or a dict) is taken as it is. ``strict``: an unknown
    name raises (a typo); otherwise it is ignored (a config saved by a newer exvo)."""
    flat = dict(settings or {}) | kw
    pieces = _pieces(cls)
    own = {f.name for f in dataclasses.fields(cls)} - set(pieces)
    routed: dict[str, dict] = {p: {} for p in pieces}
    direct, unknown = {}, []
    for k, v in flat.items():
        if k in pieces and (isinstance(v, dict) or dataclasses.is_dataclass(v)):
            direct[k] = v if dataclasses.is_dataclass(v) else from_dict(pieces[k], v)
            continue
        to = next(((p, r) for p, t in pieces.items() if (r := _route(t, k)) is not None), None)
        if k in own:
            direct[k] = v
        elif to is not None:
            if v is not None:             # None: not given (an unset CLI option), the piece's default stands
                routed[to[0]][to[1]] = v
        else:
            unknown.append(k)
    if unknown and strict:
        raise TypeError(f"{cls.__name__} has no setting {', '.join(map(repr, sorted(unknown)))}; known: "
                        f"{', '.join(sorted(own))}, and those of {', '.join(t.__name__ for t in pieces.values())}")
    for p, values in routed.items():
        if values:
            base = direct.get(p) or _default(cls, p, direct)
            direct[p] = dataclasses.replace(base, **values)
    return cls(**_tuples(cls, direct))


def _default(cls, name: str, settings: dict):
    """The piece ``name`` that ``cls`` starts from: its ``piece_default(name, settings)`` when it
    has one (a learn config's preset decides), else the field's default."""
    if hasattr(cls, "piece_default"):
        got = cls.piece_default(name, settings)
        if got is not None:
            return got
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _tuples(cls, kw: dict) -> dict:
    """Lists saved for tuple fields become tuples again (JSON has no tuples)."""
    hints = typing.get_type_hints(cls)
    return {k: tuple(v) if isinstance(v, list) and "tuple" in str(hints.get(k, "")) else v for k, v in kw.items()}


def from_dict(cls, data: dict):
    """``cls`` from a saved ``asdict``: nested pieces and sub-configs are rebuilt, flat names of
    an exvo 0.1 config are routed into the pieces, keys ``cls`` does not know are ignored (a
    config saved by a newer exvo still reads)."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    kw = {}
    for k, v in data.items():
        sub = hints.get(k)
        if isinstance(v, dict) and dataclasses.is_dataclass(sub):
            v = from_dict(sub, v)
        kw[k] = v
    return build(cls, kw, strict=False)
