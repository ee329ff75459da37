"""Reading a task's label columns from a corpus table (and, in the A-VB layout, its ``labels/*_info.csv``).

Called by :meth:`exvo.corpus.Corpus.from_dir` for every task other than ExVo-MTL (whose columns the
corpus reads itself). Cells are read by column name; problems name the file, the column and the
lines, as the corpus table's own checks do.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from exvo.tables import HIDDEN_LABELS_FILE, CorpusError, listing, read_csv_rows, repeated


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
            problems.append(f"duplicate File_ID: {listing(repeated(ids))}")
        if problems:
            raise CorpusError(f"{p} has problems:\n  - " + "\n  - ".join(problems))
        out.append((p, header, {r["File_ID"].strip(): (r, ln) for r, ln in zip(rows, lines)}))
    return out


Cells = tuple[list[str], list[int], Path]
"""One column's cells per corpus row, the CSV line of each (0: the file has no row for it), its file."""


def _find_columns(task, root: Path, path: Path, header: list[str], rows: list[dict], lines: list[int],
                  ids: list[str]) -> dict[str, Cells]:
    """Every column of ``task``: from the main table when it has it, else from a ``labels/*_info.csv``
    (joined on File_ID); a column no table has is a :class:`CorpusError` naming where it looked."""
    side = None
    cells: dict[str, Cells] = {}
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
    return cells


def _missing(col: str, cells: Cells, unknown: np.ndarray, labelled: np.ndarray, ids: list[str],
             problems: list[str]) -> None:
    vals, lns, p = cells
    miss = [k for k in np.flatnonzero(labelled & unknown) if not vals[k].strip()]
    if miss:
        where = [f"line {lns[k]}" if lns[k] else f"{ids[k]} (no row)" for k in miss]
        problems.append(f"{p.name}: missing {col} label in Train/Val at {listing(where)}")


def _numbers(col: str, cells: Cells, rng: tuple[float, float] | None, problems: list[str]) -> np.ndarray:
    """``(n,)`` floats of a column (NaN where empty or bad); non-numeric, infinite and out-of-range
    cells are appended to ``problems`` with their lines."""
    vals, lns, p = cells
    out = np.full(len(vals), np.nan)
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
            inf.append(lns[k])
            out[k] = np.nan
    if bad:
        problems.append(f"{p.name}: non-numeric {col} on line(s) {listing(bad)}")
    if inf:
        problems.append(f"{p.name}: {col} is not finite on line(s) {listing(inf)}; labels must be finite numbers")
    if rng is not None:
        lo, hi = rng
        out_r = np.isfinite(out) & ((out < lo) | (out > hi))
        if out_r.any():
            problems.append(f"{p.name}: {col} outside [{lo:g}, {hi:g}] on line(s) "
                            f"{listing(lns[k] for k in np.flatnonzero(out_r))}")
    return out


def _classes(col: str, cells: Cells, classes: tuple[str, ...], problems: list[str]) -> np.ndarray:
    """``(n,)`` class codes of a column of class names or codes (-1 where empty or unknown)."""
    vals, lns, p = cells
    cls = np.full(len(vals), -1, dtype=np.int64)
    unknown = []
    for k, c in enumerate(vals):
        c = c.strip()
        if c == "":
            continue
        if c in classes:
            cls[k] = classes.index(c)
        elif c.isdigit() and int(c) < len(classes):
            cls[k] = int(c)
        else:
            unknown.append(k)
    if unknown:
        problems.append(f"{p.name}: {col} not one of {list(classes)} (or a code 0-{len(classes) - 1}) on "
                        f"line(s) {listing(lns[k] for k in unknown)} (values "
                        f"{sorted({vals[k].strip() for k in unknown})[:5]})")
    return cls


def read_task_labels(task, root: Path, path: Path, header: list[str], rows: list[dict], lines: list[int],
                     ids: list[str], labelled: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(intensities (n, k) float64, class (n,) int64, value (n,) float64)`` of ``task`` for the rows of
    the table at ``path`` (NaN / -1 where unknown; groups the task lacks: 0). Raises
    :class:`~exvo.corpus.CorpusError` naming every problem (file, column, lines)."""
    n = len(ids)
    cells = _find_columns(task, root, path, header, rows, lines, ids)
    problems: list[str] = []
    reg, cls, val = np.zeros((n, 0)), np.zeros(n, dtype=np.int64), np.zeros(n)
    if g := task.group("intensities"):
        cols = [_numbers(c, cells[c], g.range, problems) for c in g.columns]
        for c, v in zip(g.columns, cols):
            _missing(c, cells[c], np.isnan(v), labelled, ids, problems)
        reg = np.stack(cols, axis=1)
    if g := task.group("class"):
        c = g.columns[0]
        cls = _classes(c, cells[c], g.classes, problems)
        _missing(c, cells[c], cls < 0, labelled, ids, problems)
    if g := task.group("value"):
        c = g.columns[0]
        val = _numbers(c, cells[c], None, problems)
        _missing(c, cells[c], np.isnan(val), labelled, ids, problems)
    if problems:
        raise CorpusError(f"the {task.name} labels of {root} have problems:\n  - " + "\n  - ".join(problems))
    return reg, cls, val
