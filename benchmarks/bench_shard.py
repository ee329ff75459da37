"""Sharded extraction (issue 16): 2 torchrun ranks against 1 process, same corpus, same run.

Three settings of the full command line (start-up, model load, extraction, merge), each
a fresh cache, repeated in alternating rounds (the CPU may be shared: ratios are only
taken between numbers of this run, best of the rounds):

* ``1p x 1t``  ``exvo extract`` in one process, 1 torch thread (the plain reference)
* ``1p x 2t``  one process, 2 torch threads (the same cores used the usual way)
* ``2r x 1t``  ``torchrun --standalone --nproc-per-node 2``: 2 ranks of 1 thread each,
               each extracting its length-balanced shard; the last rank merges

The model is a small random WavLM (hidden 256, 4 layers: seconds, not minutes, on CPU).
Also measured: the cost of the shard assignment (header reads) per clip, and the merge
(= a single-process finalize) throughput in MB/s, to extrapolate to 59,201 clips.

    .venv/bin/python benchmarks/bench_shard.py [--clips 48] [--rounds 2]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_ARRAY_TASK_ID"):
        env.pop(k, None)
    return env


def _run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    from exvo.corpus import Corpus
    from exvo.demo import make_demo_corpus
    from exvo.extract.cache import EmbeddingCache, cache_path
    from exvo.extract.shard import clip_seconds

    root = Path(tempfile.mkdtemp(prefix="bench_shard_"))
    try:
        corpus = Corpus.from_dir(make_demo_corpus(root / "corpus", speakers=8, clips_per_speaker=max(1, args.clips // 8),
                                                  seed=0, progress=False))
        torch.manual_seed(0)
        ckpt = root / "wavlm_small"
        WavLMModel(WavLMConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                               intermediate_size=1024)).save_pretrained(ckpt)
        Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(ckpt)
        paths = [corpus.audio_path(i) for i in corpus.ids]
        secs = clip_seconds(paths)
        t0 = time.perf_counter()
        for _ in range(5):
            clip_seconds(paths)
        hdr_ms = (time.perf_counter() - t0) / 5 / len(paths) * 1e3
        print(f"corpus: {len(paths)} clips, {secs.sum():.1f} s of audio; shard assignment reads headers at "
              f"{hdr_ms:.3f} ms/clip (59,201 clips: {hdr_ms * 59.201:.1f} s per rank)")

        exvo = [sys.executable, "-m", "exvo.cli", "extract", "--model", "wavlm", "--checkpoint", str(ckpt),
                "--device", "cpu", "--workers", "1", "--data", str(corpus.root)]
        torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "2",
                    "-m", "exvo.cli", "extract", "--model", "wavlm", "--checkpoint", str(ckpt),
                    "--device", "cpu", "--workers", "1", "--data", str(corpus.root)]
        settings = {"1p x 1t": (exvo, 1), "1p x 2t": (exvo, 2), "2r x 1t": (torchrun, 1)}
        times: dict[str, list[float]] = {k: [] for k in settings}
        ref = None
        for r in range(args.rounds):
            order = list(settings) if r % 2 == 0 else list(settings)[::-1]
            for k in order:
                cmd, th = settings[k]
                cache = root / f"cache_{k.replace(' ', '')}_{r}"
                times[k].append(_run(cmd + ["--cache", str(cache)], _env(th)))
                c = EmbeddingCache(cache_path(cache, corpus.name, "wavlm"))
                x = c.all_layers()
                if ref is None:
                    ref = (c.ids, x)
                assert c.ids == ref[0], "sharded and single-process caches differ in ids"
                err = float(np.abs(x - ref[1]).max())
                shutil.rmtree(cache)
                print(f"  round {r} {k}: {times[k][-1]:.2f} s  (max |diff| vs first run {err:.2e})", flush=True)
        best = {k: min(v) for k, v in times.items()}
        print("\nbest of rounds (whole command: start-up, model load, extraction, merge):")
        for k, v in best.items():
            print(f"  {k}: {v:6.2f} s   speed-up vs 1p x 1t: {best['1p x 1t'] / v:.2f}x")
        print(f"  2 ranks vs 1 process with the same 2 threads: {best['1p x 2t'] / best['2r x 1t']:.2f}x")

        # merge throughput: a finalize of synthetic parts (what a merge does after the checks)
        from exvo.extract.shard import Shard, ShardWriter, assign, assignment_digest, merge

        n, L, F = 400, 25, 2048       # wavlm-large rows: 200 KiB each in float32
        path = root / "m" / "c" / "big.h5"
        ids = [f"c{k:05d}" for k in range(n)]
        rng = np.random.default_rng(0)
        row = rng.standard_normal((L, F)).astype(np.float32)
        shares = assign(ids, np.ones(n), 2)
        for s in range(2):
            with ShardWriter(path, Shard(s, 2), "big", {"v": 1}, part_size=64) as w:
                for i in shares[s]:
                    w.add(i, row)
                w.mark_done(shares[s], assignment_digest(shares), [], None, None)
        t0 = time.perf_counter()
        merge(path, "big", ids)
        dt = time.perf_counter() - t0
        mb = n * L * F * 4 / 1e6
        print(f"\nmerge of {n} wavlm-large-sized rows ({mb:.0f} MB float32): {dt:.2f} s = {mb / dt:.0f} MB/s; "
              f"59,201 clips (12,120 MB) ≈ {12120 / (mb / dt) / 60:.1f} min (the same finalize a single process does)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
