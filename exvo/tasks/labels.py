"""Reading a task's label columns from a corpus table (and, in the A-VB layout, its ``labels/*_info.csv``).

Called by :meth:`exvo.corpus.Corpus.from_dir` for every task other than ExVo-MTL (whose columns the
corpus reads itself). Cells are read by column name; problems name the file, the column and the
lines, as the corpus table's own checks do.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from exvo.tables import HIDDEN_LABELS_FILE, CorpusError, listing, read_csv_rows


def _side_tables(root: Path, main: Path) -> list[tuple[Path, list[str], dict[str, tuple[dict, int]]]]:
    """``[(path, header, {File_ID: (row, line)})]`` of every ``labels/*_info.csv`` other than ``main``."""
    folder = root / "labels"
    out = []
    if not folder.is_dir():
        return out
    for p in sorted(folder.glob("*_info.csv")):
        if p.resolve() == main.resolve() or p.name in ("data_info.csv", HIDDEN_LABELS_FILE):
            continue
        header, rows, lines, ragged = read_csv_rows(p, "a label file of the A-VB layout")
        problems = [f"wrong number of cells (the header has {len(header)}) on line(s) {listing(ragged)}"] if ragged else []
        if "File_ID" not in header:
            problems.append(f"no File_ID column (found {header}); a label file is read by column name")
        if dup := sorted({h for h in header if header.count(h) > 1}):
            problems.append(f"duplicate column name(s) {dup}")
        ids = [r.get("File_ID", "").strip() for r in rows]
        if len(set(ids)) != len(ids):
            problems.append(f"duplicate File_ID: {listing(sorted({i for i in ids if ids.count(i) > 1}))}")
        if problems:
            raise CorpusError(f"{p} has problems:\n  - " + "\n  - ".join(problems))
        out.append((p, header, {r["File_ID"].strip(): (r, ln) for r, ln in zip(rows, lines)}))
    return out


def read_task_labels(task, root: Path, path: Path, header: list[str], rows: list[dict], lines: list[int],
                     ids: list[str], labelled: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(intensities (n, k) float64, class (n,) int64, value (n,) float64)`` of ``task`` for the rows of
    the table at ``path`` (NaN / -1 where unknown; groups the task lacks: 0). Raises
    :class:`~exvo.corpus.CorpusError` naming every problem."""
    n = len(ids)
    side = None
    cells: dict[str, tuple[list[str], list[int], Path]] = {}     # column -> (cell per row, line per row, file)
    for col in [c for g in task.groups for c in g.columns]:
        if col in header:
            cells[col] = ([r[col] for r in rows], lines, path)
            continue
        side = _side_tables(root, path) if side is None else side
        for p, h, by_id in side:
            if col in h:
                got = [by_id.get(i) for i in ids]
                cells[col] = ([g[0][col] if g else "" for g in got], [g[1] if g else 0 for g in got], p)
                break
        else:
            looked = [path.name] + [p.name for p, _, _ in side]
            raise CorpusError(f"task {task.name!r} needs column {col!r}, which none of the tables has "
                              f"(looked in {', '.join(looked)} under {root}); add the column, or choose the task "
                              f"whose columns the corpus has (--task)")
    problems: list[str] = []

    def number(col: str, lo: float | None, hi: float | None) -> np.ndarray:
        vals, lns, p = cells[col]
        out = np.full(n, np.nan)
        bad, inf = [], []
        for k, c in enumerate(vals):
            c = c.strip()
            if c == "":
                continue
            try:
                out[k] = float(c)
            except ValueError:
                bad.append(lns[k])
                continue
            if math.isinf(out[k]):
                inf.append(lns[k]); out[k] = np.nan
        if bad:
            problems.append(f"{p.name}: non-numeric {col} on line(s) {listing(bad)}")
        if inf:
            problems.append(f"{p.name}: {col} is not finite on line(s) {listing(inf)}; labels must be finite numbers")
        if lo is not None:
            out_r = np.isfinite(out) & ((out < lo) | (out > hi))
            if out_r.any():
                problems.append(f"{p.name}: {col} outside [{lo:g}, {hi:g}] on line(s) "
                                f"{listing(lns[k] for k in np.flatnonzero(out_r))}")
        _missing(col, np.isnan(out), vals, lns, p)
        return out

    def _missing(col, unknown, vals, lns, p):
        miss = [k for k in np.flatnonzero(labelled & unknown) if not vals[k].strip()]
        if miss:
            where = [f"line {lns[k]}" if lns[k] else f"{ids[k]} (no row)" for k in miss]
            problems.append(f"{p.name}: missing {col} label in Train/Val at {listing(where)}")

    reg = np.zeros((n, 0))
    if g := task.group("intensities"):
        reg = np.stack([number(c, *g.range) for c in g.columns], axis=1)
    cls = np.zeros(n, dtype=np.int64)
    if g := task.group("class"):
        col = g.columns[0]
        vals, lns, p = cells[col]
        cls = np.full(n, -1, dtype=np.int64)
        unknown_cells = []
        for k, c in enumerate(vals):
            c = c.strip()
            if c == "":
                continue
            if c in g.classes:
                cls[k] = g.classes.index(c)
            elif c.isdigit() and int(c) < len(g.classes):
                cls[k] = int(c)
            else:
                unknown_cells.append(k)
        if unknown_cells:
            problems.append(f"{p.name}: {col} not one of {list(g.classes)} (or a code 0-{len(g.classes) - 1}) on "
                            f"line(s) {listing(lns[k] for k in unknown_cells)} (values "
                            f"{sorted({vals[k].strip() for k in unknown_cells})[:5]})")
        _missing(col, cls < 0, vals, lns, p)
    val = np.zeros(n)
    if g := task.group("value"):
        val = number(g.columns[0], None, None)
    if problems:
        raise CorpusError(f"the {task.name} labels of {root} have problems:\n  - " + "\n  - ".join(problems))
    return reg, cls, val
