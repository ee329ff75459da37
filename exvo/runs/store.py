"""The one run writer: every command that writes a run folder goes through :class:`RunWriter`.

A run is written into a hidden staging folder beside its final place
(``<runs>/.<name>.tmp<pid>``) and renamed into place whole by :meth:`RunWriter.commit`, so a
reader never sees half a run; on any error (or Ctrl-C, or interpreter exit) the staging
folder is removed and an existing run of that name stays as it was. ``commit`` writes
``config.json`` last, with the run's provenance (:mod:`exvo.runs.provenance`): what it was
made from and a digest of every file it wrote, so a reader can tell when it went stale.

One writer per name: a :class:`RunWriter` holds ``<runs>/.<name>.lock`` (``flock``, released at
commit or discard, and by the kernel when the process dies), so a second process writing the
same name is refused at its start (:class:`RunBusy`), not thrown away at its commit.
Replacing a run is two renames (old → ``.<name>.old<pid>``, new → ``<name>``); a process killed
between them is recovered by the next writer in that folder (:func:`recover`): the commit is
finished when the new run is complete (its ``config.json`` is written last), else the old run
is put back, and a :class:`RunRecovered` warning says which.

Files exvo reads back cannot run code: JSON, CSV, ``.npz`` (``allow_pickle=False``) and
``torch.load(weights_only=True)`` (:func:`load_torch`).
"""
from __future__ import annotations

import atexit
import errno
import fcntl
import io
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np

NAME_RE = r"[A-Za-z0-9_.@+=-]+"


def check_name(name: str) -> str:
    """``name`` if it is a plain folder name; a name from a user or a file never leaves its folder."""
    if not name or name in (".", "..") or name.startswith(".") or not re.fullmatch(NAME_RE, name):
        raise ValueError(f"run name {name!r} must be a plain folder name (letters, digits, _ . @ + = -, "
                         "not starting with '.')")
    return name


def load_torch(path: str | Path, map_location="cpu"):
    """``torch.load`` that cannot execute code from the file (tensors and plain containers only).

    A file that holds anything else (a pickle planted in a shared folder, or a file not written
    by exvo) raises ``ValueError`` naming it; nothing in it runs.
    """
    import pickle

    import torch

    try:
        return torch.load(Path(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path} holds objects other than tensors and plain containers, so exvo does not load it "
                         f"(nothing in it was run; {str(e).splitlines()[0]}). It was not written by exvo, or was "
                         "altered: delete it (exvo writes it again)") from None


def write_json(path: Path, obj) -> None:
    _write(Path(path), json.dumps(obj, indent=1, default=_jsonable).encode())


def save_torch(obj, path: Path) -> None:
    """``torch.save`` through memory, then one Python write: a full disk raises ``OSError``
    (ENOSPC), which the CLI reports, instead of torch's ``RuntimeError`` from its zip writer."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    _write(Path(path), buf.getvalue())


def _write(path: Path, data: bytes) -> None:
    """Write a file; an OSError names it (a failed ``write`` alone carries no file name)."""
    try:
        path.write_bytes(data)
    except OSError as e:
        if e.filename:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


class RunExists(ValueError):
    """A run folder of that name exists and replacing it was not asked for."""


_STAGED: set[Path] = set()
"""Staging folders made by this process and not yet committed (removed at exit)."""


def check_free(runs_dir: Path, name: str, overwrite: bool = False) -> None:
    """Refuse early (before any training) to replace an existing run unless ``overwrite``, or to write a
    run that another process is writing (:class:`RunBusy`)."""
    final = Path(runs_dir) / name
    if Path(runs_dir).is_dir():
        check_busy(Path(runs_dir), name)
    if final.exists() and not overwrite:
        raise RunExists(
            f"a run named {name!r} already exists ({final}); it is kept. Pass --overwrite to replace it, or "
            "--name NEW to keep both"
        )
    if Path(runs_dir).exists() and not Path(runs_dir).is_dir():
        raise ValueError(f"--runs {runs_dir} is a file, not a folder; pass --runs DIR naming a folder "
                         "(it is created if absent)")


class RunBusy(ValueError):
    """Another process is writing a run of that name right now."""


class RunRecovered(UserWarning):
    """An interrupted commit was finished or undone (the message says which)."""


class LockHeld(Exception):
    """:func:`take_lock` found the lock held by another open file; ``holder``: what it wrote there."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


