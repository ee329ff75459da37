"""Extraction beyond one process: shards of a corpus, their own part areas, and the merge.

A run is split into N *shards* (``exvo extract ... --shard I/N``; under ``torchrun`` the
shard is ``RANK``/``WORLD_SIZE``, under a SLURM job array ``SLURM_ARRAY_TASK_ID -
SLURM_ARRAY_TASK_MIN`` / ``SLURM_ARRAY_TASK_COUNT``, with no flag). Every shard:

* gets a deterministic, length-balanced subset of the table's clips (:func:`assign`:
  longest clip first to the shard with the fewest audio seconds so far; durations from
  the sound-file headers, no decoding), so the shards finish together; the largest and
  smallest shard differ by at most one clip's length;
* writes its own parts under ``<extractor>.shards/<I>-of-<N>/`` (``config.json``,
  ``part-*.npz`` as in :mod:`exvo.extract.cache_writer`), locked by
  ``<extractor>.shards/<I>-of-<N>.lock``; the cache's own ``<extractor>.lock`` is held
  *shared* by every shard, so N shards run at once while a single-process run or a merge
  (which hold it exclusively) cannot run beside them;
* resumes after a kill like a single-process run (its parts are whole or absent), refuses
  other settings than its parts or the existing ``.h5`` were made with, and reports bad files;
* writes ``DONE.json`` (its clip list, the assignment's digest, failures) when it has
  tried every clip of its share.

A shard checks, before it writes anything, that it would merge with the shards already there
(:func:`check_siblings`: one split, one config), and records its command line and corpus
(``command.json`` in its folder) for the hints of the others and of the merge. The merge
(``exvo extract --model M --merge``, or under ``torchrun`` the last rank after a barrier, or
under a SLURM array the last task to finish) is :mod:`exvo.extract.merge`.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import heapq
import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from exvo.extract import cache as C
from exvo.extract.cache_writer import REBUILD_MARKER, CacheWriter

DONE = "DONE.json"
RECORD = "command.json"
"""In each shard's folder: the command line it ran (``{shard}`` for I/N) and its corpus, for hints."""
FALLBACK_BYTES_PER_SECOND = 32000
"""Duration guess for a file whose header cannot be read (16 kHz, 16-bit mono): it only
affects balance, the clip itself is then reported as bad by the shard that gets it."""
BARRIER_TIMEOUT_HOURS = 48.0
"""How long a torchrun rank waits at the barrier for the slowest rank (gloo's default 30 min
is too short when ranks resume with very different amounts of work left)."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based); ``source``: ``--shard``, ``torchrun`` or ``slurm-array``."""

    index: int
    count: int
    source: str = "--shard"

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count} does not exist: expected I/N with 0 <= I < N "
                             f"(e.g. --shard 0/4 ... --shard 3/4); got I={self.index}, N={self.count} "
                             f"from {self.source}")

    @property
    def tag(self) -> str:
        return f"{self.index}-of-{self.count}"

    @property
    def text(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"1/4"`` → ``Shard(1, 4)``; anything else raises ``ValueError`` with the expected form."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ValueError(f"--shard must be I/N (shard I of N, counted from 0, e.g. 0/4), got {text!r}")
    return Shard(int(m.group(1)), int(m.group(2)))


def torchrun_env(env: Mapping[str, str] = os.environ) -> bool:
    """True when launched by torchrun (or another launcher setting its env contract)."""
    return all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def shard_from_env(env: Mapping[str, str] = os.environ) -> Shard | None:
    """The shard a launcher assigned: torchrun's ``RANK``/``WORLD_SIZE``, else a SLURM array task."""
    if torchrun_env(env):
        n = int(env["WORLD_SIZE"])
        return Shard(int(env["RANK"]), n, "torchrun") if n > 1 else None
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        tid, n = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
        lo = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        if n <= 1:
            return None
        if not 0 <= tid - lo < n:
            raise ValueError(f"SLURM array task {tid} (min {lo}, count {n}) is not one of {n} consecutive tasks; "
                             f"submit a contiguous array without a step, e.g. `sbatch --array=0-{n - 1}`, or pass "
                             "--shard I/N explicitly")
        return Shard(tid - lo, n, "slurm-array")
    return None


def resolve_shard(flag: str | None, env: Mapping[str, str] = os.environ) -> Shard | None:
    """``--shard`` if given (it wins over the launcher's variables), else the launcher's, else None."""
    return parse_shard(flag) if flag else shard_from_env(env)


def rank_options(device: str, workers: int, env: Mapping[str, str] = os.environ) -> tuple[str, int]:
    """Per-rank ``(device, workers)`` under torchrun: ``cuda:LOCAL_RANK`` for ``auto``/``cuda`` when
    GPUs are visible, and the node's cores split between its ranks when ``workers`` is 0 (all)."""
    if not torchrun_env(env):
        return device, workers
    local = int(env.get("LOCAL_RANK", "0"))
    per_node = max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    if device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{local % torch.cuda.device_count()}"
    if workers == 0:
        workers = max(1, (os.cpu_count() or 1) // per_node)
    return device, workers


# ---------------------------------------------------------------- assignment
def clip_seconds(paths: Sequence[str | Path]) -> np.ndarray:
    """``(n,)`` float64 duration in s of each file from its header (no decoding).

    A file whose header cannot be read counts ``size / 32000`` s (0 when missing).
    """
    import soundfile as sf

    out = np.zeros(len(paths))
    for k, p in enumerate(paths):
        try:
            info = sf.info(str(p))
            out[k] = info.frames / float(info.samplerate) if info.samplerate > 0 else 0.0
        except Exception:  # unreadable or not audio: a guess from the size, the shard reports it
            try:
                out[k] = os.stat(p).st_size / FALLBACK_BYTES_PER_SECOND
            except OSError:
                out[k] = 0.0
    return out


def assign(ids: Sequence[str], seconds: Sequence[float], n: int) -> list[list[str]]:
    """Split ``ids`` into ``n`` shards of nearly equal total ``seconds``; each in table order.

    Longest first, each clip to the shard with the fewest seconds so far (ties: the lower
    shard; equal lengths: table order), so max - min shard total <= the longest clip.
    Deterministic: every rank computes the same split from the same table and files.
    """
    if n < 1:
        raise ValueError(f"number of shards must be >= 1, got {n}")
    sec = np.asarray(seconds, dtype=np.float64)
    if sec.shape != (len(ids),):
        raise ValueError(f"{len(ids)} ids but {sec.shape} durations")
    order = sorted(range(len(ids)), key=lambda k: (-sec[k], k))
    which = np.empty(len(ids), dtype=np.int64)
    heap = [(0.0, s) for s in range(n)]        # (seconds so far, shard): the emptier, then the lower shard
    for k in order:
        tot, s = heapq.heappop(heap)
        which[k] = s
        heapq.heappush(heap, (tot + float(sec[k]), s))
    return [[ids[k] for k in range(len(ids)) if which[k] == s] for s in range(n)]


def assignment_digest(shards: Sequence[Sequence[str]]) -> str:
    h = hashlib.sha256()
    for s, ids in enumerate(shards):
        h.update(f"#{s}\n".encode())
        for i in ids:
            h.update(i.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


# ---------------------------------------------------------------- places
def shards_root(path: Path) -> Path:
    return Path(path).with_suffix(".shards")


def shard_dir(path: Path, shard: Shard) -> Path:
    return shards_root(path) / shard.tag


def _lock(fd_path: Path, shared: bool) -> int | None:
    """An ``flock`` on ``fd_path`` (None if another process holds a conflicting one)."""
    fd = os.open(fd_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class ShardWriter(CacheWriter):
    """A :class:`CacheWriter` for one shard: its parts folder and lock, the cache's lock shared.

    It reads the existing ``.h5`` (clips already there are not extracted again) but never
    writes it: :meth:`finalize` is refused; :func:`merge` does that once every shard is done.
    """

    def __init__(self, path: str | Path, shard: Shard, extractor: str, config: dict, *, command: str | None = None,
                 data: str | None = None, **kw):
        super().__init__(path, extractor, config, **kw)
        self.shard = shard
        self.parts_dir = shard_dir(self.path, shard)
        self.lock_path = shards_root(self.path) / f"{shard.tag}.lock"
        self._main_fd: int | None = None
        self.command, self.data = command, data

    def __enter__(self) -> "ShardWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        main = self.path.with_suffix(".lock")
        self._main_fd = _lock(main, shared=True)
        if self._main_fd is None:
            raise C.CacheBusy(f"a single-process extraction or a merge is writing {self.path} (it holds {main}); "
                              f"run shard {self.shard.text} again once that has finished")
        # who holds it, for the message a single-process run gets meanwhile (content only; flock decides)
        os.ftruncate(self._main_fd, 0)
        os.write(self._main_fd, f"{os.getpid()}, shard {self.shard.text} of a sharded run".encode())
        fd = _lock(self.lock_path, shared=False)
        if fd is None:
            _unlock(self._main_fd)
            self._main_fd = None
            try:
                holder = self.lock_path.read_text().strip() or "?"
            except OSError:
                holder = "?"
            raise C.CacheBusy(f"shard {self.shard.text} of {self.path} is already being extracted (pid {holder}); "
                              f"each shard runs once at a time (lock {self.lock_path})")
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        try:
            check_siblings(self.path, self.shard, self.config_str, self.overwrite)   # before anything is written
            (self.parts_dir / DONE).unlink(missing_ok=True)    # done again only once this run has tried every clip
            self._open_state()
            self._atomic_write(self.parts_dir / RECORD, json.dumps({"command": self.command, "data": self.data,
                                                                     "pid": os.getpid()}).encode())
        except BaseException:
            self._release()
            raise
        return self

    def _release(self) -> None:
        super()._release()
        _unlock(self._main_fd)
        self._main_fd = None

    def finalize(self, order, files=None):  # noqa: D102 - shards never write the .h5
        raise C.CacheError("a shard does not write the cache file; merge the shards with `exvo extract --merge`")

    def mark_done(self, mine: Sequence[str], digest: str, failures: Sequence[tuple[str, str]],
                  feature_names: list[str] | None, command: str | None) -> None:
        """Record that this shard tried all of ``mine`` (its share of the assignment ``digest``)."""
        self.flush()
        state = {"shard": self.shard.index, "count": self.shard.count, "assignment": digest, "ids": list(mine),
                 "failures": [list(f) for f in failures], "feature_names": feature_names,
                 "dtype": self.dtype.name, "command": command}
        self._atomic_write(self.parts_dir / DONE, json.dumps(state).encode())


def shard_dirs(path: Path) -> dict[tuple[int, int], Path]:
    """``{(I, N): folder}`` of every shard folder of the cache ``path``."""
    root = shards_root(path)
    out = {}
    if root.is_dir():
        for d in root.iterdir():
            m = re.fullmatch(r"(\d+)-of-(\d+)", d.name)
            if m and d.is_dir():
                out[(int(m.group(1)), int(m.group(2)))] = d
    return out


def shard_record(folder: Path) -> dict:
    """What a shard recorded of its run (``command`` with ``{shard}`` for I/N, ``data``); {} if nothing."""
    try:
        rec = json.loads((Path(folder) / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def command_for(template: str | None, shard_text: str, data: str | None = None) -> str | None:
    """A shard's recorded command for shard ``shard_text`` (I/N), with ``--data`` set to ``data`` if given."""
    if not template:
        return None
    args = shlex.split(template)
    for k, a in enumerate(args):
        if data is not None and a == "--data" and k + 1 < len(args):
            args[k + 1] = data
        elif data is not None and a.startswith("--data="):
            args[k] = f"--data={data}"
    return " ".join(shard_text if a == "{shard}" else shlex.quote(a) for a in args)


def check_siblings(path: Path, shard: Shard, config_str: str, overwrite: bool) -> None:
    """Refuse to start ``shard`` when the shards already there would not merge with it: another split
    (N), or other settings (a rebuild with --overwrite compares with the other rebuilding shards)."""
    for (i, n), d in sorted(shard_dirs(path).items()):
        if (i, n) == (shard.index, shard.count):
            continue
        if n != shard.count:
            raise C.CacheMismatch(
                f"{shards_root(path)} holds shard {i}/{n} of a split into {n} shards; this is shard {shard.text}, "
                f"and a merge needs the shards of one split. Run the shards as --shard I/{n}, or delete "
                f"{shards_root(path)} to split into {shard.count} instead (its clips are then extracted again)")
        cfg = d / "config.json"
        if not cfg.is_file():
            continue
        theirs, rebuilding = cfg.read_text(), (d / REBUILD_MARKER).exists()
        if overwrite and not rebuilding:
            continue           # a shard of the run being rebuilt: it is redone with --overwrite too
        if theirs == config_str and rebuilding == overwrite:
            continue
        rec = shard_record(d)
        fix = command_for(rec.get("command"), shard.text) or f"exvo extract ... --shard {shard.text}"
        why = (f"shard {i}/{n} is a rebuild (--overwrite) and this one is not" if rebuilding != overwrite else
               f"{C.config_diff(json.loads(theirs), json.loads(config_str))}; 'cache' is shard {i}/{n}, "
               "'requested' this one")
        raise C.CacheMismatch(
            f"shard {shard.text} of {path} would not merge with shard {i}/{n}, already in {d} ({why}). Run it "
            f"with the options of the other shards: `{fix}`; or, to change the settings, run every shard with "
            "--overwrite")


# ---------------------------------------------------------------- torchrun
class Distributed:
    """torch.distributed (gloo, CPU) only to wait for all ranks; used only under a launcher."""

    def __init__(self):
        from datetime import timedelta

        import torch.distributed as dist

        self.dist = dist
        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=timedelta(hours=BARRIER_TIMEOUT_HOURS))
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()

    def barrier(self) -> None:
        self.dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """True when ``ok`` holds on every rank (a barrier too)."""
        import torch

        t = torch.tensor([0 if ok else 1], dtype=torch.int64)
        self.dist.all_reduce(t)
        return int(t.item()) == 0

    def close(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()
