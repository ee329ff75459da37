"""The steps of :func:`exvo.verify.api.verify` that need no training: which rows pretrain,
enrol and query, and the scores of a trained encoder's embeddings (paper 004, Alg. 1).

Rows are indices into the :class:`~exvo.verify.inputs.Inputs` (``n`` clips, ``inp.ids``
order); classes are indices into :data:`~exvo.metrics.EMOTIONS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from exvo.learn.framework import predict
from exvo.metrics import EMOTIONS, uar
from exvo.learn.selection import speaker_parts
from exvo.splits import holdout_split
from exvo.verify.config import VerifyConfig
from exvo.verify.episodes import draw_enrolment, nearest_prototype, prototypes, weighted_f1
from exvo.verify.inputs import Inputs


@dataclass
class Classes:
    """What every row of the inputs is.

    ``labels``: ``(n,)`` int, dominant emotion, −1 unknown; ``speakers``: ``(n,)`` speaker ids;
    ``seen``/``task``/``unseen``: class indices; ``test_labelled``: whether every Test clip has
    labels (then Test gives the queries)."""

    labels: np.ndarray
    speakers: np.ndarray
    seen: list[int]
    task: list[int]
    unseen: list[int]
    test_labelled: bool


@dataclass
class Rows:
    """Row indices (1-D int arrays) of the protocol's parts.

    ``fit``: the seen-class Train clips the final encoder trains on; ``parts``: the
    speaker-disjoint ``(fit, held)`` pairs epochs are chosen on; ``counts``: seen-class Train clips per class name; ``pool``: task-class
    clips enrolment draws from; ``queries``: task-class clips to verify, from split ``qsplit``
    (a description), ``qcount`` of them per class name."""

    fit: np.ndarray
    parts: list[tuple[np.ndarray, np.ndarray]]
    counts: dict[str, int]
    pool: np.ndarray
    queries: np.ndarray
    qsplit: str
    qcount: dict[str, int]


Embedder = Callable[[int, np.ndarray], np.ndarray]
"""``emb(j, rows)``: seed ``j``'s ``(len(rows), E)`` embeddings of the given rows."""


def over_seeds(values: Iterable[float | None]) -> dict:
    """``{"mean", "std"}`` (population std) over seeds of the values that are not None; both None if none is."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std())} if v.size else {"mean": None, "std": None}


def pretrain_rows(inp: Inputs, cl: Classes, cfg: VerifyConfig,
                  echo: Callable[[str], None]) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]], dict[str, int]]:
    """``(fit, parts, counts)``: the Train clips of the seen classes the final encoders train on
    (with a hold-out: all but the held-out speakers; with folds: all), the selection parts
    ``[(fit, held)]`` split by speaker, and the clips per class name. Standardises ``inp`` on the
    final fit rows, in place (feature statistics only)."""
    # only seen-class Train clips: an unseen class must shape neither the encoder nor the scaler
    train = inp.rows["Train"]
    seen_train = train[np.isin(cl.labels[train], cl.seen)]
    counts = {EMOTIONS[c]: int((cl.labels[seen_train] == c).sum()) for c in cl.seen}
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise ValueError(f"no Train clip has {', '.join(empty)} as its dominant emotion; choose other --seen classes "
                         f"(Train counts: {counts})")
    parts = speaker_parts(seen_train, cl.speakers[seen_train], None, cfg.select, echo)
    fit = parts[0][0] if cfg.select.on == "holdout" else seen_train
    inp.standardise(fit)
    how = (f"+{parts[0][1].size} held out by speaker for epoch selection" if cfg.select.on == "holdout" else
           f"epochs chosen on {len(parts)} speaker folds, then refitted on all")
    echo(f"{inp.describe()}; pretraining on {fit.size} Train clips of {len(cl.seen)} seen classes {counts} "
         f"({how}); loss {cfg.loss}, encoder {inp.kind}, seeds {cfg.seeds.list}")
    return fit, parts, counts


def task_rows(inp: Inputs, cl: Classes, cfg: VerifyConfig,
              echo: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray, str, dict[str, int]]:
    """``(pool, queries, qsplit, qcount)``: the task-class clips to enrol from and to verify.

    Queries are the Test clips when Test has labels, else the Val clips of half of the Val
    speakers, the other half being the pool (speaker-disjoint). Raises ``ValueError`` when a
    task class has no query, or fewer than ``cfg.enrol`` clips to enrol."""
    val = inp.rows["Val"]
    if cl.test_labelled and inp.rows["Test"].size:
        pool, queries, qsplit = val, inp.rows["Test"], "Test"
    else:
        pool, queries = holdout_split(val, cl.speakers[val], None, 0.5, cfg.select.holdout_seed + 1)
        qsplit = "Val (held-out half of the Val speakers; Test has no labels)"
    pool = pool[np.isin(cl.labels[pool], cl.task)]
    queries = queries[np.isin(cl.labels[queries], cl.task)]
    qcount = {EMOTIONS[c]: int((cl.labels[queries] == c).sum()) for c in cl.task}
    if any(n == 0 for n in qcount.values()):
        raise ValueError(f"the query split {qsplit} lacks clips of some task class ({qcount}); choose another --task")
    short = {EMOTIONS[c]: int((cl.labels[pool] == c).sum()) for c in cl.task
             if (cl.labels[pool] == c).sum() < cfg.enrol}
    if short:
        raise ValueError(f"only {short} clip(s) of the task class(es) are available to enrol from Val, fewer than "
                         f"--enrol {cfg.enrol}; enrol fewer clips")
    echo(f"task {' vs '.join(cfg.task)} (unseen: {', '.join(EMOTIONS[c] for c in cl.unseen)}); enrol {cfg.enrol} "
         f"per class from Val; {queries.size} queries from {qsplit} {qcount}")
    return pool, queries, qsplit, qcount


def embedder(stack, inp: Inputs, rows: Rows) -> Embedder:
    """Embed, once, every row the protocol looks at (fit, pool, queries, all of Val and Test) with
    each of the ``S`` seeds' encoders of ``stack``; return the lookup ``emb(j, rows)`` into that block."""
    everything = np.unique(np.concatenate([rows.fit, rows.pool, rows.queries, inp.rows["Val"], inp.rows["Test"]]))
    emb_all = predict(stack, inp.data, everything, vectorise=inp.kind == "mlp")["emb"]         # (S, n, E)
    at = {r: k for k, r in enumerate(everything)}

    def emb(j, rows):
        return emb_all[j][[at[r] for r in rows]]
    return emb


