"""A task CNN's own clip decisions as a fusion source (``exvo cnn-posteriors``).

Idiap's hybrid systems (paper 001, Table 2, "Hybrid Experiments") take the country from the
country CNN itself: their hybrid country UARs (.437 / .456) are Table 1's softmax UARs of
Raw/Zff(ExVo)-CR (43.70 / 45.65), the clip decision being the argmax of the summed frame
posteriors. :func:`cnn_source` writes those posteriors as a run folder that ``exvo fuse``
reads like any other: the CNN(s) the extractor trained (``<cache>/<corpus>/models/``), their
clip posteriors from :func:`exvo.extract.cnn.train.clip_posteriors` (the very code that scores
Table 1), one seed per CNN seed.

Partial source: a country CNN predicts the country only. The run's ``config.json`` says so
(``"subtasks": ["country"]``) and ``fuse`` considers it for that subtask alone. Its files are
still complete submissions (the format has no empty cells): the columns of the subtasks it
does not predict hold the trivial predictor (the Train mean of each emotion and of age), and
its ``metrics.json`` reports the country only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from exvo.corpus import Corpus
from exvo.extract.cnn.extractor import BUILTIN, model_file
from exvo.extract.cnn.files import load_model
from exvo.extract.cnn.train import clip_posteriors
from exvo.extract.zff import ZFFConfig
from exvo.metrics import COUNTRIES, uar
from exvo.predictions import Predictions, SeedPredictions, save_seed_predictions, save_split
from exvo.runs import provenance
from exvo.runs.store import RunWriter, check_name

KIND = "cnn-posteriors"
SUBTASK_OF_LABEL = {"Country": "country"}
"""The label columns whose CNN posteriors are a fusion source, and the subtask each gives.
(An emotion CNN's classes are hard labels of the strongest emotion, not the 10 intensities.)"""


@dataclass
class CNNSource:
    name: str
    path: Path
    subtasks: list[str]
    seeds: list[int]
    val_uar: list[float]          # per CNN seed: the clip UAR of its own decisions on Val


def _models(corpus: Corpus, cache_dir: Path, extractor: str) -> list:
    """The CNNs ``exvo extract --model extractor`` trained on ``corpus`` (one per CNN seed)."""
    if extractor not in BUILTIN:
        raise ValueError(f"--model {extractor!r}: expected one of the task CNNs {', '.join(BUILTIN)}")
    out, s = [], 0
    while (p := model_file(cache_dir, corpus.name, extractor, s)).is_file():
        out.append(load_model(p))
        s += 1
    if not out:
        raise FileNotFoundError(f"no trained {extractor} model at {model_file(cache_dir, corpus.name, extractor)}; "
                                f"run `exvo extract --model {extractor}` on this corpus (same --cache) first")
    col = out[0].meta.get("label_column")
    if col not in SUBTASK_OF_LABEL:
        raise ValueError(f"{extractor} was trained on {col!r} labels; only a CNN trained on "
                         f"{', '.join(SUBTASK_OF_LABEL)} gives a subtask's predictions (an emotion CNN's classes are "
                         "the strongest emotion, not the 10 intensities)")
    if list(out[0].meta.get("classes", [])) != list(COUNTRIES):
        raise ValueError(f"{extractor}'s classes are {out[0].meta.get('classes')}; expected {list(COUNTRIES)}")
    return out


def _posteriors(lm, corpus: Corpus, split: str, device: str, echo) -> tuple[list[str], np.ndarray, list[str]]:
    """``(ids, (n, 4) clip posteriors, ids of unreadable clips)`` of one CNN on one split; an
    unreadable clip gets the uniform distribution (and is named)."""
    rows = corpus.indices(split)
    z = lm.meta.get("zff_config")
    kept, _, post = clip_posteriors(lm.model, corpus, rows, lm.meta["signal"], ZFFConfig(**z) if z else None,
                                    device, echo)
    full = np.full((len(rows), len(COUNTRIES)), 1.0 / len(COUNTRIES))
    at = {int(r): k for k, r in enumerate(rows)}
    for r, p in zip(kept, post):
        full[at[r]] = p / p.sum()
    missing = [corpus.ids[r] for r in rows if int(r) not in set(kept)]
    return [corpus.ids[r] for r in rows], full, missing


def cnn_source(corpus: Corpus, extractor: str, cache_dir: str | Path = "cache", runs_dir: str | Path = "runs",
               name: str | None = None, device: str = "cpu", echo: Callable[[str], None] = print) -> CNNSource:
    """Write the clip posteriors of ``extractor``'s CNN(s) on Val (and Test, when the corpus has
    it) as run ``<runs_dir>/<name>`` (default ``<extractor>-softmax``); see the module docstring."""
    cache_dir, runs_dir = Path(cache_dir), Path(runs_dir)
    name = check_name(name or f"{extractor}-softmax")
    models = _models(corpus, cache_dir, extractor)
    subtask = SUBTASK_OF_LABEL[models[0].meta["label_column"]]
    for lm in models:
        lm.model.to(device).eval()
    tr = corpus.indices("Train")
    emo_mean, age_mean = corpus.emotions[tr].mean(0), float(corpus.age[tr].mean())
    seeds = [int(lm.meta.get("train_config", {}).get("seed", k)) for k, lm in enumerate(models)]
    with RunWriter(runs_dir, name, replace_kind=KIND) as writer:
        return _write(writer, corpus, models, extractor, subtask, seeds, emo_mean, age_mean, device, echo, runs_dir, name)


def _write(writer: RunWriter, corpus: Corpus, models: list, extractor: str, subtask: str, seeds: list[int],
           emo_mean: np.ndarray, age_mean: float, device: str, echo, runs_dir: Path, name: str) -> CNNSource:
    """Posteriors of every split into ``writer``'s folder, then commit."""
    notes, val_uar, per_seed, ens = [], [], [], None
    for split in ("Val", "Test"):
        if not corpus.split_ids(split):
            continue
        stack = []
        for lm in models:
            ids, post, missing = _posteriors(lm, corpus, split, device, echo)
            if missing:
                notes.append(f"{split}: {len(missing)} unreadable clip(s) got the uniform distribution: {missing[:5]}")
            stack.append(post)
        n = len(ids)
        sp = SeedPredictions(ids, seeds, np.broadcast_to(emo_mean, (len(models), n, emo_mean.size)).copy(),
                             np.stack(stack), np.full((len(models), n), age_mean))
        save_seed_predictions(sp, writer.path, split)
        save_split(sp.ensemble(), writer.path, split)
        if split == "Val":
            y = corpus.country[corpus.indices("Val")]
            val_uar = [uar(y, p.argmax(1)) for p in stack]
            per_seed = [{"seed": s, "uar": u} for s, u in zip(seeds, val_uar)]
            ens = uar(y, np.mean(stack, 0).argmax(1))
    metrics = {"split": "Val", "subtasks": [subtask], "per_seed": per_seed,
               "summary": {"uar": {"mean": float(np.mean(val_uar)) if val_uar else None,
                                   "std": float(np.std(val_uar)) if len(val_uar) > 1 else None, "n": len(val_uar)}},
               "ensemble": {"uar": ens} if ens is not None else {},
               "note": ("the CNN's own clip decisions (argmax of the summed frame posteriors; paper 001 Table 1); "
                        "the other subtasks' columns hold the Train means and are not predictions"), "notes": notes}
    writer.json("metrics.json", metrics)
    config = {"kind": KIND, "extractor": extractor, "subtasks": [subtask], "learner": "cnn-softmax",
              "features": [extractor], "seeds": seeds, "signal": models[0].meta["signal"],
              "weights_sha256": [lm.sha256 for lm in models], "trained_on": models[0].meta.get("trained_on"),
              "filled_with_train_mean": [s for s in ("emotion", "age") if s != subtask],
              "created_unix": time.time()}
    writer.commit(config, provenance.inputs(corpus))
    if val_uar:
        echo(f"{name}: {extractor}'s own clip decisions, {subtask} only: Val UAR "
             + (f"{np.mean(val_uar):.3f} ± {np.std(val_uar):.3f} over {len(val_uar)} CNN seeds" if len(val_uar) > 1
                else f"{val_uar[0]:.3f} (1 CNN)") + f" → {runs_dir / name}")
    return CNNSource(name, runs_dir / name, [subtask], seeds, val_uar)
