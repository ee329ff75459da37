"""Benchmark: the vectorised layer sweep against a loop of one learn run per layer (issue 25).

A synthetic ExVo-layout corpus (``--clips`` clips, 10 per speaker; Train ½, Val ¼, Test ¼)
whose labels are known functions of a latent ``z``, and a multi-layer cache ``(n, L, F)`` in
which every layer carries ``z`` with a strength that rises and falls with depth (as SSL
layers do) plus noise of its own scale. Then, in one process and at the same thread count:

1. ``exvo layers`` (:func:`exvo.learn.layers.sweep`): every layer × seed in one stack, then the
   weighted sum and the best-k concatenation — its probe step is timed on its own;
2. then the loop: ``exvo learn --features x@l --learner mlp`` once per layer, same settings;
3. the same scores: every layer's per-seed Val CCC / UAR / MAE / S_MTL of (1) against (2) and
   the best epochs, after ``--check-epochs`` epochs (the script fails above ``--tol``) and
   after ``--epochs`` (where float rounding of batched GEMMs has been amplified by training, as
   between any two runs 1 ulp apart: compared in seed-stds);
4. ``wsum`` shared vs per task, on this cache and on one whose tasks peak at different layers
   (emotions and country at one depth, age at another): Val S_MTL, subtask scores, time;
5. the memory of an ``(n, L, F)`` float32 block, and this process's peak RSS.

    .venv/bin/python benchmarks/bench_layers.py                       # default size (~10 min on 2 busy cores)
    .venv/bin/python benchmarks/bench_layers.py --clips 800 --layers 5 --dim 32 --epochs 3   # quick check
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np

from exvo.config import build
from exvo.corpus import Corpus
from exvo.extract.cache import cache_path
from exvo.extract.cache_writer import CacheWriter
from exvo.learn.api import learn
from exvo.learn.config import LearnConfig
from exvo.learn.layers import LayersConfig, sweep
from exvo.metrics import EMOTIONS

ZDIM = 8


def make_world(root: Path, clips: int, L: int, F: int, seed: int = 0) -> tuple[Corpus, np.ndarray]:
    """The corpus table and its latent ``z`` ``(n, ZDIM)``."""
    rng = np.random.default_rng(seed)
    n_spk = clips // 10
    n = n_spk * 10
    z = rng.normal(size=(n, ZDIM))
    spk_off = rng.normal(size=(n_spk, ZDIM)) * 0.5                   # speakers differ: the bootstrap has work
    z += np.repeat(spk_off, 10, axis=0)
    emo = 1 / (1 + np.exp(-(z @ rng.normal(size=(ZDIM, 10)) / np.sqrt(ZDIM) + rng.normal(size=(n, 10)))))
    country = np.repeat(np.argmax(spk_off @ rng.normal(size=(ZDIM, 4)), 1), 10)
    age = np.clip(35 + 8 * z[:, 0] + rng.normal(0, 4, n), 18, 80).round(1)
    split = np.repeat(np.where(np.arange(n_spk) < n_spk // 2, "Train",
                               np.where(np.arange(n_spk) < 3 * n_spk // 4, "Val", "Test")), 10)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "data_info.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["File_ID", "Split", "Subject_ID", "Country", "Age", "Country_string", *EMOTIONS])
        for k in range(n):
            lab = [country[k], age[k], "x", *emo[k].round(4)] if split[k] != "Test" else [""] * 13
            w.writerow([f"[{k:05d}]", split[k], f"Speaker_{k // 10}", *lab])
    return Corpus.from_dir(root), z


def write_layers(cache: Path, corpus: Corpus, name: str, z: np.ndarray, L: int, F: int, profile: str,
                 seed: int = 1) -> None:
    """``(n, L, F)``: layer l = strength_l · z P_l + noise·(1 + l/L); ``bump``: one peak at 60 % depth;
    ``tasks``: z[:, 1:] (emotions, country) at 30 % depth, z[:, 0] (age) at 80 %."""
    rng = np.random.default_rng(seed)
    n = len(z)
    with CacheWriter(cache_path(cache, corpus.name, name), name, {"extractor": name, "n_layers": L, "p": profile}) as w:
        X = np.empty((n, L, F), np.float32)
        for l in range(L):
            if profile == "bump":
                src, s = z, np.exp(-((l - 0.6 * (L - 1)) / (0.25 * L)) ** 2)
                part = s * src @ rng.normal(size=(ZDIM, F)) / np.sqrt(ZDIM)
            else:
                a = np.exp(-((l - 0.3 * (L - 1)) / (0.15 * L)) ** 2)
                b = np.exp(-((l - 0.8 * (L - 1)) / (0.15 * L)) ** 2)
                part = (a * z[:, 1:] @ rng.normal(size=(ZDIM - 1, F)) / np.sqrt(ZDIM)
                        + 2 * b * z[:, :1] @ rng.normal(size=(1, F)))
            X[:, l] = part + rng.normal(size=(n, F)) * (1 + l / L)
        for i, x in zip(corpus.ids, X):
            w.add(i, x)
        w.finalize(order=corpus.ids, files=[])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=3000)
    ap.add_argument("--layers", type=int, default=13)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)     # 2 threads on 2 busy cores ran 4× slower (measured)
    ap.add_argument("--root", default="/tmp/bench_layers")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--check-epochs", type=int, default=2, help="epochs of the exact-equality check")
    ap.add_argument("--skip-wsum", action="store_true")
    ap.add_argument("--stop-on", default="holdout", help="the selection protocol of every run (holdout | folds | val)")
    a = ap.parse_args()
    import torch

    root = Path(a.root)
    shutil.rmtree(root, ignore_errors=True)
    corpus, z = make_world(root / "corp", a.clips, a.layers, a.dim)
    for prof in ("bump", "tasks"):
        write_layers(root / "cache", corpus, prof, z, a.layers, a.dim, prof)
    quiet = lambda m: None  # noqa: E731
    common = dict(seeds=a.seeds, epochs=a.epochs, patience=a.epochs, batch_size=a.batch_size, threads=a.threads,
                  device="cpu", stop_on=a.stop_on)
    print(f"# {len(corpus)} clips, {a.layers} layers × {a.dim} dims, {a.seeds} seeds, ≤ {a.epochs} epochs at batch "
          f"{a.batch_size}, --stop-on {a.stop_on}, {a.threads} thread(s); torch {torch.__version__}; machine: {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)

    def both(epochs: int, tag: str):
        """The sweep, then the loop of learn runs, at ``epochs``: (sweep record, seconds, loop results)."""
        kw = common | dict(epochs=epochs, patience=epochs)
        t0 = time.perf_counter()
        res = sweep(corpus, build(LayersConfig, kw, features="bump", resamples=200), root / "cache",
                    root / f"runs_{tag}", echo=quiet)
        t_sweep = time.perf_counter() - t0
        t0, loop = time.perf_counter(), []
        for c in (c for c in res.record["candidates"] if c["kind"] == "layer"):
            loop.append(learn(corpus, build(LearnConfig, kw, features=[f"bump@{c['layer']}"], learner="mlp"),
                              root / "cache", root / f"runs_{tag}", echo=quiet))
        return res.record, t_sweep, time.perf_counter() - t0, loop

    def compare(rec: dict, loop: list) -> tuple[float, int, int, bool, float]:
        """max |Δ| of per-seed Val scores, models equal within --tol, models, identical best epochs,
        max |Δ S_MTL mean| / seed std."""
        worst, equal, n, same, rel = 0.0, 0, 0, True, 0.0
        for c, r in zip((c for c in rec["candidates"] if c["kind"] == "layer"), loop):
            for x, y in zip(r.metrics["per_seed"], c["metrics"]["per_seed"]):
                d = max(abs(x[k] - y[k]) for k in ("ccc", "uar", "mae", "s_mtl"))
                worst, equal, n = max(worst, d), equal + (d <= a.tol), n + 1
            if a.stop_on != "folds":          # (with folds a run reports each seed's median over folds)
                same &= [p["best_epoch"] for p in r.metrics["per_seed"]] == c["best_epoch"]
            u, v = r.metrics["summary"]["s_mtl"], c["metrics"]["summary"]["s_mtl"]
            if u["mean"] is not None and v["mean"] is not None:          # None: S_MTL undefined for every seed
                rel = max(rel, abs(u["mean"] - v["mean"]) / max(u["std"], v["std"], 1e-9))
        return worst, equal, n, same, rel

    rec, _, _, loop = both(a.check_epochs, "check")
    worst, equal, n_models, same, _ = compare(rec, loop)
    print(f"same run, same scores ({a.check_epochs} epochs): {equal}/{n_models} models within {a.tol:g} in every "
          f"Val score (CCC, UAR, MAE, S_MTL); max |Δ| {worst:.2e}; best epochs {'identical' if same else 'DIFFER'}",
          flush=True)
    res_rec, t_sweep, t_loop, loop = both(a.epochs, "main")
    sec = res_rec["seconds"]
    loop_train = sum(r.config["seconds"]["train"] for r in loop)
    print(f"sweep ({a.epochs} epochs): {t_sweep:.1f} s in all; probes of {a.layers} layers × {a.seeds} seeds "
          f"{sec['probes']:.1f} s, wsum {sec['wsum']:.1f} s, concat {sec['concat']:.1f} s; load {os.getloadavg()[0]:.1f}")
    print(f"loop of {a.layers} learn runs: {t_loop:.1f} s in all ({loop_train:.1f} s training); load "
          f"{os.getloadavg()[0]:.1f}")
    print(f"ratio loop / vectorised probes: {t_loop / sec['probes']:.1f}× (whole runs), "
          f"{loop_train / sec['probes']:.1f}× (training only)")
    w6, eq6, _, same6, rel = compare(res_rec, loop)
    print(f"after {a.epochs} epochs: {eq6}/{n_models} models within {a.tol:g}, max |Δ| {w6:.2e}, best epochs "
          f"{'identical' if same6 else 'differ'}, largest "
          f"|Δ S_MTL mean| = {rel:.2f} seed-std (float rounding of batched GEMMs, amplified by training)", flush=True)
    print("| layer | rank (Train) | Train sel. S_MTL | Val S_MTL mean ± std | ens. [95% CI] |")
    rank = {l: k + 1 for k, l in enumerate(res_rec["ranking"])}
    for c in res_rec["candidates"]:
        s, m = c["metrics"]["summary"]["s_mtl"], c["metrics"]
        lo, hi = m["ci95"]["s_mtl"]
        seeds = "undefined" if s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"
        print(f"| {c['label']} | {rank[c['layer']] if c['kind'] == 'layer' else '–'} | {c['train_score']:.3f} | "
              f"{seeds} | {m['ensemble']['s_mtl']:.3f} [{lo:.3f}, {hi:.3f}] |")

    if not a.skip_wsum:
        print("| cache | wsum weights | Emo-CCC | Cou-UAR | Age-MAE | S_MTL mean ± std | s | top weights per task |")
        for prof in ("bump", "tasks"):
            for wts in ("shared", "task"):
                t0 = time.perf_counter()
                r = learn(corpus, build(LearnConfig, common, features=[f"{prof}@all"], learner="wsum",
                                        options={"weights": wts}), root / "cache", root / "runs",
                          name=f"{prof}_wsum_{wts}", echo=quiet)
                W = np.asarray(json.loads((r.run_dir / "models" / "layer_weights.json").read_text())["weights"]).mean(0)
                m = r.metrics["summary"]
                tops = "; ".join(f"{int(np.argmax(row))} ({row.max():.2f})" for row in W)
                print(f"| {prof} | {wts} | {m['ccc']['mean']:.3f} ± {m['ccc']['std']:.3f} | {m['uar']['mean']:.3f} ± "
                      f"{m['uar']['std']:.3f} | {m['mae']['mean']:.2f} ± {m['mae']['std']:.2f} | "
                      f"{m['s_mtl']['mean']:.3f} ± {m['s_mtl']['std']:.3f} | {time.perf_counter() - t0:.1f} | {tops} |",
                      flush=True)

    n_tr = len(corpus)
    print(f"memory: this run's block {n_tr} × {a.layers} × {a.dim} float32 = {n_tr * a.layers * a.dim * 4 / 2**20:.0f} "
          f"MiB; 20,000 clips × 25 layers × 2,048 dims = {20000 * 25 * 2048 * 4 / 1e9:.2f} GB "
          f"({20000 * 25 * 2048 * 4 / 2**30:.2f} GiB); peak RSS of this process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")
    if equal < 0.9 * n_models:     # a model or two may drift within 2 epochs (chaotic float rounding)
        raise SystemExit(f"only {equal}/{n_models} models of the sweep match the loop within --tol {a.tol} after "
                         f"{a.check_epochs} epochs")


if __name__ == "__main__":
    main()
