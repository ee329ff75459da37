"""Load: memory stays flat from 2,000 to 20,000 clips (and the cache reader reads one layer).

A synthetic corpus of short clips (0.3-1.0 s of noisy tones, 16 kHz int16, written in
seconds) is extracted with ``egemaps`` (openSMILE, every core) — or with the test
extractor ``_test_rms`` when openSMILE is missing, which the output says. Each size runs
in a fresh child process so its peak memory is its own. We record:

* ``main peak``: ru_maxrss of the extracting process (RUSAGE_SELF)
* ``worker peak``: ru_maxrss of its largest worker process (RUSAGE_CHILDREN)
* ``tree peak``: the largest sum of RSS over the process and all its workers, sampled
  from /proc every 0.1 s by this parent
* the same numbers of a plain reference child that only imports and builds the
  extractor (the floor), and the ratio 20,000 / 2,000 of each peak.

Flat memory means the ratio is about 1: results stream to part files on disk; what grows
with the corpus is the id bookkeeping (about 1 KiB per clip, mostly while finalizing).

    .venv/bin/python benchmarks/bench_load.py [--sizes 2000,20000] [--extractor egemaps] [--workers 0]

Learner memory: ``--learn-rows 59000 [--learn-dim 2048]`` writes a cache of that many
random rows (59,000 x 2 x 1,024 = mean||std of a 1,024-dim model) and runs ``exvo learn``'s
code path (1 seed, 1 epoch) in a child, reporting its peak RSS above the RSS after
imports, in units of the matrix size: 1.0 means X is held once and never copied.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def make_corpus(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` clips of 0.3-1.0 s (tone + noise), a valid table (Train/Val/Test), in seconds."""
    import soundfile as sf

    from exvo.corpus import REQUIRED_COLUMNS
    from exvo.metrics import EMOTIONS

    rng = np.random.default_rng(seed)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    sr = 16000
    t = np.arange(sr) / sr
    lines = [",".join(REQUIRED_COLUMNS)]
    for k in range(n):
        dur = rng.uniform(0.3, 1.0)
        m = int(dur * sr)
        f0 = rng.uniform(120, 500)
        x = 0.3 * np.sin(2 * np.pi * f0 * t[:m]) * np.hanning(m) + 0.03 * rng.standard_normal(m)
        sf.write(str(root / "wav" / f"{k:05d}.wav"), (x * 32767).astype(np.int16), sr, subtype="PCM_16")
        split = ("Train", "Val", "Test")[k % 3]
        if split == "Test":
            lab = ["", ""] + [""] * len(EMOTIONS)
        else:
            lab = [str(k % 4), str(20 + k % 40)] + [f"{v:.3f}" for v in rng.uniform(0, 1, len(EMOTIONS))]
        lines.append(",".join([f"[{k:05d}]", split, f"Speaker_{k // 20}"] + lab))
    (root / "data_info.csv").write_text("\n".join(lines) + "\n")
    return root


# ----------------------------------------------------------------------------- child side
def child(corpus: str, cache: str, extractor: str, workers: int, reference: bool) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from exvo.corpus import Corpus
    from exvo.extract.base import ExtractOptions, get_extractor
    from exvo.extract.run import extract

    if extractor == "_test_rms":
        import fault_extractor  # noqa: F401  (registers it)
    c = Corpus.from_dir(corpus)
    opts = ExtractOptions(workers=workers)
    t0 = time.perf_counter()
    if reference:
        ex = get_extractor(extractor, opts)
        # the floor: the extractor built and one clip through it, nothing cached
        list(ex.run([(c.ids[0], c.audio_path(c.ids[0]))]))
        ex.close()
        n = 1
        failures = 0
    else:
        s = extract(c, extractor, cache, opts, progress=False)
        n = s.n_extracted
        failures = len(s.failures)
    wall = time.perf_counter() - t0
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print("RESULT " + json.dumps({"n": n, "failures": failures, "wall_s": wall,
                                  "main_peak_mib": me / 1024, "worker_peak_mib": kids / 1024}), flush=True)


