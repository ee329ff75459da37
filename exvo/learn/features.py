"""Feature loading: cached embeddings → one standardised, early-fused matrix.

A feature spec names a cache (one extractor) and, for multi-layer (SSL) caches, one layer or
several (grammar in :mod:`exvo.learn.specs`)::

    egemaps          the only layer of an openSMILE cache
    wavlm            the last layer
    wavlm@12         layer 12 (0 = the input embeddings, as the model returns them; also
                     in a cache made with ``--layers``, which must have kept it)
    wavlm@-2         the second-to-last layer
    wavlm@best       the layer chosen by a closed-form ridge probe on Train → Val (see ``probe``)
    wavlm@all        every stored layer; wavlm@3-8, wavlm@0,6,12: those layers

``--features a,b`` concatenates the sets column-wise (early fusion), rows aligned by ``File_ID``.
A multi-layer set contributes its layers one after another (layer-major columns), so the
per-column standardisation gives every layer its own Train statistics, and a learner that
takes layers (``wsum``) sees the same memory as ``(n, L, F)`` (:meth:`FeatureMatrix.layer_block`,
a view, no copy); any other learner gets the concatenation of the layers.

Memory: the fused matrix ``(n_clips, sum of widths)`` float32 is allocated once; every
layer is read once from HDF5 and copied into its column block, then the matrix is
standardised in place (Train mean/std), so a 59,000 × 2,048 float32 matrix costs its
own 480 MB plus one layer while loading (a 25-layer × 2,048 block of 20,000 clips: 4.1 GB).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from exvo.corpus import Corpus, listing
from exvo.extract.cache import FORMAT, EmbeddingCache, cache_path
from exvo.learn.specs import (FeatureError, FeatureSpec, block_spec, layers_text, parse_spec, parse_specs,
                              resolve_layer, resolve_layers)

__all__ = ["FeatureBlock", "FeatureError", "FeatureMatrix", "FeatureSpec", "Scaler", "StaleCacheError", "block_spec",
           "check_identity", "extract_hint", "fused_matrix", "layers_text", "load_features", "make_block", "open_cache",
           "parse_spec", "parse_specs", "report_missing", "resolve_layer", "resolve_layers", "split_rows"]
"""The loading API; the spec names (parsing, layer resolution) live in :mod:`exvo.learn.specs`."""



class StaleCacheError(FeatureError):
    """Cached rows were made from audio that has changed since (see :func:`check_identity`)."""


@dataclass
class FeatureBlock:
    """One feature set as used in a run (recorded in ``config.json``)."""

    spec: str                 # as given, e.g. "wavlm@best"
    name: str                 # cache / extractor name
    layer: int | None         # resolved layer index, 0..n_layers-1 (None: several, see ``layers``)
    layer_choice: str         # "only", "last", "given", "all" or "best (ridge probe)"
    n_layers: int
    dim: int                  # F, the width of one layer
    cache: str
    cache_config: dict
    cache_fingerprint: str
    probe: dict | None = None  # @best: {"layer_scores": {layer: s_mtl}, ...}
    layers: list[int] | None = None   # multi-layer specs: the model's layer indices, in stored order

    @property
    def used(self) -> list[int]:
        """The model's layer indices this block reads (one, or ``layers``)."""
        return list(self.layers) if self.layers else [int(self.layer)]

    @property
    def width(self) -> int:
        """Columns of this block in the fused matrix: ``len(used) × dim``."""
        return len(self.used) * self.dim

    @property
    def label(self) -> str:
        """``L12`` or ``L0-24`` (for messages)."""
        return "L" + (layers_text(self.layers) if self.layers else str(self.layer))

    def to_json(self) -> dict:
        out = dict(self.__dict__)
        if out["layers"] is None:
            del out["layers"]           # single-layer blocks keep the record they always had
        return out


