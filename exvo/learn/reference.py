"""The plain reference: one seed at a time, the same ``nn.Module`` + autograd + ``torch.optim.Adam``.

This is the official baseline's training loop with its flaws fixed (labels encoded once,
age loss (B,) vs (B,), seeded init and batch order, best epoch restored). It exists to
check :func:`exvo.learn.framework.train_seeds` on the MLP (same seeds → same weights and
scores within float tolerance) and as the "before" of ``benchmarks/bench_learn.py``. It
follows the framework's seed rules: weights drawn under ``torch.manual_seed(2k)``, batch
order from ``torch.Generator().manual_seed(2k + 1)``, one ``randperm`` per epoch. Do not
use it for real runs.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from exvo.config import TrainConfig
from exvo.learn.framework import init_seed, order_seed
from exvo.learn.mlp import MultitaskMLP
from exvo.learn.multitask import LossConfig, data_tensors
from exvo.learn.targets import Targets, selection_score


def make_plain(dim: int, arch: str, seed: int, loss_cfg: LossConfig | None = None) -> MultitaskMLP:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(seed))
        return MultitaskMLP(dim, arch, loss_cfg)


def train_plain(X: np.ndarray, train_rows, sel_rows, t: Targets, seed: int, arch: str, train: TrainConfig,
                loss_cfg: LossConfig | None = None, echo=None) -> tuple[MultitaskMLP, dict]:
    """One seed, batch by batch, early stopping on the selection score of ``sel_rows``.
    Returns the best-epoch model and ``{"best_epoch", "history", "seconds_per_epoch",
    "cpu_seconds_per_epoch"}``."""
    d = data_tensors(X, t)
    tr = torch.as_tensor(np.asarray(train_rows), dtype=torch.long)
    model = make_plain(X.shape[1], arch, seed, loss_cfg)
    opt = torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    g = torch.Generator().manual_seed(order_seed(seed))
    best, best_score, best_epoch, bad, hist, secs, cpu = None, -math.inf, 0, 0, [], [], []
    for epoch in range(train.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        model.train()
        order = tr[torch.randperm(len(tr), generator=g)]
        for k in range(0, len(order), train.batch_size):
            r = order[k:k + train.batch_size]
            loss = model({key: v[r] for key, v in d.items()}, train_loss=True)
            opt.zero_grad()
            loss.backward()
            opt.step()
        emo, pro, agez = predict_plain(model, X, sel_rows)
        score = selection_score(t.emotions[sel_rows], emo, t.country[sel_rows], pro.argmax(1), t.age[sel_rows],
                                agez * t.age_std + t.age_mean)
        hist.append(score)
        secs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if echo:
            echo(f"  seed {seed} epoch {epoch + 1}: selection score {score:.4f} ({secs[-1]:.1f} s)")
        if score > best_score:
            best_score, best_epoch, bad = score, epoch + 1, 0
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= train.patience:
                break
    model.load_state_dict(best)
    return model, {"best_epoch": best_epoch, "history": hist, "seconds_per_epoch": secs, "cpu_seconds_per_epoch": cpu}


@torch.no_grad()
def predict_plain(model: MultitaskMLP, X: np.ndarray, rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(emotions (n,10), country probabilities (n,4), standardised age (n,))``."""
    model.eval()
    out = model({"x": torch.from_numpy(X[np.asarray(rows)])})
    return out["emotions"].numpy(), torch.softmax(out["country"], -1).numpy(), out["age"].numpy()
