"""HEEP (human-evaluated expression precision) and S_GEN of ExVo-Generate (paper ``002``).

§5.2, Equation (4)::

    HEEP = σ_TH / sqrt(σ_T² σ_H²)

the Pearson correlation between the vectorised target matrix ``T`` (N generated clips × 10
emotions; 1 for the targeted emotion(s), 0 elsewhere) and the vectorised rating matrix
``H`` (N × 10 average human intensity ratings of the same clips, "normed (0-1)", §3.2).
The normalisation of the moments cancels in the ratio, and a correlation does not change
under one common positive rescaling of all ratings, so 0-1 or 1-100 ratings give the same
HEEP (a per-emotion rescaling would change it: give ratings as collected).

Per emotion (Table 3 reports ``HEEP_e`` for each targeted emotion): Equation (4) on the
rows of the clips that target ``e`` (the challenge rates 5 such clips per emotion, §3.2).
The paper gives no separate formula for ``HEEP_e``; this is our reading (the alternative,
correlating column ``e`` of T and H over all rated clips, needs clips of several targets).

§5.2, Equation (5)::

    S_GEN_e = (1 / FID_e + HEEP_e) / 2

and the track's single number is the mean of ``S_GEN_e`` over all 10 emotions with 0 for an
emotion not targeted: Table 3's baseline row (Triumph 0.00) averages to its stated 0.174.

File formats
------------
Ratings CSV: ``File_ID,<10 emotions>`` (columns by name, any order, extra columns
ignored); one row per rated generated clip. Manifest CSV (optional): ``File_ID,Target``
where ``Target`` is an emotion name, or several separated by ``;``. Without a manifest the
target is read from the clip's name: the one emotion name that appears in it as a word
(case-insensitive; words are split at any non-letter), e.g. ``amusement_0007.wav`` or
``gen-Awe-12``. ``File_ID`` values are matched on their stem: surrounding ``[ ]``, folders
and an audio extension are ignored, so ``[amusement_0007]``, ``amusement_0007`` and
``out/amusement_0007.wav`` name the same clip.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

from exvo.corpus import listing
from exvo.metrics import EMOTIONS

AUDIO_EXT = (".wav", ".flac", ".mp3", ".ogg")
_EMO_LOWER = {e.lower(): e for e in EMOTIONS}


class RatingsError(ValueError):
    """A ratings or manifest file, or the targets of its clips, cannot be used."""


def clip_key(file_id: str) -> str:
    """``"[out/amusement_0007.wav]"`` → ``"amusement_0007"`` (how clips are matched)."""
    s = str(file_id).strip()
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1].strip()
    name = PurePath(s.replace("\\", "/")).name
    low = name.lower()
    for ext in AUDIO_EXT:
        if low.endswith(ext):
            return name[: -len(ext)]
    return name


def target_from_name(name: str) -> str:
    """The emotion named in a clip's name (see the module docstring); raises if none or several."""
    words = {w.lower() for w in re.split(r"[^A-Za-z]+", clip_key(name)) if w}
    found = sorted({_EMO_LOWER[w] for w in words if w in _EMO_LOWER})
    if len(found) != 1:
        what = "no emotion name" if not found else f"several emotion names ({', '.join(found)})"
        raise RatingsError(
            f"clip {name!r}: {what} in its name, so its target is unknown; name generated clips after their "
            f"target (e.g. amusement_0001.wav, one of {', '.join(EMOTIONS)}) or pass --manifest with File_ID,Target")
    return found[0]


def _read_csv(path: Path, need: tuple[str, ...], what: str) -> tuple[list[dict[str, str]], list[int]]:
    path = Path(path)
    if not path.is_file():
        raise RatingsError(f"{what} file {path} not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows, lines = [], []
            for r in reader:
                if not any((v or "").strip() for v in r.values() if isinstance(v, str)):
                    continue
                rows.append(r)
                lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error, OSError) as e:
        raise RatingsError(f"{what} file {path} is not a readable UTF-8 CSV ({e})") from None
    missing = [c for c in need if c not in header]
    if missing:
        raise RatingsError(f"{what} file {path} lacks column(s) {missing}; found {header}; "
                           f"expected {list(need)} (by name, any order)")
    if not rows:
        raise RatingsError(f"{what} file {path} has a header but no rows")
    return rows, lines


def read_ratings(path: str | Path) -> tuple[list[str], np.ndarray]:
    """``(clip keys (N,), H (N, 10) float64 in EMOTIONS order)`` from a ratings CSV.

    Raises :class:`RatingsError` for missing columns, duplicate clips, non-numeric or
    non-finite ratings (naming the CSV lines).
    """
    rows, lines = _read_csv(Path(path), ("File_ID", *EMOTIONS), "ratings")
    keys = [clip_key(r["File_ID"] or "") for r in rows]
    problems = []
    empty = [ln for k, ln in zip(keys, lines) if not k]
    if empty:
        problems.append(f"empty File_ID on line(s) {listing(empty)}")
    seen: dict[str, int] = {}
    dups = []
    for k, ln in zip(keys, lines):
        if k and k in seen:
            dups.append(f"{k} (lines {seen[k]} and {ln})")
        seen.setdefault(k, ln)
    if dups:
        problems.append(f"clip rated twice: {listing(dups)} (give one row of average ratings per clip)")
    H = np.full((len(rows), len(EMOTIONS)), math.nan)
    bad = []
    for n, r in enumerate(rows):
        for j, e in enumerate(EMOTIONS):
            try:
                H[n, j] = float((r[e] or "").strip())
            except ValueError:
                pass
        if not np.isfinite(H[n]).all():
            bad.append(lines[n])
    if bad:
        problems.append(f"missing, non-numeric or non-finite rating on line(s) {listing(bad)}")
    if problems:
        raise RatingsError(f"ratings file {path} has problems:\n  - " + "\n  - ".join(problems))
    return keys, H