def train_label_leaks(blocks: Sequence[dict | FeatureBlock], corpus_name: str) -> list[str]:
    """Why out-of-fold scores on these feature blocks are optimistic, one reason per block: a
    task CNN (its cache config names a ``label_column``) trained on this corpus's Train labels
    without ``--crossfit`` embedded every Train clip with a model that had fitted that very
    clip's label, so a learner's out-of-fold Train predictions on it look better than they are.
    ``blocks``: :class:`FeatureBlock` or their ``to_json()`` records (a run's config.json; the spec
    strings of exvo 0.1 runs carry no cache config and are passed over)."""
    out = []
    for b in blocks:
        b = b.to_json() if isinstance(b, FeatureBlock) else b
        if not isinstance(b, dict):
            continue
        cfg = b.get("cache_config") or {}
        if cfg.get("label_column") and cfg.get("trained_on") == corpus_name and not cfg.get("crossfit"):
            out.append(f"{b.get('spec', b.get('name'))}: a task CNN trained on these Train labels without --crossfit, "
                       "so its Train embeddings have seen them; extract it with --crossfit K for an honest estimate")
    return out


@dataclass
class FeatureMatrix:
    """``X`` ``(n_rows, dim)`` float32; ``ids`` of its rows; ``rows[split]`` indices into ``X``.

    Rows are the corpus clips that every feature cache holds, in corpus order.
    ``missing[split]`` lists clips of that split absent from at least one cache.
    """

    X: np.ndarray
    ids: list[str]
    rows: dict[str, np.ndarray]
    blocks: list[FeatureBlock]
    missing: dict[str, list[str]] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.X.shape[1])

    @property
    def layer_names(self) -> list[str]:
        """``["wavlm@0", …]``: the layers of :meth:`layer_block`, in its order."""
        return [f"{b.name}@{k}" if b.n_layers > 1 else b.name for b in self.blocks for k in b.used]

    def layer_block(self) -> np.ndarray:
        """``X`` seen as ``(n_rows, L, F)``: every layer of every block (a view, no copy).

        Every block must have the same layer width ``F`` (e.g. ``wavlm@all``, or two caches of
        one model size); other mixes are refused with their widths.
        """
        dims = sorted({b.dim for b in self.blocks})
        if len(dims) != 1:
            raise FeatureError(
                "a layer-wise learner needs layers of one width; got "
                + " + ".join(f"{b.spec} ({len(b.used)} × {b.dim})" for b in self.blocks)
                + ". Give one multi-layer set (e.g. --features wavlm@all), or sets of the same width")
        return self.X.reshape(self.X.shape[0], len(self.layer_names), dims[0])


def extract_hint(name: str, corpus: Corpus, cache_dir: str | Path) -> str:
    return f"`exvo extract --model {name} --data {corpus.root} --cache {cache_dir}`"


def open_cache(spec: FeatureSpec | str, corpus: Corpus, cache_dir: str | Path) -> EmbeddingCache:
    """Open the cache of one feature set; a missing cache names the command that makes it."""
    name = spec.name if isinstance(spec, FeatureSpec) else str(spec)
    path = cache_path(cache_dir, corpus.name, name)
    if not path.is_file():
        raise FeatureError(
            f"no cache for feature set {name!r} of corpus {corpus.name!r} (looked for {path}); "
            f"make it with {extract_hint(name, corpus, cache_dir)}"
        )
    return EmbeddingCache(path)


def split_rows(corpus: Corpus, present: set[str], splits=("Train", "Val", "Test")):
    """Row ids in corpus order that are present, their split indices, and the missing ids per split."""
    ids = [i for i in corpus.ids if i in present]
    pos = {i: k for k, i in enumerate(ids)}
    rows, missing = {}, {}
    for sp in splits:
        want = corpus.split_ids(sp)
        rows[sp] = np.array([pos[i] for i in want if i in pos], dtype=np.int64)
        missing[sp] = [i for i in want if i not in pos]
    return ids, rows, missing