# ----------------------------------------------------------------------------- learner memory
def _vm(key: str) -> int:
    """VmRSS / VmHWM of this process, kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def make_learn_inputs(work: Path, n: int, dim: int, seed: int = 0) -> tuple[Path, Path]:
    """A table of ``n`` labelled rows (50/25/25 % Train/Val/Test) and a cache ``_memtest.h5``
    of ``(n, 1, dim)`` float32 in the contract's layout (no audio: learning never reads it)."""
    import h5py

    from exvo.corpus import REQUIRED_COLUMNS
    from exvo.extract.cache import FORMAT, TARGET_CHUNK_BYTES, cache_path, ids_digest
    from exvo.metrics import EMOTIONS

    rng = np.random.default_rng(seed)
    root = work / "learncorpus"
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"[{k:05d}]" for k in range(n)]
    lines = [",".join(REQUIRED_COLUMNS)]
    emo = rng.uniform(0, 1, (n, len(EMOTIONS)))
    for k, i in enumerate(ids):
        split = "Train" if k % 4 < 2 else ("Val" if k % 4 == 2 else "Test")
        lab = ["", ""] + [""] * len(EMOTIONS) if split == "Test" else \
            [str(k % 4), str(20 + k % 40)] + [f"{v:.3f}" for v in emo[k]]
        lines.append(",".join([i, split, f"Speaker_{k // 30}"] + lab))
    (root / "data_info.csv").write_text("\n".join(lines) + "\n")
    cache = work / "learncache"
    path = cache_path(cache, root.name, "_memtest")
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = max(1, TARGET_CHUNK_BYTES // (dim * 4))
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        d = f.create_dataset("features", shape=(n, 1, dim), dtype=np.float32, chunks=(rows, 1, dim), fletcher32=True)
        for s in range(0, n, 4096):
            m = min(4096, n - s)
            d[s:s + m] = rng.standard_normal((m, 1, dim), dtype=np.float32)
        f.attrs.update({"format": FORMAT, "extractor": "_memtest", "config": "{}", "fingerprint": "-",
                        "ids_sha256": ids_digest(ids)})
    return root, cache


def learn_child(corpus: str, cache: str, runs: str) -> None:
    import torch

    from exvo.corpus import Corpus
    from exvo.config import build
    from exvo.learn.api import learn
    from exvo.learn.config import LearnConfig

    torch.set_num_threads(1)
    c = Corpus.from_dir(corpus)
    base = _vm("VmRSS")
    t0 = time.perf_counter()
    learn(c, build(LearnConfig, features=["_memtest"], seeds=1, epochs=1, patience=1, device="cpu"),
          cache_dir=cache, runs_dir=runs, echo=lambda m: None)
    print("RESULT " + json.dumps({"base_mib": base / 1024, "peak_mib": _vm("VmHWM") / 1024,
                                  "wall_s": time.perf_counter() - t0}), flush=True)


def learn_memory(work: Path, n: int, dim: int) -> None:
    root, cache = make_learn_inputs(work, n, dim)
    x_mib = n * dim * 4 / 2 ** 20
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, __file__, "--learn-child", str(root), str(cache), str(work / "runs")],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"learn child failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.split("RESULT ", 1)[1])
    extra = r["peak_mib"] - r["base_mib"]
    print(f"learner on X = {n} x {dim} float32 ({x_mib:.0f} MiB): RSS after imports {r['base_mib']:.0f} MiB, "
          f"peak {r['peak_mib']:.0f} MiB, so learning added {extra:.0f} MiB = {extra / x_mib:.2f} x X "
          f"(1 seed, 1 epoch, {r['wall_s']:.0f} s). A single copy of X is 1.00 x; each extra copy adds 1.")


