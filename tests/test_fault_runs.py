"""Issue 27, cases 14 and 15: one writer per run name, and a commit cut between its two renames is
recovered (finished or undone, and said so) by the next writer. The run layer is
:mod:`exvo.runs.store`; every command that writes a run goes through its :class:`RunWriter`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from exvo.runs.store import RunBusy, RunExists, RunRecovered, RunWriter

ROOT = Path(__file__).resolve().parent.parent


def _commit(runs: Path, name: str, marker: str, overwrite: bool = False) -> Path:
    with RunWriter(runs, name, overwrite=overwrite) as w:
        w.file("what.txt").write_text(marker)
        return w.commit({"kind": "learn", "marker": marker}, {})


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ----------------------------------------------------------------------------- 14. one writer per name
def test_a_second_writer_of_the_same_name_is_refused_at_start_naming_the_first(tmp_path):
    first = RunWriter(tmp_path, "r")
    with pytest.raises(RunBusy, match=rf"another exvo process \(pid {os.getpid()}\) is writing the run 'r' in "
                                      rf"{tmp_path} right now; wait for it to finish, or pass --name NEW"):
        RunWriter(tmp_path, "r")
    other = RunWriter(tmp_path, "other")            # other names are free
    other.discard()
    first.discard()
    RunWriter(tmp_path, "r").discard()              # free again once the first is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == []     # no lock or staging file left


_HOLDER = textwrap.dedent("""
    import sys
    from exvo.runs.store import RunWriter
    w = RunWriter(sys.argv[1], "r")
    print("HOLDING", flush=True)
    sys.stdin.readline()
""")


def _hold(runs: Path) -> subprocess.Popen:
    """A process holding a RunWriter of name ``r`` in ``runs`` (returned once it says so)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(runs)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "HOLDING"          # the event: it holds the name now
    return p


def test_another_process_writing_the_name_is_refused_and_its_death_frees_it(tmp_path):
    p = _hold(tmp_path)
    try:
        with pytest.raises(RunBusy, match=rf"another exvo process \(pid {p.pid}\) is writing the run 'r'"):
            RunWriter(tmp_path, "r")
    finally:
        p.kill()
        p.wait()
    w = RunWriter(tmp_path, "r")          # kill -9 released its lock; its staging folder is swept
    assert sorted(q.name for q in tmp_path.iterdir()) == [".r.lock", f".r.tmp{os.getpid()}"]
    w.discard()


def test_commit_and_discard_release_the_name(tmp_path):
    _commit(tmp_path, "r", "one")
    _commit(tmp_path, "r", "two", overwrite=True)        # the first writer released it at commit
    assert (tmp_path / "r" / "what.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


# ----------------------------------------------------------------------------- 15. a commit cut in two
def _cut_commit(runs: Path, new_complete: bool) -> int:
    """Leave the state of a replacing commit of run A killed between its two renames."""
    _commit(runs, "A", "old")
    pid = _dead_pid()
    os.rename(runs / "A", runs / f".A.old{pid}")                     # rename 1 done
    tmp = runs / f".A.tmp{pid}"
    tmp.mkdir()
    (tmp / "what.txt").write_text("new")
    if new_complete:
        (tmp / "config.json").write_text(json.dumps({"kind": "learn", "marker": "new"}))   # written last
    return pid


def test_a_commit_killed_between_its_renames_is_finished_by_the_next_writer(tmp_path):
    pid = _cut_commit(tmp_path, new_complete=True)
    with pytest.warns(RunRecovered, match=rf"{tmp_path / 'A'}: the exvo process that replaced this run \(pid "
                                          rf"{pid}\) was stopped between the two renames of its commit; finished "
                                          r"it: the new run is in place and the one it replaced is removed"):
        w = RunWriter(tmp_path, "B")
    w.discard()
    assert (tmp_path / "A" / "what.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A"]


def test_a_commit_killed_before_the_new_run_was_whole_restores_the_old_run(tmp_path):
    pid = _cut_commit(tmp_path, new_complete=False)
    with pytest.warns(RunRecovered, match=rf"{tmp_path / 'A'}: restored this run from {tmp_path / f'.A.old{pid}'}; "
                                          rf"the exvo process replacing it \(pid {pid}\) was stopped before the new "
                                          r"run was complete"):
        with pytest.raises(RunExists, match="a run named 'A' already exists"):
            RunWriter(tmp_path, "A")          # the same name again: recovered first, then refused as existing
    assert (tmp_path / "A" / "what.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A"]


def test_a_failed_second_rename_puts_the_old_run_back_at_once(tmp_path, monkeypatch):
    _commit(tmp_path, "A", "old")
    real = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".A.tmp"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        _commit(tmp_path, "A", "new", overwrite=True)
    monkeypatch.undo()
    assert (tmp_path / "A" / "what.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A"]


def test_a_live_commit_is_not_touched(tmp_path):
    """An ``.A.old<pid>`` of a process that still runs is its commit in progress: left alone."""
    _commit(tmp_path, "A", "old")
    os.rename(tmp_path / "A", tmp_path / f".A.old{os.getppid()}")
    RunWriter(tmp_path, "B").discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".A.old{os.getppid()}"]


def test_cli_learn_started_twice_with_one_name_refuses_the_second(tmp_path):
    """Through the command line: the second `exvo learn --name r` exits 2 at once, the first is unharmed."""
    from fault_corpus import toy_learn_world
    from typer.testing import CliRunner

    from exvo.cli import app

    root, cache = toy_learn_world(tmp_path, 24)
    runs = tmp_path / "runs"
    p = _hold(runs)                        # a first learn of name r, still training
    try:
        res = CliRunner().invoke(app, ["learn", "--features", "toy", "--data", str(root), "--cache", str(cache),
                                       "--runs", str(runs), "--name", "r", "--seeds", "1", "--epochs", "1",
                                       "--device", "cpu", "--stop-on", "val"])
        assert res.exit_code == 2 and f"another exvo process (pid {p.pid}) is writing the run 'r'" in res.output, \
            res.output
        assert sorted(q.name for q in runs.iterdir()) == [".r.lock", f".r.tmp{p.pid}"]     # the first's, untouched
    finally:
        p.kill()
        p.wait()
