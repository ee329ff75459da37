"""Write the README's demo figures from one `exvo demo` run, so they cannot drift from what it prints.

    python scripts/demo_figures.py RUNS_DIR [--readme README.md] [--print]

Reads ``RUNS_DIR/report/demo_timings.json`` (written by ``exvo demo``: stage seconds, the 1-minute
load average at each stage end, cores, machine) and every ``RUNS_DIR/reproduce-*-reduced/table.csv``
(the paper-vs-ours tables of the demo rows), and replaces what lies between the markers
``<!-- demo:timings -->`` … ``<!-- /demo:timings -->`` and ``<!-- demo:papers -->`` … ``<!-- /demo:papers -->``
in the README. ``--print`` shows the blocks instead of writing.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

STAGES = ("corpus", "extract", "learn", "fuse", "papers", "generate", "report")
HEADLINE = ["S_MTL", "Emo-CCC", "UAR"]


def timings_block(t: dict) -> str:
    """One sentence: the demo's wall time, its stages and the load they ran under."""
    sec = t["seconds"]
    over = t.get("load_1min_over_run")
    loads = [v for k, v in t["load_1min_at_stage_end"].items() if isinstance(v, (int, float)) and v == v]
    stages = ", ".join(f"{k} {sec[k] / 60:.1f}" for k in STAGES if k in sec)
    if over:
        load = f"1-minute load average of {over['min']:.1f}–{over['max']:.1f}, mean {over['mean']:.1f},"
    else:
        load = f"1-minute load average of {min(loads):.1f}–{max(loads):.1f}," if loads else "load not recorded,"
    return (f"A fresh `make demo` took {t['total_seconds'] / 60:.1f} minutes on {t['cores']} cores at a {load} "
            f"with other jobs running, {t.get('seeds', 3)} seeds per run; its stages, in minutes: {stages} "
            "(`exvo demo` prints each stage's time and load; `runs/report/demo_timings.json` keeps them; these "
            "figures are written by `scripts/demo_figures.py`).")


def _table_rows(path: Path) -> tuple[str, list[dict]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    title = path.with_suffix(".md").read_text().splitlines()[0].lstrip("# ").split(" (paper")[0]
    return title, rows


def papers_block(runs: Path, seeds: int) -> str:
    """The reduced tables' rows as one markdown table: the paper's figure and ours for the last metric."""
    out = ["| recipe, row | paper (its corpus) | ours (demo corpus, mean ± std over "
           f"{seeds} seeds) | rank in its table: paper / ours |", "|---|---|---|---|"]
    for path in sorted(runs.glob("reproduce-*-reduced/table.csv")):
        recipe = path.parent.name.removeprefix("reproduce-").removesuffix("-reduced")
        _, rows = _table_rows(path)
        head = list(rows[0]) if rows else []
        ours = [h for h in head if h.startswith("ours ") and not h.startswith("ours ens.") and "rank" not in h]
        if not ours:
            continue
        # the headline metric: S_MTL (multitask), CCC (few-shot), UAR (enrol-verify, the paper's first column)
        metric = next(m for m in HEADLINE + [ours[-1].removeprefix("ours ")] if f"ours {m}" in ours)
        ranks = [h for h in head if "rank" in h and h.endswith(f"({metric})")]
        for r in rows:
            theirs = r.get(f"paper {metric}", "") or (f"Test {r[f'paper Test {metric}']}"
                                                      if r.get(f"paper Test {metric}") else "")
            rank = " / ".join(r[h] for h in ranks) if ranks and all(r[h] for h in ranks) else "–"
            system = r["system"].split(" [not in the paper")[0]
            if r["row"] == "trivial":
                system = system.split(":")[0]
            out.append(f"| {recipe} {r['row']}: {system} | {f'{metric} {theirs}' if theirs else '–'} | "
                       f"{r[f'ours {metric}'] or r['status']} | {rank} |")
    return "\n".join(out)


def replace_block(text: str, name: str, body: str) -> str:
    pat = re.compile(rf"(<!-- demo:{name} -->\n).*?(\n<!-- /demo:{name} -->)", re.S)
    if not pat.search(text):
        raise SystemExit(f"the README has no <!-- demo:{name} --> … <!-- /demo:{name} --> block")
    return pat.sub(lambda m: m.group(1) + body + m.group(2), text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, help="the --runs folder of one `exvo demo`")
    ap.add_argument("--readme", type=Path, default=Path(__file__).resolve().parents[1] / "README.md")
    ap.add_argument("--print", action="store_true", help="print the blocks, do not write the README")
    a = ap.parse_args(argv)
    timing_file = a.runs / "report" / "demo_timings.json"
    if not timing_file.is_file():
        raise SystemExit(f"{timing_file} is missing: run `exvo demo --runs {a.runs}` first")
    t = json.loads(timing_file.read_text())
    blocks = {"timings": timings_block(t), "papers": papers_block(a.runs, t.get("seeds", 3))}
    if a.print:
        print("\n\n".join(blocks.values()))
        return 0
    text = a.readme.read_text()
    for name, body in blocks.items():
        text = replace_block(text, name, body)
    a.readme.write_text(text)
    print(f"wrote the demo figures of {a.runs} into {a.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
