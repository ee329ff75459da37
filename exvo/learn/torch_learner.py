"""Fit, predict, save and load any :class:`~exvo.learn.multitask.MultitaskModule` learner.

This is what :func:`exvo.learn.registry.module_learner` plugs into the registry: batches are
drawn from ``data.fit_rows`` (one shuffled order per seed), every epoch each seed is scored
on ``data.select_rows`` — the selection S_MTL (higher is better) or, with
``monitor="loss"``, minus the module's own loss on all selection rows at once (as the
baseline's Val loss) — and :func:`exvo.learn.framework.train_seeds` does early stopping and
best/last-epoch restore per seed.

Saved files (``models/``): ``stack.pt`` (every seed's parameters, ``SeedStack.state_dict``)
and ``module.json`` (input dim, the learner's config, the loss config, seeds).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from exvo.learn.framework import (SeedStack, fold_batches, predict as stack_predict, predict_each, shuffled_batches,
                                  train_seeds)
from exvo.learn.multitask import LossConfig, MultitaskModule, check_outputs, data_tensors
from exvo.learn.targets import selection_score
from exvo.runs.store import load_torch, save_torch  # a full disk is an OSError, not a torch RuntimeError


class TorchFitted:
    """Every seed's trained module; ``predict(X)`` → emotions, country probabilities, standardised age.
    Saved as ``stack.pt`` (every seed's weights) and ``META`` (what rebuilds the module)."""

    META = "module.json"

    def __init__(self, stack: SeedStack, meta: dict, best_epoch, history, info, vectorise: bool = True,
                 eval_batch: int = 4096):
        self.stack, self.meta = stack, meta
        self.seeds = list(stack.seeds)
        self.best_epoch, self.history, self.info = list(best_epoch), history, info
        self.vectorise, self.eval_batch = vectorise, eval_batch

    def outputs(self, data: dict[str, torch.Tensor], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = stack_predict(self.stack, {"x": data["x"]}, rows, self.eval_batch, self.vectorise)
        c = torch.softmax(torch.from_numpy(out["country"]), -1).numpy()
        return out["emotions"], c, out["age"]

    def predict(self, X: np.ndarray):
        return self.outputs({"x": torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))}, np.arange(len(X)))

    def save(self, folder: Path) -> None:
        save_torch(self.stack.state_dict(), Path(folder) / "stack.pt")
        (Path(folder) / self.META).write_text(json.dumps(self.meta, indent=1))


def fit_module(make: Callable[[int], MultitaskModule], data, cfg, vectorise: bool = True,
               grad_fn=None) -> TorchFitted:
    """Train one ``make(dim)`` per seed on ``data`` (a :class:`exvo.learn.registry.FitData`); with
    ``data.folds`` one per seed and fold, all at once (seed-major: model ``j`` is seed
    ``j // K`` on fold ``j % K``), each early-stopped on its own fold's rows."""
    dev = torch.device(data.device)
    t = data.targets
    D = data.tensors if hasattr(data, "tensors") else data_tensors(data.X, t, dev)
    dim = data.X.shape[1]
    folds = [(np.asarray(f), np.asarray(s)) for f, s in (data.folds or [(data.fit_rows, data.select_rows)])]
    K = len(folds)
    seeds = [s for s in data.seeds for _ in range(K)]
    for fit_rows, sel in folds:
        if fit_rows.size == 0 or sel.size == 0:
            raise ValueError(f"nothing to train on: {fit_rows.size} fit rows and {sel.size} selection rows")
    probe = make(dim)
    if not isinstance(probe, MultitaskModule):
        raise TypeError(f"a module learner must build a MultitaskModule, got {type(probe).__name__}")
    with torch.no_grad():
        rows2 = torch.as_tensor(folds[0][0][:2])
        check_outputs(probe.to(dev).outputs({k: v[rows2] for k, v in D.items()}), min(2, folds[0][0].size), t.task)
    del probe
    evaluate = _selection(data, D, folds, vectorise)
    what = "−loss" if data.selection.monitor == "loss" else "selection score"

    def progress(epoch: int, score: np.ndarray) -> None:
        data.echo(f"  epoch {epoch:2d}: {what} " + " ".join(f"{s:.3f}" for s in score))

    sampler = (shuffled_batches(D, folds[0][0], data.train.batch_size) if K == 1 else
               fold_batches(D, [folds[j % K][0] for j in range(len(seeds))], data.train.batch_size))
    fit = train_seeds(lambda: make(dim), sampler, evaluate, seeds, data.train, dev, progress, grad_fn=grad_fn)
    history = {"selection": data.selection.on, "monitor": data.selection.monitor,
               "selection_history": fit.history, "train_loss": fit.train_loss, "epochs_run": fit.epochs_run,
               "seconds_per_epoch": fit.seconds_per_epoch, "best_epoch": fit.best_epoch}
    meta = {"dim": int(dim), "config": asdict(cfg), "loss": asdict(data.loss), "seeds": seeds,
            "task": t.task.to_dict()}
    return TorchFitted(fit.stack, meta, fit.best_epoch, history, {"epochs_run": fit.epochs_run}, vectorise,
                       data.train.eval_batch)


