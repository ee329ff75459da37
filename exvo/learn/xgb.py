"""XGBoost learner: one booster per subtask and seed.

* emotions: one multi-output regressor for all 10 intensities (``multi_strategy=
  "one_output_per_tree"``; ``"multi_output_tree"`` was 2× slower on the demo), squared
  error, predictions clipped to [0, 1];
* country: ``multi:softprob`` over the 4 countries;
* age: squared-error regression on standardised age, reported in years.

Early stopping (``early_stopping_rounds``) watches the run's selection rows — the
speaker-disjoint hold-out of Train that every learner uses (:mod:`exvo.learn.selection`), or
Val with ``--stop-on val`` — fitting on the rest. Seeds change only the row and column
subsampling (``subsample``/``colsample_bytree`` 0.8, ``random_state=seed``). Defaults are
modest (≤ 100 trees of depth 4, learning rate 0.15) so that demo runs are quick; threads
follow the run's ``--threads`` (see ``benchmarks/README.md`` for the measurements).
Losses: squared error for emotions and age, or absolute error for age (``--age-loss mae``);
the 1 − CCC emotion loss and loss weighting do not apply to separate boosters.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np

TASKS = ("emo", "cou", "age")
SLOT_OF = {"emo": "intensities", "cou": "class", "age": "value"}
"""The booster of each task slot (:mod:`exvo.tasks`); a slot the task lacks has no booster."""


@dataclass
class XGBConfig:
    """Booster settings (``exvo learn --learner xgb --opt KEY=VALUE``). ``n_jobs``: threads per
    booster, 0 = the run's ``--threads``. ``max_bin``: histogram bins per feature (XGBoost's
    default is 256; 64 made the demo ComParE fit (6,373 dims) 3.1× cheaper at the same Val
    score). ``colsample_bytree``: features sampled per tree."""

    n_estimators: int = 100
    max_depth: int = 4
    learning_rate: float = 0.15
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    max_bin: int = 64             # 3.1x less CPU than XGBoost's 256 at the same Val score (benchmarks/README.md)
    early_stopping_rounds: int = 20
    device: str = "cpu"           # cpu | cuda (set from the run's --device)
    n_jobs: int = 0
    rounds: dict | None = None    # {emo, cou, age: trees}: fixed per head, no early stopping (a fold refit)


def _params(cfg: XGBConfig, seed: int, task: str) -> dict:
    fixed = cfg.rounds is not None
    return dict(n_estimators=int(cfg.rounds[task]) if fixed else cfg.n_estimators, max_depth=cfg.max_depth,
                learning_rate=cfg.learning_rate, subsample=cfg.subsample, colsample_bytree=cfg.colsample_bytree,
                tree_method="hist", max_bin=cfg.max_bin, device=cfg.device, random_state=int(seed),
                early_stopping_rounds=None if fixed else cfg.early_stopping_rounds, n_jobs=cfg.n_jobs or None)


def train_xgb(X: np.ndarray, fit_rows: np.ndarray, stop_rows: np.ndarray, emotions: np.ndarray,
              country: np.ndarray, age_z: np.ndarray, seeds, cfg: XGBConfig,
              echo: Callable[[str], None] | None = None, age_loss: str = "mse", task=None) -> list[dict]:
    """Fit the boosters of ``task``'s slots (None → ExVo-MTL: all three) for every seed. Returns
    ``[{"emo": model, "cou": ..., "age": ..., "best_iteration": {...}}]`` per seed. Labels are
    indexed by the rows of ``X``."""
    import xgboost as xgb

    from exvo.tasks import get_task

    task = get_task(task)
    use = [k for k in TASKS if task.has(SLOT_OF[k])]
    n_cls = task.n_classes
    present = np.unique(country[fit_rows])
    full = present.size == n_cls and np.array_equal(present, np.arange(n_cls))
    if "cou" in use and not full and task.name == "exvo-mtl":
        # multi:softprob needs every class in the fitted rows to keep all outputs
        raise ValueError(f"the XGBoost fit rows contain countries {present.tolist()}; all of 0-{n_cls - 1} "
                         "are needed (too few Train speakers?)")
    # another task's class absent from the fit rows: the booster learns the present ones (codes mapped to
    # 0..P-1) and predicts probability 0 for the others
    cls_rows = stop_rows[np.isin(country[stop_rows], present)]
    y_cls = np.searchsorted(present, country).clip(0, max(present.size - 1, 0))
    if stop_rows.size == 0:
        raise ValueError("XGBoost early stopping needs selection rows; none were given")
    Xf, Xs = X[fit_rows], X[stop_rows]

    def ev(y):        # fixed rounds (a refit): nothing to stop on
        return {} if cfg.rounds is not None else {"eval_set": [(Xs, y[stop_rows])]}
    out = []
    for seed in seeds:
        m = {}
        if "emo" in use:
            m["emo"] = xgb.XGBRegressor(multi_strategy="one_output_per_tree", **_params(cfg, seed, "emo"))
            m["emo"].fit(Xf, emotions[fit_rows], verbose=False, **ev(emotions))
        if "cou" in use and full:
            m["cou"] = xgb.XGBClassifier(objective="multi:softprob", num_class=n_cls, **_params(cfg, seed, "cou"))
            m["cou"].fit(Xf, country[fit_rows], verbose=False, **ev(country))
        elif "cou" in use:
            m["cou"] = xgb.XGBClassifier(objective="multi:softprob", num_class=present.size, **_params(cfg, seed, "cou"))
            m["cou"].fit(Xf, y_cls[fit_rows], verbose=False,
                         **({} if cfg.rounds is not None else {"eval_set": [(X[cls_rows], y_cls[cls_rows])]}))
            m["classes"] = present.tolist()
        if "age" in use:
            m["age"] = xgb.XGBRegressor(objective="reg:absoluteerror" if age_loss == "mae" else "reg:squarederror",
                                        **_params(cfg, seed, "age"))
            m["age"].fit(Xf, age_z[fit_rows], verbose=False, **ev(age_z))
        best = {t: (int(cfg.rounds[t]) - 1 if cfg.rounds is not None else
                    int(getattr(m[t], "best_iteration", cfg.n_estimators - 1)))
                for t in use}
        if echo:
            echo(f"  seed {seed}: best iterations " + ", ".join(f"{k} {v}" for k, v in best.items()))
        out.append(m | {"best_iteration": best})
    return out


def predict_xgb(models: list[dict], X: np.ndarray, task=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(emotions (S,n,k), class probabilities (S,n,C), standardised age (S,n))`` (ExVo: k=10, C=4); a
    slot the task lacks: width 0, one placeholder class (probability 1), zeros."""
    from exvo.tasks import get_task

    task = get_task(task)
    n = len(X)
    lo, hi = task.group("intensities").range if task.has("intensities") else (0.0, 1.0)
    emo = np.stack([np.clip(m["emo"].predict(X), lo, hi).reshape(n, -1) if "emo" in m else np.zeros((n, 0))
                    for m in models])
    pro = np.stack([_proba(m, X, task.n_classes) if "cou" in m else np.ones((n, 1)) for m in models])
    age = np.stack([m["age"].predict(X) if "age" in m else np.zeros(n) for m in models])
    return emo.astype(np.float32), pro.astype(np.float32), age.astype(np.float32)


