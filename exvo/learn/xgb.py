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

from exvo.learn.targets import N_COUNTRIES

TASKS = ("emo", "cou", "age")


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
              echo: Callable[[str], None] | None = None, age_loss: str = "mse") -> list[dict]:
    """Fit the three boosters for every seed. Returns ``[{"emo": model, "cou": ..., "age": ...,
    "best_iteration": {...}}]`` per seed. Labels are indexed by the rows of ``X``."""
    import xgboost as xgb

    present = np.unique(country[fit_rows])
    if present.size != N_COUNTRIES or not np.array_equal(present, np.arange(N_COUNTRIES)):
        # multi:softprob needs every class in the fitted rows to keep 4 outputs
        raise ValueError(f"the XGBoost fit rows contain countries {present.tolist()}; all of 0-{N_COUNTRIES - 1} "
                         "are needed (too few Train speakers?)")
    if stop_rows.size == 0:
        raise ValueError("XGBoost early stopping needs selection rows; none were given")
    Xf, Xs = X[fit_rows], X[stop_rows]

    def ev(y):        # fixed rounds (a refit): nothing to stop on
        return {} if cfg.rounds is not None else {"eval_set": [(Xs, y[stop_rows])]}
    out = []
    for seed in seeds:
        m_emo = xgb.XGBRegressor(multi_strategy="one_output_per_tree", **_params(cfg, seed, "emo"))
        m_emo.fit(Xf, emotions[fit_rows], verbose=False, **ev(emotions))
        m_cou = xgb.XGBClassifier(objective="multi:softprob", num_class=N_COUNTRIES, **_params(cfg, seed, "cou"))
        m_cou.fit(Xf, country[fit_rows], verbose=False, **ev(country))
        m_age = xgb.XGBRegressor(objective="reg:absoluteerror" if age_loss == "mae" else "reg:squarederror",
                                 **_params(cfg, seed, "age"))
        m_age.fit(Xf, age_z[fit_rows], verbose=False, **ev(age_z))
        best = {t: (int(cfg.rounds[t]) - 1 if cfg.rounds is not None else
                    int(getattr(m, "best_iteration", cfg.n_estimators - 1)))
                for t, m in zip(TASKS, (m_emo, m_cou, m_age))}
        if echo:
            echo(f"  seed {seed}: best iterations " + ", ".join(f"{k} {v}" for k, v in best.items()))
        out.append({"emo": m_emo, "cou": m_cou, "age": m_age, "best_iteration": best})
    return out


def predict_xgb(models: list[dict], X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(emotions (S,n,10), country probabilities (S,n,4), standardised age (S,n))``."""
    emo = np.stack([np.clip(m["emo"].predict(X), 0.0, 1.0).reshape(len(X), -1) for m in models])
    pro = np.stack([m["cou"].predict_proba(X) for m in models])
    age = np.stack([m["age"].predict(X) for m in models])
    return emo.astype(np.float32), pro.astype(np.float32), age.astype(np.float32)


def save_xgb(models: list[dict], folder: Path, seeds, cfg: XGBConfig) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, m in zip(seeds, models):
        for t in TASKS:
            m[t].save_model(folder / f"xgb_seed{seed}_{t}.ubj")
    (folder / "xgb.json").write_text(json.dumps({"seeds": list(seeds), "config": asdict(cfg),
                                                 "best_iteration": [m["best_iteration"] for m in models]}, indent=1))


def load_xgb(folder: Path) -> list[dict]:
    import xgboost as xgb

    meta = json.loads((folder / "xgb.json").read_text())
    out = []
    for seed in meta["seeds"]:
        m = {}
        for t in TASKS:
            m[t] = xgb.XGBClassifier() if t == "cou" else xgb.XGBRegressor()
            m[t].load_model(folder / f"xgb_seed{seed}_{t}.ubj")
        out.append(m)
    return out


class XGBFitted:
    def __init__(self, models: list[dict], seeds, cfg: XGBConfig):
        self.models, self.seeds, self.cfg = models, list(seeds), cfg
        self.best_epoch = [None] * len(self.seeds)
        self.history = None
        self.info = {"best_iteration": [m.get("best_iteration") for m in models]}

    def predict(self, X: np.ndarray):
        return predict_xgb(self.models, X)

    def save(self, folder: Path) -> None:
        save_xgb(self.models, folder, self.seeds, self.cfg)


def fit(data, cfg: XGBConfig) -> XGBFitted:
    """Registry ``fit``: boosters on ``data.fit_rows``, early stopping on ``data.select_rows``."""
    if data.loss.emotions != "mse":
        raise ValueError(f"--learner xgb fits emotions with squared error; --emotion-loss {data.loss.emotions} "
                         "applies to torch learners only")
    cfg = replace(cfg, device="cuda" if data.device == "cuda" else "cpu", n_jobs=cfg.n_jobs or int(data.threads))
    t = data.targets
    models = train_xgb(data.X, data.fit_rows, data.select_rows, t.emotions, t.country, t.age_z, data.seeds, cfg,
                       echo=data.echo, age_loss=data.loss.age)
    return XGBFitted(models, data.seeds, cfg)


def load(folder: Path, device: str = "cpu") -> XGBFitted:
    meta = json.loads((Path(folder) / "xgb.json").read_text())
    known = {f.name for f in fields(XGBConfig)}      # runs of older versions saved other keys too
    return XGBFitted(load_xgb(Path(folder)), meta["seeds"],
                     XGBConfig(**{k: v for k, v in meta["config"].items() if k in known}))
