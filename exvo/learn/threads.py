"""How many CPU threads stage 2 uses: ``--threads N``, or a default that backs off under load.

Measured on a shared 2-core machine (issue 20): the same 5-seed eGeMAPS run took 15.5 s
with torch's default (one thread per core) and 6.8 s with one thread, because OpenMP
threads that wait on cores busy with other jobs stall every step. The default therefore
takes the cores that are idle now — usable cores minus the 1-minute load average, rounded,
at least 1 — and an explicit ``OMP_NUM_THREADS`` is respected as the user's choice.
"""
from __future__ import annotations

import os
from contextlib import contextmanager


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_threads() -> int:
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = usable_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return cores
    return max(1, min(cores, int(cores - load + 0.5)))


def resolve_threads(threads: int) -> int:
    """``threads`` ≥ 1 as given; 0 = :func:`auto_threads`."""
    if int(threads) < 0:
        raise ValueError(f"--threads must be >= 0 (0 = automatic), got {threads}")
    return int(threads) or auto_threads()


@contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)
