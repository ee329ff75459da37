"""The ExVo-FewShot protocol: support/query sets, the track's metric, bootstrap intervals, submissions.

Every Val and Test speaker has a **support set** of ``shots`` (2) labelled clips and a
**query set** (the rest of its clips). Models may use the support clips (and their labels)
of a speaker to personalise; only query clips are predicted and scored.

* Val support: by default each speaker's first ``shots`` clips in ``data_info.csv`` order
  (EIHW's reproducible choice); ``support_seed`` draws them at random instead.
* Test support: a labelled support file in the ``data_info.csv`` format
  (``File_ID``, ``Subject_ID`` and the 10 emotions are read by name; other columns are
  ignored). ``exvo demo-corpus`` writes one (``fewshot_support.csv``).

Metric: mean over the 10 emotions of the **population** CCC (all moments / n), the track's
official convention. Confidence interval: percentile bootstrap over query clips.

Submission file: ``File_ID,Awe,…,Surprise`` (official emotion order), query clips only.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exvo.corpus import Corpus, CorpusError, listing
from exvo.tables import repeated
from exvo.metrics import EMOTIONS, ccc_along, mean_ccc

SHOTS = 2
CONVENTION = "population"
RUN_SUBDIR = "fewshot"
"""Few-shot runs live in <runs>/fewshot/<name>/, apart from the multitask runs that fuse and report rank."""
FEWSHOT_COLUMNS: tuple[str, ...] = ("File_ID", *EMOTIONS)


class FewShotError(ValueError):
    """A support file, protocol or few-shot submission is unusable; the message says how to fix it."""


@dataclass
class Episode:
    """One speaker of an evaluation split.

    ``support``/``query``: row indices into the corpus (CSV order); ``support_y`` ``(shots, 10)``
    the support labels (from the corpus for Val, from the support file for Test).
    """

    speaker: str
    support: np.ndarray
    query: np.ndarray
    support_y: np.ndarray


@dataclass
class Protocol:
    """The episodes of one split, speakers in order of first appearance in the corpus."""

    split: str
    episodes: list[Episode]
    source: str                 # how the support was chosen, for config.json

    @property
    def support_rows(self) -> np.ndarray:
        return np.concatenate([e.support for e in self.episodes]) if self.episodes else np.zeros(0, np.int64)

    @property
    def query_rows(self) -> np.ndarray:
        return np.concatenate([e.query for e in self.episodes]) if self.episodes else np.zeros(0, np.int64)

    def query_ids(self, corpus: Corpus) -> list[str]:
        return [corpus.ids[k] for k in self.query_rows]

    def to_json(self, corpus: Corpus) -> dict:
        return {"split": self.split, "source": self.source, "speakers": len(self.episodes),
                "support_clips": int(self.support_rows.size), "query_clips": int(self.query_rows.size),
                "support_ids": [corpus.ids[k] for k in self.support_rows]}


def _speakers_in_order(corpus: Corpus, rows: np.ndarray) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for k in rows:
        out.setdefault(str(corpus.speakers[k]), []).append(int(k))
    return out


def first_clips(rows_by_speaker: dict[str, list[int]], shots: int = SHOTS, seed: int | None = None) -> dict[str, list[int]]:
    """Support rows per speaker: the first ``shots`` (``seed`` None) or ``shots`` drawn at random."""
    out = {}
    rng = np.random.default_rng(seed) if seed is not None else None
    for s, rows in rows_by_speaker.items():
        if rng is None:
            out[s] = rows[:shots]
        else:
            out[s] = sorted(rng.choice(rows, size=min(shots, len(rows)), replace=False).tolist())
    return out


def _episodes(corpus: Corpus, by_spk: dict[str, list[int]], support: dict[str, list[int]],
              labels: dict[int, np.ndarray]) -> list[Episode]:
    eps = []
    for s, rows in by_spk.items():
        sup = np.array(support[s], dtype=np.int64)
        q = np.array([r for r in rows if r not in set(support[s])], dtype=np.int64)
        eps.append(Episode(s, sup, q, np.stack([labels[int(r)] for r in sup])))
    return eps


def val_protocol(corpus: Corpus, shots: int = SHOTS, seed: int | None = None, split: str = "Val") -> Protocol:
    """Support = each speaker's first ``shots`` clips (CSV order), or a seeded random draw."""
    rows = corpus.indices(split)
    if rows.size == 0:
        raise FewShotError(f"{corpus.root} has no {split} clips; the few-shot track needs {split} speakers")
    if not corpus.has_labels(split):
        raise FewShotError(f"the {split} clips of {corpus.root} have no labels; a {split} support set needs them")
    by_spk = _speakers_in_order(corpus, rows)
    small = [s for s, r in by_spk.items() if len(r) <= shots]
    if small:
        raise FewShotError(f"{len(small)} {split} speaker(s) have {shots} clip(s) or fewer, so nothing would be left "
                           f"to score: {listing(small)}; use a corpus with more clips per speaker")
    support = first_clips(by_spk, shots, seed)
    labels = {int(r): corpus.emotions[r] for r in rows}
    how = f"first {shots} clips per speaker (data_info.csv order)" if seed is None else f"{shots} random clips per speaker (seed {seed})"
    return Protocol(split, _episodes(corpus, by_spk, support, labels), how)