def take_lock(lock_path: Path) -> int:
    """An exclusive ``flock`` on ``lock_path`` (created, this pid written in it); the open fd.

    Raises :class:`LockHeld` when another open file holds it (another process, or another
    writer of this one). A lock file removed by its holder just as it was taken is not the
    one at ``lock_path`` any more, so the lock is taken again on the current file.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                try:
                    holder = lock_path.read_text().strip()
                except OSError:
                    holder = ""
                raise LockHeld(holder or "?") from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def drop_lock(fd: int, lock_path: Path) -> None:
    """Release :func:`take_lock`'s lock; the file is removed while still held, so no one else owns it."""
    Path(lock_path).unlink(missing_ok=True)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _lock_path(runs_dir: Path, name: str) -> Path:
    return Path(runs_dir) / f".{name}.lock"


def _busy(runs_dir: Path, name: str, holder: str) -> RunBusy:
    return RunBusy(f"another exvo process (pid {holder}) is writing the run {name!r} in {runs_dir} right now; wait "
                   f"for it to finish, or pass --name NEW to write another run beside it")


def check_busy(runs_dir: Path, name: str) -> None:
    """Refuse (:class:`RunBusy`) when another writer holds ``name`` in ``runs_dir`` (nothing is kept locked)."""
    lock = _lock_path(runs_dir, name)
    if not lock.exists():
        return
    try:
        fd = take_lock(lock)
    except LockHeld as e:
        raise _busy(runs_dir, name, e.holder) from None
    except OSError:
        return        # a folder we cannot write: the writer itself reports it
    drop_lock(fd, lock)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True      # exists, owned by someone else
    return True


def recover(runs_dir: Path) -> list[str]:
    """Finish or undo the commits of dead processes in ``runs_dir``, then remove their staging folders.

    A ``.<name>.old<pid>`` of a dead process is the run that commit was replacing: when
    ``<name>`` exists the commit was complete (the old copy is removed); when
    ``.<name>.tmp<pid>`` is complete (holds ``config.json``) it becomes ``<name>``; else the
    old run is put back. Each recovery is a :class:`RunRecovered` warning; returns their texts.
    """
    said = []
    for old in sorted(runs_dir.glob(".*.old*")):
        m = re.fullmatch(r"\.(.+)\.old(\d+)", old.name)
        if not m or not old.is_dir() or int(m.group(2)) == os.getpid() or _pid_alive(int(m.group(2))):
            continue
        name, pid = m.group(1), m.group(2)
        final, tmp = runs_dir / name, runs_dir / f".{name}.tmp{pid}"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)       # the commit was done but for this clean-up
            continue
        if (tmp / "config.json").is_file():
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
            said.append(f"{final}: the exvo process that replaced this run (pid {pid}) was stopped between the two "
                        "renames of its commit; finished it: the new run is in place and the one it replaced is "
                        "removed")
        else:
            os.replace(old, final)
            said.append(f"{final}: restored this run from {old}; the exvo process replacing it (pid {pid}) was "
                        "stopped before the new run was complete")
    for msg in said:
        warnings.warn(msg, RunRecovered, stacklevel=3)
    _sweep_dead(runs_dir)
    return said


def _sweep_dead(runs_dir: Path) -> None:
    """Remove staging folders of processes that no longer run (killed mid-write)."""
    for p in runs_dir.glob(".*.tmp*"):
        m = re.fullmatch(r"\..+\.tmp(\d+)", p.name)
        if m and p.is_dir() and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


def staging_dir(runs_dir: Path, name: str) -> Path:
    """A fresh temporary folder next to the final one; :func:`commit` renames it into place.

    If the run fails or is interrupted before :func:`commit`, the folder is removed by
    :func:`discard_staging` (called by the CLI on any error, and at interpreter exit);
    one left by a killed process is removed by the next call here.
    """
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    recover(runs_dir)
    tmp = staging_path(runs_dir, name)
    shutil.rmtree(tmp, ignore_errors=True)
    _STAGED.add(tmp)                # registered before it exists: an interrupt cannot leave it behind
    tmp.mkdir()
    return tmp


def staging_path(runs_dir: Path, name: str) -> Path:
    """The staging folder of run ``name`` written by this process."""
    return Path(runs_dir) / f".{name}.tmp{os.getpid()}"


