"""The Train-vs-Val FID table (paper 002, Table 3, upper part): files, heat map, report hook.

``write_table(table, out_dir, tag)`` writes three files named ``train_vs_val_<tag>``:

* ``.csv``  the matrix as in the paper: first column ``Train \\ Val`` (the Train bin of each
  emotion, official order), then one column per Val bin; cells are the FID (mean over seeds
  for a classifier run), empty where a bin has fewer than 2 clips; a last column ``n_train``
  and a last row ``n_val`` give the bin sizes
* ``.json`` the same and more: ``{"format": "exvo-fid-table/1", "emotions": [...],
  "fid_mean": 10×10, "fid_std": 10×10 (over seeds, ddof 0), "views": S, "n_train": {e: n},
  "n_val": {e: n}, "space": str, "bin_rule": str, "dim": int, "notes": [...]}`` (NaN → null)
* ``.png``  the heat map (rows Train, columns Val, diagonal outlined)

``exvo report`` redraws every ``<runs>/fid/train_vs_val_*.json`` into its own folder via
:func:`report_figures` (the only hook in :mod:`exvo.fusion.report`).
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from exvo.metrics import EMOTIONS

FORMAT = "exvo-fid-table/1"
PREFIX = "train_vs_val_"
DEFAULT_SUBDIR = "fid"
"""``exvo fid --table`` writes to ``<runs>/fid/`` unless ``--out`` says otherwise."""


def safe_tag(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@+-]", "-", str(text)).strip("-") or "fid"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _num(x: float) -> float | None:
    return None if not math.isfinite(float(x)) else float(x)


def table_record(table) -> dict:
    """The JSON record of an :class:`exvo.generate.api.FIDTable`."""
    return {"format": FORMAT, "emotions": list(EMOTIONS),
            "fid_mean": [[_num(v) for v in row] for row in table.mean],
            "fid_std": [[_num(v) for v in row] for row in table.std],
            "views": table.views, "n_train": table.n_train, "n_val": table.n_val,
            "space": table.space, "bin_rule": table.bin_rule, "dim": table.dim, "notes": table.notes}


def write_table(table, out_dir: str | Path, tag: str) -> dict[str, Path]:
    """Write ``train_vs_val_<tag>.csv/.json/.png`` into ``out_dir``; returns the paths by suffix."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"{PREFIX}{safe_tag(tag)}"
    rec = table_record(table)
    _atomic_write(base.with_suffix(".json"), json.dumps(rec, indent=1))
    rows = [["Train \\ Val", *EMOTIONS, "n_train"]]
    for i, e in enumerate(EMOTIONS):
        rows.append([e, *("" if v is None else f"{v:.6g}" for v in rec["fid_mean"][i]), table.n_train[e]])
    rows.append(["n_val", *(table.n_val[e] for e in EMOTIONS), ""])
    tmp = base.with_name(f".{base.name}.csv.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    os.replace(tmp, base.with_suffix(".csv"))
    png = heat_map(rec, base.with_suffix(".png"))
    return {"csv": base.with_suffix(".csv"), "json": base.with_suffix(".json"), "png": png}


def small_sample_caveat(rec: dict) -> str | None:
    """The warning a table with bins smaller than the embedding dimension needs (None: every bin is
    large enough): such a bin's covariance is singular and its FID biased upwards."""
    dim = rec.get("dim")
    if not isinstance(dim, int) or dim <= 0:
        return None
    sizes = [(side, e, int(n)) for side in ("n_train", "n_val") for e, n in (rec.get(side) or {}).items()
             if isinstance(n, (int, float)) and n >= 2]
    small = [n for _, _, n in sizes if n < dim]
    if not small:
        return None
    return (f"Small samples: {len(small)} of {len(sizes)} bins hold fewer clips ({min(small)}–{max(small)}) than the "
            f"{dim} embedding dimensions, so their covariance is singular and their FID is biased upwards (it "
            "falls as clips are added); compare cells of similar bin sizes only, not against the paper's FIDs")


def heat_map(rec: dict, path: Path) -> Path:
    """Heat map of a table record (rows Train bins, columns Val bins, diagonal outlined)."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from exvo.fusion.plots import fit_title, set_title

    M = np.array([[np.nan if v is None else v for v in row] for row in rec["fid_mean"]], dtype=float)
    emos = rec["emotions"]
    k = len(emos)
    fig = Figure(figsize=(9.5, 8), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(M), cmap=cmap)
    fig.colorbar(im, ax=ax, shrink=0.8, label="FID")
    finite = M[np.isfinite(M)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(k):
        for j in range(k):
            if np.isfinite(M[i, j]):
                ax.text(j, i, f"{M[i, j]:.3g}", ha="center", va="center", fontsize=8,
                        color="white" if M[i, j] < mid else "black", weight="bold" if i == j else "normal")
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
    ax.set_xticks(range(k), [f"{e} ({rec['n_val'].get(e, 0)})" for e in emos], rotation=40, ha="right")
    ax.set_yticks(range(k), [f"{e} ({rec['n_train'].get(e, 0)})" for e in emos])
    ax.set_xlabel("Val bin (clips)")
    ax.set_ylabel("Train bin (clips)")
    seeds = f", mean over {rec['views']} seeds" if rec.get("views", 1) > 1 else ""
    set_title(fig, ax, f"FID between emotion bins, Train vs Val (bin: {rec['bin_rule']}{seeds})\n{rec['space']}")
    caveat = small_sample_caveat(rec)
    if caveat:
        fig.supxlabel(fit_title(caveat, fig.get_figwidth() * 0.9, 9), fontsize=9, color="#a00000")
    fig.savefig(path)
    return path


def report_figures(runs_dir: str | Path, out_dir: str | Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """For ``exvo report``: redraw each ``<runs>/fid/train_vs_val_*.json`` into ``out_dir``.

    Returns ``([(title, png path)], notes)``; nothing (and no note) when there is no table.
    """
    src = Path(runs_dir) / DEFAULT_SUBDIR
    made, notes = [], []
    for p in sorted(src.glob(f"{PREFIX}*.json")) if src.is_dir() else []:
        try:
            rec = json.loads(p.read_text())
            if rec.get("format") != FORMAT:
                raise ValueError(f"format {rec.get('format')!r}")
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            png = heat_map(rec, Path(out_dir) / f"{p.stem}.png")
        except (OSError, ValueError, KeyError, TypeError) as e:
            notes.append(f"{p.name} skipped: not a readable FID table ({e}); rebuild it with `exvo fid --table`")
            continue
        made.append((f"FID between emotion bins, Train vs Val ({rec['space']})", png))
        if caveat := small_sample_caveat(rec):
            notes.append(f"{p.stem}: {caveat}")
    return made, notes


def report_section(rows, out_dir: Path, corpus, runs_dir: Path):
    """``exvo report``'s ExVo-Generate section: the Train-vs-Val FID heat maps, or None without tables."""
    from exvo.fusion.report import Section

    made, notes = report_figures(runs_dir, out_dir)
    if not made and not notes:
        return None
    return Section("ExVo-Generate: FID between emotion bins", "Tables made by `exvo fid --table`; the diagonal is "
                   "the lower bound a generator can reach (the paper's Table 3).", made, notes)
