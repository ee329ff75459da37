"""Run one extractor over a corpus into its cache: resume, failures, progress."""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from exvo.corpus import Corpus, listing
from exvo.extract.base import ExtractOptions, Extractor, get_extractor
from exvo.extract.cache import CacheDtypeError, CacheError, cache_path, files_fingerprint
from exvo.extract import shard as S
from exvo.extract.cache_writer import CacheWriter
from exvo.extract.identity import ClipIdentity, compare, identify, stat_all
from exvo.extract.layers import kept as kept_layers, with_layers


class ExtractionAborted(RuntimeError):
    """Too many clips failed (``--max-failures``); what was extracted is kept."""


class _WriteFailed(Exception):
    """Wraps an OSError raised while writing the cache (not while extracting)."""


def _io(fn, *a, **k):
    try:
        return fn(*a, **k)
    except OSError as e:
        raise _WriteFailed(e) from e


@dataclass
class ExtractionSummary:
    extractor: str
    cache: str
    n_clips: int                 # clips requested
    n_cached_before: int         # already in the cache when the run started
    n_extracted: int             # embedded by this run
    failures: list[tuple[str, str]] = field(default_factory=list)   # (File_ID, reason)
    notes: list[tuple[str, str]] = field(default_factory=list)      # (File_ID, remark)
    n_changed: int = 0           # cached clips whose audio changed: extracted again
    n_damaged: int = 0           # cached rows that failed their checksum: extracted again
    messages: list[str] = field(default_factory=list)               # run-level remarks for the user
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    prepare_seconds: float = 0.0     # of wall_seconds: the extractor's preparation (task CNNs: training)

    @property
    def ok(self) -> bool:
        return not self.failures

    def line(self) -> str:
        # rates over the extraction itself: a task CNN's training is not clips/s
        run_s = self.wall_seconds - self.prepare_seconds
        rate = self.n_extracted / run_s if run_s > 0 else 0.0
        prep = f", of which {self.prepare_seconds:.1f} s preparing the extractor" if self.prepare_seconds >= 1 else ""
        return (f"{self.extractor}: {self.n_cached_before + self.n_extracted}/{self.n_clips} clips cached "
                f"({self.n_extracted} new{f', {self.n_changed} changed audio redone' if self.n_changed else ''}"
                f"{f', {self.n_damaged} damaged rows redone' if self.n_damaged else ''}, "
                f"{len(self.failures)} failed, {len(self.notes)} notes) "
                f"in {self.wall_seconds:.1f} s{prep} "
                + (f"[{rate:.1f} clips/s, {self.audio_seconds / max(run_s, 1e-9):.1f} audio-s/s]" if self.n_extracted
                   else "[all cached: nothing extracted]") + f" → {self.cache}")


def parse_max_failures(value: str | float | int | None, n: int) -> int | None:
    """``"10"`` → 10 clips; ``"5%"`` or ``"0.05"`` → that fraction of ``n`` clips; None → no limit."""
    if value is None or value == "":
        return None
    s = str(value).strip()
    try:
        if s.endswith("%"):
            return max(0, int(float(s[:-1]) / 100.0 * n))
        v = float(s)
    except ValueError:
        raise ValueError(f"--max-failures must be a count (e.g. 10), a fraction (0.05) or a percentage (5%); got {value!r}") from None
    if v < 0:
        raise ValueError(f"--max-failures must be >= 0, got {value!r}")
    if 0 < v < 1:
        return max(0, int(v * n))
    return int(v)


def _say(msg: str) -> None:
    """One line on stderr from a signal handler: an unbuffered write (no reentrant call into a
    buffered stream the interrupted code may be writing to)."""
    try:
        os.write(2, (msg + "\n").encode("utf-8", "backslashreplace"))
    except OSError:
        pass


