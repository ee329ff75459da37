"""``learn``: cached features → multitask learner → run folder; ``predict_run``: apply a run.

Typical use (what ``exvo learn`` calls)::

    result = learn(corpus, build(LearnConfig, features=["egemaps"], learner="mlp", epochs=30),
                   cache_dir="cache", runs_dir="runs")
    print(result.summary_line())
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from exvo.version import __version__
from exvo.corpus import Corpus, CorpusError
from exvo.extract.cache import CacheMismatch, config_diff
from exvo.learn import folds, registry, runs
from exvo.runs import provenance
from exvo.runs.store import RunWriter, check_free, check_name
from exvo.learn.config import LearnConfig
from exvo.learn.features import (FeatureError, FeatureSpec, Scaler, block_spec, load_features, parse_specs,
                                 report_missing, train_label_leaks)
from exvo.learn.probe import probe_layers
from exvo.learn.selection import selection_folds
from exvo.learn.targets import make_targets
from exvo.learn.threads import resolve_threads, torch_threads
from exvo.predictions import Predictions
from exvo.runs.reader import read_learn_record


@dataclass
class LearnResult:
    run_dir: Path
    metrics: dict
    config: dict
    notes: list[str] = field(default_factory=list)

    def summary_line(self) -> str:
        return runs.summary_line(self.run_dir, self.metrics)


def constant_baseline(corpus: Corpus, t, rows) -> dict:
    """Scores of the trivial predictor on Val: the Train mean intensities/value (ExVo: emotions, age)
    and the majority class (ExVo: country); keys as the task's scores (:attr:`TaskSpec.metric_keys`)."""
    from exvo.learn.runs import score_quiet

    tr = rows["Train"]
    n = len(corpus.split_ids("Val"))
    C = t.task.n_classes
    emo = np.repeat(t.emotions[tr].mean(0, keepdims=True), n, 0)
    proba = np.zeros((n, C)); proba[:, np.bincount(t.country[tr], minlength=C).argmax()] = 1.0
    age = np.full(n, float(np.mean(t.age[tr])))
    s, _ = score_quiet(Predictions.from_proba(corpus.split_ids("Val"), emo, proba, age, t.task), corpus, "Val")
    return {k: s[k] for k in t.task.metric_keys}


@dataclass
class Prepared:
    """Standardised features and targets of one learn run: ``fm.X`` ``(n_clips, dim)`` (Train
    mean/std applied), ``rows`` per split, ``folds`` ``[(fit rows, selection rows)]`` (one pair
    unless ``on="folds"``), whether Test is written."""

    fm: object
    targets: object
    scaler: Scaler
    folds: list
    do_test: bool
    seconds: float

    @property
    def fit_rows(self) -> np.ndarray:
        return self.folds[0][0] if len(self.folds) == 1 else self.fm.rows["Train"]

    @property
    def sel_rows(self) -> np.ndarray:
        return self.folds[0][1] if len(self.folds) == 1 else self.fm.rows["Train"]


