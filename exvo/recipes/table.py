"""The side-by-side table of ``exvo reproduce``: the paper's figures, ours, and the difference.

The paper's Test figure of the last metric is shown beside its Val figures where it reported
one. Ours come from each row's run folder: ``metrics.json``'s ``summary`` (mean ± std over seeds,
on Val) and its ``ensemble`` (the seed-averaged predictions). A run whose Val figures are
optimistic (its model or fusion was chosen on Val itself) is marked †. The difference is
ours (mean over seeds) minus the paper's, for the last metric of the recipe (S_MTL for the
Multi-Task recipes). Written to ``<runs>/reproduce-<name>/table.md`` and ``table.csv``
through the run layer (:class:`~exvo.runs.store.RunWriter`): the folder is replaced whole.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from exvo.recipes.load import Recipe
from exvo.recipes.run import RowOutcome
from exvo.runs import provenance
from exvo.runs.store import RunWriter

LABELS = {"ccc": "Emo-CCC", "uar": "UAR", "mae": "Age-MAE", "s_mtl": "S_MTL", "f1": "F1"}
DIGITS = {"mae": 2}


def _metrics(run_dir: Path | None) -> tuple[dict | None, dict]:
    if run_dir is None or not (run_dir / "metrics.json").is_file():
        return None, {}
    m = json.loads((run_dir / "metrics.json").read_text())
    cfg_path = run_dir / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    return m, cfg


def optimistic(metrics: dict, config: dict) -> bool:
    """Whether the Val figures were chosen on Val (early stopping or fusion selection on Val)."""
    if metrics.get("optimistic") or config.get("optimistic"):
        return True
    if config.get("kind") == "fusion":
        return config.get("select_on", "val") == "val" and config.get("mode") == "hybrid"
    return config.get("stop_on") == "val"


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


def _f(x: float | None, key: str) -> str:
    return "" if x is None else f"{x:.{DIGITS.get(key, 3)}f}"


def rows(recipe: Recipe, outcomes: list[RowOutcome]) -> tuple[list[str], list[list[str]]]:
    keys = recipe.metrics
    last = keys[-1]
    head = (["row", "system", "source"] + [f"paper {LABELS[k]}" for k in keys] + [f"paper Test {LABELS[last]}"]
            + [f"ours {LABELS[k]}" for k in keys] + [f"ours ens. {LABELS[keys[-1]]}", f"Δ {LABELS[keys[-1]]}",
                                                       "status"])
    out = []
    for o in outcomes:
        r = o.row
        paper = [_f(r.paper.get(k), k) + (f" ± {_f(r.paper[k + '_std'], k)}" if k + "_std" in r.paper else "")
                 for k in keys]
        m, cfg = _metrics(o.run_dir) if o.status == "done" else (None, {})
        if m is not None and r.metrics_from:
            m = m.get(r.metrics_from)
        mine, ens, delta = [""] * len(keys), "", ""
        if m is not None:
            dag = " †" if optimistic(m, cfg) else ""
            for i, k in enumerate(keys):
                mean, std, _ = ours(m, k)
                mine[i] = _f(mean, k) + (f" ± {_f(std, k)}" if std is not None else "") + (dag if mean is not None else "")
            last = keys[-1]
            mean, _, e = ours(m, last)
            ens = _f(e, last) + (dag if e is not None else "")
            if mean is not None and last in r.paper:
                delta = f"{mean - r.paper[last]:+.{DIGITS.get(last, 3)}f}"
        status = o.status + (f": {o.detail}" if o.detail else "")
        system = r.system + (f" [not in the paper: {r.extra}]" if r.extra else "")
        out.append([r.id, system, r.source, *paper, _f(r.paper_test.get(last), last), *mine, ens, delta, status])
    return head, out


def write(recipe: Recipe, outcomes: list[RowOutcome], runs_dir: Path, corpus_name: str) -> Path:
    """Write ``table.md`` and ``table.csv`` as the run-layer folder ``<runs>/reproduce-<name>/``
    (kind ``reproduce``: replaced whole, its rows' run folders recorded as sources, so a
    changed row marks the table stale); returns the folder."""
    head, body = rows(recipe, outcomes)
    folder = Path(runs_dir) / f"reproduce-{recipe.name}"
    # a table written before tables had a config.json (exvo 0.1) is ours too: replace it
    legacy = folder.is_dir() and not (folder / "config.json").exists() and \
        {p.name for p in folder.iterdir()} <= {"table.md", "table.csv", "steps.json"}
    writer = RunWriter(runs_dir, folder.name, overwrite=legacy, replace_kind="reproduce")
    with writer:
        buf = io.StringIO()
        csv.writer(buf).writerows([head, *body])
        writer.file("table.csv").write_text(buf.getvalue())
        writer.file("table.md").write_text(_markdown(recipe, head, body, corpus_name))
        sources = [o.run_dir for o in outcomes if o.run_dir is not None and (o.run_dir / "config.json").is_file()]
        record = {"kind": "reproduce", "recipe": recipe.name, "corpus": corpus_name,
                  "rows": {o.row.id: o.status for o in outcomes}}
        return writer.commit(record, provenance.inputs(sources=sources, runs_dir=runs_dir))


def _markdown(recipe: Recipe, head: list[str], body: list[list[str]], corpus_name: str) -> str:
    md = [f"# {recipe.title}", "",
          f"Paper: `{recipe.paper}`. Ours: corpus `{corpus_name}`, Val, mean ± std over seeds "
          "(population std); 'ours ens.' scores the seed-averaged predictions; Δ = ours (mean) − paper. "
          "† = optimistic: the model or fusion was chosen on the same Val data it is scored on. "
          "Paper figures are on the real ExVo corpus: on another corpus (e.g. the demo corpus) "
          "only the ranking of rows is comparable, not the numbers.", ""]
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
