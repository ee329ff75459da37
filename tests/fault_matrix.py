"""Fault-injection matrix of issues #10 and #27: every case, through the real command line, in one go.

    PYTHONPATH=. .venv/bin/python tests/fault_matrix.py [--keep DIR] [--only 5,8,27.7 | --only 27]

The cases of issue 27 are in ``tests/fault_cases27.py`` (``--only 27`` runs them all).

Each case builds what it needs under a scratch folder, injects the fault (a shorter table,
a renamed wav/, Ctrl-C twice, kill -9, a file-size limit …), runs ``exvo`` (with the test
extractors of ``tests/fault_cli.py``) and checks the outcome: exit code, message, and that
nothing was lost or served stale. It prints one row per case — case, exit code, verdict —
and exits 0 only if every verdict is ``ok``. Cases that need a non-root user (permission
bits) say ``n/a`` when run as root; ``tests/test_fault_messages.py`` covers them by simulation.
Linux only (signals to process groups, /proc, RLIMIT_FSIZE). Takes a few minutes.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))


from fault_corpus import HEADER, good_corpus, row, tone, write_table, write_wav  # noqa: E402
from fault_watch import Lines, wait_until  # noqa: E402
from procs import SESSION, live_where  # noqa: E402

CLI = [sys.executable, str(HERE / "fault_cli.py")]


def env(**extra) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")])
    e["OMP_NUM_THREADS"] = "1"
    e.update(extra)
    return e


def exvo(*args, timeout=300, **env_extra) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env(**env_extra))


def h5_ids(path: Path) -> list[str]:
    from exvo.extract.cache import EmbeddingCache

    return EmbeddingCache(path).ids


def session(pid: int) -> list[int]:
    return live_where(SESSION, pid)


def end_session(p: subprocess.Popen) -> None:
    for pid in session(p.pid):       # only processes of the session this script started
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        pass


@dataclass
class Result:
    code: int | str
    ok: bool | None          # None: not applicable here
    detail: str


def verdict(code, ok, detail) -> Result:
    return Result(code, bool(ok), detail)


# ----------------------------------------------------------------------------- the cases
def c1_shorter_table(w: Path) -> Result:
    good_corpus(w / "corpus", 24)
    r = exvo("extract", "--model", "_test_rms", "--data", w / "corpus", "--cache", w / "cache")
    lines = (w / "corpus" / "data_info.csv").read_text().splitlines(keepends=True)
    (w / "corpus" / "data_info.csv").write_text("".join(lines[:9]))
    write_wav(w / "corpus", "g002", tone(0.2, freq=999, seed=9))       # force a rewrite too
    r = exvo("extract", "--model", "_test_rms", "--data", w / "corpus", "--cache", w / "cache")
    n = len(h5_ids(w / "cache" / "corpus" / "_test_rms.h5"))
    return verdict(r.returncode, r.returncode == 0 and n == 24, f"cache keeps {n}/24 rows after an 8-row table")


def c2_overwrite_no_audio(w: Path) -> Result:
    good_corpus(w / "corpus", 24)
    exvo("extract", "--model", "_test_rms", "--data", w / "corpus", "--cache", w / "cache")
    h5 = w / "cache" / "corpus" / "_test_rms.h5"
    before = h5.read_bytes()
    os.rename(w / "corpus" / "wav", w / "corpus" / "wav.away")
    r = exvo("extract", "--model", "_test_rms", "--data", w / "corpus", "--cache", w / "cache", "--overwrite")
    same = h5.read_bytes() == before
    return verdict(r.returncode, r.returncode == 1 and same and "kept unchanged" in r.stderr,
                   "old .h5 intact after --overwrite with no audio" if same else "old .h5 changed/lost")


def c2_overwrite_ctrl_c(w: Path) -> Result:
    good_corpus(w / "corpus", 40)
    exvo("extract", "--model", "_test_rms", "--data", w / "corpus", "--cache", w / "cache")
    h5 = w / "cache" / "corpus" / "_test_rms.h5"
    before = h5.read_bytes()
    p = subprocess.Popen([*CLI, "extract", "--model", "_test_rms", "--data", w / "corpus", "--cache", w / "cache",
                          "--overwrite"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env(EXVO_TEST_DELAY="0.2", EXVO_PROGRESS="0.01"), start_new_session=True)
    err = Lines(p.stderr)
    try:
        # the event: the rebuild reports its first clips done (a progress line), so Ctrl-C lands mid-rebuild
        err.wait(lambda ln: re.search(r": [1-9]\d*/40 clips", ln) is not None)
        os.killpg(p.pid, signal.SIGINT)
        p.wait(timeout=30)
    finally:
        end_session(p)
    same = h5.exists() and h5.read_bytes() == before
    return verdict(p.returncode, p.returncode == 130 and same, "old .h5 intact after Ctrl-C during --overwrite"
                   if same else "old .h5 lost")


def c3_demo_non_empty(w: Path) -> Result:
    wav = write_wav(w / "mine", "00000", tone(0.5, seed=1))
    before = wav.read_bytes()
    r = exvo("demo-corpus", w / "mine", "--speakers", "8", "--clips-per-speaker", "1")
    same = wav.read_bytes() == before and len(list((w / "mine").rglob("*"))) == 2
    return verdict(r.returncode, r.returncode == 2 and same and "is not empty" in r.stderr, "own audio untouched")


def _learn_corpus(w: Path) -> list:
    good_corpus(w / "lc", 36, split_cycle=("Train", "Train", "Val"))
    exvo("extract", "--model", "_test_rms", "--data", w / "lc", "--cache", w / "cache")
    return ["--features", "_test_rms", "--arch", "sys1", "--seeds", "1", "--epochs", "1", "--device", "cpu",
            "--data", w / "lc", "--cache", w / "cache", "--runs", w / "runs"]


def c4_learn_replaces_run(w: Path) -> Result:
    args = _learn_corpus(w)
    exvo("learn", *args, "--name", "r", "--seeds", "2")
    before = (w / "runs" / "r" / "metrics.json").read_bytes()
    r = exvo("learn", *args, "--name", "r")
    same = (w / "runs" / "r" / "metrics.json").read_bytes() == before
    left = [p.name for p in (w / "runs").iterdir() if p.name != "r"]
    return verdict(r.returncode, r.returncode == 2 and same and not left and "--overwrite" in r.stderr,
                   "2-seed run kept, 1-seed run refused")


def c5_changed_audio(w: Path) -> Result:
    args = _learn_corpus(w)
    write_wav(w / "lc", "g005", tone(0.2, freq=1500, seed=55))       # same size, other audio
    r1 = exvo("learn", *args, "--name", "stale")
    r2 = exvo("extract", "--model", "_test_rms", "--data", w / "lc", "--cache", w / "cache")
    r3 = exvo("learn", *args, "--name", "fresh")
    ok = (r1.returncode == 2 and "[g005]" in r1.stderr and "exvo extract" in r1.stderr
          and r2.returncode == 0 and "1 changed audio redone" in r2.stdout and r3.returncode == 0)
    return verdict(f"{r1.returncode}/{r2.returncode}/{r3.returncode}", ok,
                   "learn refuses [g005], extract redoes 1 clip, learn then runs")


def c6_float16(w: Path) -> Result:
    good_corpus(w / "corpus", 6)
    r = exvo("extract", "--model", "_test_huge", "--data", w / "corpus", "--cache", w / "cache", "--dtype", "float16")
    return verdict(r.returncode, r.returncode == 2 and "do not fit --dtype float16" in r.stderr
                   and not (w / "cache" / "corpus" / "_test_huge.h5").exists(), "refused, largest value named")


def c7_duplicate_clip(w: Path) -> Result:
    write_table(w / "c", [row("[00005]"), row("00005")], header=HEADER)
    r = exvo("extract", "--model", "_test_rms", "--data", w / "c", "--cache", w / "cache")
    return verdict(r.returncode, r.returncode == 2 and "name the same audio file" in r.stderr, "[00005] + 00005 refused")


def c7_score_ranges(w: Path) -> Result:
    from exvo.corpus import Corpus
    from exvo.predictions import Predictions

    good_corpus(w / "c", 8)
    c = Corpus.from_dir(w / "c")
    emo, cou, age = c.labels("Val")
    emo = emo.copy()
    emo[0, 0] = 1.7
    Predictions(c.split_ids("Val"), emo, cou, age - 100).write(w / "val.csv")
    r = exvo("score", w / "val.csv", "--data", w / "c")
    ok = r.returncode == 0 and "outside [0, 1]" in r.stderr and "negative predicted Age" in r.stderr
    return verdict(r.returncode, ok, "scored, with counted warnings")


def c7_country_proba(w: Path) -> Result:
    args = _learn_corpus(w)
    exvo("learn", *args, "--name", "a")
    exvo("learn", *args, "--name", "b", "--arch", "sys2")
    f = w / "runs" / "b" / "val_country_proba.csv"
    rows = list(csv.reader(open(f)))
    with open(f, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(rows[0])
        for r_ in rows[1:]:
            wr.writerow([r_[0], *[float(v) * 100 for v in r_[1:]]])
    r = exvo("fuse", "--mean", "--data", w / "lc", "--runs", w / "runs")
    return verdict(r.returncode, r.returncode == 2 and str(f) in r.stderr and "outside [0, 1]" in r.stderr,
                   "x100 probabilities refused, file named")


def _smile_run(w: Path) -> subprocess.Popen:
    good_corpus(w / "hc", 300)
    return subprocess.Popen([*CLI, "extract", "--model", "egemaps", "--workers", "2", "--data", w / "hc",
                             "--cache", w / "cache"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(), start_new_session=True)


def _workers(p: subprocess.Popen, timeout=90) -> list[int]:
    t = time.monotonic()
    while time.monotonic() - t < timeout and p.poll() is None:
        ws = [pid for pid in session(p.pid) if pid != p.pid
              and "resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
        if len(ws) >= 2:
            return ws
        time.sleep(0.05)
    return []


def _initialised(pid: int) -> bool:
    """Whether worker ``pid`` ran exvo's initializer (it ignores SIGINT from then on)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    ign = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("SigIgn:")), "0")
    return bool(int(ign, 16) & (1 << (signal.SIGINT - 1)))