def read_support_file(path: str | Path, corpus: Corpus, split: str = "Test", shots: int = SHOTS) -> Protocol:
    """The episodes of ``split`` from a labelled support file (``data_info.csv`` format).

    Every support clip must be a ``split`` clip of ``corpus`` with the corpus's speaker, and
    every ``split`` speaker must have exactly ``shots`` support clips with labels in [0, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise FewShotError(f"support file {path} not found; pass --support-file with the labelled support clips "
                           f"of the {split} speakers (data_info.csv columns)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise FewShotError(f"support file {path} is empty; expected a data_info.csv header")
    header = [h.strip() for h in rows[0]]
    need = ["File_ID", "Subject_ID", *EMOTIONS]
    missing = [c for c in need if c not in header]
    if missing:
        raise FewShotError(f"support file {path} lacks column(s) {missing}; found {header}. It needs "
                           f"{need} (read by name, as data_info.csv)")
    col = {c: header.index(c) for c in need}
    pos = {i: k for k, i in enumerate(corpus.ids)}
    in_split = set(corpus.indices(split).tolist())
    problems, labels, support = [], {}, {}
    for n, r in enumerate(rows[1:], start=2):
        if not r or (len(r) == 1 and not r[0].strip()):
            continue
        if len(r) != len(header):
            problems.append(f"line {n}: {len(r)} cells, the header has {len(header)}")
            continue
        cid, spk = r[col["File_ID"]].strip(), r[col["Subject_ID"]].strip()
        k = pos.get(cid)
        if k is None or k not in in_split:
            problems.append(f"line {n}: {cid} is not a {split} clip of {corpus.root}")
            continue
        if str(corpus.speakers[k]) != spk:
            problems.append(f"line {n}: {cid} belongs to {corpus.speakers[k]} in data_info.csv, not {spk}")
            continue
        try:
            y = np.array([float(r[col[e]]) for e in EMOTIONS])
        except ValueError:
            problems.append(f"line {n}: non-numeric emotion label")
            continue
        if not (np.isfinite(y).all() and (y >= 0).all() and (y <= 1).all()):
            problems.append(f"line {n}: emotion labels must be numbers in [0, 1]")
            continue
        if k in labels:
            problems.append(f"line {n}: {cid} listed twice")
            continue
        labels[k] = y
        support.setdefault(spk, []).append(k)
    by_spk = _speakers_in_order(corpus, corpus.indices(split))
    wrong = [f"{s} ({len(support.get(s, []))})" for s in by_spk if len(support.get(s, [])) != shots]
    if wrong:
        problems.append(f"every {split} speaker needs exactly {shots} support clips; these have another number: "
                        f"{listing(wrong)}")
    if problems:
        raise FewShotError(f"support file {path} has problems:\n  - " + "\n  - ".join(problems))
    support = {s: sorted(v) for s, v in support.items()}
    empty = [s for s, r in by_spk.items() if len(r) <= shots]
    if empty:
        raise FewShotError(f"{split} speaker(s) {listing(empty)} have no clip left after their support clips")
    return Protocol(split, _episodes(corpus, by_spk, support, labels), f"support file {path}")


# --------------------------------------------------------------------------- metric
def fewshot_ccc(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, list[float]]:
    """The track's metric: mean over emotions of the population CCC; ``(mean, per emotion)``."""
    return mean_ccc(y_true, y_pred, CONVENTION)


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, resamples: int = 1000, level: float = 0.95,
                 seed: int = 0, chunk: int = 100) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`fewshot_ccc`: ``resamples`` draws of the query clips
    with replacement (as EIHW's Table 1). ``y_true``/``y_pred`` ``(n, 10)``."""
    t = np.asarray(y_true, np.float64)
    p = np.asarray(y_pred, np.float64)
    if t.shape != p.shape or t.ndim != 2 or t.shape[0] < 2:
        raise ValueError(f"bootstrap_ci needs two (n >= 2, k) arrays of equal shape, got {t.shape} and {p.shape}")
    rng = np.random.default_rng(seed)
    vals = []
    for s in range(0, resamples, chunk):
        idx = rng.integers(0, t.shape[0], size=(min(chunk, resamples - s), t.shape[0]))
        vals.append(ccc_along(t[idx], p[idx], 1).mean(1))
    v = np.concatenate(vals)
    a = (1.0 - level) / 2
    return float(np.quantile(v, a)), float(np.quantile(v, 1 - a))


def paired_gain_ci(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, resamples: int = 1000,
                   level: float = 0.95, seed: int = 0, chunk: int = 100) -> tuple[float, float, float]:
    """``(gain, lo, hi)`` of CCC(b) − CCC(a) on the same query clips, the interval from the same
    bootstrap resamples for both (paired), so speaker/clip difficulty cancels out."""
    t, a, b = (np.asarray(v, np.float64) for v in (y_true, pred_a, pred_b))
    if not (t.shape == a.shape == b.shape) or t.ndim != 2:
        raise ValueError(f"paired_gain_ci needs three (n, k) arrays of equal shape, got {t.shape}, {a.shape}, {b.shape}")
    rng = np.random.default_rng(seed)
    vals = []
    for s in range(0, resamples, chunk):
        idx = rng.integers(0, t.shape[0], size=(min(chunk, resamples - s), t.shape[0]))
        vals.append(ccc_along(t[idx], b[idx], 1).mean(1) - ccc_along(t[idx], a[idx], 1).mean(1))
    v = np.concatenate(vals)
    q = (1.0 - level) / 2
    return fewshot_ccc(t, b)[0] - fewshot_ccc(t, a)[0], float(np.quantile(v, q)), float(np.quantile(v, 1 - q))


# --------------------------------------------------------------------------- submissions
def write_submission(path: str | Path, ids: list[str], emotions: np.ndarray) -> None:
    """``File_ID,<10 emotions>`` for the query clips (full float precision)."""
    emotions = np.asarray(emotions, np.float64).reshape(len(ids), len(EMOTIONS))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FEWSHOT_COLUMNS)
        for i, row in zip(ids, emotions):
            w.writerow([i] + [repr(float(v)) for v in row])


