"""Per-clip identity: is the audio a cached row was computed from still the file on disk?

Every cache row stores the identity of its audio file as it was *before* the clip was
read: ``(size bytes, mtime ns)`` plus a content digest (BLAKE2b-128 of the file bytes,
32 hex characters). The check is two-stage, so it is cheap on every run:

1. ``os.stat`` of each file: same size and mtime → same clip (no read). This is
   what ``exvo extract`` and ``exvo learn`` do for every clip they use.
2. Size equal but mtime differs (a ``cp`` without ``-p``, a ``touch``, a new checkout):
   the file is read and its digest compared; same bytes → same clip (the new mtime is
   recorded by the next ``exvo extract``), other bytes → changed.

A different size, a missing file or an unknown stored identity (rows of a cache made
before identities existed) is "changed". A changed clip is re-extracted by
``exvo extract`` and refused by ``exvo learn`` / ``exvo predict`` with its id.

Arrays: ``stat`` ``(n, 2)`` int64 ``[size, mtime_ns]`` (``-1`` = missing/unknown);
``digest`` ``(n,)`` str (``""`` = unknown).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

UNKNOWN_STAT = (-1, -1)
DIGEST_BYTES = 16


@dataclass(frozen=True)
class ClipIdentity:
    """``size`` bytes, ``mtime_ns``, ``digest`` (hex; ``""`` unknown) of one audio file."""

    size: int
    mtime_ns: int
    digest: str = ""

    @property
    def known(self) -> bool:
        return self.size >= 0


UNKNOWN = ClipIdentity(-1, -1, "")


def stat_of(path: str | Path) -> tuple[int, int]:
    """``(size, mtime_ns)`` of a file, ``(-1, -1)`` if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return UNKNOWN_STAT
    return int(st.st_size), int(st.st_mtime_ns)


def stat_all(paths: Sequence[str | Path]) -> np.ndarray:
    """``(n, 2)`` int64 ``[size, mtime_ns]`` of every path (``-1`` where missing)."""
    out = np.empty((len(paths), 2), dtype=np.int64)
    for k, p in enumerate(paths):
        out[k] = stat_of(p)
    return out


def content_digest(path: str | Path) -> str:
    """BLAKE2b-128 hex of the file's bytes; ``""`` if it cannot be read."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return ""
    return h.hexdigest()


def identify(path: str | Path) -> ClipIdentity:
    """The identity to store for a clip about to be extracted (stat first, then the bytes).

    Stat is taken before reading: if the file changes while it is extracted, the stored
    identity is the older one and the next run sees a change (never the reverse).
    """
    size, mtime = stat_of(path)
    if size < 0:
        return UNKNOWN
    return ClipIdentity(size, mtime, content_digest(path))


def compare(stored: Sequence[ClipIdentity], paths: Sequence[str | Path], now: np.ndarray | None = None,
            strict: bool = True) -> tuple[list[int], dict[int, ClipIdentity]]:
    """Check stored identities against the files: ``(changed indices, {index: new identity})``.

    The dict holds clips whose bytes are unchanged but whose mtime moved (digest equal):
    still valid; their new identity should be recorded. ``now`` (from :func:`stat_all`)
    may be passed when already computed. ``strict`` (extraction): an unknown stored
    identity or a missing file counts as changed. Not strict (reading a cache): those
    cannot be checked and are not reported (a row written through the Python API without
    an identity; a cache used on a machine without the audio).
    """
    now = stat_all(paths) if now is None else now
    changed: list[int] = []
    touched: dict[int, ClipIdentity] = {}
    for k, (s, p) in enumerate(zip(stored, paths)):
        size, mtime = int(now[k, 0]), int(now[k, 1])
        if not s.known or size < 0:
            if strict:
                changed.append(k)
        elif size != s.size:
            changed.append(k)
        elif mtime != s.mtime_ns:
            d = content_digest(p) if s.digest else ""
            if d and d == s.digest:
                touched[k] = ClipIdentity(size, mtime, d)
            else:
                changed.append(k)
    return changed, touched


def to_arrays(idents: Sequence[ClipIdentity]) -> tuple[np.ndarray, np.ndarray]:
    """``(stat (n, 2) int64, digest (n,) str)`` for storage."""
    st = np.array([(i.size, i.mtime_ns) for i in idents], dtype=np.int64).reshape(len(idents), 2)
    dg = np.array([i.digest for i in idents], dtype=f"U{2 * DIGEST_BYTES}")
    return st, dg


def from_arrays(stat: np.ndarray, digest: Sequence[str]) -> list[ClipIdentity]:
    return [ClipIdentity(int(a), int(b), str(d)) for (a, b), d in zip(np.asarray(stat).reshape(-1, 2), digest)]
