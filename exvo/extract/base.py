"""Extractor interface and the one registry every extractor lives in.

An extractor turns clips into utterance embeddings of shape ``(n_layers, dim)``
(float32). Families register a factory under each public name::

    @register("egemaps", "compare")
    def _make(name: str, opts: ExtractOptions) -> Extractor: ...

The CLI's ``--model`` choices are ``names()``.
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterator, Sequence

import numpy as np

from exvo.audio import join_notes, read_audio
from exvo.corpus import AudioError, Corpus


@dataclass
class ExtractOptions:
    """User-facing extraction options; each family uses the ones that apply to it.

    ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    ``precision``: ``fp32``, ``fp16`` or ``bf16`` (autocast; CUDA only for fp16).
    ``batch_seconds``: audio seconds per padded batch on CUDA (length-bucketed).
    ``workers``: worker processes (openSMILE) or decoding threads (SSL); 0 = all cores.
    ``chunk_seconds``: SSL clips longer than this are processed in chunks with exact
    pooled statistics.
    ``checkpoint``: model id or local path for SSL models (``from_pretrained``).
    ``normalize``: SSL input scaling: ``on`` (zero mean, unit variance per clip), ``off``,
    or ``checkpoint`` (its feature extractor's ``do_normalize``); the effective value is in
    the cache config. ``layers``: keep only these layers in the cache (``--layers``).
    """

    checkpoint: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    batch_seconds: float = 120.0
    workers: int = 0
    chunk_seconds: float = 20.0
    dtype: str = "float32"        # cache storage dtype: float32 or float16
    seed: int = 0
    train_epochs: int | None = None   # task CNNs: cap on training epochs (None = until lr < 1e-6)
    rms_db: float | None = None   # SSL: RMS-normalise each clip to this dBFS level first (None = off)

    cnn_arch: str = "paper"           # task CNNs: paper | sinc (exvo.extract.cnn.model)
    cnn_seeds: int = 1                # task CNNs: CNNs trained (seeds seed..seed+N-1), one cache layer each
    crossfit: int = 0                 # task CNNs: K >= 2 embeds Train clips by CNNs that never saw their speaker
    layers: str | None = None     # --layers: kept subset of layers (None = all; see exvo.extract.layers)
    normalize: str = "checkpoint"  # SSL input: on | off | checkpoint (its feature extractor's do_normalize)

    def __post_init__(self):
        # every family must see a valid value, also those that do not use it (openSMILE runs on
        # the CPU whatever --device says): a typo must not pass silently
        import re

        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"--precision must be fp32, fp16 or bf16, got {self.precision!r}")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"--dtype must be float32 or float16, got {self.dtype!r}")
        if self.normalize not in ("on", "off", "checkpoint"):
            raise ValueError(f"--normalize must be on, off or checkpoint, got {self.normalize!r}")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class ClipResult:
    """One clip's outcome: ``embedding`` ``(n_layers, dim)`` float32, or ``error``."""

    id: str
    embedding: np.ndarray | None = None
    error: str | None = None
    seconds: float = 0.0           # audio duration, s
    note: str | None = None        # non-fatal remark (e.g. "padded: 0.01 s < 0.25 s")


class Extractor(ABC):
    """Base class. Subclasses set ``name`` and implement :meth:`config` and :meth:`embed`.

    Override :meth:`run` for batching or parallelism; the default decodes and embeds
    one clip at a time and turns any per-clip exception into a :class:`ClipResult` error.
    """

    name: str
    version: ClassVar[str] = "1"   # bump when the code changes the numbers

    def prepare(self, corpus: Corpus, cache_dir: Path) -> None:
        """Anything needed before :meth:`config` is final (e.g. train a task CNN)."""

    @abstractmethod
    def config(self) -> dict:
        """JSON-able dict of everything that changes the numbers (stored in the cache)."""

    @abstractmethod
    def embed(self, wav: np.ndarray) -> np.ndarray:
        """One clip: ``wav`` ``(n_samples,)`` float32 16 kHz → ``(n_layers, dim)`` float32."""

    def feature_names(self) -> list[str] | None:
        """Names of the ``dim`` features, when meaningful (openSMILE)."""
        return None

    def run(self, items: Sequence[tuple[str, Path]]) -> Iterator[ClipResult]:
        """Embed ``(File_ID, path)`` pairs; yields one result per item, any order."""
        for cid, path in items:
            yield embed_one(self, cid, path)

    def close(self) -> None:
        """Release workers/devices."""


def embed_one(ex: Extractor, cid: str, path: Path) -> ClipResult:
    try:
        wav, note = read_audio(path)
    except AudioError as e:
        return ClipResult(cid, error=e.reason)
    try:
        emb = ex.embed(wav)
    except Exception as e:  # one bad clip must not stop the run
        return ClipResult(cid, error=f"{type(e).__name__}: {e}", seconds=wav.size / 16000)
    return ClipResult(cid, embedding=np.asarray(emb, dtype=np.float32), seconds=wav.size / 16000,
                      note=join_notes(note))


def mean_std(frames: np.ndarray) -> np.ndarray:
    """``(n_frames, dim)`` → ``(2*dim,)``: mean ‖ population std (ddof=0), float64 math."""
    f = np.asarray(frames, dtype=np.float64)
    return np.concatenate([f.mean(axis=0), f.std(axis=0)]).astype(np.float32)


def hash_files(paths: Sequence[Path]) -> str:
    """sha256 of file contents (for local weights in configs)."""
    h = hashlib.sha256()
    for p in sorted(Path(q) for q in paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


Factory = Callable[[str, ExtractOptions], Extractor]
_REGISTRY: dict[str, Factory] = {}
_HELP: dict[str, str] = {}


def register(*names: str, help: str | dict[str, str] = "") -> Callable[[Factory], Factory]:
    """Register ``factory(name, opts)`` under each of ``names``.

    ``help`` is one line shown by ``exvo extract --list``: a string for all names, or a
    ``{name: line}`` dict when the names differ.
    """
    def deco(f: Factory) -> Factory:
        for n in names:
            if n in _REGISTRY:
                raise ValueError(f"extractor {n!r} registered twice")
            _REGISTRY[n] = f
            _HELP[n] = help.get(n, "") if isinstance(help, dict) else help
        return f
    return deco


def _load_families() -> None:
    # importing the family modules runs their @register decorators
    from exvo.extract import families  # noqa: F401


def names() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def describe() -> dict[str, str]:
    _load_families()
    return dict(sorted(_HELP.items()))


Resolver = Callable[[str, "Path | None"], "Factory | None"]
_RESOLVERS: list[Resolver] = []


def add_resolver(fn: Resolver) -> Resolver:
    """Register ``fn(name, cache_dir) -> factory | None``, consulted for names outside the
    registry (e.g. task CNNs a user trained, saved under ``<cache>/models/``)."""
    _RESOLVERS.append(fn)
    return fn


def find(name: str, cache_dir: str | Path | None = None) -> Factory | None:
    """The factory for ``name``: registered, else the first resolver that knows it, else None."""
    _load_families()
    if name in _REGISTRY:
        return _REGISTRY[name]
    for r in _RESOLVERS:
        f = r(name, Path(cache_dir) if cache_dir is not None else None)
        if f is not None:
            return f
    return None


def get_extractor(name: str, opts: ExtractOptions | None = None, cache_dir: str | Path | None = None) -> Extractor:
    """Build a registered (or resolvable, see :func:`add_resolver`) extractor; an unknown name lists the choices."""
    f = find(name, cache_dir)
    if f is None:
        raise KeyError(f"unknown extractor {name!r}; choose one of: {', '.join(sorted(_REGISTRY))} "
                       "(or a CNN trained with `exvo train-cnn`, found in <cache>/models/)")
    return f(name, opts or ExtractOptions())
