"""``exvo layers``: which layer? The layer sweep of one multi-layer cache in one command.

For the cache's layers (``NAME`` = all, or a subset ``NAME@a-b`` / ``NAME@a,b,c``), with the
protocol of ``exvo learn`` (the same preset, head, seeds, losses and selection rows of
:func:`exvo.learn.selection.selection_folds`):

1. every single layer probed with the learn run's MLP head — all layers × seeds (× folds)
   trained at once (:mod:`exvo.learn.layer_probes`), the models a loop of
   ``exvo learn --features NAME@l`` runs would train;
2. the learned weighted sum of the layers (learner ``wsum``, :mod:`exvo.learn.wsum`);
3. the concatenation of the ``top_k`` best layers, ranked on Train alone: by the selection
   S_MTL of the rows that chose the models (speaker folds: the out-of-fold Train predictions;
   ``--stop-on holdout``: the speaker hold-out), mean over seeds. Val never chooses anything (with ``--stop-on val`` it
   does, as in ``learn``: the sweep is then marked optimistic †).

Each is scored on Val: per-subtask scores (Emo-CCC, Cou-UAR, Age-MAE, S_MTL) as mean ± std over
seeds, and the seed ensemble's with speaker-bootstrap 95 % intervals
(:func:`exvo.metrics.speaker_bootstrap`, population CCC). Written to
``<runs>/layers/<name>/``: ``sweep.json`` (everything below), ``table.md``, ``layers.png`` and
``config.json`` (settings and provenance). ``exvo report`` shows it
(:mod:`exvo.learn.layers_report`).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from exvo.config import Seeds, SelectionConfig, TrainConfig
from exvo.corpus import Corpus, CorpusError
from exvo.learn.config import LearnConfig
from exvo.learn.layers_report import LAYERS_DIR, sweep_figure, table_markdown, table_text
from exvo.learn.layer_probes import seed_selection_scores
from exvo.learn.specs import FeatureError, FeatureSpec, parse_specs
from exvo.learn.wsum import WEIGHTS, weights_by_seed


@dataclass
class LayersConfig:
    """What ``exvo layers`` sweeps and how. ``features``: one multi-layer cache (``NAME`` = all its
    layers, or ``NAME@a-b`` / ``NAME@a,b,c``). ``preset``, ``arch``, ``seeds``, ``train``,
    ``select`` and the losses as :class:`~exvo.learn.config.LearnConfig` (None = the preset's).
    ``top_k``: layers concatenated (chosen on Train); ``weights``: the weighted sum's
    ``shared`` | ``task``; ``resamples``: speaker-bootstrap draws of the 95 % intervals;
    ``stack_params``: parameters per stack of layer probes (None: 2 M on the CPU, every layer in
    one stack on CUDA; 0: one stack), see :data:`exvo.learn.layer_probes.STACK_PARAMS`."""

    features: str
    preset: str = "default"
    arch: str | None = None
    seeds: Seeds = field(default_factory=Seeds)
    train: TrainConfig | None = None
    select: SelectionConfig | None = None
    loss: str | None = None
    emotion_loss: str | None = None
    age_loss: str | None = None
    loss_weights: tuple[float, float, float] | None = None
    top_k: int = 3
    weights: str = "shared"
    resamples: int = 500
    stack_params: int | None = None
    device: str = "auto"
    threads: int = 0

    def __post_init__(self):
        if self.train is None:
            self.train = self.piece_default("train", vars(self))
        if self.select is None:
            self.select = self.piece_default("select", vars(self))

    @staticmethod
    def piece_default(name: str, settings: dict):
        return LearnConfig.piece_default(name, dict(settings) | {"learner": "mlp"})

    def learn_config(self, learner: str = "mlp", options: dict | None = None) -> LearnConfig:
        """The ``exvo learn`` config of one candidate (the same protocol for all of them)."""
        return LearnConfig(features=[self.features], learner=learner, preset=self.preset, arch=self.arch,
                           seeds=self.seeds, train=self.train, select=self.select, loss=self.loss,
                           emotion_loss=self.emotion_loss, age_loss=self.age_loss, loss_weights=self.loss_weights,
                           device=self.device, threads=self.threads, options=dict(options or {}))

    def validate(self) -> None:
        if int(self.top_k) < 1:
            raise ValueError(f"--top-k must be >= 1 (layers concatenated), got {self.top_k}")
        if self.stack_params is not None and int(self.stack_params) < 0:
            raise ValueError(f"stack_params must be >= 0 (0 = every layer in one stack), got {self.stack_params}")
        if int(self.resamples) < 1:
            raise ValueError(f"--resamples must be >= 1 (speaker-bootstrap draws), got {self.resamples}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"--weights must be one of {WEIGHTS}, got {self.weights!r}")
        if self.select.on == "folds" and self.select.final == "refit":
            raise ValueError("exvo layers predicts with the fold models (--final ensemble); --final refit would "
                             "retrain every layer once more: run `exvo learn --final refit` on the layers you pick")
        self.learn_config("mlp").validate()
        self.learn_config("wsum", {"weights": self.weights}).validate()


@dataclass
class LayersResult:
    run_dir: Path
    record: dict
    notes: list[str] = field(default_factory=list)


def sweep_spec(text: str) -> FeatureSpec:
    """The one multi-layer spec of a sweep: ``NAME`` → ``NAME@all``; a single layer is refused."""
    specs = parse_specs(text)
    if len(specs) != 1:
        raise FeatureError(f"exvo layers sweeps the layers of one cache; got {len(specs)} feature sets "
                           f"({', '.join(s.text for s in specs)}): give one, e.g. --features wavlm")
    s = specs[0]
    if s.layer is None:
        return FeatureSpec(s.name, "all")
    if not s.multi:
        raise FeatureError(f"--features {s.text}: a sweep needs several layers; give {s.name} (all layers), "
                           f"{s.name}@a-b or {s.name}@a,b,c")
    return s


def default_name(spec: FeatureSpec, cfg: LayersConfig) -> str:
    from exvo.learn.runs import derive_name

    return derive_name([spec.text], "layers", None) + ("" if cfg.preset == "default" else f"_{cfg.preset}")


def candidate_scores(corpus: Corpus, prep, emo, pro, agez, seeds: list[int], resamples: int) -> dict:
    """Val scores of one candidate's ``(S, n_val, …)`` predictions: ``metrics.json``'s schema
    (per seed, mean ± std, seed ensemble) plus ``ci95`` of the ensemble (speaker bootstrap)."""
    from exvo.learn.runs import ensemble, metrics_json, score_quiet
    from exvo.metrics import speaker_bootstrap
    from exvo.predictions import Predictions

    fm, t = prep.fm, prep.targets
    ids = [fm.ids[k] for k in fm.rows["Val"]]
    age = agez.astype(np.float64) * t.age_std + t.age_mean
    per_seed = [score_quiet(Predictions.from_proba(ids, emo[j], pro[j], age[j]), corpus, "Val")[0]
                for j in range(len(seeds))]
    ens_pred = Predictions.from_proba(ids, *ensemble(emo, pro, age))
    out = metrics_json(per_seed, seeds, [None] * len(seeds), score_quiet(ens_pred, corpus, "Val")[0], "Val", len(ids))
    want = ens_pred.take(corpus.split_ids("Val"))
    e_t, c_t, a_t = corpus.labels("Val")
    spk = corpus.speakers[corpus.indices("Val")]
    out["ci95"] = speaker_bootstrap(e_t, want.emotions, c_t, want.country, a_t, want.age, spk, resamples=resamples)
    return out


def fit_like_learn(lc: LearnConfig, X: np.ndarray, prep, device: str, threads: int):
    """One learner trained as ``exvo learn`` trains it (one selection split, or the speaker folds'
    ensemble), nothing saved. Returns the fitted learner."""
    from exvo.learn import folds, registry

    learner = registry.get(lc.learner)
    data = registry.FitData(X, prep.targets, prep.fit_rows, prep.sel_rows, lc.seeds.list, lc.train,
                            lc.loss_config(), lc.select, device=device, threads=threads, echo=lambda m: None)
    if lc.select.on != "folds":
        return learner.fit(data, lc.learner_config())
    return folds.fit_folds(learner, data, lc.learner_config(), prep.folds, prep.fm.rows["Train"])


def fitted_candidate(corpus, prep, fitted, X: np.ndarray, seeds: list[int], resamples: int) -> dict:
    """Val scores and the Train-side selection score of a fitted learner (wsum, concatenation)."""
    t, rows = prep.targets, prep.fm.rows
    if len(prep.folds) == 1:
        sel = prep.folds[0][1]
        train = seed_selection_scores(t, sel, *fitted.predict(X[sel]))
    else:
        train = seed_selection_scores(t, rows["Train"], *fitted.oof)
    emo, pro, agez = fitted.predict(X[rows["Val"]])
    return {"train_score": float(np.mean(train)), "metrics": candidate_scores(corpus, prep, emo, pro, agez, seeds,
                                                                               resamples)}


def probe_every_layer(corpus, cfg: LayersConfig, lc: LearnConfig, prep, device: str, echo) -> list[dict]:
    """Step 1: every layer probed (stacks of layers × seeds × folds); per layer its Train-side
    score, best epochs and Val scores."""
    from exvo.learn.layer_probes import STACK_PARAMS, mlp_maker, probe_layers

    X3, fm = prep.fm.layer_block(), prep.fm
    budget = cfg.stack_params if cfg.stack_params is not None else (None if device.startswith("cuda") else STACK_PARAMS)
    echo(f"probing {X3.shape[1]} layers × {len(lc.seeds.list)} seeds with the {lc.learner_config().arch} MLP "
         f"({X3.shape[2]} features each)")
    got = probe_layers(mlp_maker(X3.shape[2], lc.learner_config().arch, lc.loss_config()), X3, prep.targets,
                       prep.folds, lc.seeds.list, lc.train, lc.select.monitor, fm.rows["Train"], fm.rows["Val"],
                       budget, device, echo)
    return [{"kind": "layer", "position": k, "train_score": g["train_score"], "best_epoch": g["best_epoch"],
             "metrics": candidate_scores(corpus, prep, *g["val"], lc.seeds.list, cfg.resamples)}
            for k, g in enumerate(got)]


def run_sweep(corpus, cfg: LayersConfig, prep, device: str, threads: int, echo) -> dict:
    """Steps 1-3 on prepared features; the ``sweep.json`` record (without settings)."""
    lc = cfg.learn_config("mlp")
    X3 = prep.fm.layer_block()
    layer_ids = [k for b in prep.fm.blocks for k in b.used]
    t0 = time.perf_counter()
    cands = probe_every_layer(corpus, cfg, lc, prep, device, echo)
    t_probe = time.perf_counter() - t0
    for c in cands:
        c["layer"] = layer_ids[c["position"]]
        c["label"] = f"layer {c['layer']}"
    order = sorted(range(len(cands)), key=lambda p: (-cands[p]["train_score"], p))
    k = min(int(cfg.top_k), len(cands))
    top = sorted(order[:k])
    echo("layers ranked on Train (selection S_MTL): " + " ".join(f"{layer_ids[p]}:{cands[p]['train_score']:.3f}"
                                                                 for p in order))
    t0 = time.perf_counter()
    ws = fit_like_learn(cfg.learn_config("wsum", {"weights": cfg.weights}), X3, prep, device, threads)
    wsum = fitted_candidate(corpus, prep, ws, X3, lc.seeds.list, cfg.resamples)
    record = (ws.parts[0] if hasattr(ws, "parts") else ws).weights_record()   # the fold models: one stack
    seeds, W = weights_by_seed(record)                                        # (S, T, L)
    wsum |= {"kind": "wsum", "label": f"weighted sum ({cfg.weights})", "weights": {
        "tasks": record["tasks"], "seeds": seeds, "mean": W.mean(0).tolist(), "std": W.std(0).tolist()}}
    t_wsum = time.perf_counter() - t0
    t0 = time.perf_counter()
    Xc = np.ascontiguousarray(X3[:, top].reshape(len(X3), -1))
    cat = fitted_candidate(corpus, prep, fit_like_learn(lc, Xc, prep, device, threads), Xc, lc.seeds.list,
                           cfg.resamples)
    del Xc
    cat |= {"kind": "concat", "label": f"best {k} concatenated", "layers": [layer_ids[p] for p in top]}
    return {"layers": layer_ids, "ranking": [layer_ids[p] for p in order], "top_k": [layer_ids[p] for p in top],
            "candidates": cands + [wsum, cat],
            "seconds": {"probes": round(t_probe, 2), "wsum": round(t_wsum, 2),
                        "concat": round(time.perf_counter() - t0, 2)}}


def sweep(corpus: Corpus, cfg: LayersConfig, cache_dir: str | Path = "cache", runs_dir: str | Path = "runs",
          name: str | None = None, echo: Callable[[str], None] = print, overwrite: bool = False) -> LayersResult:
    """Run the layer sweep of ``cfg.features`` and write ``<runs_dir>/layers/<name>/``."""
    from exvo.device import resolve_device
    from exvo.learn.api import input_caches, prepare
    from exvo.learn.threads import resolve_threads, torch_threads
    from exvo.runs import provenance
    from exvo.runs.store import RunWriter, check_free, check_name
    from exvo.version import __version__

    t_start = time.perf_counter()
    from exvo.tasks import require_exvo

    require_exvo(corpus, "exvo layers (the layer sweep scores ExVo-MTL)")
    cfg.validate()
    spec = sweep_spec(cfg.features)
    lc = cfg.learn_config("mlp")
    if not corpus.has_labels("Val"):
        raise CorpusError(f"{corpus.root} has no labelled Val clips; the sweep scores every layer on Val")
    name = check_name(name or default_name(spec, cfg))
    root = Path(runs_dir) / LAYERS_DIR
    check_free(root, name, overwrite)
    notes: list[str] = []

    def note(msg: str) -> None:
        notes.append(msg)
        echo(msg)

    device, threads = resolve_device(cfg.device), resolve_threads(cfg.threads)
    with torch_threads(threads):
        prep = prepare(corpus, lc, [spec], Path(cache_dir), echo, note)
        if lc.select.optimistic:
            note("note: --stop-on val: Val chose the epochs and ranked the layers, so the sweep's Val scores are "
                 "optimistic (†)")
        rec = run_sweep(corpus, cfg, prep, device, threads, echo)
    rec = {"kind": "layers", "name": name, "features": spec.text, "cache": prep.fm.blocks[0].name,
           "selection": {"on": lc.select.on, "description": lc.select.describe(), "optimistic": lc.select.optimistic},
           "seeds": lc.seeds.list, "head": lc.learner_config().arch, **rec, "notes": notes}
    with RunWriter(root, name, overwrite=overwrite) as w:
        w.json("sweep.json", rec)
        sweep_figure(rec, w.file("layers.png"))
        w.file("table.md").write_text(table_markdown(rec) + "\n")
        config = {"kind": "layers", "exvo_version": __version__, "name": name,
                  "corpus": {"name": corpus.name, "root": str(corpus.root)},
                  "features": [b.to_json() for b in prep.fm.blocks], "device": device, "threads": threads,
                  "layers_config": asdict(cfg), "learn_config": asdict(lc),
                  "seconds": {**rec["seconds"], "total": round(time.perf_counter() - t_start, 2)}}
        final = w.commit(config, provenance.inputs(corpus, caches=input_caches(prep.fm.blocks, Path(cache_dir))))
    echo(table_text(rec))
    return LayersResult(final, rec, notes)

