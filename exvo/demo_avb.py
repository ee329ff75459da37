"""The A-VB 2022 labels of the demo corpus (``exvo demo-corpus --layout avb|both``).

Derived from each clip's burst type and *true* emotion mix (what drives the synthesised
audio, :mod:`exvo.demo`), with rater noise on top, so that every A-VB task is learnable and
none is trivial:

* Type (``Voc_Type``): laugh → Laugh, cry → Cry, aah → Other; a gasp is a Scream when its fear
  and horror are strong (louder, noisier) and a Gasp otherwise; a sigh is a Groan when sad and a
  Pant otherwise; 10 % of the labels are another type (rater disagreement);
* Two: arousal = 0.15 + 1.3 × the mean of the high-arousal emotions (which raise pitch, loudness
  and F1 in the audio), valence = 0.5 + 0.45 × (mean pleasant − mean unpleasant emotions),
  both + N(0, 0.06), clipped to [0, 1];
* Culture: each culture's ratings are the mix scaled by that culture's own per-emotion
  reading (× exp N(0, 0.25), fixed per culture and emotion) + N(0, 0.08) rater noise;
* High: the ExVo emotion labels themselves.

A separate random stream (``seed + 1``) draws this noise, so the audio and ExVo labels of a
seed do not depend on the layout.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from exvo.corpus import HIDDEN_LABELS_FILE
from exvo.metrics import COUNTRIES, EMOTIONS
from exvo.tasks import AVB_CULTURES, AVB_FILES, AVB_TWO, AVB_TYPES, BUILTIN, avb_culture_columns

_E = {e: k for k, e in enumerate(EMOTIONS)}
HIGH_AROUSAL = ("Excitement", "Fear", "Horror", "Triumph", "Surprise")
PLEASANT = ("Amusement", "Awe", "Excitement", "Triumph")
UNPLEASANT = ("Fear", "Horror", "Distress", "Sadness")


class AVBLabels:
    """Collects every clip's A-VB labels (:meth:`add`) and writes the label files (:meth:`write`)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed + 1)
        self.reading = np.exp(self.rng.normal(0, 0.25, size=(len(AVB_CULTURES), len(EMOTIONS))))
        self.rows: list[dict] = []

    def _type(self, kind: str, e: np.ndarray) -> str:
        t = {"laugh": "Laugh", "cry": "Cry", "aah": "Other"}.get(kind)
        if kind == "gasp":
            t = "Scream" if e[_E["Fear"]] + e[_E["Horror"]] > 0.9 else "Gasp"
        elif kind == "sigh":
            t = "Groan" if e[_E["Sadness"]] > 0.3 else "Pant"
        if self.rng.random() < 0.1:
            t = AVB_TYPES[int(self.rng.integers(len(AVB_TYPES)))]
        return t

    def add(self, file_id: str, split: str, spk, kind: str, true_emo: np.ndarray, labels: np.ndarray) -> None:
        e = np.asarray(true_emo, dtype=np.float64)
        hi = e[[_E[k] for k in HIGH_AROUSAL]].mean()
        val = e[[_E[k] for k in PLEASANT]].mean() - e[[_E[k] for k in UNPLEASANT]].mean()
        two = {"Arousal": 0.15 + 1.3 * hi, "Valence": 0.5 + 0.45 * val}
        two = {k: float(np.clip(v + self.rng.normal(0, 0.06), 0, 1).round(4)) for k, v in two.items()}
        cult = np.clip(e[None] * self.reading + self.rng.normal(0, 0.08, size=self.reading.shape), 0, 1).round(4)
        culture = {f"{c}_{m}": float(cult[i, _E[m]]) for i, c in enumerate(AVB_CULTURES) for m in EMOTIONS}
        self.rows.append({"File_ID": file_id, "Split": split, "Subject_ID": spk.id, "Country": COUNTRIES[spk.country],
                          **dict(zip(EMOTIONS, np.asarray(labels).tolist())), **two, **culture,
                          "Voc_Type": self._type(kind, e)})

    def write(self, folder: Path, base: bool) -> None:
        """``labels/<task>_info.csv`` (File_ID, Split, the task's columns; Test cells empty), the
        hidden Test labels and, with ``base``, ``labels/data_info.csv`` (File_ID, Split, Subject_ID,
        Country)."""
        folder.mkdir(parents=True, exist_ok=True)
        tables = {f: ("File_ID", "Split", *BUILTIN[t].submission) for t, f in AVB_FILES.items()}
        assert BUILTIN["avb-two"].submission == AVB_TWO and BUILTIN["avb-culture"].submission == avb_culture_columns()
        if base:
            tables["data_info.csv"] = ("File_ID", "Split", "Subject_ID", "Country")
        for name, cols in tables.items():
            with open(folder / name, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(cols)
                for r in self.rows:
                    keep = name == "data_info.csv" or r["Split"] != "Test"
                    w.writerow([r[c] if keep or c in ("File_ID", "Split") else "" for c in cols])
        every = ("File_ID", "Split", "Subject_ID", "Country", *EMOTIONS, *AVB_TWO, *avb_culture_columns(), "Voc_Type")
        with open(folder / HIDDEN_LABELS_FILE, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(every)
            w.writerows([r[c] for c in every] for r in self.rows if r["Split"] == "Test")
