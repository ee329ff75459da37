"""openSMILE functionals: ``compare`` (ComParE_2016, 6373 dims) and ``egemaps`` (eGeMAPSv02, 88 dims).

Each clip gives one functionals vector, stored as ``(1, F)`` float32: exactly what
``opensmile.Smile(feature_set, Functionals).process_signal(wav, 16000)`` returns for the
16 kHz mono float32 signal of :func:`exvo.audio.read_audio` (its note goes with the clip's).

openSMILE is single-threaded, so :meth:`SmileExtractor.run` spreads chunks of clips over
worker processes (``opts.workers``; 0 = every core), run by loky (joblib's process
executor, a dependency). Each worker builds its ``Smile`` once and decodes its own audio.
At most ``2 * workers`` chunks are in flight, so memory stays flat on a 60,000-clip corpus.
A worker that dies (e.g. a native crash on one file) costs only that file: the pool is
rebuilt and the chunks it held are retried one clip at a time. An interrupted run has
loky kill and reap its workers; a killed parent's workers exit on their own within a
fraction of a second (:func:`_exit_with_parent`).
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from exvo.audio import join_notes, read_audio
from exvo.corpus import SAMPLE_RATE, AudioError
from exvo.extract.base import ClipResult, ExtractOptions, Extractor, register

FEATURE_SETS = {"compare": "ComParE_2016", "egemaps": "eGeMAPSv02"}
DIMS = {"compare": 6373, "egemaps": 88}
MIN_SAMPLES = 960
"""Shortest signal (60 ms at 16 kHz, openSMILE's longest analysis window in these two
sets) for which openSMILE 2.x returns numbers rather than NaN; shorter clips are
zero-padded to it and get a note."""
MAX_CRASHES_IN_A_ROW = 3
"""Isolated single-clip worker crashes, with no success in between, after which the
workers are taken to be broken (e.g. unable to start) rather than the files."""
CHUNK_CLIPS = 8
"""Clips per task sent to a worker: large enough to amortise inter-process overhead,
small enough that results stream and the load stays balanced."""


def _make_smile(feature_set: str):
    import opensmile

    return opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, feature_set),
                           feature_level=opensmile.FeatureLevel.Functionals)


def _functionals(smile, wav: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``wav`` ``(n,)`` 16 kHz → ``((1, F) float32, note or None)``; raises on NaN output."""
    note = None
    if wav.size < MIN_SAMPLES:
        note = (f"padded: {wav.size / SAMPLE_RATE:.3f} s is shorter than openSMILE's "
                f"{MIN_SAMPLES / SAMPLE_RATE:.3f} s analysis window; zero-padded to it")
        wav = np.pad(wav, (0, MIN_SAMPLES - wav.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Segment too short": handled below with a clearer message
        v = np.asarray(smile.process_signal(wav, SAMPLE_RATE).values, dtype=np.float32)
    if v.ndim != 2 or v.shape[0] != 1:
        raise RuntimeError(f"openSMILE returned shape {v.shape}, expected (1, n_features)")
    if not np.isfinite(v).all():
        raise ValueError(f"openSMILE returned NaN/inf in {int((~np.isfinite(v)).sum())} of {v.shape[1]} "
                         f"features for a {wav.size / SAMPLE_RATE:.3f} s clip; check that the file holds real audio")
    return v, note


def _clip(smile, cid: str, path: Path) -> ClipResult:
    """One clip, never raising: decoding and openSMILE errors become ``ClipResult.error``."""
    try:
        wav, audio_note = read_audio(path)
    except AudioError as e:
        return ClipResult(cid, error=e.reason)
    sec = wav.size / SAMPLE_RATE
    try:
        v, note = _functionals(smile, wav)
    except Exception as e:
        return ClipResult(cid, error=f"{type(e).__name__}: {e}", seconds=sec)
    return ClipResult(cid, embedding=v, seconds=sec, note=join_notes(audio_note, note))


class WorkerError(ValueError):
    """The worker processes cannot run at all; the message says how to find out why."""


# ---------------------------------------------------------------- worker process side
_WORKER_SMILE = None
PARENT_POLL_SECONDS = 0.25
"""How often a worker checks that the process that started it is still alive."""


def _exit_with_parent(parent_pid: int) -> None:
    """Daemon thread of a worker: exit as soon as the parent is gone (e.g. killed with -9).

    loky has no such check on POSIX: a worker blocked on its task queue does not notice
    that the parent died, and its idle-timeout exit still waits 30 s for a handshake with
    the parent (checked with joblib 1.6 / loky 3.6: the workers of a ``kill -9``-ed parent
    were still alive 10 s later). Without this thread a worker would live on, holding its
    ~150 MB. Polling ``getppid`` is portable (POSIX) and needs no
    cooperation from the parent.
    """
    import time

    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def _worker_init(feature_set: str, parent_pid: int | None = None) -> None:
    import signal
    import threading

    global _WORKER_SMILE
    # Ctrl-C reaches the whole process group; the parent decides what happens (loky kills
    # the workers), so a worker neither prints a traceback nor dies half-way through a chunk
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_pid is not None:
        threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    _WORKER_SMILE = _make_smile(feature_set)


def _worker_chunk(chunk: list[tuple[str, str]]) -> list[ClipResult]:
    return [_clip(_WORKER_SMILE, cid, Path(p)) for cid, p in chunk]


class SmileExtractor(Extractor):
    """openSMILE functionals of one feature set; ``embed`` → ``(1, F)`` float32."""

    version = "1"

    def __init__(self, name: str, opts: ExtractOptions):
        if name not in FEATURE_SETS:
            raise KeyError(f"no openSMILE feature set for {name!r}; choose one of {sorted(FEATURE_SETS)}")
        if opts.workers < 0:
            raise ValueError(f"--workers must be >= 0 (0 = all cores), got {opts.workers}")
        self.name = name
        self.feature_set = FEATURE_SETS[name]
        self.workers = opts.workers or os.cpu_count() or 1
        self._smile = _make_smile(self.feature_set)
        # what a worker runs on a chunk; a module-level function (pickled by name for spawn)
        self._chunk_fn = _worker_chunk

    def config(self) -> dict:
        import opensmile

        return {
            "family": "opensmile",
            "feature_set": self.feature_set,
            "feature_level": "Functionals",
            "opensmile_version": opensmile.__version__,
            "sample_rate": SAMPLE_RATE,
            "short_clips": f"zero-padded to {MIN_SAMPLES} samples",
            "code_version": self.version,
        }

    def feature_names(self) -> list[str]:
        return list(self._smile.feature_names)

    def embed(self, wav: np.ndarray) -> np.ndarray:
        return _functionals(self._smile, np.asarray(wav, dtype=np.float32))[0]

    def run(self, items: Sequence[tuple[str, Path]]) -> Iterator[ClipResult]:
        """Yields one :class:`ClipResult` per item, in completion order (parallel when ``workers > 1``)."""
        items = list(items)
        if self.workers <= 1 or len(items) <= CHUNK_CLIPS:
            for cid, path in items:
                yield _clip(self._smile, cid, path)
            return
        yield from self._run_pool(items)

    def _pool(self, n: int):
        from joblib.externals.loky import ProcessPoolExecutor

        # loky's executor, not concurrent.futures': its workers are started by fork+exec (the
        # parent may hold torch/OpenMP threads, which a plain fork does not copy safely) and
        # do not re-run the caller's __main__, so scripts need no `if __name__` guard; a dead
        # worker fails every future it held (BrokenProcessPool) after loky has killed the
        # rest; shutdown(kill_workers=True) SIGKILLs and reaps them. Not the process-wide
        # get_reusable_executor: that one is shared with joblib.Parallel callers, and this
        # pool (≈150 MB a worker) should be gone when the run ends.
        return ProcessPoolExecutor(max_workers=n, initializer=_worker_init,
                                   initargs=(self.feature_set, os.getpid()))

    def _run_pool(self, items: list[tuple[str, Path]]) -> Iterator[ClipResult]:
        from joblib.externals.loky import BrokenProcessPool

        chunks = [[(cid, str(p)) for cid, p in items[k:k + CHUNK_CLIPS]] for k in range(0, len(items), CHUNK_CLIPS)]
        n_workers = min(self.workers, len(chunks))
        max_in_flight = 2 * n_workers
        todo = list(reversed(chunks))        # pop() from the end = corpus order
        # After a worker crash every chunk that was in flight is a suspect. Suspects run
        # alone in the pool, so a second crash names its chunk for sure; a crashing chunk
        # is split into single clips, and a single clip that crashes alone is the culprit.
        suspects: list[list[tuple[str, str]]] = []
        pool = self._pool(n_workers)
        running: dict[Future, list[tuple[str, str]]] = {}
        crashes_in_a_row = 0
        try:
            while todo or suspects or running:
                if suspects:
                    if not running:
                        chunk = suspects.pop()
                        running[pool.submit(self._chunk_fn, chunk)] = chunk
                else:
                    while len(running) < max_in_flight and todo:
                        chunk = todo.pop()
                        running[pool.submit(self._chunk_fn, chunk)] = chunk
                isolated = len(running) == 1   # a crash can then only be this chunk's
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                crashed: list[list[tuple[str, str]]] = []
                for fut in done:
                    chunk = running.pop(fut)
                    try:
                        results = fut.result()
                    except BrokenProcessPool:
                        crashed.append(chunk)
                        continue
                    except Exception as e:  # e.g. a result that could not be pickled
                        results = [ClipResult(cid, error=f"worker error: {type(e).__name__}: {e}") for cid, _ in chunk]
                    crashes_in_a_row = 0
                    yield from results
                if not crashed:
                    continue
                # the pool is dead (loky has killed its other workers): every chunk still
                # running is lost with it
                lost = crashed + list(running.values())
                running.clear()
                pool.shutdown(wait=True)
                if isolated and len(lost) == 1 and len(lost[0]) == 1:
                    cid, p = lost[0][0]
                    crashes_in_a_row += 1
                    if crashes_in_a_row >= MAX_CRASHES_IN_A_ROW:
                        raise WorkerError(
                            f"openSMILE worker processes died on {crashes_in_a_row} clips in a row (last: {p}); "
                            "they are probably failing to start rather than failing on these files. Run with "
                            "--workers 1 to see the error in this process"
                        )
                    yield ClipResult(cid, error=f"openSMILE worker process crashed on {p}; check or re-export this file")
                elif isolated and len(lost) == 1:
                    suspects.extend([c] for c in reversed(lost[0]))
                else:
                    suspects.extend(lost)
                pool = self._pool(n_workers)
        except BaseException:
            # Ctrl-C, an abort, a failed write, the caller closing this generator: stop at
            # once. Waiting for running chunks could take minutes (and a second Ctrl-C during
            # that wait used to hang the exit); kill_workers SIGKILLs every worker and joins
            # it, so none is left behind when this returns
            kill_pool(pool)
            raise
        else:
            pool.shutdown(wait=True)


def kill_pool(pool) -> None:
    """``pool.shutdown(kill_workers=True)`` that a second Ctrl-C cannot break.

    Without psutil, loky finds each worker's children with ``pgrep -P``: a process of this
    process group, so a Ctrl-C pressed meanwhile killed it; loky's manager thread then died
    with a traceback and left a worker unreaped, and the exit hung joining it (seen once in
    eight runs of two quick presses). Ignored signals stay ignored across exec: for the few
    milliseconds of the shutdown, SIGINT and SIGTERM are ignored by this process and so by
    every ``pgrep`` it starts; the handlers are back as soon as the workers are gone.
    """
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        pool.shutdown(wait=True, kill_workers=True)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@register("compare", "egemaps", help={
    "compare": "openSMILE ComParE_2016 functionals, 6373 dims (parallel over cores)",
    "egemaps": "openSMILE eGeMAPSv02 functionals, 88 dims (parallel over cores)"})
def _make(name: str, opts: ExtractOptions) -> Extractor:
    return SmileExtractor(name, opts)
