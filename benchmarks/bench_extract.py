"""Stage-1 extraction speed: the pipeline against a plain reference, measured in one run.

(a) SSL: ``exvo.extract.run.extract`` (decode + normalise + forward + pool + cache write)
    against bare forward passes of the same model over the same, pre-loaded and
    pre-normalised clips, same thread count. A base-size WavLM (``WavLMConfig()``
    defaults: 12 layers, 768 dims, random weights) stands in for a real checkpoint.
(b) openSMILE: ``egemaps`` and ``compare`` through the pipeline with every core
    (``workers=0``) against one process (``workers=1``).

The CPU may be shared with other work, so ratios are only taken between numbers of the
same run: SSL interleaves bare and pipeline in small rounds (ABBA) and sums them;
openSMILE repeats each setting and keeps the best (minimum) time.

    .venv/bin/python benchmarks/bench_extract.py [--ssl-clips 40] [--smile-clips 200] [--compare-clips 60] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_ssl(root: Path, n_clips: int, rounds: int) -> None:
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    from exvo.corpus import Corpus, load_audio
    from exvo.demo import make_demo_corpus
    from exvo.extract.base import ExtractOptions
    from exvo.extract.run import extract
    from exvo.extract.ssl import SSLExtractor

    corpus = Corpus.from_dir(make_demo_corpus(root / "ssl_corpus", speakers=8, clips_per_speaker=max(1, n_clips // 8),
                                              seed=0, progress=False))
    torch.manual_seed(0)
    ckpt = root / "wavlm_base_random"
    WavLMModel(WavLMConfig()).save_pretrained(ckpt)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(ckpt)

    t0 = time.perf_counter()
    ex = SSLExtractor("wavlm", ExtractOptions(checkpoint=str(ckpt), device="cpu"))
    t_load = time.perf_counter() - t0
    model, fe = ex.model, ex.fe
    wavs = [load_audio(corpus.audio_path(i)) for i in corpus.ids]
    xs = [torch.from_numpy(fe(w, sampling_rate=16000, return_tensors="np").input_values[0].astype(np.float32))[None]
          for w in wavs]
    audio_s = sum(w.size for w in wavs) / 16000

    def bare(xs_round):
        with torch.inference_mode():
            for x in xs_round:
                model(input_values=x, output_hidden_states=True)

    k = [0]

    def pipeline(ids_round):
        k[0] += 1
        s = extract(corpus, ex, root / f"cache{k[0]}", ids=ids_round, progress=False)
        assert s.ok and s.n_extracted == len(ids_round)

    def clock(fn, *args) -> tuple[float, float]:
        w, c = time.perf_counter(), time.process_time()
        fn(*args)
        return time.perf_counter() - w, time.process_time() - c

    with torch.inference_mode():
        model(input_values=xs[0], output_hidden_states=True)   # warm-up
    # The CPU is shared: the two are interleaved in small rounds (ABBA order), so that
    # load from other processes hits both alike; each round's pipeline is a full
    # extract() into a fresh cache, so its fixed costs are counted once per round.
    n = len(corpus)
    per = max(1, -(-n // rounds))
    walls = {"bare": [], "pipe": []}
    cpus = {"bare": [], "pipe": []}
    for r, a in enumerate(range(0, n, per)):
        order = [("bare", bare, xs[a:a + per]), ("pipe", pipeline, corpus.ids[a:a + per])]
        for key, fn, arg in (order if r % 2 == 0 else order[::-1]):
            w, c = clock(fn, arg)
            walls[key].append(w)
            cpus[key].append(c)
    b, p = sum(walls["bare"]), sum(walls["pipe"])
    bc, pc = sum(cpus["bare"]), sum(cpus["pipe"])
    ratios = np.array(walls["pipe"]) / np.array(walls["bare"])
    print(f"## SSL: base-size random WavLM (12 layers, 768 dims), {n} clips, {audio_s:.1f} s of audio, "
          f"torch threads {torch.get_num_threads()}, {len(walls['bare'])} interleaved rounds")
    print(f"model load (from_pretrained + weights sha256): {t_load:.2f} s (once per run, not in the numbers below)")
    print(f"bare forward passes (pre-loaded audio):  wall {b:7.2f} s   cpu {bc:7.2f} s")
    print(f"pipeline extract() into fresh caches:    wall {p:7.2f} s   cpu {pc:7.2f} s")
    print(f"overhead: wall {100 * (p - b) / b:+.1f} %   cpu {100 * (pc - bc) / bc:+.1f} %   "
          f"median per-round wall ratio {np.median(ratios):.3f} [min {ratios.min():.2f}, max {ratios.max():.2f}]   "
          f"({audio_s / p:.2f} audio-s/s)")


def bench_smile(root: Path, name: str, n_clips: int, repeats: int) -> None:
    from exvo.corpus import Corpus
    from exvo.demo import make_demo_corpus
    from exvo.extract.base import ExtractOptions
    from exvo.extract.run import extract

    folder = root / f"smile_corpus_{n_clips}"
    if not folder.exists():
        make_demo_corpus(folder, speakers=max(8, n_clips // 5), clips_per_speaker=5, seed=1, progress=False)
    corpus = Corpus.from_dir(folder)
    ids = corpus.ids[:n_clips]
    k = [0]

    def run(workers: int):
        k[0] += 1
        s = extract(corpus, name, root / f"smile_cache{k[0]}", ExtractOptions(workers=workers), ids=ids, progress=False)
        assert s.ok and s.n_extracted == len(ids)

    t1, tn = [], []
    for _ in range(repeats):
        t1.append(_best(lambda: run(1), 1))
        tn.append(_best(lambda: run(0), 1))
    a, b = min(t1), min(tn)
    print(f"## openSMILE {name}: {len(ids)} clips, {os.cpu_count()} cores")
    print(f"single process (workers=1): {a:6.2f} s  ({len(ids) / a:5.1f} clips/s)")
    print(f"all cores      (workers=0): {b:6.2f} s  ({len(ids) / b:5.1f} clips/s)")
    print(f"speedup: {a / b:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ssl-clips", type=int, default=40)
    ap.add_argument("--smile-clips", type=int, default=200)
    ap.add_argument("--compare-clips", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3, help="openSMILE: repetitions (best kept)")
    ap.add_argument("--rounds", type=int, default=8, help="SSL: interleaved bare/pipeline rounds")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--skip-ssl", action="store_true")
    ap.add_argument("--skip-smile", action="store_true")
    a = ap.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    print(f"machine: {os.cpu_count()} CPU cores; load average at start {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="exvo_bench_") as tmp:
        root = Path(tmp)
        if not a.skip_ssl:
            bench_ssl(root, a.ssl_clips, a.rounds)
        if not a.skip_smile:
            bench_smile(root, "egemaps", a.smile_clips, a.repeats)
            bench_smile(root, "compare", a.compare_clips, a.repeats)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
