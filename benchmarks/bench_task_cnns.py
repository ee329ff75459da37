"""Task CNNs: training and extraction throughput on CPU, each against a plain reference
measured in the same run, and the all-frames epoch on the real ExVo corpus estimated from them.

    .venv/bin/exvo demo-corpus /tmp/cnn/demo
    .venv/bin/python benchmarks/bench_task_cnns.py --data /tmp/cnn/demo [--seconds 10] [--threads 1]

Training (windows/s, forward + backward + SGD step, one intra-op thread by default):
  ours       chunks of 16 consecutive frames through the sliced pass (what ``fit`` does);
  reference  the same windows as separate 4000-sample inputs through ``forward`` (batch 256).
Extraction (clips/s and audio-seconds/s): ``clip_embeddings`` (whole clip, sliced) vs
every 250 ms frame through ``forward`` (batch 64); max |difference| printed.

The real-corpus estimate uses ExVo's Train split (19,990 clips, avg 2.2 s; 90 % of the
speakers train) and all 59,201 clips for extraction.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

EXVO_TRAIN_CLIPS = 19_990
EXVO_ALL_CLIPS = 59_201
EXVO_AVG_SECONDS = 2.2


def frame_by_frame(model, x: np.ndarray) -> np.ndarray:
    """Reference: every 250 ms frame (10 ms hop) through ``forward`` on its own, batched 64."""
    import torch

    cfg = model.cfg
    x = np.pad(x, (0, max(0, cfg.window - x.size)))
    n = 1 + (x.size - cfg.window) // cfg.hop
    out = []
    with torch.no_grad():
        for a in range(0, n, 64):
            fr = np.stack([x[i * cfg.hop: i * cfg.hop + cfg.window] for i in range(a, min(n, a + 64))])
            out.append(model(torch.from_numpy(fr))[1].numpy())
    return np.concatenate(out)


def train_rate(model, pool, seconds: float, sliced: bool) -> float:
    """Windows per second of SGD steps on ``pool``; ``sliced``: chunks of 16 frames, else single windows."""
    import torch

    from exvo.extract.cnn.sampler import AllFramesSampler

    k, batch = (16, 16) if sliced else (1, 256)
    s = AllFramesSampler(pool.n_frames, k, batch, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for b in s.epoch(4096):
            x = torch.from_numpy(pool.segments(b.clips, b.first, k))
            y = torch.from_numpy(pool.y[b.clips])
            if sliced:
                logits, _ = model.frame_logits(x)
                mask = torch.from_numpy(b.mask(k))
                loss = torch.nn.functional.cross_entropy(logits[mask], y[:, None].expand(-1, k)[mask])
            else:
                logits, _ = model(x)
                loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += b.n_windows
            if time.perf_counter() - t0 >= seconds:
                break
    return n / (time.perf_counter() - t0)


def main() -> None:
    import torch

    from exvo.corpus import Corpus, load_audio
    from exvo.extract.cnn.model import CNNConfig, build_model, clip_embeddings
    from exvo.extract.cnn.sampler import FramePool
    from exvo.extract.cnn.train import torch_threads

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="a corpus folder (e.g. the demo corpus)")
    ap.add_argument("--seconds", type=float, default=10.0, help="per training-throughput measurement")
    ap.add_argument("--clips", type=int, default=40, help="Train clips for training / clips for extraction")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    corpus = Corpus.from_dir(a.data)
    rows = corpus.indices("Train")[: a.clips]
    wavs = [load_audio(corpus.audio_path(corpus.ids[r])) for r in rows]
    audio_s = sum(w.size for w in wavs) / 16000
    print(f"{len(wavs)} clips of {corpus.name} ({audio_s:.1f} s of audio), {a.threads} thread(s), torch {torch.__version__}")
    print("\n| arch | training ours (w/s) | training reference (w/s) | ratio | extraction ours (clips/s, audio s/s) "
          "| extraction reference (clips/s) | ratio | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    est = {}
    with torch_threads(a.threads):
        for arch in ("paper", "sinc"):
            torch.manual_seed(0)
            model = build_model(CNNConfig(n_classes=10, arch=arch))
            pool = FramePool(wavs, np.arange(len(wavs)) % 10, 4000, 160)
            with torch.no_grad():
                model.input_scale.fill_(1 / pool.rms())
            ours = train_rate(model, pool, a.seconds, True)
            ref = train_rate(model, pool, a.seconds, False)
            model.eval()
            t0 = time.perf_counter()
            e_ours = [clip_embeddings(model, w)[0] for w in wavs]
            t_ours = time.perf_counter() - t0
            t0 = time.perf_counter()
            e_ref = [frame_by_frame(model, w) for w in wavs]
            t_ref = time.perf_counter() - t0
            err = max(float(np.abs(o - r).max()) for o, r in zip(e_ours, e_ref))
            est[arch] = (ours, len(wavs) / t_ours, audio_s / t_ours)
            print(f"| {arch} | {ours:.0f} | {ref:.0f} | {ours / ref:.1f}x | {len(wavs) / t_ours:.1f}, {audio_s / t_ours:.0f} "
                  f"| {len(wavs) / t_ref:.1f} | {t_ref / t_ours:.1f}x | {err:.1e} |")
    win = int(round(0.9 * EXVO_TRAIN_CLIPS * (1 + (EXVO_AVG_SECONDS - 0.25) / 0.01)))
    print(f"\nReal corpus (estimate): one all-frames epoch = 90 % of {EXVO_TRAIN_CLIPS} Train clips × "
          f"{1 + (EXVO_AVG_SECONDS - 0.25) / 0.01:.0f} windows ≈ {win / 1e6:.2f} M windows; "
          f"extraction of {EXVO_ALL_CLIPS} clips ≈ {EXVO_ALL_CLIPS * EXVO_AVG_SECONDS / 3600:.1f} h of audio")
    for arch, (w_s, _, a_s) in est.items():
        print(f"  {arch}: epoch ≈ {win / w_s / 60:.1f} min, extraction ≈ {EXVO_ALL_CLIPS * EXVO_AVG_SECONDS / a_s / 60:.1f} min "
              f"({a.threads} thread(s))")


if __name__ == "__main__":
    main()