def c8_two_ctrl_c(w: Path) -> Result:
    p = _smile_run(w)
    try:
        parts = w / "cache" / "hc" / "egemaps.parts"
        lines = Lines(p.stderr)
        wait_until(lambda: list(parts.glob("part-*.npz")) or p.poll() is not None, timeout=90)
        os.killpg(p.pid, signal.SIGINT)
        lines.wait("interrupt: saving")        # the event: it is saving and stopping; press again now
        try:
            os.killpg(p.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        t = time.monotonic()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            return verdict("hang", False, "still running 30 s after two Ctrl-C")
        took = time.monotonic() - t
        err = lines.text()
    finally:
        end_session(p)
    kept = len(list(parts.glob("part-*.npz")))
    return verdict(p.returncode, p.returncode == 130 and took < 10 and kept and "Traceback" not in err,
                   f"exit after {took:.1f} s, {kept} part(s) kept, no traceback")


def c9_kill9_orphans(w: Path) -> Result:
    p = _smile_run(w)
    try:
        ws = _workers(p)
        # the events: every worker ran exvo's initializer (it ignores SIGINT then), and a part is written
        wait_until(lambda: all(_initialised(x) for x in ws), timeout=90)
        wait_until(lambda: list((w / "cache" / "hc" / "egemaps.parts").glob("part-*.npz")) or p.poll() is not None,
                   timeout=90)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        t = time.monotonic()
        while any(Path(f"/proc/{x}").exists() for x in ws) and time.monotonic() - t < 5:
            time.sleep(0.1)
        left = [x for x in ws if Path(f"/proc/{x}").exists()]
    finally:
        end_session(p)
    return verdict(p.returncode, ws and not left, f"{len(ws)} workers, {len(left)} left 5 s after kill -9")


def c10_disk_full_final_write(w: Path) -> Result:
    good_corpus(w / "dc", 60)
    r = exvo("extract", "--model", "_test_wide", "--data", w / "dc", "--cache", w / "cache", EXVO_TEST_FSIZE="2000000")
    parts = list((w / "cache" / "dc" / "_test_wide.parts").glob("part-*.npz"))
    return verdict(r.returncode, r.returncode == 2 and "could not write the cache" in r.stderr and parts
                   and "Traceback" not in r.stderr, "message, parts kept, no crash")


def _root() -> bool:
    return os.geteuid() == 0


def c11_permission_wav(w: Path) -> Result:
    if _root():
        return Result("-", None, "n/a as root (simulated in test_fault_messages)")
    good_corpus(w / "c", 3)
    (w / "c" / "wav" / "g001.wav").chmod(0)
    r = exvo("extract", "--model", "_test_rms", "--data", w / "c", "--cache", w / "cache")
    return verdict(r.returncode, r.returncode == 1 and "permission denied" in r.stdout, "named as permission")


def c11_non_utf8_folder(w: Path) -> Result:
    good_corpus(w / "plain", 3)
    weird = Path(os.fsdecode(os.fsencode(str(w)) + b"/caf\xe9"))
    os.rename(w / "plain", weird)
    r = exvo("extract", "--model", "_test_rms", "--data", weird, "--cache", w / "cache")
    return verdict(r.returncode, r.returncode == 0 and "3/3 clips cached" in r.stdout, "extracted")


def c11_read_only_cache(w: Path) -> Result:
    if _root():
        return Result("-", None, "n/a as root (simulated in test_fault_messages)")
    good_corpus(w / "c", 3)
    (w / "cache").mkdir()
    (w / "cache").chmod(0o555)
    r = exvo("extract", "--model", "_test_rms", "--data", w / "c", "--cache", w / "cache")
    (w / "cache").chmod(0o755)
    return verdict(r.returncode, r.returncode == 2 and "not writable" in r.stderr, "named as not writable")


def c11_cache_is_a_file(w: Path) -> Result:
    good_corpus(w / "c", 3)
    (w / "f").write_text("x")
    r = exvo("extract", "--model", "_test_rms", "--data", w / "c", "--cache", w / "f")
    return verdict(r.returncode, r.returncode == 2 and "is a file, not a folder" in r.stderr, "named")


def c11_partial_test_labels(w: Path) -> Result:
    rows = [row("[a]"), row("[b]", split="Val"), row("[c]", split="Test"), row("[d]", split="Test")]
    rows[2].update({"Country": "1", "Age": "30"})
    rows[2].update({k: "0.5" for k in HEADER[5:15]})
    write_table(w / "c", rows, header=HEADER)
    (w / "p.csv").write_text("File_ID,Country,Age," + ",".join(HEADER[5:15]) + "\n"
                             + "".join(f"{i},1,30.0," + ",".join(["0.5"] * 10) + "\n" for i in ("[c]", "[d]")))
    r = exvo("score", w / "p.csv", "--data", w / "c", "--split", "Test")
    return verdict(r.returncode, r.returncode == 2 and "only partly labelled" in r.stderr, "the table is named")


def c11_no_train(w: Path) -> Result:
    write_table(w / "c", [row(f"[v{k}]", split="Val") for k in range(4)], header=HEADER)
    for k in range(4):
        write_wav(w / "c", f"v{k}", tone(0.2, seed=k))
    exvo("extract", "--model", "_test_rms", "--data", w / "c", "--cache", w / "cache")
    r = exvo("learn", "--features", "_test_rms", "--data", w / "c", "--cache", w / "cache", "--runs", w / "runs")
    return verdict(r.returncode, r.returncode == 2 and "has no Train rows" in r.stderr, "says so")


def c11_device_tpu(w: Path) -> Result:
    good_corpus(w / "c", 2)
    r = exvo("extract", "--model", "egemaps", "--data", w / "c", "--cache", w / "cache", "--device", "tpu")
    return verdict(r.returncode, r.returncode == 2 and "--device must be" in r.stderr, "refused")


def c12_runs_is_a_file(w: Path) -> Result:
    args = _learn_corpus(w)
    (w / "runs").write_text("x")
    r = exvo("learn", *args)
    return verdict(r.returncode, r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
                   and "is a file" in r.stderr, "message, no traceback")


def c12_predict_out_dir(w: Path) -> Result:
    args = _learn_corpus(w)
    exvo("learn", *args, "--name", "r")
    r = exvo("predict", w / "runs" / "r", "--split", "Val", "--data", w / "lc", "--cache", w / "cache", "--out", w)
    return verdict(r.returncode, r.returncode == 2 and "is a folder" in r.stderr, "message, no traceback")


def c12_disk_full_learn(w: Path) -> Result:
    args = _learn_corpus(w)
    r = exvo("learn", *args, "--name", "r", EXVO_TEST_FSIZE="600")
    left = sorted(p.name for p in (w / "runs").iterdir()) if (w / "runs").exists() else []
    return verdict(r.returncode, r.returncode == 2 and "Traceback" not in r.stderr and not left,
                   f"message, runs/ holds {left or 'nothing'}")


def c12_ctrl_c_learn(w: Path) -> Result:
    args = _learn_corpus(w)
    args[args.index("--epochs") + 1] = "100000"
    args[args.index("--seeds") + 1] = "3"
    p = subprocess.Popen([*CLI, "learn", *map(str, args), "--patience", "100000", "--name", "r"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), start_new_session=True)
    try:
        # the event: its staging folder exists (the run is training into it)
        wait_until(lambda: (w / "runs" / f".r.tmp{p.pid}").exists() or p.poll() is not None, timeout=90)
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=30)
    finally:
        end_session(p)
    left = sorted(q.name for q in (w / "runs").iterdir()) if (w / "runs").exists() else []
    return verdict(p.returncode, p.returncode == 130 and not left and "Traceback" not in err,
                   f"runs/ holds {left or 'nothing'}")


