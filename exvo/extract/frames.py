"""Frame-level cache: one SSL layer's frames per clip, pooled over K frames, as a ragged HDF5 store
(the store: reader and writer; :mod:`exvo.extract.frames_run` runs a model into it).

``exvo extract --model M --frames [--layer L --pool-frames K]`` writes
``<cache>/<corpus>/<M>.frames.h5`` (the utterance cache ``<M>.h5`` is a separate file):

* ``ids``      ``(N,)`` UTF-8 ``File_ID`` s, corpus order
* ``offsets``  ``(N + 1,)`` int64: clip ``i`` owns rows ``offsets[i]:offsets[i+1]`` of ``frames``
* ``frames``   ``(total frames, H)`` float32 or float16, fletcher32-checksummed chunks
* attrs ``format`` = ``"exvo-frames/1"``, ``extractor``, ``config`` (JSON: the SSL config +
  layer, K, storage dtype), ``fingerprint`` (config + audio names/sizes/mtimes), ``ids_sha256``

Pooling: frame ``j`` of the stored sequence is the mean of the model's frames
``jK … jK+K−1``; a last group shorter than K is the mean of the frames it has, so a clip of T
model frames stores ``ceil(T / K)`` rows (the paper's temporal pooling before its GRU).

Same guarantees as the utterance cache: work in progress goes to atomic *parts* (``.npz``
written to a temporary name, fsynced, renamed) in ``<M>.frames.parts/``; the ``.h5`` is
only ever made by :meth:`FrameWriter.finalize` into a temporary file renamed over the old
one (also with ``--overwrite``: the old file stays until the new one is complete), in corpus order, so a run killed at any point (kill -9 included) resumes where it
stopped and ends with the same file as an uninterrupted run. A cache or parts made with
other settings are refused (``--overwrite`` rebuilds); one writer at a time (``flock``).

Size for the real corpus (59,201 clips × 2.2 s ≈ 6.5 M frames at 50 frames/s), WavLM-large
(1024 dims): K = 1: 13.3 GB float16 / 26.7 GB float32; K = 2: 6.7 / 13.3 GB; K = 4: 3.3 / 6.7 GB.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from exvo.extract.cache import CacheError, CacheMismatch, config_diff, fsync_dir
from exvo.extract.cache import files_fingerprint, ids_digest
from exvo.extract.cache_writer import acquire_writer_lock, release_writer_lock, remove_stale_temporaries

FORMAT = "exvo-frames/1"
POOLING = "mean over K consecutive frames; a last group shorter than K is the mean of its frames"
CHUNK_ROWS_BYTES = 1 << 20


def safe_name(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9_.@-]+", name))


def frames_path(cache_dir: str | Path, corpus_name: str, name: str) -> Path:
    if not safe_name(name):
        raise ValueError(f"extractor name {name!r} is not a safe file name")
    return Path(cache_dir) / corpus_name / f"{name}.frames.h5"


def pool_frames(frames: np.ndarray, k: int) -> np.ndarray:
    """``(T, H)`` → ``(ceil(T / k), H)``: means of consecutive groups of ``k`` frames (float64 math)."""
    f = np.asarray(frames, dtype=np.float64)
    T = f.shape[0]
    if k == 1 or T == 0:
        return f.astype(np.float32)
    full = T // k
    out = [f[:full * k].reshape(full, k, f.shape[1]).mean(axis=1)]
    if T % k:
        out.append(f[full * k:].mean(axis=0, keepdims=True))
    return np.concatenate(out).astype(np.float32)


class FrameCache:
    """Read-only view of a ``.frames.h5``: ``ids``, ``offsets``, ``dim``, ``config``; sequences by id."""

    def __init__(self, path: str | Path):
        import h5py

        self.path = Path(path)
        try:
            with h5py.File(self.path, "r") as f:
                if f.attrs.get("format") != FORMAT:
                    raise CacheError(f"{self.path} is not an exvo frame cache (format {f.attrs.get('format')!r}, "
                                     f"expected {FORMAT!r}); rebuild it with `exvo extract --frames --overwrite`")
                self.ids = [s.decode() if isinstance(s, bytes) else str(s) for s in f["ids"][()]]
                self.offsets = f["offsets"][()].astype(np.int64)
                self.n_frames, self.dim = (int(s) for s in f["frames"].shape)
                self.dtype = f["frames"].dtype
                self.config_str = str(f.attrs["config"])
                self.fingerprint = str(f.attrs["fingerprint"])
                self.name = str(f.attrs["extractor"])
                digest = str(f.attrs["ids_sha256"])
        except CacheError:
            raise
        except (OSError, KeyError, ValueError) as e:
            raise CacheError(f"{self.path} is damaged or incomplete ({type(e).__name__}: {e}); delete it or rebuild "
                             "with `exvo extract --frames --overwrite`") from e
        self.config = json.loads(self.config_str)
        ok = (len(self.offsets) == len(self.ids) + 1 and self.offsets[0] == 0 and self.offsets[-1] == self.n_frames
              and bool(np.all(np.diff(self.offsets) >= 1)))
        if not ok or digest != ids_digest(self.ids):
            raise CacheError(f"{self.path}: ids/offsets are inconsistent with the frames (damaged file); rebuild it "
                             "with `exvo extract --frames --overwrite`")
        self._pos = {i: k for k, i in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def lengths_of(self, ids: Sequence[str]) -> np.ndarray:
        """Stored frames per clip of ``ids`` ``(n,)`` int64 (KeyError names an absent id)."""
        k = np.array([self._pos[i] for i in ids], dtype=np.int64)
        return self.offsets[k + 1] - self.offsets[k]

    def iter_sequences(self, ids: Sequence[str], dtype=np.float32) -> Iterator[np.ndarray]:
        """``(T_i, dim)`` arrays of ``ids`` in the given order (checksums verified on read)."""
        import h5py

        with h5py.File(self.path, "r") as f:
            ds = f["frames"]
            for i in ids:
                k = self._pos[i]
                try:
                    yield ds[self.offsets[k]:self.offsets[k + 1]].astype(dtype)
                except OSError as e:
                    raise CacheError(f"{self.path} is damaged (checksum: {e}); rebuild it with "
                                     "`exvo extract --frames --overwrite`") from e

    def sequence(self, cid: str) -> np.ndarray:
        return next(self.iter_sequences([cid]))


class FrameWriter:
    """Crash-safe, exclusive writer of one ``.frames.h5`` (context manager; see the module docstring)."""

    def __init__(self, path: str | Path, extractor: str, config: dict, *, overwrite: bool = False,
                 dtype: str = "float16", part_size: int = 64, flush_seconds: float = 60.0):
        if dtype not in ("float32", "float16"):
            raise ValueError(f"frame cache dtype must be float32 or float16, got {dtype!r}")
        if part_size < 1:
            raise ValueError(f"part_size must be >= 1 clip, got {part_size}")
        self.path, self.extractor = Path(path), extractor
        self.config = dict(config, storage_dtype=dtype, format=FORMAT)
        self.config_str = json.dumps(self.config, sort_keys=True, separators=(",", ":"))
        self.overwrite, self.dtype = overwrite, np.dtype(dtype)
        self.part_size, self.flush_seconds = part_size, flush_seconds
        self.parts_dir = self.path.with_name(self.path.name[:-3] + ".parts")
        self.lock_path = self.path.with_name(self.path.name[:-3] + ".lock")
        self._fd: int | None = None
        self._buf: list[tuple[str, np.ndarray]] = []
        self.done: set[str] = set()
        self.dim: int | None = None

    def __enter__(self) -> "FrameWriter":
        self._fd = acquire_writer_lock(self.lock_path, self.path)
        try:
            self._open_state()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if self._buf:
                try:
                    self.flush()
                except Exception:
                    if exc_type is None:
                        raise
        finally:
            self._release()
        return False

    def _release(self) -> None:
        if self._fd is not None:
            release_writer_lock(self._fd, self.lock_path)
            self._fd = None

    def _open_state(self) -> None:
        remove_stale_temporaries(self.path, self.parts_dir)
        if self.overwrite:   # the old file stays readable until a complete new one replaces it
            shutil.rmtree(self.parts_dir, ignore_errors=True)
        if self.path.exists() and not self.overwrite:
            old = FrameCache(self.path)
            if old.config_str != self.config_str:
                raise CacheMismatch(f"{self.path} was built with other settings ({config_diff(old.config, self.config)}). "
                                    "Refusing to mix them: pass --overwrite to rebuild it, or --cache DIR to keep both")
            self.done.update(old.ids)
            self.dim = old.dim
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        cfg_file = self.parts_dir / "config.json"
        if cfg_file.exists():
            if cfg_file.read_text() != self.config_str:
                raise CacheMismatch(f"unfinished parts in {self.parts_dir} were made with other settings "
                                    f"({config_diff(json.loads(cfg_file.read_text()), self.config)}); "
                                    "pass --overwrite to discard them")
        else:
            self._atomic_write(cfg_file, self.config_str.encode())
        for p in self._part_files():
            got = self._load_part(p)
            if got is not None:
                if self.dim is not None and got[2].shape[1] != self.dim:
                    raise CacheError(f"{p} has {got[2].shape[1]}-dim frames, the cache {self.dim}; pass --overwrite")
                self.dim = int(got[2].shape[1])
                self.done.update(got[0])
        self._next = 1 + max((int(p.stem.split("-")[1]) for p in self._part_files()), default=-1)
        self._last = time.monotonic()

    def _part_files(self) -> list[Path]:
        return sorted(p for p in self.parts_dir.glob("part-*.npz") if re.fullmatch(r"part-\d+\.npz", p.name))

    @staticmethod
    def _load_part(p: Path) -> tuple[list[str], np.ndarray, np.ndarray] | None:
        """``(ids, lengths, flat frames)``; a part damaged by other means than our writes is set aside."""
        try:
            with np.load(p, allow_pickle=False) as z:
                return [str(s) for s in z["ids"]], z["lengths"].astype(np.int64), z["frames"]
        except Exception:
            p.rename(p.with_suffix(".damaged"))
            return None

    def _atomic_write(self, dest: Path, data: bytes) -> None:
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def add(self, cid: str, frames: np.ndarray) -> None:
        """Queue one clip's ``(T, H)`` frames (T ≥ 1); parts are written every ``part_size`` clips."""
        f = np.asarray(frames)
        if f.ndim != 2 or f.shape[0] < 1:
            raise CacheError(f"frames of {cid} have shape {f.shape}; expected (n_frames >= 1, dim)")
        if not np.isfinite(f).all():
            raise CacheError(f"frames of {cid} contain NaN/inf; not stored")
        if self.dim is None:
            self.dim = int(f.shape[1])
        elif f.shape[1] != self.dim:
            raise CacheError(f"frames of {cid} have {f.shape[1]} dims, earlier clips {self.dim} ({self.path})")
        self._buf.append((cid, f.astype(self.dtype)))
        self.done.add(cid)
        if len(self._buf) >= self.part_size or time.monotonic() - self._last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        bio = io.BytesIO()
        np.savez(bio, ids=np.array([c for c, _ in self._buf], dtype=str),
                 lengths=np.array([len(f) for _, f in self._buf], dtype=np.int64),
                 frames=np.concatenate([f for _, f in self._buf]))
        self._atomic_write(self.parts_dir / f"part-{self._next:06d}.npz", bio.getvalue())
        self._next += 1
        self._buf = []
        self._last = time.monotonic()

    def finalize(self, order: Sequence[str], files: Sequence[Path]) -> Path | None:
        """Write the ``.h5`` (old file + parts, clips in ``order``; ids never done are left out),
        rename it into place, then delete the parts. Returns the path, or None when nothing is done."""
        import h5py

        self.flush()
        parts = self._part_files()
        old = FrameCache(self.path) if self.path.exists() and not self.overwrite else None
        src: dict[str, tuple[int, int, int]] = {}      # id -> (part index or -1 for the old file, start, stop)
        if old is not None:
            for k, i in enumerate(old.ids):
                src[i] = (-1, int(old.offsets[k]), int(old.offsets[k + 1]))
        for pk, p in enumerate(parts):
            got = self._load_part(p)
            if got is None:
                continue
            off = np.concatenate([[0], np.cumsum(got[1])])
            for k, i in enumerate(got[0]):
                src[i] = (pk, int(off[k]), int(off[k + 1]))        # a part overrides the old file
        ids = [i for i in order if i in src]
        if not ids:
            return None
        if old is not None and not parts and ids == old.ids:
            return self.path                                      # nothing new: leave the file untouched
        lengths = np.array([src[i][2] - src[i][1] for i in ids], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        dim = self.dim if self.dim is not None else old.dim
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        cache: OrderedDict[int, np.ndarray] = OrderedDict()

        def part_frames(pk: int) -> np.ndarray:
            if pk not in cache:
                got = self._load_part(parts[pk])
                if got is None:
                    raise CacheError(f"{parts[pk]} became unreadable during finalize; run the extraction again")
                cache[pk] = got[2]
                if len(cache) > 4:
                    cache.popitem(last=False)
            cache.move_to_end(pk)
            return cache[pk]

        try:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
                f.create_dataset("offsets", data=offsets)
                rows = max(1, min(int(offsets[-1]), CHUNK_ROWS_BYTES // (dim * self.dtype.itemsize)))
                ds = f.create_dataset("frames", shape=(int(offsets[-1]), dim), dtype=self.dtype,
                                      chunks=(rows, dim), fletcher32=True)
                oldf = h5py.File(old.path, "r") if old is not None else None
                try:
                    for k, i in enumerate(ids):
                        pk, a, b = src[i]
                        block = oldf["frames"][a:b] if pk < 0 else part_frames(pk)[a:b]
                        ds[offsets[k]:offsets[k + 1]] = block
                finally:
                    if oldf is not None:
                        oldf.close()
                f.attrs.update(format=FORMAT, extractor=self.extractor, config=self.config_str,
                               fingerprint=files_fingerprint(self.config_str, files), ids_sha256=ids_digest(ids))
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            fsync_dir(self.path.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        for p in parts:
            p.unlink(missing_ok=True)
        (self.parts_dir / "config.json").unlink(missing_ok=True)
        try:
            self.parts_dir.rmdir()
        except OSError:            # something else left in it (a set-aside damaged part): keep it
            pass
        return self.path
