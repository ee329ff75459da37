"""Run one extractor over a corpus into its cache: resume, failures, progress."""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from exvo.corpus import Corpus
from exvo.extract.base import ExtractOptions, Extractor, get_extractor
from exvo.extract.cache import CacheError, CacheWriter, cache_path


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
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def line(self) -> str:
        rate = self.n_extracted / self.wall_seconds if self.wall_seconds > 0 else 0.0
        return (f"{self.extractor}: {self.n_cached_before + self.n_extracted}/{self.n_clips} clips cached "
                f"({self.n_extracted} new, {len(self.failures)} failed, {len(self.notes)} notes) "
                f"in {self.wall_seconds:.1f} s [{rate:.1f} clips/s, "
                f"{self.audio_seconds / max(self.wall_seconds, 1e-9):.1f} audio-s/s] → {self.cache}")


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


def extract(corpus: Corpus, extractor: str | Extractor, cache_dir: str | Path = "cache",
            opts: ExtractOptions | None = None, *, overwrite: bool = False,
            max_failures: str | float | int | None = None, ids: Sequence[str] | None = None,
            progress: bool | str = True, part_size: int = 64, flush_seconds: float = 60.0) -> ExtractionSummary:
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
    """
    from exvo.progress import progress_bar

    opts = opts or ExtractOptions()
    ex = get_extractor(extractor, opts, cache_dir=cache_dir) if isinstance(extractor, str) else extractor
    t0 = time.perf_counter()
    ex.prepare(corpus, Path(cache_dir))
    want = list(ids) if ids is not None else list(corpus.ids)
    path = cache_path(cache_dir, corpus.name, ex.name)
    limit = parse_max_failures(max_failures, len(want))
    summary = ExtractionSummary(ex.name, str(path), len(want), 0, 0)
    writer = CacheWriter(path, ex.name, ex.config(), overwrite=overwrite, dtype=opts.dtype,
                         feature_names=ex.feature_names(), part_size=part_size, flush_seconds=flush_seconds)
    try:
        with ExitStack() as stack:
            w = _io(stack.enter_context, writer)   # opening may write too (lock, parts folder)
            todo = [(i, corpus.audio_path(i)) for i in want if i not in w.done]
            summary.n_cached_before = len(want) - len(todo)
            bar = progress_bar(len(todo), f"extract {ex.name}", progress)
            try:
                for r in ex.run(todo):
                    summary.audio_seconds += r.seconds
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
                            _io(w.add, r.id, r.embedding)
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
                ex.close()
            _io(w.finalize, order=corpus.ids, files=[corpus.audio_path(i) for i in corpus.ids])
    except _WriteFailed as wf:
        # a write failed (disk full, quota, read-only): parts already on disk are whole
        e = wf.__cause__
        raise CacheError(
            f"could not write the cache {path} ({getattr(e, 'strerror', None) or e}); the clips saved before "
            f"this error are kept ({summary.n_cached_before + summary.n_extracted} of {summary.n_clips} were "
            "done). Free disk space (or pass --cache DIR on another disk) and run the same command again to resume"
        ) from e
    finally:
        summary.wall_seconds = time.perf_counter() - t0
        if path.parent.is_dir():
            tmp = path.with_suffix(f".summary.json.tmp{os.getpid()}")
            try:
                tmp.write_text(json.dumps(asdict(summary), indent=1))
                os.replace(tmp, path.with_suffix(".summary.json"))
            except OSError:  # the summary is also returned/printed; a full disk must not hide the real error
                tmp.unlink(missing_ok=True)
    return summary
