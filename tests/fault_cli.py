"""Run the ``exvo`` command line with the test extractors registered (for subprocess fault tests).

    python tests/fault_cli.py extract --model _test_wide --data DIR --cache DIR

Extra extractors (never registered by the package itself):

* ``_test_rms``   :mod:`fault_extractor` (6 hand-checkable features)
* ``_test_wide``  the same 6 features tiled to 6,000 dims: files large enough to hit a size limit
* ``_test_huge``  the 6 features times 1e6: finite in float32, beyond float16's 65504

Environment: ``EXVO_TEST_FSIZE=BYTES`` caps the size of any file this process writes
(``RLIMIT_FSIZE``, with SIGXFSZ ignored, so a write past it fails with ``EFBIG`` exactly like
a full disk fails with ``ENOSPC``: deep inside HDF5 included). ``EXVO_TEST_DELAY=S`` slows
the test extractors down per clip. ``EXVO_TEST_ENOSPC_PART=K`` makes the disk "full" from the
K-th cache part on (its ``fsync`` fails with ``ENOSPC``; the parts before it are whole on disk).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import fault_extractor  # noqa: E402,F401  (registers _test_rms)
from exvo.extract.base import _REGISTRY, register  # noqa: E402


class _Scaled(fault_extractor.RmsExtractor):
    def __init__(self, name: str, tile: int, scale: float, delay: float):
        super().__init__(delay=delay)
        self.name, self.tile, self.scale = name, tile, scale

    def config(self) -> dict:
        return dict(super().config(), extractor=self.name, tile=self.tile, scale=self.scale)

    def embed(self, wav):
        return np.tile(fault_extractor.reference_features(wav), (1, self.tile)) * np.float32(self.scale)


def _factory(name, opts):
    delay = float(os.environ.get("EXVO_TEST_DELAY", "0") or 0)
    return _Scaled(name, 1000, 1.0, delay) if name == "_test_wide" else _Scaled(name, 1, 1e6, delay)


for _n in ("_test_wide", "_test_huge"):
    if _n not in _REGISTRY:
        register(_n, help="test-only")(_factory)


def _full_from_part(k: int) -> None:
    import errno

    real, seen = os.fsync, [0]

    def fsync(fd):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if ".npz.tmp" in target:
            seen[0] += 1
            if seen[0] >= k:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    os.fsync = fsync


def main() -> None:
    if os.environ.get("EXVO_TEST_ENOSPC_PART"):
        _full_from_part(int(os.environ["EXVO_TEST_ENOSPC_PART"]))
    limit = os.environ.get("EXVO_TEST_FSIZE")
    if limit:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
    from exvo.cli import app

    app(prog_name="exvo")


if __name__ == "__main__":
    main()
