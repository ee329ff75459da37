"""``exvo reproduce NAME``: run a recipe's missing steps, then write the side-by-side table.

Each step is an ``exvo`` command run as its own process (``python -m exvo.cli …``), exactly
what a user would type, with ``--data``/``--cache``/``--runs`` added where the command takes
them. A step is skipped when its output already exists — a run folder ``{run}`` with a
``config.json`` (runs are committed whole, so an existing folder is a finished run), or a
cache that holds every clip of the corpus — so a second ``exvo reproduce`` does no work.
Rows are independent: one failed step costs its own row only. Each run folder a step made is
recorded with its command line in ``<runs>/.reproduce-<name>.steps.json`` (paths resolved, so
``--runs runs`` and ``--runs /abs/runs`` are one command line); a run folder of the same name
made by another command line (other ``--seeds``, say, or by hand) is never reused nor replaced:
its row is reported ``stale`` with the fix.
"""
from __future__ import annotations

import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from exvo.recipes.load import Recipe, Row
from exvo.runs.store import write_json

RUN_COMMANDS_WITH_NAME = ("learn", "fuse", "fewshot", "verify", "finetune", "cnn-posteriors")
RUN_SUBDIRS = {"fewshot": "fewshot", "verify": "verify"}
"""Commands whose ``--name NAME`` run folder is ``<runs>/<subdir>/NAME`` rather than ``<runs>/NAME``."""


def run_folder(runs: Path, command: str, name: str) -> Path:
    sub = RUN_SUBDIRS.get(command)
    return runs / sub / name if sub else runs / name


def row_run_dir(row: Row, recipe: Recipe, runs: Path) -> Path:
    """The run folder whose metrics are the row's figures: the one named by the last ``--name``."""
    for step in reversed(row.steps):
        if "--name" in step[:-1]:
            name = step[step.index("--name") + 1].replace("{run}", row.run_name(recipe.name))
            return run_folder(runs, step[0], name)
    return runs / row.run_name(recipe.name)


@dataclass
class RowOutcome:
    row: Row
    status: str                      # done | skipped | unavailable | missing | failed | stale | not run
    detail: str = ""
    run_dir: Path | None = None
    steps_run: int = 0


@dataclass
class Plan:
    ready: list[Row] = field(default_factory=list)
    outcomes: dict[str, RowOutcome] = field(default_factory=dict)     # rows that will not run, and why


def step_problems(steps: list[list[str]], commands: dict[str, set[str]]) -> list[str]:
    """What in ``steps`` the CLI does not have (an unknown command or option), as messages."""
    problems = []
    for argv in steps:
        cmd = argv[0]
        if cmd not in commands:
            problems.append(f"`exvo {cmd}` does not exist in this version")
            continue
        for a in argv[1:]:
            flag = a.split("=", 1)[0]
            if flag.startswith("--") and flag not in commands[cmd]:
                problems.append(f"`exvo {cmd}` has no option {flag}")
    return problems


def download_hint(hub_id: str, checkpoint_dir: Path | None) -> str:
    dest = (checkpoint_dir or Path("checkpoints")) / hub_id
    return (f"python -c \"from huggingface_hub import snapshot_download; "
            f"snapshot_download('{hub_id}', local_dir='{dest}')\"")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def plan(recipe: Recipe, checkpoint_dir: Path | None, commands: dict[str, set[str]]) -> Plan:
    """Sort rows into those that can run and those that cannot (unavailable, no weights, no command).
    ``commands``: ``{command: {option flags}}`` of the CLI the steps run (the CLI layer passes
    :func:`exvo.commands.common.command_table`; recipes never import the CLI)."""
    p = Plan()
    for row in recipe.rows:
        if row.unavailable:
            p.outcomes[row.id] = RowOutcome(row, "unavailable", row.unavailable)
            continue
        problems = step_problems(row.steps, commands)
        if problems:
            p.outcomes[row.id] = RowOutcome(row, "missing", "; ".join(problems))
            continue
        if row.needs_gpu and not _cuda():
            p.outcomes[row.id] = RowOutcome(row, "skipped", "needs a CUDA GPU (fine-tuning a large speech model on a "
                                            "CPU would take days); run this recipe on a GPU machine")
            continue
        if row.checkpoint and not (checkpoint_dir and (checkpoint_dir / row.checkpoint).is_dir()):
            p.outcomes[row.id] = RowOutcome(row, "skipped", f"no weights for {row.checkpoint}: "
                                            f"{download_hint(row.checkpoint, checkpoint_dir)}")
            continue
        p.ready.append(row)
    return p


