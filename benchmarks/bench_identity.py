"""Cost of the per-clip identity check (issue 10, case 5) on an ExVo-sized corpus.

Every ``exvo extract`` and ``exvo learn`` checks that each cached row was made from the
audio file now on disk: one ``stat`` per clip, plus a content digest only for files whose
size matches but whose mtime moved. This script measures, on ``--n`` files (59,201 = the
ExVo corpus) of ``--bytes`` each, in one run:

* ``plain stat loop``: ``os.stat`` of every path (the reference: the least any check costs)
* ``identity check``: :func:`exvo.extract.identity.compare` of stored identities against
  the files (what extract/learn run), all unchanged
* ``... 1 % touched``: the same with 1 % of the files given a new mtime (same bytes), so
  their digests are computed (e.g. after a copy without ``-p``)
* ``read one layer``: reading a 59,201 × 88 float32 layer (eGeMAPS) from an exvo cache,
  the smallest read a learn run does anyway
* ``digest MB/s``: BLAKE2b throughput on one 64 MiB file (what a touched file costs per MB)

and the finalize of a cache through the pre-allocated file (``_Reserved``, which makes a
full disk fail before HDF5 writes) against HDF5's own file driver, same rows.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_identity.py [--n 59201] [--bytes 4096] [--dir /tmp/x]

Times are the best of ``--repeat`` runs; the page cache is warm (as on a second run).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exvo.extract.identity import compare, content_digest, identify, stat_all  # noqa: E402


def best(fn, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=59201)
    ap.add_argument("--bytes", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--fin-rows", type=int, default=4000)
    ap.add_argument("--fin-dim", type=int, default=8192, help="finalize test: 4000 x 8192 float32 = 125 MiB")
    a = ap.parse_args()
    base = Path(a.dir or tempfile.mkdtemp(prefix="exvo_identity_"))
    wav = base / "wav"
    wav.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = [wav / f"{k:05d}.wav" for k in range(a.n)]
    t = time.perf_counter()
    for p in paths:
        if not p.exists():
            p.write_bytes(rng.bytes(a.bytes))
    print(f"{a.n} files of {a.bytes} B in {wav} (written in {time.perf_counter() - t:.1f} s)")
    stored = [identify(p) for p in paths]

    def plain():
        for p in paths:
            os.stat(p)

    t_plain = best(plain, a.repeat)
    t_check = best(lambda: compare(stored, paths), a.repeat)
    touched = paths[:: 100]
    for p in touched:
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    changed, moved = compare(stored, paths)
    assert not changed and len(moved) == len(touched)
    t_touch = best(lambda: compare(stored, paths), a.repeat)
    t_statall = best(lambda: stat_all(paths), a.repeat)

    # reading one layer of an eGeMAPS-sized cache (what learn reads anyway)
    from exvo.extract import h5io as W
    from exvo.extract.cache import EmbeddingCache
    from exvo.extract.cache_writer import CacheWriter

    ids = [f"[{k:05d}]" for k in range(a.n)]
    h5 = base / "c" / "egemaps.h5"
    shutil.rmtree(h5.parent, ignore_errors=True)
    x = rng.standard_normal((a.n, 1, 88)).astype(np.float32)
    real_reserved = W.Reserved
    with CacheWriter(h5, "egemaps", {"x": 1}, part_size=4096) as w:
        for i, e, s in zip(ids, x, stored):
            w.add(i, e, s)
        w.finalize(order=ids)
    t_layer = best(lambda: EmbeddingCache(h5).layer(0, ids=ids), a.repeat)

    # finalize throughput: reserved file (HDF5 writes through a Python file object) vs HDF5's
    # own file driver on the path (the code before), same parts, a bigger matrix
    n_f, dim_f = a.fin_rows, a.fin_dim
    xf = rng.standard_normal((n_f, 1, dim_f)).astype(np.float32)
    fids = [f"[{k:05d}]" for k in range(n_f)]

    class _Path(str):          # h5py opens it with its own driver; close() is the reserved file's API
        def __new__(cls, path, reserve):
            return str.__new__(cls, str(path))

        def close(self):
            pass

    t_fin = {}
    for label, opener in (("reserved", W.Reserved), ("hdf5 driver", _Path)):
        times = []
        for r in range(a.repeat):
            d = base / f"fin{r}"
            shutil.rmtree(d, ignore_errors=True)
            with CacheWriter(d / "m.h5", "m", {"x": 1}, part_size=256) as w:
                for i, e in zip(fids, xf):
                    w.add(i, e)
                w.flush()
                W.Reserved = opener
                try:
                    t = time.perf_counter()
                    w.finalize(order=fids)
                    times.append(time.perf_counter() - t)
                finally:
                    W.Reserved = real_reserved
            np.testing.assert_array_equal(EmbeddingCache(d / "m.h5").all_layers(), xf)
            shutil.rmtree(d, ignore_errors=True)
        t_fin[label] = min(times)

    big = base / "big.bin"
    big.write_bytes(rng.bytes(64 << 20))
    t_dig = best(lambda: content_digest(big), a.repeat)

    print(f"\n{'step':46s} {'seconds':>9s} {'× plain stat':>13s}")
    for name, v in [("plain stat loop (reference)", t_plain),
                    ("stat_all (arrays)", t_statall),
                    ("identity check, all unchanged", t_check),
                    (f"identity check, 1 % touched ({len(touched)} digests)", t_touch),
                    (f"read one layer {a.n} x 88 float32", t_layer)]:
        print(f"{name:46s} {v:9.3f} {v / t_plain:13.2f}")
    print(f"\nper clip: check {1e6 * t_check / a.n:.1f} µs; digest {64 / t_dig:.0f} MB/s "
          f"({1e3 * t_dig / (64 << 20) * (64 << 10):.2f} ms per 64 KiB clip)")
    mb = xf.nbytes / 2**20
    print(f"finalize {n_f} x {dim_f} float32 ({mb:.0f} MiB) from parts: reserved file {t_fin['reserved']:.2f} s "
          f"({mb / t_fin['reserved']:.0f} MiB/s), HDF5's own driver {t_fin['hdf5 driver']:.2f} s "
          f"({mb / t_fin['hdf5 driver']:.0f} MiB/s): ratio {t_fin['reserved'] / t_fin['hdf5 driver']:.2f}")
    if a.dir is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
