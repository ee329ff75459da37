"""Recipe files: one TOML per paper, each a list of rows with their steps and the paper's figures.

A recipe (``exvo/recipes/<name>.toml``)::

    name = "idiap2022"
    title = "…"
    paper = "001_9b47127f3ca57c3b.txt"        # the paper, under shared/papers/
    metrics = ["ccc", "uar", "mae", "s_mtl"]  # the columns compared (see exvo.recipes.table)

    [[row]]
    id = "compare-sys1"                       # unique; also the run folder suffix
    system = "ComParE, Sys-1"
    source = "Table 2, row ComParE Sys.1"     # where the paper's figures were transcribed from
    paper = {ccc = 0.416, uar = 0.506, mae = 4.222, s_mtl = 0.349}
    paper_test = {s_mtl = 0.335}              # optional
    steps = ["extract --model compare",
             "learn --features compare --arch sys1 --preset paper --name {run}"]
    checkpoint = "microsoft/wavlm-large"      # optional: hub id of the weights the steps need
    unavailable = "…"                         # optional: why exvo cannot produce this row
    metrics_from = "all_reference"            # optional: read ours from this part of metrics.json
    extra = "…"                               # optional: a row exvo adds, not in the paper (no paper figures)
    needs_gpu = true                          # optional: skipped with the reason where CUDA is unavailable
    demo = true                               # optional: `exvo demo` runs this row (reduced recipe)

``{run}`` in a step is the row's run folder name, ``reproduce-<recipe>-<row id>``; the run
named by the last step's ``--name`` is the one whose ``metrics.json`` gives our figures. Steps are
``exvo`` command lines without ``--data``/``--cache``/``--runs``, which ``exvo reproduce``
adds for every command that takes them.
"""
from __future__ import annotations

import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from exvo.runs.store import check_name

RECIPE_DIR = Path(__file__).parent
KNOWN_METRICS = ("ccc", "uar", "mae", "s_mtl", "f1", "score")
"""``score``: a task's combined score (:mod:`exvo.tasks`; the A-VB tasks' mean CCC or UAR)."""


class RecipeError(ValueError):
    """A recipe file is malformed; the message names the file, the row and the fix."""


@dataclass
class Row:
    id: str
    system: str
    source: str
    paper: dict[str, float]
    paper_test: dict[str, float] = field(default_factory=dict)
    steps: list[list[str]] = field(default_factory=list)
    checkpoint: str | None = None
    unavailable: str | None = None
    note: str | None = None
    metrics_from: str | None = None     # read our figures from this part of metrics.json (e.g. all_reference)
    extra: str | None = None            # a row exvo adds (not in the paper): why; it has no paper figures
    needs_gpu: bool = False             # skipped (with the reason) where CUDA is not available
    demo: bool = False                  # one of the rows `exvo demo` runs (a reduced recipe, minutes on a CPU)

    def run_name(self, recipe: str) -> str:
        return f"reproduce-{recipe}-{self.id}"


@dataclass
class Recipe:
    name: str
    title: str
    paper: str
    metrics: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    path: Path | None = None

    def commands(self) -> list[str]:
        return sorted({s[0] for r in self.rows for s in r.steps})

    def checkpoints(self) -> list[str]:
        return sorted({r.checkpoint for r in self.rows if r.checkpoint})

    def demo_rows(self) -> set[str]:
        """Ids of the rows ``exvo demo`` and ``--reduced`` run (``demo = true``)."""
        return {r.id for r in self.rows if r.demo}


def names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def _floats(d, where: str) -> dict[str, float]:
    if not isinstance(d, dict):
        raise RecipeError(f"{where}: expected a table of metric = number, got {d!r}")
    out = {}
    for k, v in d.items():
        key = k.removesuffix("_std")
        if key not in KNOWN_METRICS:
            raise RecipeError(f"{where}: unknown metric {k!r}; known: {', '.join(KNOWN_METRICS)} (and <metric>_std)")
        if not isinstance(v, (int, float)):
            raise RecipeError(f"{where}: {k} = {v!r} is not a number")
        out[k] = float(v)
    return out


def load(name_or_path: str | Path) -> Recipe:
    """Read and validate one recipe (by name, e.g. ``idiap2022``, or by path)."""
    p = Path(name_or_path)
    if not p.suffix:
        p = RECIPE_DIR / f"{name_or_path}.toml"
    if not p.is_file():
        raise RecipeError(f"no recipe {name_or_path!r}; known recipes: {', '.join(names())} "
                          "(`exvo reproduce --list` describes them)")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{p}: not valid TOML: {e}") from None
    for key in ("name", "title", "paper", "metrics", "row"):
        if key not in raw:
            raise RecipeError(f"{p}: missing top-level key {key!r}")
    metrics = list(raw["metrics"])
    bad = [m for m in metrics if m not in KNOWN_METRICS]
    if bad:
        raise RecipeError(f"{p}: unknown metrics {bad}; known: {', '.join(KNOWN_METRICS)}")
    rows, seen = [], set()
    for i, r in enumerate(raw["row"]):
        where = f"{p.name} row {i + 1} ({r.get('id', '?')})"
        for key in ("id", "system", "source") + (() if r.get("extra") else ("paper",)):
            if key not in r:
                raise RecipeError(f"{where}: missing {key!r}")
        if r.get("extra") and (r.get("paper") or r.get("paper_test")):
            raise RecipeError(f"{where}: a row exvo adds (`extra`) carries no paper figures")
        if r["id"] in seen:
            raise RecipeError(f"{where}: duplicate row id {r['id']!r}")
        seen.add(r["id"])
        steps = [shlex.split(s) for s in r.get("steps", [])]
        if not steps and not r.get("unavailable"):
            raise RecipeError(f"{where}: a row needs steps, or `unavailable` saying why exvo cannot produce it")
        rows.append(Row(id=r["id"], system=r["system"], source=r["source"], paper=_floats(r.get("paper", {}), where),
                        paper_test=_floats(r.get("paper_test", {}), where), steps=steps,
                        checkpoint=r.get("checkpoint"), unavailable=r.get("unavailable"), note=r.get("note"),
                        metrics_from=r.get("metrics_from"), extra=r.get("extra"),
                        needs_gpu=bool(r.get("needs_gpu", False)), demo=bool(r.get("demo", False))))
    _check_names(p, raw["name"], [r.id for r in rows])
    return Recipe(raw["name"], raw["title"], raw["paper"], metrics, rows, list(raw.get("notes", [])), p)


def _check_names(path: Path, name: str, row_ids: list[str]) -> None:
    """The recipe's table folder ``reproduce-<name>`` and every row's run folder must be plain folder
    names under ``--runs`` (a name from a file never writes outside the folder it belongs to)."""
    for folder in [f"reproduce-{name}", *(f"reproduce-{name}-{i}" for i in row_ids)]:
        try:
            check_name(folder)
        except ValueError as e:
            raise RecipeError(f"{path}: {e}") from None