def _proba(m: dict, X: np.ndarray, n_cls: int) -> np.ndarray:
    """``(n, n_cls)`` class probabilities; classes the booster never saw (``m["classes"]``) get 0."""
    p = m["cou"].predict_proba(X)
    if "classes" not in m:
        return p
    out = np.zeros((len(X), n_cls), dtype=p.dtype)
    out[:, m["classes"]] = p
    return out


def save_xgb(models: list[dict], folder: Path, seeds, cfg: XGBConfig, task=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, m in zip(seeds, models):
        for t in TASKS:
            if t in m:
                m[t].save_model(folder / f"xgb_seed{seed}_{t}.ubj")
    rec = {"seeds": list(seeds), "config": asdict(cfg), "best_iteration": [m["best_iteration"] for m in models]}
    if task is not None and task.name != "exvo-mtl":
        rec["task"] = task.to_dict()
        rec["classes"] = [m.get("classes") for m in models]
    (folder / "xgb.json").write_text(json.dumps(rec, indent=1))


def load_xgb(folder: Path) -> list[dict]:
    import xgboost as xgb

    from exvo.tasks import get_task

    meta = json.loads((folder / "xgb.json").read_text())
    task = get_task(meta.get("task"))
    out = []
    for seed in meta["seeds"]:
        m = {}
        for t in (t for t in TASKS if task.has(SLOT_OF[t])):
            m[t] = xgb.XGBClassifier() if t == "cou" else xgb.XGBRegressor()
            m[t].load_model(folder / f"xgb_seed{seed}_{t}.ubj")
        if (meta.get("classes") or [None] * len(meta["seeds"]))[len(out)] is not None:
            m["classes"] = meta["classes"][len(out)]
        out.append(m)
    return out


class XGBFitted:
    def __init__(self, models: list[dict], seeds, cfg: XGBConfig, task=None):
        self.models, self.seeds, self.cfg, self.task = models, list(seeds), cfg, task
        self.best_epoch = [None] * len(self.seeds)
        self.history = None
        self.info = {"best_iteration": [m.get("best_iteration") for m in models]}

    def predict(self, X: np.ndarray):
        return predict_xgb(self.models, X, self.task)

    def save(self, folder: Path) -> None:
        save_xgb(self.models, folder, self.seeds, self.cfg, self.task)


def fit(data, cfg: XGBConfig) -> XGBFitted:
    """Registry ``fit``: boosters on ``data.fit_rows``, early stopping on ``data.select_rows``."""
    if data.loss.emotions != "mse":
        raise ValueError(f"--learner xgb fits emotions with squared error; --emotion-loss {data.loss.emotions} "
                         "applies to torch learners only")
    cfg = replace(cfg, device="cuda" if data.device == "cuda" else "cpu", n_jobs=cfg.n_jobs or int(data.threads))
    t = data.targets
    models = train_xgb(data.X, data.fit_rows, data.select_rows, t.emotions, t.country, t.age_z, data.seeds, cfg,
                       echo=data.echo, age_loss=data.loss.age, task=t.task)
    return XGBFitted(models, data.seeds, cfg, t.task)


def load(folder: Path, device: str = "cpu") -> XGBFitted:
    meta = json.loads((Path(folder) / "xgb.json").read_text())
    known = {f.name for f in fields(XGBConfig)}      # runs of older versions saved other keys too
    from exvo.tasks import get_task

    return XGBFitted(load_xgb(Path(folder)), meta["seeds"],
                     XGBConfig(**{k: v for k, v in meta["config"].items() if k in known}), get_task(meta.get("task")))
