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
                f"({self.n_extracted} new{f', {self.n_changed} changed audio redone' if self.n_changed else ''}, "
                f"{len(self.failures)} failed, {len(self.notes)} notes) "
                f"in {self.wall_seconds:.1f} s{prep} [{rate:.1f} clips/s, "
                f"{self.audio_seconds / max(run_s, 1e-9):.1f} audio-s/s] → {self.cache}")


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


@contextmanager
def interrupt_guard(echo=lambda m: print(m, file=sys.stderr, flush=True)):
    """Ctrl-C / SIGTERM handling for a command-line run (main thread only).

    The first SIGINT or SIGTERM raises ``KeyboardInterrupt`` (the run saves its finished
    clips and stops its workers, a few seconds at most). Further presses while that
    happens are acknowledged, not obeyed, so that they cannot break the cleanup half-way
    (which used to hang the exit); a third press exits at once with 130 (every part on
    disk is whole, so nothing written is lost either way). After the first signal, the
    handler stays until the process exits.
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
            raise KeyboardInterrupt
        if presses[0] == 2:
            echo("interrupt: saving the finished clips and stopping the workers; press Ctrl-C again to quit at once")
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


def write_failure_message(path: Path, e: BaseException, summary: ExtractionSummary) -> str:
    """What to tell the user when writing the cache failed: the cause by errno, and what is kept."""
    import errno

    code = getattr(e, "errno", None)
    kept = (f"the clips saved before this error are kept ({summary.n_cached_before + summary.n_extracted} of "
            f"{summary.n_clips} were done)")
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
            shard: "Shard | None" = None, command: str | None = None) -> ExtractionSummary:
    """Extract ``ids`` (default: every clip) of ``corpus`` into ``<cache>/<corpus>/<name>.h5``.

    Already cached clips are skipped (resume). Per-clip failures are collected, not raised;
    ``max_failures`` aborts early (raising :class:`ExtractionAborted`) once exceeded. The
    summary is also written to ``<name>.summary.json`` beside the cache.

    Finished clips are saved every ``part_size`` clips or ``flush_seconds`` s (whichever
    first), so a kill loses at most that much work. Ctrl-C keeps everything computed so
    far. A write error (disk full, read-only folder) stops the run with a
    :class:`~exvo.extract.cache.CacheError` saying what is kept; run again to resume.

    ``progress``: True = a bar on a terminal, plain lines otherwise (``EXVO_PROGRESS``
    overrides, see :mod:`exvo.progress`); False = silent; or ``"bar"``/``"lines"``/``"off"``.
    ``shard`` (:mod:`exvo.extract.shard`): extract only that shard's length-balanced share
    of ``ids`` into its own parts; the ``.h5`` is written by :func:`exvo.extract.shard.merge`.
    ``command``: the command line with ``{shard}`` in place of I/N, for the merge's hints.
    ``opts.layers`` keeps a subset of the layers (recorded in the config as ``layers_kept``).
    """
    from exvo.progress import progress_bar

    opts = opts or ExtractOptions()
    ex = get_extractor(extractor, opts, cache_dir=cache_dir) if isinstance(extractor, str) else extractor
    t_start = time.perf_counter()
    ex.prepare(corpus, Path(cache_dir))
    t0 = time.perf_counter()
    prepare_seconds = t0 - t_start
    want = list(ids) if ids is not None else list(corpus.ids)
    path = cache_path(cache_dir, corpus.name, ex.name)
    config, keep = with_layers(ex.config(), opts.layers)
    summary_path = path.with_suffix(".summary.json")
    wkw = dict(overwrite=overwrite, dtype=opts.dtype, feature_names=ex.feature_names(), part_size=part_size,
               flush_seconds=flush_seconds)
    if shard is not None:
        from exvo.extract import shard as S

        shares = S.assign(want, S.clip_seconds([corpus.audio_path(i) for i in want]), shard.count)
        digest, want = S.assignment_digest(shares), shares[shard.index]
        summary_path = path.with_name(f"{path.stem}.shard-{shard.tag}.summary.json")
        writer = S.ShardWriter(path, shard, ex.name, config, **wkw)
    else:
        writer = CacheWriter(path, ex.name, config, **wkw)
    limit = parse_max_failures(max_failures, len(want))
    summary = ExtractionSummary(ex.name, str(path), len(want), 0, 0, prepare_seconds=prepare_seconds)
    try:
        with ExitStack() as stack:
            w = _io(stack.enter_context, writer)   # opening may write too (lock, parts folder)
            if shard is not None:
                _io(S.write_command, path, shard, command)
            elif path.with_suffix(".shards").is_dir():
                summary.messages.append(
                    f"{path.with_suffix('.shards')} holds shards of an earlier sharded run that were never merged; "
                    f"this run does not use them: merge them (`exvo extract --model {ex.name} --merge`) or delete "
                    "that folder")
            paths = {i: corpus.audio_path(i) for i in want}
            _adopt_legacy(w, corpus)
            summary.messages += w.messages
            # identity check of every cached clip of the table: one stat each (a read only
            # when the size matches but the mtime moved)
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
            bar = progress_bar(len(todo), f"extract {ex.name}", progress)
            results = ex.run(todo)
            try:
                for r in results:
                    summary.audio_seconds += r.seconds
                    ident = None
                    if r.error is None:
                        # identity of the bytes just read; a file that changed while it was being
                        # extracted cannot be trusted either way
                        ident = identify(paths[r.id])
                        if (ident.size, ident.mtime_ns) != pre[r.id]:
                            r.error, r.embedding = "the file changed while it was being extracted; run again", None
                    if r.error is not None:
                        summary.failures.append((r.id, r.error))
                        if progress:  # live, above the bar; the caller gets the full list in the summary
                            bar.write(f"  failed {r.id}: {r.error}", file=sys.stderr)
                        if limit is not None and len(summary.failures) > limit:
                            raise ExtractionAborted(
                                f"{len(summary.failures)} clips failed, more than --max-failures {max_failures}; "
                                f"stopped early (the {summary.n_extracted} clips extracted so far are kept). "
                                "Fix the audio listed above and run again to resume"
                            )
                    else:
                        try:
                            if keep is not None:
                                r.embedding = kept_layers(r.embedding, keep, ex.name)
                            _io(w.add, r.id, r.embedding, ident)
                        except CacheDtypeError:
                            raise     # the extractor does not fit the dtype: every clip would fail
                        except CacheError as e:  # e.g. NaN embedding: report the clip, keep going
                            summary.failures.append((r.id, str(e)))
                        else:
                            summary.n_extracted += 1
                            if r.note:
                                summary.notes.append((r.id, r.note))
                    bar.update()
                    el = time.perf_counter() - t0
                    bar.set_postfix_str(f"{summary.audio_seconds / max(el, 1e-9):.1f} audio-s/s, "
                                        f"{len(summary.failures)} failed", refresh=False)
            finally:
                bar.close()
                if hasattr(results, "close"):
                    results.close()   # stop the extractor's workers now, not when the traceback is freed
                ex.close()
            if shard is not None:
                _io(w.mark_done, want, digest, summary.failures, ex.feature_names(), command)
            else:
                _io(w.finalize, order=corpus.ids)
            if w.kept_old:
                summary.messages.append(w.kept_old)
    except _WriteFailed as wf:
        # a write failed (disk full, quota, read-only): parts already on disk are whole
        e = wf.__cause__
        raise CacheError(write_failure_message(path, e, summary)) from e
    finally:
        summary.wall_seconds = time.perf_counter() - t_start
        if path.parent.is_dir():
            tmp = summary_path.with_name(summary_path.name + f".tmp{os.getpid()}")
            try:
                tmp.write_text(json.dumps(asdict(summary), indent=1))
                os.replace(tmp, summary_path)
            except OSError:  # the summary is also returned/printed; a full disk must not hide the real error
                tmp.unlink(missing_ok=True)
    return summary
