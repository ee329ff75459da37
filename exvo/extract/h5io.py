"""Writing the final ``.h5`` safely: space reserved before HDF5 writes, failures as ``OSError``.

HDF5 does not survive a failed write: after ``ENOSPC`` inside the library, closing the file
(or the garbage collector doing it at exit) crashes the interpreter (exit 139). So the
final file's space is taken first, in Python (:class:`Reserved`), and closing is done once,
turning HDF5's ``RuntimeError`` into ``OSError`` (:func:`close_h5`).
"""
from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path
from typing import Sequence


def estimate_bytes(ids: Sequence[str], L: int, F: int, isz: int, rows: int) -> int:
    """Generous upper bound of the final ``.h5`` size: data, chunk index, ids, identities."""
    n = len(ids)
    n_chunks = -(-n // rows) * L
    longest = max((len(i.encode("utf-8", "surrogatepass")) for i in ids), default=0)
    meta = n_chunks * 256 + n * (longest + 64) + n * 64 + (8 << 20)
    return int(n * L * F * isz * 1.01) + meta


class Reserved(io.RawIOBase):
    """A new file with ``reserve`` bytes allocated up front, seen by HDF5 as an empty file.

    HDF5 does not survive a failed write: after ``ENOSPC`` inside the library, closing the
    file (or the garbage collector doing it at exit) crashes the interpreter. So the space
    is taken before HDF5 writes a byte (``posix_fallocate`` raises ``OSError`` ENOSPC here,
    cleanly), and HDF5 writes into it through h5py's file-object driver. The logical size
    is tracked separately; :meth:`close` cuts the file to it.
    """

    def __init__(self, path: Path, reserve: int):
        super().__init__()
        self._f = open(path, "w+b")
        try:
            os.posix_fallocate(self._f.fileno(), 0, max(1, reserve))
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                self._f.close()
                raise
            # a filesystem without fallocate: at least refuse a disk that is already too full
            if shutil.disk_usage(path.parent).free < reserve:
                self._f.close()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        self._size = 0
        self._pos = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b) -> int:
        n = max(0, min(len(b), self._size - self._pos))
        self._f.seek(self._pos)
        got = self._f.readinto(memoryview(b)[:n]) or 0
        self._pos += got
        return got

    def write(self, b) -> int:
        self._f.seek(self._pos)
        n = self._f.write(b)
        self._pos += n
        self._size = max(self._size, self._pos)
        return n

    def truncate(self, size: int | None = None) -> int:
        self._size = self._pos if size is None else int(size)
        return self._size

    def flush(self) -> None:
        if not self._f.closed:
            self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            try:
                self._f.truncate(self._size)
                self._f.flush()
            finally:
                self._f.close()
        super().close()


def close_h5(f) -> None:
    """Close an h5py file being written; a failed flush (disk full) becomes an ``OSError``.

    h5py reports a failed write of the last metadata on close as ``RuntimeError``; left
    uncaught, the half-closed file object is later torn down by the garbage collector,
    which can crash the interpreter. Closing here, once, and turning the error into an
    ``OSError`` lets the caller report a write failure (disk full) like any other.
    """
    try:
        f.flush()
        f.close()
    except (RuntimeError, OSError) as e:
        try:
            f.close()
        except Exception:
            pass
        if isinstance(e, OSError):
            raise
        code = errno.ENOSPC if "No space left" in str(e) else errno.EIO
        raise OSError(code, f"{os.strerror(code)} (while closing the HDF5 file: {e})") from None
