"""Speaker folds against one hold-out and against Val-stopping, on the demo corpus (issue: honest
selection without losing accuracy).

For each feature set and learner: ``exvo learn`` with ``--stop-on holdout`` (one speaker
hold-out), ``folds`` with ``--final ensemble`` and ``--final refit`` (5 speaker folds), and
``val`` (the papers' protocol, †), same seeds. Prints Val S_MTL mean ± std over seeds, the
seed ensemble's, the out-of-fold (OOF) estimate with its speaker-bootstrap 95 % interval, the
per-subtask Val scores and the wall time; the ratio folds / hold-out of wall time is the
vectorisation figure (seeds × folds trained at once for module learners).

    python benchmarks/bench_folds.py [--data demo_data] [--cache cache] [--features egemaps,compare,raw_exvo_er]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="demo_data")
    ap.add_argument("--cache", default="cache")
    ap.add_argument("--runs", default="/tmp/bench_folds_runs")
    ap.add_argument("--features", default="egemaps,compare,raw_exvo_er")
    ap.add_argument("--learners", default="mlp,xgb")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="0: automatic (backs off under load)")
    ap.add_argument("--markdown", action="store_true", help="end with the results as a markdown table")
    a = ap.parse_args()

    import exvo
    from exvo.demo import make_demo_corpus

    if not Path(a.data, "data_info.csv").is_file():
        make_demo_corpus(a.data, progress=False)
    corpus = exvo.Corpus.from_dir(a.data)
    print(f"# {corpus.name}: {len(corpus)} clips; machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    protocols = [("holdout", "ensemble"), ("folds", "ensemble"), ("folds", "refit"), ("val", "ensemble")]
    table = ["| features | learner | `--stop-on` | Val S_MTL | Emo-CCC | UAR | MAE | OOF S_MTL [95 % CI] | time | × hold-out |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for feat in a.features.split(","):
        t0 = time.perf_counter()
        exvo.extract(corpus, feat, cache_dir=a.cache)
        print(f"# {feat} cache ready in {time.perf_counter() - t0:.0f} s", flush=True)
        for learner in a.learners.split(","):
            base = None
            for on, final in protocols:
                t0 = time.perf_counter()
                run = exvo.learn(corpus, [feat], learner=learner, seeds=a.seeds, cache_dir=a.cache, runs_dir=a.runs,
                                 name=f"{feat}_{learner}_{on}_{final}", overwrite=True, stop_on=on, final=final,
                                 threads=a.threads, device="cpu")
                sec = time.perf_counter() - t0
                base = sec if on == "holdout" else base
                m = run.metrics
                s, e = m["summary"], m["ensemble"]
                oof = m.get("oof")
                o = (f"OOF {oof['ensemble']['s_mtl']:.3f} [{oof['ci95']['s_mtl'][0]:.3f}, {oof['ci95']['s_mtl'][1]:.3f}]"
                     if oof else "OOF -")
                print(f"{feat:12s} {learner:4s} {on:7s} {final:8s} Val S_MTL {s['s_mtl']['mean']:.3f} ± "
                      f"{s['s_mtl']['std']:.3f} (ens {e['s_mtl']:.3f}; CCC {s['ccc']['mean']:.3f} UAR "
                      f"{s['uar']['mean']:.3f} MAE {s['mae']['mean']:.2f}) {o}  {sec:6.1f} s "
                      f"({sec / base:.2f}× hold-out)", flush=True)
                proto = {"holdout": "holdout", "val": "val †"}.get(on, f"folds, {final}")
                oo = f"{oof['ensemble']['s_mtl']:.3f} [{oof['ci95']['s_mtl'][0]:.3f}, {oof['ci95']['s_mtl'][1]:.3f}]" \
                    + (" †" if oof.get("optimistic") else "") if oof else "—"
                table.append(f"| {feat} | {learner} | {proto} | {s['s_mtl']['mean']:.3f} ± {s['s_mtl']['std']:.3f} "
                             f"({e['s_mtl']:.3f}) | {s['ccc']['mean']:.3f} | {s['uar']['mean']:.3f} | "
                             f"{s['mae']['mean']:.2f} | {oo} | {sec:.1f} s | {sec / base:.2f} |")
    if a.markdown:
        print("\n".join(table))


if __name__ == "__main__":
    sys.exit(main())