def discard_staging(tmp: Path | None = None) -> None:
    """Remove ``tmp`` (or every staging folder of this process not yet committed) and release its name."""
    for p in ([Path(tmp)] if tmp is not None else list(_STAGED)):
        shutil.rmtree(p, ignore_errors=True)
        _STAGED.discard(p)
        _release(p)


_LOCKS: dict[Path, tuple[int, Path]] = {}
"""Staging folder -> (fd, path) of the name lock its writer holds."""


def _release(tmp: Path) -> None:
    held = _LOCKS.pop(Path(tmp), None)
    if held is not None:
        drop_lock(*held)


atexit.register(discard_staging)


def commit(tmp: Path, final: Path, overwrite: bool = False) -> Path:
    """Rename the complete run ``tmp`` to ``final`` so that a reader never sees a half-written run.

    An existing ``final`` is replaced only with ``overwrite`` (else :class:`RunExists`,
    and ``tmp`` is removed); the old folder stays whole until the new one is in place.
    """
    tmp, final = Path(tmp), Path(final)
    old = None
    try:
        if final.exists():
            if not overwrite:
                raise RunExists(
                    f"a run named {final.name!r} already exists ({final}); it is kept and this run is discarded. "
                    "Pass --overwrite to replace it, or --name NEW to keep both"
                )
            old = final.with_name(f".{final.name}.old{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        if old is not None and old.exists() and not final.exists():
            os.replace(old, final)            # the new run did not get in place: the old one goes back
        discard_staging(tmp)
        raise
    _STAGED.discard(tmp)
    _release(tmp)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


class RunWriter:
    """Write one run folder ``<runs_dir>/<name>/`` atomically.

    Use as a context manager; an exception inside discards the staging folder::

        with RunWriter(runs_dir, name, overwrite=False) as w:
            w.json("metrics.json", metrics)
            save_split(pred, w.path, "Val")
            final = w.commit(config, provenance.inputs(corpus=corpus, caches=blocks))

    ``path`` is the staging folder to write into. ``overwrite=False`` refuses an existing run
    before any work (:class:`RunExists`); ``replace_kind`` also allows replacing an existing run
    of that ``kind`` (a fusion re-made from its sources) and refuses any other.
    """

    def __init__(self, runs_dir: str | Path, name: str, overwrite: bool = False, replace_kind: str | None = None):
        self.runs_dir, self.name = Path(runs_dir), check_name(name)
        self.final = self.runs_dir / self.name
        if self.runs_dir.is_dir():
            recover(self.runs_dir)        # a commit cut in two is mended before the name is judged
        self.overwrite = overwrite
        if replace_kind is not None and not overwrite:
            self.overwrite = check_replaceable(self.final, replace_kind)
        check_free(self.runs_dir, self.name, self.overwrite)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        lock = _lock_path(self.runs_dir, self.name)
        try:
            fd = take_lock(lock)
        except LockHeld as e:
            raise _busy(self.runs_dir, self.name, e.holder) from None
        tmp = staging_path(self.runs_dir, self.name)
        _LOCKS[tmp] = (fd, lock)        # registered first: whatever stops this run releases the name
        try:
            self.path = staging_dir(self.runs_dir, self.name)
        except BaseException:
            _release(tmp)
            raise
        self.replaced = self.final.exists()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()

    def file(self, rel: str) -> Path:
        """The staging path of ``rel`` (its folder created)."""
        p = self.path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def json(self, rel: str, obj) -> None:
        write_json(self.file(rel), obj)

    def torch(self, rel: str, obj) -> None:
        save_torch(obj, self.file(rel))

    def discard(self) -> None:
        discard_staging(self.path)

    def commit(self, config: dict, provenance: dict) -> Path:
        """Write ``config.json`` (``config`` plus ``provenance`` with the digests of every file
        written so far) and rename the run into place. Returns the final folder."""
        from exvo.runs.provenance import seal

        try:
            write_json(self.path / "config.json", {**config, "provenance": seal(self.path, provenance)})
        except BaseException:
            self.discard()
            raise
        return commit(self.path, self.final, overwrite=self.overwrite)


def check_replaceable(folder: Path, kind: str) -> bool:
    """Whether ``folder`` exists and is a run of ``kind`` (which a re-made run may replace);
    another kind of run is refused (:class:`RunExists`) before any work."""
    if not Path(folder).exists():
        return False
    have = _kind_of(Path(folder))
    if have != kind:
        raise RunExists(f"{folder} exists and is not a {kind} run (kind={have!r}); pass --name to keep it")
    return True


def _kind_of(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
