"""The report of one task (:mod:`exvo.tasks`): its runs, its table columns, its legend and figures.
ExVo-MTL's table is :mod:`exvo.fusion.report`'s as it always was; another task's drops the columns of
the groups it lacks and names its own score."""
from __future__ import annotations

from pathlib import Path

from exvo.fusion import plots
from exvo.metrics import uar
from exvo.predictions import PredictionError, run_task


def task_view(task, cells: list[list[str]], HEADER: list[str], RIGHT: set[int]  # noqa: N803 (ExVo's table)
              ) -> tuple[list[str], list[list[str]], set[int]]:
    """``(header, cells, right-aligned columns)`` of the table for ``task``: ExVo-MTL's as built; another
    task's without the columns of the slots it lacks, its combined score named as the task names it."""
    if task is None or task.name == "exvo-mtl":
        return HEADER, cells, RIGHT
    drop = {HEADER.index(h) for h, slot in (("Emo-CCC", "intensities"), ("Cou-UAR", "class"), ("Age-MAE", "value"))
            if not task.has(slot)}
    name = task.score_name
    rename = {"Emo-CCC": "CCC", "Cou-UAR": "UAR", "Age-MAE": "MAE", "S_MTL ▼": f"{name} ▼",
              "ens. S_MTL": f"ens. {name}", "OOF S_MTL": f"OOF {name}"}
    keep = [j for j in range(len(HEADER)) if j not in drop]
    header = [rename.get(HEADER[j], HEADER[j]) for j in keep]
    right = {k for k, j in enumerate(keep) if j in RIGHT}
    return header, [[r[j] for j in keep] for r in cells], right


def task_note(note: str, task) -> str:
    """A legend line in another task's words (its score name, its groups, its trivial predictor)."""
    for a, b in (("Emo-CCC, Cou-UAR, Age-MAE, S_MTL", "the group metrics and the score"),
                 ("Train mean emotions and age, majority Train country", "Train mean intensities, majority Train class"),
                 ("its CCC is 0, so its S_MTL is undefined; ", ""), ("on all three subtasks", "on every target group"),
                 ("S_MTL", task.score_name)):
        note = note.replace(a, b)
    return note


def of_task(runs: list, corpus) -> tuple[list, object, list[str]]:
    """``(the runs of the corpus' task, the task, notes)``: a report is of one task (its columns and
    score); runs of other tasks are left out with a note. Without a corpus: the first run's task."""
    if not runs:
        return runs, corpus.task if corpus is not None else None, []
    tasks = {r.name: run_task(r.path) for r in runs}
    task = corpus.task if corpus is not None else tasks[runs[0].name]
    other = [f"{n} ({t.name})" for n, t in tasks.items() if t != task]
    notes = [f"{len(other)} run(s) of other tasks are not rows of this {task.name} table: {', '.join(other[:5])}"
             f"{' …' if len(other) > 5 else ''}; report them with their --task"] if other else []
    return [r for r in runs if tasks[r.name] == task], task, notes


def task_figures(best, task, corpus, out_dir: Path, const: dict | None, notes: list[str],
                 dagger: str) -> list[tuple[str, Path]]:
    """Another task's confusion matrix of its classes (when it has a class group) for the top run ``best``
    (a report row; ``dagger`` its † legend)."""
    g = task.group("class")
    if g is None or best is None:
        return []
    try:
        _, cls, _ = corpus.labels("Val")
        pred = best.run.load("Val").take(corpus.split_ids("Val"))
    except (PredictionError, ValueError) as e:
        notes.append(f"confusion.png skipped: best run {best.system}: {e}")
        return []
    title = (f"{g.columns[0]} UAR {uar(cls, pred.country):.3f} (Val, seed ensemble{dagger})\n"
             + (f"majority-class predictor: UAR {const['uar']:.3f}\n" if const and const.get("uar") is not None else "")
             + best.system)
    return [(f"{g.columns[0]} confusion of the top run ({best.system}, seed ensemble)",
             plots.country_confusion(cls, pred.country, out_dir / "confusion.png", title, g.classes))]
