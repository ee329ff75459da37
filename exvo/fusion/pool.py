"""``pool()``: one run whose seeds are every seed of several runs that differ only in a CNN seed.

``exvo extract --cnn-seeds N`` caches N task CNNs as layers ``NAME@0 … NAME@N-1``; a learn
run on one layer has the spread of the learner's seeds only, which understates the spread
of the system (the CNN's own seed moved Emo-CCC three times more than the MLP's on the
demo corpus, benchmarks/README.md). Pooling the N learn runs gives N × S seeds: the
run's mean ± std over them includes the CNN's variance, and its seed ensemble averages
every CNN and every learner seed. Nothing is chosen on Val, so nothing is optimistic that
was not already (a source run marked † makes the pool †).

Like with like: the sources must share the learner, its architecture, preset and the
feature names, differing only in the layer of the same caches (``raw_exvo_cr@0`` vs
``raw_exvo_cr@1``), and must all keep per-seed predictions of the same Val clips.

Output: ``<runs>/<name>/`` in the fusion-run format (``config.json`` ``kind: "fusion"``,
``mode: "pool"``; ``metrics.json``; ``val.csv``/``test.csv`` = the ensemble of every pooled
seed; ``per_seed/<split>.npz`` with pooled seeds numbered 0 … N·S−1, each one's source run
and seed in ``metrics.json``'s ``per_seed[k].sources``).
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable

import numpy as np

from exvo.corpus import Corpus
from exvo.fusion import seeds
from exvo.runs import provenance
from exvo.runs.reader import Run, feature_specs, resolve
from exvo.runs.store import RunWriter, check_name
from exvo.predictions import (PredictionError, SeedPredictions, load_seed_predictions, save_seed_predictions,
                              save_split)

FORMAT = "exvo-fusion/1"
SCORE_KEYS = ("ccc", "uar", "mae", "s_mtl")
_LAYER = re.compile(r"@-?\d+$")


def _system(run: Run) -> dict:
    """What must agree between pooled runs: everything but the layers of the features."""
    cfg = run.record
    return {"learner": cfg.get("learner"), "arch": cfg.get("arch"), "preset": cfg.get("preset"),
            "features": [_LAYER.sub("", f) for f in feature_specs(cfg, resolved=True)]}


def _check_like(runs: list[Run]) -> None:
    if len(runs) < 2:
        raise ValueError(f"pooling needs at least 2 runs, got {len(runs)}; name the learn runs of each CNN seed, "
                         "e.g. `exvo fuse --pool raw_exvo_cr@0 raw_exvo_cr@1`")
    if any(r.kind != "learn" for r in runs):
        raise ValueError("pooling takes learn runs only (not fusions): "
                         + ", ".join(f"{r.name} is a {r.kind} run" for r in runs if r.kind != "learn"))
    ref = _system(runs[0])
    for r in runs[1:]:
        other = _system(r)
        if other != ref:
            diff = {k: (ref[k], other[k]) for k in ref if ref[k] != other[k]}
            raise ValueError(f"runs {runs[0].name} and {r.name} differ in more than the layer of their features "
                             f"({', '.join(f'{k}: {a!r} vs {b!r}' for k, (a, b) in diff.items())}); pool only "
                             "runs of one system that differ in the CNN seed (NAME@k)")


def _pooled(runs: list[Run], split: str, ids: list[str] | None) -> tuple[SeedPredictions | None, list[dict]]:
    """Concatenated per-seed predictions of ``split`` (None when a run lacks them) and each seed's source."""
    parts = [load_seed_predictions(r.path, split) for r in runs]
    if any(p is None for p in parts):
        return None, []
    ids = ids or parts[0].ids
    for r, p in zip(runs, parts):
        if set(p.ids) != set(ids):
            raise PredictionError(f"{r.name}'s per-seed {split} predictions cover other clips than {runs[0].name}'s; "
                                  "pool runs of the same corpus")
    where = [{c: k for k, c in enumerate(p.ids)} for p in parts]      # one index per run, not one per clip
    take = [np.array([w[c] for c in ids], dtype=np.int64) for w in where]
    emo = np.concatenate([p.emotions[:, t] for p, t in zip(parts, take)])
    pro = np.concatenate([p.country_proba[:, t] for p, t in zip(parts, take)])
    age = np.concatenate([p.age[:, t] for p, t in zip(parts, take)])
    sources = [{r.name: int(s)} for r, p in zip(runs, parts) for s in p.seeds]
    return SeedPredictions(list(ids), list(range(len(sources))), emo, pro, age), sources


