"""The one run reader: :class:`Run` (what :func:`exvo.load_run` returns), and finding runs.

A run folder ``<runs>/<name>/`` (``exvo learn``, ``fuse``, ``fewshot``, ``verify``,
``finetune``; see :mod:`exvo.runs.store`) holds ``config.json`` (``{"kind": ..., ...,
"provenance": ...}``), ``metrics.json`` (Val scores), ``val.csv`` / ``test.csv`` and, for
most kinds, ``per_seed/<split>.npz``. Readers here are tolerant of missing files and say
what is absent; every reader of runs (report, fuse, predict, fid ``--classifier``,
reproduce) opens them through :meth:`Run.open`, and :attr:`Run.stale` tells whether what a
run was made from still holds (:mod:`exvo.runs.provenance`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from exvo.config import from_dict
from exvo.corpus import listing
from exvo.predictions import PredictionError, Predictions, load_seed_predictions, load_split, split_files
from exvo.runs.provenance import Checker

MAX_SHOWN = 5


@dataclass
class Run:
    """One run folder.

    ``record``: its ``config.json`` as a dict (``{}`` when missing); ``metrics``: its
    ``metrics.json``; :attr:`config`: the settings as the dataclass that made it
    (:class:`~exvo.learn.api.LearnConfig`, :class:`~exvo.fewshot.api.FewShotConfig`, …);
    :attr:`scores`: a DataFrame, one row per seed plus ``mean`` and ``std``;
    :meth:`predictions`; :attr:`stale`: why its inputs or files moved on (empty: fresh).
    """

    name: str
    path: Path
    record: dict
    metrics: dict
    checker: Checker | None = field(default=None, repr=False, compare=False)

    @classmethod
    def open(cls, path: str | Path, checker: Checker | None = None) -> "Run":
        path = Path(path)
        return cls(path.name, path, read_json(path / "config.json") or {}, read_json(path / "metrics.json") or {},
                   checker)

    @property
    def kind(self) -> str:
        """``learn``, ``fusion``, ``fewshot``, ``verify``, ``finetune`` or ``?`` (no config.json)."""
        return str(self.record.get("kind", "?"))

    @property
    def config(self):
        """The run's settings as their dataclass (``from_dict`` of what was saved); the raw
        record for kinds without one."""
        return config_of(self.record)

    @property
    def provenance(self) -> dict | None:
        p = self.record.get("provenance")
        return p if isinstance(p, dict) else None

    @property
    def stale(self) -> list[str]:
        """Reasons this run no longer reflects its inputs (empty list: up to date). A run made
        before provenance was recorded has none to check (:attr:`provenance` is None)."""
        if self.checker is None:
            self.checker = Checker()
        return self.checker.reasons(self.path)

    @property
    def subtasks(self) -> tuple[str, ...]:
        """The subtasks this run predicts: all three, or those its ``config.json`` names (a
        partial source such as a country CNN's own posteriors, :mod:`exvo.fusion.cnn_source`)."""
        s = self.record.get("subtasks")
        return tuple(s) if isinstance(s, list) and s else ("emotion", "country", "age")

    @property
    def fixed_model(self) -> bool:
        """One trained model whose predictions no learner seed changes (a CNN's own posteriors)."""
        return self.kind == "cnn-posteriors"

    def has(self, split: str) -> bool:
        return split_files(self.path, split)[0].is_file()

    def load(self, split: str) -> Predictions:
        return load_split(self.path, split)

    def predictions(self, split: str = "Val", per_seed: bool = False):
        """``Predictions`` of the seed ensemble (``val.csv``), or with ``per_seed`` the
        :class:`~exvo.predictions.SeedPredictions` of every seed (None when not kept)."""
        split = split.capitalize()
        return load_seed_predictions(self.path, split) if per_seed else self.load(split)

    @property
    def scores(self):
        """``pandas.DataFrame`` indexed by seed (then ``mean``, ``std``; ``ensemble`` where the
        run has one) with its Val metrics (``ccc``, ``uar``, ``mae``, ``s_mtl`` for ExVo-MTL runs; another
        task's: its groups' and ``score``)."""
        import pandas as pd

        rows = [r for r in self.metrics.get("per_seed") or [] if isinstance(r, dict)]
        keys = [k for k in ("ccc", "uar", "mae", "s_mtl", "score", "hmean_uar", "uar_seen", "uar_unseen")
                if any(isinstance(r.get(k), (int, float)) for r in rows)]
        df = pd.DataFrame([{k: r.get(k) for k in keys} for r in rows],
                          index=pd.Index([r.get("seed", i) for i, r in enumerate(rows)], name="seed"), dtype=float)
        summary = self.metrics.get("summary") or {}
        extra = {"mean": {k: (summary.get(k) or {}).get("mean") for k in keys},
                 "std": {k: (summary.get(k) or {}).get("std") for k in keys}}
        ens = self.metrics.get("ensemble")
        if isinstance(ens, dict):
            extra["ensemble"] = {k: ens.get(k) for k in keys}
        return pd.concat([df, pd.DataFrame.from_dict(extra, orient="index", dtype=float)])


def load_run(path: str | Path, cache_dir: str | Path | None = None) -> Run:
    """Open one run folder; ``cache_dir``: where its input caches are now (default: where they
    were when it was made), for :attr:`Run.stale`."""
    path = Path(path)
    if not (path / "config.json").is_file() and not (path / "val.csv").is_file():
        raise FileNotFoundError(f"{path} is not a run folder (no config.json or val.csv); pass a folder made by "
                                "`exvo learn`, `exvo fuse`, `exvo fewshot` or `exvo verify`")
    return Run.open(path, Checker(cache_dir))


def read_learn_record(run_dir: Path) -> dict:
    """The ``config.json`` of a learn run, for applying it (predict, fid ``--classifier``);
    anything else is refused with what it is and what to use instead."""
    p = Path(run_dir) / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no {p}); pass a folder made by `exvo learn`")
    try:
        cfg = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p} cannot be read as JSON ({e}); the run folder is damaged: run `exvo learn` again") from None
    if cfg.get("kind") == "fusion":
        test = Path(run_dir) / "test.csv"
        raise ValueError(
            f"{run_dir} is a fusion run: it has no model to apply, only the predictions it fused. "
            + (f"Its Test predictions are {test}" if test.is_file() else
               "It has no test.csv (a source run lacked Test predictions): predict Test with its source runs "
               "(`exvo predict RUN --split Test`) and fuse again")
            + "; to predict another corpus, predict with each source run (config.json: sources) and fuse those")
    if cfg.get("kind") != "learn":
        raise ValueError(f"{run_dir} is a {cfg.get('kind')!r} run; `exvo predict` applies `exvo learn` runs only")
    return cfg


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None when the file is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def feature_specs(config: dict, resolved: bool = False) -> list[str]:
    """The run's feature specs as given (``["wavlm@best", "egemaps"]``), [] when unknown.

    ``config["features"]`` may hold spec strings or the learner's feature blocks
    (dicts with ``spec``, ``name``, ``layer``, ``n_layers``). ``resolved=True`` appends the
    layer a block resolved to when the spec did not name it: ``wavlm@best(=17)``.
    """
    feats = config.get("features")
    if not isinstance(feats, list):
        return []
    out = []
    for f in feats:
        if isinstance(f, dict):
            spec = str(f.get("spec") or f.get("name") or "?")
            layer, n = f.get("layer"), f.get("n_layers")
            if resolved and isinstance(n, int) and n > 1 and layer is not None and spec != f"{f.get('name')}@{layer}":
                spec += f"(={layer})"
            out.append(spec)
        else:
            out.append(str(f))
    return out


