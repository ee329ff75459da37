"""Writing the embedding cache: exclusive lock, crash-safe parts, streaming merge into the ``.h5``.

Layout and guarantees: :mod:`exvo.extract.cache` (module docstring) and docs/faults.md. The
merge into the ``.h5`` (row order, chunking, atomic replace): :mod:`exvo.extract.cache_assemble`.

Crash safety. HDF5 is not journaled, so a kill -9 in the middle of an HDF5 write can
leave a file unreadable. Work in progress therefore goes to *parts*: small ``.npz``
files in ``<extractor>.parts/``, each written to a temporary name, fsynced and renamed,
so a part either exists whole or not at all. The ``.h5`` is only ever produced by
:meth:`CacheWriter.finalize` into a temporary file that is renamed over the old one.
An interrupted run leaves its parts; the next run reads them and goes on. The final
file is written from whatever parts exist, in table order, so it is byte-for-byte the
same in ``features`` whether or not the run was interrupted.

Keyed by clip. Finalize writes old rows ∪ part rows: a clip is never dropped because
today's table does not list it. Parts win over old rows (a re-extraction of changed
audio replaces its row). Parts are written every ``part_size`` clips or
``flush_seconds`` seconds, whichever comes first. Temporary files left by a killed
write (``*.tmp<pid>``) are removed by the next writer, which holds the lock.
Finalizing streams in blocks of about 64 MiB, so memory stays flat for a 12 GB SSL
cache. A run that adds nothing (no parts, no identity to record) leaves the file untouched.

Rebuild (``overwrite=True``). The old file is neither read nor deleted: the rebuild
writes its own parts (marked by ``REBUILD`` in the parts folder, so an interrupted
rebuild resumes as a rebuild) and replaces the old file only when it holds every clip
of the table that the old file held. Until then ``kept_old`` says why the old file stays.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from exvo.corpus import listing
from exvo.extract import cache as C
from exvo.extract.cache_assemble import Merge, locate_rows, merge_order, plan_layout, write_cache
from exvo.extract.identity import UNKNOWN, ClipIdentity, from_arrays, to_arrays
from exvo.runs.store import LockHeld, drop_lock, take_lock

REBUILD_MARKER = "REBUILD"


def acquire_writer_lock(lock_path: Path, target: Path) -> int:
    """An exclusive ``flock`` on ``lock_path`` (created, our pid written in it); the open fd.

    One writer per cache file (the utterance cache and the frame cache alike): a second one
    is refused with :class:`CacheBusy` naming the holder's pid. The lock file is removed by
    :func:`release_writer_lock` (the run layer's :func:`~exvo.runs.store.take_lock`).
    """
    try:
        return take_lock(lock_path)
    except LockHeld as e:
        raise C.CacheBusy(
            f"another extraction (pid {e.holder}) is writing {target}; wait for it to finish "
            f"(the lock is {lock_path}, released automatically when that process ends)"
        ) from None


def remove_stale_temporaries(path: Path, parts_dir: Path) -> None:
    """Delete ``<path>.tmp*`` and ``<parts_dir>/*.tmp*``: called with the writer lock held, so every
    temporary file is the leftover of a killed write."""
    stale = list(path.parent.glob(f"{path.name}.tmp*"))
    if parts_dir.is_dir():
        stale += list(parts_dir.glob("*.tmp*"))
    for t in stale:
        t.unlink(missing_ok=True)


def release_writer_lock(fd: int, lock_path: Path) -> None:
    drop_lock(fd, lock_path)


class CacheWriter:
    """Incremental, crash-safe, exclusive writer for one cache file.

    Use as a context manager::

        with CacheWriter(path, extractor, config, overwrite=False) as w:
            todo = [i for i in ids if i not in w.done]            # w.identity[i]: stored identity
            for r in results: w.add(r.id, r.embedding, identity)
            w.finalize(order=ids)
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
        self.rebuild = overwrite
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
        self._buf_ident: list[ClipIdentity] = []
        self.done: set[str] = set()
        self.identity: dict[str, ClipIdentity] = {}
        self._touched: dict[str, ClipIdentity] = {}
        self._shape: tuple[int, int] | None = None
        self.messages: list[str] = []
        """Things the user should know about this run (resumed rebuild, old file kept …)."""
        self.kept_old: str | None = None
        """Set by a rebuild's :meth:`finalize` that did not replace the old file: why."""
        self.legacy_fingerprint: str | None = None
        """The ``fingerprint`` of a format-1 file (no per-clip identities), to adopt them."""
        self.damaged: set[str] = set()
        """Clips whose row in the ``.h5`` fails its checksum: not done (extracted again), never copied."""

    # ------------------------------------------------------------- lifecycle
    def __enter__(self) -> "CacheWriter":
        self._lock_fd = acquire_writer_lock(self.lock_path, self.path)
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
                except BaseException:
                    if exc_type is None:
                        raise
                    # already failing (e.g. disk full, a second Ctrl-C): the original error is the
                    # one to report; the unflushed clips are simply extracted again on resume
        finally:
            self._release()
        return False

    def _release(self) -> None:
        if self._lock_fd is not None:
            release_writer_lock(self._lock_fd, self.lock_path)
            self._lock_fd = None

    def _open_state(self) -> None:
        remove_stale_temporaries(self.path, self.parts_dir)
        cfg_file = self.parts_dir / "config.json"
        marker = self.parts_dir / REBUILD_MARKER
        if cfg_file.exists():
            parts_cfg = cfg_file.read_text()
            if self.overwrite:
                if parts_cfg == self.config_str and marker.exists():
                    self.messages.append(f"resuming the rebuild (--overwrite) begun earlier in {self.parts_dir}; "
                                         f"{self.path} stays as it is until the rebuild is complete")
                else:   # parts of an ordinary run or of other settings: a rebuild starts from nothing
                    shutil.rmtree(self.parts_dir)
            else:
                if parts_cfg != self.config_str:
                    raise C.CacheMismatch(
                        f"unfinished parts in {self.parts_dir} were made with other settings "
                        f"({C.config_diff(json.loads(parts_cfg), self.config)}); "
                        "pass --overwrite to discard them"
                    )
                if marker.exists():
                    self.rebuild = True
                    self.messages.append(f"{self.parts_dir} holds an unfinished rebuild (--overwrite); continuing "
                                         f"it. {self.path} stays as it is until the rebuild is complete")
        if not self.rebuild and self.path.exists():
            old = C.EmbeddingCache(self.path)
            if old.config_str != self.config_str:
                raise C.CacheMismatch(
                    f"{self.path} was built with other settings ({C.config_diff(old.config, self.config)}). "
                    "Refusing to mix them: pass --overwrite to rebuild it, or --cache DIR to keep both"
                )
            self.done.update(old.ids)
            self.identity.update(zip(old.ids, old.identities))
            self._shape = (old.n_layers, old.dim)
            if old.format != C.FORMAT:
                self.legacy_fingerprint = old.fingerprint
            self._check_rows(old)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        if not cfg_file.exists():
            self._atomic_write(cfg_file, self.config_str.encode())
        if self.rebuild and not marker.exists():
            self._atomic_write(marker, f"rebuild of {self.path.name}: it replaces the old file once complete\n".encode())
        for p in self._part_files():
            ids, feats, idents = self._load_part(p)
            if feats is None:
                continue
            self._check_shape(feats.shape[1:])
            self.done.update(ids)
            self.identity.update(zip(ids, idents))
        self._next_part = 1 + max((int(p.stem.split("-")[1]) for p in self._part_files()), default=-1)
        self._last_flush = time.monotonic()

    def _check_rows(self, old: "C.EmbeddingCache") -> None:
        """Verify every row's checksum (one read of the file): damaged rows are extracted again."""
        bad = [old.ids[r] for r in old.damaged_rows()]
        if not bad:
            return
        self.damaged = set(bad)
        self.done -= self.damaged
        self.messages.append(
            f"{len(bad)} row(s) of {self.path} fail their checksum (damaged on disk); those clips are extracted "
            f"again, the other rows are kept: {listing(bad, 10)}")

    def saved(self, ids: Sequence[str]) -> int:
        """How many of ``ids`` are on disk (in the ``.h5`` or in whole parts), not just computed."""
        pending = set(self._buf_ids)
        return sum(1 for i in set(ids) if i in self.done and i not in pending)

    # ------------------------------------------------------------- parts
    def _part_files(self) -> list[Path]:
        return sorted(p for p in self.parts_dir.glob("part-*.npz") if re.fullmatch(r"part-\d+\.npz", p.name))

    @staticmethod
    def _load_part(p: Path) -> tuple[list[str], np.ndarray | None, list[ClipIdentity]]:
        try:
            with np.load(p, allow_pickle=False) as z:
                ids = [str(s) for s in z["ids"]]
                idents = (from_arrays(z["identity"], z["digest"]) if "identity" in z.files
                          else [UNKNOWN] * len(ids))   # a part of an older exvo: identity unknown
                return ids, z["features"], idents
        except Exception:
            # cannot happen through our atomic writes; a part damaged by other means is
            # dropped (its clips are simply extracted again) rather than read as garbage
            p.rename(p.with_suffix(".damaged"))
            return [], None, []

    def _atomic_write(self, dest: Path, data: bytes) -> None:
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
            C.fsync_dir(dest.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _check_shape(self, shape) -> None:
        shape = tuple(int(s) for s in shape)
        if self._shape is None:
            self._shape = shape
        elif shape != self._shape:
            raise C.CacheError(f"embedding shape {shape} differs from earlier clips {self._shape} in {self.path}")

    def add(self, cid: str, embedding: np.ndarray, identity: ClipIdentity = UNKNOWN) -> None:
        """Queue one clip's ``(L, F)`` embedding with the identity of its audio (:func:`identify`).

        Values are checked after the cast to the storage dtype: a non-finite input is this
        clip's failure (:class:`CacheError`); a finite value that overflows float16 is a
        :class:`CacheDtypeError` for the whole run (the extractor does not fit the dtype).
        """
        e = np.asarray(embedding)
        if e.ndim != 2:
            raise C.CacheError(f"embedding of {cid} has shape {e.shape}; expected (n_layers, dim)")
        if not np.isfinite(e).all():
            raise C.CacheError(f"embedding of {cid} contains NaN/inf; not stored")
        self._check_shape(e.shape)
        with np.errstate(over="ignore"):      # overflow is checked just below, with a message
            stored = e.astype(self.dtype)
        if not np.isfinite(stored).all():
            big = float(np.abs(e.astype(np.float64)).max())
            raise C.CacheDtypeError(
                f"{self.extractor} values do not fit --dtype {self.dtype.name}: clip {cid} has a value of "
                f"magnitude {big:.6g}, above the {self.dtype.name} maximum {float(np.finfo(self.dtype).max):.6g} "
                "(it would be stored as inf). Use --dtype float32 for this extractor"
            )
        self._buf_ids.append(cid)
        self._buf.append(stored)
        self._buf_ident.append(identity)
        self.done.add(cid)
        self.identity[cid] = identity
        self._touched.pop(cid, None)
        if len(self._buf_ids) >= self.part_size or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def touch(self, cid: str, identity: ClipIdentity) -> None:
        """Record a new identity for a cached clip whose audio bytes are unchanged (e.g. new mtime)."""
        if cid not in self.done:
            raise KeyError(f"{cid} is not in the cache")
        self.identity[cid] = identity
        self._touched[cid] = identity

    def flush(self) -> None:
        """Write queued clips as one atomic part file."""
        if not self._buf_ids:
            return
        bio = io.BytesIO()
        st, dg = to_arrays(self._buf_ident)
        np.savez(bio, ids=np.array(self._buf_ids, dtype=str), features=np.stack(self._buf), identity=st, digest=dg)
        self._atomic_write(self.parts_dir / f"part-{self._next_part:06d}.npz", bio.getvalue())
        self._next_part += 1
        self._buf_ids, self._buf, self._buf_ident = [], [], []
        self._last_flush = time.monotonic()

    # ------------------------------------------------------------- finalize
    def _old_ids_for_rebuild(self) -> list[str]:
        if not self.path.exists():
            return []
        try:
            return C.EmbeddingCache(self.path).ids
        except C.CacheError:
            return []      # a damaged old file holds nothing worth keeping

    def finalize(self, order: Sequence[str], files: Sequence[Path] | None = None) -> Path:
        """Merge the old file's rows and the parts into a new ``.h5`` renamed over the old one.

        Rows: the clips of ``order`` that are done, in that order, then every other done
        clip (old rows first, in their old order; then part rows). ``files`` is accepted
        for compatibility and unused (identities are per row). A rebuild that lacks a
        clip of ``order`` the old file holds leaves the old file and its parts in place
        (``kept_old`` says so).
        """
        self.flush()
        parts = self._part_files()
        old_ids = C.EmbeddingCache(self.path).ids if not self.rebuild and self.path.exists() else []
        loc, part_paths, part_order = locate_rows(old_ids, parts, skip=self.damaged)
        if self.rebuild and self._rebuild_lacks(order, loc):
            return self.path
        ids = merge_order(order, old_ids, part_order, loc)
        if not ids or (not part_paths and not self._touched and not self.rebuild and not self.damaged):
            if not self.rebuild and not parts:
                self.discard_parts()   # nothing new: no parts folder is left behind (its config.json either)
            return self.path      # nothing new: leave the file (possibly many GB) untouched
        if lost := sorted(self.damaged - set(loc)):
            self.messages.append(f"{len(lost)} damaged row(s) could not be extracted again (not in this table, or "
                                 f"they failed) and are left out of {self.path}: {listing(lost, 10)}")
        m = Merge(self.path, ids, [self.identity.get(i, UNKNOWN) for i in ids], loc, part_paths,
                  self._shape, self.dtype, self.extractor, self.config_str, self.feature_names)
        write_cache(m, plan_layout(m))
        self._drop_merged_parts(parts)
        return self.path

    def _rebuild_lacks(self, order: Sequence[str], loc: dict[str, tuple[int, int]]) -> bool:
        """Whether the rebuild lacks a clip of ``order`` that the old file holds (not in ``loc``,
        :func:`locate_rows`); if so ``kept_old`` says why the old file stays."""
        prev = set(self._old_ids_for_rebuild())
        lacking = [i for i in order if i in prev and i not in loc]
        if not lacking:
            return False
        self.kept_old = (
            f"the rebuild lacks {len(lacking)} clip(s) that {self.path} holds ({listing(lacking, 5)}), so "
            f"that file is kept unchanged and the rebuild waits in {self.parts_dir}. Fix those clips and run "
            "the same command again: the rebuild resumes and replaces the file once it is complete (to accept "
            f"the rebuild without them, delete {self.path.name} and run again)"
        )
        return True

    def _drop_merged_parts(self, parts: Sequence[Path]) -> None:
        """After a successful merge: forget recorded touches, delete ``parts`` (and the parts folder
        once no part is left), and end rebuild mode."""
        # parts are removed only once the .h5 that contains them is safely in place
        self._touched.clear()
        for p in parts:
            p.unlink(missing_ok=True)
        if not self._part_files():
            self.discard_parts()
        self.rebuild = False

    def discard_parts(self) -> None:
        shutil.rmtree(self.parts_dir, ignore_errors=True)
