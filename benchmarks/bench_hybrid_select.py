"""Hybrid fusion chosen on Val, on halves of Val, or on out-of-fold Train predictions (issue 32.3).

``exvo fuse --hybrid`` picks one source run per subtask. ``--select-on val`` picks on all of
Val and reports that same Val (optimistic, †); ``cv`` picks on one half of the Val speakers and
scores the other (and swaps); ``oof`` picks on the sources' out-of-fold Train predictions (from
``exvo learn --stop-on folds``), so Val is never used to choose. On the demo corpus the hidden
Test labels give a score that no protocol has seen: the fair comparison of the three.

Prints, per protocol: the source chosen per subtask (on all of Val for cv's written predictions),
the fusion's own Val figure of its seed ensemble (cv: out of fold over the Val halves; val:
optimistic †) and the Test CCC / UAR / MAE / S_MTL of its test.csv.

    python benchmarks/bench_hybrid_select.py --data DEMO --cache CACHE --runs RUNS [--sources a,b,c]

``--sources`` defaults to every learn run in ``--runs`` with out-of-fold predictions (e.g. the
``*_folds_ensemble`` runs of ``benchmarks/bench_folds.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="demo_data")
    ap.add_argument("--cache", default="cache")
    ap.add_argument("--runs", default="/tmp/bench_folds_runs")
    ap.add_argument("--sources", default="", help="comma-separated run names (default: every run with OOF)")
    a = ap.parse_args()

    import exvo
    from exvo.predictions import score

    corpus = exvo.Corpus.from_dir(a.data)
    runs = Path(a.runs)
    names = [s for s in a.sources.split(",") if s] or sorted(
        p.name for p in runs.iterdir() if (p / "oof.csv").is_file() and (p / "config.json").is_file())
    print(f"# {corpus.name}: {len(corpus)} clips; sources {names}; machine: {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}")
    for n in names:
        r = exvo.load_run(runs / n)
        t = score(r.predictions("Test"), corpus, "Test")
        print(f"  source {n:36s} Val S_MTL {r.metrics['ensemble']['s_mtl']:.3f}  Test S_MTL {t['s_mtl']:.3f}")
    table = ["| `--select-on` | Val CCC | Val UAR | Val MAE | Val S_MTL | Test CCC | Test UAR | Test MAE | Test S_MTL | "
             "chosen |", "|---|---|---|---|---|---|---|---|---|---|"]
    for on in ("val", "cv", "oof"):
        t0 = time.perf_counter()
        fused = exvo.fuse(corpus, runs=[runs / n for n in names], runs_dir=runs, mode="hybrid", select_on=on,
                          name=f"bench_hybrid_{on}")
        sec = time.perf_counter() - t0
        record = json.loads((fused.path / "fusion.json").read_text())
        chosen = {t: v.get("chosen") for t, v in record.get("subtasks", record).items() if isinstance(v, dict)}
        v = fused.metrics["ensemble"]     # the run's own Val figure: for cv, out of fold over the Val halves
        t = score(fused.predictions("Test"), corpus, "Test")
        mark = " †" if on == "val" else ""
        table.append(f"| {on}{mark} | {v['ccc']:.3f} | {v['uar']:.3f} | {v['mae']:.2f} | {v['s_mtl']:.3f} | "
                     f"{t['ccc']:.3f} | {t['uar']:.3f} | {t['mae']:.2f} | {t['s_mtl']:.3f} | "
                     + "; ".join(f"{k}: {', '.join(c or [])}" for k, c in chosen.items()) + " |")
        print(f"{on:4s} Val  CCC {v['ccc']:.3f} UAR {v['uar']:.3f} MAE {v['mae']:.2f} S_MTL {v['s_mtl']:.3f}{mark}"
              f" | Test CCC {t['ccc']:.3f} UAR {t['uar']:.3f} MAE {t['mae']:.2f} S_MTL {t['s_mtl']:.3f}"
              f"  [{sec:.1f} s]  chose {json.dumps(chosen)}", flush=True)
    print("\n".join(table))


if __name__ == "__main__":
    sys.exit(main())
