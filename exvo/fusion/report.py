"""``make_report()``: one table of every run plus figures; every number says what it is.

Columns: system (run name and flags), features, dims, learner/arch, seeds; Emo-CCC,
Cou-UAR, Age-MAE and S_MTL as **mean ± std over seeds** (Val; fusion runs are fused seed by
seed, so they have seeds too); and **ens. S_MTL**, the score of the seed-averaged
predictions, in its own column. Rows are sorted by the S_MTL mean over seeds (the column
marked ▼); rows without per-seed scores follow, by their ensemble score. How each number
is made, and the flags (†, ‡, ≈), are in :mod:`exvo.fusion.rows`.

Writes ``report.md``, ``report.csv`` and the PNG figures to ``out_dir``:

* ``per_emotion_ccc.png``   per-emotion CCC (mean ± std over seeds) of the top 5 rows
* ``country_confusion.png`` country confusion matrix of the top row (Val, seed ensemble)
* ``age_scatter.png``       true vs predicted age of the top row (Val, seed ensemble)
* ``ssl_layers.png``        S_MTL (mean ± std over seeds) per layer for runs that differ only
                            in the layer of one SSL feature set (given, ``@best`` or last)

and the sections of the other tracks and tools (each skipped when it has nothing to show):

* the paper-vs-ours tables of ``exvo reproduce`` (``<runs>/reproduce-*/table.md``; :mod:`exvo.recipes.table`)
* task CNNs: the paper's Table 1 (clip-level Val UAR/WAR) and Fig. 2 (``cnn_filters.png``, first-layer
  frequency responses) for the CNNs behind the runs (:mod:`exvo.fusion.cnn_report`)
* layer sweeps (``<runs>/layers/``) and the weights of ``wsum`` runs (:mod:`exvo.learn.layers_report`)
* ExVo-FewShot table of ``<runs>/fewshot/`` runs (Val CCC, bootstrap CI; :mod:`exvo.fewshot.report`)

* ``train_vs_val_*.png``    FID tables of ``exvo fid --table`` found in ``<runs>/fid/`` (:mod:`exvo.generate.table`)
* ``verify_*.png``          enrol-to-verify: UAR against N_p, and a 2-D projection of prototypes
                            (runs in ``<runs>/verify/``, :mod:`exvo.verify.figures`)

A figure with nothing to plot is skipped with a note. More sections (tables, figures)
plug in through :data:`SECTIONS` (see :func:`register_section`).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from exvo.corpus import Corpus
from exvo.fusion.report_task import of_task, task_figures, task_note, task_view
from exvo.fusion.rows import METRICS, MULTITASK_KINDS, Row, constant_predictor, layer_groups, make_rows
from exvo.runs.reader import Run, discover
from exvo.predictions import PredictionError

TOP_EMOTION_RUNS = 5
MAX_CELL = 44


@dataclass
class Section:
    """An extra part of the report: markdown text, figures ``[(title, path)]``, notes, and the
    lines it adds to the terminal output (``text``, e.g. a plain-text table)."""

    title: str
    markdown: str = ""
    figures: list[tuple[str, Path]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)


SectionFn = Callable[[list[Row], Path, "Corpus | None", Path], "Section | None"]
SECTIONS: list[SectionFn] = []
"""Extra report sections, called in order with ``(rows, out_dir, corpus, runs_dir)`` after the main table."""

SECTION_PROVIDERS = ("exvo.recipes.table", "exvo.fusion.cnn_report", "exvo.learn.layers_report", "exvo.fewshot.report",
                     "exvo.verify.figures", "exvo.generate.table")
"""Modules whose ``report_section(rows, out_dir, corpus, runs_dir)`` adds a section (imported when a report is made)."""


def register_section(fn: SectionFn) -> SectionFn:
    """Add a section builder (usable as a decorator); returning None skips it."""
    SECTIONS.append(fn)
    return fn


def _builtin_sections() -> list[SectionFn]:
    import importlib

    return [importlib.import_module(m).report_section for m in SECTION_PROVIDERS]


def _fmt(r: Row, m: str, digits: int) -> str:
    """``mean ± std``; ``± n/a`` for one seed; S_MTL with ``(k/n)`` when only k seeds define it."""
    mean, std = r.mean[m], r.std[m]
    n_def = r.s_mtl_defined if m == "s_mtl" else None
    if mean is None:
        if n_def == 0 and r.n_seeds:
            return f"undefined (0/{r.n_seeds})"
        return "–" if r.kind == "fusion" and r.note and "per-seed" in r.note else "?"
    cell = f"{mean:.{digits}f} ± " + (f"{std:.{digits}f}" if std is not None else "n/a")
    if n_def is not None and r.n_seeds and n_def < r.n_seeds:
        cell += f" ({n_def}/{r.n_seeds})"
    return cell


def _marks(r: Row) -> str:
    return (" †" if r.optimistic else "") + (" ‡" if r.stale else "") + (" ≈" if r.probe_tie else "")


def _oof_cell(r: Row) -> str:
    """OOF S_MTL ``mean ± std [lo, hi]`` of a ``--stop-on folds`` run; ``–`` for runs without one."""
    o = r.oof
    if o is None or o["mean"] is None:
        return "–" if o is None else "undefined"
    cell = f"{o['mean']:.3f} ± " + ("n/a" if o["std"] is None else f"{o['std']:.3f}")
    return (cell + (f" [{o['ci95'][0]:.3f}, {o['ci95'][1]:.3f}]" if o["ci95"] else "")
            + (" †" if o.get("optimistic") else ""))


BETTER = {"ccc": 1, "uar": 1, "mae": -1}


def not_learned(r: Row, const: dict | None) -> list[str]:
    """Subtask metrics whose seed mean is no better than the constant predictor's (``ccc``, ``uar``, ``mae``)."""
    if const is None:
        return []
    return [m for m, sign in BETTER.items() if r.mean[m] is not None and sign * (r.mean[m] - const[m]) <= 0]


