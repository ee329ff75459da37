"""ExVo-Generate evaluation, what ``exvo fid`` and ``exvo heep`` call.

* :func:`feature_space` — ``--features F`` or ``--classifier RUN`` → a :class:`FeatureSpace`
* :func:`fid_generated` — FID of a folder of generated clips against one emotion bin
* :func:`train_val_table` — Table 3 (upper part) of paper 002: FID between the emotion
  bins of Train (rows) and Val (columns); its diagonal is the lower bound a generator can
  reach (Table 3's caption)
* :func:`heep_report` — HEEP and S_GEN from a ratings CSV (:mod:`exvo.generate.heep`)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from exvo.corpus import Corpus
from exvo.extract.base import ExtractOptions
from exvo.generate import heep as H
from exvo.generate.bins import bin_sizes, check_emotion, emotion_bin
from exvo.generate.embed import (ExtractorSpace, FeatureSpace, describe_failures, list_generated)
from exvo.generate.fid import FIDError, frechet_distance, gaussian_stats, sqrt_psd, warn_small
from exvo.metrics import EMOTIONS

Echo = Callable[[str], None]


def feature_space(corpus: Corpus, cache_dir: str | Path, features: str | None = None,
                  classifier: str | Path | None = None, opts: ExtractOptions | None = None,
                  standardise: bool = True) -> FeatureSpace:
    """Exactly one of ``features`` (``NAME`` / ``NAME@LAYER``) or ``classifier`` (a learn run folder).

    ``standardise`` (extractor spaces only): per-dimension Train mean/std scaling, see
    :mod:`exvo.generate.embed`; a classifier run applies its own scaler.
    """
    if (features is None) == (classifier is None):
        raise ValueError("give exactly one of --features NAME[@LAYER] (an extractor cached for this corpus) "
                         "or --classifier RUN (an `exvo learn` MLP run folder)")
    if features is not None:
        return ExtractorSpace(features, corpus, cache_dir, opts, standardise=standardise)
    from exvo.generate.classifier import ClassifierSpace

    return ClassifierSpace(classifier, corpus, cache_dir, opts)


def _mean_std(v: np.ndarray) -> tuple[float, float]:
    return float(np.mean(v)), float(np.std(v))   # std over seeds, ddof = 0 (as learn's metrics)


@dataclass
class FIDResult:
    """FID of generated clips vs the real ``emotion`` bin of ``against``; per view (seed) and mean ± std."""

    emotion: str
    against: str
    bin_rule: str
    space: str
    fid_per_view: list[float]
    n_generated: int
    n_real: int
    dim: int
    notes: list[str] = field(default_factory=list)

    @property
    def fid(self) -> float:
        return _mean_std(np.array(self.fid_per_view))[0]

    @property
    def fid_std(self) -> float:
        return _mean_std(np.array(self.fid_per_view))[1]

    def line(self) -> str:
        v = self.fid_per_view
        val = f"{self.fid:.4g}" + (f" ± {self.fid_std:.2g} (mean ± std over {len(v)} seeds)" if len(v) > 1 else "")
        return (f"FID {self.emotion}: {val} — {self.n_generated} generated vs {self.n_real} {self.against} clips "
                f"(bin: {self.bin_rule}) in {self.space}")

    def to_row(self) -> dict:
        return {"emotion": self.emotion, "fid": self.fid, "fid_std_over_seeds": self.fid_std,
                "n_seeds": len(self.fid_per_view), "n_generated": self.n_generated, "n_real": self.n_real,
                "against": self.against, "bin": self.bin_rule, "space": self.space}


def fid_generated(corpus: Corpus, gen_dir: str | Path, emotion: str, space: FeatureSpace,
                  against: str = "Train", rule: str = "one", progress: bool = False,
                  echo: Echo = print) -> FIDResult:
    """FID (Equation (3), paper 002 §5.2) between the clips in ``gen_dir`` and the real clips of
    split ``against`` whose ``emotion`` intensity is 1 (``rule="one"``, see :mod:`~exvo.generate.bins`).

    §3.2 asks for the FID against the training set; Equation (3)'s text and §6.2 use the
    validation set: both are available through ``against``. Warnings (fewer clips than
    dimensions, clips left out) are echoed and kept in ``notes``.
    """
    emotion = check_emotion(emotion)
    notes: list[str] = []

    def note(m: str) -> None:
        notes.append(m)
        echo(f"warning: {m}")

    real_ids = emotion_bin(corpus, against, emotion, rule)
    if len(real_ids) < 2:
        sizes = bin_sizes(corpus, against, rule)
        raise FIDError(f"the {against} bin of {emotion} (rule {rule!r}) has {len(real_ids)} clip(s); a covariance "
                       f"needs 2 or more. Bin sizes: {sizes}"
                       + (". Try --bin argmax (a clip's strongest emotion)" if rule == "one" else ""))
    items = list_generated(gen_dir)
    real = space.real(real_ids)
    if real.failures:
        note(describe_failures(f"real {against}", real.failures))
    gen = space.generated(items, progress=progress)
    if gen.failures:
        note(describe_failures("generated", gen.failures))
    for what, e in (("generated", gen), (f"the real {against} bin", real)):
        if len(e.ids) < 2:
            raise FIDError(f"{what} has {len(e.ids)} usable clip(s); the FID needs at least 2")
    dim = real.X.shape[2]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_small(len(gen.ids), dim, "the generated set")
        warn_small(len(real.ids), dim, f"the real {against} bin of {emotion}")
    for w in caught:
        note(str(w.message))
    per = []
    for s in range(real.X.shape[0]):
        a, b = gaussian_stats(gen.X[s], "generated"), gaussian_stats(real.X[s], f"{against} bin")
        per.append(frechet_distance(a.mean, a.cov, b.mean, b.cov))
    return FIDResult(emotion, against, rule, space.label, per, len(gen.ids), len(real.ids), dim, notes)


@dataclass
class FIDTable:
    """Table 3 (upper part) of paper 002: ``fid[s, i, j]`` = FID between the Train bin of
    ``EMOTIONS[i]`` and the Val bin of ``EMOTIONS[j]`` in view (seed) ``s``; NaN where a bin
    has fewer than 2 clips. ``mean``/``std`` over views; ``n_train``/``n_val`` bin sizes."""

    fid: np.ndarray
    n_train: dict[str, int]
    n_val: dict[str, int]
    space: str
    bin_rule: str
    dim: int
    notes: list[str] = field(default_factory=list)

    @property
    def mean(self) -> np.ndarray:
        return self.fid.mean(axis=0)

    @property
    def std(self) -> np.ndarray:
        return self.fid.std(axis=0)

    @property
    def views(self) -> int:
        return int(self.fid.shape[0])

    def diagonal_lowest(self) -> dict[str, bool | None]:
        """Per emotion: is the diagonal cell lower than every other cell of its row and of its
        column (None when the diagonal is NaN)?"""
        M = self.mean
        out: dict[str, bool | None] = {}
        for i, e in enumerate(EMOTIONS):
            if not np.isfinite(M[i, i]):
                out[e] = None
                continue
            others = np.concatenate([np.delete(M[i], i), np.delete(M[:, i], i)])
            others = others[np.isfinite(others)]
            out[e] = bool((M[i, i] < others).all()) if others.size else None
        return out

    def diagonal_line(self) -> str:
        low = self.diagonal_lowest()
        return ("diagonal lowest in its row and column: "
                + ", ".join(f"{e} {'yes' if v else ('no' if v is False else '-')}" for e, v in low.items()))


def table_tag(features: str | None, classifier: str | Path | None, rule: str, raw: bool = False) -> str:
    """File tag of a table: ``<features or run name>_<bin rule>[_raw]``."""
    return f"{features or Path(str(classifier)).name}_{rule}" + ("_raw" if raw and features else "")


def train_val_table(corpus: Corpus, space: FeatureSpace, rule: str = "one", echo: Echo = print,
                    progress: bool = False) -> FIDTable:
    """FID between every Train emotion bin (rows) and every Val emotion bin (columns).

    The moments of each bin are computed once; each Train bin's covariance square root once.
    """
    from tqdm import tqdm

    notes: list[str] = []
    bins = {sp: {e: emotion_bin(corpus, sp, e, rule) for e in EMOTIONS} for sp in ("Train", "Val")}
    emb = {}
    for sp in ("Train", "Val"):
        ids = list(dict.fromkeys(i for e in EMOTIONS for i in bins[sp][e]))
        emb[sp] = space.real(ids)
        if emb[sp].failures:
            notes.append(describe_failures(sp, emb[sp].failures))
    S, dim = space.views, emb["Train"].X.shape[2]
    stats: dict[tuple[str, str], list] = {}
    sizes: dict[str, dict[str, int]] = {"Train": {}, "Val": {}}
    for sp in ("Train", "Val"):
        pos = {i: k for k, i in enumerate(emb[sp].ids)}
        for e in EMOTIONS:
            rows = [pos[i] for i in bins[sp][e] if i in pos]
            sizes[sp][e] = len(rows)
            if len(rows) < 2:
                notes.append(f"{sp} bin of {e} has {len(rows)} clip(s): its row/column is empty (needs 2)")
                continue
            if len(rows) < dim:
                notes.append(f"{sp} bin of {e}: {len(rows)} clips < {dim} dims (singular covariance; FID biased up)")
            stats[(sp, e)] = [gaussian_stats(emb[sp].X[s][rows], f"{sp} {e}") for s in range(S)]
    F = np.full((S, len(EMOTIONS), len(EMOTIONS)), np.nan)
    bar = tqdm(total=S * len(EMOTIONS), desc="Train-vs-Val FID", unit="row", disable=not progress)
    for s in range(S):
        for i, ei in enumerate(EMOTIONS):
            if ("Train", ei) in stats:
                a = stats[("Train", ei)][s]
                root = sqrt_psd(a.cov)
                for j, ej in enumerate(EMOTIONS):
                    if ("Val", ej) in stats:
                        b = stats[("Val", ej)][s]
                        F[s, i, j] = frechet_distance(a.mean, a.cov, b.mean, b.cov, sqrt_c1=root)
            bar.update()
    bar.close()
    for n in notes:
        echo(f"note: {n}")
    return FIDTable(F, sizes["Train"], sizes["Val"], space.label, rule, dim, notes)


@dataclass
class HEEPReport:
    heep: H.HEEPResult
    s_gen: dict[str, float]
    s_gen_overall: float | None
    n_rated: int

    def lines(self) -> list[str]:
        h = self.heep
        out = [f"HEEP (Eq. 4) over all {self.n_rated} rated clips: {h.overall:.4f}"]
        for e in EMOTIONS:
            if e in h.per_emotion:
                s = f"  S_GEN {self.s_gen[e]:.4f}" if e in self.s_gen else ""
                out.append(f"  {e:12s} HEEP {h.per_emotion[e]:+.4f} ({h.n_clips[e]} clips){s}")
        no_fid = [e for e in h.per_emotion if self.s_gen_overall is not None and e not in self.s_gen]
        if no_fid:
            out.append(f"note: no FID given for {', '.join(no_fid)}: no S_GEN for them (0 in the overall mean)")
        if self.s_gen_overall is not None:
            out.append(f"S_GEN (Eq. 5, mean over the 10 emotions, 0 where not targeted): {self.s_gen_overall:.4f}")
        return out


def heep_report(ratings: str | Path, manifest: str | Path | None = None,
                fids: dict[str, float] | None = None) -> HEEPReport:
    """HEEP overall and per targeted emotion; with ``fids`` ``{emotion: FID_e}`` also S_GEN."""
    keys, R = H.read_ratings(ratings)
    T = H.target_matrix(keys, H.read_manifest(manifest) if manifest is not None else None)
    res = H.heep_scores(T, R)
    if fids:
        fids = {check_emotion(e): float(v) for e, v in fids.items()}
        missing = sorted(set(fids) - set(res.per_emotion))
        if missing:
            raise H.RatingsError(f"FIDs given for {missing} but no rated clip targets them")
        per, overall = H.s_gen_scores(fids, res.per_emotion)
        return HEEPReport(res, per, overall, len(keys))
    return HEEPReport(res, {}, None, len(keys))


FID_CSV_COLUMNS = ("emotion", "fid", "fid_std_over_seeds", "n_seeds", "n_generated", "n_real", "against", "bin",
                   "space", "gen_dir")


def save_fid_row(path: str | Path, result: FIDResult, gen_dir: str | Path) -> Path:
    """Add ``result`` to the CSV ``path`` (columns ``FID_CSV_COLUMNS``), replacing an earlier row of the
    same emotion; written to a temporary file and renamed, so the file is always whole."""
    import csv
    import os

    path = Path(path)
    rows = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r.get("emotion") != result.emotion]
    rows.append(result.to_row() | {"gen_dir": str(gen_dir)})
    rows.sort(key=lambda r: EMOTIONS.index(r["emotion"]) if r.get("emotion") in EMOTIONS else len(EMOTIONS))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, FID_CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
    return path


def read_fids(pairs: list[str] | None = None, csv_path: str | Path | None = None) -> dict[str, float]:
    """``{emotion: FID}`` from ``EMOTION=VALUE`` strings and/or a CSV with ``emotion,fid`` columns
    (what ``exvo fid --save`` writes); a pair overrides the CSV."""
    import csv

    out: dict[str, float] = {}
    if csv_path is not None:
        p = Path(csv_path)
        if not p.is_file():
            raise FileNotFoundError(f"FID file {p} not found; write it with `exvo fid ... --save {p}`")
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not {"emotion", "fid"} <= set(reader.fieldnames or []):
                raise ValueError(f"{p} needs columns emotion,fid (found {reader.fieldnames})")
            for r in reader:
                try:
                    out[check_emotion(r["emotion"])] = float(r["fid"])
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{p} line {reader.line_num}: {e}") from None
    for s in pairs or []:
        e, sep, v = str(s).partition("=")
        try:
            if not sep:
                raise ValueError("no '='")
            out[check_emotion(e)] = float(v)
        except ValueError as err:
            raise ValueError(f"--fid {s!r}: expected EMOTION=VALUE, e.g. --fid Amusement=4.92 ({err})") from None
    return out
