"""The one run writer: every command that writes a run folder goes through :class:`RunWriter`.

A run is written into a hidden staging folder beside its final place
(``<runs>/.<name>.tmp<pid>``) and renamed into place whole by :meth:`RunWriter.commit`, so a
reader never sees half a run; on any error (or Ctrl-C, or interpreter exit) the staging
folder is removed and an existing run of that name stays as it was. ``commit`` writes
``config.json`` last, with the run's provenance (:mod:`exvo.runs.provenance`): what it was
made from and a digest of every file it wrote, so a reader can tell when it went stale.

Files exvo reads back cannot run code: JSON, CSV, ``.npz`` (``allow_pickle=False``) and
``torch.load(weights_only=True)`` (:func:`load_torch`).
"""
from __future__ import annotations

import atexit
import io
import json
import os
import re
import shutil
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
    """``torch.load`` that cannot execute code from the file (tensors and plain containers only)."""
    import torch

    return torch.load(Path(path), map_location=map_location, weights_only=True)


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
    """Refuse early (before any training) to replace an existing run unless ``overwrite``."""
    final = Path(runs_dir) / name
    if final.exists() and not overwrite:
        raise RunExists(
            f"a run named {name!r} already exists ({final}); it is kept. Pass --overwrite to replace it, or "
            "--name NEW to keep both"
        )
    if Path(runs_dir).exists() and not Path(runs_dir).is_dir():
        raise ValueError(f"--runs {runs_dir} is a file, not a folder; pass --runs DIR naming a folder "
                         "(it is created if absent)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True      # exists, owned by someone else
    return True


def _sweep_dead(runs_dir: Path) -> None:
    """Remove staging folders of processes that no longer run (killed mid-write)."""
    for p in runs_dir.glob(".*.tmp*"):
        m = re.fullmatch(r"\..+\.(?:tmp|old)(\d+)", p.name)
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
    _sweep_dead(runs_dir)
    tmp = runs_dir / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _STAGED.add(tmp)
    return tmp


def discard_staging(tmp: Path | None = None) -> None:
    """Remove ``tmp`` (or every staging folder of this process not yet committed)."""
    for p in ([Path(tmp)] if tmp is not None else list(_STAGED)):
        shutil.rmtree(p, ignore_errors=True)
        _STAGED.discard(p)


atexit.register(discard_staging)


def commit(tmp: Path, final: Path, overwrite: bool = False) -> Path:
    """Rename the complete run ``tmp`` to ``final`` so that a reader never sees a half-written run.

    An existing ``final`` is replaced only with ``overwrite`` (else :class:`RunExists`,
    and ``tmp`` is removed); the old folder stays whole until the new one is in place.
    """
    tmp, final = Path(tmp), Path(final)
    try:
        old = None
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
        discard_staging(tmp)
        raise
    _STAGED.discard(tmp)
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
        self.overwrite = overwrite
        if replace_kind is not None and not overwrite:
            self.overwrite = check_replaceable(self.final, replace_kind)
        check_free(self.runs_dir, self.name, self.overwrite)
        self.path = staging_dir(self.runs_dir, self.name)
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
