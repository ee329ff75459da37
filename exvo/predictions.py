"""Predictions in the ExVo submission format, their files, and scoring them.

Submission file (one row per clip)::

    File_ID,Country,Age,Awe,Excitement,...,Surprise

``Country`` is the integer code 0-3, ``Age`` in years, emotions in [0, 1] in the
official order. Run folders also keep the country probabilities beside it
(``<split>_country_proba.csv``: ``File_ID,China,South Africa,United States,Venezuela``)
so that late fusion can average them.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exvo.corpus import Corpus, CorpusError, _listing
from exvo.metrics import COUNTRIES, EMOTIONS, CCCConvention, score_all

SUBMISSION_COLUMNS: tuple[str, ...] = ("File_ID", "Country", "Age", *EMOTIONS)


class PredictionError(ValueError):
    """A prediction file does not fit the submission format or the corpus."""


@dataclass
class Predictions:
    """Predictions for a list of clips.

    ``emotions`` ``(n, 10)``, ``country`` ``(n,)`` int codes, ``age`` ``(n,)`` years,
    ``country_proba`` ``(n, 4)`` or None (then ``country`` alone is known).
    """

    ids: list[str]
    emotions: np.ndarray
    country: np.ndarray
    age: np.ndarray
    country_proba: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.ids)
        self.emotions = np.asarray(self.emotions, dtype=np.float64).reshape(n, len(EMOTIONS))
        self.country = np.asarray(self.country, dtype=np.int64).reshape(n)
        self.age = np.asarray(self.age, dtype=np.float64).reshape(n)
        if self.country_proba is not None:
            self.country_proba = np.asarray(self.country_proba, dtype=np.float64).reshape(n, len(COUNTRIES))

    @classmethod
    def from_proba(cls, ids, emotions, country_proba, age) -> "Predictions":
        p = np.asarray(country_proba, dtype=np.float64)
        return cls(list(ids), emotions, p.argmax(axis=1), age, p)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, ids: list[str]) -> "Predictions":
        """Rows re-ordered/subset to ``ids``; raises if any is missing."""
        pos = {i: k for k, i in enumerate(self.ids)}
        missing = [i for i in ids if i not in pos]
        if missing:
            raise PredictionError(f"predictions lack {len(missing)} id(s): {_listing(missing)}")
        idx = np.array([pos[i] for i in ids], dtype=np.int64)
        return Predictions(
            list(ids), self.emotions[idx], self.country[idx], self.age[idx],
            None if self.country_proba is None else self.country_proba[idx],
        )

    # ---------------------------------------------------------------- files
    def write(self, path: str | Path) -> None:
        """Write the submission CSV (full float precision)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(SUBMISSION_COLUMNS)
            for k, i in enumerate(self.ids):
                w.writerow([i, int(self.country[k]), repr(float(self.age[k]))]
                           + [repr(float(v)) for v in self.emotions[k]])

    def write_proba(self, path: str | Path) -> None:
        if self.country_proba is None:
            raise PredictionError("these predictions carry no country probabilities")
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("File_ID", *COUNTRIES))
            for k, i in enumerate(self.ids):
                w.writerow([i] + [repr(float(v)) for v in self.country_proba[k]])

    @classmethod
    def read(cls, path: str | Path, proba_path: str | Path | None = None) -> "Predictions":
        """Read a submission CSV by column name (and optionally its probabilities)."""
        path = Path(path)
        if not path.is_file():
            raise PredictionError(f"prediction file {path} not found")
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
        if not rows:
            raise PredictionError(f"{path} is empty; expected a header {','.join(SUBMISSION_COLUMNS)}")
        header = [h.strip() for h in rows[0]]
        missing = [c for c in SUBMISSION_COLUMNS if c not in header]
        extra = [c for c in header if c not in SUBMISSION_COLUMNS]
        if missing or extra:
            raise PredictionError(
                f"{path} has the wrong columns: missing {missing}, unexpected {extra}; "
                f"expected exactly {','.join(SUBMISSION_COLUMNS)}"
            )
        col = {c: header.index(c) for c in SUBMISSION_COLUMNS}
        body = rows[1:]
        short = [n + 2 for n, r in enumerate(body) if len(r) != len(header)]
        if short:
            raise PredictionError(f"{path}: wrong number of cells on line(s) {_listing(short)}")
        ids = [r[col["File_ID"]].strip() for r in body]
        dups = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
        if dups:
            raise PredictionError(f"{path} has duplicate File_ID(s): {_listing(dups)}")
        try:
            num = np.array([[float(r[col[c]]) for c in SUBMISSION_COLUMNS[1:]] for r in body], dtype=np.float64)
        except ValueError as e:
            raise PredictionError(f"{path}: a non-numeric prediction ({e})") from None
        num = num.reshape(len(body), len(SUBMISSION_COLUMNS) - 1)
        if not np.isfinite(num).all():
            lines = [n + 2 for n in np.flatnonzero(~np.isfinite(num).all(axis=1))]
            raise PredictionError(f"{path}: NaN/inf predictions on line(s) {_listing(lines)}")
        cou = num[:, 0]
        if not np.isin(cou, np.arange(len(COUNTRIES))).all():
            lines = [n + 2 for n in np.flatnonzero(~np.isin(cou, np.arange(len(COUNTRIES))))]
            raise PredictionError(f"{path}: Country must be an integer code 0-3 (line(s) {_listing(lines)})")
        proba = None
        if proba_path is not None and Path(proba_path).is_file():
            with open(proba_path, newline="") as f:
                prow = list(csv.reader(f))
            ppos = {r[0]: np.array([float(v) for v in r[1:]]) for r in prow[1:]}
            if set(ppos) != set(ids):
                raise PredictionError(f"{proba_path} ids differ from {path}")
            proba = np.stack([ppos[i] for i in ids]) if ids else np.zeros((0, len(COUNTRIES)))
        return cls(ids, num[:, 2:], cou.astype(np.int64), num[:, 1], proba)


