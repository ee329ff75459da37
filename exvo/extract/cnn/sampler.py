"""All-frames training data: the clips' signals in one buffer, and a sampler that visits every
250 ms window at the 10 ms hop of every clip exactly once per pass, shuffled.

Windows are never materialised. A clip of ``n`` samples (zero-padded to the window if
shorter) has ``F = 1 + (n - window) // hop`` frames. Each pass cuts every clip's frame
range into *chunks* of up to ``k`` consecutive frames, at a random phase per clip (so
chunk boundaries move from pass to pass), and shuffles all chunks of all clips. A chunk
is read as one segment of ``window + (k - 1) * hop`` samples and goes through the CNN's
sliced forward pass (:mod:`exvo.extract.cnn.model`), which costs about 1.6 windows for
16 frames instead of 16. ``k = 1`` is plain window-level shuffling.

Only index arrays live in memory: per pass one permutation of chunk numbers (about
``total_frames / k + n_clips`` int64); chunk number → (clip, first frame) is computed
from cumulative chunk counts by binary search. On ExVo Train (≈ 3.9 M windows, k = 16)
that is ≈ 2 MB.

An *epoch* (the unit of the learning-rate schedule) is either one pass
(``windows_per_epoch=None``) or a fixed number of windows taken in order from the
running pass; the next epoch continues the same pass, so every window is still visited
exactly once per pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


class FramePool:
    """Model inputs of a set of clips in one float16 buffer (halves RAM: ExVo Train ≈ 1.4 GB).

    ``signals``: list of ``(n_i,)`` arrays; ``labels``: ``(n_clips,)`` int. Clips shorter
    than the window are zero-padded to it (one frame).
    """

    def __init__(self, signals: list[np.ndarray], labels: np.ndarray, window: int, hop: int):
        lens = np.array([max(s.size, window) for s in signals], dtype=np.int64)
        self.offsets = np.concatenate(([0], np.cumsum(lens)[:-1])).astype(np.int64)
        self.lens = lens
        self.data = np.zeros(int(lens.sum()), dtype=np.float16)
        for o, s in zip(self.offsets, signals):
            self.data[o: o + s.size] = s
        self.y = np.asarray(labels, dtype=np.int64)
        if self.y.shape != (len(signals),):
            raise ValueError(f"need one label per clip: {len(signals)} clips, labels of shape {self.y.shape}")
        self.window, self.hop = int(window), int(hop)
        self.n_frames = 1 + (lens - window) // hop

    def __len__(self) -> int:
        return len(self.y)

    @property
    def total_frames(self) -> int:
        return int(self.n_frames.sum())

    def rms(self) -> float:
        """Root mean square of all samples (padding excluded)."""
        tot, n = 0.0, 0
        for o, ln in zip(self.offsets, self.lens):
            s = self.data[o: o + ln].astype(np.float64)
            tot += float(np.dot(s, s))
            n += s.size
        return float(np.sqrt(tot / max(n, 1)))

    def segments(self, clips: np.ndarray, first: np.ndarray, k: int) -> np.ndarray:
        """``(B, window + (k-1)*hop)`` float32: frames ``first[i] .. first[i]+k-1`` of clip ``clips[i]``.

        Samples past a clip's end are zeros (the frames they belong to are masked by the caller).
        """
        length = self.window + (k - 1) * self.hop
        start = self.offsets[clips] + first * self.hop
        end = self.offsets[clips] + self.lens[clips]
        idx = start[:, None] + np.arange(length)
        ok = idx < end[:, None]
        out = self.data[np.where(ok, idx, 0)].astype(np.float32)
        out[~ok] = 0.0
        return out


@dataclass
class Batch:
    """``clips``, ``first`` frames and ``count`` of valid frames (≤ k) per chunk, each ``(B,)``."""

    clips: np.ndarray
    first: np.ndarray
    count: np.ndarray

    @property
    def n_windows(self) -> int:
        return int(self.count.sum())

    def mask(self, k: int) -> np.ndarray:
        """``(B, k)`` bool: which frames of each segment are real windows of this chunk."""
        return np.arange(k)[None, :] < self.count[:, None]


class AllFramesSampler:
    """Shuffled chunks covering every frame of every clip once per pass (see the module docstring).

    ``n_frames``: ``(n_clips,)`` frames per clip; ``k``: frames per chunk; ``batch``: chunks per step.
    """

    def __init__(self, n_frames: np.ndarray, k: int, batch: int, seed: int):
        self.n_frames = np.asarray(n_frames, dtype=np.int64)
        if self.n_frames.size == 0 or (self.n_frames < 1).any():
            raise ValueError(f"every clip needs at least one frame; got frame counts {self.n_frames[:10]}...")
        if k < 1 or batch < 1:
            raise ValueError(f"frames per chunk and chunks per batch must be >= 1, got k={k}, batch={batch}")
        self.k, self.batch, self.seed = int(k), int(batch), seed
        self.pass_index = 0
        self._start_pass()

    @property
    def total_frames(self) -> int:
        return int(self.n_frames.sum())

    def _start_pass(self) -> None:
        rng = np.random.default_rng([self.seed, self.pass_index])
        k = self.k
        # phase r: the first chunk of a clip has r frames (0 = none), the others k, the last the rest
        self.phase = rng.integers(0, k, size=self.n_frames.size) if k > 1 else np.zeros(self.n_frames.size, np.int64)
        self.phase = np.minimum(self.phase, self.n_frames - 1)
        head = (self.phase > 0).astype(np.int64)
        per_clip = head + -(-(self.n_frames - self.phase) // k)
        self.cum = np.concatenate(([0], np.cumsum(per_clip)))
        self.order = rng.permutation(int(self.cum[-1]))
        self.pos = 0

    def state(self) -> dict:
        """Where the sampler is: ``{"pass": pass index, "pos": chunks of that pass already handed out}``."""
        return {"pass": int(self.pass_index), "pos": int(self.pos)}

    def restore(self, state: dict) -> None:
        """Go back to a :meth:`state`: the same pass (its permutation is drawn from the seed and the
        pass index alone), at the same place, so the batches that follow are the ones that would have."""
        self.pass_index = int(state["pass"])
        self._start_pass()
        if not 0 <= int(state["pos"]) <= self.order.size:
            raise ValueError(f"sampler position {state['pos']} is outside pass {self.pass_index} "
                             f"({self.order.size} chunks)")
        self.pos = int(state["pos"])

    def _locate(self, chunk_ids: np.ndarray) -> Batch:
        clips = np.searchsorted(self.cum, chunk_ids, side="right") - 1
        j = chunk_ids - self.cum[clips]
        r = self.phase[clips]
        head = r > 0
        first = np.where(head & (j == 0), 0, np.where(head, r + (j - 1) * self.k, j * self.k))
        end = np.where(head & (j == 0), r, np.minimum(first + self.k, self.n_frames[clips]))
        return Batch(clips.astype(np.int64), first.astype(np.int64), (end - first).astype(np.int64))

    def epoch(self, windows: int | None = None) -> Iterator[Batch]:
        """Batches of one epoch: the rest of the current pass (``windows=None``), or about
        ``windows`` windows (whole chunks, continuing into a new pass when this one ends)."""
        if windows is None:
            if self.pos >= self.order.size:
                self.pass_index += 1
                self._start_pass()
            while self.pos < self.order.size:
                ids = self.order[self.pos: self.pos + self.batch]
                self.pos += ids.size
                yield self._locate(ids)
            return
        if windows < 1:
            raise ValueError(f"windows per epoch must be >= 1 (or None for whole passes), got {windows}")
        seen = 0
        while seen < windows:
            if self.pos >= self.order.size:
                self.pass_index += 1
                self._start_pass()
            ids = self.order[self.pos: self.pos + self.batch]
            self.pos += ids.size
            b = self._locate(ids)
            seen += b.n_windows
            yield b


def fixed_chunks(n_frames: np.ndarray, k: int) -> Batch:
    """Every frame of every clip once, in order, in chunks of ``k`` (for evaluation)."""
    n_frames = np.asarray(n_frames, dtype=np.int64)
    per = -(-n_frames // k)
    clips = np.repeat(np.arange(n_frames.size), per)
    j = np.arange(per.sum()) - np.repeat(np.concatenate(([0], np.cumsum(per)[:-1])), per)
    first = j * k
    return Batch(clips, first, np.minimum(k, n_frames[clips] - first))
