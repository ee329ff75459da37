"""Per-epoch selection cost of S seeds × K speaker folds: every model on every held-out row
(the plain reference: one shared batch, then each model keeps its fold's rows) against each
model on its own fold's rows (``exvo.learn.framework.predict_each``), beside the cost of one
training epoch of the same stack, on random data of the given size.

    python benchmarks/bench_fold_eval.py [--n-train 600 --dim 6373 --seeds 5 --folds 5 --repeats 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--dim", type=int, default=6373)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import torch

    from exvo.config import TrainConfig
    from exvo.learn.framework import SeedStack, fold_batches, predict, predict_each, train_seeds
    from exvo.learn.mlp import MultitaskMLP

    torch.set_num_threads(a.threads)
    g = np.random.default_rng(0)
    n, S, K = a.n_train, a.seeds * a.folds, a.folds
    X = torch.from_numpy(g.normal(size=(n, a.dim)).astype(np.float32))
    fold = np.arange(n) % K
    held = [np.flatnonzero(fold == j % K) for j in range(S)]
    stack = SeedStack.build(lambda: MultitaskMLP(a.dim), list(range(S)))
    data = {"x": X}

    def shared():       # the reference: all models on all held rows, keep each model's fold
        out = predict(stack, data, np.arange(n))
        return [{k: v[j][held[j]] for k, v in out.items()} for j in range(S)]

    def own():
        return predict_each(stack, data, held)

    for name, fn in (("shared", shared), ("own", own)):      # warm-up
        fn()
    times = {}
    for name, fn in (("shared", shared), ("own", own)):
        t0 = time.perf_counter()
        for _ in range(a.repeats):
            fn()
        times[name] = (time.perf_counter() - t0) / a.repeats
    a_, b_ = shared(), own()
    diff = max(float(np.abs(x[k] - y[k]).max()) for x, y in zip(a_, b_) for k in x)

    # one training epoch of the same stack (its fold rows, batch 8), for scale; the batch format of
    # exvo.learn.multitask.data_tensors
    y = {"x": X, "emotions": torch.rand(n, 10), "country": torch.randint(0, 4, (n,)), "age": torch.randn(n)}
    sampler = fold_batches(y, [np.flatnonzero(fold != j % K) for j in range(S)], 8)
    t0 = time.perf_counter()
    train_seeds(lambda: MultitaskMLP(a.dim), sampler, lambda st: np.zeros(st.n), list(range(S)),
                TrainConfig(epochs=1, patience=2))
    epoch = time.perf_counter() - t0
    print(f"# {S} models ({a.seeds} seeds × {K} folds), {n} Train rows × {a.dim} dims, {a.threads} threads; "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print(f"selection pass: shared {times['shared']:.3f} s, own rows {times['own']:.3f} s "
          f"({times['shared'] / times['own']:.2f}× faster); max abs diff {diff:.1e}")
    print(f"one training epoch of the stack: {epoch:.2f} s; the selection pass is "
          f"{times['shared'] / epoch:.0%} (shared) vs {times['own'] / epoch:.0%} (own rows) of it")


if __name__ == "__main__":
    sys.exit(main())
