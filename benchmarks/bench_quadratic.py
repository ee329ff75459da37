"""Benchmark: the id and speaker loops that were quadratic in the corpus size (issue 28), old form vs new.

At ExVo's Val size (``--n`` 19,396 clips, ``--speakers`` 568). Each row times the old
expression (written out here as it was) and the function that replaced it, on the same
input in the same run; the old form is timed on the first ``--prefix`` ids and scaled to
``--n`` (its cost per id grows with n, so the scaled figure is a lower bound).

    .venv/bin/python benchmarks/bench_quadratic.py
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from exvo.tables import repeated
from exvo.splits import speaker_countries, speaker_rows


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=19_396)
    ap.add_argument("--speakers", type=int, default=568)
    ap.add_argument("--prefix", type=int, default=1000)
    a = ap.parse_args(argv)
    n, p = a.n, min(a.prefix, a.n)
    ids = [f"[{k:05d}]" for k in range(n)]
    dup = ids + [ids[7]]
    spk = np.array([f"Speaker_{k}" for k in np.random.default_rng(0).integers(0, a.speakers, n)])
    country = np.random.default_rng(1).integers(0, 4, n)
    scale = n / p
    rows = [
        ("few-shot scoring: ids not among the queries (set built per id)",
         timed(lambda: [i for i in ids[:p] if i not in set(ids)]) * scale,
         timed(lambda: (lambda w: [i for i in ids if i not in w])(set(ids)))),
        ("duplicate File_IDs named (list.count per id)",
         timed(lambda: {i for i in dup[:p] if dup.count(i) > 1}) * scale, timed(lambda: repeated(dup))),
        ("fuse --pool: one run's rows aligned (index dict built per id)",
         timed(lambda: [{c: k for k, c in enumerate(ids)}[c] for c in ids[:max(1, p // 10)]]) * n / max(1, p // 10),
         timed(lambda: (lambda w: [w[c] for c in ids])({c: k for k, c in enumerate(ids)}))),
        ("`@best` layer probe: corpus ids in the cache (a set built per id)",
         timed(lambda: [i for i in ids[:p] if i in set(ids)]) * scale,
         timed(lambda: (lambda c: [i for i in ids if i in c])(set(ids)))),
        ("speakers' countries (a mask per speaker)",
         timed(lambda: [country[spk == s] for s in np.unique(spk)]), timed(lambda: speaker_countries(spk, country))),
        ("bootstrap speaker groups (a mask per speaker)",
         timed(lambda: (lambda u: [np.flatnonzero(u[1] == i) for i in range(u[0].size)])(
             np.unique(spk, return_inverse=True))), timed(lambda: speaker_rows(spk))),
    ]
    print(f"n = {n:,} ids, {a.speakers} speakers; old forms of the first four timed on a prefix and scaled")
    print("| loop | old s | new s | × |")
    print("|---|---|---|---|")
    for name, old, new in rows:
        print(f"| {name} | {old:.3f} | {new:.4f} | {old / max(new, 1e-6):,.0f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
