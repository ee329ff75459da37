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
``select_on="oof"`` (the default) chooses (or weights) on the sources' out-of-fold Train
predictions (learn runs made with ``--stop-on folds``, the default): Val takes no part in the
choice and its score is a clean held-out estimate; the predictions written use that same choice.
On the demo corpus it chose as well as Val did, measured on the hidden Test labels
(``benchmarks/bench_hybrid_select.py``). A plain mean chooses nothing and needs no OOF files.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from exvo.corpus import Corpus
from exvo.runs import provenance
from exvo.runs.reader import Run, feature_specs, read_json, resolve
from exvo.fusion.select import METRIC_LABEL, Choice
from exvo.runs.store import RunExists, RunWriter, check_name, check_replaceable
from exvo.fusion import seeds
from exvo.fusion.steps import (Estimate, FusedTest, FusedVal, Options, ValCandidates, cv_estimate,
                               fuse_full_val, fuse_test, oof_choices, score_keys, val_candidates, val_estimate)
from exvo.predictions import save_seed_predictions, save_split

FORMAT = "exvo-fusion/1"
MODES = ("hybrid", "mean")
SELECT_ON = ("val", "cv", "oof")


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
               else "Val, chosen/weighted on out-of-fold Train predictions" if self.select_on == "oof" and self._selects()
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
        top = seeds.keys_of(self.reported)[-1]
        label = "S_MTL" if top == "s_mtl" else top
        ens = (f"; seed-ensemble {label} {_s_mtl(self.ensemble, top)}" if self.n_seeds and self.ensemble else "")
        cells = {"ccc": "Emo-CCC" if top == "s_mtl" else "CCC", "uar": "Cou-UAR" if top == "s_mtl" else "UAR",
                 "mae": "Age-MAE" if top == "s_mtl" else "MAE", top: label}
        shown = "  ".join(f"{cells[k]} {cell(k, 2 if k == 'mae' else 3)}" for k in seeds.keys_of(self.reported))
        return (f"{self.name}: {shown} [{how}; {over}{ens}]; "
                f"{'val.csv + test.csv' if self.test_written else 'val.csv only (no test.csv)'} in {self.path}")

    def _selects(self) -> bool:
        return self.mode == "hybrid" or self.weighted


def _s_mtl(sc: dict, top: str = "s_mtl") -> str:
    """S_MTL (or the task's ``top`` score) to 3 decimals, or "undefined" where CCC or UAR <= 0 (the
    score dict then holds 0.0)."""
    return f"{sc[top]:.3f}" if seeds.s_mtl_defined(sc) else "undefined"


def default_name(mode: str, n_runs: int, top: int, weighted: bool, select_on: str) -> str:
    base = (f"hybrid_top{top}" if top > 1 else "hybrid") if mode == "hybrid" else f"mean_{n_runs}runs"
    # where nothing is chosen or weighted (a plain mean) the selection data plays no part in the name
    chooses = mode == "hybrid" or weighted
    return base + ("_weighted" if weighted else "") + ({"cv": "_cv", "oof": "_oof"}.get(select_on, "") if chooses else "")


@dataclass
class _Sources:
    """The runs to fuse and the run folder the fusion goes to."""

    runs: list[Run]
    by_name: dict[str, Run]
    notes: list[str]            # every step appends to it; printed and kept in fusion.json in this order
    name: str
    dest: Path


def _check_options(mode: str, select_on: str, top: int, name: str | None) -> None:
    """A ValueError for an unknown mode or select_on, a bad ``top`` or run ``name``."""
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


def _same_task(runs: list[Run], run_names: list[str] | None, notes: list[str], task) -> list[Run]:
    """The runs of ``task`` (the corpus' task): named runs of another task are refused; of every
    learn run under the folder (no names), the other tasks' are left out with a note."""
    from exvo.predictions import run_task

    other = {r.name: run_task(r.path).name for r in runs if run_task(r.path) != task}
    if other and run_names is not None:
        raise ValueError(f"runs of different tasks cannot be fused: {', '.join(f'{n} ({t})' for n, t in other.items())} "
                         f"{'is' if len(other) == 1 else 'are'} not of task {task.name!r}, the task given (--task); "
                         "fuse each task's runs separately")
    if other:
        notes.append(f"left out {len(other)} run(s) of other tasks: " + ", ".join(f"{n} ({t})" for n, t in other.items()))
    kept = [r for r in runs if r.name not in other]
    if not kept:
        raise ValueError(f"none of the runs is of task {task.name!r}; pass the runs' --task")
    return kept


