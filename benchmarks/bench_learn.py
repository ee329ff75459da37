"""Benchmark: stage-2 MLP training — the framework vs the plain one-seed batch-8 loop, at equal Val score.

Random ExVo-shaped features whose labels carry a weak linear signal; Sys-2; ``--seeds``
seeds; every variant trains to early stopping (patience 5, ≤ 20 epochs at batch 8) on the
same held-out slice of Train (``--holdout`` rows, never Val) and is scored on Val, so the
Val scores are honest and comparable. Rows, all measured in this one process with the same
torch thread count:

* ``plain``: :func:`exvo.learn.reference.train_plain`, one seed after the other, batch 8
  (the baseline's loop made correct) — the reference every ratio is taken against;
* ``framework b8``: :func:`exvo.learn.framework.train_seeds` via the registry's MLP, all
  seeds at once (``vmap`` over ``functional_call``, autograd, public Adam), batch 8 — same
  init and batch order as ``plain``, so the per-seed scores must agree (``--tol``);
* ``framework b256 (fast)``: the large-batch schedule of ``--preset fast`` (batch 256, lr
  8e-3, 2 warm-up epochs, cosine decay over ≤ 30 epochs, patience 6);
* ``+ fast_path``: the same with ``--opt fast_path=true`` (:mod:`exvo.learn.mlp_fast`: the
  step's gradient from hand-derived batched GEMMs with public ops; autograd's gradient to
  float rounding);
* ``hand-written b8`` (only with ``--handwritten FILE``): the deleted hand-written
  forward/backward MLP (``git show a0ab256:exvo/learn/mlp.py > FILE``), for the record.

    .venv/bin/python benchmarks/bench_learn.py --handwritten /tmp/old_mlp.py   # default size, ~10 min
    .venv/bin/python benchmarks/bench_learn.py --train 3000 --val 2000 --dim 512   # quick check

Wall time is the whole fit (all epochs, all seeds, incl. the selection passes). On a shared
machine wall time is noisy: read the ratios, which compare rows of the same run.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import warnings

import numpy as np
import torch

from exvo.config import SelectionConfig, TrainConfig
from exvo.learn import reference
from exvo.learn.mlp import MLPConfig
from exvo.learn.multitask import LossConfig
from exvo.learn.presets import PRESETS
from exvo.learn.registry import FitData, get
from exvo.learn.targets import Targets
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
    tr = np.arange(n_train)
    t = Targets(emo.astype(np.float32), country.astype(np.int64), age, float(age[tr].mean()), float(age[tr].std()))
    return X, t, tr, np.arange(n_train, n)


def val_scores(out, t: Targets, va) -> list[dict]:
    emo, pro, agez = out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return [score_all(t.emotions[va], emo[j], t.country[va], pro[j].argmax(1), t.age[va],
                          agez[j] * t.age_std + t.age_mean) for j in range(len(emo))]


def summary(scores: list[dict]) -> str:
    s = [x["s_mtl"] for x in scores]
    return f"{np.mean(s):.4f} ± {np.std(s):.4f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=8000)
    ap.add_argument("--holdout", type=int, default=1000, help="Train rows held out for early stopping")
    ap.add_argument("--val", type=int, default=4000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--arch", default="sys2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tol", type=float, default=1e-4,
                    help="max per-seed |epoch-1 selection score (framework b8) − (plain)|: same init and batches")
    ap.add_argument("--handwritten", default=None, help="file of the old hand-written mlp.py (optional row)")
    ap.add_argument("--skip-plain", action="store_true")
    ap.add_argument("--variant", action="append", default=[], metavar="BATCH,LR,EPOCHS,PATIENCE,WARMUP",
                    help="extra large-batch schedule rows to try, e.g. 256,0.016,30,6,2 (repeatable)")
    ap.add_argument("--skip-b8", action="store_true", help="skip the framework batch-8 row")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    X, t, tr, va = make_data(a.train, a.val, a.dim)
    fit_rows, sel_rows = tr[a.holdout:], tr[:a.holdout]
    seeds = list(range(a.seeds))
    b8 = TrainConfig(epochs=20, patience=5, batch_size=8)
    fp = PRESETS["fast"]
    fast = TrainConfig(epochs=fp["epochs"], patience=fp["patience"], batch_size=fp["batch_size"], lr=fp["lr"],
                       warmup_epochs=fp["warmup_epochs"], decay=fp["decay"])
    print(f"data: Train {len(fit_rows)} (+{len(sel_rows)} held out for early stopping) x {a.dim}, Val {a.val}; "
          f"{a.arch}, {a.seeds} seeds; torch {torch.__version__}, {a.threads} thread(s)")
    rows: dict[str, tuple[float, list[dict], object]] = {}
    first: dict[int, np.ndarray] = {}        # epoch-1 selection scores per seed (framework rows)
    plain_first = []

    def framework(train: TrainConfig, fast_path: bool = False):
        data = FitData(X, t, fit_rows, sel_rows, seeds, train, LossConfig(), SelectionConfig(), echo=lambda m: None)
        t0 = time.perf_counter()
        fit = get("mlp").fit(data, MLPConfig(arch=a.arch, fast_path=fast_path))
        first[len(first)] = np.array(fit.history["selection_history"][0])
        return time.perf_counter() - t0, val_scores(fit.predict(X[va]), t, va), fit.best_epoch

    if not a.skip_plain:
        t0 = time.perf_counter()
        outs, epochs = [], []
        for s in seeds:
            model, info = reference.train_plain(X, fit_rows, sel_rows, t, s, a.arch, b8)
            outs.append(reference.predict_plain(model, X, va))
            epochs.append(info["best_epoch"])
            plain_first.append(info["history"][0])
        wall = time.perf_counter() - t0
        rows["plain b8 (one seed at a time)"] = (wall, val_scores(tuple(np.stack(o) for o in zip(*outs)), t, va), epochs)
        print("plain done", round(wall, 1), flush=True)
    if not a.skip_b8:
        rows["framework b8 (seeds vmapped)"] = framework(b8)
        print("framework b8 done", round(rows["framework b8 (seeds vmapped)"][0], 1), flush=True)
    if not a.skip_b8:
        rows["framework b8 + fast_path"] = framework(b8, fast_path=True)
        print("framework b8 fast path done", round(rows["framework b8 + fast_path"][0], 1), flush=True)
    rows["framework b256 (--preset fast)"] = framework(fast)
    rows["framework b256 (--preset fast) + fast_path"] = framework(fast, fast_path=True)
    for v in a.variant:
        bs, lr, ep, pat, wu = v.split(",")
        rows[f"framework b{bs} lr {lr}, ≤{ep} ep, patience {pat}, warm-up {wu}"] = framework(TrainConfig(
            epochs=int(ep), patience=int(pat), batch_size=int(bs), lr=float(lr), warmup_epochs=float(wu), decay="cosine"))
    if a.handwritten:
        spec = importlib.util.spec_from_file_location("handwritten_mlp", a.handwritten)
        hw = importlib.util.module_from_spec(spec)
        sys.modules["handwritten_mlp"] = hw
        spec.loader.exec_module(hw)
        t0 = time.perf_counter()
        fit = hw.train_mlp(X, fit_rows, sel_rows, t.emotions, t.country, t.age_z, t.age_mean, t.age_std, seeds,
                           hw.MLPConfig(arch=a.arch, epochs=20, patience=5), device="cpu")
        wall = time.perf_counter() - t0
        rows["hand-written b8 (deleted)"] = (wall, val_scores(hw.predict(fit.stack, torch.from_numpy(X), va), t, va),
                                             fit.best_epoch)

    ref = rows.get("plain b8 (one seed at a time)")
    print(f"\n| variant | wall s (fit, all {a.seeds} seeds) | speed-up vs plain | best epochs | Val S_MTL mean ± std over seeds |")
    print("|---|---|---|---|---|")
    for name, (wall, sc, ep) in rows.items():
        ratio = f"{ref[0] / wall:.1f}×" if ref else "-"
        print(f"| {name} | {wall:.1f} | {ratio} | {ep} | {summary(sc)} |")
    if ref:
        # same init and batch order: after one epoch the two agree to float rounding; over more
        # epochs rounding differences (batched vs single GEMMs) grow, as between any two runs
        # whose weights differ by one ulp, so the final scores are compared as distributions
        diff = float(np.abs(first[0] - np.array(plain_first)).max()) if not a.skip_b8 else 0.0
        if not a.skip_b8:
            print(f"\nmax per-seed |epoch-1 selection score (framework b8) − (plain)| = {diff:.2e} (tolerance {a.tol})")
        sd = np.std([x["s_mtl"] for x in ref[1]])
        for name in [k for k in rows if k.startswith("framework")]:
            gap = np.mean([x["s_mtl"] for x in rows[name][1]]) - np.mean([x["s_mtl"] for x in ref[1]])
            print(f"{name} − plain b8: mean Val S_MTL {gap:+.4f} (plain seed-std {sd:.4f}: "
                  f"{'reaches the batch-8 score within one seed-std' if gap >= -sd else 'FALLS SHORT by more than one seed-std'})")
        if diff > a.tol:
            print("FAIL: framework and plain differ after one epoch from the same start", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
