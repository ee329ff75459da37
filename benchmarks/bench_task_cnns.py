"""Task CNNs on the demo corpus: train + extract each of raw/zff × ER/CR, and the
whole-clip extraction against the plain frame-by-frame reference.

    .venv/bin/exvo demo-corpus /tmp/cnn/dd
    .venv/bin/python benchmarks/bench_task_cnns.py --data /tmp/cnn/dd --cache /tmp/cnn/cache [--epochs N]

Prints a markdown table (train time, extraction time, Val window/clip UAR & WAR of the
CNN's own classifier) and the speed ratio of the sliced whole-clip extraction vs running
every 4000-sample frame through the network (same model, same clips, same process).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def frame_by_frame(model, x: np.ndarray) -> np.ndarray:
    """Reference: every 250 ms frame (10 ms hop) through ``forward`` on its own, batched 64."""
    import torch

    cfg = model.cfg
    n = 1 + (x.size - cfg.window) // cfg.hop
    out = []
    with torch.no_grad():
        for a in range(0, n, 64):
            fr = np.stack([x[i * cfg.hop: i * cfg.hop + cfg.window] for i in range(a, min(n, a + 64))])
            out.append(model(torch.from_numpy(fr))[1].numpy())
    return np.concatenate(out)


def main() -> None:
    from exvo.corpus import Corpus, load_audio
    from exvo.extract.base import ExtractOptions
    from exvo.extract.run import extract
    from exvo.extract.cnn.extractor import BUILTIN
    from exvo.extract.cnn.model import clip_embeddings
    from exvo.extract.cnn.train import load_model, torch_threads

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--models", default=",".join(BUILTIN))
    ap.add_argument("--ref-clips", type=int, default=20, help="clips for the frame-by-frame speed reference")
    a = ap.parse_args()
    corpus = Corpus.from_dir(a.data)
    rows = []
    for name in a.models.split(","):
        opts = ExtractOptions(train_epochs=a.epochs)
        t0 = time.perf_counter()
        s = extract(corpus, name, a.cache, opts, progress=False)
        total = time.perf_counter() - t0
        info = json.loads((a.cache / corpus.name / "models" / f"{name}.json").read_text())
        m = info["val_metrics"]
        train_s = info["train_seconds"] + m.get("seconds", 0.0)
        rows.append((name, info["epochs_run"], info["train_seconds"], m.get("seconds", 0.0), total - train_s,
                     s.n_extracted, len(s.notes), len(s.failures), m))
        print(s.line(), flush=True)
    chance = {"er": 0.1, "cr": 0.25}
    print("\n| extractor | epochs | train s | Val eval s | extract s (clips) | Val window UAR / WAR | Val clip UAR / WAR | chance UAR |")
    print("|---|---|---|---|---|---|---|---|")
    for name, ep, tr, ev, ex, n, notes, fails, m in rows:
        print(f"| {name} | {ep} | {tr:.0f} | {ev:.0f} | {ex:.0f} ({n}, {notes} padded, {fails} failed) | "
              f"{m['window_uar']:.3f} / {m['window_war']:.3f} | {m['clip_uar']:.3f} / {m['clip_war']:.3f} | "
              f"{chance[BUILTIN[name][1]]} |")
    # speed: sliced whole-clip extraction vs frame by frame (same model and clips)
    lm = load_model(a.cache / corpus.name / "models" / f"{a.models.split(',')[0]}.pt")
    wavs = [load_audio(corpus.audio_path(i)) for i in corpus.ids[: a.ref_clips]]
    with torch_threads(None):
        t0 = time.perf_counter()
        ours = [clip_embeddings(lm.model, w)[0] for w in wavs]
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = [frame_by_frame(lm.model, np.pad(w, (0, max(0, 4000 - w.size)))) for w in wavs]
        t_ref = time.perf_counter() - t0
    err = max(float(np.abs(o - r).max()) for o, r in zip(ours, ref))
    print(f"\nextraction of {len(wavs)} clips: whole-clip {t_ours:.2f} s, frame-by-frame {t_ref:.2f} s, "
          f"ratio {t_ref / t_ours:.1f}x; max |difference| {err:.2e}")


if __name__ == "__main__":
    main()