def _resolve_sources(runs_dir: Path, run_names: list[str] | None, opts: Options, name: str | None,
                     task=None) -> _Sources:
    """The runs to fuse (:func:`exvo.runs.reader.resolve`) and the output folder, refused
    before any work when it is one of them or another kind of run."""
    runs, notes = resolve(runs_dir, run_names)
    runs = _same_task(runs, run_names, notes, task)
    for r in runs:
        if r.stale:     # the fusion will be stale too (its source is): say why now, not only in the report
            notes.append(f"source {r.name} is stale: {r.stale[0]}")
    by_name: dict[str, Run] = {r.name: r for r in runs}
    if opts.mode == "hybrid" and opts.top > len(runs):
        notes.append(f"top={opts.top} but only {len(runs)} run(s): every run is averaged")
    out_name = name or default_name(opts.mode, len(runs), opts.top, opts.weighted, opts.select_on)
    dest = runs_dir / out_name
    if dest.resolve() in {r.path.resolve() for r in runs}:
        raise ValueError(f"the output {dest} is one of the runs being fused; pass another --name")
    check_replaceable(dest, "fusion")
    before = sorted((read_json(dest / "config.json") or {}).get("sources") or []) if dest.is_dir() else []
    if name is None and before and before != sorted(by_name):
        # a default name says only the mode and the count: two fusions of other runs must not replace each other
        raise RunExists(f"{dest} is a fusion of other runs ({', '.join(before)}); this one fuses "
                        f"{', '.join(sorted(by_name))}. Pass --name NEW to keep both, or delete {dest} to replace it")
    return _Sources(runs, by_name, notes, out_name, dest)


def _config(opts: Options, src: _Sources, run_names: list[str] | None, cand: ValCandidates) -> dict:
    """``config.json`` of the fusion run (without its provenance)."""
    return {
        "kind": "fusion", "mode": opts.mode, "top": opts.top, "weighted": opts.weighted, "select_on": opts.select_on,
        "cv_seed": opts.cv_seed, "sources": sorted(src.by_name), "task": cand_task(cand).to_dict(),
        "features": sorted({f for r in src.runs for f in feature_specs(r.record)}),
        "feature_dim": None, "learner": "fusion", "arch": opts.mode if opts.top == 1 else f"{opts.mode}-top{opts.top}",
        "seeds": list(range(cand.n_seeds)) or None, "seed_sources": cand.seed_sources, "ccc_convention": "challenge",
        "sources_from": "all learn runs" if run_names is None else "named",
        "created_unix": time.time(),
    }


def _metrics(opts: Options, cand: ValCandidates, full: FusedVal, est: Estimate) -> dict:
    """``metrics.json`` in the learn-run format, plus the optimistic ``full_val_ensemble``."""
    per_seed, ens = est.per_seed, est.ensemble
    keys = score_keys(cand)
    cols = cand_task(cand).reg_columns
    return {
        "split": "Val", "n": len(cand.ids), "ccc_convention": "challenge",
        "summary": est.reported, "per_seed": per_seed,
        "summary_over": "seeds" if per_seed else "none: the seed ensemble's score (sources lack per-seed files)",
        "ensemble": {k: ens[k] for k in (*keys, "ccc_per_emotion") if k in ens},
        "full_val_ensemble": {k: full.scores[k] for k in keys},
        "ccc_per_emotion": (seeds.per_emotion(per_seed)[0] if per_seed
                            else {e: float(ens["ccc_per_emotion"][e]) for e in cols}),
        "selection": {"select_on": opts.select_on, "optimistic": opts.optimistic, "note": est.note},
    }


def _record(opts: Options, src: _Sources, cand: ValCandidates, full: FusedVal, est: Estimate,
            test: FusedTest) -> dict:
    """``fusion.json``: per subtask the choice and every candidate's score, the cv directions,
    Test, the seed pairing, and the run's notes followed by the choices' notes."""
    return {
        "format": FORMAT, "mode": opts.mode, "top": opts.top, "weighted": opts.weighted, "select_on": opts.select_on,
        "optimistic": opts.optimistic, "selection_note": est.note,
        "subtasks": {s: full.choices[s].to_json() for s in full.choices},
        "val": {k: full.scores[k] for k in score_keys(cand)}, "cv": est.cv,
        "test": {"written": test.pred is not None, "note": test.note, "runs_with_test": test.have_test},
        "seed_by_seed": {"n_seeds": cand.n_seeds, "pairing": "by index, up to the smallest seed count",
                         "seed_sources": cand.seed_sources},
        "notes": src.notes + [n for s in full.choices for n in full.choices[s].notes],
    }


def _write_run(corpus: Corpus, runs_dir: Path, run_names: list[str] | None, opts: Options, src: _Sources,
               cand: ValCandidates, full: FusedVal, est: Estimate, test: FusedTest) -> tuple[dict, bool]:
    """Write ``<runs_dir>/<src.name>/`` (to a hidden staging folder, then swapped in);
    returns ``(the fusion.json record, whether an earlier fusion run was replaced)``."""
    writer = RunWriter(runs_dir, src.name, replace_kind="fusion")   # a fusion is derived: re-making it replaces it
    tmp = writer.path
    save_split(full.pred, tmp, "Val")
    if full.seed_stack is not None:
        save_seed_predictions(full.seed_stack, tmp, "Val")
    if test.pred is not None:
        save_split(test.pred, tmp, "Test")
    if test.seed_stack is not None:
        save_seed_predictions(test.seed_stack, tmp, "Test")
    config = _config(opts, src, run_names, cand)
    metrics = _metrics(opts, cand, full, est)
    record = _record(opts, src, cand, full, est, test)
    writer.json("metrics.json", metrics)
    writer.json("fusion.json", record)
    replaced = writer.replaced
    writer.commit(config, provenance.inputs(corpus, sources=[r.path for r in src.runs], runs_dir=runs_dir))
    return record, replaced


