"""Benchmark: the vectorised-seed multitask MLP vs the plain one-seed-at-a-time loop.

Random ExVo-shaped features (default 20,000 Train × 2,048 and 19,000 Val, float32) whose
labels carry a weak linear signal, Sys-2, 5 seeds, batch 8, a fixed number of epochs
(default 2; patience = epochs so that neither stops early). Both implementations start from
the same initial weights and batch orders (same seeds), so their Val scores must agree;
the script fails (exit 1) if any seed's S_MTL differs by more than ``--tol``.

    .venv/bin/python benchmarks/bench_learn.py                  # full size (a few minutes)
    .venv/bin/python benchmarks/bench_learn.py --train 3000 --val 3000   # quick check

Timings are per epoch (train steps + the Val pass used for early stopping), summed over
seeds for the plain loop. Both run in this process with the same torch thread setting
(default 1). The speed-up is reported in process CPU time — on a shared machine, wall time
mostly measures the other jobs — and in wall time.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import warnings

import numpy as np
import torch

from exvo.learn import mlp, reference
from exvo.learn.mlp import MLPConfig
from exvo.metrics import score_all


def make_data(n_train: int, n_val: int, dim: int, seed: int = 0):
    """Standardised random features and labels with a weak linear signal in them."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val
    X = rng.standard_normal((n, dim), dtype=np.float32)
    z = X[:, :64] @ rng.standard_normal((64, 8)).astype(np.float32) / 8.0          # (n, 8) latent
    emo = 1 / (1 + np.exp(-(z @ rng.standard_normal((8, 10)) * 0.5 + rng.standard_normal((n, 10)) * 1.5)))
    country = np.argmax(z[:, :4] * 0.6 + rng.gumbel(size=(n, 4)), axis=1)
    age = np.clip(30 + 4 * z[:, 4] + rng.normal(0, 8, n), 15, 80)
    tr, va = np.arange(n_train), np.arange(n_train, n)
    mean, std = age[tr].mean(), age[tr].std()
    return X, tr, va, emo.astype(np.float32), country.astype(np.int64), ((age - mean) / std).astype(np.float32), mean, std, age


def val_scores(emo, proba, agez, d):
    X, tr, va, E, C, A, am, asd, age = d
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return score_all(E[va], emo, C[va], proba.argmax(1), age[va], agez * asd + am)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--val", type=int, default=19000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--arch", default="sys2")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--tol", type=float, default=0.005, help="max |S_MTL difference| per seed")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    d = make_data(a.train, a.val, a.dim)
    X, tr, va, E, C, A, am, asd, _ = d
    seeds = list(range(a.seeds))
    cfg = MLPConfig(arch=a.arch, epochs=a.epochs, patience=a.epochs)
    print(f"data: Train {a.train} x {a.dim}, Val {a.val}; {a.arch}, {a.seeds} seeds, batch {cfg.batch_size}, "
          f"{a.epochs} epochs; torch {torch.__version__}, {a.threads} thread(s)")

    t0 = time.perf_counter()
    fit = mlp.train_mlp(X, tr, va, E, C, A, am, asd, seeds, cfg)
    ours_total = time.perf_counter() - t0
    emo, pro, agez = mlp.predict(fit.stack, torch.from_numpy(X), va)
    ours = [val_scores(emo[j], pro[j], agez[j], d) for j in range(len(seeds))]
    ours_wall, ours_cpu = float(np.mean(fit.seconds_per_epoch)), float(np.mean(fit.cpu_seconds_per_epoch))
    print(f"ours  (vectorised seeds):   {ours_cpu:7.2f} CPU-s/epoch, {ours_wall:7.2f} wall-s/epoch for all "
          f"{len(seeds)} seeds (total {ours_total:.1f} s wall)")

    ref, ref_wall, ref_cpu = [], np.zeros(a.epochs), np.zeros(a.epochs)
    t0 = time.perf_counter()
    for s in seeds:
        model, info = reference.train_plain(X, tr, va, E, C, A, am, asd, s, cfg)
        ref_wall += info["seconds_per_epoch"]
        ref_cpu += info["cpu_seconds_per_epoch"]
        ref.append(val_scores(*reference.predict_plain(model, X, va), d))
        print(f"  plain seed {s}: {np.mean(info['cpu_seconds_per_epoch']):.2f} CPU-s/epoch, "
              f"{np.mean(info['seconds_per_epoch']):.2f} wall-s/epoch")
    ref_total = time.perf_counter() - t0
    rw, rc = float(ref_wall.mean()), float(ref_cpu.mean())
    print(f"plain (one seed at a time): {rc:7.2f} CPU-s/epoch, {rw:7.2f} wall-s/epoch for all {len(seeds)} seeds "
          f"(total {ref_total:.1f} s wall)")
    # CPU time is the fair measure on a shared machine: wall time depends on what else runs
    print(f"speed-up per epoch: {rc / ours_cpu:.1f}x in CPU time, {rw / ours_wall:.1f}x in wall time")
    n_steps = math.ceil(len(tr) / cfg.batch_size)
    print(f"  (per batch-8 step incl. the Val pass: ours {1e3 * ours_cpu / n_steps:.2f} ms for {len(seeds)} seeds, "
          f"plain {1e3 * rc / n_steps / len(seeds):.2f} ms per seed)")

    print("\nVal scores (challenge CCC)      CCC     UAR     MAE   S_MTL")
    for name, sc in (("ours", ours), ("plain", ref)):
        m = {k: (np.mean([s[k] for s in sc]), np.std([s[k] for s in sc])) for k in ("ccc", "uar", "mae", "s_mtl")}
        print(f"  {name:6s} mean ± std over seeds  " + "  ".join(f"{m[k][0]:.4f}±{m[k][1]:.4f}" for k in m))
    diff = max(abs(o["s_mtl"] - r["s_mtl"]) for o, r in zip(ours, ref))
    print(f"max per-seed |S_MTL(ours) - S_MTL(plain)| = {diff:.2e} (tolerance {a.tol})")
    if diff > a.tol:
        print("FAIL: scores differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
