"""``fuse()``: late fusion of finished runs into a new run folder.

Modes
-----
``hybrid``  per subtask (emotion, country, age) take the run with the best Val score
            (CCC, UAR, MAE; see :mod:`exvo.fusion.select`); ``top=K`` averages the K best.
``mean``    average every run (emotions and age averaged, country probabilities averaged
            then argmax). ``weighted=True`` weights each run per subtask by its Val score
            (CCC for emotions, UAR for country, 1/MAE for age), normalised to sum to 1;
            with ``hybrid`` and ``top>1`` it weights the K chosen runs the same way.

Selection bias
--------------
``select_on="val"`` chooses (or weights) on all of Val and reports the Val score of the
result, which is optimistic: the choice was made on the very data that scores it.
``select_on="cv"`` splits the Val speakers into two halves (:mod:`exvo.fusion.cv`),
chooses on one half and scores on the other, both ways (both half scores and their mean
are printed and kept in fusion.json). The run's ``summary`` is the out-of-fold score:
each half predicted by the choice made on the other half, scored on all of Val at once,
so it is comparable with the full-Val scores of the learn runs (a metric on half of Val
is not the metric on all of it, even for the same predictions: UAR and CCC do not
average over subsets). When the same runs win everywhere it equals the plain Val score. The predictions written (val.csv, test.csv)
always use the choice made on all of Val, the best guess for Test.

Output
------
``<runs>/<name>/`` in the learn-run format: ``config.json`` (``kind: "fusion"``),
``metrics.json`` (``summary`` = the reported estimate, ``ensemble`` = the full-Val score of
val.csv, ``per_seed`` empty, ``selection`` says how it was chosen), ``val.csv`` /
``test.csv`` + country probabilities, and ``fusion.json`` (per subtask: chosen runs,
weights, every candidate's score; the cv directions; notes).

Test predictions: ``test.csv`` is written only when every run that contributes to the
final choice has one (with the same ids). Otherwise no ``test.csv`` is written and the
output names the runs that lack it: mixing in a next-best run for Test only would make
Test predictions that Val never scored.

An existing folder of the same name is replaced when it is a fusion run (so repeating
a fusion is idempotent) and refused otherwise.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from exvo.corpus import Corpus
from exvo.fusion.cv import speaker_halves
from exvo.fusion.ensemble import compose
from exvo.fusion.runs import Run, check_same_ids, feature_specs, read_json, resolve
from exvo.fusion.select import METRIC_LABEL, SUBTASKS, Choice, choose, subtask_score
from exvo.learn.runs import commit, staging_dir, write_json
from exvo.metrics import EMOTIONS, score_all
from exvo.predictions import PredictionError, Predictions, save_split

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
    reported: dict                        # the estimate written as summary: {metric: {"mean","std"}}
    test_written: bool
    notes: list[str] = field(default_factory=list)
    weighted: bool = False

    def summary_line(self) -> str:
        r = {k: self.reported[k]["mean"] for k in SCORE_KEYS}
        how = ("cv: out-of-fold over held-out halves of Val" if self.select_on == "cv"
               else "Val, optimistic: chosen/weighted on Val" if self._selects() else "Val")
        return (f"{self.name}: Emo-CCC {r['ccc']:.3f}  Cou-UAR {r['uar']:.3f}  Age-MAE {r['mae']:.2f}  "
                f"S_MTL {r['s_mtl']:.3f} [{how}]; "
                f"{'val.csv + test.csv' if self.test_written else 'val.csv only (no test.csv)'} in {self.path}")

    def _selects(self) -> bool:
        return self.mode == "hybrid" or self.weighted


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


def _check_dest(dest: Path, explicit: bool) -> None:
    if not dest.exists():
        return
    kind = (read_json(dest / "config.json") or {}).get("kind")
    if kind != "fusion":
        raise ValueError(f"{dest} exists and is not a fusion run (kind={kind!r}); "
                         f"{'choose another --name' if explicit else 'pass --name'} to keep it")


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
    if name is not None and (not name or not re.fullmatch(r"[A-Za-z0-9_.@+=-]+", name) or name.startswith(".")):
        raise ValueError(f"run name {name!r} must be a plain folder name (letters, digits, _ . @ + = -)")
    runs_dir = Path(runs_dir)
    runs, notes = resolve(runs_dir, run_names)
    by_name: dict[str, Run] = {r.name: r for r in runs}
    if mode == "hybrid" and top > len(runs):
        notes.append(f"top={top} but only {len(runs)} run(s): every run is averaged")
    out_name = name or default_name(mode, len(runs), top, weighted, select_on)
    dest = runs_dir / out_name
    if dest.resolve() in {r.path.resolve() for r in runs}:
        raise ValueError(f"the output {dest} is one of the runs being fused; pass another --name")
    _check_dest(dest, name is not None)

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
    val = {n: p.take(val_ids) for n, p in raw_val.items()}
    labels = corpus.labels("Val")

    # ---- selection on all of Val → the predictions that are written
    choices = _choose_all(val, labels, None, mode, top, weighted)
    val_pred, cnotes = compose(val, {s: choices[s].weights for s in SUBTASKS})
    notes += cnotes
    val_scores = _scores(val_pred, labels, None)
    selects = mode == "hybrid" or weighted

    # ---- selection bias: choose on one half of the Val speakers, score on the other
    cv_record = None
    if select_on == "cv":
        speakers = corpus.speakers[corpus.indices("Val")]
        halves = speaker_halves(speakers, cv_seed)
        directions, oof_parts = [], []
        for sel_i, ev_i, label in ((0, 1, "choose on A, score on B"), (1, 0, "choose on B, score on A")):
            ch = _choose_all(val, labels, halves[sel_i], mode, top, weighted)
            pred, _ = compose(val, {s: ch[s].weights for s in SUBTASKS})
            sc = _scores(pred, labels, halves[ev_i])
            oof_parts.append((halves[ev_i], pred))
            directions.append({
                "direction": label,
                "n_select": int(halves[sel_i].size), "n_score": int(halves[ev_i].size),
                "chosen": {s: ch[s].chosen for s in SUBTASKS},
                "weights": {s: ch[s].weights for s in SUBTASKS},
                "scores": {k: sc[k] for k in SCORE_KEYS},
            })
        # out-of-fold: every clip predicted by the choice made on the other half, scored on all
        # of Val at once, so the number is comparable with the learn runs' full-Val scores
        # (CCC and UAR of a half are not those of the whole, even for the same predictions)
        oof = _out_of_fold(val_pred, oof_parts)
        oof_scores = _scores(oof, labels, None)
        reported = {k: {"mean": float(oof_scores[k]), "std": 0.0} for k in SCORE_KEYS}
        halves_mean = {k: float(np.mean([d["scores"][k] for d in directions])) for k in SCORE_KEYS}
        spk_a = sorted(set(speakers[halves[0]].tolist()))
        spk_b = sorted(set(speakers[halves[1]].tolist()))
        cv_record = {"seed": cv_seed, "speakers_a": spk_a, "speakers_b": spk_b, "directions": directions,
                     "mean_of_halves": halves_mean,
                     "std_of_halves": {k: float(np.std([d["scores"][k] for d in directions])) for k in SCORE_KEYS},
                     "out_of_fold": {k: oof_scores[k] for k in SCORE_KEYS}}
        selection_note = (f"select_on=cv: chose on one half of the Val speakers and scored on the other "
                          f"({len(spk_a)}/{len(spk_b)} speakers, {halves[0].size}/{halves[1].size} clips), both ways; "
                          "reported: the out-of-fold score on all of Val (each clip predicted by the choice made "
                          "without it); the full-Val score of val.csv is optimistic and shown as 'ensemble'")
    else:
        reported = {k: {"mean": float(val_scores[k]), "std": 0.0} for k in SCORE_KEYS}
        selection_note = ("select_on=val: the runs were chosen/weighted on Val, so the Val score is optimistic "
                          "(use select_on='cv' for an honest estimate)" if selects else
                          "select_on=val: plain average, nothing chosen on Val")

    # ---- Test: only when every contributing run has it
    used = sorted({n for s in SUBTASKS for n in choices[s].weights})
    have_test = [n for n in sorted(by_name) if by_name[n].has("Test")]
    lacking = [n for n in used if n not in have_test]
    test_pred = None
    if have_test:
        raw_test = {n: by_name[n].load("Test") for n in have_test}
        test_ids = check_same_ids(raw_test, "Test")
        if not lacking:
            test = {n: raw_test[n].take(test_ids) for n in used}
            test_pred, _ = compose(test, {s: choices[s].weights for s in SUBTASKS})
    if not corpus.split_ids("Test"):
        test_note = "the corpus has no Test rows: no test.csv"
    elif lacking:
        test_note = (f"no test.csv written: chosen run(s) {', '.join(lacking)} have no test.csv "
                     "(predict Test with them, e.g. `exvo predict RUN --split Test`, then fuse again)")
        notes.append(test_note)
    else:
        test_note = "test.csv composed like val.csv"

    # ---- write the run folder (to a hidden temp folder, then swap in)
    runs_dir.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(runs_dir, out_name)
    save_split(val_pred, tmp, "Val")
    if test_pred is not None:
        save_split(test_pred, tmp, "Test")
    optimistic = select_on == "val" and selects
    selection = {"select_on": select_on, "optimistic": optimistic, "note": selection_note}
    config = {
        "kind": "fusion", "mode": mode, "top": top, "weighted": weighted, "select_on": select_on,
        "cv_seed": cv_seed, "sources": sorted(by_name), "source_paths": {n: str(r.path) for n, r in by_name.items()},
        "features": sorted({f for r in runs for f in feature_specs(r.config)}),
        "feature_dim": None, "learner": "fusion", "arch": mode if top == 1 else f"{mode}-top{top}",
        "seeds": None, "ccc_convention": "challenge",
    }
    metrics = {
        "split": "Val", "n": len(val_ids), "ccc_convention": "challenge",
        "summary": reported, "per_seed": [],
        "ensemble": {k: val_scores[k] for k in (*SCORE_KEYS, "ccc_per_emotion")},
        "ccc_per_emotion": {e: float(val_scores["ccc_per_emotion"][e]) for e in EMOTIONS},
        "selection": selection,
    }
    record = {
        "format": FORMAT, "mode": mode, "top": top, "weighted": weighted, "select_on": select_on,
        "optimistic": optimistic, "selection_note": selection_note,
        "subtasks": {s: choices[s].to_json() for s in SUBTASKS},
        "val": {k: val_scores[k] for k in SCORE_KEYS}, "cv": cv_record,
        "test": {"written": test_pred is not None, "note": test_note, "runs_with_test": have_test},
        "notes": notes + [n for s in SUBTASKS for n in choices[s].notes],
    }
    for fname, obj in (("config.json", config), ("metrics.json", metrics), ("fusion.json", record)):
        write_json(tmp / fname, obj)
    replaced = dest.exists()
    commit(tmp, dest, overwrite=True)   # a fusion is derived from its sources: re-running it replaces it

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
        return f"CCC {sc['ccc']:.3f} UAR {sc['uar']:.3f} MAE {sc['mae']:.2f} S_MTL {sc['s_mtl']:.3f}"

    if cv_record:
        for d in cv_record["directions"]:
            echo(f"  cv {d['direction']}: emotion {', '.join(d['chosen']['emotion'])}; "
                 f"country {', '.join(d['chosen']['country'])}; age {', '.join(d['chosen']['age'])} → "
                 f"{line(d['scores'])}")
        echo(f"  cv mean of the two half scores: {line(cv_record['mean_of_halves'])}")
        echo(f"  cv out-of-fold score on all of Val (reported): {line(cv_record['out_of_fold'])}")
    echo(f"  full-Val score of val.csv: {line(val_scores)}")
    echo(f"  {selection_note}")
    for n in notes:
        echo(f"  note: {n}")
    if replaced:
        echo(f"  replaced the earlier fusion run {dest}")
    return FusionResult(out_name, dest, mode, select_on, {s: choices[s].chosen for s in SUBTASKS},
                        {k: val_scores[k] for k in SCORE_KEYS}, reported, test_pred is not None,
                        record["notes"], weighted=weighted)