def read_submission(path: str | Path) -> tuple[list[str], np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise FewShotError(f"prediction file {path} not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    header = [h.strip() for h in rows[0]] if rows else []
    if sorted(header) != sorted(FEWSHOT_COLUMNS):
        raise FewShotError(f"{path} has columns {header}; a few-shot submission has exactly {','.join(FEWSHOT_COLUMNS)}")
    col = [header.index(c) for c in FEWSHOT_COLUMNS]
    body = [r for r in rows[1:] if r]
    bad = [n + 2 for n, r in enumerate(body) if len(r) != len(header)]
    if bad:
        raise FewShotError(f"{path}: wrong number of cells on line(s) {listing(bad)}")
    ids = [r[col[0]].strip() for r in body]
    if len(set(ids)) != len(ids):
        raise FewShotError(f"{path} has duplicate File_ID(s): {listing(repeated(ids))}")
    try:
        y = np.array([[float(r[c]) for c in col[1:]] for r in body], np.float64).reshape(len(body), len(EMOTIONS))
    except ValueError as e:
        raise FewShotError(f"{path}: a non-numeric prediction ({e})") from None
    if not np.isfinite(y).all():
        raise FewShotError(f"{path}: NaN/inf predictions on line(s) {listing([n + 2 for n in np.flatnonzero(~np.isfinite(y).all(1))])}")
    return ids, y


def query_labels(corpus: Corpus, proto: Protocol) -> np.ndarray:
    """``(n_query, 10)`` labels of the query clips (Test: from the corpus's hidden labels file)."""
    try:
        emo, _, _ = corpus.labels(proto.split)
    except CorpusError as e:
        raise FewShotError(str(e)) from None
    where = {int(k): j for j, k in enumerate(corpus.indices(proto.split))}
    return emo[[where[int(k)] for k in proto.query_rows]]


def score_submission(ids: list[str], emotions: np.ndarray, corpus: Corpus, proto: Protocol,
                     resamples: int = 1000) -> dict:
    """Score query predictions: the ids must be exactly the query clips (support clips are never scored)."""
    want = proto.query_ids(corpus)
    sup = {corpus.ids[k] for k in proto.support_rows}
    got = set(ids)
    in_sup = [i for i in ids if i in sup]
    if in_sup:
        raise FewShotError(f"the predictions include {len(in_sup)} support clip(s) [{listing(in_sup)}]; support clips "
                           "are never scored: predict the query clips only (or the predictions were made with another support "
                           "set: score with the run's --support-seed / --support-file)")
    missing = [i for i in want if i not in got]
    wanted = set(want)           # built once: a set per id made this quadratic (20 k ids: minutes)
    extra = [i for i in ids if i not in wanted]
    if missing or extra:
        raise FewShotError(f"predictions do not match the {proto.split} query clips: {len(missing)} missing "
                           f"[{listing(missing)}], {len(extra)} extra [{listing(extra)}]")
    pos = {i: k for k, i in enumerate(ids)}
    p = np.asarray(emotions)[[pos[i] for i in want]]
    t = query_labels(corpus, proto)
    m, per = fewshot_ccc(t, p)
    lo, hi = bootstrap_ci(t, p, resamples)
    return {"track": "fewshot", "split": proto.split, "n": len(want), "ccc": m, "ci95": [lo, hi],
            "ccc_per_emotion": dict(zip(EMOTIONS, per)), "ccc_convention": CONVENTION,
            "support": proto.source}


def protocol_for(corpus: Corpus, split: str, support_seed: int | None = None,
                 support_file: str | Path | None = None, shots: int = SHOTS) -> Protocol:
    """Val (or any labelled split): first/random clips, unless a support file is given; Test: the
    support file, by default ``<corpus>/fewshot_support.csv``."""
    if support_file is not None:
        return read_support_file(support_file, corpus, split, shots)
    if split == "Test":
        default = corpus.root / "fewshot_support.csv"
        if default.is_file():
            return read_support_file(default, corpus, split, shots)
        raise FewShotError(f"no support set for Test: pass --support-file (a labelled data_info.csv-style file of "
                           f"{shots} clips per Test speaker), or put it at {default}")
    return val_protocol(corpus, shots, support_seed, split)