def learn(corpus: Corpus, cfg: LearnConfig, cache_dir: str | Path = "cache", runs_dir: str | Path = "runs",
          name: str | None = None, echo: Callable[[str], None] = print, overwrite: bool = False) -> LearnResult:
    """Train ``cfg.seeds`` models on Train, choose epochs on the selection rows, score on Val,
    predict Val and Test, write the run folder.

    An existing run of the same name is refused before training unless ``overwrite``.
    """
    from exvo.device import resolve_device

    t_start = time.perf_counter()
    cfg.validate()
    lcfg = cfg.learner_config()
    specs = parse_specs(cfg.features)
    if not corpus.has_labels("Val"):
        raise CorpusError(f"{corpus.root} has no labelled Val clips; learning needs Val for its scores")
    registry.check_task(cfg.learner, corpus.task)
    name = check_name(name or run_name(cfg, specs, lcfg))
    runs_dir, cache_dir = Path(runs_dir), Path(cache_dir)
    check_free(runs_dir, name, overwrite)
    notes: list[str] = []

    def note(msg: str) -> None:
        notes.append(msg)
        echo(msg)

    device, threads = resolve_device(cfg.device), resolve_threads(cfg.threads)
    with torch_threads(threads):
        prep = prepare(corpus, cfg, specs, cache_dir, echo, note)
        echo_plan(cfg, lcfg, prep, threads, echo, note)
        for (a, b), shared in corpus.speaker_overlaps().items():
            note(f"warning: {len(shared)} speaker(s) have clips in both {a} and {b} ({', '.join(shared[:5])}"
                 f"{' …' if len(shared) > 5 else ''}): its {b} scores are not new-speaker estimates")
        writer = RunWriter(runs_dir, name, overwrite=overwrite)
        t0 = time.perf_counter()
        fitted = fit_and_save(cfg, lcfg, prep, writer, device, threads, echo, note)
        t_train = time.perf_counter() - t0
        metrics = predict_and_score(corpus, cfg, prep, fitted, writer, note)
        trivial = constant_baseline(corpus, prep.targets, prep.fm.rows)
    config = run_record(corpus, cfg, lcfg, prep, name, device, threads, trivial, notes,
                        {"load": round(prep.seconds, 2), "train": round(t_train, 2),
                         "total": round(time.perf_counter() - t_start, 2)})
    writer.json("metrics.json", metrics)
    if fitted.history is not None:
        writer.json("history.json", fitted.history)
    final = writer.commit(config, provenance.inputs(corpus, caches=input_caches(prep.fm.blocks, cache_dir)))
    echo("mean/majority predictor on Val: " + runs.score_text(trivial))
    return LearnResult(final, metrics, config, notes)


def run_name(cfg: LearnConfig, specs: list[FeatureSpec], lcfg) -> str:
    """The default run name: features, learner, arch; a preset's run gets ``_<preset>`` so that it
    never replaces the default run of the same features."""
    derived = runs.derive_name([s.text for s in specs], cfg.learner, getattr(lcfg, "arch", None))
    return derived + ("" if cfg.preset == "default" else f"_{cfg.preset}")


def prepare(corpus: Corpus, cfg: LearnConfig, specs: list[FeatureSpec], cache_dir: Path,
            echo: Callable[[str], None], note: Callable[[str], None]) -> Prepared:
    """Load the cached features (probing ``@best`` layers by the selection rule), check what is
    missing, standardise with Train statistics, split Train into fit and selection rows."""
    t0 = time.perf_counter()
    sel = cfg.select
    fm = load_features(corpus, specs, cache_dir, echo=echo, probe_fn=lambda c, co: probe_layers(c, co, sel))
    report_missing(fm, corpus, cache_dir, need=["Val"], echo=note)
    test_ids = corpus.split_ids("Test")
    do_test = bool(test_ids) and not fm.missing.get("Test")
    if not test_ids:
        note("note: the corpus has no Test rows; test.csv is not written")
    elif not do_test:
        m = fm.missing["Test"]
        note(f"note: {len(m)} Test clip(s) are not in the feature cache(s) (failed extraction?), so test.csv "
             f"is not written: {', '.join(m[:10])}{' …' if len(m) > 10 else ''}. Re-run `exvo extract` after fixing them")
    seconds = time.perf_counter() - t0
    t = make_targets(corpus, fm.ids, fm.rows)
    scaler = Scaler.fit(fm.X, fm.rows["Train"])
    scaler.apply_(fm.X)
    folds = selection_folds(corpus, fm.ids, fm.rows, sel, note=echo)
    return Prepared(fm, t, scaler, folds, do_test, seconds)


def echo_plan(cfg: LearnConfig, lcfg, prep: Prepared, threads: int, echo, note) -> None:
    """Say what will be trained on what, and how models are chosen."""
    rows, fm, sel = prep.fm.rows, prep.fm, cfg.select
    arch = getattr(lcfg, "arch", None)
    dims = " + ".join(f"{b.spec}[{b.label}]:{b.width}" for b in fm.blocks)
    echo(f"features {dims} = {fm.dim} dims; Train {rows['Train'].size}, Val {rows['Val'].size}, "
         f"Test {rows['Test'].size if prep.do_test else 0} clips; {cfg.learner}"
         + (f" {arch}" if arch else "") + f", preset {cfg.preset}, seeds {cfg.seeds.list}, {threads} thread(s)")
    echo(f"  selection: {sel.describe()}" + ("" if sel.on != "holdout" else
         f" — fit {prep.fit_rows.size} clips, hold-out {prep.sel_rows.size} clips"))
    if sel.optimistic:
        note("note: --stop-on val: Val chose the epochs/model, so this run's Val scores are optimistic (†)")


