"""Predictions of a task in its submission format, their files, and scoring them.

The task (:mod:`exvo.tasks`; ExVo-MTL by default) decides the columns. ExVo-MTL's file (one row
per clip)::

    File_ID,Country,Age,Awe,Excitement,...,Surprise

``Country`` is the integer code 0-3, ``Age`` in years, emotions in [0, 1] in the
official order. A-VB's are ``File_ID,<10 emotions>`` (High), ``File_ID,Valence,Arousal`` (Two),
``File_ID,<40 culture columns>`` (Culture), ``File_ID,Voc_Type`` with type names (Type). Run folders
also keep the class probabilities beside it (``<split>_<class group>_proba.csv``, ExVo:
``<split>_country_proba.csv``: ``File_ID,China,South Africa,United States,Venezuela``)
so that late fusion can average them.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exvo.corpus import Corpus, CorpusError, listing
from exvo.tables import repeated
from exvo.metrics import EMOTIONS, CCCConvention, score_all
from exvo.proba import PROBA_SUM_TOL, PredictionError, check_proba, read_proba

__all__ = ["PROBA_SUM_TOL", "SUBMISSION_COLUMNS", "PredictionError", "Predictions", "SeedPredictions", "check_proba",
           "load_seed_predictions", "load_split", "read_proba", "run_task", "save_seed_predictions", "save_split",
           "score", "seed_file", "split_files"]

SUBMISSION_COLUMNS: tuple[str, ...] = ("File_ID", "Country", "Age", *EMOTIONS)
"""ExVo-MTL's submission columns (another task's: ``("File_ID", *task.submission)``)."""


@dataclass
class Predictions:
    """Predictions of a task for a list of clips (fields named after ExVo-MTL's slots, see
    :class:`exvo.learn.targets.Targets`).

    ``emotions`` ``(n, k)`` the task's intensities (ExVo: 10 emotions), ``country`` ``(n,)`` class
    codes, ``age`` ``(n,)`` the value (ExVo: years), ``country_proba`` ``(n, n_classes)`` or None
    (then ``country`` alone is known). ``task`` None → ExVo-MTL; a group the task lacks holds zeros
    (and no probabilities).
    """

    ids: list[str]
    emotions: np.ndarray
    country: np.ndarray
    age: np.ndarray
    country_proba: np.ndarray | None = None
    task: object = None

    def __post_init__(self):
        from exvo.tasks import get_task

        self.task = get_task(self.task)
        n = len(self.ids)
        self.emotions = np.asarray(self.emotions, dtype=np.float64).reshape(n, self.task.n_reg)
        self.country = np.asarray(self.country, dtype=np.int64).reshape(n)
        self.age = np.asarray(self.age, dtype=np.float64).reshape(n)
        if not self.task.has("class"):
            self.country, self.country_proba = np.zeros(n, dtype=np.int64), None
        if not self.task.has("value"):
            self.age = np.zeros(n)
        if self.country_proba is not None:
            self.country_proba = np.asarray(self.country_proba, dtype=np.float64).reshape(n, self.task.n_classes)

    @classmethod
    def from_proba(cls, ids, emotions, country_proba, age, task=None) -> "Predictions":
        p = np.asarray(country_proba, dtype=np.float64)
        return cls(list(ids), emotions, p.argmax(axis=1), age, p, task)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, ids: list[str]) -> "Predictions":
        """Rows re-ordered/subset to ``ids``; raises if any is missing."""
        pos = {i: k for k, i in enumerate(self.ids)}
        missing = [i for i in ids if i not in pos]
        if missing:
            raise PredictionError(f"predictions lack {len(missing)} id(s): {listing(missing)}")
        idx = np.array([pos[i] for i in ids], dtype=np.int64)
        return Predictions(
            list(ids), self.emotions[idx], self.country[idx], self.age[idx],
            None if self.country_proba is None else self.country_proba[idx], self.task,
        )

    @property
    def columns(self) -> tuple[str, ...]:
        """The submission file's header."""
        return ("File_ID", *self.task.submission)

    def _cells(self, k: int) -> list:
        t = self.task
        reg = {c: j for j, c in enumerate(t.reg_columns)}
        cls = t.group("class")
        out = []
        for c in t.submission:
            if c in reg:
                out.append(repr(float(self.emotions[k, reg[c]])))
            elif cls is not None and c == cls.columns[0]:
                out.append(int(self.country[k]) if t.class_codes else cls.classes[int(self.country[k])])
            else:
                out.append(repr(float(self.age[k])))
        return out

    # ---------------------------------------------------------------- files
    def write(self, path: str | Path) -> None:
        """Write the submission CSV (full float precision)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.columns)
            for k, i in enumerate(self.ids):
                w.writerow([i] + self._cells(k))

    def write_proba(self, path: str | Path) -> None:
        if self.country_proba is None:
            raise PredictionError("these predictions carry no class probabilities")
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("File_ID", *self.task.classes))
            for k, i in enumerate(self.ids):
                w.writerow([i] + [repr(float(v)) for v in self.country_proba[k]])

    @classmethod
    def read(cls, path: str | Path, proba_path: str | Path | None = None, task=None) -> "Predictions":
        """Read a submission CSV of ``task`` (None → ExVo-MTL) by column name (and optionally its probabilities)."""
        from exvo.tasks import get_task

        task = get_task(task)
        columns = ("File_ID", *task.submission)
        path = Path(path)
        if not path.is_file():
            raise PredictionError(f"prediction file {path} not found")
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
        if not rows:
            raise PredictionError(f"{path} is empty; expected a header {','.join(columns)}")
        header = [h.strip() for h in rows[0]]
        missing = [c for c in columns if c not in header]
        extra = [c for c in header if c not in columns]
        if missing or extra:
            from exvo.tasks import BUILTIN

            other = [n for n, t in BUILTIN.items() if set(header) == {"File_ID", *t.submission}]
            raise PredictionError(
                f"{path} has the wrong columns: missing {missing}, unexpected {extra}; "
                f"expected exactly {','.join(columns)}"
                + ("" if task.name == "exvo-mtl" else f" (task {task.name}; another task's file? pass its --task)")
                + (f"; these are the columns of task {other[0]}: pass --task {other[0]}" if other else "")
            )
        col = {c: header.index(c) for c in columns}
        body = rows[1:]
        short = [n + 2 for n, r in enumerate(body) if len(r) != len(header)]
        if short:
            raise PredictionError(f"{path}: wrong number of cells on line(s) {listing(short)}")
        ids = [r[col["File_ID"]].strip() for r in body]
        dups = repeated(ids)
        if dups:
            raise PredictionError(f"{path} has duplicate File_ID(s): {listing(dups)}")
        g = task.group("class")
        named = g is not None and not task.class_codes
        numeric = [c for c in columns[1:] if not (named and c == g.columns[0])]
        try:
            num = np.array([[float(r[col[c]]) for c in numeric] for r in body], dtype=np.float64)
        except ValueError as e:
            raise PredictionError(f"{path}: a non-numeric prediction ({e})") from None
        num = num.reshape(len(body), len(numeric))
        if not np.isfinite(num).all():
            lines = [n + 2 for n in np.flatnonzero(~np.isfinite(num).all(axis=1))]
            raise PredictionError(f"{path}: NaN/inf predictions on line(s) {listing(lines)}")
        at = {c: j for j, c in enumerate(numeric)}
        cou = np.zeros(len(body))
        if g is not None:
            cou = _class_codes(g, [r[col[g.columns[0]]].strip() for r in body] if named else num[:, at[g.columns[0]]],
                               path)
        emo = num[:, [at[c] for c in task.reg_columns]]
        age = num[:, at[task.group("value").columns[0]]] if task.has("value") else np.zeros(len(body))
        proba = None
        if g is not None and proba_path is not None and Path(proba_path).is_file():
            proba = read_proba(proba_path, ids, path, task.classes)
        return cls(ids, emo, cou.astype(np.int64), age, proba, task)


def _class_codes(g, cells, path: Path) -> np.ndarray:
    """A submission's class column (``cells``: names, or numbers for class codes) → ``(n,)`` codes;
    a :class:`PredictionError` names the lines of cells that are no class of ``g``."""
    k = len(g.classes)
    if isinstance(cells, list):           # class names (A-VB: Voc_Type)
        if bad := [n + 2 for n, v in enumerate(cells) if v not in g.classes]:
            raise PredictionError(f"{path}: {g.columns[0]} must be one of {', '.join(g.classes)} (line(s) {listing(bad)})")
        return np.array([g.classes.index(v) for v in cells], dtype=np.float64)
    if not np.isin(cells, np.arange(k)).all():
        lines = [n + 2 for n in np.flatnonzero(~np.isin(cells, np.arange(k)))]
        raise PredictionError(f"{path}: {g.columns[0]} must be an integer code 0-{k - 1} (line(s) {listing(lines)})")
    return cells


def run_task(run_dir: str | Path):
    """The task a run folder's ``config.json`` records (runs made before tasks existed: ExVo-MTL)."""
    import json

    from exvo.tasks import get_task

    cfg = Path(run_dir) / "config.json"
    try:
        rec = json.loads(cfg.read_text()) if cfg.is_file() else {}
    except (OSError, ValueError):
        rec = {}
    return get_task(rec.get("task") if isinstance(rec, dict) else None)


