"""Per-task batches (Burst2Vec's training schedule) and oversampling over joint label cells.

Burst2Vec (Anuchitanukul & Specia, ExVo 2022, App. C) trains with batches that each belong to ONE task:
a batch for task ``j`` (0 emotion, 1 age, 2 country) carries the clips and labels, and only
task ``j``'s losses (and the adversarial terms of a task-``j`` batch) count for it.

One epoch of :func:`task_batches` is, for every task ``t``: a fresh permutation of ``t``'s
rows (the Train rows that have ``t``'s label), cut into batches of exactly ``batch_size``
(the last one filled up by wrapping round to the start of the same permutation, so every
row is seen at least once and every batch has the same shape); then all tasks' batches in
one random order. Every seed therefore makes the same number of steps with the same batch
shapes (the framework stacks the seeds' batches), while the order and the tasks' sequence
differ per seed (each seed's own generator).

Oversampling (``cells``): the paper oversamples "based on the cross-label distribution of the
three tasks" so that balancing one task does not unbalance another. Every Train row gets a
joint cell ``(country, age range, dominant emotion)`` (:func:`joint_cells`); each epoch,
every non-empty cell is filled up to the size of the largest cell with rows of that cell
drawn at random with replacement (all of its own rows once, plus the draws).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from exvo.learn.framework import Batch, Sampler

TASKS = ("emotion", "age", "country")
AGE_EDGES = (25.0, 30.0, 35.0)
"""Default age-range boundaries in years (ranges <25, 25-30, 30-35, ≥35: the ExVo ages run 20-39)."""


def joint_cells(country: np.ndarray, age_years: np.ndarray, emotions: np.ndarray,
                age_edges=AGE_EDGES) -> np.ndarray:
    """Joint label cell of each row: ``country · (n_ranges · 10) + age_range · 10 + dominant_emotion``.

    ``country`` ``(n,)`` int 0-3, ``age_years`` ``(n,)``, ``emotions`` ``(n, 10)``; rows must be
    fully labelled (raises otherwise). The dominant emotion is the argmax of the 10 intensities.
    """
    country = np.asarray(country)
    age_years = np.asarray(age_years, dtype=np.float64)
    emotions = np.asarray(emotions, dtype=np.float64)
    bad = (country < 0) | ~np.isfinite(age_years) | ~np.isfinite(emotions).all(1)
    if bad.any():
        raise ValueError(f"oversampling needs every Train row's country, age and emotions; {int(bad.sum())} "
                         "row(s) lack one. Drop --oversample or complete the labels")
    ranges = np.searchsorted(np.asarray(age_edges, dtype=np.float64), age_years, side="right")
    n_r = len(age_edges) + 1
    return (country.astype(np.int64) * n_r + ranges) * emotions.shape[1] + emotions.argmax(1)


def oversample(rows: np.ndarray, cells: np.ndarray, gen: torch.Generator) -> np.ndarray:
    """``rows`` with every non-empty cell filled up to the largest cell's count (random duplicates).

    ``cells`` ``(len(rows),)`` cell ids. Returns ``n_cells · max_count`` rows (unshuffled).
    """
    rows, cells = np.asarray(rows), np.asarray(cells)
    ids, counts = np.unique(cells, return_counts=True)
    top = int(counts.max()) if counts.size else 0
    out = []
    for c, n in zip(ids, counts):
        mine = rows[cells == c]
        extra = torch.randint(0, int(n), (top - int(n),), generator=gen).numpy()
        out.append(np.concatenate([mine, mine[extra]]))
    return np.concatenate(out) if out else rows[:0]


def task_batches(data: Batch, task_rows: dict[int, np.ndarray], batch_size: int,
                 cells: dict[int, np.ndarray] | None = None) -> Sampler:
    """A framework sampler of per-task batches (see the module docstring).

    ``data``: ``{name: (n, ...)}`` tensors (features and labels); ``task_rows``: ``{task id:
    rows}``; ``cells``: ``{task id: joint cell of each of those rows}`` to oversample, or None.
    Each batch is ``{name: (B, ...)}`` plus ``"task"`` ``(B,)`` int64 (the same id B times) and
    ``"row"`` ``(B,)`` int64 (the rows, for samplers that load data themselves).
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tasks = sorted(task_rows)
    for t in tasks:
        if t not in range(len(TASKS)):
            raise ValueError(f"unknown task id {t}; tasks are {dict(enumerate(TASKS))}")
        if len(task_rows[t]) == 0:
            raise ValueError(f"task {TASKS[t]} has no training rows (no labelled Train clip); "
                             "per-task batches need at least one")
    B = int(batch_size)

    def sample(gen: torch.Generator, epoch: int) -> Iterator[Batch]:
        plan: list[tuple[int, torch.Tensor]] = []
        for t in tasks:
            rows = np.asarray(task_rows[t])
            if cells is not None:
                rows = oversample(rows, cells[t], gen)
            rows_t = torch.as_tensor(rows, dtype=torch.long)
            n = rows_t.numel()
            perm = rows_t[torch.randperm(n, generator=gen)]
            n_batches = -(-n // B)
            # the last batch wraps round to the start of the permutation: every batch has B rows
            idx = perm[torch.arange(n_batches * B) % n].view(n_batches, B)
            plan += [(t, idx[k]) for k in range(n_batches)]
        for k in torch.randperm(len(plan), generator=gen).tolist():
            t, idx = plan[k]
            batch = {name: v[idx] for name, v in data.items()}
            batch["task"] = torch.full((B,), t, dtype=torch.long)
            batch["row"] = idx
            yield batch
    return sample
