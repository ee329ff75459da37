"""Feature spaces for the FID: real clips from the corpus cache, generated clips embedded directly.

A :class:`FeatureSpace` maps clips to ``(S, n, d)`` float64 embeddings, ``S`` views of the
same clips: 1 for an extractor, one per seed for a classifier run (a seed's network is its
own feature space, so FIDs are computed per seed and summarised as mean ± std over seeds).

:class:`ExtractorSpace` (``--features NAME[@LAYER]``) reads the real clips from the corpus
cache ``<cache>/<corpus>/<NAME>.h5`` and embeds the generated clips with the same
registered extractor (:func:`exvo.extract.base.get_extractor`, audio through
:func:`exvo.corpus.load_audio`). The extractor is prepared on the *real* corpus, so a task
CNN (``raw_exvo_er`` …: the bottleneck of a classifier trained on this corpus) is the very
model the cache was made with; its config must equal the cache's, else the two sets would
live in different spaces and the command refuses. Generated clips are embedded in memory on
every call (no cache: a regenerated folder can never be compared through stale embeddings).

Scale. The FID is not scale-invariant: in raw openSMILE functionals a few energy features
with variances of 10^5 and more would decide it alone. By default every dimension is
therefore standardised with the mean and std of *all* Train clips of the corpus (the
same per-feature transform ``exvo learn`` applies, :class:`exvo.learn.features.Scaler`),
applied identically to real and generated clips, so the FID is a distance between the two
sets in one fixed space. ``standardise=False`` (``--raw``) keeps the cached units.
"""

from __future__ import annotations

import json
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from exvo.corpus import Corpus, listing
from exvo.tables import repeated
from exvo.extract.base import ExtractOptions, get_extractor
from exvo.extract.cache import CacheMismatch, EmbeddingCache, config_diff
from exvo.learn.features import FeatureError, FeatureSpec, Scaler, open_cache, parse_spec, resolve_layer

GEN_EXT = (".wav", ".flac")


def list_generated(gen_dir: str | Path) -> list[tuple[str, Path]]:
    """``(stem, path)`` of every ``*.wav``/``*.flac`` directly in ``gen_dir``, sorted by name."""
    d = Path(gen_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"generated-clips folder {d} does not exist; pass a folder of .wav files")
    items = sorted((p.stem, p) for p in d.iterdir() if p.is_file() and p.suffix.lower() in GEN_EXT)
    if not items:
        raise FileNotFoundError(f"{d} holds no .wav or .flac files (subfolders are not searched)")
    stems = [s for s, _ in items]
    dups = repeated(stems)
    if dups:
        raise ValueError(f"{d} has several files per name ({listing(dups)}: e.g. x.wav and x.flac); "
                         "keep one file per clip")
    return items


@dataclass
class Embedded:
    """``X`` ``(S, n, d)`` float64 for clips ``ids``; ``failures`` ``[(id, reason)]`` left out."""

    X: np.ndarray
    ids: list[str]
    failures: list[tuple[str, str]] = field(default_factory=list)


class FeatureSpace(ABC):
    """Where the FID is measured. ``label``: one line saying what the space is."""

    label: str
    views: int = 1

    @abstractmethod
    def real(self, ids: Sequence[str]) -> Embedded:
        """Embeddings of corpus clips ``ids``; clips absent from the cache are failures."""

    @abstractmethod
    def generated(self, items: Sequence[tuple[str, Path]], progress: bool = False) -> Embedded:
        """Embeddings of audio files ``(id, path)``; unreadable clips are failures."""


def plain_of(cfg: dict) -> dict:
    # the cache stores its config through JSON and adds its storage dtype
    d = json.loads(json.dumps(cfg, sort_keys=True, default=str))
    d.pop("storage_dtype", None)
    return d