def split_files(run_dir: str | Path, split: str, task=None) -> tuple[Path, Path]:
    """``(submission csv, class-probability csv)`` of ``split`` in a run folder (ExVo:
    ``<split>_country_proba.csv``)."""
    from exvo.tasks import get_task

    g = get_task(task).group("class")
    run_dir = Path(run_dir)
    return run_dir / f"{split.lower()}.csv", run_dir / f"{split.lower()}_{g.name if g else 'class'}_proba.csv"


def save_split(pred: Predictions, run_dir: str | Path, split: str) -> None:
    sub, proba = split_files(run_dir, split, pred.task)
    pred.write(sub)
    if pred.country_proba is not None:
        pred.write_proba(proba)


def load_split(run_dir: str | Path, split: str, task=None) -> Predictions:
    """A run's ``<split>.csv`` (and probabilities); ``task`` None → the one the run records."""
    task = run_task(run_dir) if task is None else task
    sub, proba = split_files(run_dir, split, task)
    return Predictions.read(sub, proba, task)


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
    """Score predictions against one split's labels of the corpus's task (``corpus.task``).

    The prediction ids must be exactly the split's ids (order free); missing and
    extra ids are named in the error; predictions of another task are refused.
    """
    if pred.task != corpus.task:
        raise PredictionError(f"these predictions are for task {pred.task.name!r} but the corpus was read for task "
                              f"{corpus.task.name!r}; pass the same --task to both")
    want = corpus.split_ids(split)
    got = set(pred.ids)
    missing = [i for i in want if i not in got]
    wanted = set(want)
    extra = [i for i in pred.ids if i not in wanted]
    if missing or extra:
        raise PredictionError(
            f"predictions do not match the {split} split of {corpus.root}: "
            f"{len(missing)} missing id(s) [{listing(missing)}], {len(extra)} extra id(s) [{listing(extra)}]"
            + _split_hint(got, corpus, split)
        )
    try:
        emo, cou, age = corpus.labels(split)
    except CorpusError as e:
        raise PredictionError(str(e)) from None
    p = pred.take(want)
    _warn_out_of_range(p, split)
    out = score_all(emo, p.emotions, cou, p.country, age, p.age, convention, corpus.task)
    out["split"] = split
    out["n"] = len(want)
    return out


