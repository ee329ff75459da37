"""The plain reference: one seed at a time, ``nn.Module`` + autograd + ``torch.optim.Adam``.

This is the official baseline's training loop with its flaws fixed (labels encoded once,
age loss (B,) vs (B,), seeded init and batch order, best epoch restored). It exists to
check :mod:`exvo.learn.mlp` (same seeds → same weights and scores within float tolerance)
and as the "before" of ``benchmarks/bench_learn.py``. Do not use it for real runs.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from exvo.learn.mlp import ARCHS, HEADS, LN_EPS, MLPConfig, init_seed
from exvo.learn.targets import selection_score


class MultiTaskMLP(nn.Module):
    """The baseline network as an ``nn.Module``; ``forward`` → (emotions, country logits, age (B,))."""

    def __init__(self, dim: int, arch: str):
        super().__init__()
        h1, h2, hh = ARCHS[arch]
        self.trunk = nn.Sequential(nn.Linear(dim, h1), nn.LayerNorm(h1, eps=LN_EPS), nn.LeakyReLU(),
                                   nn.Linear(h1, h2), nn.LayerNorm(h2, eps=LN_EPS), nn.LeakyReLU())
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(h2, hh), nn.LeakyReLU(), nn.Linear(hh, k))
                                   for _, k in HEADS)
        self.s = nn.Parameter(torch.zeros(3))

    def load_seed(self, p: dict[str, torch.Tensor]) -> "MultiTaskMLP":
        """Copy weights in :func:`exvo.learn.mlp.init_seed` layout ((in, out) weights)."""
        hh = p["hw"].shape[1] // 3
        with torch.no_grad():
            t = self.trunk
            t[0].weight.copy_(p["w1"].T); t[0].bias.copy_(p["b1"]); t[1].weight.copy_(p["g1"]); t[1].bias.copy_(p["e1"])
            t[3].weight.copy_(p["w2"].T); t[3].bias.copy_(p["b2"]); t[4].weight.copy_(p["g2"]); t[4].bias.copy_(p["e2"])
            for j, (name, _) in enumerate(HEADS):
                h = self.heads[j]
                h[0].weight.copy_(p["hw"][:, j * hh:(j + 1) * hh].T); h[0].bias.copy_(p["hb"][j * hh:(j + 1) * hh])
                h[2].weight.copy_(p[f"{name}_w"].T); h[2].bias.copy_(p[f"{name}_b"])
            self.s.copy_(p["s"])
        return self

    def forward(self, x):
        z = self.trunk(x)
        return torch.sigmoid(self.heads[0](z)), self.heads[1](z), self.heads[2](z)[:, 0]


def train_plain(X: np.ndarray, train_rows, val_rows, emotions, country, age_z, age_mean, age_std,
                seed: int, cfg: MLPConfig, echo=None) -> tuple[MultiTaskMLP, dict]:
    """One seed, batch by batch. Returns the best-epoch model and ``{"best_epoch", "history",
    "seconds_per_epoch", "cpu_seconds_per_epoch"}``."""
    Xt = torch.from_numpy(X)
    E = torch.as_tensor(np.nan_to_num(emotions), dtype=torch.float32)
    C = torch.as_tensor(np.where(country < 0, 0, country), dtype=torch.long)
    A = torch.as_tensor(np.nan_to_num(age_z), dtype=torch.float32)
    tr = torch.as_tensor(train_rows, dtype=torch.long)
    model = MultiTaskMLP(X.shape[1], cfg.arch).load_seed(init_seed(X.shape[1], cfg.arch, seed))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(2 * seed + 1)
    val_e, val_c, val_a = emotions[val_rows], country[val_rows], age_z[val_rows] * age_std + age_mean
    best, best_score, best_epoch, bad, hist, secs, cpu = None, -math.inf, 0, 0, [], [], []
    for epoch in range(cfg.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        order = tr[torch.randperm(len(tr), generator=g)]
        for k in range(0, len(order), cfg.batch_size):
            r = order[k:k + cfg.batch_size]
            emo, logits, age = model(Xt[r])
            L = torch.stack([((emo - E[r]) ** 2).mean(0).sum(), F.cross_entropy(logits, C[r]),
                             ((age - A[r]) ** 2).mean()])
            if cfg.loss == "uncertainty":
                loss = (0.5 * torch.exp(-model.s) * L + 0.5 * model.s).sum()
            else:
                loss = L.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            outs = [model(Xt[torch.as_tensor(val_rows[k:k + 4096])]) for k in range(0, len(val_rows), 4096)]
        emo = torch.cat([o[0] for o in outs]).numpy()
        cou = torch.cat([o[1] for o in outs]).argmax(1).numpy()
        age = torch.cat([o[2] for o in outs]).numpy() * age_std + age_mean
        score = selection_score(val_e, emo, val_c, cou, val_a, age)
        hist.append(score)
        secs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if echo:
            echo(f"  seed {seed} epoch {epoch + 1}: Val score {score:.4f} ({secs[-1]:.1f} s)")
        if score > best_score:
            best_score, best_epoch, bad = score, epoch + 1, 0
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    model.load_state_dict(best)
    return model, {"best_epoch": best_epoch, "history": hist, "seconds_per_epoch": secs, "cpu_seconds_per_epoch": cpu}


@torch.no_grad()
def predict_plain(model: MultiTaskMLP, X: np.ndarray, rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(emotions (n,10), country probabilities (n,4), standardised age (n,))``."""
    e, c, a = model(torch.from_numpy(X[np.asarray(rows)]))
    return e.numpy(), torch.softmax(c, -1).numpy(), a.numpy()
