"""The learner registry: every stage-2 learner is one :class:`Learner` entry.

A learner is a name, a one-line help, a config dataclass (its own settings) and two
functions::

    fit(data: FitData, cfg) -> Fitted          train every seed; choose epochs on data.select_rows
    load(folder: Path, device: str) -> Fitted  rebuild what Fitted.save(folder) wrote

and a :class:`Fitted` has ``seeds``, ``best_epoch``, ``history``, ``info``,
``predict(X (n, D)) -> (emotions (S,n,10), country probabilities (S,n,4), standardised age (S,n))``
(another task, :mod:`exvo.tasks`: its intensities ``(S,n,k)``, class probabilities ``(S,n,C)`` and
standardised value; ``data.targets.task`` says which) and ``save(folder)``. ``exvo learn --learner NAME`` and :func:`exvo.learn.api.learn` derive
their choices from here; the run folder, scores, per-seed predictions and ``exvo predict``
are the same for every learner.

A torch learner needs none of this by hand: :func:`module_learner` turns a
:class:`~exvo.learn.multitask.MultitaskModule` factory into a registry entry (the framework
trains all seeds at once, with the shared :class:`~exvo.learn.framework.TrainConfig`,
:class:`~exvo.learn.multitask.LossConfig` and selection rows). See ``docs/learners.md``.

Learners outside this package register themselves on import; name their modules in
``$EXVO_LEARNERS`` (comma-separated) to make them available to the ``exvo`` command.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from exvo.config import SelectionConfig, TrainConfig, build, flat_fields
from exvo.learn.multitask import LossConfig
from exvo.learn.targets import Targets

Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class FitData:
    """What every learner's ``fit`` gets.

    ``X`` ``(n, D)`` float32, standardised with Train statistics (all rows of the run: Train,
    Val, Test; a learner must only read labels of ``fit_rows`` and ``select_rows``);
    ``targets`` labels aligned with ``X`` (NaN / −1 where unknown); ``fit_rows`` the rows to
    fit on; ``select_rows`` the rows that choose epochs / stop training (a speaker-disjoint
    hold-out of Train by default, Val with ``--stop-on val``); ``seeds``; the shared
    ``train`` / ``loss`` / ``selection`` settings; ``device`` ``cpu`` | ``cuda``; ``threads``
    CPU threads to use; ``echo`` for one-line progress messages. ``folds``: for a learner with
    ``"folds"`` in its ``uses`` (trains many models at once), every speaker fold's ``(fit rows,
    selection rows)``: it then returns S × K models, seed-major (:mod:`exvo.learn.folds`).
    """

    X: np.ndarray
    targets: Targets
    fit_rows: np.ndarray
    select_rows: np.ndarray
    seeds: list[int]
    train: TrainConfig
    loss: LossConfig
    selection: SelectionConfig
    device: str = "cpu"
    threads: int = 1
    echo: Callable[[str], None] = print
    progress: bool = False
    folds: list[tuple[np.ndarray, np.ndarray]] | None = None


class Fitted(Protocol):
    seeds: list[int]
    best_epoch: list[int | None]
    history: dict | None
    info: dict

    def predict(self, X: np.ndarray) -> Outputs: ...

    def save(self, folder: Path) -> None: ...


@dataclass(frozen=True)
class Learner:
    """One registry entry. ``uses``: which shared settings apply (``"train"``: epochs, batch size,
    learning rate…; ``"loss"``: the task-loss choices; ``"epochs"``: its own epoch loop, whose
    best epochs the run reports; ``"folds"``: trains every speaker fold's models in one call,
    see :class:`FitData`); the run records the others as unused."""

    name: str
    help: str
    config: type
    fit: Callable[[FitData, Any], Fitted]
    load: Callable[[Path, str], Fitted]
    uses: frozenset = frozenset({"train", "loss"})

    def make_config(self, options: dict[str, Any] | None = None):
        """The learner's config from ``{field: value}``; strings (from ``--opt k=v``) are converted to
        the field's type. Unknown fields are refused with the list of known ones."""
        known = flat_fields(self.config)
        kw = {}
        for k, v in (options or {}).items():
            if k not in known:
                raise ValueError(f"learner {self.name!r} has no option {k!r}; its options are: "
                                 + (", ".join(sorted(known)) or "(none)"))
            kw[k] = _convert(v, known[k][1], known[k][0]) if isinstance(v, str) else v
        return build(self.config, kw)


def _convert(text: str, f: dataclasses.Field, cls: type):
    default = f.default if f.default is not dataclasses.MISSING else None
    typ = type(default) if default is not None else str
    try:
        if typ is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if typ is tuple:
            return tuple(float(x) for x in text.split(","))
        return typ(text)
    except ValueError:
        kind = {"int": "an integer", "float": "a number", "bool": "true or false", "tuple": "numbers like 1,2,3",
                "str": "a string"}.get(typ.__name__, f"a {typ.__name__}")
        raise ValueError(f"option {f.name}={text!r} of {cls.__name__}: expected {kind}") from None


_REGISTRY: dict[str, Learner] = {}


def register(learner: Learner, replace: bool = False) -> Learner:
    """Add a learner; a second learner under a taken name is refused unless ``replace``."""
    if learner.name in _REGISTRY and not replace:
        raise ValueError(f"a learner named {learner.name!r} is already registered")
    if not dataclasses.is_dataclass(learner.config):
        raise TypeError(f"learner {learner.name!r}: config must be a dataclass, got {learner.config!r}")
    _REGISTRY[learner.name] = learner
    return learner


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def _load_plugins() -> None:
    for mod in filter(None, (m.strip() for m in os.environ.get("EXVO_LEARNERS", "").split(","))):
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise ValueError(f"$EXVO_LEARNERS names {mod!r}, which cannot be imported: {e}") from None