def _cells(rank: int, r: Row, const: dict | None = None) -> list[str]:
    ens = r.ensemble["s_mtl"]
    bad = not_learned(r, const)

    def cell(m: str, digits: int) -> str:
        return _fmt(r, m, digits) + (" ✗" if m in bad else "")

    return [str(rank), r.system + _marks(r), r.features, r.dims, r.learner, r.seeds,
            cell("ccc", 3), cell("uar", 3), cell("mae", 2), _fmt(r, "s_mtl", 3),
            "undefined" if r.ensemble_undefined else "?" if ens is None else f"{ens:.3f}", _oof_cell(r)]


CONSTANT_NAME = "constant predictor"


def _constant_cells(const: dict) -> list[str]:
    """The trivial row: Train mean emotions and age, majority country, scored on Val (no seeds, no spread)."""
    def f(m: str, d: int) -> str:
        return "–" if const.get(m) is None else f"{const[m]:.{d}f}"

    both = const["ccc"] is not None and const["uar"] is not None     # S_MTL's form: undefined for CCC or UAR <= 0
    s_mtl = "undefined (CCC 0)" if both and (const["ccc"] <= 0 or const["uar"] <= 0) else f("s_mtl", 3)
    return ["–", CONSTANT_NAME, "Train mean / majority", "0", "constant", "-", f("ccc", 3), f("uar", 3), f("mae", 2),
            s_mtl, "–", "–"]


HEADER = ["#", "system", "features", "dims", "learner", "seeds", "Emo-CCC", "Cou-UAR", "Age-MAE", "S_MTL ▼",
          "ens. S_MTL", "OOF S_MTL"]
RIGHT = {0, 3, 5, 6, 7, 8, 9, 10, 11}
SORT_NOTE = ("sorted by S_MTL ▼ = the S_MTL mean over seeds (Val); Emo-CCC, Cou-UAR, Age-MAE, S_MTL: mean ± std "
             "over seeds (population std; n/a = one seed, std undefined); ens. S_MTL: S_MTL of the seed-averaged "
             "predictions (val.csv), a different quantity, never sorted on")
OOF_NOTE = ("OOF S_MTL: the out-of-fold estimate from Train alone (`--stop-on folds`: every Train clip predicted by "
            "the fold model that never trained on its speaker; Val never used), mean ± std over seeds, [95 % CI] = "
            "speaker bootstrap of the seed ensemble's OOF predictions; – = run without folds (no OOF estimate); "
            "† = optimistic: a feature set is a task CNN trained on these Train labels without --crossfit")
CONSTANT_NOTE = ("constant predictor (last row): Train mean emotions and age, majority Train country, scored on Val "
                 "(from the learn runs' config.json constant_predictor_val); its CCC is 0, so its S_MTL is undefined; "
                 "✗ = a seed mean no better than it: that subtask did not learn")


def _text_table(rows: list[list[str]], header: list[str] = HEADER, right: set[int] = RIGHT) -> str:
    def cut(c: str) -> str:
        return c if len(c) <= MAX_CELL else c[: MAX_CELL - 1] + "…"

    rows = [[cut(c) for c in r] for r in rows]
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]

    def line(r):
        return "  ".join(c.rjust(w) if j in right else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def _md_table(rows: list[list[str]], header: list[str] = HEADER, right: set[int] = RIGHT) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if j in right else "---"
                                                             for j in range(len(header))) + "|"]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _dagger(r: Row) -> str:
    return ", † Val chose it" if r.optimistic else ""


