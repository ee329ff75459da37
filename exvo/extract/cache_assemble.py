"""Assembling the final ``.h5`` for :meth:`exvo.extract.cache_writer.CacheWriter.finalize`.

The steps of a merge, in the order finalize runs them: find where each clip's row lives
(:func:`locate_rows`), put the rows in table order (:func:`merge_order`), size the chunks,
copy blocks and the parts' LRU (:func:`plan_layout`), then :func:`write_cache`: datasets,
rows copied block by block, attributes, and the rename over the old file.

Crash safety (module docstring of :mod:`exvo.extract.cache_writer`): everything is written
to ``<cache>.tmp<pid>`` beside the cache; the cache itself changes only in
:func:`replace_atomically`, after the new file is complete, closed and fsynced.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from exvo.extract import cache as C
from exvo.extract import h5io
from exvo.extract.identity import ClipIdentity, to_arrays


@dataclass(frozen=True)
class Merge:
    """What the new file is made of: its rows, where each one is read from, and its header."""

    path: Path                        # the cache file to replace
    ids: list[str]                    # (N,) clip ids of the new file, in row order
    idents: list[ClipIdentity]        # (N,) identity of each row's audio
    loc: dict[str, tuple[int, int]]   # id -> (-1, row) in the old file or (k, row) in part_paths[k]
    part_paths: list[Path]            # the readable parts, indexed as in loc
    shape: tuple[int, int]            # (L, F): layers and dimensions of every row
    dtype: np.dtype                   # storage dtype (float32 or float16)
    extractor: str
    config_str: str                   # the config as canonical JSON (attrs ``config``)
    feature_names: list[str] | None


@dataclass(frozen=True)
class Layout:
    """How the rows are chunked and copied (see :func:`plan_layout`)."""

    rows: int        # clips per HDF5 chunk (chunks are ``(rows, 1, F)``)
    block: int       # clips copied per step: whole chunks, about FINALIZE_BLOCK_BYTES
    row_bytes: int   # bytes of one clip's ``(L, F)`` row in the storage dtype
    capacity: int    # parts the LRU keeps in memory at once
    staged: bool     # part rows go through a raw staging file first


def part_ids(p: Path) -> list[str]:
    """Clip ids of part ``p`` in row order (errors of a damaged part propagate)."""
    with np.load(p, allow_pickle=False) as z:
        return [str(x) for x in z["ids"]]


def load_part_features(p: Path, dtype: np.dtype) -> np.ndarray:
    """``(n, L, F)`` features of part ``p`` in ``dtype``; :class:`CacheError` if it cannot be read now."""
    try:
        with np.load(p, allow_pickle=False) as z:
            return z["features"].astype(dtype, copy=False)
    except Exception as e:
        raise C.CacheError(f"part {p} became unreadable while finalizing ({e}); "
                           "run the extraction again (that part's clips are re-extracted)") from None


def locate_rows(old_ids: Sequence[str], parts: Sequence[Path], skip: set[str] = frozenset()
                ) -> tuple[dict[str, tuple[int, int]], list[Path], list[str]]:
    """Where each clip's row lives, given the old file's ``old_ids`` (row order) and the part files.

    Returns ``(loc, part_paths, part_order)``: ``loc[id]`` is ``(-1, row)`` in the old file or
    ``(k, row)`` in ``part_paths[k]``, the readable parts; ``part_order`` is their ids in order.
    Later entries win, so a part overrides the old file (a re-extraction of changed audio).
    Old rows of ``skip`` (damaged on disk) are never located: a part replaces them, or they go.
    """
    loc: dict[str, tuple[int, int]] = {}
    loc.update((i, (-1, k)) for k, i in enumerate(old_ids) if i not in skip)
    part_paths: list[Path] = []
    part_order: list[str] = []
    for p in parts:
        try:
            pids = part_ids(p)
        except Exception:
            continue  # unreadable part: its clips are not cached and get extracted again
        loc.update((i, (len(part_paths), k)) for k, i in enumerate(pids))
        part_paths.append(p)
        part_order += pids
    return loc, part_paths, part_order


def merge_order(order: Sequence[str], old_ids: Sequence[str], part_order: Sequence[str],
                loc: dict[str, tuple[int, int]]) -> list[str]:
    """Row order of the new file: the located clips of ``order``, then the other old rows, then part rows.

    Each clip once, at its first place; nothing outside ``loc`` (clips never done are left out).
    """
    seen: set[str] = set()
    ids: list[str] = []
    for i in list(order) + list(old_ids) + list(part_order):
        if i in loc and i not in seen:
            seen.add(i)
            ids.append(i)
    return ids


def plan_layout(m: Merge) -> Layout:
    """Chunk and block sizes for ``m`` (bytes from ``C.TARGET_CHUNK_BYTES``, ``C.FINALIZE_BLOCK_BYTES``)
    and whether its part rows are read through the LRU or staged."""
    L, F = m.shape
    isz = m.dtype.itemsize
    row_bytes = L * F * isz
    rows = max(1, min(len(m.ids), C.TARGET_CHUNK_BYTES // (F * isz)))
    block = rows * max(1, C.FINALIZE_BLOCK_BYTES // (rows * row_bytes))
    part_rows = np.bincount([m.loc[i][0] for i in m.ids if m.loc[i][0] >= 0], minlength=len(m.part_paths))
    # as many parts in memory as fit in one block's budget, and at least two
    capacity = max(2, C.FINALIZE_BLOCK_BYTES // max(1, int(part_rows.max(initial=1)) * row_bytes))
    seq = [m.loc[i][0] for i in m.ids]
    # Parts in about table order (one clip after another, or workers a few chunks apart)
    # are read through a small LRU. Parts in another order (e.g. length-sorted batches)
    # would make the LRU reload each part many times: their rows are first scattered
    # into a raw staging file, one part at a time, then read back block by block.
    staged = C.lru_misses(seq, capacity) > 2 * len(m.part_paths) + 8
    return Layout(rows, block, row_bytes, capacity, staged)


class PartLRU:
    """``lru(k)``: ``(n, L, F)`` features of ``paths[k]``, the ``capacity`` most recently used kept."""

    def __init__(self, paths: Sequence[Path], capacity: int, dtype: np.dtype):
        self.paths, self.capacity, self.dtype = paths, capacity, dtype
        self._loaded: OrderedDict[int, np.ndarray] = OrderedDict()

    def __call__(self, k: int) -> np.ndarray:
        if k not in self._loaded:
            if len(self._loaded) >= self.capacity:
                self._loaded.popitem(last=False)
            self._loaded[k] = load_part_features(self.paths[k], self.dtype)
        self._loaded.move_to_end(k)
        return self._loaded[k]


def stage_part_rows(sfd: int, m: Merge, row_bytes: int) -> None:
    """Write every part row of ``m`` at its final row's offset (``row * row_bytes``) in the file ``sfd``.

    One part in memory at a time; rows the new file does not take from that part are skipped.
    """
    pos = {i: n for n, i in enumerate(m.ids)}
    for k in range(len(m.part_paths)):
        feats = load_part_features(m.part_paths[k], m.dtype)
        for i, (kk, r) in ((i, m.loc[i]) for i in part_ids(m.part_paths[k])):
            if kk == k and i in pos:
                os.pwrite(sfd, feats[r].tobytes(), pos[i] * row_bytes)
        del feats


def copy_old_rows(dset, picks: list[tuple[int, int]], out: np.ndarray, path: Path) -> None:
    """``out[j] = dset[r]`` for ``(j, r)`` in ``picks``, reading a contiguous slab when rows are dense.

    ``dset``: the old file's ``(N_old, L, F)`` features; a read error names ``path`` as damaged.
    """
    rs = np.array([r for _, r in picks], dtype=np.int64)
    js = np.array([j for j, _ in picks], dtype=np.int64)
    lo, hi = int(rs.min()), int(rs.max()) + 1
    try:
        if hi - lo <= 2 * len(rs) + 64:
            out[js] = dset[lo:hi][rs - lo]
        else:
            order = np.argsort(rs)
            out[js[order]] = dset[np.unique(rs)][np.searchsorted(np.unique(rs), rs[order])]
    except (OSError, RuntimeError, ValueError):
        # the slab spans a damaged chunk whose rows are not picked (they were re-extracted):
        # read exactly the picked rows, which live in sound chunks
        for j, r in picks:
            try:
                out[j] = dset[r]
            except (OSError, RuntimeError, ValueError) as e:
                raise C.damaged_error(path, e) from None


def read_block(m: Merge, lay: Layout, s: int, sfd: int | None, parts: PartLRU, src) -> np.ndarray:
    """``(n, L, F)`` rows ``s:s+n`` of the new file (``n`` up to ``lay.block``), in ``m.dtype``.

    Part rows come from the staging file ``sfd`` (when staged) or ``parts``; old rows from ``src``.
    """
    L, F = m.shape
    bids = m.ids[s:s + lay.block]
    if lay.staged:
        buf = os.pread(sfd, len(bids) * lay.row_bytes, s * lay.row_bytes)
        buf += bytes(len(bids) * lay.row_bytes - len(buf))   # a trailing hole reads short
        out = np.frombuffer(bytearray(buf), dtype=m.dtype).reshape(len(bids), L, F)
    else:
        out = np.empty((len(bids), L, F), dtype=m.dtype)
        for j, i in enumerate(bids):
            k, r = m.loc[i]
            if k >= 0:
                out[j] = parts(k)[r]
    from_old = [(j, m.loc[i][1]) for j, i in enumerate(bids) if m.loc[i][0] < 0]
    if from_old:
        copy_old_rows(src["features"], from_old, out, m.path)
    return out


def create_datasets(f, m: Merge, lay: Layout):
    """Create ``ids``, ``identity``, ``digest`` (filled) and ``features`` ``(N, L, F)`` (empty,
    chunked ``(rows, 1, F)``) in the open file ``f``; returns the ``features`` dataset."""
    import h5py

    n = len(m.ids)
    L, F = m.shape
    f.create_dataset("ids", data=np.array(m.ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
    st, dg = to_arrays(m.idents)
    f.create_dataset("identity", data=st, chunks=(min(n, 65536), 2), fletcher32=True)
    f.create_dataset("digest", data=dg.astype("S32"), chunks=(min(n, 65536),), fletcher32=True)
    return f.create_dataset("features", shape=(n, L, F), dtype=m.dtype, chunks=(lay.rows, 1, F), fletcher32=True)


def copy_rows(d, m: Merge, lay: Layout, sfd: int | None, src) -> None:
    """Fill the ``features`` dataset ``d`` block by block (memory: a block or two plus the parts' LRU)."""
    parts = PartLRU(m.part_paths, lay.capacity, m.dtype)
    for s in range(0, len(m.ids), lay.block):
        out = read_block(m, lay, s, sfd, parts, src)
        d[s:s + len(out)] = out


def rows_fingerprint(config_str: str, ids: Sequence[str], idents: Sequence[ClipIdentity]) -> str:
    """sha256 of the config and every row's (id, size, mtime, digest)."""
    h = hashlib.sha256(config_str.encode())
    for i, d in zip(ids, idents):
        h.update(f"{i}\0{d.size}\0{d.mtime_ns}\0{d.digest}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def write_attrs(f, m: Merge) -> None:
    """The file's attributes: format, extractor, config, fingerprint, ids checksum, feature names."""
    f.attrs["format"] = C.FORMAT
    f.attrs["extractor"] = m.extractor
    f.attrs["config"] = m.config_str
    f.attrs["fingerprint"] = rows_fingerprint(m.config_str, m.ids, m.idents)
    f.attrs["ids_sha256"] = C.ids_digest(m.ids)
    if m.feature_names is not None:
        f.attrs["feature_names"] = json.dumps(m.feature_names)


def replace_atomically(tmp: Path, path: Path) -> None:
    """Rename the complete, closed ``tmp`` over ``path``: data fsynced first, then the directory,
    so after a crash ``path`` is either the old file or the whole new one."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    C.fsync_dir(path.parent)


def write_cache(m: Merge, lay: Layout) -> None:
    """Write ``m`` to ``<path>.tmp<pid>`` and rename it over ``m.path``.

    On any error (disk full, Ctrl-C) the temporary and staging files are removed and the
    old file is untouched; the error propagates.
    """
    import h5py

    tmp = m.path.with_name(m.path.name + f".tmp{os.getpid()}")
    stage = m.path.with_name(m.path.name + f".tmp{os.getpid()}.stage")
    uses_old = any(m.loc[i][0] < 0 for i in m.ids)
    src = h5py.File(m.path, "r") if uses_old else None
    sfd = None
    f = None
    fobj = None
    try:
        if lay.staged:
            sfd = os.open(stage, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            stage_part_rows(sfd, m, lay.row_bytes)
        reserve = h5io.estimate_bytes(m.ids, m.shape[0], m.shape[1], m.dtype.itemsize, lay.rows)
        fobj = h5io.Reserved(tmp, reserve)      # disk full is raised here, in Python, not inside HDF5
        f = h5py.File(fobj, "w")
        # d stays open until the file is closed, as HDF5 places metadata by when objects close:
        # closing it earlier would change the file's bytes
        d = create_datasets(f, m, lay)
        copy_rows(d, m, lay, sfd, src)
        write_attrs(f, m)
        ff, f = f, None     # closed once only: a failed close must not be retried below
        h5io.close_h5(ff)
        fobj.close()
        if src is not None:
            src.close()
            src = None
        replace_atomically(tmp, m.path)
    except BaseException:
        if f is not None:
            try:
                h5io.close_h5(f)
            except BaseException:
                pass     # the original error is the one to report
        if fobj is not None:
            fobj.close()
        if src is not None:
            src.close()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if sfd is not None:
            os.close(sfd)
        stage.unlink(missing_ok=True)
