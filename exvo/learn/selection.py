"""Where models are chosen: a speaker-disjoint held-out part of Train (default) or Val (†).

Every learner (MLP, XGBoost, any registered one) and the ``@best`` layer probe use the same
rule, so that Val labels never influence a model by default and the Val score is a clean
estimate:

* ``on="holdout"``: per country, ``round(frac × that country's Train speakers)`` speakers
  are held out — at least 1, never all of them — with a generator seeded by ``seed``
  (a speaker's country is the most frequent one among its clips). Models are fitted on the
  other Train speakers; early stopping, best-epoch choice and the probe use the held-out
  clips. Stratifying by country keeps every country in both parts even on a 20-speaker
  Train split (a plain 10 % would hold out 2 speakers, too few to early-stop the country
  task on: the XGBoost country model then stopped at its first tree and predicted one class).
* ``on="val"``: fit on all of Train, choose on Val — the papers' protocol. Val scores of
  such a run are optimistic (†): the same labels chose the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exvo.corpus import Corpus

SELECT_ON = ("holdout", "val")
MONITORS = ("score", "loss")


@dataclass
class SelectionConfig:
    """``on``: holdout | val. ``monitor``: ``score`` (the selection S_MTL, CCC/UAR floored, higher is
    better) | ``loss`` (the learner's training loss on the selection rows, lower is better, as the
    baseline's Val loss). ``holdout_frac``/``holdout_seed``: the hold-out rule above."""

    on: str = "holdout"
    monitor: str = "score"
    holdout_frac: float = 0.1
    holdout_seed: int = 0

    def __post_init__(self):
        if self.on not in SELECT_ON:
            raise ValueError(f"unknown --stop-on {self.on!r}; choose one of {SELECT_ON}")
        if self.monitor not in MONITORS:
            raise ValueError(f"unknown selection monitor {self.monitor!r}; choose one of {MONITORS}")
        if not 0.0 < float(self.holdout_frac) < 1.0:
            raise ValueError(f"holdout_frac must be in (0, 1), got {self.holdout_frac}")

    @property
    def optimistic(self) -> bool:
        """True when Val chose the model: its Val scores are optimistic (shown with †)."""
        return self.on == "val"

    def describe(self) -> str:
        if self.on == "val":
            return ("fit on all of Train; early stopping / epoch / @best layer chosen on Val "
                    f"({'Val loss' if self.monitor == 'loss' else 'Val selection S_MTL'}) — Val scores optimistic (†)")
        return (f"fit on Train minus a speaker-disjoint hold-out (per country round({self.holdout_frac:g} × speakers), "
                f"≥ 1, never all; seed {self.holdout_seed}); early stopping / epoch / @best layer chosen on the hold-out "
                f"({'loss' if self.monitor == 'loss' else 'selection S_MTL'}); Val labels unused until scoring")


def speaker_countries(speakers: np.ndarray, country: np.ndarray) -> dict[str, int]:
    """Each speaker's most frequent country (ties: the lowest code)."""
    out = {}
    for s in np.unique(speakers):
        c = country[speakers == s]
        c = c[c >= 0]
        out[str(s)] = int(np.bincount(c).argmax()) if c.size else -1
    return out


def holdout_speakers(speakers: np.ndarray, country: np.ndarray, frac: float, seed: int) -> set[str]:
    """The held-out speakers among ``speakers`` ``(n,)`` with clip countries ``country`` ``(n,)``."""
    sc = speaker_countries(speakers, country)
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for c in sorted(set(sc.values())):
        group = sorted(s for s, v in sc.items() if v == c)
        k = min(len(group) - 1, max(1, int(round(frac * len(group)))))
        if k > 0:
            held.update(rng.choice(group, size=k, replace=False).tolist())
    if not held:
        raise ValueError(f"a speaker-disjoint hold-out needs a country with at least 2 Train speakers; found "
                         f"{len(sc)} speaker(s). Use --stop-on val on so small a corpus (Val scores are then optimistic)")
    return held


def holdout_split(train_rows: np.ndarray, speakers: np.ndarray, country: np.ndarray | None = None,
                  frac: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Speaker-disjoint ``(fit rows, held-out rows)`` of ``train_rows`` — the one hold-out rule of
    exvo (learn, fewshot, verify, task CNNs). ``speakers`` and ``country`` are aligned with
    ``train_rows``; ``country=None`` (a corpus or task without countries): one stratum, at
    least one speaker on each side."""
    speakers = np.asarray(speakers)
    if country is None:
        n = np.unique(speakers).size
        if n < 2:
            raise ValueError(f"a speaker-disjoint hold-out needs at least 2 speakers, got {n}")
        country = np.full(speakers.shape[0], -1)
    held = holdout_speakers(speakers, np.asarray(country), frac, seed)
    mask = np.array([s in held for s in speakers], dtype=bool)
    return train_rows[~mask], train_rows[mask]


def corpus_rows_speakers(corpus: Corpus, ids: list[str], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Speakers and countries of ``ids[rows]`` from the corpus table."""
    pos = {i: k for k, i in enumerate(corpus.ids)}
    src = np.array([pos[ids[k]] for k in rows], dtype=np.int64)
    return corpus.speakers[src], corpus.country[src]


def selection_rows(corpus: Corpus, ids: list[str], rows: dict[str, np.ndarray],
                   sel: SelectionConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(fit rows, selection rows)`` of a feature matrix with ``ids`` and split ``rows``."""
    if sel.on == "val":
        return rows["Train"], rows["Val"]
    spk, cou = corpus_rows_speakers(corpus, ids, rows["Train"])
    return holdout_split(rows["Train"], spk, cou, sel.holdout_frac, sel.holdout_seed)
