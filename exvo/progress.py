"""Progress of long work wherever its output goes: a bar on a terminal, plain lines in a log.

A tqdm bar redraws one line with carriage returns, which in a log file (a cluster job with
``2> log``) is one unreadable line written at the very end, or nothing. When stderr is not
a terminal we print instead a plain line every ``interval`` seconds::

    extract wavlm: 1200/6000 clips (20%) | 3.1 clips/s, 12.4 audio-s/s, 0 failed | elapsed 0:06:27, ETA 0:25:48

``EXVO_PROGRESS`` (environment) overrides the choice:

==============  ===========================================================
unset / auto    bar on a terminal, plain lines every 30 s otherwise
``bar``         the tqdm bar even without a terminal
``lines``       plain lines every 30 s even on a terminal (``plain`` too)
a number ``N``  plain lines every ``N`` seconds
``off`` / 0     nothing (the summary line at the end is still printed)
==============  ===========================================================
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, TextIO

DEFAULT_INTERVAL = 30.0
"""Seconds between plain progress lines."""


def progress_mode(env: dict | None = None, stream: TextIO | None = None) -> tuple[str, float]:
    """``(mode, interval)`` with mode ``"bar"``, ``"lines"`` or ``"off"`` (see the module table)."""
    env = os.environ if env is None else env
    stream = sys.stderr if stream is None else stream
    raw = str(env.get("EXVO_PROGRESS", "")).strip().lower()
    tty = bool(getattr(stream, "isatty", lambda: False)())
    if raw in ("", "auto", "1", "true", "yes", "on"):
        return ("bar" if tty else "lines"), DEFAULT_INTERVAL
    if raw in ("bar", "lines", "plain"):
        return ("bar" if raw == "bar" else "lines"), DEFAULT_INTERVAL
    if raw in ("off", "0", "false", "no", "none"):
        return "off", DEFAULT_INTERVAL
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"EXVO_PROGRESS={raw!r} is not understood; use auto, bar, lines, off, "
                         "or a number of seconds between progress lines (e.g. 60)") from None
    if seconds < 0:
        raise ValueError(f"EXVO_PROGRESS={raw!r}: seconds between progress lines must be >= 0")
    return "lines", seconds


def _hms(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class LineProgress:
    """A tqdm-like counter that prints a plain line at most every ``interval`` seconds, and at the end.

    Lines say clips done/total, the rate (clips/s), whatever the caller put in the postfix
    (e.g. audio-s/s and failures), the elapsed time and the ETA (remaining / mean rate).
    """

    def __init__(self, total: int, desc: str, interval: float = DEFAULT_INTERVAL, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, unit: str = "clips"):
        self.total, self.desc, self.interval, self.unit = int(total), desc, float(interval), unit
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock
        self.n = 0
        self.postfix = ""
        self.t0 = self.last = clock()
        self.closed = False
        self._emit(start=True)

    def line(self) -> str:
        el = self.clock() - self.t0
        rate = self.n / el if el > 0 else 0.0
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = _hms((self.total - self.n) / rate) if rate > 0 else "?"
        extra = f", {self.postfix}" if self.postfix else ""
        return (f"{self.desc}: {self.n}/{self.total} {self.unit}{pct} | {rate:.2f} {self.unit}/s{extra} | "
                f"elapsed {_hms(el)}, ETA {eta}")

    def _emit(self, start: bool = False) -> None:
        if self.total == 0:          # nothing to do (e.g. everything cached): one plain line, no 0/0 nor ETA ?
            if start:
                print(f"{self.desc}: nothing to do (0 {self.unit} left)", file=self.stream, flush=True)
            return
        text = f"{self.desc}: 0/{self.total} {self.unit}, starting" if start else self.line()
        print(text, file=self.stream, flush=True)
        self.last = self.clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last >= self.interval and self.n < self.total:
            self._emit()

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self.postfix = s

    def write(self, msg: str, file: TextIO | None = None) -> None:
        print(msg, file=file or self.stream, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._emit()


def progress_bar(total: int, desc: str, progress: bool | str = True, unit: str = "clip"):
    """A bar object with ``update``/``set_postfix_str``/``write``/``close``, chosen by ``progress``.

    ``progress``: True = by :func:`progress_mode` (terminal → bar, else lines, ``EXVO_PROGRESS``
    overrides); False = nothing; ``"bar"``, ``"lines"`` or ``"off"`` force a mode.
    """
    from tqdm import tqdm

    mode, interval = progress_mode()
    if progress is not True:
        mode = str(progress) if progress else "off"
    if mode == "lines":
        return LineProgress(total, desc, interval, unit=unit + "s")
    return tqdm(total=total, desc=desc, unit=unit, disable=mode != "bar", dynamic_ncols=True, mininterval=0.5)
