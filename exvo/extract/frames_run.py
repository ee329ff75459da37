"""``exvo extract --frames``: run an SSL model over a corpus into its frame cache (:mod:`exvo.extract.frames`).

One clip at a time, in corpus order, with the utterance extractor's input policy (the
``SSLExtractor.frames`` hook); a bad clip is reported and costs only itself; finished clips
are kept on any interruption and the next run resumes.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from exvo.audio import join_notes, read_audio
from exvo.corpus import AudioError, Corpus
from exvo.extract.cache import CacheError
from exvo.extract.frames import POOLING, FrameCache, FrameWriter, frames_path, pool_frames


@dataclass
class FrameSummary:
    extractor: str
    cache: str
    n_clips: int
    n_cached_before: int = 0
    n_extracted: int = 0
    n_frames_stored: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    wall_seconds: float = 0.0

    def line(self) -> str:
        return (f"{self.extractor} frames: {self.n_cached_before + self.n_extracted}/{self.n_clips} clips cached "
                f"({self.n_extracted} new, {len(self.failures)} failed, {len(self.notes)} notes) in "
                f"{self.wall_seconds:.1f} s → {self.cache}")


def frame_config(ex, layer: int, k: int) -> dict:
    return dict(ex.config(), frames={"layer": layer, "pool_frames": k, "pooling": POOLING, "code_version": "1"})


def extract_frames(corpus: Corpus, model: str, cache_dir: str | Path = "cache", opts=None, *, layer: int = -1,
                   pool: int = 1, overwrite: bool = False, progress: bool = True, part_size: int = 64,
                   flush_seconds: float = 60.0) -> FrameSummary:
    """Extract layer ``layer`` of SSL model ``model`` for every clip, pooled over ``pool`` frames, into
    ``<cache>/<corpus>/<model>.frames.h5`` (resumable; see the module docstring)."""
    from tqdm import tqdm

    from exvo.extract.base import ExtractOptions, get_extractor

    opts = opts or ExtractOptions(dtype="float16")
    if int(pool) < 1:
        raise ValueError(f"--pool-frames must be >= 1, got {pool}")
    t0 = time.perf_counter()
    ex = get_extractor(model, opts, cache_dir=cache_dir)
    if not hasattr(ex, "frames"):
        ex.close()
        raise ValueError(f"--frames needs a self-supervised model (wavlm, hubert, wav2vec2); {model!r} has no frames")
    L = int(ex.n_layers)
    if not -L <= int(layer) < L:
        ex.close()
        raise ValueError(f"--layer {layer} does not exist: {model} has {L} hidden states (0..{L - 1}, or -1..-{L})")
    li = int(layer) % L
    path = frames_path(cache_dir, corpus.name, model)
    s = FrameSummary(model, str(path), len(corpus.ids))
    try:
        with FrameWriter(path, model, frame_config(ex, li, int(pool)), overwrite=overwrite, dtype=opts.dtype,
                         part_size=part_size, flush_seconds=flush_seconds) as w:
            todo = [i for i in corpus.ids if i not in w.done]
            s.n_cached_before = len(corpus.ids) - len(todo)
            for cid in tqdm(todo, desc=f"frames {model}@{li}/K{pool}", unit="clip", disable=not progress):
                try:
                    wav, audio_note = read_audio(corpus.audio_path(cid))
                    fr, note = ex.frames(wav, li)
                    note = join_notes(audio_note, note)
                    w.add(cid, pool_frames(fr, int(pool)))
                except (AudioError, CacheError, RuntimeError, ValueError) as e:
                    why = e.reason if isinstance(e, AudioError) else f"{type(e).__name__}: {e}"
                    s.failures.append((cid, why))
                    if progress:
                        print(f"  failed {cid}: {why}", file=sys.stderr)
                    continue
                s.n_extracted += 1
                if note:
                    s.notes.append((cid, note))
            w.finalize(order=corpus.ids, files=[corpus.audio_path(i) for i in corpus.ids])
    finally:
        ex.close()
        s.wall_seconds = time.perf_counter() - t0
    if path.is_file():
        s.n_frames_stored = FrameCache(path).n_frames
    return s