def split_files(run_dir: str | Path, split: str) -> tuple[Path, Path]:
    """``(submission csv, country-probability csv)`` of ``split`` in a run folder."""
    run_dir = Path(run_dir)
    return run_dir / f"{split.lower()}.csv", run_dir / f"{split.lower()}_country_proba.csv"


def save_split(pred: Predictions, run_dir: str | Path, split: str) -> None:
    sub, proba = split_files(run_dir, split)
    pred.write(sub)
    if pred.country_proba is not None:
        pred.write_proba(proba)


def load_split(run_dir: str | Path, split: str) -> Predictions:
    sub, proba = split_files(run_dir, split)
    return Predictions.read(sub, proba)


def _split_hint(ids: set[str], corpus: Corpus, split: str) -> str:
    """``"; these are the Test ids: pass --split Test"`` when the ids belong to another split."""
    counts = {sp: len(ids & set(corpus.split_ids(sp))) for sp in ("Train", "Val", "Test") if sp != split}
    best = max(counts, key=lambda sp: counts[sp]) if counts else None
    if best is None or counts[best] == 0:
        return ""
    n_best = len(corpus.split_ids(best))
    if counts[best] == len(ids) == n_best:
        return f"; these are exactly the {best} ids of the corpus: score them with `--split {best}`"
    if counts[best] > len(ids) / 2:
        return (f"; {counts[best]} of the {len(ids)} ids belong to the {best} split ({n_best} clips): "
                f"did you mean `--split {best}`?")
    return ""


def score(pred: Predictions, corpus: Corpus, split: str = "Val",
          convention: CCCConvention = "challenge") -> dict:
    """Score predictions against one split's labels.

    The prediction ids must be exactly the split's ids (order free); missing and
    extra ids are named in the error.
    """
    want = corpus.split_ids(split)
    got = set(pred.ids)
    missing = [i for i in want if i not in got]
    wanted = set(want)
    extra = [i for i in pred.ids if i not in wanted]
    if missing or extra:
        raise PredictionError(
            f"predictions do not match the {split} split of {corpus.root}: "
            f"{len(missing)} missing id(s) [{_listing(missing)}], {len(extra)} extra id(s) [{_listing(extra)}]"
            + _split_hint(got, corpus, split)
        )
    try:
        emo, cou, age = corpus.labels(split)
    except CorpusError as e:
        raise PredictionError(str(e)) from None
    p = pred.take(want)
    out = score_all(emo, p.emotions, cou, p.country, age, p.age, convention)
    out["split"] = split
    out["n"] = len(want)
    return out


@dataclass
class SeedPredictions:
    """Every seed's predictions of one split, beside a run's seed-averaged ``val.csv``/``test.csv``.

    ``ids`` (n,) File_IDs; ``seeds`` (S,); ``emotions`` (S, n, 10) in [0, 1];
    ``country_proba`` (S, n, 4) rows summing to 1; ``age`` (S, n) years. Fusion combines runs
    seed by seed (seed k of each source) and the report scores each seed, so that every row
    has a mean ± std over seeds as well as a seed-ensemble score.
    """

    ids: list[str]
    seeds: list[int]
    emotions: np.ndarray
    country_proba: np.ndarray
    age: np.ndarray

    def __post_init__(self):
        S, n = len(self.seeds), len(self.ids)
        for name, arr, shape in (("emotions", self.emotions, (S, n, len(EMOTIONS))),
                                 ("country_proba", self.country_proba, (S, n, 4)), ("age", self.age, (S, n))):
            if tuple(arr.shape) != shape:
                raise PredictionError(f"per-seed {name} has shape {tuple(arr.shape)}, expected {shape} "
                                      f"({S} seeds × {n} clips)")

    def seed(self, j: int) -> Predictions:
        """Seed ``j``'s predictions (index into ``seeds``, not the seed value)."""
        return Predictions.from_proba(self.ids, self.emotions[j], self.country_proba[j], self.age[j])

    def ensemble(self) -> Predictions:
        """The seed average (country probabilities averaged, then argmax)."""
        return Predictions.from_proba(self.ids, self.emotions.mean(0), self.country_proba.mean(0), self.age.mean(0))


def seed_file(run_dir: str | Path, split: str) -> Path:
    return Path(run_dir) / "per_seed" / f"{split.lower()}.npz"


def save_seed_predictions(sp: SeedPredictions, run_dir: str | Path, split: str) -> Path:
    """Write ``<run_dir>/per_seed/<split>.npz`` (called on a run's staging folder, before it is committed)."""
    path = seed_file(run_dir, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, ids=np.array(sp.ids, dtype=str), seeds=np.asarray(sp.seeds, dtype=np.int64),
             emotions=sp.emotions.astype(np.float32), country_proba=sp.country_proba.astype(np.float32),
             age=sp.age.astype(np.float64))
    return path


def load_seed_predictions(run_dir: str | Path, split: str) -> SeedPredictions | None:
    """The per-seed predictions of ``split``, or None for a run that has none (older runs)."""
    path = seed_file(run_dir, split)
    if not path.is_file():
        return None
    with np.load(path) as z:
        return SeedPredictions([str(i) for i in z["ids"]], [int(s) for s in z["seeds"]], z["emotions"],
                               z["country_proba"], z["age"])
