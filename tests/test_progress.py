"""Progress wherever the output goes: plain lines without a terminal, EXVO_PROGRESS, ETA arithmetic."""
from __future__ import annotations

import io
import re

import pytest

from exvo.progress import DEFAULT_INTERVAL, LineProgress, progress_mode


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_mode_follows_the_terminal_and_exvo_progress():
    assert progress_mode({}, io.StringIO()) == ("lines", DEFAULT_INTERVAL)     # redirected: plain lines
    assert progress_mode({}, Tty()) == ("bar", DEFAULT_INTERVAL)
    assert progress_mode({"EXVO_PROGRESS": "bar"}, io.StringIO())[0] == "bar"
    assert progress_mode({"EXVO_PROGRESS": "lines"}, Tty())[0] == "lines"
    assert progress_mode({"EXVO_PROGRESS": "off"}, Tty())[0] == "off"
    assert progress_mode({"EXVO_PROGRESS": "0"}, Tty())[0] == "off"
    assert progress_mode({"EXVO_PROGRESS": "5"}, Tty()) == ("lines", 5.0)
    assert progress_mode({"EXVO_PROGRESS": "plain"}, Tty())[0] == "lines"
    with pytest.raises(ValueError, match=r"EXVO_PROGRESS='sometimes' is not understood; use auto, bar, lines, off"):
        progress_mode({"EXVO_PROGRESS": "sometimes"}, Tty())