def _score_line(sc: dict) -> str:
    """The scores of a score dict (ExVo: CCC, UAR, MAE, S_MTL), as printed."""
    if "s_mtl" in sc:
        return f"CCC {sc['ccc']:.3f} UAR {sc['uar']:.3f} MAE {sc['mae']:.2f} S_MTL {_s_mtl(sc)}"
    from exvo.learn.runs import score_text

    return score_text(sc)


def cand_task(cand: ValCandidates):
    """The task of the fused runs."""
    return next(iter(cand.preds.values())).task


def _tell_choice(echo: Callable[[str], None], s: str, c: Choice) -> None:
    """Print subtask ``s``: every candidate's Val score (``*``: used) and what was taken."""
    better = "higher" if s != "age" else "lower"
    cand = ", ".join(f"{n} {c.scores[n]:.4f}" + ("*" if n in c.weights else "") for n in c.ranking)
    w = (c.chosen[0] if len(c.chosen) == 1
         else ", ".join(f"{n} {c.weights[n]:.3f}" for n in c.chosen) + " (weights)")
    echo(f"  {s:7s} Val {METRIC_LABEL[s]} ({better} is better): {cand}  → {w}")
    for n in c.notes:
        echo(f"    note: {n}")


def _tell(echo: Callable[[str], None], opts: Options, src: _Sources, full: FusedVal, est: Estimate,
          replaced: bool) -> None:
    """Print what was fused, chosen and scored, and the notes."""
    echo(f"fusion {src.name} ({opts.mode}{f', top {opts.top}' if opts.mode == 'hybrid' else ''}"
         f"{', weighted' if opts.weighted else ''}) of {len(src.runs)} run(s):")
    for s in full.choices:
        _tell_choice(echo, s, full.choices[s])
    if est.cv:
        for d in est.cv["directions"]:
            echo(f"  cv {d['direction']}: " + "; ".join(f"{s} {', '.join(c)}" for s, c in d["chosen"].items())
                 + f" → {_score_line(d['scores'])}")
        echo(f"  cv mean of the two half scores: {_score_line(est.cv['mean_of_halves'])}")
        echo(f"  cv out-of-fold score of the seed ensemble on all of Val: {_score_line(est.cv['out_of_fold'])}")
    echo(f"  full-Val score of val.csv{' (optimistic)' if opts.select_on == 'cv' else ''}: {_score_line(full.scores)}")
    echo(f"  {est.note}")
    for n in src.notes:
        echo(f"  note: {n}")
    if replaced:
        echo(f"  replaced the earlier fusion run {src.dest}")


def fuse(corpus: Corpus, runs_dir: str | Path = "runs", run_names: list[str] | None = None,
         mode: str = "hybrid", top: int = 1, weighted: bool = False, select_on: str = "oof",
         name: str | None = None, echo: Callable[[str], None] = print, cv_seed: int = 0) -> FusionResult:
    """Fuse runs under ``runs_dir`` (see the module docstring) and write ``<runs_dir>/<name>/``."""
    _check_options(mode, select_on, top, name)
    opts = Options(mode, top, weighted, select_on, cv_seed)
    runs_dir = Path(runs_dir)
    src = _resolve_sources(runs_dir, run_names, opts, name, corpus.task)
    cand = val_candidates(corpus, src.by_name, src.notes)
    # OOF predictions are needed only where something is chosen or weighted (not for a plain mean)
    chosen_on_oof = oof_choices(corpus, src.by_name, opts, src.notes) if select_on == "oof" and opts.selects else None
    full = fuse_full_val(cand, opts, src.notes, chosen_on_oof)
    if select_on == "cv":
        est = cv_estimate(corpus, cand, full, opts)
    else:
        est = val_estimate(cand, full, opts)
    test = fuse_test(corpus, src.by_name, full, cand.n_seeds, src.notes)
    record, replaced = _write_run(corpus, runs_dir, run_names, opts, src, cand, full, est, test)
    _tell(echo, opts, src, full, est, replaced)
    keys = score_keys(cand)
    return FusionResult(src.name, src.dest, mode, select_on, {s: full.choices[s].chosen for s in full.choices},
                        {k: full.scores[k] for k in keys}, est.reported, test.pred is not None,
                        record["notes"], weighted=weighted, ensemble={k: est.ensemble[k] for k in keys},
                        n_seeds=cand.n_seeds)