def read_manifest(path: str | Path) -> dict[str, list[str]]:
    """``{clip key: [target emotion, …]}`` from a ``File_ID,Target`` CSV (``;`` separates targets)."""
    rows, lines = _read_csv(Path(path), ("File_ID", "Target"), "manifest")
    out: dict[str, list[str]] = {}
    bad = []
    for r, ln in zip(rows, lines):
        names = [t.strip() for t in (r["Target"] or "").split(";") if t.strip()]
        emos = [_EMO_LOWER.get(t.lower()) for t in names]
        if not names or any(e is None for e in emos):
            bad.append(f"line {ln}: {r['Target']!r}")
            continue
        out[clip_key(r["File_ID"] or "")] = sorted(set(emos), key=EMOTIONS.index)
    if bad:
        raise RatingsError(f"manifest {path}: unknown or empty Target ({listing(bad)}); "
                           f"use emotion names from {', '.join(EMOTIONS)}, several separated by ';'")
    return out


def target_matrix(keys: list[str], manifest: dict[str, list[str]] | None = None) -> np.ndarray:
    """``T`` ``(N, 10)`` of 0/1 (EMOTIONS order): targets from ``manifest`` or else from the names."""
    T = np.zeros((len(keys), len(EMOTIONS)))
    if manifest is not None:
        missing = [k for k in keys if k not in manifest]
        if missing:
            raise RatingsError(f"the manifest has no Target for {len(missing)} rated clip(s): {listing(missing)}")
    for n, k in enumerate(keys):
        for e in (manifest[k] if manifest is not None else [target_from_name(k)]):
            T[n, EMOTIONS.index(e)] = 1.0
    return T


def heep(T: np.ndarray, H: np.ndarray) -> float:
    """Equation (4) of paper 002: Pearson correlation of ``vec(T)`` and ``vec(H)``, both ``(N, 10)``."""
    t = np.asarray(T, dtype=np.float64).ravel()
    h = np.asarray(H, dtype=np.float64).ravel()
    if t.shape != h.shape or t.size == 0:
        raise RatingsError(f"targets {np.shape(T)} and ratings {np.shape(H)} must have the same non-empty shape")
    t, h = t - t.mean(), h - h.mean()
    vt, vh = float(t @ t), float(h @ h)
    if vt == 0.0 or vh == 0.0:
        raise RatingsError("HEEP is undefined: the " + ("targets" if vt == 0.0 else "ratings")
                           + " are constant (every cell the same value)")
    return float(t @ h / math.sqrt(vt * vh))


@dataclass
class HEEPResult:
    """``overall``: Equation (4) on all rated clips; ``per_emotion[e]``: on the clips targeting e;
    ``n_clips[e]``: how many rated clips target e."""

    overall: float
    per_emotion: dict[str, float]
    n_clips: dict[str, int]


def heep_scores(T: np.ndarray, H: np.ndarray) -> HEEPResult:
    """HEEP overall and per targeted emotion (emotions no clip targets are absent)."""
    per, counts = {}, {}
    for j, e in enumerate(EMOTIONS):
        rows = np.flatnonzero(T[:, j] > 0)
        if rows.size:
            per[e] = heep(T[rows], H[rows])
            counts[e] = int(rows.size)
    return HEEPResult(heep(T, H), per, counts)


def s_gen(fid_e: float, heep_e: float) -> float:
    """Equation (5) of paper 002: ``(1 / FID_e + HEEP_e) / 2``. FID must be > 0."""
    fid_e = float(fid_e)
    if not fid_e > 0.0 or not math.isfinite(fid_e):
        raise RatingsError(f"S_GEN needs a finite FID > 0, got {fid_e} (FID 0 means the generated set has the "
                           "same moments as the real one, e.g. copies of it)")
    return (1.0 / fid_e + float(heep_e)) / 2.0


def s_gen_scores(fids: dict[str, float], heeps: dict[str, float]) -> tuple[dict[str, float], float]:
    """``({emotion: S_GEN_e}, overall)``: S_GEN_e for emotions with both an FID and a HEEP; the
    overall score is the mean over all 10 emotions with 0 for the others (Table 3 of paper 002)."""
    unknown = sorted(set(fids) - set(EMOTIONS)) + sorted(set(heeps) - set(EMOTIONS))
    if unknown:
        raise RatingsError(f"unknown emotion(s) {unknown}; use {', '.join(EMOTIONS)}")
    per = {e: s_gen(fids[e], heeps[e]) for e in EMOTIONS if e in fids and e in heeps}
    return per, float(sum(per.values()) / len(EMOTIONS))