def test_a_bad_exvo_progress_stops_a_command_before_any_work(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from exvo.cli import app

    monkeypatch.setenv("EXVO_PROGRESS", "sometimes")
    res = CliRunner().invoke(app, ["demo-corpus", str(tmp_path / "d")])
    assert res.exit_code == 2 and "EXVO_PROGRESS='sometimes' is not understood" in res.output
    assert not (tmp_path / "d").exists()


def test_lines_at_a_steady_interval_with_rate_and_eta():
    now = [100.0]
    out = io.StringIO()
    bar = LineProgress(10, "extract x", interval=10, stream=out, clock=lambda: now[0])
    for t in (2, 4, 6):                     # 3 clips in 6 s: nothing printed before 10 s
        now[0] = 100 + t
        bar.update()
    assert out.getvalue().splitlines() == ["extract x: 0/10 clips, starting"]
    now[0] = 112.0
    bar.set_postfix_str("7.5 audio-s/s, 1 failed")
    bar.update()                            # 4 clips in 12 s: 1/3 clip/s, 6 left → ETA 18 s
    assert out.getvalue().splitlines()[-1] == (
        "extract x: 4/10 clips (40%) | 0.33 clips/s, 7.5 audio-s/s, 1 failed | elapsed 0:00:12, ETA 0:00:18")
    now[0] = 113.0
    bar.update()                            # within the interval of the last line: quiet
    assert len(out.getvalue().splitlines()) == 2
    bar.close()
    bar.close()                             # once
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("extract x: 5/10 clips (50%)")


def test_extract_prints_plain_lines_when_stderr_is_not_a_terminal(small_demo_corpus_dir, tmp_path, capsys,
                                                                   monkeypatch):
    from exvo.corpus import Corpus
    from exvo.extract.run import extract
    from fault_extractor import RmsExtractor

    monkeypatch.setenv("EXVO_PROGRESS", "0.000001")    # a line per clip, so the test needs no waiting
    corpus = Corpus.from_dir(small_demo_corpus_dir)
    s = extract(corpus, RmsExtractor(), tmp_path / "cache", progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err                                # no bar redraws in a log file
    lines = [ln for ln in err.splitlines() if ln.startswith("extract _test_rms: ")]
    assert lines[0] == f"extract _test_rms: 0/{s.n_clips} clips, starting"
    assert re.fullmatch(rf"extract _test_rms: {s.n_clips}/{s.n_clips} clips \(100%\) \| [0-9.]+ clips/s, "
                        r"[0-9.]+ audio-s/s, 0 failed \| elapsed \d:\d\d:\d\d, ETA 0:00:00", lines[-1]), lines[-1]
    assert len(lines) >= s.n_clips                        # steady: one per interval (here per clip)

    monkeypatch.delenv("EXVO_PROGRESS")                  # default: every 30 s, plus start and end
    extract(corpus, RmsExtractor(), tmp_path / "cache2", progress=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("extract _test_rms: ")]
    assert len(lines) == 2 and "starting" in lines[0] and "ETA" in lines[1]


def test_no_lock_file_is_left_after_a_successful_run(small_demo_corpus_dir, tmp_path):
    from exvo.corpus import Corpus
    from exvo.extract.run import extract
    from fault_extractor import RmsExtractor

    corpus = Corpus.from_dir(small_demo_corpus_dir)
    extract(corpus, RmsExtractor(), tmp_path, progress=False)
    extract(corpus, RmsExtractor(), tmp_path, progress=False)        # resume: locks again, removes again
    assert not list(tmp_path.rglob("*.lock"))


def test_extraction_rates_leave_out_the_extractor_preparation():
    """A task CNN trains for 100 s, then 200 clips (50 s of audio) take 10 s: 20 clips/s, not 1.8."""
    from exvo.extract.run import ExtractionSummary

    s = ExtractionSummary("raw_exvo_er", "c.h5", 200, 0, 200, audio_seconds=50.0, wall_seconds=110.0,
                          prepare_seconds=100.0)
    assert "in 110.0 s, of which 100.0 s preparing the extractor [20.0 clips/s, 5.0 audio-s/s]" in s.line()
    quick = ExtractionSummary("egemaps", "c.h5", 10, 0, 10, audio_seconds=5.0, wall_seconds=2.0, prepare_seconds=0.1)
    assert "in 2.0 s [5.3 clips/s, 2.6 audio-s/s]" in quick.line()
    cached = ExtractionSummary("egemaps", "c.h5", 10, 10, 0, wall_seconds=0.1)      # a re-run: everything cached
    assert "10/10 clips cached (0 new, 0 failed, 0 notes) in 0.1 s [all cached: nothing extracted] → c.h5" in cached.line()
    assert "clips/s" not in cached.line()


def test_a_running_recipe_step_is_never_silent_for_long():
    """A step that prints nothing for a while gets "still running" lines with its latest output."""
    import sys

    from exvo.recipes.run import stream_process

    lines: list[str] = []
    child = "import time; print('epoch 1 done', flush=True); time.sleep(1.0); print('summary line')"
    rc, out, every = stream_process([sys.executable, "-c", child], lines.append, quiet=True, heartbeat=0.2)
    assert rc == 0 and out == ["epoch 1 done", "summary line"] and every == out
    beats = [ln for ln in lines if "still running" in ln]
    assert beats and all(re.fullmatch(r"    \[\d+ s\] still running; latest: epoch 1 done", b) for b in beats)
    lines.clear()
    stream_process([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"], lines.append,
                   quiet=False, heartbeat=30)
    assert sorted(lines) == ["    err", "    out"]


def test_nothing_to_do_says_so_without_zero_over_zero_or_an_unknown_eta():
    out = io.StringIO()
    p = LineProgress(0, "extract egemaps", interval=0.0, stream=out)
    p.update(0)
    p.close()
    assert out.getvalue() == "extract egemaps: nothing to do (0 clips left)\n"


def test_the_demos_in_process_learning_shows_a_line_at_a_steady_pace():
    """The heartbeat prints on its own clock (not per message), with the latest message."""
    import threading

    from exvo.pipeline import Heartbeat

    shown: list[str] = []
    two = threading.Event()

    def echo(line: str) -> None:
        shown.append(line)
        if len(shown) >= 2:
            two.set()

    with Heartbeat(echo, "egemaps_mlp_sys2: ", every=0.02) as beat:
        beat("  epoch 3: selection score 0.3")
        assert two.wait(10)
    n = len(shown)
    assert all(re.fullmatch(r"    \[\d+ s\] egemaps_mlp_sys2: still running(; latest: epoch 3: selection score 0\.3)?", x)
               for x in shown)
    assert shown[-1].endswith("latest: epoch 3: selection score 0.3") and len(shown) == n   # stopped with the block