def _figures(rows: list[Row], out_dir: Path, corpus: Corpus | None,
             const: dict | None = None) -> tuple[list[tuple[str, Path]], list[str]]:
    from exvo.fusion import plots

    made: list[tuple[str, Path]] = []
    notes: list[str] = []
    top = [(r.system + _marks(r), r.ccc_per_emotion, r.ccc_per_emotion_std) for r in rows
           if r.ccc_per_emotion][:TOP_EMOTION_RUNS]
    if top:
        made.append(("Per-emotion CCC of the top runs (mean ± std over seeds)",
                     plots.per_emotion_ccc(top, out_dir / "per_emotion_ccc.png")))
    else:
        notes.append("per_emotion_ccc.png skipped: no run has per-emotion CCC in metrics.json")

    best = next((r for r in rows if r.run.has("Val")), None)
    task = corpus.task if corpus is not None else None
    if task is not None and task.name != "exvo-mtl":
        return made + task_figures(best, task, corpus, out_dir, const, notes, _dagger(best) if best else ""), notes
    if corpus is None:
        notes.append("country_confusion.png and age_scatter.png skipped: no corpus given (labels needed)")
    elif best is None:
        notes.append("country_confusion.png and age_scatter.png skipped: no run has val.csv")
    else:
        try:
            emo, cou, age = corpus.labels("Val")
            pred = best.run.load("Val").take(corpus.split_ids("Val"))
        except (PredictionError, ValueError) as e:
            notes.append(f"country_confusion.png and age_scatter.png skipped: best run {best.system}: {e}")
        else:
            from exvo.metrics import mae, uar

            # the headline number first: a long run name wraps below it, never pushes it off the figure
            made.append((f"Country confusion of the top run ({best.system}, seed ensemble)", plots.country_confusion(
                cou, pred.country, out_dir / "country_confusion.png",
                f"Country UAR {uar(cou, pred.country):.3f} (Val, seed ensemble{_dagger(best)})\n"
                + (f"majority-class predictor: UAR {const['uar']:.3f}\n" if const else "") + best.system)))
            made.append((f"Age, true vs predicted, top run ({best.system}, seed ensemble)", plots.age_scatter(
                age, pred.age, out_dir / "age_scatter.png",
                f"Age MAE {mae(age, pred.age):.2f} years (Val, seed ensemble{_dagger(best)})\n"
                + (f"Train-mean predictor: MAE {const['mae']:.2f} years\n" if const else "") + best.system)))

    groups = layer_groups(rows)
    if groups:
        made.append(("S_MTL per SSL layer (mean ± std over seeds)", plots.layer_curves(groups, out_dir / "ssl_layers.png")))
    else:
        notes.append("ssl_layers.png skipped: no runs of the same feature set at two or more layers")
    return made, notes


def _optimism_notes(rows: list[Row]) -> list[str]:
    """The † legend: learn runs stopped on Val, fusions chosen on Val, fusions that inherit a source's †."""
    notes = []
    own = {r.system: [w for w in r.optimistic_why if w.startswith(f"{r.system}: ")] for r in rows}
    if any(own[r.system] and r.kind == "fusion" for r in rows):
        notes.append("† fusion chosen on Val and scored on Val: optimistic (fuse with --select-on cv for a "
                     "held-out estimate)")
    if any(r.optimistic and r.kind != "fusion" for r in rows):
        notes.append("† learn run whose epochs were chosen on Val (--stop-on val, e.g. --preset paper|baseline) "
                     "and scored on Val: optimistic (the default chooses on held-out Train speakers)")
    for r in rows:
        inherited = [w for w in r.optimistic_why if w not in own[r.system]]
        if r.kind == "fusion" and inherited:
            notes.append(f"† {r.system} fuses runs whose Val figures are optimistic, so its are too: "
                         + "; ".join(inherited[:3]) + (" …" if len(inherited) > 3 else ""))
    return notes