def plan_lines(recipe: Recipe, checkpoint_dir: Path | None, commands: dict[str, set[str]]) -> list[str]:
    """``exvo reproduce --list``'s lines for one recipe: the rows that will run (demo rows marked),
    then the others grouped by the reason they will not (one line per reason, not per row)."""
    p = plan(recipe, checkpoint_dir, commands)
    demo = recipe.demo_rows()
    lines = [f"{recipe.name}: {recipe.title}",
             f"  {len(recipe.rows)} rows; commands: {', '.join(recipe.commands())}; "
             f"weights: {', '.join(recipe.checkpoints()) or 'none'}"]
    ready = [r.id + (" (demo)" if r.id in demo else "") for r in p.ready]
    lines.append(f"    will run ({len(ready)}): {', '.join(ready)}" if ready else "    will run: none on this machine")
    same: dict[tuple[str, str], list[str]] = {}
    for o in p.outcomes.values():
        same.setdefault((o.status, o.detail), []).append(o.row.id)
    for (status, detail), ids in same.items():
        lines.append(f"    {status} ({len(ids)}): {', '.join(ids)}: {detail}")
    return lines


def _argv(step: list[str], row: Row, recipe: Recipe, commands: dict[str, set[str]], data: Path, cache: Path,
          runs: Path, checkpoint_dir: Path | None, seeds: int | None = None) -> list[str]:
    argv = [a.replace("{run}", row.run_name(recipe.name)) for a in step]
    flags = commands[argv[0]]
    if seeds is not None and "--seeds" in flags and "--seeds" not in argv:
        argv += ["--seeds", str(seeds)]
    for flag, value in (("--data", data), ("--cache", cache), ("--runs", runs)):
        if flag in flags and flag not in argv:
            argv += [flag, str(value)]
    if row.checkpoint and argv[0] in ("extract", "finetune") and "--checkpoint" not in argv and checkpoint_dir:
        argv += ["--checkpoint", str(checkpoint_dir / row.checkpoint)]
    return argv


class StaleRun(Exception):
    """A run folder a step would write exists but was not made by that exact command line."""


LEDGER = "steps.json"
"""``<runs>/.reproduce-<recipe>.steps.json``: the command line that made each run folder. Beside,
not inside, the table folder: that folder is replaced whole each time the table is written."""


def _ledger(runs: Path, recipe: Recipe) -> Path:
    return runs / f".reproduce-{recipe.name}.{LEDGER}"


PATH_FLAGS = ("--data", "--cache", "--runs", "--checkpoint")
"""Flags whose value is a path: the ledger keeps them resolved, so ``--runs runs`` and
``--runs /abs/runs`` name one folder and one command line."""


def canonical(argv: list[str]) -> list[str]:
    """``argv`` with the value of every :data:`PATH_FLAGS` flag resolved (absolute, links followed).

    A checkpoint given as a hub id (no such path here) stays as spelled."""
    out = list(argv)
    for k in range(len(out) - 1):
        if out[k] in PATH_FLAGS:
            p = Path(out[k + 1])
            if out[k] != "--checkpoint" or p.exists():
                out[k + 1] = str(p.resolve())
    return out


def _read_ledger(path: Path) -> dict[str, list[str]]:
    """The ledger with its keys (run folders) and command lines in :func:`canonical` form; an entry
    written before paths were resolved is read relative to the current folder."""
    import json

    # exvo 0.1 kept the ledger inside the table folder
    legacy = path.parent / path.name[1:].removesuffix(f".{LEDGER}") / LEDGER
    for p in (path, legacy):
        try:
            led = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if p == legacy:
            write_json(path, led)      # moved out before the table folder is next replaced
        return {str(Path(k).resolve()): canonical(v) for k, v in led.items()}
    return {}


def _record(path: Path, folder: Path, argv: list[str]) -> None:
    led = _read_ledger(path)
    led[str(folder.resolve())] = canonical(argv)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, led)


def _step_run_folder(argv: list[str], runs: Path) -> Path | None:
    if argv[0] in RUN_COMMANDS_WITH_NAME and "--name" in argv[:-1]:
        return run_folder(runs, argv[0], argv[argv.index("--name") + 1])
    return None


