"""What every ``exvo`` command shares: the typer app, the common options, the error wrapper."""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

def _plain_flags(params: list) -> list:
    """Flags take no value: show no type (``<bool>``) after them in help."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


class _Group(typer.core.TyperGroup):
    """``exvo --help`` as users read it: no ``<bool>`` after ``--help``."""

    def get_params(self, ctx):
        return _plain_flags(super().get_params(ctx))


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    help="exvo: embeddings + small learners for vocal-burst research (ICML ExVo 2022 / HUME-VB).\n\n"
         "Stage 1: `exvo extract --model NAME` caches utterance embeddings. "
         "Stage 2: `exvo learn --features A,B` trains multitask learners; `exvo fuse --hybrid` "
         "combines runs per subtask; `exvo report` compares them.",
)

DEMO_DIR = Path("demo_data")

DataOpt = typer.Option(None, "--data", help="Corpus folder (data_info.csv + wav/). Default: $EXVO_DATA, else ./demo_data (created if absent).")
CacheOpt = typer.Option(Path("cache"), "--cache", help="Embedding cache folder; files go to <cache>/<corpus>/<extractor>.h5.")
RunsOpt = typer.Option(Path("runs"), "--runs", help="Folder of learn/fuse run folders.")
TaskOpt = typer.Option(None, "--task", help="The task: exvo-mtl (default: 10 emotions CCC, country UAR, age MAE; S_MTL) | avb-high | avb-two | avb-culture | avb-type | a .toml task file (docs/api.md 'Tasks').")


def command_table(typer_app: typer.Typer = app) -> dict[str, set[str]]:
    """``{command: {option flags}}`` of ``typer_app`` (by default the ``exvo`` app, complete once
    :mod:`exvo.cli` has registered every command), read from the app itself: what recipe steps
    are checked against."""
    group = typer.main.get_command(typer_app)
    out = {}
    for name, cmd in group.commands.items():      # type: ignore[attr-defined]
        flags = set()
        for p in cmd.params:
            flags.update(o for o in (*p.opts, *getattr(p, "secondary_opts", [])) if o.startswith("-"))
        out[name] = flags
    return out


def fail_cli(msg: str, code: int = 2):
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def friendly(fn):
    """Turn the library's validation errors into a one-line message and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*a, **k):
        from exvo.corpus import AudioError, CorpusError
        from exvo.extract.cache import CacheError
        from exvo.predictions import PredictionError

        for stream in (sys.stdout, sys.stderr):
            # a path that is not valid UTF-8 (an odd folder name) must print, not crash the command
            if hasattr(stream, "reconfigure"):
                try:
                    stream.reconfigure(errors="backslashreplace")
                except (ValueError, OSError):
                    pass
        try:
            from exvo.progress import progress_mode

            progress_mode()       # a bad EXVO_PROGRESS fails now, not after an hour of work
            return fn(*a, **k)
        except (CorpusError, CacheError, PredictionError, AudioError, KeyError, ValueError, FileNotFoundError) as e:
            _discard_staging()
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            fail_cli(str(msg))
        except OSError as e:       # disk full, read-only folder, a file where a folder belongs …
            _discard_staging()
            fail_cli(os_error_message(e))
        except KeyboardInterrupt:
            _discard_staging()
            fail_cli("interrupted; nothing half-written is left behind (a run folder appears only when complete)", 130)
    return wrapper


def _discard_staging() -> None:
    """Remove this process's unfinished run folders (``runs/.NAME.tmpPID``) before exiting."""
    runs = sys.modules.get("exvo.runs.store")
    if runs is not None:
        runs.discard_staging()


def os_error_message(e: OSError) -> str:
    """One line for an operating-system error: what failed, on which file, and what to do."""
    import errno

    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    what = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"could not write{where}: {what}. Free disk space (or write to another disk) and run the command again"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{what}{where}: this folder or file is not writable/readable by you; fix its permissions or choose another path"
    if e.errno in (errno.EISDIR,):
        return f"{where.strip(' ()') or 'the path'} is a folder where a file was expected; give a file name"
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"{what}{where}: a file is in the way where a folder was expected; choose another path"
    return f"{what}{where}"


def resolve_data(data: Optional[Path]) -> Path:
    if data is not None:
        return data
    env = os.environ.get("EXVO_DATA")
    if env:
        return Path(env)
    if not (DEMO_DIR / "data_info.csv").is_file():
        from exvo.demo import make_demo_corpus

        typer.echo(f"no --data and no $EXVO_DATA: creating the demo corpus in {DEMO_DIR}/ …", err=True)
        make_demo_corpus(DEMO_DIR, progress=sys.stderr.isatty())
    return DEMO_DIR


def load_corpus(data: Optional[Path], task: Optional[str] = None):
    """The corpus at ``--data`` (or the default), with the labels of ``--task`` (None: ExVo-MTL)."""
    from exvo.corpus import Corpus

    return Corpus.from_dir(resolve_data(data), task=task)


class _Command(typer.core.TyperCommand):
    """Help as users read it: ``PRED`` (not ``{pred}``) in usage lines, no ``<bool>`` after flags."""

    def get_params(self, ctx):
        return _plain_flags(super().get_params(ctx))

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if p.param_type_name != "argument":
                continue
            name = (p.metavar or p.name or "ARG").upper()
            name = name if p.required else f"[{name}]"
            pieces.append(name + ("..." if p.nargs != 1 else ""))
        return pieces


def use_plain_help(typer_app: typer.Typer) -> None:
    """Give every registered command :class:`_Command` (without repeating ``cls=`` on each decorator)."""
    for info in typer_app.registered_commands:
        if info.cls in (None, typer.core.TyperCommand):
            info.cls = _Command