def check_identity(corpus: Corpus, caches: Sequence[EmbeddingCache], ids: Sequence[str],
                   cache_dir: str | Path) -> None:
    """Refuse rows made from audio that has changed since (stale embeddings), naming the clips.

    One ``stat`` per clip (shared by all caches); a file is read only when its size matches
    but its mtime moved (see :mod:`exvo.extract.identity`).
    """
    from exvo.extract.identity import compare, stat_all

    if not ids:
        return
    paths = [corpus.audio_path(i) for i in ids]
    now = stat_all(paths)
    for c in caches:
        if c.format != FORMAT:
            raise StaleCacheError(
                f"{c.path} was made by an older exvo that did not record which audio each row came from, so "
                f"its rows cannot be checked against {corpus.root}. Run {extract_hint(c.extractor, corpus, cache_dir)} "
                "once: it records the identities (re-extracting only clips whose audio changed), then run this "
                "command again"
            )
        changed, _ = compare([c.identity(i) for i in ids], paths, now=now, strict=False)
        if changed:
            bad = [ids[k] for k in changed]
            raise StaleCacheError(
                f"{len(bad)} clip(s) of {corpus.name} are not the audio the {c.extractor} cache ({c.path}) was "
                f"made from (size, mtime or content differ): {listing(bad)}. Their embeddings would be stale, "
                f"so nothing is done. Run {extract_hint(c.extractor, corpus, cache_dir)} (it re-extracts just "
                "these clips), then run this command again"
            )


def load_features(corpus: Corpus, specs: Sequence[FeatureSpec], cache_dir: str | Path,
                  echo: Callable[[str], None] = print, probe_fn=None, need_train: bool = True) -> FeatureMatrix:
    """Read, align and concatenate the feature sets (raw, not yet standardised).

    ``probe_fn(cache, corpus) -> (layer, info)`` resolves ``@best`` (see :mod:`exvo.learn.probe`).
    """
    caches = [open_cache(s, corpus, cache_dir) for s in specs]
    present = set(corpus.ids)
    for c in caches:
        present &= set(c.ids)
    ids, rows, missing = split_rows(corpus, present)
    check_identity(corpus, caches, ids, cache_dir)
    if need_train and not corpus.split_ids("Train"):
        raise FeatureError(f"{corpus.root / 'data_info.csv'} has no Train rows (Split column: "
                           f"{', '.join(f'{s} {len(corpus.split_ids(s))}' for s in ('Train', 'Val', 'Test'))}); "
                           "learning needs Train clips: mark some rows Split=Train")
    if need_train and rows["Train"].size == 0:
        raise FeatureError(
            f"no Train clip of {corpus.name} is in all of the caches {[c.path.name for c in caches]}; "
            f"extract them first, e.g. {extract_hint(specs[0].name, corpus, cache_dir)}"
        )
    blocks = [make_block(spec, c, corpus, echo, probe_fn) for spec, c in zip(specs, caches)]
    X = fused_matrix(blocks, caches, ids)
    if not np.isfinite(X).all():
        bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
        raise FeatureError(f"non-finite features for {len(bad)} clip(s): {listing(ids[k] for k in bad)}; "
                           "rebuild the cache with --overwrite")
    return FeatureMatrix(X, ids, rows, blocks, missing)


def make_block(spec: FeatureSpec, c: EmbeddingCache, corpus: Corpus, echo: Callable[[str], None],
               probe_fn=None) -> FeatureBlock:
    """The :class:`FeatureBlock` of one spec on its cache: its layer(s) resolved (``@best`` probed)."""
    if spec.multi:
        layers, how = resolve_layers(spec, c)
        return FeatureBlock(spec.text, spec.name, None, how, c.n_layers, c.dim, str(c.path), c.config,
                            c.fingerprint, None, layers)
    layer, how = resolve_layer(spec, c)
    info = None
    if layer is None:
        if probe_fn is None:
            raise FeatureError(f"{spec.text}: @best needs a layer probe")
        layer, info = probe_fn(c, corpus)
        sc = info["layer_scores"]
        runner_up = max((k for k in sc if k != layer), key=lambda k: sc[k], default=None)
        # the margin tells a clear choice from a near-tie (`exvo report` compares it with the seed std)
        margin = (f"; margin {sc[layer] - sc[runner_up]:.3f} over layer {runner_up}"
                  if runner_up is not None else "")
        echo(f"{spec.text}: layer {layer} of {c.n_layers} chosen by a closed-form ridge probe "
             f"({info.get('method', 'ridge probe')}"
             + ("; optimistic for Val" if info.get("selected_on", "val") == "val" else "") + f"){margin} — scores: "
             + " ".join(f"{k}:{v:.3f}" for k, v in sc.items()))
    return FeatureBlock(spec.text, spec.name, int(layer), how, c.n_layers, c.dim, str(c.path), c.config,
                        c.fingerprint, info)