def _done(argv: list[str], data: Path, cache: Path, runs: Path, ledger: dict[str, list[str]] | None = None) -> bool:
    """Whether the step's output exists: a run folder made by this very command line, or a cache
    covering the corpus. A run folder made otherwise (other seeds or options, or by hand) raises
    :class:`StaleRun`: it is neither reused nor replaced."""
    cmd = argv[0]
    folder = _step_run_folder(argv, runs)
    if folder is not None:
        if not (folder / "config.json").is_file():
            return False
        made_by = (ledger or {}).get(str(folder.resolve()))
        if made_by != canonical(argv):
            raise StaleRun(f"{folder} exists but was made by "
                           + (f"`exvo {shlex.join(made_by)}`" if made_by else "another command")
                           + f", not `exvo {shlex.join(argv)}`; delete it (or use another --runs) to run this row")
        return True
    flags = {a for a in argv if a.startswith("--")}
    # only a plain extract is judged by its cache; with other settings (a checkpoint, --frames …)
    # the step runs, and the cache's own config check resumes it or refuses a mismatch
    if cmd == "extract" and "--model" in flags and flags <= {"--model", "--data", "--cache"}:
        from exvo.corpus import Corpus
        from exvo.extract.cache import EmbeddingCache, cache_path

        corpus = Corpus.from_dir(data)
        path = cache_path(cache, corpus.name, argv[argv.index("--model") + 1])
        try:
            return path.is_file() and audio_unchanged(corpus, EmbeddingCache(path))
        except Exception:       # a damaged cache is the extract step's business: run it
            return False
    return False


def audio_unchanged(corpus, cache) -> bool:
    """Whether the cache holds every clip of ``corpus`` with the audio (size, mtime) it was made
    from: a changed wav makes the extract step run (it re-extracts just the changed clips)."""
    ident = dict(zip(cache.ids, cache.identities))
    for cid, path in corpus.audio_files():
        d = ident.get(cid)
        if d is None:
            return False
        try:
            st = path.stat()
        except OSError:
            return False
        if d.size >= 0 and (st.st_size != d.size or st.st_mtime_ns != d.mtime_ns):
            return False
    return True


def stale_reasons(folder: Path, cache: Path) -> list[str]:
    """Why a finished run folder no longer reflects its inputs (:attr:`exvo.runs.reader.Run.stale`)."""
    from exvo.runs.reader import load_run

    return load_run(folder, cache).stale


HEARTBEAT_SECONDS = 25.0
"""Longest silence of a running step: after this long without a line of output shown, a line says
that it is still running, how long it has run and its latest output (a step can take minutes)."""
REDUCED_SEEDS = 3
"""Seeds of ``exvo reproduce NAME --reduced`` when ``--seeds`` is not given: the demo's, so a reduced
run after ``exvo demo`` finds the demo's runs made by the very same command lines."""


def _pump(stream, tag: str, q: "queue.Queue") -> None:
    for ln in iter(stream.readline, ""):
        q.put((tag, ln.rstrip("\n")))
    q.put((tag, None))


def stream_process(cmd: list[str], echo: Callable[[str], None], quiet: bool,
                   heartbeat: float = HEARTBEAT_SECONDS) -> tuple[int, list[str], list[str]]:
    """Run ``cmd``, showing its output as it comes (``quiet``: none of it) and, whenever nothing was
    shown for ``heartbeat`` seconds, a line ``[N s] still running; latest: …``; returns ``(exit
    code, its stdout lines, all its lines)``."""
    p = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         errors="replace", bufsize=1)
    q: queue.Queue = queue.Queue()
    for stream, tag in ((p.stdout, "out"), (p.stderr, "err")):
        threading.Thread(target=_pump, args=(stream, tag, q), daemon=True).start()
    out, every, open_streams = [], [], 2
    t0 = last_shown = time.monotonic()
    latest = ""
    try:
        while open_streams:
            try:
                tag, ln = q.get(timeout=max(0.05, heartbeat - (time.monotonic() - last_shown)))
            except queue.Empty:
                echo(f"    [{time.monotonic() - t0:.0f} s] still running"
                     + (f"; latest: {latest.strip()[:160]}" if latest else ""))
                last_shown = time.monotonic()
                continue
            if ln is None:
                open_streams -= 1
                continue
            if ln.strip():
                every.append(ln)
                latest = ln
                if tag == "out":
                    out.append(ln)
                if not quiet:
                    echo(f"    {ln}")
                    last_shown = time.monotonic()
    except BaseException:        # Ctrl-C or an echo that failed: the step must not outlive us
        p.kill()
        p.wait()
        raise
    return p.wait(), out, every


def _run_step(argv: list[str], quiet: bool, echo: Callable[[str], None]) -> int:
    """One ``exvo`` command in its own process, never silent for more than :data:`HEARTBEAT_SECONDS`;
    ``quiet`` shows only its last line (its last 12 lines when it fails) and the heartbeats."""
    rc, out, every = stream_process([sys.executable, "-m", "exvo.cli", *argv], echo, quiet)
    if quiet:
        for ln in (every[-12:] if rc not in (0, 1) else out[-1:]):
            echo(f"    {ln}")
    return rc


