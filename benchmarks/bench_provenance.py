"""Cost of checking provenance (``Run.stale``) for many runs, against re-hashing every file.

Builds ``--runs`` learn-run folders with ExVo-Val-sized prediction files (19,396 clips:
``val.csv``, ``per_seed/val.npz`` of 5 seeds) that share one corpus table and one cache,
plus ``--fusions`` fusion runs over 10 of them each, then times:

* ``exvo check``: a fresh :class:`exvo.runs.provenance.Checker` over every run (what
  ``exvo report`` does; nothing re-hashed whose size and mtime are unchanged);
* ``after a copy``: the same on a copy with new mtimes (plain ``cp -r``): every file is
  re-hashed, at every check (``cp -p`` / ``rsync -a`` keep mtimes and the fast path);
* ``plain``: the reference, a BLAKE2b of every file of every run (what a check that trusts
  no stat would cost).

    .venv/bin/python benchmarks/bench_provenance.py --runs 200
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def make_world(root: Path, n_runs: int, n_fusions: int, n_val: int) -> list[Path]:
    from exvo.demo import make_demo_corpus
    from exvo.extract.cache import cache_path
    from exvo.extract.cache_writer import CacheWriter
    from exvo.corpus import Corpus
    from exvo.runs import provenance as P
    from exvo.runs.store import RunWriter

    corpus = Corpus.from_dir(make_demo_corpus(root / "demo", speakers=8, clips_per_speaker=3, seed=1, progress=False))
    cpath = cache_path(root / "cache", corpus.name, "toy")
    with CacheWriter(cpath, "toy", {"toy": 1}) as w:
        for i in corpus.ids:
            w.add(i, np.zeros((1, 4), np.float32))
        w.finalize(order=corpus.ids, files=[])
    from exvo.extract.cache import EmbeddingCache

    caches = [P.cache_record("toy", cpath, EmbeddingCache(cpath).fingerprint, root / "cache")]
    rng = np.random.default_rng(0)
    ids = np.array([f"[{k:05d}]" for k in range(n_val)])
    lines = "File_ID,Country,Age," + ",".join(f"e{k}" for k in range(10)) + "\n" + "".join(
        f"{i},1,{30 + k % 9},{','.join(f'{v:.17g}' for v in rng.random(10))}\n" for k, i in enumerate(ids))
    runs_dir, out = root / "runs", []
    for k in range(n_runs):
        w = RunWriter(runs_dir, f"run{k:03d}")
        w.file("val.csv").write_text(lines)
        np.savez(w.file("per_seed/val.npz"), ids=ids, emotions=rng.random((5, n_val, 10)).astype(np.float32))
        w.json("metrics.json", {"summary": {}})
        out.append(w.commit({"kind": "learn"}, P.inputs(corpus, caches=caches)))
    for k in range(n_fusions):
        w = RunWriter(runs_dir, f"fusion{k:02d}")
        w.file("val.csv").write_text(lines)
        src = out[(10 * k) % n_runs:(10 * k) % n_runs + 10]
        out.append(w.commit({"kind": "fusion"}, P.inputs(corpus, sources=src, runs_dir=runs_dir)))
    return out


def plain(folders: list[Path]) -> None:
    import hashlib

    for f in folders:
        for p in sorted(f.rglob("*")):
            if p.is_file():
                hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()


def check(folders: list[Path]) -> int:
    from exvo.runs.provenance import Checker

    c = Checker()
    return sum(bool(c.reasons(f)) for f in folders)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--fusions", type=int, default=20)
    ap.add_argument("--val", type=int, default=19396, help="clips per prediction file (ExVo Val: 19,396)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        folders = make_world(root, a.runs, a.fusions, a.val)
        size = sum(p.stat().st_size for f in folders for p in f.rglob("*") if p.is_file())
        print(f"{len(folders)} runs ({a.runs} learn + {a.fusions} fusions of 10), {size / 1e9:.2f} GB of run files; "
              f"made in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter(); stale = check(folders); t_check = time.perf_counter() - t0
        t0 = time.perf_counter(); plain(folders); t_plain = time.perf_counter() - t0
        copy = root / "copy"
        shutil.copytree(root / "runs", copy, copy_function=shutil.copy)   # new mtimes, as plain `cp -r`
        moved = [copy / f.name for f in folders]
        t0 = time.perf_counter(); stale_copy = check(moved); t_copy = time.perf_counter() - t0
    print(f"\n| check | wall s | × plain re-hash | stale runs found |")
    print("|---|---|---|---|")
    print(f"| plain: BLAKE2b of every file | {t_plain:.3f} | 1.0× | - |")
    print(f"| Checker (report, reproduce) | {t_check:.3f} | {t_plain / t_check:.1f}× faster | {stale} |")
    print(f"| Checker after `cp -r` (new mtimes: re-hashes) | {t_copy:.3f} | {t_plain / t_copy:.1f}× | {stale_copy} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