def c12_config_json(w: Path) -> Result:
    args = _learn_corpus(w)
    exvo("learn", *args, "--name", "r")
    (w / "runs" / "r" / "config.json").write_text("{oops")
    r = exvo("predict", w / "runs" / "r", "--split", "Val", "--data", w / "lc", "--cache", w / "cache")
    return verdict(r.returncode, r.returncode == 2 and "config.json" in r.stderr and "Traceback" not in r.stderr,
                   "file named")


CASES = [
    ("1 shorter table keeps rows", c1_shorter_table),
    ("2 --overwrite, wav/ renamed", c2_overwrite_no_audio),
    ("2 --overwrite, Ctrl-C", c2_overwrite_ctrl_c),
    ("3 demo-corpus, non-empty dir", c3_demo_non_empty),
    ("4 learn, existing run name", c4_learn_replaces_run),
    ("5 changed audio (learn/extract/learn)", c5_changed_audio),
    ("6 --dtype float16 overflow", c6_float16),
    ("7 [00005] and 00005", c7_duplicate_clip),
    ("7 score out-of-range values", c7_score_ranges),
    ("7 country proba x100", c7_country_proba),
    ("8 two Ctrl-C (27.19: at the 1st's ack)", c8_two_ctrl_c),
    ("9 kill -9: workers exit", c9_kill9_orphans),
    ("10 disk full, final .h5", c10_disk_full_final_write),
    ("11 permission denied wav", c11_permission_wav),
    ("11 non-UTF-8 folder name", c11_non_utf8_folder),
    ("11 read-only cache", c11_read_only_cache),
    ("11 --cache is a file", c11_cache_is_a_file),
    ("11 partial Test labels", c11_partial_test_labels),
    ("11 no Train rows", c11_no_train),
    ("11 --device tpu", c11_device_tpu),
    ("12 --runs is a file", c12_runs_is_a_file),
    ("12 predict --out is a dir", c12_predict_out_dir),
    ("12 disk full during learn", c12_disk_full_learn),
    ("12 Ctrl-C during learn", c12_ctrl_c_learn),
    ("12 damaged config.json", c12_config_json),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", default=None, help="scratch folder to keep (default: a temporary one, removed)")
    ap.add_argument("--only", default="", help="comma-separated case numbers, e.g. 5,8")
    a = ap.parse_args()
    base = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="exvo_faults_"))
    only = {s.strip() for s in a.only.split(",") if s.strip()}
    from fault_cases27 import CASES as CASES_27

    rows = []
    for k, (name, fn) in enumerate(CASES + CASES_27):
        tag = name.split()[0]
        if only and tag not in only and tag.split(".")[0] not in only:
            continue
        w = base / f"{k:02d}"
        shutil.rmtree(w, ignore_errors=True)
        w.mkdir(parents=True)
        t = time.monotonic()
        try:
            res = fn(w)
        except Exception as e:  # a broken case is a failed verdict, not a crashed matrix
            res = Result("?", False, f"{type(e).__name__}: {str(e)[:80]}")
        rows.append((name, res, time.monotonic() - t))
        v = "ok" if res.ok else ("n/a" if res.ok is None else "FAIL")
        print(f"{name:40s} exit {str(res.code):>8s}  {v:4s}  {res.detail} [{rows[-1][2]:.0f} s]", flush=True)
    print("\n| case | exit code | verdict |\n|---|---|---|")
    for name, res, _ in rows:
        v = "ok" if res.ok else ("n/a" if res.ok is None else "**FAIL**")
        print(f"| {name} | {res.code} | {v}: {res.detail} |")
    bad = [n for n, r, _ in rows if r.ok is False]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} cases good" + (f"; failing: {', '.join(bad)}" if bad else ""))
    if not a.keep:
        shutil.rmtree(base, ignore_errors=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