def _earlier(row: Row, recipe: Recipe, argvs: list[list[str]], data: Path, cache: Path, runs: Path,
             ledger: dict[str, list[str]]) -> RowOutcome:
    """Outcome of a row left out of this call (``--reduced``): its earlier run's figures, or 'not run'."""
    run_dir = row_run_dir(row, recipe, runs)
    try:
        ok = all(_done(a, data, cache, runs, ledger) for a in argvs) and (run_dir / "metrics.json").is_file()
    except StaleRun:
        ok = False
    if ok and (why := stale_reasons(run_dir, cache)):
        return RowOutcome(row, "stale", f"{run_dir.name}: {'; '.join(why)}; `exvo reproduce {recipe.name}` "
                                        "makes it again", run_dir=run_dir)
    if ok:
        return RowOutcome(row, "done", "from an earlier run", run_dir=run_dir)
    return RowOutcome(row, "not run", f"not in the reduced recipe; `exvo reproduce {recipe.name}` runs it")


def execute(recipe: Recipe, data: Path, cache: Path, runs: Path, checkpoint_dir: Path | None = None, *,
            commands: dict[str, set[str]], echo: Callable[[str], None] = print, seeds: int | None = None,
            quiet: bool = False, only: set[str] | None = None) -> list[RowOutcome]:
    """Run every ready row's missing steps; return one outcome per row, in recipe order.

    ``seeds``: passed as ``--seeds`` to every step that takes it and names none (``exvo demo``
    uses 3); the paper rows otherwise run with each command's default (5). ``commands``: as
    :func:`plan`. ``quiet``: show a
    step's last output line only (all of its last lines when it fails). ``only``: ids of the
    rows to run (``--reduced``: the demo rows); the others keep the figures of an earlier run
    of the same command line, or are marked 'not run', so a reduced run never empties the
    table a full run wrote.
    """
    p = plan(recipe, checkpoint_dir, commands)
    ledger_path = _ledger(runs, recipe)
    if only is not None:
        for row in [r for r in p.ready if r.id not in only]:
            argvs = [_argv(s, row, recipe, commands, data, cache, runs, checkpoint_dir, seeds) for s in row.steps]
            p.outcomes[row.id] = _earlier(row, recipe, argvs, data, cache, runs, _read_ledger(ledger_path))
        p.ready = [r for r in p.ready if r.id in only]
    same: dict[tuple[str, str], list[str]] = {}     # rows skipped for the same reason: one line
    for o in p.outcomes.values():
        if o.status != "not run":
            same.setdefault((o.status, o.detail), []).append(o.row.id)
    for (status, detail), ids in same.items():
        echo(f"  {status:11s} {', '.join(ids)}: {detail}")
    if left := sum(o.status == "not run" for o in p.outcomes.values()):
        echo(f"  not run     {left} row(s) outside the reduced recipe (`exvo reproduce {recipe.name}` runs them)")
    ran: dict[tuple[str, ...], int] = {}
    for row in p.ready:
        out = RowOutcome(row, "done", run_dir=row_run_dir(row, recipe, runs))
        for step in row.steps:
            argv = _argv(step, row, recipe, commands, data, cache, runs, checkpoint_dir, seeds)
            key = tuple(argv)
            try:
                done = key not in ran and _done(argv, data, cache, runs, _read_ledger(ledger_path))
            except StaleRun as e:
                out.status, out.detail = "stale", str(e)
                break
            folder = _step_run_folder(argv, runs)
            stale = stale_reasons(folder, cache) if done and folder is not None else []
            run_argv = argv
            if stale:
                # a stale run is not done: make it again; the new run replaces it only once complete
                echo(f"  stale: {folder.name}: {'; '.join(stale)}")
                done = False
                if "--overwrite" in commands.get(argv[0], set()):
                    run_argv = [*argv, "--overwrite"]
            if key in ran:
                rc = ran[key]
            elif done:
                echo(f"  done already: exvo {shlex.join(argv)}")
                rc = 0
            else:
                echo(f"  $ exvo {shlex.join(run_argv)}")
                t0 = time.perf_counter()
                rc = _run_step(run_argv, quiet, echo)
                echo(f"    exit {rc} [{time.perf_counter() - t0:.0f} s]")
                out.steps_run += 1
                if rc == 0 and folder is not None:
                    _record(ledger_path, folder, argv)
            ran[key] = rc
            if rc not in (0, 1):      # 1 = some clips failed, the rest is usable (named in the step's output)
                out.status, out.detail = "failed", f"`exvo {argv[0]}` exited {rc}"
                break
        if out.status == "done" and not (out.run_dir / "metrics.json").is_file():
            out.status, out.detail = "failed", f"no metrics.json in {out.run_dir}"
        p.outcomes[row.id] = out
    return [p.outcomes[r.id] for r in recipe.rows]
