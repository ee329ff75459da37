"""Run folders as late fusion and the report see them.

A run folder ``<runs>/<name>/`` (written by ``exvo learn`` and ``exvo fuse`` alike) holds
``config.json`` (``{"kind": "learn" | "fusion", ...}``), ``metrics.json`` (Val scores),
``val.csv`` / ``test.csv`` (submission format) and ``<split>_country_proba.csv``.
Every file but ``val.csv`` may be missing; readers here are tolerant and say what is absent.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from exvo.corpus import _listing
from exvo.predictions import PredictionError, Predictions, load_split, split_files

MAX_SHOWN = 5


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None when the file is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class Run:
    """One run folder. ``config`` / ``metrics`` are ``{}`` when their file is missing."""

    name: str
    path: Path
    config: dict
    metrics: dict

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        path = Path(path)
        return cls(path.name, path, read_json(path / "config.json") or {}, read_json(path / "metrics.json") or {})

    @property
    def kind(self) -> str:
        """``learn``, ``fusion`` or ``?`` (no config.json)."""
        return str(self.config.get("kind", "?"))

    def has(self, split: str) -> bool:
        return split_files(self.path, split)[0].is_file()

    def load(self, split: str) -> Predictions:
        return load_split(self.path, split)


FINGERPRINTED = ("val.csv", "val_country_proba.csv", "per_seed/val.npz", "test.csv", "per_seed/test.npz")


def fingerprint(path: Path) -> str:
    """sha256 over the prediction files a fusion reads from a run folder (missing files count as absent)."""
    h = hashlib.sha256()
    for rel in FINGERPRINTED:
        f = Path(path) / rel
        h.update(rel.encode() + b"\0")
        if f.is_file():
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def source_state(run: Run) -> dict:
    """What a fusion records about one source, to tell later whether it changed."""
    return {"path": str(run.path.resolve()), "fingerprint": fingerprint(run.path)}


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


def discover(runs_dir: str | Path) -> list[Run]:
    """Every run folder directly under ``runs_dir``, sorted by name."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"runs folder {runs_dir} does not exist; train runs with `exvo learn --runs {runs_dir}`")
    return [Run.open(p) for p in sorted(runs_dir.iterdir()) if _is_run(p)]


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
            notes.append(f"skipped {len(skipped_f)} fusion run(s) ({_listing(skipped_f, MAX_SHOWN)}); name them to include them")
        if skipped_v:
            notes.append(f"skipped {len(skipped_v)} run(s) without val.csv ({_listing(skipped_v, MAX_SHOWN)})")
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
            part += f" {n} lacks {len(lacks)} [{_listing(lacks, MAX_SHOWN)}]"
        if extra:
            part += f" {n} has {len(extra)} extra [{_listing(extra, MAX_SHOWN)}]"
        problems.append(part)
    if problems:
        raise PredictionError(
            f"runs do not share the same {split} ids: " + "; ".join(problems)
            + ". Fuse only runs made on the same corpus (name them explicitly)")
    return list(preds[ref].ids)
