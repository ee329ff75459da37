"""The merge of a sharded extraction (:mod:`exvo.extract.shard`) into the cache file.

``exvo extract --model M --merge`` (or the last torchrun rank / SLURM array task) checks
that all N shards are done, share one config and one assignment (computed again from the
corpus when it is given: a shard of another table, or of another corpus with the same folder
name, is named as such), and that every clip of every shard is in its parts or the existing
``.h5`` (or reported failed), exactly once; it then finalizes the ``.h5`` exactly like a
single-process run (old rows ∪ part rows, table order, written to a temporary file and
renamed), so the result is the same file, row for row. Only then are the shard folders
deleted. Every refusal names the fix with a command line built from the command of a shard
that *is* right (its options), for this corpus (its ``--data``), never from the odd one out.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from exvo.corpus import Corpus, listing
from exvo.extract import cache as C
from exvo.extract.cache_assemble import part_ids
from exvo.extract.cache_writer import REBUILD_MARKER, CacheWriter
from exvo.extract.shard import (DONE, assign, assignment_digest, clip_seconds, command_for, shard_dirs,
                                shard_record, shards_root)


@dataclass
class MergeResult:
    path: Path
    n_shards: int
    n_rows: int
    failures: list[tuple[str, str]]
    messages: list[str]


class MergeWriter(CacheWriter):
    """Finalizes the main parts and every shard's parts together (exclusive cache lock)."""

    def __init__(self, path, extractor, config, shard_folders: Sequence[Path], **kw):
        super().__init__(path, extractor, config, **kw)
        self.shard_folders = list(shard_folders)

    def _part_files(self) -> list[Path]:
        own = super()._part_files()
        extra = [p for d in self.shard_folders for p in sorted(d.glob("part-*.npz"))
                 if p.name[5:-4].isdigit()]
        return own + extra


@dataclass
class Shards:
    """The shard folders of one split: ``dirs[i]`` for shard i of ``n``, and where the fixes come from."""

    path: Path
    extractor: str
    n: int
    dirs: dict[int, Path]
    good: list[int]                 # shards made with the reference settings (their commands are the model)
    data: str | None                # the corpus being merged (its --data goes into every hint)

    def command(self, index: int) -> str:
        """The command line that (re)makes shard ``index``: a good shard's, for this corpus."""
        for i in self.good:
            cmd = command_for(shard_record(self.dirs[i]).get("command"), f"{index}/{self.n}", self.data)
            if cmd:
                return cmd
        return (f"exvo extract --model {self.extractor} --data {self.data or 'DATA'} --cache CACHE "
                f"--shard {index}/{self.n}")


def pending(path: Path) -> tuple[int, list[int]] | None:
    """``(N, shards not done)`` of the shard area of ``path``; None when there is none."""
    dirs = shard_dirs(path)
    counts = sorted({n for _, n in dirs})
    if len(counts) != 1:
        return None if not counts else (counts[0], [-1])
    n = counts[0]
    return n, [i for i in range(n) if (i, n) not in dirs or not (dirs[(i, n)] / DONE).is_file()]


def _shards(path: Path, extractor: str, data: str | None) -> tuple[Shards, str, bool]:
    """The one split in ``path``'s shard area, all done, of one config: ``(shards, config JSON, rebuild)``."""
    root = shards_root(path)
    found = shard_dirs(path)
    if not found:
        raise C.CacheError(f"no shards to merge for {path} (looked in {root}); extract them first with "
                           f"`exvo extract --model {extractor} ... --shard I/N` (or under torchrun / a SLURM array)")
    counts = sorted({n for _, n in found})
    if len(counts) > 1:
        raise C.CacheError(
            f"{root} holds shards of {len(counts)} different splits (N = {', '.join(map(str, counts))}): "
            f"{', '.join(sorted(d.name for d in found.values()))}. A merge needs the shards of one split; finish "
            "one split and delete the folders of the others (their clips are then extracted again if needed)")
    n = counts[0]
    dirs = {i: d for (i, _), d in found.items()}
    cfgs = {i: (d / "config.json").read_text() for i, d in dirs.items() if (d / "config.json").is_file()}
    ref = cfgs.get(0) or next(iter(cfgs.values()), "")
    sh = Shards(path, extractor, n, dirs, [i for i in sorted(cfgs) if cfgs[i] == ref], data)
    missing = [i for i in range(n) if i not in dirs or not (dirs[i] / DONE).is_file()]
    if missing:
        cmds = "; ".join(f"shard {i}: `{sh.command(i)}`" for i in missing)
        raise C.CacheError(
            f"cannot merge {path}: {len(missing)} of {n} shards are missing or unfinished "
            f"({', '.join(f'{i}/{n}' for i in missing)}). Run (or resume) them, then merge again: {cmds}")
    foreign = [i for i in range(n) if cfgs.get(i) != ref]
    if foreign:
        i = foreign[0]
        raise C.CacheError(
            f"cannot merge {path}: shard(s) {', '.join(f'{k}/{n}' for k in foreign)} were made with other settings "
            f"than shard {sh.good[0]}/{n} ({C.config_diff(json.loads(ref), json.loads(cfgs[i]))}, "
            f"cache=shard {sh.good[0]}, requested=shard {i}). Delete {dirs[i]} and run `{sh.command(i)}` (the "
            "options of the other shards)")
    rebuild = [(dirs[i] / REBUILD_MARKER).exists() for i in range(n)]
    if any(rebuild) and not all(rebuild):
        raise C.CacheError(f"cannot merge {path}: some shards were run with --overwrite and others not; run the "
                           "others with --overwrite too (or none)")
    return sh, ref, all(rebuild)


