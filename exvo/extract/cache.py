"""The HDF5 embedding store (DESIGN.md, "Embedding cache contract"). Reader side.

A cache is keyed by clip: for one extractor config it keeps every row it ever
completed, whatever table asked for it. A table listing fewer clips reads a subset;
one listing more adds rows. Each row carries the identity of the audio it was made
from (:mod:`exvo.extract.identity`), so changed audio is re-extracted by ``exvo
extract`` and refused by ``exvo learn`` instead of being served stale.

On-disk layout of ``<cache>/<corpus>/<extractor>.h5`` (format ``exvo-embeddings/2``):

* ``ids``       ``(N,)`` UTF-8 strings, ``File_ID`` as in ``data_info.csv``; rows in the
  order of the table that last wrote the file, then rows that table did not list
* ``features``  ``(N, L, F)`` float32 (or float16), chunked ``(rows, 1, F)`` so that one
  layer of every clip is read without touching the other layers; fletcher32 checksums
  so a damaged file is detected instead of read as zeros
* ``identity``  ``(N, 2)`` int64 ``[size bytes, mtime ns]`` of each clip's audio file when
  it was extracted (``-1``: unknown); ``digest`` ``(N,)`` ASCII, BLAKE2b-128 hex of
  the file's bytes (``""``: unknown). Both fletcher32-checked
* attrs ``format``, ``extractor``, ``config`` (JSON; ``layers_kept``: original indices of
  the stored layers when ``--layers`` kept a subset, see :attr:`EmbeddingCache.layer_ids`), ``fingerprint`` (sha256 of config,
  ids and identities), ``ids_sha256`` (checked on opening), ``feature_names``

Beside it, while a run is unfinished: ``<extractor>.parts/`` with ``config.json`` (the
config its parts were made with), ``part-NNNNNN.npz`` files (``ids``, ``features``,
``identity``, ``digest``: whole clips, each written to a temporary name, fsynced and
renamed) and, for a ``--overwrite`` rebuild, a ``REBUILD`` marker; ``<extractor>.lock``
(``flock``, one writer at a time; removed when the writer finishes — one left by a killed
writer is harmless, its lock died with it); ``<extractor>.summary.json`` (last run's summary).

The ``.h5`` is only ever produced by :meth:`CacheWriter.finalize` into a temporary file
renamed over the old one: merge = old rows ∪ part rows (parts win, being newer), so
part files written by any process (e.g. one per shard) merge the same way. A rebuild
(``--overwrite``) ignores the old rows and replaces the old file only once it holds
every clip of the table that the old file held; until then the old file stays as it
was and the rebuild waits in its parts. See docs/faults.md for the guarantees.

Format ``exvo-embeddings/1`` files (no identities) are still read; their rows count as
"identity unknown" until ``exvo extract`` records it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from exvo.corpus import listing
from exvo.extract.identity import UNKNOWN, ClipIdentity, compare, from_arrays

FORMAT = "exvo-embeddings/2"
READABLE_FORMATS = ("exvo-embeddings/1", FORMAT)
TARGET_CHUNK_BYTES = 1 << 20
FINALIZE_BLOCK_BYTES = 64 << 20
"""Rows are copied into the final file in blocks of about this size (memory bound)."""


class CacheError(RuntimeError):
    """The cache cannot be used as asked; the message says why and what to do."""


class CacheMismatch(CacheError):
    """The cache was built with other settings than requested."""


class CacheBusy(CacheError):
    """Another process is writing the same cache."""


class CacheDtypeError(CacheError):
    """The extractor's values do not fit the storage dtype (fatal for the run, not one clip)."""


def cache_path(cache_dir: str | Path, corpus_name: str, extractor: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_.@-]+", extractor):
        raise ValueError(f"extractor name {extractor!r} is not a safe file name")
    return Path(cache_dir) / corpus_name / f"{extractor}.h5"


