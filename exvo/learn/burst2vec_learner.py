"""``exvo learn --learner burst2vec``: the registry entry of :mod:`exvo.learn.burst2vec`.

Burst2Vec brings its own optimisation settings and losses (the paper's: batch 32, ≤ 100
epochs, 1 − CCC and MAE), so it takes no shared preset values; ``exvo learn`` passes the
shared options a user sets explicitly (``--epochs``, ``--patience``, ``--batch-size``, ``--lr``,
``--emotion-loss``, ``--age-loss``) and ``--alpha1``/``--alpha2``/``--oversample`` into its
config, any other field with ``--opt KEY=VALUE``. Epochs are chosen on the run's selection
rows (the speaker-disjoint Train hold-out by default) by the selection score.

Saved files (``models/``): ``stack.pt`` (every seed's weights) and ``burst2vec.json`` (input
dim, config, seeds, the Train age range of the [0, 1] scale, the Train age mean/std).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from exvo.config import from_dict
from exvo.learn.burst2vec import AgeScale, Burst2Vec, Burst2VecConfig, predict_burst2vec, train_burst2vec
from exvo.learn.framework import SeedStack
from exvo.learn.torch_learner import TorchFitted, load_stack


class Burst2VecFitted(TorchFitted):
    """Every seed's Burst2Vec; saved and loaded like any module learner, predicting through its
    3-pass heads (age from the classes' expectation, rescaled to the learner's standardised age)."""

    META = "burst2vec.json"

    def __init__(self, stack: SeedStack, meta: dict, best_epoch, history, cfg: Burst2VecConfig):
        super().__init__(stack, meta, best_epoch, history, {"epochs_run": (history or {}).get("epochs_run")})
        self.cfg = cfg
        self.scale = AgeScale(meta["age_range"][0], meta["age_range"][1])

    def predict(self, X: np.ndarray):
        Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(self.stack.device)
        e, p, years = predict_burst2vec(self.stack, Xt, np.arange(len(X)), self.scale, self.cfg.train.eval_batch,
                                        self.cfg.train.vectorise)
        return e, p, ((years - self.meta["age_mean"]) / self.meta["age_std"]).astype(np.float32)


def _config(d: dict) -> Burst2VecConfig:
    return from_dict(Burst2VecConfig, d)


def fit(data, cfg: Burst2VecConfig) -> Burst2VecFitted:
    """The registry's ``fit(FitData, cfg)``."""
    if data.selection.monitor != "score":
        raise ValueError(f"burst2vec chooses its epochs by the selection score, not by {data.selection.monitor!r}; "
                         "use a preset that monitors the score (default) or pass --stop-on without --preset paper/baseline")
    t = data.targets
    fitted, scale = train_burst2vec(data.X, np.asarray(data.fit_rows), np.asarray(data.select_rows), t.emotions,
                                    t.country, t.age, data.seeds, cfg, data.device, data.echo)
    history = {"selection": data.selection.on, "monitor": "score", "selection_history": fitted.history,
               "train_loss": fitted.train_loss, "epochs_run": fitted.epochs_run,
               "seconds_per_epoch": fitted.seconds_per_epoch, "best_epoch": fitted.best_epoch}
    meta = {"dim": int(data.X.shape[1]), "config": asdict(cfg), "seeds": list(data.seeds),
            "age_range": [scale.lo, scale.hi], "age_mean": float(t.age_mean), "age_std": float(t.age_std)}
    return Burst2VecFitted(fitted.stack, meta, fitted.best_epoch, history, cfg)


def load(folder: Path, device: str) -> Burst2VecFitted:
    """The registry's ``load(folder, device)`` (for ``exvo predict``)."""
    stack, meta = load_stack(folder, Burst2VecFitted.META, lambda m: Burst2Vec(int(m["dim"]), _config(m["config"])),
                             device, "is this a burst2vec run's models/ folder?")
    return Burst2VecFitted(stack, meta, [None] * len(stack.seeds), None, _config(meta["config"]))


HELP = ("Burst2Vec (Anuchitanukul & Specia 2022): shared + task-specific extractors, 3-pass output loss, reversed task "
        "discriminator (--alpha1) and task-specific adversaries (--alpha2), per-task batches, --oversample")
