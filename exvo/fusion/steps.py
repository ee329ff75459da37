"""The steps of :func:`exvo.fusion.api.fuse` between reading the sources and writing the run.

In the order ``fuse`` calls them: :func:`val_candidates` (each source's Val predictions,
seed by seed where every source has per-seed files), :func:`fuse_full_val` (the choice on
all of Val and the predictions it gives, the ones written), :func:`cv_estimate` or
:func:`val_estimate` (the scores the run reports) and :func:`fuse_test`. Each returns a
small record of what it found. The ``notes`` list passed along is extended in place, so
the notes keep the order in which ``fuse`` prints them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exvo.corpus import Corpus
from exvo.fusion import seeds
from exvo.fusion.basis import basis_note, oof_spread, seed_spread
from exvo.learn.features import train_label_leaks
from exvo.fusion.cv import speaker_halves
from exvo.fusion.ensemble import compose
from exvo.fusion.select import SUBTASKS, Choice, choose, subtask_score, subtasks
from exvo.predictions import PredictionError, Predictions, SeedPredictions, load_seed_predictions
from exvo.runs.reader import Run, check_same_ids

SCORE_KEYS = ("ccc", "uar", "mae", "s_mtl")
"""ExVo-MTL's score keys; a fusion of another task's runs has that task's (:func:`score_keys`)."""


def score_keys(cand: "ValCandidates") -> tuple[str, ...]:
    return next(iter(cand.preds.values())).task.metric_keys


@dataclass(frozen=True)
class Options:
    """How to fuse: the choice rule (``mode``, ``top``, ``weighted``) and what it is scored on."""

    mode: str
    top: int
    weighted: bool
    select_on: str
    cv_seed: int

    @property
    def selects(self) -> bool:
        """Whether anything is chosen or weighted on Val (a plain mean is not)."""
        return self.mode == "hybrid" or self.weighted

    @property
    def optimistic(self) -> bool:
        """Whether the reported Val score is scored on the data it was chosen on."""
        return self.select_on == "val" and self.selects


@dataclass
class ValCandidates:
    """Every source's Val predictions, rows in the corpus' Val order (``n`` clips)."""

    ids: list[str]                              # the corpus' Val ids, (n,)
    labels: tuple                               # corpus.labels("Val"): emotions (n, 10), country (n,), age (n,)
    preds: dict[str, Predictions]               # run → what is ranked and composed (ensemble of its paired seeds)
    seed_preds: list[dict[str, Predictions]]    # fused seed k → {run: its seed k}; [] without per-seed files
    seed_sources: list[dict[str, int]]          # fused seed k → {run: the seed value it contributes}
    covers: dict[str, tuple[str, ...]] | None = None   # run → the subtasks it predicts (None: all, every run)

    @property
    def n_seeds(self) -> int:
        """Fused seeds (0: some source has no per-seed Val predictions)."""
        return len(self.seed_preds)


@dataclass
class FusedVal:
    """The choice made on all of Val and the predictions it gives (the ones written)."""

    choices: dict[str, Choice]
    weights: dict[str, dict[str, float]]        # subtask → {run: weight}, the runs of choices[subtask]
    pred: Predictions                           # val.csv: the ensemble of seed_preds when there are seeds
    seed_preds: list[Predictions]               # fused seed k, (n,) rows each; [] without seeds
    seed_stack: SeedPredictions | None          # seed_preds as per_seed/val.npz
    scores: dict                                # full-Val scores of pred (optimistic when anything was chosen)


@dataclass
class Estimate:
    """The scores the run reports and how they were obtained."""

    ensemble: dict                              # scores of the seed ensemble (cv: out of fold)
    per_seed: list[dict]                        # metrics.json per_seed rows; [] without seeds
    reported: dict                              # {metric: {"mean", "std", "n"}}
    note: str                                   # the selection note
    cv: dict | None = None                      # fusion.json "cv" (select_on="cv" only)


@dataclass
class FusedTest:
    """Test predictions composed like Val's, when every run the choice uses has them."""

    pred: Predictions | None                    # test.csv; None: not written
    seed_stack: SeedPredictions | None          # per_seed/test.npz; None: not written
    have_test: list[str]                        # the sources with a test.csv, by name
    note: str