def files_fingerprint(config_str: str, files: Iterable[Path]) -> str:
    """sha256 over the config and (name, size, mtime_ns) of each file (missing: -1)."""
    h = hashlib.sha256(config_str.encode())
    for p in files:
        try:
            st = os.stat(p)
            h.update(f"{Path(p).name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{Path(p).name}\0-1\0-1\n".encode())
    return h.hexdigest()


def fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ids_digest(ids: Sequence[str]) -> str:
    """sha256 of the ids in order (stored as ``ids_sha256``; HDF5 strings carry no checksum)."""
    h = hashlib.sha256()
    for i in ids:
        h.update(i.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


def damaged_error(path: Path, e: BaseException) -> CacheError:
    return CacheError(
        f"{path} is damaged (checksum or truncation: {type(e).__name__}: {e}); run the `exvo extract` command "
        "that made it again (same options, without --overwrite): it checks every row and re-extracts only the "
        "damaged ones"
    )


def lru_misses(seq: Sequence[int], capacity: int) -> int:
    """Loads an LRU of ``capacity`` parts needs to serve part indices ``seq`` (negatives: not a part)."""
    cache: OrderedDict[int, None] = OrderedDict()
    misses = 0
    for k in seq:
        if k < 0:
            continue
        if k in cache:
            cache.move_to_end(k)
            continue
        misses += 1
        cache[k] = None
        if len(cache) > capacity:
            cache.popitem(last=False)
    return misses


def config_diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    diffs = [f"{k}: cache={a.get(k, '<absent>')!r} requested={b.get(k, '<absent>')!r}"
             for k in keys if a.get(k, "<absent>") != b.get(k, "<absent>")]
    return "; ".join(diffs) or "(key order only)"


class EmbeddingCache:
    """Read-only view of a finished cache file.

    ``ids`` ``(N,)`` list; ``n_layers`` L; ``dim`` F; ``config`` dict.
    """

    def __init__(self, path: str | Path):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise CacheError(f"no embedding cache at {self.path}")
        try:
            with h5py.File(self.path, "r") as f:
                fmt = f.attrs.get("format")
                if fmt not in READABLE_FORMATS:
                    raise CacheError(f"{self.path} has format {fmt!r}, expected {FORMAT!r}; rebuild it with --overwrite")
                self.format = str(fmt)
                self.ids = [s.decode() if isinstance(s, bytes) else str(s) for s in f["ids"][()]]
                shape = f["features"].shape
                self.dtype = f["features"].dtype
                self.extractor = str(f.attrs["extractor"])
                self.config_str = str(f.attrs["config"])
                self.config = json.loads(self.config_str)
                self.fingerprint = str(f.attrs["fingerprint"])
                names = f.attrs.get("feature_names")
                self.feature_names = json.loads(names) if names is not None else None
                digest = f.attrs.get("ids_sha256")
                if "identity" in f:
                    stat = f["identity"][()]
                    dig = [d.decode() if isinstance(d, bytes) else str(d) for d in f["digest"][()]]
                    self.identities = from_arrays(stat, dig)
                else:
                    self.identities = [UNKNOWN] * len(self.ids)
        except CacheError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
            raise CacheError(
                f"{self.path} is damaged or not an exvo cache ({type(e).__name__}: {e}); "
                "delete it or rebuild with `exvo extract ... --overwrite`"
            ) from None
        if len(shape) != 3 or shape[0] != len(self.ids) or len(self.identities) != len(self.ids):
            raise CacheError(f"{self.path}: features shape {shape} does not fit {len(self.ids)} ids; rebuild it")
        if digest is not None and str(digest) != ids_digest(self.ids):
            raise CacheError(f"{self.path}: the stored ids do not match their checksum, so rows cannot be trusted; "
                             "the file is damaged: rebuild it with `exvo extract ... --overwrite`")
        self.n_layers, self.dim = int(shape[1]), int(shape[2])
        self._pos = {i: k for k, i in enumerate(self.ids)}
        # original index of each stored layer (``--layers`` keeps a subset; exvo.extract.layers)
        kept = self.config.get("layers_kept") if isinstance(self.config, dict) else None
        self.layer_ids: list[int] = [int(k) for k in kept] if kept else list(range(self.n_layers))
        if len(self.layer_ids) != self.n_layers:
            raise CacheError(f"{self.path}: config lists {len(self.layer_ids)} kept layers but the file stores "
                             f"{self.n_layers}; the file is damaged: rebuild it with `exvo extract ... --overwrite`")

    def __len__(self) -> int:
        return len(self.ids)

    def identity(self, cid: str) -> ClipIdentity:
        """Stored identity of one clip's audio (``UNKNOWN`` for format-1 files)."""
        return self.identities[self._pos[cid]]

    def changed_clips(self, ids: Sequence[str], paths: Sequence[Path]) -> list[str]:
        """Ids among ``ids`` whose audio ``paths`` differ from what their rows were made from.

        One ``stat`` per clip; a file is read (digest) only when its size matches but its
        mtime moved. Unknown identities (format-1 rows) count as changed.
        """
        changed, _ = compare([self.identity(i) for i in ids], paths)
        return [ids[k] for k in changed]

    def _rows(self, ids: Sequence[str] | None) -> np.ndarray | None:
        if ids is None:
            return None
        missing = [i for i in ids if i not in self._pos]
        if missing:
            raise CacheError(
                f"{self.path} lacks {len(missing)} of the {len(ids)} requested clips ({listing(missing, 5)}); "
                f"run `exvo extract --model {self.extractor}` to complete it (failed clips are listed in its summary)"
            )
        return np.fromiter((self._pos[i] for i in ids), dtype=np.int64, count=len(ids))

    def damaged_rows(self) -> list[int]:
        """Rows whose stored features fail their checksum (every row of a damaged chunk), in order.

        Reads the whole ``features`` dataset once, in blocks of whole chunks of about
        ``FINALIZE_BLOCK_BYTES``; a block that fails is read again chunk by chunk.
        """
        import h5py

        bad: list[int] = []
        n = len(self.ids)
        try:
            with h5py.File(self.path, "r") as f:
                d = f["features"]
                rows = int(d.chunks[0]) if d.chunks else max(1, n)
                row_bytes = max(1, self.n_layers * self.dim * self.dtype.itemsize)
                block = rows * max(1, FINALIZE_BLOCK_BYTES // (rows * row_bytes))
                for s in range(0, n, block):
                    try:
                        d[s:s + block]
                        continue
                    except (OSError, RuntimeError, ValueError):
                        pass
                    for c in range(s, min(s + block, n), rows):
                        try:
                            d[c:c + rows]
                        except (OSError, RuntimeError, ValueError):
                            bad.extend(range(c, min(c + rows, n)))
        except OSError as e:
            raise damaged_error(self.path, e) from None
        return bad

    def _read(self, sel) -> np.ndarray:
        import h5py

        try:
            with h5py.File(self.path, "r") as f:
                return f["features"][sel]
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            raise damaged_error(self.path, e) from None

    def layer(self, layer: int = -1, ids: Sequence[str] | None = None, dtype=np.float32) -> np.ndarray:
        """``(len(ids), F)`` matrix of one layer (negative counts from the last), rows aligned to ``ids``.

        Only that layer's chunks are read from disk.
        """
        if not -self.n_layers <= layer < self.n_layers:
            raise CacheError(f"layer {layer} out of range for {self.extractor} with {self.n_layers} layers "
                             f"(valid: 0..{self.n_layers - 1} or negative from the end)")
        x = self._read(np.s_[:, layer % self.n_layers, :])
        rows = self._rows(ids)
        if rows is not None:
            x = x[rows]
        return np.asarray(x, dtype=dtype)

    def all_layers(self, ids: Sequence[str] | None = None, dtype=np.float32) -> np.ndarray:
        """``(len(ids), L, F)``, rows aligned to ``ids``."""
        x = self._read(np.s_[...])
        rows = self._rows(ids)
        return np.asarray(x if rows is None else x[rows], dtype=dtype)
