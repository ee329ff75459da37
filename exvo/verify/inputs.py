"""What the prototype encoder reads: utterance vectors or padded frame sequences, standardised.

* utterance features (any ``exvo learn`` feature spec, e.g. ``egemaps`` or ``wavlm@12``):
  ``data = {"x": (n, D)}``, the MLP encoder;
* a frame cache (``exvo extract --frames``, :mod:`exvo.extract.frames`): ``data = {"x": (n, T, D),
  "len": (n,)}`` with every clip zero-padded (or cut) to ``T = min(longest clip, max_frames)``
  frames, so that every seed's batch has the same shape; the GRU-transformer encoder.

Standardisation (per feature dimension, mean/std) is fitted on the pretraining rows only
(:meth:`Inputs.standardise`); for frames over their valid frames.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from exvo.corpus import Corpus
from exvo.learn.features import FeatureError, Scaler, load_features, parse_specs, split_rows


@dataclass
class Inputs:
    kind: str                         # "mlp" (utterance vectors) or "gru" (frame sequences)
    ids: list[str]
    rows: dict[str, np.ndarray]
    data: dict[str, torch.Tensor]
    info: list[dict]
    scaler: Scaler | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return int(self.data["x"].shape[-1])

    def describe(self) -> str:
        x = self.data["x"]
        what = f"{x.shape[1]} frames max" if self.kind == "gru" else "utterance vectors"
        return f"features {', '.join(b['spec'] for b in self.info)} ({self.dim} dims, {what}, {x.shape[0]} clips)"

    def cache_records(self, cache_dir) -> list[dict]:
        """Provenance records of the caches these inputs came from (:mod:`exvo.runs.provenance`)."""
        from exvo.runs.provenance import cache_record

        return [cache_record(b["name"], b["cache"], b["cache_fingerprint"], cache_dir) for b in self.info
                if b.get("cache") and b.get("cache_fingerprint")]

    def standardise(self, rows: np.ndarray) -> None:
        """Fit mean/std on ``rows`` (valid frames only for sequences) and apply to every clip, in place."""
        x = self.data["x"]
        if self.kind == "mlp":
            self.scaler = Scaler.fit(x.numpy(), rows)
            self.scaler.apply_(x.numpy())
            return
        n = self.data["len"]
        r = torch.as_tensor(rows)
        valid = torch.arange(x.shape[1])[None, :] < n[r][:, None]
        frames = x[r][valid].double()                                    # (total valid frames, D)
        mean, std = frames.mean(0), frames.std(0, unbiased=False)
        std[std <= 1e-12] = 1.0
        self.scaler = Scaler(mean.numpy(), std.numpy())
        mask = (torch.arange(x.shape[1])[None, :] < n[:, None]).unsqueeze(-1)
        x.sub_(mean.float()).div_(std.float()).mul_(mask)               # padding stays exactly 0

    def save_scaler(self, path: Path) -> None:
        if self.scaler is not None:
            self.scaler.save(path)


def load_inputs(corpus: Corpus, features: str, cache_dir: str | Path, encoder: str = "auto", max_frames: int = 512,
                echo: Callable[[str], None] = print) -> Inputs:
    """Utterance features for ``encoder`` mlp; the frame cache named ``features`` for gru; auto: frames
    when such a cache exists."""
    from exvo.extract import frames as fr

    name = features.strip()
    fpath = fr.frames_path(cache_dir, corpus.name, name) if fr.safe_name(name) else None
    has_frames = fpath is not None and fpath.is_file()
    if encoder == "gru" or (encoder == "auto" and has_frames):
        if not has_frames:
            raise FeatureError(f"--encoder gru reads a frame cache, but there is none for {name!r} of corpus "
                               f"{corpus.name!r} (looked for {fpath}); make it with `exvo extract --model {name} "
                               f"--frames --data {corpus.root} --cache {cache_dir}`, or use --encoder mlp")
        return _frame_inputs(corpus, fr.FrameCache(fpath), max_frames, echo)
    fm = load_features(corpus, parse_specs(name), cache_dir, echo=echo)
    return Inputs("mlp", fm.ids, fm.rows, {"x": torch.from_numpy(np.ascontiguousarray(fm.X, dtype=np.float32))},
                  [b.to_json() for b in fm.blocks])


def _frame_inputs(corpus: Corpus, cache, max_frames: int, echo) -> Inputs:
    ids, rows, missing = split_rows(corpus, set(cache.ids))
    if rows["Train"].size == 0:
        raise FeatureError(f"no Train clip of {corpus.name} is in the frame cache {cache.path}; extract it first")
    lens = cache.lengths_of(ids)
    T = int(min(lens.max(), max_frames))
    cut = int((lens > T).sum())
    if cut:
        echo(f"note: {cut} clip(s) have more than {T} frames; the encoder reads their first {T} (--max-frames)")
    x = torch.zeros(len(ids), T, cache.dim)
    for k, seq in enumerate(cache.iter_sequences(ids)):
        t = min(len(seq), T)
        x[k, :t] = torch.from_numpy(np.asarray(seq[:t], dtype=np.float32))
    info = [{"spec": cache.name, "name": cache.name, "frames": True, "cache": str(cache.path), "cache_config": cache.config,
             "cache_fingerprint": cache.fingerprint, "dim": cache.dim, "max_frames": T}]
    return Inputs("gru", ids, rows, {"x": x, "len": torch.from_numpy(np.minimum(lens, T).astype(np.int64))}, info,
                  notes=[f"{cut} clips cut to {T} frames"] if cut else [])