def _learning_notes(rows: list[Row], const: dict | None) -> list[str]:
    """The OOF legend, the constant row's legend and which runs did not beat it on which subtask."""
    notes = [OOF_NOTE] if any(r.oof is not None for r in rows) else []
    if const is None:
        return notes
    notes.append(CONSTANT_NOTE)
    label = {"ccc": "Emo-CCC", "uar": "Cou-UAR", "mae": "Age-MAE"}
    worse = []
    for m in BETTER:
        bad = [r for r in rows if m in not_learned(r, const)]
        if bad:
            worse.append(f"{label[m]} (constant {const[m]:.3f}): {len(bad)} of {len(rows)} rows, "
                         + ", ".join(f"{r.system} {r.mean[m]:.3f}" for r in bad))
    if worse:
        notes.append(f"✗ no better than the constant predictor (seed mean, Val): {'; '.join(worse)}")
    elif any(r.mean["ccc"] is not None for r in rows):
        notes.append("every run with per-seed scores beats the constant predictor on all three subtasks (seed mean, Val)")
    return notes


def _notes(rows: list[Row], const: dict | None = None) -> list[str]:
    notes = [SORT_NOTE] + _optimism_notes(rows) + _learning_notes(rows, const)
    if any(r.kind == "fusion" and r.run.record.get("select_on") == "cv" for r in rows):
        notes.append("cv fusion runs: each half of the Val speakers predicted by the runs chosen on the other half "
                     "(out-of-fold), scored on all of Val, per fused seed and for the seed ensemble; features "
                     "name the choice per half as A|B (the same run on both halves: one name)")
    def pooled(r: Row) -> bool:
        return r.run.record.get("mode") == "pool"

    if any(r.kind == "fusion" and r.n_seeds and not pooled(r) for r in rows):
        notes.append("fusion runs are fused seed by seed (seed k of every source, paired by index up to the "
                     "smallest seed count); their ± is over the fused seeds")
    if any(r.kind == "fusion" and pooled(r) for r in rows):
        notes.append("pool runs (`exvo fuse --pool`): every seed of every source run (CNN seeds × learner seeds), "
                     "nothing chosen on Val; their ± includes the task CNN's own seed variance")
    if any(r.s_mtl_defined is not None and r.n_seeds and r.s_mtl_defined < r.n_seeds for r in rows):
        notes.append("S_MTL (k/n): defined for k of n seeds only (CCC or UAR <= 0 on the others); the mean is over "
                     "the k seeds, not counting the others as 0, and the row is ranked by it: read it with its k/n")
    if any(r.ensemble_undefined for r in rows):
        notes.append("ens. S_MTL undefined: the seed-averaged predictions have CCC or UAR <= 0")
    for r in rows:
        for why in r.stale:
            notes.append(f"‡ {r.system} is stale: {why}" + ("; fuse again to update it" if r.kind == "fusion" and "fuse" not in why else ""))
    for r in rows:
        for p in r.probe:
            notes.append(("≈ " if r.probe_tie else "") + f"{r.system}: {p}")
    notes += [f"{r.system}: {r.note}" for r in rows if r.note]
    return notes


CSV_HEADER = ["rank", "system", "kind", "features", "dims", "learner", "seeds",
              *(f"{m}_{s}" for m in METRICS for s in ("mean", "std")), "s_mtl_seeds_defined",
              *(f"ensemble_{m}" for m in METRICS), "ensemble_s_mtl_defined", "optimistic", "stale", "probe_tie",
              "oof_s_mtl_mean", "oof_s_mtl_std", "oof_s_mtl_ci95_lo", "oof_s_mtl_ci95_hi", "not_learned", "path"]


def _write_csv(rows: list[Row], path: Path, const: dict | None, task=None) -> None:
    def num(v) -> str:
        return "" if v is None else repr(v)

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        # another task's combined score sits in the s_mtl columns, named as the task names it
        other = task is not None and task.name != "exvo-mtl"
        w.writerow([h.replace("s_mtl", task.score_name) for h in CSV_HEADER] if other else CSV_HEADER)
        for k, r in enumerate(rows):
            o = r.oof or {}
            ci = o.get("ci95") or [None, None]
            w.writerow([k + 1, r.system, r.kind, r.features, r.dims, r.learner, r.seeds,
                        *(num(d[m]) for m in METRICS for d in (r.mean, r.std)), num(r.s_mtl_defined),
                        *(num(r.ensemble[m]) for m in METRICS), not r.ensemble_undefined, r.optimistic,
                        "; ".join(r.stale), r.probe_tie, num(o.get("mean")), num(o.get("std")), num(ci[0]),
                        num(ci[1]), " ".join(not_learned(r, const)), str(r.run.path)])
        if const is not None:
            w.writerow(["", CONSTANT_NAME, "constant", "Train mean / majority", 0, "constant", "",
                        *(num(const[m]) if s == "mean" else "" for m in METRICS for s in ("mean", "std")), "",
                        *([""] * (len(CSV_HEADER) - 16))])


