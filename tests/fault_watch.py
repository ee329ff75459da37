"""Synchronising a test with a child process on what the process reports (a line it prints), never
on a sleep: :class:`Lines` reads one of its output streams in a thread, and :meth:`Lines.wait`
returns as soon as a line that matches has been printed (or None at the deadline / its end)."""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, TextIO


class Lines:
    """The lines a child writes to ``stream`` (a text pipe), as they come."""

    def __init__(self, stream: TextIO):
        self._q: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._ended = False
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: TextIO) -> None:
        for line in iter(stream.readline, ""):
            self._q.put(line)
        self._q.put(None)

    def wait(self, match: str | Callable[[str], bool], timeout: float = 90.0) -> str | None:
        """The first line (from now on) that starts with ``match`` (or for which ``match(line)``);
        None if the stream ends or ``timeout`` seconds pass first."""
        ok = (lambda s: s.startswith(match)) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout
        while not self._ended:
            try:
                line = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if line is None:
                self._ended = True
                return None
            self.seen.append(line)
            if ok(line):
                return line
        return None

    def text(self, timeout: float = 30.0) -> str:
        """Everything the stream carried, once it has ended (the process exited)."""
        self._thread.join(timeout)
        while True:
            try:
                line = self._q.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.seen.append(line)
        return "".join(self.seen)


def wait_until(condition: Callable[[], bool], timeout: float, poll: float = 0.02) -> bool:
    """Poll ``condition`` (a file written, a process gone) until it holds or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True
