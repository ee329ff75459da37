"""The HDF5 embedding store (DESIGN.md, "Embedding cache contract").

File ``<cache>/<corpus>/<extractor>.h5``:

* ``ids``       ``(N,)`` UTF-8 strings, ``File_ID`` as in ``data_info.csv``, corpus order
* ``features``  ``(N, L, F)`` float32 (or float16), chunked ``(rows, 1, F)`` so that one
  layer of every clip is read without touching the other layers; fletcher32 checksums
  so a damaged file is detected instead of read as zeros
* attrs ``format`` = ``"exvo-embeddings/1"``, ``extractor``, ``config`` (JSON),
  ``fingerprint`` (sha256 of config + file names, sizes and mtimes), ``feature_names``

Crash safety. HDF5 is not journaled, so a kill -9 in the middle of an HDF5 write can
leave a file unreadable. Work in progress therefore goes to *parts*: small ``.npz``
files in ``<extractor>.parts/``, each written to a temporary name, fsynced and renamed,
so a part either exists whole or not at all. The ``.h5`` is only ever produced by
:func:`CacheWriter.finalize` into a temporary file that is renamed over the old one.
An interrupted run leaves its parts; the next run reads them and goes on. The final
file is written in corpus order from whatever parts exist, so it is byte-for-byte
the same in ``features`` whether or not the run was interrupted.

Parts are written every ``part_size`` clips or ``flush_seconds`` seconds, whichever
comes first, so a kill costs at most that much work. Temporary files left by a killed
write (``*.tmp<pid>``) are removed by the next writer, which holds the lock.
Finalizing streams: it writes the ``.h5`` in blocks of about 64 MiB, reading rows from
the old file and from the parts, so memory stays flat for a 12 GB SSL cache. A run that
adds nothing (no parts, same ids) leaves the file untouched.

Integrity. ``features`` carries fletcher32 checksums per chunk; the ids carry a sha256
(attribute ``ids_sha256``) checked on opening. A damaged or truncated file raises
:class:`CacheError` telling to rebuild it; it is never read as zeros.

Concurrency. A writer holds an exclusive ``flock`` on ``<extractor>.lock``; a second
writer is refused with a message naming the lock. The lock file is removed when the
writer finishes (one left behind by a killed writer is harmless: its lock died with it).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from exvo.corpus import _listing

FORMAT = "exvo-embeddings/1"
TARGET_CHUNK_BYTES = 1 << 20
FINALIZE_BLOCK_BYTES = 64 << 20
"""Rows are copied into the final file in blocks of about this size (memory bound)."""


class CacheError(RuntimeError):
    """The cache cannot be used as asked; the message says why and what to do."""


class CacheMismatch(CacheError):
    """The cache was built with other settings than requested."""


class CacheBusy(CacheError):
    """Another process is writing the same cache."""


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


def _fsync_dir(d: Path) -> None:
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


def _damaged(path: Path, e: BaseException) -> CacheError:
    return CacheError(
        f"{path} is damaged (checksum or truncation: {type(e).__name__}: {e}); "
        "delete it or rebuild with `exvo extract ... --overwrite`"
    )


def _lru_misses(seq: Sequence[int], capacity: int) -> int:
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


def _config_diff(a: dict, b: dict) -> str:
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
                if fmt != FORMAT:
                    raise CacheError(f"{self.path} has format {fmt!r}, expected {FORMAT!r}; rebuild it with --overwrite")
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
        except CacheError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
            raise CacheError(
                f"{self.path} is damaged or not an exvo cache ({type(e).__name__}: {e}); "
                "delete it or rebuild with `exvo extract ... --overwrite`"
            ) from None
        if len(shape) != 3 or shape[0] != len(self.ids):
            raise CacheError(f"{self.path}: features shape {shape} does not fit {len(self.ids)} ids; rebuild it")
        if digest is not None and str(digest) != ids_digest(self.ids):
            raise CacheError(f"{self.path}: the stored ids do not match their checksum, so rows cannot be trusted; "
                             "the file is damaged: rebuild it with `exvo extract ... --overwrite`")
        self.n_layers, self.dim = int(shape[1]), int(shape[2])
        self._pos = {i: k for k, i in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def _rows(self, ids: Sequence[str] | None) -> np.ndarray | None:
        if ids is None:
            return None
        missing = [i for i in ids if i not in self._pos]
        if missing:
            raise CacheError(
                f"{self.path} lacks {len(missing)} of the {len(ids)} requested clips ({_listing(missing, 5)}); "
                f"run `exvo extract --model {self.extractor}` to complete it (failed clips are listed in its summary)"
            )
        return np.fromiter((self._pos[i] for i in ids), dtype=np.int64, count=len(ids))

    def _read(self, sel) -> np.ndarray:
        import h5py

        try:
            with h5py.File(self.path, "r") as f:
                return f["features"][sel]
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            raise _damaged(self.path, e) from None

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


class CacheWriter:
    """Incremental, crash-safe, exclusive writer for one cache file.

    Use as a context manager::

        with CacheWriter(path, extractor, config, overwrite=False) as w:
            todo = [i for i in ids if i not in w.done]
            for r in results: w.add(r.id, r.embedding)
            w.finalize(order=ids, files=paths)
    """

    def __init__(self, path: str | Path, extractor: str, config: dict, *, overwrite: bool = False,
                 dtype: str = "float32", part_size: int = 64, feature_names: list[str] | None = None,
                 flush_seconds: float = 60.0):
        if dtype not in ("float32", "float16"):
            raise ValueError(f"cache dtype must be float32 or float16, got {dtype!r}")
        if part_size < 1:
            raise ValueError(f"part_size must be >= 1 clip, got {part_size}")
        self.path = Path(path)
        self.extractor = extractor
        self.config = dict(config, storage_dtype=dtype)
        self.config_str = json.dumps(self.config, sort_keys=True, separators=(",", ":"))
        self.overwrite = overwrite
        self.dtype = np.dtype(dtype)
        self.part_size = part_size
        self.flush_seconds = flush_seconds
        self._last_flush = 0.0
        self.feature_names = feature_names
        self.parts_dir = self.path.with_suffix(".parts")
        self.lock_path = self.path.with_suffix(".lock")
        self._lock_fd: int | None = None
        self._buf_ids: list[str] = []
        self._buf: list[np.ndarray] = []
        self.done: set[str] = set()
        self._shape: tuple[int, int] | None = None

    # ------------------------------------------------------------- lifecycle
    def __enter__(self) -> "CacheWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                try:
                    holder = self.lock_path.read_text().strip()
                except OSError:
                    holder = "?"
                raise CacheBusy(
                    f"another extraction (pid {holder or '?'}) is writing {self.path}; wait for it to finish "
                    f"(the lock is {self.lock_path}, released automatically when that process ends)"
                ) from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
        except FileNotFoundError:
            same = False
        if not same:   # a writer that just finished removed this lock file: lock the current one
            os.close(fd)
            return self.__enter__()
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        try:
            self._open_state()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if self._buf_ids:
                try:
                    self.flush()  # keep what was computed, even on Ctrl-C
                except Exception:
                    if exc_type is None:
                        raise
                    # already failing (e.g. disk full): the original error is the one to report;
                    # the unflushed clips are simply extracted again on resume
        finally:
            self._release()
        return False

    def _release(self) -> None:
        if self._lock_fd is not None:
            # removed while still held, so no other writer can own it; __enter__ checks that the
            # file it locked is still the one at lock_path
            self.lock_path.unlink(missing_ok=True)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _open_state(self) -> None:
        import shutil

        # we hold the lock, so any temporary file is a leftover of a killed write
        stale = list(self.path.parent.glob(f"{self.path.name}.tmp*"))
        if self.parts_dir.is_dir():
            stale += list(self.parts_dir.glob("*.tmp*"))
        for t in stale:
            t.unlink(missing_ok=True)
        if self.overwrite:
            shutil.rmtree(self.parts_dir, ignore_errors=True)
            self.path.unlink(missing_ok=True)
        if self.path.exists():
            old = EmbeddingCache(self.path)
            if old.config_str != self.config_str:
                raise CacheMismatch(
                    f"{self.path} was built with other settings ({_config_diff(old.config, self.config)}). "
                    "Refusing to mix them: pass --overwrite to rebuild it, or --cache DIR to keep both"
                )
            self.done.update(old.ids)
            self._shape = (old.n_layers, old.dim)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        cfg_file = self.parts_dir / "config.json"
        if cfg_file.exists():
            if cfg_file.read_text() != self.config_str:
                raise CacheMismatch(
                    f"unfinished parts in {self.parts_dir} were made with other settings "
                    f"({_config_diff(json.loads(cfg_file.read_text()), self.config)}); "
                    "pass --overwrite to discard them"
                )
        else:
            self._atomic_write(cfg_file, self.config_str.encode())
        for p in self._part_files():
            ids, feats = self._load_part(p)
            if feats is None:
                continue
            self._check_shape(feats.shape[1:])
            self.done.update(ids)
        self._next_part = 1 + max((int(p.stem.split("-")[1]) for p in self._part_files()), default=-1)
        self._last_flush = time.monotonic()

    # ------------------------------------------------------------- parts
    def _part_files(self) -> list[Path]:
        return sorted(p for p in self.parts_dir.glob("part-*.npz") if re.fullmatch(r"part-\d+\.npz", p.name))

    @staticmethod
    def _load_part(p: Path) -> tuple[list[str], np.ndarray | None]:
        try:
            with np.load(p, allow_pickle=False) as z:
                return [str(s) for s in z["ids"]], z["features"]
        except Exception:
            # cannot happen through our atomic writes; a part damaged by other means is
            # dropped (its clips are simply extracted again) rather than read as garbage
            p.rename(p.with_suffix(".damaged"))
            return [], None

    def _atomic_write(self, dest: Path, data: bytes) -> None:
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _check_shape(self, shape) -> None:
        shape = tuple(int(s) for s in shape)
        if self._shape is None:
            self._shape = shape
        elif shape != self._shape:
            raise CacheError(f"embedding shape {shape} differs from earlier clips {self._shape} in {self.path}")

    def add(self, cid: str, embedding: np.ndarray) -> None:
        """Queue one clip's ``(L, F)`` embedding; parts are written every ``part_size`` clips."""
        e = np.asarray(embedding)
        if e.ndim != 2:
            raise CacheError(f"embedding of {cid} has shape {e.shape}; expected (n_layers, dim)")
        if not np.isfinite(e).all():
            raise CacheError(f"embedding of {cid} contains NaN/inf; not stored")
        self._check_shape(e.shape)
        self._buf_ids.append(cid)
        self._buf.append(e.astype(self.dtype))
        self.done.add(cid)
        if len(self._buf_ids) >= self.part_size or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write queued clips as one atomic part file."""
        if not self._buf_ids:
            return
        import io

        bio = io.BytesIO()
        np.savez(bio, ids=np.array(self._buf_ids, dtype=str), features=np.stack(self._buf))
        self._atomic_write(self.parts_dir / f"part-{self._next_part:06d}.npz", bio.getvalue())
        self._next_part += 1
        self._buf_ids, self._buf = [], []
        self._last_flush = time.monotonic()

    # ------------------------------------------------------------- finalize
    def finalize(self, order: Sequence[str], files: Sequence[Path]) -> Path:
        """Write the ``.h5`` from the old file + parts, rows in ``order`` (ids not done are skipped).

        ``files`` are the audio files of ``order`` (for the fingerprint). Streams in blocks
        of about :data:`FINALIZE_BLOCK_BYTES`; parts override rows of the old file.
        """
        import h5py

        self.flush()
        parts = self._part_files()
        # where each clip's row lives: (-1, row) in the old file or (part index, row)
        loc: dict[str, tuple[int, int]] = {}
        old_ids: list[str] = []
        if self.path.exists():
            old_ids = EmbeddingCache(self.path).ids
            loc.update((i, (-1, k)) for k, i in enumerate(old_ids))
        part_paths: list[Path] = []
        for p in parts:
            try:
                with np.load(p, allow_pickle=False) as z:
                    pids = [str(x) for x in z["ids"]]
            except Exception:
                continue  # unreadable part: its clips are not cached and get extracted again
            loc.update((i, (len(part_paths), k)) for k, i in enumerate(pids))
            part_paths.append(p)
        ids = [i for i in order if i in loc]
        if not ids or (not part_paths and ids == old_ids):
            return self.path      # nothing new: leave the file (possibly many GB) untouched
        L, F = self._shape
        isz = self.dtype.itemsize
        row_bytes = L * F * isz
        rows = max(1, min(len(ids), TARGET_CHUNK_BYTES // (F * isz)))
        block = rows * max(1, FINALIZE_BLOCK_BYTES // (rows * row_bytes))
        part_rows = np.bincount([loc[i][0] for i in ids if loc[i][0] >= 0], minlength=len(part_paths))
        capacity = max(2, FINALIZE_BLOCK_BYTES // max(1, int(part_rows.max(initial=1)) * row_bytes))
        seq = [loc[i][0] for i in ids]
        # Parts in about corpus order (one clip after another, or workers a few chunks apart)
        # are read through a small LRU. Parts in another order (e.g. length-sorted batches)
        # would make the LRU reload each part many times: their rows are first scattered
        # into a raw staging file, one part at a time, then read back block by block.
        staged = _lru_misses(seq, capacity) > 2 * len(part_paths) + 8
        loaded: OrderedDict[int, np.ndarray] = OrderedDict()

        def part_feats(k: int) -> np.ndarray:
            if k not in loaded:
                if len(loaded) >= capacity:
                    loaded.popitem(last=False)
                loaded[k] = self._load_part_checked(part_paths[k])
            loaded.move_to_end(k)
            return loaded[k]

        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        stage = self.path.with_name(self.path.name + f".tmp{os.getpid()}.stage")
        src = h5py.File(self.path, "r") if old_ids else None
        sfd = None
        try:
            if staged:
                pos = {i: n for n, i in enumerate(ids)}
                sfd = os.open(stage, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
                for k in range(len(part_paths)):
                    feats = self._load_part_checked(part_paths[k])
                    for i, (kk, r) in ((i, loc[i]) for i in self._part_ids(part_paths[k])):
                        if kk == k and i in pos:
                            os.pwrite(sfd, feats[r].tobytes(), pos[i] * row_bytes)
                    del feats
            with h5py.File(tmp, "w") as f:
                f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
                d = f.create_dataset("features", shape=(len(ids), L, F), dtype=self.dtype,
                                     chunks=(rows, 1, F), fletcher32=True)
                for s in range(0, len(ids), block):
                    bids = ids[s:s + block]
                    if staged:
                        buf = os.pread(sfd, len(bids) * row_bytes, s * row_bytes)
                        buf += bytes(len(bids) * row_bytes - len(buf))   # a trailing hole reads short
                        out = np.frombuffer(bytearray(buf), dtype=self.dtype).reshape(len(bids), L, F)
                    else:
                        out = np.empty((len(bids), L, F), dtype=self.dtype)
                        for j, i in enumerate(bids):
                            k, r = loc[i]
                            if k >= 0:
                                out[j] = part_feats(k)[r]
                    from_old = [(j, loc[i][1]) for j, i in enumerate(bids) if loc[i][0] < 0]
                    if from_old:
                        self._copy_old(src["features"], from_old, out)
                    d[s:s + len(bids)] = out
                f.attrs["format"] = FORMAT
                f.attrs["extractor"] = self.extractor
                f.attrs["config"] = self.config_str
                f.attrs["fingerprint"] = files_fingerprint(self.config_str, files)
                f.attrs["ids_sha256"] = ids_digest(ids)
                if self.feature_names is not None:
                    f.attrs["feature_names"] = json.dumps(self.feature_names)
            if src is not None:
                src.close()
                src = None
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except BaseException:
            if src is not None:
                src.close()
            tmp.unlink(missing_ok=True)
            raise
        finally:
            if sfd is not None:
                os.close(sfd)
            stage.unlink(missing_ok=True)
        # parts are removed only once the .h5 that contains them is safely in place
        for p in parts:
            p.unlink(missing_ok=True)
        if not self._part_files():
            self.discard_parts()
        return self.path

    def _load_part_checked(self, p: Path) -> np.ndarray:
        try:
            with np.load(p, allow_pickle=False) as z:
                return z["features"].astype(self.dtype, copy=False)
        except Exception as e:
            raise CacheError(f"part {p} became unreadable while finalizing ({e}); "
                             "run the extraction again (that part's clips are re-extracted)") from None

    @staticmethod
    def _part_ids(p: Path) -> list[str]:
        with np.load(p, allow_pickle=False) as z:
            return [str(x) for x in z["ids"]]

    def _copy_old(self, dset, picks: list[tuple[int, int]], out: np.ndarray) -> None:
        """``out[j] = dset[r]`` for ``(j, r)`` in ``picks``, reading a contiguous slab when rows are dense."""
        rs = np.array([r for _, r in picks], dtype=np.int64)
        js = np.array([j for j, _ in picks], dtype=np.int64)
        lo, hi = int(rs.min()), int(rs.max()) + 1
        try:
            if hi - lo <= 2 * len(rs) + 64:
                out[js] = dset[lo:hi][rs - lo]
            else:
                order = np.argsort(rs)
                out[js[order]] = dset[np.unique(rs)][np.searchsorted(np.unique(rs), rs[order])]
        except (OSError, RuntimeError, ValueError) as e:
            raise _damaged(self.path, e) from None

    def discard_parts(self) -> None:
        import shutil

        shutil.rmtree(self.parts_dir, ignore_errors=True)