def fit_and_save(cfg: LearnConfig, lcfg, prep: Prepared, writer: RunWriter, device: str, threads: int, echo,
                 note=None):
    """Train every seed of the learner on the fit rows (epochs chosen on the selection rows), or
    on every speaker fold (:mod:`exvo.learn.folds`, then the fold ensemble or a refit); save its
    models, its registry entry and the scaler under ``models/``."""
    learner = registry.get(cfg.learner)
    models = writer.file("models/learner.json").parent
    t = prep.targets
    X = prep.fm.layer_block() if "layers" in learner.uses else prep.fm.X     # (n, L, F) for layer-wise learners
    data = registry.FitData(X, t, prep.fit_rows, prep.sel_rows, cfg.seeds.list, cfg.train,
                            cfg.loss_config(), cfg.select, device=device, threads=threads, echo=echo,
                            progress=cfg.progress)
    if cfg.select.on != "folds":
        fitted = learner.fit(data, lcfg)
    else:
        fitted = folds.fit_folds(learner, data, lcfg, prep.folds, prep.fm.rows["Train"])
        for msg in folds.first_epoch_heads(fitted):
            (note or echo)(f"warning: {msg}")
        if cfg.select.final == "refit":
            fitted = folds.refit(learner, data, lcfg, fitted, prep.fm.rows["Train"])
    fitted.save(models)
    registry.save_meta(models, cfg.learner, lcfg)
    prep.scaler.save(models / "scaler.npz", age_mean=t.age_mean, age_std=t.age_std)
    return fitted


def predict_and_score(corpus: Corpus, cfg: LearnConfig, prep: Prepared, fitted, writer: RunWriter, note) -> dict:
    """Predict Val (and Test) with every seed; write the seed ensemble and the per-seed predictions;
    return ``metrics.json`` (per-seed Val scores, mean ± std, the ensemble's)."""
    from exvo.predictions import SeedPredictions, save_seed_predictions, save_split

    fm, t, seeds, sel = prep.fm, prep.targets, cfg.seeds.list, cfg.select
    learner = registry.get(cfg.learner)

    task = t.task

    def outputs(split: str):
        e, p, az = fitted.predict(fm.X[fm.rows[split]])
        return [fm.ids[k] for k in fm.rows[split]], e, p, az.astype(np.float64) * t.age_std + t.age_mean

    val_ids, emo, pro, age = outputs("Val")
    per_seed, warns = [], []
    for j in range(len(seeds)):
        s, w = runs.score_quiet(Predictions.from_proba(val_ids, emo[j], pro[j], age[j], task), corpus, "Val")
        per_seed.append(s); warns += w
    ens_pred = Predictions.from_proba(val_ids, *runs.ensemble(emo, pro, age), task)
    ens, w = runs.score_quiet(ens_pred, corpus, "Val")
    for msg in sorted(set(warns + w)):
        note(f"warning: {msg}")
    # "epochs": a learner with its own epoch loop (burst2vec) reports its best epochs too
    best_epochs = fitted.best_epoch if {"train", "epochs"} & learner.uses else [None] * len(seeds)
    metrics = runs.metrics_json(per_seed, seeds, best_epochs, ens, "Val", len(val_ids), task)
    # same shape as a fusion run's "selection", so the report marks both kinds with †
    metrics["selection"] = {"select_on": sel.on, "optimistic": sel.optimistic, "note": sel.describe()}
    metrics["val_optimistic"] = sel.optimistic
    save_split(ens_pred, writer.path, "Val")
    save_seed_predictions(SeedPredictions(val_ids, seeds, emo, pro, age, task), writer.path, "Val")
    if prep.do_test:
        te_ids, e, p, a = outputs("Test")
        save_split(Predictions.from_proba(te_ids, *runs.ensemble(e, p, a), task), writer.path, "Test")
        save_seed_predictions(SeedPredictions(te_ids, seeds, e, p, a, task), writer.path, "Test")
    if getattr(fitted, "oof", None) is not None:
        metrics["oof"] = out_of_fold_scores(corpus, prep, fitted, seeds, writer, note)
    return metrics