class ExtractorSpace(FeatureSpace):
    """One layer of a registered extractor (``spec``: ``NAME`` or ``NAME@LAYER``)."""

    def __init__(self, spec: str | FeatureSpec, corpus: Corpus, cache_dir: str | Path,
                 opts: ExtractOptions | None = None, standardise: bool = True):
        self.spec = parse_spec(spec) if isinstance(spec, str) else spec
        if self.spec.layer == "best":
            raise FeatureError(f"{self.spec.text}: @best is not available for the FID; name a layer "
                               f"(e.g. {self.spec.name}@12) so both sets use the same one")
        self.corpus, self.cache_dir = corpus, Path(cache_dir)
        self.opts = opts or ExtractOptions()
        self.cache: EmbeddingCache = open_cache(self.spec, corpus, cache_dir)
        self.layer, _ = resolve_layer(self.spec, self.cache)
        self.dim = self.cache.dim
        layer = f" layer {self.layer} of {self.cache.n_layers}" if self.cache.n_layers > 1 else ""
        self.scaler: Scaler | None = None
        if standardise:
            cached = set(self.cache.ids)
            train = [i for i in corpus.split_ids("Train") if i in cached]
            if not train:
                raise FeatureError(f"no Train clip of {corpus.name} is in {self.cache.path}; standardising needs them "
                                   "(extract the corpus first, or pass --raw)")
            X = self.cache.layer(self.layer, ids=train, dtype=np.float32)
            self.scaler = Scaler.fit(X, np.arange(len(train)))
        how = "standardised with Train mean/std" if standardise else "raw units"
        self.label = f"{self.spec.name}{layer} ({self.dim} dims, {how})"

    def _scale(self, X: np.ndarray) -> np.ndarray:
        if self.scaler is None:
            return X
        return (X - self.scaler.mean) / self.scaler.std

    def real(self, ids: Sequence[str]) -> Embedded:
        have = set(self.cache.ids)
        keep = [i for i in ids if i in have]
        fails = [(i, f"not in {self.cache.path} (failed extraction?)") for i in ids if i not in have]
        X = self.cache.layer(self.layer, ids=keep, dtype=np.float64) if keep else np.zeros((0, self.dim))
        return Embedded(self._scale(X)[None], keep, fails)

    def generated(self, items: Sequence[tuple[str, Path]], progress: bool = False) -> Embedded:
        from tqdm import tqdm

        ex = get_extractor(self.spec.name, self.opts, cache_dir=self.cache_dir)
        try:
            ex.prepare(self.corpus, self.cache_dir)   # task CNNs: the model of the real corpus
            want, got = plain_of(self.cache.config), plain_of(ex.config())
            if want != got:
                raise CacheMismatch(
                    f"the {self.spec.name} extractor is not configured as the cache of the real clips "
                    f"({self.cache.path}): {config_diff(want, got)} ('cache' = real clips, 'requested' = now). "
                    "Pass the options the cache was built with (e.g. --checkpoint), or rebuild the cache")
            out: dict[str, np.ndarray] = {}
            fails: list[tuple[str, str]] = []
            bar = tqdm(total=len(items), desc=f"embed generated ({self.spec.name})", unit="clip",
                       disable=not progress, file=sys.stderr)
            for r in ex.run(list(items)):
                if r.error is not None:
                    fails.append((r.id, r.error))
                else:
                    emb = np.asarray(r.embedding)
                    if emb.ndim != 2 or emb.shape[0] != self.cache.n_layers or emb.shape[1] != self.dim:
                        raise FeatureError(f"{self.spec.name} returned an embedding of shape {emb.shape} but the "
                                           f"cache holds ({self.cache.n_layers}, {self.dim}); rebuild the cache")
                    out[r.id] = emb[self.layer].astype(np.float64)
                bar.update()
            bar.close()
        finally:
            ex.close()
        ids = [i for i, _ in items if i in out]
        X = np.stack([out[i] for i in ids]) if ids else np.zeros((0, self.dim))
        return Embedded(self._scale(X)[None], ids, fails)


def describe_failures(what: str, fails: Sequence[tuple[str, str]]) -> str:
    return f"{len(fails)} {what} clip(s) left out: " + listing(f"{i} ({why})" for i, why in fails)