def _split_kinds(runs: list[Run], runs_dir: Path) -> tuple[list[Run], list[str]]:
    """``(the multitask runs, notes)``: few-shot and verify runs found directly under ``runs_dir`` are
    not rows of the multitask table (their metrics mean something else); the note says where they go."""
    other: dict[str, list[str]] = {}
    for r in runs:
        if r.kind not in MULTITASK_KINDS:
            other.setdefault(r.kind, []).append(r.name)
    notes = []
    for kind, names in other.items():
        if kind == "cnn-posteriors":
            notes.append(f"{len(names)} cnn-posteriors run(s) ({', '.join(names[:5])}{' …' if len(names) > 5 else ''}) are "
                         "partial fusion sources (a country CNN's own clip decisions, `exvo cnn-posteriors`), not rows "
                         "of this table; their Val UAR is the CNN's clip UAR in the task-CNN table")
            continue
        parent = runs_dir.parent if runs_dir.name == kind else runs_dir
        notes.append(f"{len(names)} {kind} run(s) under {runs_dir} ({', '.join(names[:5])}{' …' if len(names) > 5 else ''}) "
                     f"are not multitask runs and are not rows of this table: `exvo report --runs {parent}` shows "
                     f"them in their own section (it reads {parent / kind})")
    return [r for r in runs if r.kind in MULTITASK_KINDS], notes


def make_report(runs_dir: str | Path, out_dir: str | Path, corpus: Corpus | None = None) -> str:
    """Write ``report.md``, ``report.csv`` and figures to ``out_dir``; return the table as text.

    ``corpus`` supplies the Val labels for the confusion matrix and the age scatter (and
    scores runs without ``metrics.json``); without it those figures are skipped.
    """
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{runs_dir} is not a folder; give the --runs folder that `exvo learn` wrote to")
    found = [r for r in discover(runs_dir) if r.path.resolve() != out_dir.resolve()]
    runs, kind_notes = _split_kinds(found, runs_dir)
    runs, task, task_notes = of_task(runs, corpus)
    kind_notes += task_notes
    rows = make_rows(runs, corpus) if runs else []
    out_dir.mkdir(parents=True, exist_ok=True)
    # the other tracks (few-shot, verify, FID, recipes) report without any multitask run
    sections = [s for s in (fn(rows, out_dir, corpus, runs_dir) for fn in (*_builtin_sections(), *SECTIONS))
                if s is not None]
    if not runs and not sections:
        raise FileNotFoundError(f"nothing to report under {runs_dir}: no multitask runs (`exvo learn --runs "
                                f"{runs_dir}`) and no few-shot, verify, FID or reproduce results"
                                + "".join(f"; {n}" for n in kind_notes))
    const, const_notes = constant_predictor(runs)
    cells = [_cells(k + 1, r, const) for k, r in enumerate(rows)]
    cells += [_constant_cells(const)] if rows and const is not None else []
    made, fig_notes = _figures(rows, out_dir, corpus, const) if rows else ([], [])
    notes = (_notes(rows, const) + const_notes if rows else
             [f"no multitask runs under {runs_dir} (train some with `exvo learn`)"]) + kind_notes

    header, cells, right = task_view(task, cells, HEADER, RIGHT)
    if task is not None and task.name != "exvo-mtl":
        notes = [f"task {task.describe()}"] + [task_note(n, task) for n in notes]
    _write_csv(rows, out_dir / "report.csv", const, task)
    md = [f"# exvo report: {runs_dir}", ""] + ([_md_table(cells, header, right), ""] if cells else [])
    md += [f"- {n}" for n in notes]
    if made or fig_notes:
        md += ["", "## Figures", ""]
    md += [f"### {title}\n\n![{title}]({p.name})\n" for title, p in made]
    md += [f"- {n}" for n in fig_notes]
    for sec in sections:
        md += ["", f"## {sec.title}", "", sec.markdown]
        md += [f"### {title}\n\n![{title}]({p.name})\n" for title, p in sec.figures]
        md += [f"- {n}" for n in sec.notes]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")

    text = ([_text_table(cells, header, right), ""] if cells else []) + [f"  {n}" for n in notes]
    text += [f"  figure: {p}" for _, p in made] + [f"  {n}" for n in fig_notes]
    for sec in sections:
        text += sec.text + [f"  figure: {p}" for _, p in sec.figures] + [f"  {n}" for n in sec.notes]
    text.append(f"  written: {out_dir / 'report.md'}, {out_dir / 'report.csv'}")
    return "\n".join(text)