def out_of_fold_scores(corpus: Corpus, prep: Prepared, fitted, seeds: list[int], writer: RunWriter, note) -> dict | None:
    """Write the out-of-fold predictions of Train (``oof.csv``, ``per_seed/oof.npz``) and score them:
    per seed, mean ± std, the seed ensemble and its speaker-bootstrap 95 % intervals — the run's
    estimate from Train alone (Val never involved)."""
    from exvo.metrics import speaker_bootstrap
    from exvo.predictions import SeedPredictions, save_seed_predictions, save_split

    fm, t = prep.fm, prep.targets
    task = t.task
    ids = [fm.ids[k] for k in fm.rows["Train"]]
    e, p, az = fitted.oof
    a = az.astype(np.float64) * t.age_std + t.age_mean
    ens = Predictions.from_proba(ids, *runs.ensemble(e, p, a), task)
    save_split(ens, writer.path, "OOF")
    save_seed_predictions(SeedPredictions(ids, seeds, e, p, a, task), writer.path, "OOF")
    if fm.missing.get("Train"):
        note(f"note: {len(fm.missing['Train'])} Train clip(s) are not in the cache: the out-of-fold predictions "
             "cover the others and are not scored")
        return None
    per_seed = [runs.score_quiet(Predictions.from_proba(ids, e[j], p[j], a[j], task), corpus, "Train")[0]
                for j in range(len(seeds))]
    ens_s, _ = runs.score_quiet(ens, corpus, "Train")
    out = runs.metrics_json(per_seed, seeds, [None] * len(seeds), ens_s, "OOF", len(ids), task)
    want = ens.take(corpus.split_ids("Train"))
    emo, cou, age = corpus.labels("Train")
    spk = corpus.speakers[corpus.indices("Train")]
    out["ci95"] = speaker_bootstrap(emo, want.emotions, cou, want.country, age, want.age, spk, task=task)
    out["fold_epochs"] = getattr(fitted, "fold_epochs", None)
    out["optimistic"] = train_label_leaks(fm.blocks, corpus.name) or None
    for why in out["optimistic"] or []:
        note(f"note: the out-of-fold estimate is optimistic (†): {why}")
    return out


def run_record(corpus: Corpus, cfg: LearnConfig, lcfg, prep: Prepared, name: str, device: str, threads: int,
               trivial: dict, notes: list[str], seconds: dict) -> dict:
    """The run's ``config.json`` (its provenance is added at commit)."""
    learner = registry.get(cfg.learner)
    fm, t, sel, rows = prep.fm, prep.targets, cfg.select, prep.fm.rows
    uses_loss = "loss" in learner.uses
    # the optimisation that trained the models: the shared one, or the learner's own (burst2vec)
    train_cfg = cfg.train if "train" in learner.uses else getattr(lcfg, "train", None)
    uses_train = train_cfg is not None
    loss_cfg = cfg.loss_config()
    return {
        "kind": "learn",
        "exvo_version": __version__,
        "name": name,
        "task": t.task.to_dict(),
        "corpus": {"name": corpus.name, "root": str(corpus.root)},
        "features": [b.to_json() for b in fm.blocks],
        "dim": fm.dim,
        "learner": cfg.learner,
        "preset": cfg.preset,
        "arch": getattr(lcfg, "arch", None),
        "seeds": cfg.seeds.list,
        "loss": cfg.resolved()["loss"] if uses_loss else None,
        "losses": asdict(loss_cfg) if uses_loss else ({"age": loss_cfg.age} if "loss.age" in learner.uses else None),
        "epochs": train_cfg.epochs if uses_train else None,
        "patience": train_cfg.patience if uses_train else None,
        "batch_size": train_cfg.batch_size if uses_train else None,
        "train": asdict(train_cfg) if uses_train else None,
        "device": device,
        "threads": threads,
        "learn_config": asdict(cfg),
        "learner_config": asdict(lcfg),
        "selection": asdict(sel) | {"description": sel.describe(), "fit_clips": int(prep.fit_rows.size),
                                    "selection_clips": int(prep.sel_rows.size)},
        "val_optimistic": sel.optimistic,
        "early_stopping": sel.describe(),
        "standardisation": "per-feature mean/std of Train rows (models/scaler.npz)",
        "age": {"train_mean_years": t.age_mean, "train_std_years": t.age_std},
        "clips": {"train": int(rows["Train"].size), "val": int(rows["Val"].size),
                  "test": int(rows["Test"].size) if prep.do_test else 0,
                  "missing_from_cache": {k: v for k, v in fm.missing.items() if v}},
        "std_over_seeds": "population (ddof=0)",
        "speaker_overlaps": {f"{a}/{b}": v for (a, b), v in corpus.speaker_overlaps().items()},
        "constant_predictor_val": trivial,
        "seconds": seconds,
        "notes": notes,
    }


