"""Issue #10, cases 8-10: interrupts, killed parents and a full disk end cleanly.

These run the real command line in a subprocess (``tests/fault_cli.py``): signals go to
its process group, as a terminal's Ctrl-C does. openSMILE (eGeMAPS) is the extractor with
worker processes. Linux only (``/proc``, ``RLIMIT_FSIZE``).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fault_corpus import good_corpus
from fault_watch import Lines, wait_until
from procs import SESSION, live_where

HERE = Path(__file__).resolve().parent
CLI = HERE / "fault_cli.py"

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _session_members(sid: int) -> list[int]:
    return live_where(SESSION, sid)     # session id: processes this test started


def _end(p: subprocess.Popen) -> tuple[str, str]:
    """Kill whatever is left of the session the test started (leader, workers) and collect output."""
    for pid in _session_members(p.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        return p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        return "", ""


def _rows_in_parts(parts: Path) -> int:
    n = 0
    for p in parts.glob("part-*.npz"):
        with np.load(p) as z:
            n += len(z["ids"])
    return n


@pytest.fixture(scope="module")
def smile_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hangs") / "hc"
    good_corpus(root, 300, seconds=0.2)
    return root


def _start(corpus: Path, cache: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CLI), "extract", "--model", "egemaps", "--workers", "2",
                             "--data", str(corpus), "--cache", str(cache)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            start_new_session=True)


def _wait_for_a_part(p: subprocess.Popen, parts: Path, timeout: float = 90.0) -> None:
    t = time.monotonic()
    while not list(parts.glob("part-*.npz")):
        assert p.poll() is None, f"the run ended early (exit {p.returncode})"
        assert time.monotonic() - t < timeout, "no part written in time"
        time.sleep(0.05)


def test_case8_two_ctrl_c_presses_exit_130_and_keep_the_parts(smile_corpus, tmp_path):
    parts = tmp_path / "c" / "hc" / "egemaps.parts"
    p = _start(smile_corpus, tmp_path / "c")
    err_lines = Lines(p.stderr)
    try:
        _wait_for_a_part(p, parts)
        workers = _children(p.pid)
        os.killpg(p.pid, signal.SIGINT)
        # the event: the run says it is saving and stopping (the second press must land in that cleanup)
        assert err_lines.wait("interrupt: saving the finished clips"), err_lines.text()[-2000:]
        try:
            os.killpg(p.pid, signal.SIGINT)
        except ProcessLookupError:
            pass                          # it had already finished cleaning up: nothing left to break
        t = time.monotonic()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("still running 30 s after two Ctrl-C presses (hang)")
        took = time.monotonic() - t
        err = err_lines.text()
    finally:
        _end(p)
    assert p.returncode == 130, (p.returncode, err[-2000:])
    assert took < 10, took
    assert "interrupted; the clips finished so far are saved" in err
    assert "Traceback" not in err, err[-3000:]                 # no worker tracebacks either
    assert _rows_in_parts(parts) >= 64
    assert wait_until(lambda: not [w for w in workers if _alive(w)], timeout=10), "workers outlived the run"


def _initialised(pid: int) -> bool:
    """Whether worker ``pid`` ran exvo's initializer (it ignores SIGINT from then on: SigIgn bit 2)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    ign = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("SigIgn:")), "0")
    return bool(int(ign, 16) & (1 << (signal.SIGINT - 1)))


def test_case9_workers_exit_when_the_parent_is_killed(smile_corpus, tmp_path):
    p = _start(smile_corpus, tmp_path / "c")
    workers: list[int] = []
    try:
        t = time.monotonic()
        while len(workers) < 2:          # the pool is up (no need to wait for results)
            assert p.poll() is None and time.monotonic() - t < 90, f"no workers (exit {p.returncode})"
            time.sleep(0.05)
            # the pool's workers, whatever starts them: every child but the resource trackers
            workers = [w for w in _children(p.pid) if "resource_tracker" not in _cmdline(w)]
        # the events: every worker ran its initializer (it ignores SIGINT now), and results flow (a part)
        assert wait_until(lambda: all(_initialised(w) for w in workers), timeout=90), "workers never initialised"
        _wait_for_a_part(p, tmp_path / "c" / "hc" / "egemaps.parts")
        everyone = _children(p.pid)       # workers and resource trackers: none may outlive the parent
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        wait_until(lambda: not [w for w in everyone if _alive(w)], timeout=5, poll=0.1)
        left = [w for w in everyone if _alive(w)]
        assert not left, f"processes {left} ({[_cmdline(w)[:80] for w in left]}) outlived their parent"
    finally:
        _end(p)                    # only the processes this test started


def test_case10_final_write_failing_exits_2_with_the_message_and_keeps_the_parts(tmp_path):
    """A size limit makes the final .h5 write fail like a full disk (EFBIG instead of ENOSPC)."""
    root = tmp_path / "dc"
    good_corpus(root, 60)
    cache = tmp_path / "c"
    args = [sys.executable, str(CLI), "extract", "--model", "_test_wide", "--data", str(root), "--cache", str(cache)]
    # one part (60 clips x 24 kB) fits under 2 MB; the final file (and its reservation) does not
    r = subprocess.run(args, capture_output=True, text=True, env=_env(EXVO_TEST_FSIZE=str(2_000_000)), timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "could not write the cache" in r.stderr and "File too large" in r.stderr, r.stderr
    assert "run the same command again to resume" in r.stderr and "Traceback" not in r.stderr
    assert _rows_in_parts(cache / "dc" / "_test_wide.parts") == 60
    assert not list((cache / "dc").glob("*.tmp*"))
    r = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0 and "60/60 clips cached (0 new" in r.stdout, (r.stdout, r.stderr)