def fuse_seeds(seed_preds: list[dict[str, Predictions]], weights: dict[str, dict[str, float]]) -> list[Predictions]:
    """Fused seed k for each ``{run: seed k}`` of ``seed_preds``, composed with ``weights``."""
    return [compose(v, weights)[0] for v in seed_preds]


def _out_of_fold(template: Predictions, parts: list[tuple[np.ndarray, Predictions]]) -> Predictions:
    """Rows ``idx`` of each ``(idx, pred)`` put together (all aligned with ``template``)."""
    emo, cou, age = template.emotions.copy(), template.country.copy(), template.age.copy()
    has_proba = all(p.country_proba is not None for _, p in parts)
    proba = np.zeros((len(template), template.task.n_classes)) if has_proba else None
    for idx, p in parts:
        emo[idx], cou[idx], age[idx] = p.emotions[idx], p.country[idx], p.age[idx]
        if has_proba:
            proba[idx] = p.country_proba[idx]
    return Predictions(list(template.ids), emo, cou, age, proba, template.task)


def _choose_all(preds: dict[str, Predictions], labels, idx, mode, top, weighted,
                covers: dict[str, tuple[str, ...]] | None = None) -> dict[str, Choice]:
    """``{subtask: Choice}`` from the scores of ``preds`` (aligned with ``labels``) on rows ``idx``
    (None: every row); a run enters only the subtasks ``covers`` gives it (None: all)."""
    out = {}
    for sub in subtasks(next(iter(preds.values())).task):
        scores = {n: subtask_score(sub, p, labels, idx) for n, p in preds.items()
                  if covers is None or sub in covers.get(n, SUBTASKS)}
        if not scores:
            raise ValueError(f"no source predicts the {sub} subtask (partial sources: "
                             f"{', '.join(f'{n} {list(c)}' for n, c in sorted((covers or {}).items()))}); "
                             "add a run that does")
        out[sub] = choose(sub, scores, mode, top, weighted)
    return out


def _covers(by_name: dict[str, Run]) -> dict[str, tuple[str, ...]] | None:
    """run → its subtasks when some run is a partial source, else None."""
    c = {n: r.subtasks for n, r in by_name.items()}
    return c if any(set(v) != set(SUBTASKS) for v in c.values()) else None


def _reported(per_seed: list[dict], ensemble: dict) -> dict:
    """``{metric: {"mean", "std", "n"}}`` over the fused seeds, or the ensemble's score without them."""
    if per_seed:
        return seeds.summarise(per_seed)
    # no seeds to average: the estimate is the seed ensemble's score, with no std
    return {k: {"mean": float(ensemble[k]), "std": None, "n": 0} for k in seeds.keys_of(ensemble)}


def _load_val(corpus: Corpus, by_name: dict[str, Run]) -> tuple[dict[str, Predictions], list[str]]:
    """``({run: its val.csv, rows in file order}, the corpus' Val ids)``; a PredictionError
    unless every run predicts exactly the corpus' Val clips."""
    raw_val = {n: r.load("Val") for n, r in by_name.items()}
    check_same_ids(raw_val, "Val")
    val_ids = corpus.split_ids("Val")
    ref = sorted(raw_val)[0]
    if set(raw_val[ref].ids) != set(val_ids):
        miss = sorted(set(val_ids) - set(raw_val[ref].ids))
        extra = sorted(set(raw_val[ref].ids) - set(val_ids))
        raise PredictionError(
            f"the runs' Val ids do not match the Val split of {corpus.root}: {len(miss)} missing {miss[:5]}, "
            f"{len(extra)} extra {extra[:5]}; pass the --data corpus the runs were trained on (every run must "
            "predict every Val clip of it)")
    return raw_val, val_ids


