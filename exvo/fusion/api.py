"""``fuse()``: late fusion of finished runs into a new run folder.

Modes
-----
``hybrid``  per subtask (emotion, country, age) take the run with the best Val score
            (CCC, UAR, MAE; see :mod:`exvo.fusion.select`); ``top=K`` averages the K best.
``mean``    average every run (emotions and age averaged, country probabilities averaged
            then argmax). ``weighted=True`` weights each run per subtask by its Val score
            (CCC for emotions, UAR for country, 1/MAE for age), normalised to sum to 1;
            with ``hybrid`` and ``top>1`` it weights the K chosen runs the same way.

Seed by seed
------------
When every source keeps per-seed predictions (``per_seed/val.npz``), fusion is done seed
by seed: fused seed k combines seed k of every source with the same choice/weights
(pairing rule in :mod:`exvo.fusion.seeds`: by index, up to the smallest seed count).
Each fused seed is scored, giving a mean ± std over seeds like a learn run, and
``val.csv`` / ``test.csv`` are the seed ensemble (average) of the fused seeds; the
per-seed files are written too, so fusions of fusions work the same way. The candidates
are ranked on the ensembles of their paired seeds. Sources without per-seed files are
fused through their ``val.csv`` and the run has no mean ± std (only an ensemble score).

Selection bias
--------------
``select_on="val"`` chooses (or weights) on all of Val and reports the Val score of the
result, which is optimistic: the choice was made on the very data that scores it.
``select_on="cv"`` splits the Val speakers into two halves (:mod:`exvo.fusion.cv`),
chooses on one half and scores on the other, both ways (both half scores and their mean
are printed and kept in fusion.json). The run's scores are out-of-fold: each half
predicted by the choice made on the other half, scored on all of Val at once, per fused
seed (``summary``, ``per_seed``) and for the seed ensemble (``ensemble``), so they are
comparable with the full-Val scores of the learn runs (a metric on half of Val is not the
metric on all of it: UAR and CCC do not average over subsets). When the same runs win
everywhere they equal the plain Val scores. The predictions written (val.csv, test.csv)
always use the choice made on all of Val, the best guess for Test; their optimistic
full-Val score is kept apart as ``full_val_ensemble``.

Output
------
``<runs>/<name>/`` in the learn-run format: ``config.json`` (``kind: "fusion"``, the
sources and a fingerprint of each, so the report can flag a fusion whose sources changed),
``metrics.json`` (``summary`` = mean ± std over fused seeds, ``per_seed``, ``ensemble`` =
the seed ensemble's score, ``full_val_ensemble``, ``selection`` says how it was chosen),
``val.csv`` / ``test.csv`` + country probabilities, ``per_seed/<split>.npz``, and
``fusion.json`` (per subtask: chosen runs, weights, every candidate's score; the cv
directions; the seed pairing; notes).

Test predictions: ``test.csv`` is written only when every run that contributes to the
final choice has one (with the same ids). Otherwise no ``test.csv`` is written and the
output names the runs that lack it: mixing in a next-best run for Test only would make
Test predictions that Val never scored.

An existing folder of the same name is replaced when it is a fusion run (so repeating
a fusion is idempotent) and refused otherwise.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from exvo.corpus import Corpus
from exvo.fusion.cv import speaker_halves
from exvo.fusion.ensemble import compose
from exvo.runs import provenance
from exvo.runs.reader import Run, check_same_ids, feature_specs, resolve
from exvo.fusion.select import METRIC_LABEL, SUBTASKS, Choice, choose, subtask_score
from exvo.runs.store import RunWriter, check_name, check_replaceable
from exvo.metrics import EMOTIONS, score_all
from exvo.fusion import seeds
from exvo.predictions import PredictionError, Predictions, load_seed_predictions, save_seed_predictions, save_split

FORMAT = "exvo-fusion/1"
MODES = ("hybrid", "mean")
SELECT_ON = ("val", "cv")
SCORE_KEYS = ("ccc", "uar", "mae", "s_mtl")


@dataclass
class FusionResult:
    name: str
    path: Path
    mode: str
    select_on: str
    chosen: dict[str, list[str]]          # subtask → runs used (best first)
    val: dict                             # full-Val scores of val.csv
    reported: dict                        # summary: {metric: {"mean", "std" (None: undefined), "n"}}
    test_written: bool
    notes: list[str] = field(default_factory=list)
    weighted: bool = False
    ensemble: dict = field(default_factory=dict)   # the seed ensemble's scores (cv: out of fold)
    n_seeds: int = 0                               # fused seeds (0: sources had no per-seed files)

    def summary_line(self) -> str:
        how = ("cv: out-of-fold over held-out halves of Val" if self.select_on == "cv"
               else "Val, optimistic: chosen/weighted on Val" if self._selects() else "Val")

        def cell(k: str, d: int) -> str:
            m, s = self.reported[k]["mean"], self.reported[k]["std"]
            if m is None:
                return "undefined"
            n = self.reported[k].get("n")
            part = f" ({n}/{self.n_seeds} seeds defined)" if k == "s_mtl" and self.n_seeds and n != self.n_seeds else ""
            return f"{m:.{d}f}" + ("" if s is None else f" ± {s:.{d}f}") + part

        over = (f"mean ± std over {self.n_seeds} fused seeds" if self.n_seeds > 1
                else "1 fused seed, std undefined" if self.n_seeds == 1
                else "seed ensemble only: the sources have no per-seed predictions")
        ens = (f"; seed-ensemble S_MTL {_s_mtl(self.ensemble)}" if self.n_seeds and self.ensemble else "")
        return (f"{self.name}: Emo-CCC {cell('ccc', 3)}  Cou-UAR {cell('uar', 3)}  Age-MAE {cell('mae', 2)}  "
                f"S_MTL {cell('s_mtl', 3)} [{how}; {over}{ens}]; "
                f"{'val.csv + test.csv' if self.test_written else 'val.csv only (no test.csv)'} in {self.path}")

    def _selects(self) -> bool:
        return self.mode == "hybrid" or self.weighted


def _s_mtl(sc: dict) -> str:
    """S_MTL to 3 decimals, or "undefined" where CCC or UAR <= 0 (the score dict then holds 0.0)."""
    return f"{sc['s_mtl']:.3f}" if seeds.s_mtl_defined(sc) else "undefined"


def _scores(pred: Predictions, labels, idx: np.ndarray | None) -> dict:
    emo, cou, age = labels
    sel = slice(None) if idx is None else idx
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # S_MTL 0 for CCC <= 0 is reported as 0
        out = score_all(emo[sel], pred.emotions[sel], cou[sel], pred.country[sel], age[sel], pred.age[sel])
    return out


def _out_of_fold(template: Predictions, parts: list[tuple[np.ndarray, Predictions]]) -> Predictions:
    """Rows ``idx`` of each ``(idx, pred)`` put together (all aligned with ``template``)."""
    emo, cou, age = template.emotions.copy(), template.country.copy(), template.age.copy()
    has_proba = all(p.country_proba is not None for _, p in parts)
    proba = np.zeros((len(template), 4)) if has_proba else None
    for idx, p in parts:
        emo[idx], cou[idx], age[idx] = p.emotions[idx], p.country[idx], p.age[idx]
        if has_proba:
            proba[idx] = p.country_proba[idx]
    return Predictions(list(template.ids), emo, cou, age, proba)


def _choose_all(preds: dict[str, Predictions], labels, idx, mode, top, weighted) -> dict[str, Choice]:
    out = {}
    for sub in SUBTASKS:
        scores = {n: subtask_score(sub, p, labels, idx) for n, p in preds.items()}
        out[sub] = choose(sub, scores, mode, top, weighted)
    return out


def default_name(mode: str, n_runs: int, top: int, weighted: bool, select_on: str) -> str:
    base = (f"hybrid_top{top}" if top > 1 else "hybrid") if mode == "hybrid" else f"mean_{n_runs}runs"
    return base + ("_weighted" if weighted else "") + ("_cv" if select_on == "cv" else "")


def fuse(corpus: Corpus, runs_dir: str | Path = "runs", run_names: list[str] | None = None,
         mode: str = "hybrid", top: int = 1, weighted: bool = False, select_on: str = "val",
         name: str | None = None, echo: Callable[[str], None] = print, cv_seed: int = 0) -> FusionResult:
    """Fuse runs under ``runs_dir`` (see the module docstring) and write ``<runs_dir>/<name>/``."""
    if mode not in MODES:
        raise ValueError(f"unknown fusion mode {mode!r}; expected one of {MODES}")
    if select_on not in SELECT_ON:
        raise ValueError(f"select_on must be one of {SELECT_ON}, got {select_on!r}")
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be an integer >= 1, got {top!r}")
    if mode == "mean" and top != 1:
        raise ValueError(f"top={top} applies to mode='hybrid' only; mode='mean' averages every run")
    if name is not None:
        check_name(name)
    runs_dir = Path(runs_dir)
    runs, notes = resolve(runs_dir, run_names)
    for r in runs:
        if r.stale:     # the fusion will be stale too (its source is): say why now, not only in the report
            notes.append(f"source {r.name} is stale: {r.stale[0]}")
    by_name: dict[str, Run] = {r.name: r for r in runs}
    if mode == "hybrid" and top > len(runs):
        notes.append(f"top={top} but only {len(runs)} run(s): every run is averaged")
    out_name = name or default_name(mode, len(runs), top, weighted, select_on)
    dest = runs_dir / out_name
    if dest.resolve() in {r.path.resolve() for r in runs}:
        raise ValueError(f"the output {dest} is one of the runs being fused; pass another --name")
    check_replaceable(dest, "fusion")

    # ---- Val: same ids in every run and in the corpus, aligned to the corpus order
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
    labels = corpus.labels("Val")

    # ---- seed by seed (see exvo.fusion.seeds): fused seed k = seed k of every source
    seed_val = {n: load_seed_predictions(r.path, "Val") for n, r in by_name.items()}
    no_seeds = sorted(n for n, sp in seed_val.items() if sp is None or set(sp.ids) != set(val_ids))
    if no_seeds:
        n_seeds = 0
        notes.append(f"run(s) {', '.join(no_seeds)} have no per-seed Val predictions (per_seed/val.npz): fused "
                     "their seed-averaged val.csv instead, so this run has no mean ± std over seeds")
        val = {n: p.take(val_ids) for n, p in raw_val.items()}
        val_seeds: list[dict[str, Predictions]] = []
    else:
        n_seeds, pnotes = seeds.pair_count(seed_val)
        notes += pnotes
        # candidates are the ensembles of the paired seeds, so the choice, the per-seed rows and
        # val.csv (the ensemble of the fused seeds) all rest on the same seeds
        val = seeds.ensemble_views(seed_val, n_seeds, val_ids)
        val_seeds = [seeds.seed_views(seed_val, k, val_ids) for k in range(n_seeds)]
    seed_sources = [{n: int(seed_val[n].seeds[k]) for n in sorted(by_name)} for k in range(n_seeds)]

    def fuse_seeds(weights: dict[str, dict[str, float]]) -> list[Predictions]:
        return [compose(v, weights)[0] for v in val_seeds]

    # ---- selection on all of Val → the predictions that are written
    choices = _choose_all(val, labels, None, mode, top, weighted)
    weights_all = {s: choices[s].weights for s in SUBTASKS}
    val_pred, cnotes = compose(val, weights_all)
    notes += cnotes
    fused_val = fuse_seeds(weights_all)
    val_seed_pred = seeds.stack(fused_val, list(range(n_seeds))) if n_seeds else None
    if val_seed_pred is not None:
        val_pred = val_seed_pred.ensemble()
    val_scores = _scores(val_pred, labels, None)
    selects = mode == "hybrid" or weighted

    # ---- selection bias: choose on one half of the Val speakers, score on the other
    cv_record = None
    if select_on == "cv":
        speakers = corpus.speakers[corpus.indices("Val")]
        halves = speaker_halves(speakers, cv_seed)
        directions, oof_parts = [], []
        oof_seed_parts: list[list] = [[] for _ in range(n_seeds)]
        for sel_i, ev_i, label in ((0, 1, "choose on A, score on B"), (1, 0, "choose on B, score on A")):
            ch = _choose_all(val, labels, halves[sel_i], mode, top, weighted)
            w = {s: ch[s].weights for s in SUBTASKS}
            pred, _ = compose(val, w)
            sc = _scores(pred, labels, halves[ev_i])
            oof_parts.append((halves[ev_i], pred))
            for k, p in enumerate(fuse_seeds(w)):
                oof_seed_parts[k].append((halves[ev_i], p))
            directions.append({
                "direction": label,
                "n_select": int(halves[sel_i].size), "n_score": int(halves[ev_i].size),
                "chosen": {s: ch[s].chosen for s in SUBTASKS},
                "weights": w,
                "scores": {k: sc[k] for k in SCORE_KEYS},
            })
        # out-of-fold: every clip predicted by the choice made on the other half, scored on all
        # of Val at once, so the number is comparable with the learn runs' full-Val scores
        # (CCC and UAR of a half are not those of the whole, even for the same predictions)
        oof = _out_of_fold(val_pred, oof_parts)
        oof_scores = _scores(oof, labels, None)
        ens_scores = oof_scores
        per_seed = [seeds.seed_row(k, _scores(_out_of_fold(fused_val[k], parts), labels, None), seed_sources[k])
                    for k, parts in enumerate(oof_seed_parts)]
        halves_mean = {k: float(np.mean([d["scores"][k] for d in directions])) for k in SCORE_KEYS}
        spk_a = sorted(set(speakers[halves[0]].tolist()))
        spk_b = sorted(set(speakers[halves[1]].tolist()))
        cv_record = {"seed": cv_seed, "speakers_a": spk_a, "speakers_b": spk_b, "directions": directions,
                     "mean_of_halves": halves_mean,
                     "std_of_halves": {k: float(np.std([d["scores"][k] for d in directions])) for k in SCORE_KEYS},
                     "out_of_fold": {k: oof_scores[k] for k in SCORE_KEYS}}
        selection_note = (f"--select-on cv: chose on one half of the Val speakers and scored on the other "
                          f"({len(spk_a)}/{len(spk_b)} speakers, {halves[0].size}/{halves[1].size} clips), both ways; "
                          "reported: the out-of-fold scores on all of Val (each clip predicted by the choice made "
                          "without it), per seed and of the seed ensemble; the full-Val score of val.csv is "
                          "optimistic and kept apart as 'full_val_ensemble'")
    else:
        ens_scores = val_scores
        per_seed = [seeds.seed_row(k, _scores(p, labels, None), seed_sources[k]) for k, p in enumerate(fused_val)]
        selection_note = ("--select-on val: the runs were chosen/weighted on Val, so the Val score is optimistic "
                          "(use --select-on cv for an honest estimate)" if selects else
                          "--select-on val: plain average, nothing chosen on Val")
    if per_seed:
        reported = seeds.summarise(per_seed)
    else:   # no seeds to average: the estimate is the seed ensemble's score, with no std
        reported = {k: {"mean": float(ens_scores[k]), "std": None, "n": 0} for k in SCORE_KEYS}

    # ---- Test: only when every contributing run has it
    used = sorted({n for s in SUBTASKS for n in choices[s].weights})
    have_test = [n for n in sorted(by_name) if by_name[n].has("Test")]
    lacking = [n for n in used if n not in have_test]
    test_pred = test_seed_pred = None
    if have_test:
        raw_test = {n: by_name[n].load("Test") for n in have_test}
        test_ids = check_same_ids(raw_test, "Test")
        if not lacking:
            seed_test = {n: load_seed_predictions(by_name[n].path, "Test") for n in used}
            if n_seeds and all(sp is not None and set(sp.ids) == set(test_ids) and len(sp.seeds) >= n_seeds
                               for sp in seed_test.values()):
                fused_test = [compose(seeds.seed_views(seed_test, k, test_ids), weights_all)[0]
                              for k in range(n_seeds)]
                test_seed_pred = seeds.stack(fused_test, list(range(n_seeds)))
                test_pred = test_seed_pred.ensemble()
            else:
                test = {n: raw_test[n].take(test_ids) for n in used}
                test_pred, _ = compose(test, weights_all)
    if not corpus.split_ids("Test"):
        test_note = "the corpus has no Test rows: no test.csv"
    elif lacking:
        test_note = (f"no test.csv written: chosen run(s) {', '.join(lacking)} have no test.csv "
                     "(predict Test with them, e.g. `exvo predict RUN --split Test`, then fuse again)")
        notes.append(test_note)
    elif test_seed_pred is not None:
        test_note = "test.csv composed like val.csv, seed by seed (per_seed/test.npz), then seed-averaged"
    else:
        test_note = "test.csv composed like val.csv, from the sources' seed-averaged test.csv"

    # ---- write the run folder (to a hidden temp folder, then swap in)
    writer = RunWriter(runs_dir, out_name, replace_kind="fusion")   # a fusion is derived: re-making it replaces it
    tmp = writer.path
    save_split(val_pred, tmp, "Val")
    if val_seed_pred is not None:
        save_seed_predictions(val_seed_pred, tmp, "Val")
    if test_pred is not None:
        save_split(test_pred, tmp, "Test")
    if test_seed_pred is not None:
        save_seed_predictions(test_seed_pred, tmp, "Test")
    optimistic = select_on == "val" and selects
    selection = {"select_on": select_on, "optimistic": optimistic, "note": selection_note}
    config = {
        "kind": "fusion", "mode": mode, "top": top, "weighted": weighted, "select_on": select_on,
        "cv_seed": cv_seed, "sources": sorted(by_name),
        "features": sorted({f for r in runs for f in feature_specs(r.record)}),
        "feature_dim": None, "learner": "fusion", "arch": mode if top == 1 else f"{mode}-top{top}",
        "seeds": list(range(n_seeds)) or None, "seed_sources": seed_sources, "ccc_convention": "challenge",
        "sources_from": "all learn runs" if run_names is None else "named",
        "created_unix": time.time(),
    }
    metrics = {
        "split": "Val", "n": len(val_ids), "ccc_convention": "challenge",
        "summary": reported, "per_seed": per_seed,
        "summary_over": "seeds" if per_seed else "none: the seed ensemble's score (sources lack per-seed files)",
        "ensemble": {k: ens_scores[k] for k in (*SCORE_KEYS, "ccc_per_emotion")},
        "full_val_ensemble": {k: val_scores[k] for k in SCORE_KEYS},
        "ccc_per_emotion": (seeds.per_emotion(per_seed)[0] if per_seed
                            else {e: float(ens_scores["ccc_per_emotion"][e]) for e in EMOTIONS}),
        "selection": selection,
    }
    record = {
        "format": FORMAT, "mode": mode, "top": top, "weighted": weighted, "select_on": select_on,
        "optimistic": optimistic, "selection_note": selection_note,
        "subtasks": {s: choices[s].to_json() for s in SUBTASKS},
        "val": {k: val_scores[k] for k in SCORE_KEYS}, "cv": cv_record,
        "test": {"written": test_pred is not None, "note": test_note, "runs_with_test": have_test},
        "seed_by_seed": {"n_seeds": n_seeds, "pairing": "by index, up to the smallest seed count",
                         "seed_sources": seed_sources},
        "notes": notes + [n for s in SUBTASKS for n in choices[s].notes],
    }
    writer.json("metrics.json", metrics)
    writer.json("fusion.json", record)
    replaced = writer.replaced
    writer.commit(config, provenance.inputs(corpus, sources=[r.path for r in runs], runs_dir=runs_dir))

    # ---- tell the user
    echo(f"fusion {out_name} ({mode}{f', top {top}' if mode == 'hybrid' else ''}"
         f"{', weighted' if weighted else ''}) of {len(runs)} run(s):")
    for s in SUBTASKS:
        c = choices[s]
        better = "higher" if s != "age" else "lower"
        cand = ", ".join(f"{n} {c.scores[n]:.4f}" + ("*" if n in c.weights else "") for n in c.ranking)
        w = (c.chosen[0] if len(c.chosen) == 1
             else ", ".join(f"{n} {c.weights[n]:.3f}" for n in c.chosen) + " (weights)")
        echo(f"  {s:7s} Val {METRIC_LABEL[s]} ({better} is better): {cand}  → {w}")
        for n in c.notes:
            echo(f"    note: {n}")
    def line(sc: dict) -> str:
        return f"CCC {sc['ccc']:.3f} UAR {sc['uar']:.3f} MAE {sc['mae']:.2f} S_MTL {_s_mtl(sc)}"

    if cv_record:
        for d in cv_record["directions"]:
            echo(f"  cv {d['direction']}: emotion {', '.join(d['chosen']['emotion'])}; "
                 f"country {', '.join(d['chosen']['country'])}; age {', '.join(d['chosen']['age'])} → "
                 f"{line(d['scores'])}")
        echo(f"  cv mean of the two half scores: {line(cv_record['mean_of_halves'])}")
        echo(f"  cv out-of-fold score of the seed ensemble on all of Val: {line(cv_record['out_of_fold'])}")
    echo(f"  full-Val score of val.csv{' (optimistic)' if select_on == 'cv' else ''}: {line(val_scores)}")
    echo(f"  {selection_note}")
    for n in notes:
        echo(f"  note: {n}")
    if replaced:
        echo(f"  replaced the earlier fusion run {dest}")
    return FusionResult(out_name, dest, mode, select_on, {s: choices[s].chosen for s in SUBTASKS},
                        {k: val_scores[k] for k in SCORE_KEYS}, reported, test_pred is not None,
                        record["notes"], weighted=weighted, ensemble={k: ens_scores[k] for k in SCORE_KEYS},
                        n_seeds=n_seeds)