def merge(path: str | Path, extractor: str, order: Sequence[str], corpus: Corpus | None = None) -> MergeResult:
    """Combine the shards of ``path`` into the ``.h5`` (see the module docstring); raises
    :class:`~exvo.extract.cache.CacheError` naming what is missing or inconsistent and the fix.

    ``corpus`` (the one whose ``order`` is merged): its clip list is split again to tell a
    foreign shard, and its folder is the ``--data`` of every command the messages suggest.
    """
    path = Path(path)
    sh, ref, rebuild = _shards(path, extractor, str(corpus.root) if corpus is not None else None)
    expected = None
    if corpus is not None:
        ids = list(order)
        expected = assignment_digest(assign(ids, clip_seconds([corpus.audio_path(i) for i in ids]), sh.n))
    cfg = json.loads(ref)
    dtype = cfg.pop("storage_dtype", "float32")
    names = json.loads((sh.dirs[0] / DONE).read_text()).get("feature_names")
    w = MergeWriter(path, extractor, cfg, [sh.dirs[i] for i in range(sh.n)], dtype=dtype,
                    feature_names=names, overwrite=rebuild)
    try:
        w.__enter__()
    except C.CacheBusy:
        raise C.CacheBusy(f"cannot merge {path} now: a shard or another extraction is still writing it "
                          f"(lock {path.with_suffix('.lock')}); merge once they have finished") from None
    try:
        # under the exclusive lock no shard runs or starts: what is checked now is what is merged
        failures = _check_complete(sh, rebuild, expected)
        w.finalize(order=list(order))
        if not w.kept_old:      # still under the lock: no shard can start in a folder being deleted
            shutil.rmtree(shards_root(path), ignore_errors=True)
    finally:
        w.__exit__(None, None, None)
    messages = list(w.messages)
    if w.kept_old:
        messages.append(w.kept_old)   # a rebuild that is not complete: the shards' parts stay for the next merge
    rows = len(C.EmbeddingCache(path).ids) if path.exists() else 0
    return MergeResult(path, sh.n, rows, failures, messages)


def _check_assignment(sh: Shards, states: dict[int, dict], expected: str | None) -> None:
    """One clip list for all shards, and (``expected``: this corpus's) the corpus's own."""
    path, n = sh.path, sh.n
    if expected is not None:
        odd = [i for i in range(n) if states[i]["assignment"] != expected]
        if odd:
            other = sorted({shard_record(sh.dirs[i]).get("data") or "?" for i in odd})
            cmds = "; ".join(f"`{sh.command(i)}`" for i in odd)
            raise C.CacheError(
                f"cannot merge {path}: shard(s) {', '.join(f'{i}/{n}' for i in odd)} were made from another clip "
                f"list than the table of {sh.data} (another table, audio that changed since, or another corpus "
                f"with the same folder name: --data {', '.join(other)}). Delete "
                f"{', '.join(str(sh.dirs[i]) for i in odd)} and run them for this corpus: {cmds}")
    elif len({s["assignment"] for s in states.values()}) > 1:
        raise C.CacheError(
            f"cannot merge {path}: the shards split different clip lists (the table or its audio changed between "
            f"shards). Run every shard again ({sh.command(0)} ... for I = 0..{n - 1}): each "
            "resumes and keeps what it already extracted")


def _check_complete(sh: Shards, rebuild: bool, expected: str | None) -> list[tuple[str, str]]:
    """Every shard done, one assignment, every clip exactly once (parts, the .h5, or failed)."""
    path, n, dirs = sh.path, sh.n, sh.dirs
    missing = [i for i in range(n) if not (dirs[i] / DONE).is_file()]
    if missing:
        raise C.CacheError(f"cannot merge {path}: shard(s) {', '.join(f'{i}/{n}' for i in missing)} started again "
                           "while merging; merge once they have finished")
    states = {i: json.loads((dirs[i] / DONE).read_text()) for i in range(n)}
    _check_assignment(sh, states, expected)
    owner: dict[str, int] = {}
    for i in range(n):
        for p in sorted(dirs[i].glob("part-*.npz")):
            for cid in part_ids(p):
                if owner.setdefault(cid, i) != i:
                    raise C.CacheError(
                        f"cannot merge {path}: clip {cid} was extracted by shards {owner[cid]}/{n} and {i}/{n}; "
                        "the shards were split differently (table or audio changed). Delete "
                        f"{shards_root(path)} and extract the shards again")
    assigned: dict[str, int] = {}
    for i, s in states.items():
        for cid in s["ids"]:
            if assigned.setdefault(cid, i) != i:
                raise C.CacheError(f"cannot merge {path}: clip {cid} is assigned to shards {assigned[cid]} and {i}")
    elsewhere: set[str] = set()          # rows the merge keeps from the .h5 or a single-process run's parts
    if path.exists() and not rebuild:
        elsewhere |= set(C.EmbeddingCache(path).ids)
    for p in path.with_suffix(".parts").glob("part-*.npz"):
        elsewhere |= set(part_ids(p))
    failures = [tuple(f) for s in states.values() for f in s["failures"]]
    failed = {f[0] for f in failures}
    for i, s in states.items():
        lack = [c for c in s["ids"] if owner.get(c) != i and c not in elsewhere and c not in failed]
        if lack:
            raise C.CacheError(
                f"cannot merge {path}: shard {i}/{n} lacks {len(lack)} of its clips ({listing(lack, 5)}); "
                f"run it again: `{sh.command(i)}`")
    return failures
