"""Live processes by their /proc/PID/stat fields (Linux): the tests' one way to find workers."""
from __future__ import annotations

from pathlib import Path

PPID, SESSION = 1, 3
"""Indexes into the fields after the command name in /proc/PID/stat (state is index 0)."""


def live_where(field: int, value: int) -> list[int]:
    """Pids of the non-zombie processes whose stat ``field`` equals ``value``."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[field]) == value and fields[0] != "Z":
                out.append(int(d.name))
    return out