@contextmanager
def interrupt_guard(echo=_say):
    """Ctrl-C / SIGTERM handling for a command-line run (main thread only).

    The first SIGINT or SIGTERM says so at once (``interrupt: saving …``) and raises
    ``KeyboardInterrupt`` (the run saves its finished clips and stops its workers, a few
    seconds at most). Further presses while that happens are acknowledged, not obeyed, so
    that they cannot break the cleanup half-way (which used to hang the exit); a third press
    exits at once with 130 (every part on disk is whole, so nothing written is lost either
    way). After the first signal, the handler stays until the process exits.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    presses = [0]

    def handler(signum, frame):
        presses[0] += 1
        if presses[0] == 1:
            echo("interrupt: saving the finished clips and stopping the workers …")
            raise KeyboardInterrupt
        if presses[0] == 2:
            echo("interrupt: still saving the finished clips and stopping the workers; press Ctrl-C again to quit "
                 "at once")
            return
        os._exit(130)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            # once interrupted, the process is on its way out: further presses are ignored
            # (a Python handler would be reset to the default one while the interpreter exits)
            signal.signal(sig, signal.SIG_IGN if presses[0] else h)


def write_failure_message(path: Path, e: BaseException, summary: ExtractionSummary, saved: int | None = None) -> str:
    """What to tell the user when writing the cache failed: the cause by errno, and what is kept
    (``saved``: clips of the run on disk, in the ``.h5`` or in whole parts; not those still in memory)."""
    import errno

    code = getattr(e, "errno", None)
    n = summary.n_cached_before + summary.n_extracted if saved is None else saved
    kept = f"{n} of the {summary.n_clips} clips are saved and kept"
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"could not write the cache {path} ({e.strerror or e}); {kept}. Free disk space (or pass "
                "--cache DIR on another disk) and run the same command again to resume")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"could not write the cache {path}: {e.strerror or e} ({getattr(e, 'filename', None) or path.parent} "
                f"is not writable); {kept}. Make the cache folder writable (check its permissions, or a read-only "
                "mount) or pass --cache DIR pointing to a writable folder, then run the same command again")
    if code in (errno.ENOTDIR, errno.EEXIST):
        bad = next((q for q in [path.parent, *path.parent.parents] if q.exists() and not q.is_dir()), path.parent)
        return (f"could not create the cache folder {path.parent}: {bad} is a file, not a folder; pass "
                "--cache DIR naming a folder (it is created if absent)")
    return (f"could not write the cache {path} ({getattr(e, 'strerror', None) or e}); {kept}. Check that the "
            "cache folder is writable and has free space, then run the same command again to resume")


def _adopt_legacy(w: CacheWriter, corpus: Corpus) -> None:
    """A format-1 cache stored no per-clip identities, only one fingerprint of the config and
    every table file's (name, size, mtime). If that fingerprint still matches today's files,
    the rows were made from exactly these files: record their identities instead of
    re-extracting everything (the next finalize writes them)."""
    if w.legacy_fingerprint is None:
        return
    files = [corpus.audio_path(i) for i in corpus.ids]
    if files_fingerprint(w.config_str, files) != w.legacy_fingerprint:
        w.messages.append(f"{w.path} was made by an older exvo without per-clip identities, and the audio "
                          "files are not those it was made from: its clips are extracted again")
        return
    now = stat_all(files)
    for i, (size, mtime) in zip(corpus.ids, now):
        if i in w.done and size >= 0:
            w.touch(i, ClipIdentity(int(size), int(mtime), ""))


def extract(corpus: Corpus, extractor: str | Extractor, cache_dir: str | Path = "cache",
            opts: ExtractOptions | None = None, *, overwrite: bool = False,
            max_failures: str | float | int | None = None, ids: Sequence[str] | None = None,
            progress: bool | str = True, part_size: int = 64, flush_seconds: float = 60.0,
            shard: "S.Shard | None" = None, command: str | None = None) -> ExtractionSummary:
    """Extract ``ids`` (default: every clip) of ``corpus`` into ``<cache>/<corpus>/<name>.h5``.

    Already cached clips are skipped (resume); cached rows that fail their checksum (damaged
    on disk) and clips whose audio changed are extracted again, and only those. Per-clip
    failures are collected, not raised; ``max_failures`` aborts early (raising
    :class:`ExtractionAborted`) once exceeded. The summary is also written to
    ``<name>.summary.json`` beside the cache (a run that had nothing to do keeps the record of
    the last real one and adds ``last_checked``).

    Finished clips are saved every ``part_size`` clips or ``flush_seconds`` s (whichever
    first), so a kill loses at most that much work. Ctrl-C keeps everything computed so
    far. A write error (disk full, read-only folder) stops the run with a
    :class:`~exvo.extract.cache.CacheError` saying what is kept (the clips on disk, counted);
    run again to resume.

    ``progress``: True = a bar on a terminal, plain lines otherwise (``EXVO_PROGRESS``
    overrides, see :mod:`exvo.progress`); False = silent; or ``"bar"``/``"lines"``/``"off"``.
    ``shard`` (:mod:`exvo.extract.shard`): extract only that shard's length-balanced share
    of ``ids`` into its own parts; the ``.h5`` is written by :func:`exvo.extract.shard.merge`.
    ``command``: the command line with ``{shard}`` in place of I/N, for the merge's hints.
    ``opts.layers`` keeps a subset of the layers (recorded in the config as ``layers_kept``).
    """
    opts = opts or ExtractOptions()
    ex = get_extractor(extractor, opts, cache_dir=cache_dir) if isinstance(extractor, str) else extractor
    t_start = time.perf_counter()
    ex.prepare(corpus, Path(cache_dir))
    want = list(ids) if ids is not None else list(corpus.ids)
    path = cache_path(cache_dir, corpus.name, ex.name)
    config, keep = with_layers(ex.config(), opts.layers)
    summary_path = path.with_suffix(".summary.json")
    wkw = dict(overwrite=overwrite, dtype=opts.dtype, feature_names=ex.feature_names(), part_size=part_size,
               flush_seconds=flush_seconds)
    digest = None
    if shard is not None:
        shares = S.assign(want, S.clip_seconds([corpus.audio_path(i) for i in want]), shard.count)
        digest, want = S.assignment_digest(shares), shares[shard.index]
        summary_path = path.with_name(f"{path.stem}.shard-{shard.tag}.summary.json")
        writer = S.ShardWriter(path, shard, ex.name, config, command=command, data=str(corpus.root), **wkw)
    else:
        writer = CacheWriter(path, ex.name, config, **wkw)
    summary = ExtractionSummary(ex.name, str(path), len(want), 0, 0,
                                prepare_seconds=time.perf_counter() - t_start)
    try:
        with ExitStack() as stack:
            w = _io(stack.enter_context, writer)   # opening may write too (lock, parts folder)
            if shard is None and path.with_suffix(".shards").is_dir():
                summary.messages.append(
                    f"{path.with_suffix('.shards')} holds shards of an earlier sharded run that were never merged; "
                    f"this run does not use them: merge them (`exvo extract --model {ex.name} --merge`) or delete "
                    "that folder")
            _adopt_legacy(w, corpus)
            summary.messages += w.messages
            said = len(w.messages)
            summary.n_damaged = len(w.damaged & set(want))
            paths = {i: corpus.audio_path(i) for i in want}
            todo, pre = _todo(w, want, paths, summary)
            _run(ex, todo, w, summary, paths, pre, keep, parse_max_failures(max_failures, len(want)), max_failures,
                 progress)
            if shard is not None:
                _io(w.mark_done, want, digest, summary.failures, ex.feature_names(), command)
            else:
                _io(w.finalize, order=corpus.ids)
            summary.messages += w.messages[said:]
            if w.kept_old:
                summary.messages.append(w.kept_old)
    except _WriteFailed as wf:
        # a write failed (disk full, quota, read-only): parts already on disk are whole
        e = wf.__cause__
        raise CacheError(write_failure_message(path, e, summary, writer.saved(want))) from e
    finally:
        summary.wall_seconds = time.perf_counter() - t_start
        write_summary(summary_path, summary)
    return summary


def _todo(w: CacheWriter, want: list[str], paths: dict, summary: ExtractionSummary
          ) -> tuple[list[tuple[str, Path]], dict[str, tuple[int, int]]]:
    """The clips to extract (not cached, cached from audio that changed since, or damaged) and every
    clip's ``(size, mtime)`` before it is read. One stat per cached clip (a read only when the size
    matches but the mtime moved); unchanged bytes with a new mtime are recorded (``touch``)."""
    cached = [i for i in want if i in w.done]
    now = stat_all([paths[i] for i in want])
    pre = {i: (int(a), int(b)) for i, (a, b) in zip(want, now)}
    changed, touched = compare([w.identity[i] for i in cached], [paths[i] for i in cached],
                               now=np.array([pre[i] for i in cached], dtype=np.int64).reshape(-1, 2))
    for k, ident in touched.items():
        w.touch(cached[k], ident)
    stale = {cached[k] for k in changed}
    if stale:
        summary.n_changed = len(stale)
        summary.messages.append(
            f"{len(stale)} cached clip(s) were made from audio that has changed since (size, mtime or "
            f"content differ); extracting them again: {listing(sorted(stale), 10)}")
    todo = [(i, paths[i]) for i in want if i not in w.done or i in stale]
    summary.n_cached_before = len(want) - len(todo)
    return todo, pre


def _run(ex: Extractor, todo: list[tuple[str, Path]], w: CacheWriter, summary: ExtractionSummary, paths: dict,
         pre: dict, keep, limit: int | None, max_failures, progress: bool | str) -> None:
    """Embed ``todo`` and hand each result to the writer; failures and notes go to ``summary``."""
    from exvo.progress import progress_bar

    t0 = time.perf_counter()
    # nothing to do: no bar (a "0/0 clips … ETA ?" line says nothing); the summary line says it all
    bar = progress_bar(len(todo), f"extract {ex.name}", progress if todo else False)
    results = ex.run(todo)
    try:
        for r in results:
            summary.audio_seconds += r.seconds
            _take(r, w, summary, paths, pre, keep, ex.name)
            if r.error is not None:
                if progress:  # live, above the bar; the caller gets the full list in the summary
                    bar.write(f"  failed {r.id}: {r.error}", file=sys.stderr)
                if limit is not None and len(summary.failures) > limit:
                    raise ExtractionAborted(
                        f"{len(summary.failures)} clips failed, more than --max-failures {max_failures}; "
                        f"stopped early (the {summary.n_extracted} clips extracted so far are kept). "
                        "Fix the audio listed above and run again to resume"
                    )
            bar.update()
            el = time.perf_counter() - t0
            bar.set_postfix_str(f"{summary.audio_seconds / max(el, 1e-9):.1f} audio-s/s, "
                                f"{len(summary.failures)} failed", refresh=False)
    finally:
        bar.close()
        if hasattr(results, "close"):
            results.close()   # stop the extractor's workers now, not when the traceback is freed
        ex.close()


def _take(r, w: CacheWriter, summary: ExtractionSummary, paths: dict, pre: dict, keep, name: str) -> None:
    """One result: stored (with the identity of the bytes just read), or recorded as a failure."""
    ident = None
    if r.error is None:
        # a file that changed while it was being extracted cannot be trusted either way
        ident = identify(paths[r.id])
        if (ident.size, ident.mtime_ns) != pre[r.id]:
            r.error, r.embedding = "the file changed while it was being extracted; run again", None
    if r.error is not None:
        summary.failures.append((r.id, r.error))
        return
    try:
        if keep is not None:
            r.embedding = kept_layers(r.embedding, keep, name)
        _io(w.add, r.id, r.embedding, ident)
    except CacheDtypeError:
        raise     # the extractor does not fit the dtype: every clip would fail
    except CacheError as e:  # e.g. NaN embedding: report the clip, keep going
        r.error = str(e)
        summary.failures.append((r.id, str(e)))
    else:
        summary.n_extracted += 1
        if r.note:
            summary.notes.append((r.id, r.note))


def write_summary(path: Path, summary: ExtractionSummary) -> None:
    """``summary`` as JSON at ``path`` (atomically). A run that had nothing to do (every clip cached,
    none changed, failed or damaged) keeps the record of the last run that did, adding ``last_checked``."""
    if not path.parent.is_dir():
        return
    record = asdict(summary)
    idle = not (summary.n_extracted or summary.failures or summary.n_changed or summary.n_damaged)
    if idle and path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and old.get("n_extracted"):
            record = dict(old, last_checked={"unix": round(time.time(), 3), "n_clips": summary.n_clips,
                                             "n_cached": summary.n_cached_before,
                                             "wall_seconds": round(summary.wall_seconds, 3)})
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)
    except OSError:  # the summary is also returned/printed; a full disk must not hide the real error
        tmp.unlink(missing_ok=True)