def val_candidates(corpus: Corpus, by_name: dict[str, Run], notes: list[str]) -> ValCandidates:
    """The Val predictions of the runs ``by_name``, seed by seed when every run keeps
    ``per_seed/val.npz`` (paired by index, see :mod:`exvo.fusion.seeds`), else from their
    seed-averaged ``val.csv``; appends to ``notes`` why there are no or fewer seeds."""
    raw_val, val_ids = _load_val(corpus, by_name)
    labels = corpus.labels("Val")
    covers = _covers(by_name)
    if covers:
        notes.append("partial source(s): " + "; ".join(f"{n} predicts {', '.join(c)} only" for n, c in sorted(covers.items())
                                                       if set(c) != set(SUBTASKS)))
    seed_val = {n: load_seed_predictions(r.path, "Val") for n, r in by_name.items()}
    no_seeds = sorted(n for n, sp in seed_val.items() if sp is None or set(sp.ids) != set(val_ids))
    if no_seeds:
        notes.append(f"run(s) {', '.join(no_seeds)} have no per-seed Val predictions (per_seed/val.npz): fused "
                     "their seed-averaged val.csv instead, so this run has no mean ± std over seeds")
        return ValCandidates(val_ids, labels, {n: p.take(val_ids) for n, p in raw_val.items()}, [], [], covers)
    seed_val, bnotes = seeds.broadcast_fixed(seed_val, {n for n, r in by_name.items() if r.fixed_model})
    notes += bnotes
    n_seeds, pnotes = seeds.pair_count(seed_val)
    notes += pnotes
    # candidates are the ensembles of the paired seeds, so the choice, the per-seed rows and
    # val.csv (the ensemble of the fused seeds) all rest on the same seeds
    preds = seeds.ensemble_views(seed_val, n_seeds, val_ids)
    seed_preds = [seeds.seed_views(seed_val, k, val_ids) for k in range(n_seeds)]
    seed_sources = [{n: int(seed_val[n].seeds[k]) for n in sorted(by_name)} for k in range(n_seeds)]
    return ValCandidates(val_ids, labels, preds, seed_preds, seed_sources, covers)


def oof_choices(corpus: Corpus, by_name: dict[str, Run], opts: Options, notes: list[str]) -> dict[str, Choice]:
    """``select_on="oof"``: the choice per subtask made on the sources' out-of-fold Train
    predictions (``oof.csv``, runs made with ``exvo learn --stop-on folds``), so that Val stays
    unseen by the choice; a PredictionError names the sources without them. A source whose OOF
    predictions are optimistic (a task CNN's features trained on these Train labels) is named in
    ``notes``: the choice favours it, though Val, never used, stays a clean score."""
    lacking = sorted(n for n, r in by_name.items() if not r.has("OOF"))
    if lacking:
        raise PredictionError(f"--select-on oof: run(s) {', '.join(lacking)} have no out-of-fold Train predictions "
                              "(oof.csv); train them with `exvo learn --stop-on folds`, or choose with --select-on cv (halves of Val) "
                              "or --select-on val (optimistic †)")
    for n, r in by_name.items():
        for why in train_label_leaks(r.record.get("features") or [], corpus.name):
            notes.append(f"warning: {n}'s out-of-fold predictions are optimistic ({why}); the choice on them "
                         "favours it")
    train_ids = corpus.split_ids("Train")
    preds = {n: r.load("OOF") for n, r in by_name.items()}
    for n, pr in preds.items():
        if set(pr.ids) != set(train_ids):
            raise PredictionError(f"--select-on oof: {n}'s out-of-fold predictions cover {len(pr.ids)} clips, not the "
                                  f"{len(train_ids)} Train clips of {corpus.root} (clips missing from its cache?)")
    choices = _choose_all({n: pr.take(train_ids) for n, pr in preds.items()}, corpus.labels("Train"), None,
                          opts.mode, opts.top, opts.weighted, _covers(by_name))
    for sub in choices if opts.selects else ():     # what chose, on which quantity (printed, kept in fusion.json)
        choices[sub].notes.append(basis_note(choices[sub], oof_spread(by_name, sub), "out-of-fold Train"))
    return choices


def fuse_full_val(cand: ValCandidates, opts: Options, notes: list[str],
                  choices: dict[str, Choice] | None = None) -> FusedVal:
    """Choose per subtask on all of Val (or take ``choices`` made elsewhere: on the sources'
    out-of-fold Train predictions) and compose the predictions that are written: every fused
    seed, and val.csv as their ensemble; appends the composition's notes to ``notes``."""
    if choices is None:
        choices = _choose_all(cand.preds, cand.labels, None, opts.mode, opts.top, opts.weighted, cand.covers)
        if opts.selects:     # what chose, on which quantity (printed under each subtask, kept in fusion.json)
            for sub in choices:
                spread = seed_spread(cand.preds, cand.seed_preds, cand.labels, sub)
                choices[sub].notes.append(basis_note(choices[sub], spread))
    weights = {s: choices[s].weights for s in choices}
    pred, cnotes = compose(cand.preds, weights)
    notes += cnotes
    fused = fuse_seeds(cand.seed_preds, weights)
    seed_stack = seeds.stack(fused, list(range(cand.n_seeds))) if cand.n_seeds else None
    if seed_stack is not None:
        pred = seed_stack.ensemble()
    return FusedVal(choices, weights, pred, fused, seed_stack, seeds.score(pred, cand.labels, None))


