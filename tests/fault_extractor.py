"""A tiny, deterministic, fast extractor for the fault/robustness tests (not a real feature set).

Registered as ``_test_rms`` when this module is imported (never by the package itself).
Per clip (16 kHz mono float32 from :func:`exvo.corpus.load_audio`) it gives ``(1, 6)``:

    [duration s, signal mean, frame-RMS mean, frame-RMS std, frame-ZCR mean, frame-ZCR std]

with non-overlapping 20 ms frames (a clip shorter than one frame is one frame).
Every number can be checked by hand from the waveform. ``delay`` (seconds per clip)
slows it down so that a kill -9 can land in the middle of a run; ``fail_ids`` makes
those clips raise inside ``embed`` (an extractor-side failure, not an audio one);
``nan_ids`` makes them return NaN (the cache must refuse to store it).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from exvo.corpus import SAMPLE_RATE
from exvo.extract.base import ClipResult, ExtractOptions, Extractor, _REGISTRY, embed_one, register

NAME = "_test_rms"
FRAME = 320  # 20 ms at 16 kHz


def reference_features(wav: np.ndarray) -> np.ndarray:
    """The ``(1, 6)`` vector, computed plainly (also the extractor's own code path)."""
    x = np.asarray(wav, dtype=np.float64)
    n = max(1, x.size // FRAME)
    frames = x[: n * FRAME].reshape(n, FRAME) if x.size >= FRAME else x.reshape(1, -1)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    zcr = (np.abs(np.diff(np.signbit(frames), axis=1)).sum(axis=1) / max(1, frames.shape[1] - 1))
    v = [x.size / SAMPLE_RATE, x.mean(), rms.mean(), rms.std(), zcr.mean(), zcr.std()]
    return np.array(v, dtype=np.float32)[None, :]


class RmsExtractor(Extractor):
    name = NAME
    version = "1"

    def __init__(self, delay: float = 0.0, fail_ids: Sequence[str] = (), nan_ids: Sequence[str] = ()):
        self.delay = float(delay)
        self.fail_ids = set(fail_ids)
        self.nan_ids = set(nan_ids)
        self.closed = False

    def config(self) -> dict:
        # delay/fail_ids do not change the numbers: not part of the config
        return {"extractor": NAME, "version": self.version, "frame": FRAME, "sample_rate": SAMPLE_RATE}

    def embed(self, wav: np.ndarray) -> np.ndarray:
        return reference_features(wav)

    def run(self, items: Sequence[tuple[str, Path]]) -> Iterator[ClipResult]:
        for cid, path in items:
            if self.delay:
                time.sleep(self.delay)
            if cid in self.fail_ids:
                yield ClipResult(cid, error="RuntimeError: injected extractor failure")
                continue
            r = embed_one(self, cid, path)
            if cid in self.nan_ids and r.embedding is not None:
                r.embedding = np.full_like(r.embedding, np.nan)
            yield r

    def close(self) -> None:
        self.closed = True


def _factory(name: str, opts: ExtractOptions) -> Extractor:
    return RmsExtractor(delay=float(os.environ.get("EXVO_TEST_DELAY", "0") or 0))


if NAME not in _REGISTRY:  # importing twice (e.g. by path and by package) must not register twice
    register(NAME, help="test-only RMS/ZCR features")(_factory)


class InterruptAfter(RmsExtractor):
    """Raises KeyboardInterrupt (as Ctrl-C would) after ``after`` clips; ``version`` as given."""

    def __init__(self, after: int, version: str = "1"):
        super().__init__()
        self.after, self.version = after, version

    def run(self, items):
        for k, r in enumerate(super().run(items)):
            if k == self.after:
                raise KeyboardInterrupt
            yield r