def fused_matrix(blocks: list[FeatureBlock], caches: Sequence[EmbeddingCache], ids: list[str]) -> np.ndarray:
    """``(len(ids), Σ widths)`` float32: every block's layers side by side, rows aligned to ``ids``.

    One HDF5 read per layer; a single one-layer block already in ``ids`` order is returned as read.
    """
    if len(blocks) == 1 and len(blocks[0].used) == 1 and caches[0].ids == ids:
        A = caches[0].layer(caches[0].layer_ids.index(blocks[0].layer))
        return A if A.dtype == np.float32 and A.flags.c_contiguous else np.ascontiguousarray(A, np.float32)
    X = np.empty((len(ids), sum(b.width for b in blocks)), dtype=np.float32)
    off = 0
    for b, c in zip(blocks, caches):
        cpos = {i: k for k, i in enumerate(c.ids)}
        src = np.fromiter((cpos[i] for i in ids), dtype=np.int64, count=len(ids))
        for layer in b.used:
            A = c.layer(c.layer_ids.index(layer))    # (n_cache, F), cache order: one read
            for s in range(0, len(ids), 8192):        # chunks bound the temporary of the gather
                X[s:s + 8192, off:off + b.dim] = A[src[s:s + 8192]]
            off += b.dim
            del A
    return X


def report_missing(fm: FeatureMatrix, corpus: Corpus, cache_dir: str | Path, need: Sequence[str],
                   echo: Callable[[str], None] = print) -> None:
    """Train clips absent from a cache are dropped with a notice; absent ``need`` clips are an error."""
    names = ", ".join(b.name for b in fm.blocks)
    hint = " / ".join(extract_hint(b.name, corpus, cache_dir) for b in fm.blocks)
    if fm.missing.get("Train"):
        m = fm.missing["Train"]
        echo(f"note: {len(m)} Train clip(s) are not in the cache(s) [{names}] (failed extraction?) and are "
             f"left out of training: {listing(m)}")
    for sp in need:
        m = fm.missing.get(sp) or []
        if m:
            raise FeatureError(
                f"{len(m)} {sp} clip(s) are not in the cache(s) [{names}], so they cannot be predicted: "
                f"{listing(m)}. These clips failed extraction; see the extract summary "
                f"(<cache>/<corpus>/<extractor>.summary.json), fix or replace their audio and run {hint} again "
                "(it resumes and only extracts the missing clips)"
            )


class Scaler:
    """Per-column standardisation fitted on Train rows only; applied in place.

    ``mean``/``std`` ``(dim,)`` float64; constant columns get std 1 (they become 0).
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)

    @classmethod
    def fit(cls, X: np.ndarray, rows: np.ndarray, chunk: int = 2048) -> "Scaler":
        # two chunked float64 passes (mean, then squared deviations): no copy of the Train
        # rows, and no cancellation for columns with a large offset (openSMILE energies)
        n = len(rows)
        if n == 0:
            raise ValueError("cannot fit the feature standardisation on 0 Train rows")
        s = np.zeros(X.shape[1])
        for k in range(0, n, chunk):
            s += X[rows[k:k + chunk]].sum(axis=0, dtype=np.float64)
        mean = s / n
        ss = np.zeros(X.shape[1])
        for k in range(0, n, chunk):
            d = X[rows[k:k + chunk]].astype(np.float64) - mean
            ss += (d * d).sum(axis=0)
        std = np.sqrt(ss / n)
        std[std <= 1e-12 * np.maximum(1.0, np.abs(mean))] = 1.0   # constant column → 0 after scaling
        return cls(mean, std)

    def apply_(self, X: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """Standardise ``X`` in place (float32) and return it."""
        m = self.mean.astype(np.float32); inv = (1.0 / self.std).astype(np.float32)
        for k in range(0, X.shape[0], chunk):
            blk = X[k:k + chunk]
            blk -= m
            blk *= inv
        return X

    def save(self, path: Path, **extra) -> None:
        np.savez(path, mean=self.mean, std=self.std, **extra)

    @classmethod
    def load(cls, path: Path) -> tuple["Scaler", dict]:
        with np.load(path) as z:
            extra = {k: z[k] for k in z.files if k not in ("mean", "std")}
            return cls(z["mean"], z["std"]), extra
