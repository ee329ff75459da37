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

The hold-out rule itself is :func:`exvo.splits.holdout_split`.
"""
from __future__ import annotations

import numpy as np

from exvo.config import DEFAULT_FOLDS, SelectionConfig
from exvo.corpus import Corpus
from exvo.splits import holdout_split, speaker_folds

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


def selection_folds(corpus: Corpus, ids: list[str], rows: dict[str, np.ndarray], sel: SelectionConfig,
                    note=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(fit rows, selection rows)]``: K speaker folds of Train (``on="folds"``, stratified by
    country when every country has at least K speakers, else plain — ``note`` says which), or
    the one hold-out / Val pair of :func:`selection_rows`."""
    if sel.on == "val":
        return [(rows["Train"], rows["Val"])]
    spk, cou = corpus_rows_speakers(corpus, ids, rows["Train"])
    return speaker_parts(rows["Train"], spk, cou, sel, note)


def speaker_parts(train: np.ndarray, spk: np.ndarray, cou: np.ndarray | None, sel: SelectionConfig,
                  note=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(fit rows, held rows)]`` of ``train`` ``(n,)`` by speaker (``spk``/``cou`` ``(n,)``, ``cou=None``:
    no country strata): its K speaker folds (``on="folds"``, :func:`folds_of_rows`) or the one
    hold-out (``on="holdout"``, :func:`exvo.splits.holdout_split`). For rows that are not a corpus
    feature matrix (few-shot, enrol-to-verify); :func:`selection_folds` is the same on a corpus."""
    if sel.on == "folds":
        return folds_of_rows(train, spk, cou, sel, note)
    return [holdout_split(train, spk, cou, sel.holdout_frac, sel.holdout_seed)]


def folds_of_rows(train: np.ndarray, spk: np.ndarray, cou: np.ndarray | None, sel: SelectionConfig,
                  note=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(fit rows, held rows)]``: the K speaker folds of ``train`` ``(n,)`` whose speakers and
    countries are ``spk``/``cou`` ``(n,)`` (``cou=None``: no country strata), as
    :func:`selection_folds` says; for callers whose rows are not a corpus feature matrix."""
    if cou is None:
        cou = np.full(spk.shape[0], -1)
    n_spk = np.unique(spk).size
    k = sel.k if sel.k is not None else min(DEFAULT_FOLDS, n_spk)
    if n_spk < max(k, 2):
        raise ValueError(f"--folds {k}: Train has {n_spk} speaker(s), too few for {k} speaker folds; use "
                         f"--folds {max(2, n_spk)} (at least 2 speakers needed) or --stop-on val (Val scores then optimistic †)")
    per_country = [np.unique(spk[cou == c]).size for c in np.unique(cou[cou >= 0])]
    stratified = bool(per_country) and min(per_country) >= k
    if note is not None:
        fewer = (f" (only {n_spk} Train speakers, so fewer than {DEFAULT_FOLDS} folds)"
                 if k < DEFAULT_FOLDS and sel.k is None else "")
        note(f"  {k} speaker folds of {n_spk} Train speakers{fewer}, " + (
            "stratified by country" if stratified else "not stratified (no countries)" if not per_country else
            f"not stratified by country (a country has {min(per_country)} speaker(s) < {k})"))
    fold = speaker_folds(spk, k, sel.holdout_seed, cou if stratified else None)
    return [(train[fold != i], train[fold == i]) for i in range(k)]
