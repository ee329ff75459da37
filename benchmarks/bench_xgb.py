"""Benchmark: the XGBoost learner on ComParE-sized inputs (6,373 dims) — threads, max_bin, column sampling.

Random features with a weak linear signal in the labels (as ``bench_learn.py``), ``--train``
Train rows (the issue's case: 480 clips) of which ``--holdout`` are held out for early
stopping, ``--val`` Val rows. Each setting fits the three boosters (emotions, country, age)
for ``--seeds`` seeds through :func:`exvo.learn.xgb.train_xgb` and is scored on Val.

    .venv/bin/python benchmarks/bench_xgb.py                  # ~ a few minutes on 2 cores
    .venv/bin/python benchmarks/bench_xgb.py --train 20000 --holdout 4000 --val 1000 --seeds 1 \
        --only "default (max_bin 64, colsample 0.8), 2 threads|colsample 0.2, 2 threads"   # ExVo size
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np

from dataclasses import replace

from exvo.learn.xgb import TASKS, XGBConfig, predict_xgb, train_xgb
from exvo.metrics import score_all

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_learn import make_data  # noqa: E402

SETTINGS = {
    "old default (1 thread, max_bin 256, colsample 0.8)": dict(n_jobs=1, max_bin=256, colsample_bytree=0.8),
    "2 threads": dict(n_jobs=2, max_bin=256, colsample_bytree=0.8),
    "max_bin 64": dict(n_jobs=1, max_bin=64, colsample_bytree=0.8),
    "colsample 0.3": dict(n_jobs=1, max_bin=256, colsample_bytree=0.3),
    "max_bin 64 + colsample 0.3": dict(n_jobs=1, max_bin=64, colsample_bytree=0.3),
    "max_bin 64 + colsample 0.3, 2 threads": dict(n_jobs=2, max_bin=64, colsample_bytree=0.3),
    # ExVo size (issue 28: --train 20000): the current default against column subsampling and fewer rounds
    "default (max_bin 64, colsample 0.8), 2 threads": dict(n_jobs=2),
    "colsample 0.2, 2 threads": dict(n_jobs=2, colsample_bytree=0.2),
    "colsample 0.2 + max_bin 32, 2 threads": dict(n_jobs=2, colsample_bytree=0.2, max_bin=32),
    "colsample 0.2 + lr 0.3, <= 50 trees, 2 threads": dict(n_jobs=2, colsample_bytree=0.2, learning_rate=0.3,
                                                           n_estimators=50, early_stopping_rounds=10),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=480)
    ap.add_argument("--holdout", type=int, default=80)
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=6373)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--only", default=None, help="setting names to run, separated by |")
    ap.add_argument("--rounds", type=int, default=None,
                    help="fixed trees per booster, no early stopping: the cost per round at sizes where a whole fit "
                         "takes too long (wall and CPU per round are printed)")
    a = ap.parse_args(argv)
    X, t, tr, va = make_data(a.train, a.val, a.dim)
    fit_rows, stop_rows = tr[a.holdout:], tr[:a.holdout]
    print(f"data: Train {len(fit_rows)} (+{len(stop_rows)} early stopping) x {a.dim}, Val {a.val}; {a.seeds} seeds")
    print("| setting | wall s (all seeds, 3 boosters each) | CPU s (all threads) | Val S_MTL mean ± std |")
    print("|---|---|---|---|")
    for name, kw in SETTINGS.items():
        if a.only and name not in a.only.split("|"):
            continue
        cfg = XGBConfig(**kw)
        if a.rounds:
            cfg = replace(cfg, rounds={t: a.rounds for t in TASKS})
        t0, c0 = time.perf_counter(), time.process_time()
        models = train_xgb(X, fit_rows, stop_rows, t.emotions, t.country, t.age_z, list(range(a.seeds)), cfg)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        emo, pro, agez = predict_xgb(models, X[va])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            s = [score_all(t.emotions[va], emo[j], t.country[va], pro[j].argmax(1), t.age[va],
                           agez[j] * t.age_std + t.age_mean)["s_mtl"] for j in range(a.seeds)]
        per = f" ({wall / a.rounds:.1f} wall s, {cpu / a.rounds:.1f} CPU s per round)" if a.rounds else ""
        print(f"| {name} | {wall:.1f}{per} | {cpu:.1f} | {np.mean(s):.4f} ± {np.std(s):.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
