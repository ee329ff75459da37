"""Subprocess driver for the frame-cache kill -9 tests.

    python frames_driver.py CORPUS CACHE CHECKPOINT --die part:K | h5-replace

SIGKILLs itself at an exact point: ``part:K`` after the K-th part's temporary file is written
and fsynced, before its rename; ``h5-replace`` once the final ``.frames.h5`` temporary file is
complete, before it is renamed into place.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

FRAME_ARGS = dict(layer=1, pool=2, part_size=2, progress=False)


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("cache")
    ap.add_argument("checkpoint")
    ap.add_argument("--die", required=True)
    a = ap.parse_args()
    from exvo.corpus import Corpus
    from exvo.extract.base import ExtractOptions
    from exvo.extract.frames_run import extract_frames

    real_replace = os.replace
    seen = [0]

    def replace(src, dst, *args, **kw):
        name = Path(dst).name
        if a.die.startswith("part:") and name.startswith("part-"):
            seen[0] += 1
            if seen[0] == int(a.die.split(":")[1]):
                _die()
        if a.die == "h5-replace" and name.endswith(".frames.h5"):
            _die()
        return real_replace(src, dst, *args, **kw)

    os.replace = replace
    extract_frames(Corpus.from_dir(a.corpus), "wavlm", a.cache,
                   ExtractOptions(checkpoint=a.checkpoint, device="cpu", dtype="float32"), **FRAME_ARGS)
    print("DONE")


if __name__ == "__main__":
    main()