def pretrain_uar(emb: Embedder, inp: Inputs, cl: Classes, rows: Rows, n_seeds: int) -> list[float | None]:
    """Per seed, the UAR of the seen-class clips of the query split and Val against the seen
    classes' fit-row prototypes (Table 4 "Pretrain"); None where there is no such clip."""
    seen_q = np.concatenate([inp.rows["Test"] if rows.qsplit == "Test" else rows.queries, inp.rows["Val"]])
    seen_q = np.unique(seen_q[np.isin(cl.labels[seen_q], cl.seen)])
    pre = []
    for j in range(n_seeds):
        pt = prototypes(emb(j, rows.fit), cl.labels[rows.fit], cl.seen)
        pre.append(uar(cl.labels[seen_q], np.asarray(cl.seen)[nearest_prototype(emb(j, seen_q), pt)])
                   if seen_q.size else None)
    return pre


def enrol_and_score(emb: Embedder, cl: Classes, rows: Rows, seeds: list[int], n_enrol: int,
                    ids: list[str]) -> list[dict]:
    """Per seed (``emb``'s ``j`` = position in ``seeds``): enrol ``n_enrol`` pool clips of each task
    class, verify the queries against their prototypes; ``[{"seed", "uar", "f1_weighted", "enrolled"}]``."""
    out = []
    for j, sd in enumerate(seeds):
        # the draw depends on (seed, N_p) only: each point of the N_p curve is reproducible on its own
        rng = np.random.default_rng([int(sd), int(n_enrol), 15])
        en = draw_enrolment(rng, cl.labels, rows.pool, cl.task, n_enrol)
        pt = prototypes(emb(j, en), cl.labels[en], cl.task)
        pred = np.asarray(cl.task)[nearest_prototype(emb(j, rows.queries), pt)]
        out.append({"seed": int(sd), "uar": uar(cl.labels[rows.queries], pred),
                    "f1_weighted": weighted_f1(cl.labels[rows.queries], pred), "enrolled": [ids[r] for r in en]})
    return out


def np_curve(emb: Embedder, cl: Classes, rows: Rows, cfg: VerifyConfig,
             ids: list[str]) -> tuple[dict[str, dict], list[str]]:
    """``(curve, notes)``: UAR mean ± std (and per seed) for each N_p of ``cfg.curve`` the pool
    allows, keyed by ``str(N_p)``; a note for each N_p skipped for lack of clips."""
    curve, notes = {}, []
    avail = min(int((cl.labels[rows.pool] == c).sum()) for c in cl.task)
    for n_p in cfg.curve:
        if n_p > avail:
            notes.append(f"N_p = {n_p} skipped: only {avail} clips of the rarest task class in the enrolment pool")
            continue
        res = enrol_and_score(emb, cl, rows, cfg.seeds.list, n_p, ids)
        curve[str(n_p)] = over_seeds(r["uar"] for r in res) | {"per_seed": [r["uar"] for r in res]}
    return curve, notes