def _warn_out_of_range(p: Predictions, split: str) -> None:
    """Scores are computed as given, but values no label can take are counted in a warning."""
    import warnings

    g = p.task.group("intensities")
    lo, hi = g.range if g else (0.0, 1.0)
    emo_bad = (p.emotions < lo) | (p.emotions > hi)
    if emo_bad.any():
        what, rng = ("emotion", "[0, 1]") if p.task.is_exvo else ("intensity", f"[{lo:g}, {hi:g}]")
        warnings.warn(f"{int(emo_bad.sum())} predicted {what} value(s) in {int(emo_bad.any(axis=1).sum())} of "
                      f"{len(p)} {split} clips are outside {rng} (range {p.emotions.min():.4g} to "
                      f"{p.emotions.max():.4g}); intensities are in {rng}: clip them, or check the columns",
                      stacklevel=3)
    age_bad = p.age < 0 if p.task.is_exvo else np.zeros(0, bool)
    if age_bad.any():
        warnings.warn(f"{int(age_bad.sum())} of {len(p)} {split} clips have a negative predicted Age "
                      f"(smallest {p.age.min():.4g}); ages are in years", stacklevel=3)


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
    task: object = None

    def __post_init__(self):
        from exvo.tasks import get_task

        self.task = get_task(self.task)
        S, n = len(self.seeds), len(self.ids)
        for name, arr, shape in (("emotions", self.emotions, (S, n, self.task.n_reg)),
                                 ("country_proba", self.country_proba, (S, n, self.task.n_classes)),
                                 ("age", self.age, (S, n))):
            if tuple(arr.shape) != shape:
                raise PredictionError(f"per-seed {name} has shape {tuple(arr.shape)}, expected {shape} "
                                      f"({S} seeds × {n} clips)")

    def seed(self, j: int) -> Predictions:
        """Seed ``j``'s predictions (index into ``seeds``, not the seed value)."""
        return Predictions.from_proba(self.ids, self.emotions[j], self.country_proba[j], self.age[j], self.task)

    def ensemble(self) -> Predictions:
        """The seed average (country probabilities averaged, then argmax)."""
        return Predictions.from_proba(self.ids, self.emotions.mean(0), self.country_proba.mean(0), self.age.mean(0),
                                      self.task)


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


def load_seed_predictions(run_dir: str | Path, split: str, task=None) -> SeedPredictions | None:
    """The per-seed predictions of ``split``, or None for a run that has none (older runs); ``task``
    None → the one the run records."""
    path = seed_file(run_dir, split)
    if not path.is_file():
        return None
    task = run_task(run_dir) if task is None else task
    try:
        with np.load(path) as z:
            sp = SeedPredictions([str(i) for i in z["ids"]], [int(s) for s in z["seeds"]], z["emotions"],
                                 z["country_proba"], z["age"], task)
    except PredictionError as e:
        raise PredictionError(f"{path}: {e}") from None
    except (OSError, KeyError, ValueError) as e:
        raise PredictionError(f"{path} cannot be read ({type(e).__name__}: {e}); the run folder is damaged") from None
    check_proba(sp.country_proba, str(path), classes=sp.task.classes)
    return sp