def n_seeds(config: dict, metrics: dict | None = None) -> int | None:
    """Number of seeds: ``config["seeds"]`` as a count or a list of seeds, else ``len(per_seed)``."""
    s = config.get("seeds")
    if isinstance(s, list):
        return len(s) or None
    if isinstance(s, int) and not isinstance(s, bool) and s > 0:
        return s
    per = (metrics or {}).get("per_seed")
    return len(per) if isinstance(per, list) and per else None


def _is_run(path: Path) -> bool:
    # hidden folders are our own half-written outputs; "report" is make_report's default output
    return path.is_dir() and not path.name.startswith(".") and (
        (path / "config.json").is_file() or (path / "val.csv").is_file())


TABLE_KINDS = ("reproduce",)
"""Folders written through the run layer that hold tables, not predictions (never a report row)."""


def discover(runs_dir: str | Path) -> list[Run]:
    """Every run folder directly under ``runs_dir``, sorted by name (reproduce tables excluded)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"runs folder {runs_dir} does not exist; train runs with `exvo learn --runs {runs_dir}`")
    checker = Checker()
    found = [Run.open(p, checker) for p in sorted(runs_dir.iterdir()) if _is_run(p)]
    return [r for r in found if r.kind not in TABLE_KINDS]


def resolve(runs_dir: str | Path, names: list[str] | None) -> tuple[list[Run], list[str]]:
    """The runs to fuse and notes about the choice.

    ``names`` None: every run under ``runs_dir`` with a ``val.csv`` that is not a fusion
    run (fusion runs are only taken when named). Otherwise each entry is a folder path or
    a name under ``runs_dir``; duplicates are dropped.
    """
    notes: list[str] = []
    if names is None:
        found = discover(runs_dir)
        runs = [r for r in found if r.kind != "fusion" and r.has("Val")]
        skipped_f = [r.name for r in found if r.kind == "fusion"]
        skipped_v = [r.name for r in found if r.kind != "fusion" and not r.has("Val")]
        if skipped_f:
            notes.append(f"skipped {len(skipped_f)} fusion run(s) ({listing(skipped_f, MAX_SHOWN)}); name them to include them")
        if skipped_v:
            notes.append(f"skipped {len(skipped_v)} run(s) without val.csv ({listing(skipped_v, MAX_SHOWN)})")
        if not runs:
            raise FileNotFoundError(
                f"no learn runs with val.csv under {runs_dir}; train some with `exvo learn --runs {runs_dir}` first")
        return runs, notes
    runs, seen = [], set()
    for n in names:
        p = Path(n)
        path = p if (p.is_dir() and (p / "val.csv").exists()) else Path(runs_dir) / n
        if not path.is_dir():
            raise FileNotFoundError(f"run {n!r} not found: neither a folder nor {path}; see `ls {runs_dir}`")
        if not (path / "val.csv").is_file():
            raise FileNotFoundError(f"run {path} has no val.csv; only finished runs with Val predictions can be fused")
        if path.resolve() in seen:
            notes.append(f"run {n!r} named twice; used once")
            continue
        seen.add(path.resolve())
        runs.append(Run.open(path))
    dup = sorted({r.name for r in runs if [q.name for q in runs].count(r.name) > 1})
    if dup:
        raise ValueError(f"runs from different folders share the name(s) {dup}; rename one so the fusion record is unambiguous")
    return runs, notes


def check_same_ids(preds: dict[str, Predictions], split: str) -> list[str]:
    """The shared ids (order of the first run by name) or a PredictionError naming the difference."""
    names = sorted(preds)
    ref = names[0]
    ref_ids = set(preds[ref].ids)
    problems = []
    for n in names[1:]:
        ids = set(preds[n].ids)
        if ids == ref_ids:
            continue
        lacks = sorted(ref_ids - ids)
        extra = sorted(ids - ref_ids)
        part = f"{n} ({len(ids)} ids) vs {ref} ({len(ref_ids)} ids):"
        if lacks:
            part += f" {n} lacks {len(lacks)} [{listing(lacks, MAX_SHOWN)}]"
        if extra:
            part += f" {n} has {len(extra)} extra [{listing(extra, MAX_SHOWN)}]"
        problems.append(part)
    if problems:
        raise PredictionError(
            f"runs do not share the same {split} ids: " + "; ".join(problems)
            + ". Fuse only runs made on the same corpus (name them explicitly)")
    return list(preds[ref].ids)


def _kinds() -> dict[str, tuple[type, str]]:
    # imported when a config is asked for: reading runs (report, fuse) needs no torch
    from exvo.fewshot.config import FewShotConfig
    from exvo.learn.config import LearnConfig
    from exvo.learn.finetune_config import FinetuneConfig
    from exvo.verify.config import VerifyConfig

    return {"learn": (LearnConfig, "learn_config"), "fewshot": (FewShotConfig, "fewshot_config"),
            "verify": (VerifyConfig, "verify_config"), "finetune": (FinetuneConfig, "finetune")}


def config_of(record: dict):
    """The config dataclass saved in a run's ``config.json`` record, or the record itself for
    kinds without one (fusions: their settings are the record's ``mode``, ``top``, …)."""
    kind = record.get("kind")
    if kind == "learn" and "finetune" in record:
        kind = "finetune"            # an `exvo finetune` run: audio in, a learn run's files out
    known = _kinds()
    if kind in known and isinstance(record.get(known[kind][1]), dict):
        cls, key = known[kind]
        return from_dict(cls, record[key])
    return record
