"""The side-by-side table of ``exvo reproduce``: the paper's figures, ours, and how they compare.

The paper's Test figure of the last metric is shown beside its Val figures where it reported
one. Ours come from each row's run folder: ``metrics.json``'s ``summary`` (mean ± std over seeds,
on the split the run scored: Val, or Test queries for enrol-to-verify) and its ``ensemble``
(the seed-averaged predictions; the column is left out when no row has one). One seed has no
spread: ``± n/a``. A run whose figures are optimistic (Val chose its epochs, its fusion, or the
runs it fused: :func:`exvo.fusion.rows.optimism`) is marked †; a stale row keeps its last
figures, marked ‡, with the reason in its status.

**Δ only on the paper's corpus.** Ours minus the paper's (last metric of the recipe) is shown
only when our corpus is the one the paper used (detected: the ExVo 2022 / HUME-VB split sizes;
or declared with ``paper_corpus=True``); on any other corpus (the demo corpus) the numbers are
not comparable, and the table shows instead the rank of each row within the table, by the
paper's figure and by ours, so the orderings can be compared.

Every table ends with the trivial row (Train mean / majority predictor, or chance), so a
subtask or a system that did not learn is visible. Written to ``<runs>/reproduce-<name>/``
(``reproduce-<name>-reduced/`` for the demo rows alone) through the run layer
(:class:`~exvo.runs.store.RunWriter`): the folder is replaced whole.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from exvo.recipes.load import Recipe
from exvo.recipes.run import RowOutcome
from exvo.runs import provenance
from exvo.runs.reader import Run, read_json
from exvo.runs.store import RunWriter

LABELS = {"ccc": "Emo-CCC", "uar": "UAR", "mae": "Age-MAE", "s_mtl": "S_MTL", "f1": "F1", "score": "task score"}
DIGITS = {"mae": 2}
LOWER_BETTER = {"mae"}

EXVO_SPLITS = {"Train": 19990, "Val": 19396, "Test": 19815}
"""ExVo 2022 (HUME-VB) split sizes, 59,201 clips (paper 002 Table 1; 003 §3): the corpus of every recipe
except those in :data:`PAPER_CORPUS`."""
PAPER_CORPUS = {"enrol-verify": "IEMOCAP"}
"""Recipes whose paper used another corpus than ExVo: Δ is never shown for them (no exvo corpus is it)."""


def is_paper_corpus(recipe: Recipe, corpus) -> tuple[bool, str]:
    """``(whether corpus is the one the recipe's paper used, what was compared)``; ``corpus``: a
    :class:`~exvo.corpus.Corpus` (split sizes compared) or a name (unknown: not the paper's)."""
    if recipe.name in PAPER_CORPUS:
        return False, f"the paper used {PAPER_CORPUS[recipe.name]}"
    if not hasattr(corpus, "split_ids"):
        return False, "the corpus's split sizes are unknown"
    sizes = {s: len(corpus.split_ids(s)) for s in EXVO_SPLITS}
    if sizes == EXVO_SPLITS:
        return True, "ExVo 2022 split sizes (59,201 clips)"
    return False, (f"the paper used ExVo 2022 (Train/Val/Test {'/'.join(map(str, EXVO_SPLITS.values()))} clips); "
                   f"this corpus has {'/'.join(str(sizes[s]) for s in EXVO_SPLITS)}")


def _read(run_dir: Path | None):
    """``(metrics.json, the Run)`` of a finished run folder, or ``(None, None)``."""
    run = Run.open(run_dir) if run_dir is not None and (run_dir / "metrics.json").is_file() else None
    return (run.metrics or None, run) if run is not None else (None, None)


def optimistic(run) -> bool:
    """Whether the run's figures were chosen on the data that scores them (:func:`exvo.fusion.rows.optimism`)."""
    from exvo.fusion.rows import optimism

    return bool(optimism(run))


ALIASES = {"f1": ("f1", "f1_weighted")}


def ours(metrics: dict, key: str) -> tuple[float | None, float | None, float | None]:
    """(mean over seeds, std over seeds, seed-ensemble) of one metric; None where absent.

    Multi-task and few-shot runs keep ``summary.<metric>.{mean,std}`` and ``ensemble.<metric>``;
    enrol-to-verify runs keep ``<metric>.{mean,std}`` at the top level.
    """
    mean = std = ens = None
    for k in ALIASES.get(key, (key,)):
        s = (metrics.get("summary") or {}).get(k, metrics.get(k))
        if isinstance(s, dict) and "mean" in s:
            mean, std = s.get("mean"), s.get("std")
        elif isinstance(s, (int, float)):
            mean = s
        e = (metrics.get("ensemble") or {}).get(k)
        ens = e if isinstance(e, (int, float)) else ens
        if mean is not None:
            break
    return mean, std, ens


def n_seeds(metrics: dict) -> int | None:
    s = metrics.get("seeds")
    if isinstance(s, int) and not isinstance(s, bool):
        return s
    per = metrics.get("per_seed")
    return len(per) if isinstance(per, list) and per else None


def scored_split(metrics: dict) -> str:
    """The split a run's figures are on: ``Val``, or ``Test`` for verify runs whose queries are Test."""
    q = metrics.get("queries")
    split = (q.get("split") if isinstance(q, dict) else None) or metrics.get("split") or "Val"
    return str(split).split(" ")[0]


def _f(x: float | None, key: str) -> str:
    return "" if x is None else f"{x:.{DIGITS.get(key, 3)}f}"


def _ours_cells(m: dict, keys: list[str], mark: str, seeds: int | None) -> tuple[list[str], str]:
    """Our figures (``mean ± std``, ``± n/a`` for one seed) and the ensemble of the last metric."""
    cells = []
    for k in keys:
        mean, std, _ = ours(m, k)
        spread = "" if std is None else " ± n/a" if seeds == 1 else f" ± {_f(std, k)}"
        cells.append("" if mean is None else _f(mean, k) + spread + mark)
    _, _, e = ours(m, keys[-1])
    return cells, "" if e is None else _f(e, keys[-1]) + mark


def _row(o: RowOutcome, keys: list[str]) -> dict:
    """One table row's parts: paper cells, ours, the ensemble, the two figures compared, the split."""
    r, last = o.row, keys[-1]
    paper = [_f(r.paper.get(k), k) + (f" ± {_f(r.paper[k + '_std'], k)}" if k + "_std" in r.paper else "")
             for k in keys]
    m, run = _read(o.run_dir) if o.status in ("done", "stale") else (None, None)
    top = m
    if m is not None and r.metrics_from:
        m = m.get(r.metrics_from)
    out = {"paper": paper, "ours": [""] * len(keys), "ens": "", "mine": None, "theirs": r.paper.get(last),
           "split": None}
    if m is not None:
        mark = (" †" if optimistic(run) else "") + (" ‡" if o.status == "stale" else "")
        out["ours"], out["ens"] = _ours_cells(m, keys, mark, n_seeds(m) or n_seeds(top))
        out["mine"] = ours(m, last)[0]
        out["split"] = scored_split(top)
    return out


def _ranks(values: list[float | None], lower_better: bool) -> list[str]:
    """Rank of each value among those given (1 = best; ties share a rank); "" where None."""
    have = sorted({v for v in values if v is not None}, reverse=not lower_better)
    return ["" if v is None else str(1 + sum(w < v if lower_better else w > v for w in have)) for v in values]


def trivial_row(recipe: Recipe, outcomes: list[RowOutcome]) -> list[str] | None:
    """Our figures of the trivial predictor, one per metric (None: nothing records one): Train mean
    emotions/age and majority country (the learn runs' ``constant_predictor_val``), the constant
    CCC 0 for emotion-only recipes, chance UAR for enrol-to-verify."""
    keys = recipe.metrics
    if "score" in keys:
        return _per_task_trivial(keys, outcomes)
    for o in outcomes:
        if o.run_dir is None:
            continue
        cfg, met = read_json(o.run_dir / "config.json") or {}, read_json(o.run_dir / "metrics.json") or {}
        const = cfg.get("constant_predictor_val")
        if isinstance(const, dict) and "s_mtl" in keys:
            undefined = const.get("ccc", 0) <= 0 or const.get("uar", 0) <= 0
            return ["undefined (CCC 0)" if k == "s_mtl" and undefined else _f(const.get(k), k) for k in keys]
        if isinstance(met.get("chance_uar"), (int, float)) and "uar" in keys:
            return [_f(met["chance_uar"], k) if k == "uar" else "–" for k in keys]
    if keys == ["ccc"]:
        return ["0.000"]
    return None


def _per_task_trivial(keys: list[str], outcomes: list[RowOutcome]) -> list[str] | None:
    """A recipe over several tasks (``score``): each task's trivial predictor (its learn runs'
    ``constant_predictor_val``), the distinct values of a column joined by " / "."""
    found: dict[str, list[str]] = {k: [] for k in keys}
    for o in outcomes:
        const = (read_json(o.run_dir / "config.json") or {}).get("constant_predictor_val") if o.run_dir else None
        for k in keys:
            if isinstance(const, dict) and isinstance(const.get(k), (int, float)) and _f(const[k], k) not in found[k]:
                found[k].append(_f(const[k], k))
    if not any(found.values()):
        return None
    return [" / ".join(v) or "–" for v in found.values()]


TRIVIAL = {"score": "each task's trivial predictor: Train mean intensities (CCC 0), majority Train type (UAR)",
           "s_mtl": "constant predictor: Train mean emotions and age, majority Train country (scored like the rows)",
           "uar": "chance: UAR of always answering one class (1 / number of task classes)",
           "ccc": "constant predictor (Train mean emotions): CCC 0 by definition"}


def rows(recipe: Recipe, outcomes: list[RowOutcome], paper_corpus: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and body of the table; ``paper_corpus``: Δ columns, else the two rank columns."""
    keys, last = recipe.metrics, recipe.metrics[-1]
    parts = [_row(o, keys) for o in outcomes]
    with_ens = any(p["ens"] for p in parts)
    head = (["row", "system", "source"] + [f"paper {LABELS[k]}" for k in keys] + [f"paper Test {LABELS[last]}"]
            + [f"ours {LABELS[k]}" for k in keys] + ([f"ours ens. {LABELS[last]}"] if with_ens else [])
            + ([f"Δ {LABELS[last]}"] if paper_corpus else [f"paper rank ({LABELS[last]})", f"ours rank ({LABELS[last]})"])
            + ["status"])
    both = [p["mine"] is not None and p["theirs"] is not None for p in parts]
    low = last in LOWER_BETTER
    paper_rank = _ranks([p["theirs"] if b else None for p, b in zip(parts, both)], low)
    our_rank = _ranks([p["mine"] if b else None for p, b in zip(parts, both)], low)
    body = []
    for k, (o, p) in enumerate(zip(outcomes, parts)):
        r = o.row
        compare = ([f"{p['mine'] - p['theirs']:+.{DIGITS.get(last, 3)}f}" if both[k] else ""] if paper_corpus
                   else [paper_rank[k], our_rank[k]])
        status = o.status + (f": {o.detail}" if o.detail else "")
        system = r.system + (f" [not in the paper: {r.extra}]" if r.extra else "")
        body.append([r.id, system, r.source, *p["paper"], _f(r.paper_test.get(last), last), *p["ours"],
                     *([p["ens"]] if with_ens else []), *compare, status])
    triv = trivial_row(recipe, outcomes)
    if triv is not None:
        body.append(["trivial", TRIVIAL.get(last, TRIVIAL.get(keys[0], "trivial predictor")), "–", *[""] * len(keys),
                     "", *triv, *([""] if with_ens else []), *([""] if paper_corpus else ["", ""]), "reference"])
    return head, body


def splits_of(outcomes: list[RowOutcome]) -> list[str]:
    """The splits our figures are on (for the table's legend)."""
    found = []
    for o in outcomes:
        m, _ = _read(o.run_dir) if o.status in ("done", "stale") else (None, None)
        if m is not None and (s := scored_split(m)) not in found:
            found.append(s)
    return found or ["Val"]


def table_folder(recipe: Recipe, reduced: bool) -> str:
    """``reproduce-<name>`` for the full recipe, ``reproduce-<name>-reduced`` for its demo rows alone."""
    return f"reproduce-{recipe.name}" + ("-reduced" if reduced else "")


def write(recipe: Recipe, outcomes: list[RowOutcome], runs_dir: Path, corpus, *, reduced: bool = False,
          paper_corpus: bool | None = None) -> Path:
    """Write ``table.md`` and ``table.csv`` as the run-layer folder :func:`table_folder` (kind
    ``reproduce``: replaced whole, its rows' run folders recorded as sources, so a changed row
    marks the table stale); returns the folder. ``corpus``: the :class:`~exvo.corpus.Corpus` (or its
    name); ``paper_corpus``: declare whether it is the paper's (None: :func:`is_paper_corpus`)."""
    same, why = is_paper_corpus(recipe, corpus)
    if paper_corpus is not None:
        same, why = paper_corpus, "declared"
    name = getattr(corpus, "name", str(corpus))
    if reduced:      # the demo rows' own table: the full recipe's rows are in the full table
        outcomes = [o for o in outcomes if o.row.id in recipe.demo_rows()]
    head, body = rows(recipe, outcomes, same)
    folder = Path(runs_dir) / table_folder(recipe, reduced)
    # a table written before tables had a config.json (exvo 0.1) is ours too: replace it
    legacy = folder.is_dir() and not (folder / "config.json").exists() and \
        {p.name for p in folder.iterdir()} <= {"table.md", "table.csv", "steps.json"}
    writer = RunWriter(runs_dir, folder.name, overwrite=legacy, replace_kind="reproduce")
    with writer:
        buf = io.StringIO()
        csv.writer(buf).writerows([head, *body])
        writer.file("table.csv").write_text(buf.getvalue())
        writer.file("table.md").write_text(_markdown(recipe, head, body, name, same, why, splits_of(outcomes), reduced))
        sources = [o.run_dir for o in outcomes if o.run_dir is not None and (o.run_dir / "config.json").is_file()]
        record = {"kind": "reproduce", "recipe": recipe.name, "corpus": name, "reduced": reduced,
                  "paper_corpus": same, "rows": {o.row.id: o.status for o in outcomes}}
        return writer.commit(record, provenance.inputs(sources=sources, runs_dir=runs_dir))


def _markdown(recipe: Recipe, head: list[str], body: list[list[str]], corpus_name: str, same: bool, why: str,
              splits: list[str], reduced: bool) -> str:
    last = LABELS[recipe.metrics[-1]]
    compare = (f"Δ = ours (mean over seeds) − paper, {last}: the same corpus as the paper ({why})." if same else
               f"No Δ: {why}, so the numbers are not comparable; 'paper rank' and 'ours rank' order the rows that "
               f"have both figures by {last} (1 = best), to compare the orderings.")
    md = [f"# {recipe.title}" + (" — reduced (the demo rows)" if reduced else ""), "",
          f"Paper: `{recipe.paper}`. Ours: corpus `{corpus_name}`, {' and '.join(splits)}, mean ± std over seeds "
          "(population std; ± n/a: one seed); 'ours ens.' scores the seed-averaged predictions. " + compare
          + " † = optimistic: the model, the fusion or a run it fused was chosen on the same Val data it is "
          "scored on. ‡ = stale: the row's run no longer matches its recipe step or inputs; its last figures are "
          "kept and the status says why. The 'trivial' row is the predictor that learns nothing.", ""]
    if reduced:
        md += [f"Only the rows `exvo demo` runs (`exvo reproduce {recipe.name} --reduced`); the full recipe's table "
               f"is `{table_folder(recipe, False)}/table.md`.", ""]
    md += [f"- {n}" for n in recipe.notes] + ([""] if recipe.notes else [])
    md.append("| " + " | ".join(head) + " |")
    md.append("|" + "---|" * len(head))
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
    return "\n".join(md) + "\n"


def report_section(rows, out_dir: Path, corpus, runs_dir: Path):
    """``exvo report``'s section: every ``<runs>/reproduce-*/table.md`` (None when there is none)."""
    from exvo.fusion.report import Section

    tables = sorted(Path(runs_dir).glob("reproduce-*/table.md"))
    if not tables:
        return None
    md = []
    for t in tables:
        lines = t.read_text().splitlines()
        md += [f"### {lines[0].lstrip('# ')}", ""] + lines[1:] + [""]
    return Section("Reproducing the papers (`exvo reproduce`)", "\n".join(md),
                   text=["", "Reproducing the papers: " + ", ".join(str(t) for t in tables)])