def input_caches(blocks, cache_dir: Path) -> list[dict]:
    """Provenance records of the caches a run's feature blocks were read from."""
    return [provenance.cache_record(b.name, b.cache, b.cache_fingerprint, cache_dir) for b in blocks]


def predict_run(run_dir: str | Path, corpus: Corpus, cache_dir: str | Path = "cache", split: str = "Test",
                out: str | Path | None = None) -> Path:
    """Apply a saved learn run to ``split`` of ``corpus`` (same extractors cached); write a submission.

    The country probabilities go beside it (``<out stem>_country_proba.csv``). A feature
    cache built with other settings than the run's is refused.
    """
    run_dir = Path(run_dir)
    if out is not None and Path(out).is_dir():
        raise ValueError(f"--out {out} is a folder; give the CSV file to write, e.g. --out {Path(out) / (split.lower() + '.csv')}")
    cfg = read_learn_record(run_dir)
    from exvo.predictions import run_task

    task = run_task(run_dir)
    if task != corpus.task:
        raise ValueError(f"{run_dir} learned task {task.name!r} but the corpus was read for task {corpus.task.name!r}; "
                         f"pass --task {task.name if task.name in _builtin_names() else '<its task file>'}")
    if "finetune" in cfg:
        raise ValueError(f"{run_dir} is an `exvo finetune` run (audio in, no feature cache); `exvo predict` applies "
                         "runs over cached features. Extract with its encoder (`exvo extract --checkpoint "
                         f"{run_dir}/models/encoder_seed0`) and train a learner on that cache instead")
    ids = corpus.split_ids(split)
    if not ids:
        raise CorpusError(f"{corpus.root} has no {split} rows to predict")
    specs = [block_spec(b) for b in cfg["features"]]
    from exvo.learn.features import open_cache

    for b in cfg["features"]:
        c = open_cache(b["name"], corpus, cache_dir)
        if c.config != b["cache_config"]:
            want = b["cache_config"]
            other = sorted(k for k in set(c.config) | set(want)
                           if k != "storage_dtype" and c.config.get(k) != want.get(k))
            raise CacheMismatch(
                f"the {b['name']} cache of {corpus.name} ({c.path}) was built with other settings than the one "
                f"{run_dir.name} was trained on ({config_diff(c.config, want)}; 'cache' is this corpus, "
                f"'requested' the run's). Re-extract it with the run's settings: `exvo extract --model {b['name']} "
                f"--data {corpus.root} --cache {cache_dir} --dtype {want.get('storage_dtype', 'float32')} "
                f"--overwrite`" + (f" with the options that made {', '.join(other)} as requested" if other else "")
                + "; or pass --cache DIR naming the cache the run was trained on")
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
    fitted = folds.load_fitted(run_dir / "models", registry.get(cfg["learner"]).load)
    try:
        fitted.predict(X[:1])        # the saved models must take the features the run's record names
    except (RuntimeError, ValueError) as e:
        raise FeatureError(
            f"the models in {run_dir / 'models'} do not take the {X.shape[1]} features that "
            f"{run_dir / 'config.json'} records ({', '.join(s.text for s in specs)}): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else e!r}. The folder holds model files of another run; make "
            "the run again with `exvo learn`, or predict with the run these models come from") from None
    emo, pro, agez = fitted.predict(X)
    pred = Predictions.from_proba(ids, *runs.ensemble(emo, pro, agez.astype(np.float64) * age_std + age_mean), task)
    out = Path(out) if out is not None else run_dir / f"predict_{corpus.name}_{split.lower()}.csv"
    pred.write(out)
    if pred.country_proba is not None:
        pred.write_proba(out.with_name(out.stem + f"_{task.group('class').name}_proba.csv"))
    return out


def _builtin_names() -> list[str]:
    from exvo.tasks import names

    return names()