def _selection(data, D: dict[str, torch.Tensor], folds: list[tuple[np.ndarray, np.ndarray]],
               vectorise: bool) -> Callable[[SeedStack], np.ndarray]:
    """``evaluate(stack) -> (n_models,)``: model ``j`` scored on fold ``j % K``'s selection rows
    by the selection S_MTL, or (``monitor="loss"``) minus its own loss on them."""
    t, K = data.targets, len(folds)
    dev = next(iter(D.values())).device

    def loss_of(stack: SeedStack, sel: np.ndarray) -> np.ndarray:
        from torch.func import functional_call

        def fn(p, b, batch):
            return functional_call(stack.base, (p, b), (batch,), {"train_loss": True})
        sel_t = {k: v[torch.as_tensor(sel, device=dev)] for k, v in D.items()}
        return -stack.run(fn, sel_t, vectorise, stacked_batch=False).detach().cpu().numpy()

    def evaluate(stack: SeedStack) -> np.ndarray:
        fold = np.arange(stack.n) % K
        out = np.empty(stack.n)
        if data.selection.monitor == "loss":
            for k, (_, sel) in enumerate(folds):
                out[fold == k] = loss_of(stack, sel)[fold == k]
            return out
        if K == 1:     # every model on the same rows: one shared batch
            o = stack_predict(stack, {"x": D["x"]}, folds[0][1], data.train.eval_batch, vectorise)
            each = [{k: v[j] for k, v in o.items()} for j in range(stack.n)]
        else:          # each model on its own fold's held-out rows only, in one stacked pass
            each = predict_each(stack, {"x": D["x"]}, [folds[f][1] for f in fold], data.train.eval_batch, vectorise)
        for j, o in enumerate(each):
            r = folds[fold[j]][1]
            out[j] = selection_score(t.emotions[r], o["emotions"], t.country[r], o["country"].argmax(1), t.age[r],
                                     o["age"] * t.age_std + t.age_mean, t.task)
        return out
    return evaluate


def load_stack(folder: Path, meta_name: str, make: Callable[[dict], torch.nn.Module], device: str,
               missing: str) -> tuple[SeedStack, dict]:
    """``(stack, meta)`` saved by :meth:`TorchFitted.save`: ``make(meta)`` builds one seed's module;
    ``missing`` says what to do when ``meta_name`` is absent."""
    meta_path = Path(folder) / meta_name
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder} has no {meta_name}; {missing}")
    meta = json.loads(meta_path.read_text())
    state = load_torch(Path(folder) / "stack.pt")       # weights only: no code runs from the file
    return SeedStack.from_state(lambda: make(meta), state, device), meta


def load_module(folder: Path, device: str, make: Callable[[int, dict, LossConfig, object], MultitaskModule],
                vectorise: bool = True) -> TorchFitted:
    """Rebuild a :func:`fit_module` run: ``make(dim, config dict, loss, task)`` builds one seed's module
    (``task`` from the saved meta; runs made before tasks existed: ExVo-MTL)."""
    from exvo.tasks import get_task

    def build(meta: dict) -> MultitaskModule:
        loss = LossConfig(**{k: (tuple(v) if k == "weights" else v) for k, v in meta["loss"].items()})
        return make(int(meta["dim"]), meta["config"], loss, get_task(meta.get("task")))

    stack, meta = load_stack(folder, TorchFitted.META, build, device,
                             "the run was made by an older exvo (before the learner framework). Re-run `exvo learn` "
                             "to rebuild it")
    return TorchFitted(stack, meta, [None] * len(stack.seeds), None, {}, vectorise)