def pool(corpus: Corpus, runs_dir: str | Path, run_names: list[str], name: str,
         echo: Callable[[str], None] = print) -> Path:
    """Write ``<runs_dir>/<name>/``, the pool of ``run_names`` (see the module docstring); returns its path."""
    name = check_name(name)      # at the boundary: nothing is read or written under another name
    runs_dir = Path(runs_dir)
    runs, notes = resolve(runs_dir, run_names)
    _check_like(runs)
    dest = runs_dir / name
    if dest.resolve() in {r.path.resolve() for r in runs}:
        raise ValueError(f"the output {dest} is one of the runs being pooled; pass another --name")
    if dest.exists() and (old := Run.open(dest)).kind != "fusion":
        raise ValueError(f"{dest} exists and is a {old.kind} run, not a fusion; pass another --name")
    val_ids = corpus.split_ids("Val")
    val, sources = _pooled(runs, "Val", val_ids)
    if val is None:
        lacking = [r.name for r in runs if load_seed_predictions(r.path, "Val") is None]
        raise PredictionError(f"run(s) {', '.join(lacking)} keep no per-seed Val predictions (per_seed/val.npz, "
                              "written by exvo learn since the per-seed format); re-run them with `exvo learn`")
    labels = corpus.labels("Val")
    per_seed = [seeds.seed_row(k, seeds.score(val.seed(k), labels), sources[k]) for k in range(len(sources))]
    ens_pred = val.ensemble()
    ens = seeds.score(ens_pred, labels)
    optimistic = any(bool(r.metrics.get("val_optimistic") or (r.metrics.get("selection") or {}).get("optimistic"))
                     for r in runs)
    test, _ = _pooled(runs, "Test", None) if all(r.has("Test") for r in runs) else (None, [])

    writer = RunWriter(runs_dir, name, replace_kind="fusion")   # derived from its sources: re-pooling replaces it
    tmp = writer.path
    save_split(ens_pred, tmp, "Val")
    save_seed_predictions(val, tmp, "Val")
    if test is not None:
        save_split(test.ensemble(), tmp, "Test")
        save_seed_predictions(test, tmp, "Test")
    note = ("pool: every seed of every source run, nothing chosen on Val"
            + ("; a source chose its epochs on Val, so these Val scores are optimistic" if optimistic else ""))
    config = {
        "kind": "fusion", "mode": "pool", "top": 1, "weighted": False, "select_on": "val",
        "sources": [r.name for r in runs],
        "features": sorted({f for r in runs for f in feature_specs(r.record)}), "feature_dim": None,
        "learner": "fusion", "arch": "pool", "seeds": list(range(len(sources))), "seed_sources": sources,
        "ccc_convention": "challenge", "sources_from": "named",
        "created_unix": time.time(),
    }
    metrics = {
        "split": "Val", "n": len(val_ids), "ccc_convention": "challenge",
        "summary": seeds.summarise(per_seed), "per_seed": per_seed,
        "summary_over": f"{len(per_seed)} pooled seeds ({len(runs)} runs)",
        "ensemble": {k: ens[k] for k in (*SCORE_KEYS, "ccc_per_emotion")},
        "full_val_ensemble": {k: ens[k] for k in SCORE_KEYS},
        "ccc_per_emotion": seeds.per_emotion(per_seed)[0],
        "selection": {"select_on": "val", "optimistic": optimistic, "note": note},
        "val_optimistic": optimistic,
    }
    record = {"format": FORMAT, "mode": "pool", "select_on": "val", "optimistic": optimistic,
              "selection_note": note, "subtasks": {}, "val": {k: ens[k] for k in SCORE_KEYS},
              "test": {"written": test is not None}, "seed_by_seed": {"n_seeds": len(sources), "seed_sources": sources},
              "notes": notes}
    writer.json("metrics.json", metrics)
    writer.json("fusion.json", record)
    final = writer.commit(config, provenance.inputs(corpus, sources=[r.path for r in runs], runs_dir=runs_dir))
    summ = metrics["summary"]

    def cell(m: str, d: int) -> str:
        s = summ[m]
        return "undefined" if s["mean"] is None else f"{s['mean']:.{d}f}" + (f"±{s['std']:.{d}f}" if s["std"] else "")

    echo(f"{final}: pool of {len(runs)} runs, {len(per_seed)} seeds: Val CCC {cell('ccc', 3)} UAR {cell('uar', 3)} "
         f"MAE {cell('mae', 2)} S_MTL {cell('s_mtl', 3)} (ensemble {ens['s_mtl']:.3f}; mean ± std over all pooled "
         f"seeds){' †' if optimistic else ''}" + ("" if test is not None else "; no test.csv (a source lacks one)"))
    for n in notes:
        echo(f"  note: {n}")
    return final