def val_estimate(cand: ValCandidates, full: FusedVal, opts: Options) -> Estimate:
    """``select_on="val"`` or ``"oof"``: the run reports the full-Val scores of ``full`` (per
    fused seed and of the seed ensemble), optimistic when anything was chosen or weighted on Val."""
    per_seed = [seeds.seed_row(k, seeds.score(p, cand.labels, None), cand.seed_sources[k])
                for k, p in enumerate(full.seed_preds)]
    if opts.select_on == "oof":
        note = ("--select-on oof: chosen/weighted on the sources' out-of-fold Train predictions; Val never took "
                "part in the choice, so its score is a clean held-out estimate")
    else:
        note = ("--select-on val: the runs were chosen/weighted on Val, so the Val score is optimistic "
                "(use --select-on oof or cv for an honest estimate)" if opts.selects else
                "--select-on val: plain average, nothing chosen on Val")
    return Estimate(full.scores, per_seed, _reported(per_seed, full.scores), note)


def _cv_direction(cand: ValCandidates, sel: np.ndarray, ev: np.ndarray, label: str,
                  opts: Options) -> tuple[dict, Predictions, list[Predictions]]:
    """Choose on Val rows ``sel``, score on rows ``ev``: ``(the fusion.json direction, the
    composed Val predictions (n,) rows, the fused seeds)``; only rows ``ev`` are held out."""
    ch = _choose_all(cand.preds, cand.labels, sel, opts.mode, opts.top, opts.weighted, cand.covers)
    w = {s: ch[s].weights for s in ch}
    pred, _ = compose(cand.preds, w)
    sc = seeds.score(pred, cand.labels, ev)
    direction = {
        "direction": label,
        "n_select": int(sel.size), "n_score": int(ev.size),
        "chosen": {s: ch[s].chosen for s in ch},
        "weights": w,
        "scores": {k: sc[k] for k in seeds.keys_of(sc)},
    }
    return direction, pred, fuse_seeds(cand.seed_preds, w)


def _cv_record(speakers: np.ndarray, halves: tuple[np.ndarray, np.ndarray], directions: list[dict],
               oof_scores: dict, cv_seed: int) -> tuple[dict, str]:
    """``(fusion.json "cv", the selection note)`` from the two directions and the
    out-of-fold scores; ``speakers`` (n,) of the Val rows, ``halves`` their row indices."""
    halves_mean = {k: float(np.mean([d["scores"][k] for d in directions])) for k in seeds.keys_of(oof_scores)}
    spk_a = sorted(set(speakers[halves[0]].tolist()))
    spk_b = sorted(set(speakers[halves[1]].tolist()))
    record = {"seed": cv_seed, "speakers_a": spk_a, "speakers_b": spk_b, "directions": directions,
              "mean_of_halves": halves_mean,
              "std_of_halves": {k: float(np.std([d["scores"][k] for d in directions])) for k in seeds.keys_of(oof_scores)},
              "out_of_fold": {k: oof_scores[k] for k in seeds.keys_of(oof_scores)}}
    note = (f"--select-on cv: chose (on each candidate's seed-ensemble score of that half) on one half of the Val "
            f"speakers and scored on the other "
            f"({len(spk_a)}/{len(spk_b)} speakers, {halves[0].size}/{halves[1].size} clips), both ways; "
            "reported: the out-of-fold scores on all of Val (each clip predicted by the choice made "
            "without it), per seed and of the seed ensemble; the full-Val score of val.csv is "
            "optimistic and kept apart as 'full_val_ensemble'")
    return record, note