def names() -> list[str]:
    _load_plugins()
    return list(_REGISTRY)


def get(name: str) -> Learner:
    _load_plugins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown learner {name!r}; choose one of {tuple(_REGISTRY)}")
    return _REGISTRY[name]


def describe() -> dict[str, str]:
    return {k: v.help for k, v in _REGISTRY.items()}


# ------------------------------------------------------------------------ torch learners
def module_learner(name: str, help: str, config: type,
                   make: Callable[[int, Any, LossConfig], "MultitaskModule"],  # noqa: F821
                   vectorise: bool = True, grad_fn: Callable[[Any, LossConfig], Callable | None] | None = None) -> Learner:
    """A registry entry for a :class:`~exvo.learn.multitask.MultitaskModule`.

    ``make(dim, cfg, loss_cfg)`` builds one seed's module for ``dim`` input features. The
    framework trains every seed at once (``vectorise=False`` for modules ``vmap`` cannot run).
    ``grad_fn(cfg, loss_cfg)`` (optional) returns a hand-derived gradient function to use
    instead of autograd, or None (see :func:`exvo.learn.framework.train_seeds`).
    """
    from exvo.learn import torch_learner

    takes_task = _takes_task(make)

    def build(dim, cfg, loss, task):
        if takes_task:
            return make(dim, cfg, loss, task)
        if task.name != "exvo-mtl":
            raise ValueError(f"learner {name!r} builds ExVo-MTL heads only (its make(dim, cfg, loss) takes no task); "
                             f"it cannot learn task {task.name!r}: give make a fourth argument, the task "
                             "(see docs/learners.md), or use --learner mlp")
        return make(dim, cfg, loss)

    def fit(data: FitData, cfg) -> Fitted:
        task = data.targets.task
        g = grad_fn(cfg, data.loss) if grad_fn is not None else None
        if g is not None and task.name != "exvo-mtl":
            raise ValueError(f"the hand-derived fast path (fast_path=true) computes ExVo-MTL's gradients only; "
                             f"drop --opt fast_path=true to learn task {task.name!r}")
        return torch_learner.fit_module(lambda dim: build(dim, cfg, data.loss, task), data, cfg, vectorise, grad_fn=g)

    def load(folder: Path, device: str) -> Fitted:
        return torch_learner.load_module(folder, device, lambda dim, c, loss, task: build(dim, config(**c), loss, task),
                                         vectorise)

    return Learner(name, help, config, fit, load, uses=frozenset({"train", "loss", "folds"}))


def _takes_task(make: Callable) -> bool:
    """Whether a module factory takes the task: ``make(dim, cfg, loss, task)``."""
    import inspect

    try:
        params = list(inspect.signature(make).parameters.values())
    except (TypeError, ValueError):
        return False
    return any(p.name == "task" or p.kind == p.VAR_POSITIONAL for p in params) or len(params) >= 4


def _mlp_fast_path(cfg, loss: LossConfig):
    if not getattr(cfg, "fast_path", False):
        return None
    from exvo.learn import mlp_fast

    return mlp_fast.make_grad_fn(loss)


def _register_builtins() -> None:
    from exvo.learn.mlp import MLPConfig, MultitaskMLP
    from exvo.learn import xgb

    register(module_learner("mlp", "the ExVo baseline multitask MLP (sys1 128/64, sys2 256/128), all seeds at once",
                            MLPConfig, lambda dim, c, loss, task: MultitaskMLP(dim, c.arch, loss, task),
                            grad_fn=_mlp_fast_path))
    register(Learner("xgb", "XGBoost: one booster per task and seed (emotions multi-output, country softprob, age)",
                     xgb.XGBConfig, xgb.fit, xgb.load, uses=frozenset({"loss.age"})))
    from exvo.learn import burst2vec_learner as b2v
    from exvo.learn.burst2vec import Burst2VecConfig

    # its own optimisation settings and losses (the paper's); explicit shared options reach it by name
    register(Learner("burst2vec", b2v.HELP, Burst2VecConfig, b2v.fit, b2v.load, uses=frozenset({"epochs"})))
    from exvo.learn import wsum

    # takes the (n, L, F) block of a multi-layer feature set ("layers"); see docs/layers.md
    register(Learner("wsum", wsum.HELP, wsum.WSumConfig, wsum.fit, wsum.load, uses=wsum.USES))


EXVO_ONLY = {"burst2vec": "its adversarial country/age branches and task ids are ExVo-MTL's by design"}
"""Learners that learn ExVo-MTL only, and why (docs/api.md 'Tasks')."""


def check_task(learner: str, task) -> None:
    """Refuse an ExVo-only learner for another task, before anything is trained."""
    if learner in EXVO_ONLY and task.name != "exvo-mtl":
        raise ValueError(f"--learner {learner} learns the ExVo-MTL task only ({EXVO_ONLY[learner]}); task "
                         f"{task.name!r} can use: " + ", ".join(n for n in names() if n not in EXVO_ONLY))


def save_meta(folder: Path, learner: str, cfg) -> None:
    """``models/learner.json``: which registry entry made the models and with which config."""
    (folder / "learner.json").write_text(json.dumps({"learner": learner, "config": asdict(cfg)}, indent=1))


_register_builtins()