# ----------------------------------------------------------------------------- parent side
def _tree_rss_kib(pid: int) -> int:
    """Sum of VmRSS over ``pid`` and its descendants (kB)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        stack.extend(kids.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def measure(corpus: Path, cache: Path, extractor: str, workers: int, reference: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", str(corpus), str(cache), "--extractor", extractor,
           "--workers", str(workers)] + (["--reference"] if reference else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak, samples = 0, []
    while p.poll() is None:
        r = _tree_rss_kib(p.pid)
        peak = max(peak, r)
        samples.append(r)
        time.sleep(0.1)
    out, err = p.communicate()
    if p.returncode != 0:
        raise SystemExit(f"child failed ({p.returncode}):\n{err[-3000:]}")
    res = json.loads(out.split("RESULT ", 1)[1])
    res["tree_peak_mib"] = peak / 1024
    # second half of the run vs first half: growth within a run
    if len(samples) >= 10:
        h = len(samples) // 2
        res["tree_first_half_max_mib"] = max(samples[:h]) / 1024
        res["tree_second_half_max_mib"] = max(samples[h:]) / 1024
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2000,20000")
    ap.add_argument("--extractor", default=None, help="default: egemaps if registered, else _test_rms")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--dir", default=None, help="work folder (default: a temp folder, removed)")
    ap.add_argument("--child", nargs=2, metavar=("CORPUS", "CACHE"))
    ap.add_argument("--reference", action="store_true")
    ap.add_argument("--learn-rows", type=int, default=0,
                    help="instead: measure the learner's memory on an N x --learn-dim float32 matrix (e.g. 59000)")
    ap.add_argument("--learn-dim", type=int, default=2048)
    ap.add_argument("--learn-child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.child[1], a.extractor, a.workers, a.reference)
        return
    if a.learn_child:
        learn_child(*a.learn_child)
        return
    if a.learn_rows:
        work = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="exvo_learnmem_"))
        try:
            learn_memory(work, a.learn_rows, a.learn_dim)
        finally:
            if not a.dir:
                import shutil

                shutil.rmtree(work, ignore_errors=True)
        return

    from exvo.extract.base import names

    extractor = a.extractor or ("egemaps" if "egemaps" in names() else "_test_rms")
    if extractor == "_test_rms":
        print("NOTE: egemaps is not available; using the test extractor _test_rms (RMS/ZCR, not openSMILE)")
    sizes = [int(s) for s in a.sizes.split(",")]
    work = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="exvo_load_"))
    print(f"extractor {extractor}, workers {a.workers or os.cpu_count()}, cpus {os.cpu_count()}, work dir {work}")
    t0 = time.perf_counter()
    big = make_corpus(work / f"corpus{max(sizes)}", max(sizes))
    print(f"wrote {max(sizes)} clips in {time.perf_counter() - t0:.1f} s")
    rows = []
    ref = measure(big, work / "cache_ref", extractor, a.workers, reference=True)
    rows.append(("reference (setup + 1 clip)", ref))
    for n in sizes:
        corpus = big
        if n != max(sizes):  # a corpus of the first n clips (same files, linked)
            corpus = work / f"corpus{n}"
            (corpus / "wav").mkdir(parents=True, exist_ok=True)
            lines = (big / "data_info.csv").read_text().splitlines()[: n + 1]
            (corpus / "data_info.csv").write_text("\n".join(lines) + "\n")
            for k in range(n):
                dst = corpus / "wav" / f"{k:05d}.wav"
                if not dst.exists():
                    os.link(big / "wav" / f"{k:05d}.wav", dst)
        res = measure(corpus, work / f"cache{n}", extractor, a.workers)
        size = sum(f.stat().st_size for f in (work / f"cache{n}").rglob("*.h5"))
        res["cache_mib"] = size / 2 ** 20
        rows.append((f"{n} clips", res))
        print(f"{n} clips: {res['n']} extracted, {res['failures']} failed, {res['wall_s']:.1f} s "
              f"({res['n'] / res['wall_s']:.1f} clips/s)", flush=True)

    print()
    print("| run | clips/s | main peak MiB | worker peak MiB | tree peak MiB | cache MiB |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        rate = f"{r['n'] / r['wall_s']:.1f}" if r["n"] > 1 else "-"
        print(f"| {name} | {rate} | {r['main_peak_mib']:.0f} | {r['worker_peak_mib']:.0f} | "
              f"{r['tree_peak_mib']:.0f} | {r.get('cache_mib', 0):.2f} |")
    if len(sizes) >= 2:
        lo, hi = rows[1][1], rows[-1][1]
        for key in ("main_peak_mib", "worker_peak_mib", "tree_peak_mib"):
            print(f"ratio {sizes[-1]}/{sizes[0]} {key}: {hi[key] / lo[key]:.2f}")
        for name, r in rows[1:]:
            if "tree_first_half_max_mib" in r:
                print(f"{name}: tree RSS max first half {r['tree_first_half_max_mib']:.0f} MiB, "
                      f"second half {r['tree_second_half_max_mib']:.0f} MiB")
    if not a.dir:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
