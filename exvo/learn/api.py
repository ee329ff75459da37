"""``learn``: cached features → multitask learner → run folder; ``predict_run``: apply a run.

Typical use (what ``exvo learn`` calls)::

    result = learn(corpus, LearnConfig(features=["egemaps"], learner="mlp", arch="sys2"),
                   cache_dir="cache", runs_dir="runs")
    print(result.summary_line())
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

import exvo
from exvo.corpus import Corpus, CorpusError
from exvo.extract.cache import CacheMismatch, _config_diff
from exvo.learn import runs
from exvo.learn.features import (FeatureError, FeatureSpec, Scaler, load_features, parse_specs,
                                 report_missing)
from exvo.learn.mlp import ARCHS, LOSSES, MLPConfig, SeedStack, predict as mlp_predict, train_mlp
from exvo.learn.probe import probe_layers
from exvo.learn.targets import make_targets
from exvo.learn.xgb import XGBConfig, holdout_split, load_xgb, predict_xgb, save_xgb, train_xgb
from exvo.predictions import Predictions

LEARNERS = ("mlp", "xgb")


@dataclass
class LearnConfig:
    """What to learn. ``seeds`` models are trained with seeds ``seed, seed+1, …``.

    MLP: ``arch`` sys1 | sys2, ``loss`` uncertainty | mean, ``epochs``, ``patience``,
    ``batch_size``, ``lr``, ``weight_decay``. XGBoost: ``xgb_estimators``, ``xgb_depth``, ``xgb_jobs`` (0 = all cores).
    ``device``: auto | cpu | cuda.
    """

    features: list[str]
    learner: str = "mlp"
    arch: str = "sys2"
    seeds: int = 5
    loss: str = "uncertainty"
    epochs: int = 20
    patience: int = 5
    batch_size: int = 8
    device: str = "auto"
    seed: int = 0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    xgb_estimators: int = 100
    xgb_depth: int = 4
    xgb_jobs: int = 1
    progress: bool = False

    def validate(self) -> None:
        if self.learner not in LEARNERS:
            raise ValueError(f"unknown learner {self.learner!r}; choose one of {LEARNERS}")
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {sorted(ARCHS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {LOSSES}")
        if int(self.seeds) < 1:
            raise ValueError(f"--seeds must be >= 1, got {self.seeds}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"unknown device {self.device!r}; choose auto, cpu or cuda")

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + k for k in range(int(self.seeds))]


@dataclass
class LearnResult:
    run_dir: Path
    metrics: dict
    config: dict
    notes: list[str] = field(default_factory=list)

    def summary_line(self) -> str:
        return runs.summary_line(self.run_dir, self.metrics)


def _constant_baseline(corpus: Corpus, t, rows) -> dict:
    """Scores of predicting the Train mean emotions/age and the majority country on Val."""
    from exvo.learn.runs import score_quiet

    tr, va = rows["Train"], rows["Val"]
    n = len(corpus.split_ids("Val"))
    emo = np.repeat(t.emotions[tr].mean(0, keepdims=True), n, 0)
    proba = np.zeros((n, 4)); proba[:, np.bincount(t.country[tr], minlength=4).argmax()] = 1.0
    age = np.full(n, float(np.mean(t.age[tr])))
    s, _ = score_quiet(Predictions.from_proba(corpus.split_ids("Val"), emo, proba, age), corpus, "Val")
    return {k: s[k] for k in ("ccc", "uar", "mae", "s_mtl")}


def learn(corpus: Corpus, cfg: LearnConfig, cache_dir: str | Path = "cache", runs_dir: str | Path = "runs",
          name: str | None = None, echo: Callable[[str], None] = print, overwrite: bool = False) -> LearnResult:
    """Train ``cfg.seeds`` models on Train, early-stop/score on Val, predict Val and Test, write the run.

    An existing run of the same name is refused before training unless ``overwrite``.
    """
    t_start = time.perf_counter()
    cfg.validate()
    specs = parse_specs(cfg.features)
    if not corpus.has_labels("Val"):
        raise CorpusError(f"{corpus.root} has no labelled Val clips; learning needs Val for early stopping and scores")
    name = runs.check_name(name or runs.derive_name([s.text for s in specs], cfg.learner, cfg.arch))
    runs_dir, cache_dir = Path(runs_dir), Path(cache_dir)
    runs.check_free(runs_dir, name, overwrite)
    notes: list[str] = []

    def note(msg: str) -> None:
        notes.append(msg)
        echo(msg)

    t0 = time.perf_counter()
    fm = load_features(corpus, specs, cache_dir, echo=echo, probe_fn=probe_layers)
    report_missing(fm, corpus, cache_dir, need=["Val"], echo=note)
    test_ids = corpus.split_ids("Test")
    do_test = bool(test_ids) and not fm.missing.get("Test")
    if not test_ids:
        note("note: the corpus has no Test rows; test.csv is not written")
    elif not do_test:
        m = fm.missing["Test"]
        note(f"note: {len(m)} Test clip(s) are not in the feature cache(s) (failed extraction?), so test.csv "
             f"is not written: {', '.join(m[:10])}{' …' if len(m) > 10 else ''}. Re-run `exvo extract` after fixing them")
    t_load = time.perf_counter() - t0
    rows = fm.rows
    t = make_targets(corpus, fm.ids, rows)
    scaler = Scaler.fit(fm.X, rows["Train"])
    scaler.apply_(fm.X)
    seeds = cfg.seed_list
    dims = " + ".join(f"{b.spec}[L{b.layer}]:{b.dim}" for b in fm.blocks)
    echo(f"features {dims} = {fm.dim} dims; Train {rows['Train'].size}, Val {rows['Val'].size}, "
         f"Test {rows['Test'].size if do_test else 0} clips; {cfg.learner}"
         + (f" {cfg.arch}, loss {cfg.loss}" if cfg.learner == "mlp" else "") + f", seeds {seeds}")

    tmp = runs.staging_dir(runs_dir, name)
    models = tmp / "models"
    models.mkdir()
    history = None
    t0 = time.perf_counter()
    if cfg.learner == "mlp":
        mcfg = MLPConfig(arch=cfg.arch, loss=cfg.loss, epochs=cfg.epochs, patience=cfg.patience,
                         batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay)
        fit = train_mlp(fm.X, rows["Train"], rows["Val"], t.emotions, t.country, t.age_z, t.age_mean, t.age_std,
                        seeds, mcfg, device=cfg.device, echo=echo, progress=cfg.progress)
        import torch

        Xt = torch.from_numpy(fm.X).to(fit.stack.flat.device)

        def outputs(r):
            return mlp_predict(fit.stack, Xt, r, mcfg.eval_batch)

        best_epochs: list[int | None] = list(fit.best_epoch)
        runs.save_torch(fit.stack.state_dict(), models / "mlp.pt")
        (models / "model.json").write_text(json.dumps({"learner": "mlp", "mlp": asdict(mcfg), "seeds": seeds}, indent=1))
        history = {"val_selection_score": fit.history, "train_loss": fit.train_loss, "epochs_run": fit.epochs_run,
                   "seconds_per_epoch": fit.seconds_per_epoch, "best_epoch": fit.best_epoch}
        learner_cfg = asdict(mcfg)
    else:
        xcfg = XGBConfig(n_estimators=cfg.xgb_estimators, max_depth=cfg.xgb_depth, n_jobs=cfg.xgb_jobs,
                         device="cuda" if cfg.device == "cuda" else "cpu")
        pos = {i: k for k, i in enumerate(corpus.ids)}
        spk = np.array([corpus.speakers[pos[fm.ids[k]]] for k in rows["Train"]])
        fit_rows, stop_rows = holdout_split(rows["Train"], spk, xcfg.holdout, xcfg.holdout_seed)
        echo(f"  early stopping on {stop_rows.size} Train clips of held-out speakers; fitting on {fit_rows.size}")
        boosters = train_xgb(fm.X, fit_rows, stop_rows, t.emotions, t.country, t.age_z, seeds, xcfg, echo=echo)

        def outputs(r):
            return predict_xgb(boosters, fm.X[r])

        best_epochs = [None] * len(seeds)
        save_xgb(boosters, models, seeds, xcfg)
        learner_cfg = asdict(xcfg) | {"fit_clips": int(fit_rows.size), "early_stopping_clips": int(stop_rows.size)}
    t_train = time.perf_counter() - t0
    scaler.save(models / "scaler.npz", age_mean=t.age_mean, age_std=t.age_std)

    # ---- predictions and scores
    val_ids = [fm.ids[k] for k in rows["Val"]]
    emo, pro, agez = outputs(rows["Val"])
    age = agez.astype(np.float64) * t.age_std + t.age_mean
    per_seed, warns = [], []
    for j in range(len(seeds)):
        s, w = runs.score_quiet(Predictions.from_proba(val_ids, emo[j], pro[j], age[j]), corpus, "Val")
        per_seed.append(s); warns += w
    ens_pred = Predictions.from_proba(val_ids, *runs.ensemble(emo, pro, age))
    ens, w = runs.score_quiet(ens_pred, corpus, "Val")
    for msg in sorted(set(warns + w)):
        note(f"warning: {msg}")
    metrics = runs.metrics_json(per_seed, seeds, best_epochs, ens, "Val", len(val_ids))
    from exvo.predictions import SeedPredictions, save_seed_predictions, save_split

    save_split(ens_pred, tmp, "Val")
    save_seed_predictions(SeedPredictions(val_ids, seeds, emo, pro, age), tmp, "Val")
    if do_test:
        te_ids = [fm.ids[k] for k in rows["Test"]]
        e, p, a = outputs(rows["Test"])
        a = a.astype(np.float64) * t.age_std + t.age_mean
        save_split(Predictions.from_proba(te_ids, *runs.ensemble(e, p, a)), tmp, "Test")
        save_seed_predictions(SeedPredictions(te_ids, seeds, e, p, a), tmp, "Test")
    trivial = _constant_baseline(corpus, t, rows)

    config = {
        "kind": "learn",
        "exvo_version": exvo.__version__,
        "name": name,
        "corpus": {"name": corpus.name, "root": str(corpus.root)},
        "features": [b.to_json() for b in fm.blocks],
        "dim": fm.dim,
        "learner": cfg.learner,
        "arch": cfg.arch if cfg.learner == "mlp" else None,
        "seeds": seeds,
        "loss": cfg.loss if cfg.learner == "mlp" else None,
        "epochs": cfg.epochs, "patience": cfg.patience, "batch_size": cfg.batch_size,
        "device": cfg.device,
        "learn_config": asdict(cfg),
        "learner_config": learner_cfg,
        "early_stopping": ("Val selection score (S_MTL with CCC/UAR floored at 1e-3); best epoch restored"
                           if cfg.learner == "mlp" else "XGBoost early_stopping_rounds on a speaker-disjoint 10% of Train"),
        "standardisation": "per-feature mean/std of Train rows (models/scaler.npz)",
        "age": {"train_mean_years": t.age_mean, "train_std_years": t.age_std},
        "clips": {"train": int(rows["Train"].size), "val": int(rows["Val"].size),
                  "test": int(rows["Test"].size) if do_test else 0,
                  "missing_from_cache": {k: v for k, v in fm.missing.items() if v}},
        "std_over_seeds": "population (ddof=0)",
        "constant_predictor_val": trivial,
        "seconds": {"load": round(t_load, 2), "train": round(t_train, 2),
                    "total": round(time.perf_counter() - t_start, 2)},
        "notes": notes,
    }
    runs.write_json(tmp / "config.json", config)
    runs.write_json(tmp / "metrics.json", metrics)
    if history is not None:
        runs.write_json(tmp / "history.json", history)
    final = runs.commit(tmp, runs_dir / name, overwrite=overwrite)
    echo(f"mean/majority predictor on Val: CCC {trivial['ccc']:.3f} UAR {trivial['uar']:.3f} "
         f"MAE {trivial['mae']:.2f} S_MTL {trivial['s_mtl']:.3f}")
    return LearnResult(final, metrics, config, notes)


def predict_run(run_dir: str | Path, corpus: Corpus, cache_dir: str | Path = "cache", split: str = "Test",
                out: str | Path | None = None) -> Path:
    """Apply a saved learn run to ``split`` of ``corpus`` (same extractors cached); write a submission.

    The country probabilities go beside it (``<out stem>_country_proba.csv``). A feature
    cache built with other settings than the run's is refused.
    """
    run_dir = Path(run_dir)
    if out is not None and Path(out).is_dir():
        raise ValueError(f"--out {out} is a folder; give the CSV file to write, e.g. --out {Path(out) / (split.lower() + '.csv')}")
    cfg = runs.read_config(run_dir)
    ids = corpus.split_ids(split)
    if not ids:
        raise CorpusError(f"{corpus.root} has no {split} rows to predict")
    specs = [FeatureSpec(b["name"], int(b["layer"])) for b in cfg["features"]]
    from exvo.learn.features import open_cache

    for b in cfg["features"]:
        c = open_cache(b["name"], corpus, cache_dir)
        if c.config != b["cache_config"]:
            raise CacheMismatch(
                f"the {b['name']} cache of {corpus.name} ({c.path}) was built with other settings than the one "
                f"{run_dir.name} was trained on ({_config_diff(c.config, b['cache_config'])}; 'cache' is this "
                f"corpus, 'requested' the run's). Re-extract with the run's settings "
                f"(`exvo extract --model {b['name']} --data {corpus.root} --overwrite` with the same options)"
            )
        if c.dim != b["dim"]:
            raise CacheMismatch(f"the {b['name']} cache has {c.dim} dims, the run was trained on {b['dim']}")
    fm = load_features(corpus, specs, cache_dir, echo=lambda m: None, need_train=False)
    report_missing(fm, corpus, cache_dir, need=[split])
    scaler, extra = Scaler.load(run_dir / "models" / "scaler.npz")
    if scaler.mean.shape[0] != fm.dim:
        raise FeatureError(f"scaler of {run_dir} has {scaler.mean.shape[0]} dims but the features have {fm.dim}")
    r = fm.rows[split]
    X = np.ascontiguousarray(fm.X[r])
    del fm
    scaler.apply_(X)
    age_mean, age_std = float(extra["age_mean"]), float(extra["age_std"])
    if cfg["learner"] == "mlp":
        import torch

        st = SeedStack.from_state(torch.load(run_dir / "models" / "mlp.pt", weights_only=True))
        emo, pro, agez = mlp_predict(st, torch.from_numpy(X), np.arange(len(X)))
    else:
        emo, pro, agez = predict_xgb(load_xgb(run_dir / "models"), X)
    pred = Predictions.from_proba(ids, *runs.ensemble(emo, pro, agez.astype(np.float64) * age_std + age_mean))
    out = Path(out) if out is not None else run_dir / f"predict_{corpus.name}_{split.lower()}.csv"
    pred.write(out)
    pred.write_proba(out.with_name(out.stem + "_country_proba.csv"))
    return out
