"""Run one extractor over a corpus into its cache: resume, failures, progress."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from exvo.corpus import Corpus
from exvo.extract.base import ExtractOptions, Extractor, get_extractor
from exvo.extract.cache import CacheWriter, cache_path


class ExtractionAborted(RuntimeError):
    """Too many clips failed (``--max-failures``); what was extracted is kept."""


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
            progress: bool = True) -> ExtractionSummary:
    """Extract ``ids`` (default: every clip) of ``corpus`` into ``<cache>/<corpus>/<name>.h5``.

    Already cached clips are skipped (resume). Per-clip failures are collected, not raised;
    ``max_failures`` aborts early (raising :class:`ExtractionAborted`) once exceeded. The
    summary is also written to ``<name>.summary.json`` beside the cache.
    """
    from tqdm import tqdm

    opts = opts or ExtractOptions()
    ex = get_extractor(extractor, opts) if isinstance(extractor, str) else extractor
    t0 = time.perf_counter()
    ex.prepare(corpus, Path(cache_dir))
    want = list(ids) if ids is not None else list(corpus.ids)
    path = cache_path(cache_dir, corpus.name, ex.name)
    limit = parse_max_failures(max_failures, len(want))
    summary = ExtractionSummary(ex.name, str(path), len(want), 0, 0)
    try:
        with CacheWriter(path, ex.name, ex.config(), overwrite=overwrite, dtype=opts.dtype,
                         feature_names=ex.feature_names()) as w:
            todo = [(i, corpus.audio_path(i)) for i in want if i not in w.done]
            summary.n_cached_before = len(want) - len(todo)
            bar = tqdm(total=len(todo), desc=f"extract {ex.name}", unit="clip", disable=not progress,
                       dynamic_ncols=True, mininterval=0.5)
            try:
                for r in ex.run(todo):
                    summary.audio_seconds += r.seconds
                    if r.error is not None:
                        summary.failures.append((r.id, r.error))
                        bar.write(f"  failed {r.id}: {r.error}")
                        if limit is not None and len(summary.failures) > limit:
                            raise ExtractionAborted(
                                f"{len(summary.failures)} clips failed, more than --max-failures {max_failures}; "
                                f"stopped early (the {summary.n_extracted} clips extracted so far are kept). "
                                "Fix the audio listed above and run again to resume"
                            )
                    else:
                        try:
                            w.add(r.id, r.embedding)
                        except Exception as e:  # e.g. NaN embedding: report the clip, keep going
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
            w.finalize(order=corpus.ids, files=[corpus.audio_path(i) for i in corpus.ids])
    finally:
        summary.wall_seconds = time.perf_counter() - t0
        if path.parent.is_dir():
            tmp = path.with_suffix(f".summary.json.tmp{os.getpid()}")
            tmp.write_text(json.dumps(asdict(summary), indent=1))
            os.replace(tmp, path.with_suffix(".summary.json"))
    return summary
