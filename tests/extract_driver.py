"""Subprocess driver for the kill/interrupt tests: extract a corpus with the test extractor.

    python extract_driver.py CORPUS CACHE [--delay S] [--part-size N] [--die MODE]

Prints ``READY`` once imports are done and the run is about to start, then
``DONE <n_extracted> <n_cached_before>`` at the end. The events a test synchronises on, never
a sleep: ``--report`` prints ``CLIP <k>`` once the k-th clip of this run has been handed to the
cache writer (so it is in a part when ``k`` fills one); ``--pause-at K`` prints ``PAUSED <K>``
at that point and waits for a line on stdin (Ctrl-C or a kill lands exactly there). ``--die`` makes the process
SIGKILL itself at an exact point, to hit the windows that timing alone rarely hits:

* ``part-tmp:K``   after the K-th part's temporary file is written and fsynced, before its rename
* ``h5-write``     after the first block of the final ``.h5.tmp`` is written (file incomplete)
* ``h5-replace``   the final ``.h5.tmp`` is complete and fsynced, before it is renamed into place
* ``after-replace`` the ``.h5`` is in place but its parts are not yet deleted
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(mode: str) -> None:
    real_replace = os.replace
    if mode.startswith("part-tmp:"):
        k = int(mode.split(":")[1])
        seen = [0]

        def replace(src, dst, *a, **kw):
            if Path(dst).name.startswith("part-"):
                seen[0] += 1
                if seen[0] == k:
                    _die()
            return real_replace(src, dst, *a, **kw)

        os.replace = replace
    elif mode == "h5-write":
        import h5py

        real_set = h5py.Dataset.__setitem__

        def setitem(self, key, value):
            real_set(self, key, value)
            if self.name == "/features":
                self.file.flush()
                _die()

        h5py.Dataset.__setitem__ = setitem
    elif mode in ("h5-replace", "after-replace"):
        def replace(src, dst, *a, **kw):
            if str(dst).endswith(".h5"):
                if mode == "h5-replace":
                    _die()
                real_replace(src, dst, *a, **kw)
                _die()
            return real_replace(src, dst, *a, **kw)

        os.replace = replace
    elif mode != "none":
        raise SystemExit(f"unknown --die mode {mode!r}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("cache")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--part-size", type=int, default=64)
    ap.add_argument("--die", default="none")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--pause-at", type=int, default=0)
    a = ap.parse_args()

    import h5py  # noqa: F401  (imported before READY so that kill times measure work, not imports)
    import soundfile  # noqa: F401
    import tqdm  # noqa: F401

    from fault_extractor import RmsExtractor
    from exvo.corpus import Corpus
    from exvo.extract.run import extract

    class Reporting(RmsExtractor):
        def run(self, items):
            for k, r in enumerate(super().run(items), 1):
                yield r
                # resumed by the consumer: clip k has been added (and flushed, if it filled a part)
                if a.report:
                    print(f"CLIP {k}", flush=True)
                if k == a.pause_at:
                    print(f"PAUSED {k}", flush=True)
                    sys.stdin.readline()

    corpus = Corpus.from_dir(a.corpus)
    _arm(a.die)
    print("READY", flush=True)
    try:
        s = extract(corpus, Reporting(delay=a.delay), a.cache, progress=False, part_size=a.part_size)
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        sys.exit(130)
    print(f"DONE {s.n_extracted} {s.n_cached_before}", flush=True)


if __name__ == "__main__":
    main()