def cv_estimate(corpus: Corpus, cand: ValCandidates, full: FusedVal, opts: Options) -> Estimate:
    """``select_on="cv"``: choose on one half of the Val speakers, score on the other, both
    ways; the run reports the out-of-fold scores (per fused seed and of the seed ensemble)."""
    speakers = corpus.speakers[corpus.indices("Val")]
    halves = speaker_halves(speakers, opts.cv_seed)
    directions, oof_parts = [], []
    oof_seed_parts: list[list] = [[] for _ in range(cand.n_seeds)]
    for sel_i, ev_i, label in ((0, 1, "choose on A, score on B"), (1, 0, "choose on B, score on A")):
        direction, pred, fused = _cv_direction(cand, halves[sel_i], halves[ev_i], label, opts)
        oof_parts.append((halves[ev_i], pred))
        for k, p in enumerate(fused):
            oof_seed_parts[k].append((halves[ev_i], p))
        directions.append(direction)
    # out-of-fold: every clip predicted by the choice made on the other half, scored on all
    # of Val at once, so the number is comparable with the learn runs' full-Val scores
    # (CCC and UAR of a half are not those of the whole, even for the same predictions)
    oof_scores = seeds.score(_out_of_fold(full.pred, oof_parts), cand.labels, None)
    per_seed = [seeds.seed_row(k, seeds.score(_out_of_fold(full.seed_preds[k], parts), cand.labels, None),
                               cand.seed_sources[k])
                for k, parts in enumerate(oof_seed_parts)]
    record, note = _cv_record(speakers, halves, directions, oof_scores, opts.cv_seed)
    return Estimate(oof_scores, per_seed, _reported(per_seed, oof_scores), note, record)


def _compose_test(by_name: dict[str, Run], raw_test: dict[str, Predictions], test_ids: list[str], used: list[str],
                  weights: dict[str, dict[str, float]], n_seeds: int) -> tuple[Predictions, SeedPredictions | None]:
    """``(test.csv, per_seed/test.npz or None)`` of the ``used`` runs (all in ``raw_test``, their
    test.csv), rows in ``test_ids`` order: seed by seed when each keeps at least ``n_seeds``
    Test seeds, else from their test.csv."""
    seed_test = {n: load_seed_predictions(by_name[n].path, "Test") for n in used}
    if all(sp is not None for sp in seed_test.values()):
        seed_test, _ = seeds.broadcast_fixed(seed_test, {n for n in used if by_name[n].fixed_model})
    if n_seeds and all(sp is not None and set(sp.ids) == set(test_ids) and len(sp.seeds) >= n_seeds
                       for sp in seed_test.values()):
        fused = [compose(seeds.seed_views(seed_test, k, test_ids), weights)[0] for k in range(n_seeds)]
        seed_stack = seeds.stack(fused, list(range(n_seeds)))
        return seed_stack.ensemble(), seed_stack
    test = {n: raw_test[n].take(test_ids) for n in used}
    return compose(test, weights)[0], None


def fuse_test(corpus: Corpus, by_name: dict[str, Run], full: FusedVal, n_seeds: int, notes: list[str]) -> FusedTest:
    """Test predictions with ``full``'s weights, only when every run they use has a test.csv
    (Test predictions that Val never scored are worse than none); appends to ``notes`` which
    runs lack it."""
    used = sorted({n for s in full.weights for n in full.weights[s]})
    have_test = [n for n in sorted(by_name) if by_name[n].has("Test")]
    lacking = [n for n in used if n not in have_test]
    pred = seed_stack = None
    if have_test:
        raw_test = {n: by_name[n].load("Test") for n in have_test}
        test_ids = check_same_ids(raw_test, "Test")     # before the lacking check: mismatched ids fail either way
        if not lacking:
            pred, seed_stack = _compose_test(by_name, raw_test, test_ids, used, full.weights, n_seeds)
    if not corpus.split_ids("Test"):
        note = "the corpus has no Test rows: no test.csv"
    elif lacking:
        note = (f"no test.csv written: chosen run(s) {', '.join(lacking)} have no test.csv "
                "(predict Test with them, e.g. `exvo predict RUN --split Test`, then fuse again)")
        notes.append(note)
    elif seed_stack is not None:
        note = "test.csv composed like val.csv, seed by seed (per_seed/test.npz), then seed-averaged"
    else:
        note = "test.csv composed like val.csv, from the sources' seed-averaged test.csv"
    return FusedTest(pred, seed_stack, have_test, note)
