"""``exvo demo``: the whole pipeline on the procedural demo corpus, in a few minutes on a CPU.

Stages (each says what it does, what it skips and why, and how long it took):

1. corpus   make the demo corpus in ``data_dir`` unless it has a ``data_info.csv``;
2. extract  ``egemaps``, ``compare``, the task CNNs ``raw_exvo_er`` and ``zff_exvo_er``
            (trained for at most :data:`DEMO_CNN_EPOCHS` epochs), and ``wavlm`` only when
            its weights are on this machine (the hub is never contacted: ``HF_HUB_OFFLINE``
            is set while the extractor loads). An extractor that is not registered, has no
            weights or fails is skipped with a note; the rest go on;
3. learn    one MLP run per feature set in :data:`DEMO_FEATURE_SETS` (plus one early fusion),
            for the sets whose caches exist; with wavlm, a few single layers and ``@best``;
4. fuse     hybrid per-subtask selection, chosen on Val (optimistic) and with the cv guard;
5. report   the table (returned and printed) with figures in ``<runs>/report``.

Idempotent: caches are resumed (a finished cache costs a read), and a learn run whose
folder already holds ``metrics.json`` for the same features, learner, arch and seeds is
reused, not retrained (delete the folder to retrain). Fusion runs and the report are
rebuilt each time (they take seconds).
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from exvo.fusion.runs import feature_specs, n_seeds, read_json

DEMO_CNN_EPOCHS = 15
DEMO_EXTRACTORS: tuple[str, ...] = ("egemaps", "compare", "raw_exvo_er", "zff_exvo_er")
DEMO_SSL: tuple[str, ...] = ("wavlm",)
DEMO_FEATURE_SETS: tuple[tuple[str, ...], ...] = (
    ("egemaps",), ("compare",), ("raw_exvo_er",), ("zff_exvo_er",), ("egemaps", "raw_exvo_er"),
)


class DemoError(ValueError):
    """The demo cannot go on (nothing to learn, every run failed); the message says why."""


@contextmanager
def _offline():
    """Make SSL loading use local weights only (no hub requests, no long network timeouts)."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0] if s else ''}"


def _extract_all(corpus, cache_dir: Path, echo, progress: bool) -> list[str]:
    """Extract the demo extractors; returns the names whose cache is complete enough to learn on."""
    from exvo.extract.base import ExtractOptions, get_extractor, names
    from exvo.extract.run import extract

    registered = set(names())
    ready = []
    opts = ExtractOptions(train_epochs=DEMO_CNN_EPOCHS)
    for name in (*DEMO_EXTRACTORS, *DEMO_SSL):
        if name not in registered:
            echo(f"  skip {name}: not a registered extractor in this installation")
            continue
        t0 = time.perf_counter()
        try:
            if name in DEMO_SSL:
                with _offline():
                    ex = get_extractor(name, opts)      # loads the weights: fails fast without them
                s = extract(corpus, ex, cache_dir, opts, progress=progress)
            else:
                s = extract(corpus, name, cache_dir, opts, progress=progress)
        except Exception as e:  # one extractor's failure must not stop the demo
            how = "no local weights (offline)" if name in DEMO_SSL else "failed"
            echo(f"  skip {name}: {how}: {_first_line(e)}")
            continue
        echo(f"  {s.line()} [{time.perf_counter() - t0:.0f} s]")
        if s.failures:
            echo(f"  note {name}: {len(s.failures)} clip(s) failed, e.g. {s.failures[0][0]}: {s.failures[0][1]}")
        ready.append(name)
    return ready


def _ssl_sets(name: str, corpus, cache_dir: Path) -> list[tuple[str, ...]]:
    from exvo.extract.cache import EmbeddingCache, cache_path

    ids = EmbeddingCache(cache_path(cache_dir, corpus.name, name)).layer_ids   # the model's indices (--layers)
    layers = sorted({ids[0], ids[len(ids) // 2], ids[-1]})
    return [(f"{name}@{k}",) for k in layers] + [(f"{name}@best",)]


def _run_name(features: tuple[str, ...], learner: str, arch: str) -> str:
    """The folder ``exvo learn`` would choose itself (so CLI and demo runs share names)."""
    from exvo.learn.runs import derive_name

    return derive_name(list(features), learner, arch)


def _reusable(run_dir: Path, features: tuple[str, ...], learner: str, arch: str, seeds: int) -> bool:
    cfg = read_json(run_dir / "config.json") or {}
    return ((run_dir / "metrics.json").is_file() and (run_dir / "val.csv").is_file()
            and feature_specs(cfg) == list(features)
            and cfg.get("learner") == learner and cfg.get("arch") == arch and n_seeds(cfg) == seeds)


def run_demo(data_dir: Path, cache_dir: Path, runs_dir: Path, seeds: int = 3,
             echo: Callable[[str], None] = print) -> str:
    """Run the demo pipeline (see the module docstring); returns the report table text."""
    from exvo.corpus import Corpus
    from exvo.demo import make_demo_corpus
    from exvo.fusion.api import fuse
    from exvo.fusion.report import make_report

    data_dir, cache_dir, runs_dir = Path(data_dir), Path(cache_dir), Path(runs_dir)
    progress = sys.stderr.isatty()
    t_all = time.perf_counter()

    echo("1/5 corpus")
    if (data_dir / "data_info.csv").is_file():
        echo(f"  using the corpus in {data_dir}")
    else:
        t0 = time.perf_counter()
        make_demo_corpus(data_dir, progress=progress)
        echo(f"  made the demo corpus in {data_dir} [{time.perf_counter() - t0:.0f} s]")
    corpus = Corpus.from_dir(data_dir)
    echo(f"  {len(corpus)} clips: " + ", ".join(f"{s} {len(corpus.split_ids(s))}" for s in ("Train", "Val", "Test")))

    echo(f"2/5 extract (cache: {cache_dir})")
    ready = _extract_all(corpus, cache_dir, echo, progress)

    echo(f"3/5 learn (runs: {runs_dir}, {seeds} seeds each)")
    try:
        from exvo.learn.api import LearnConfig, learn
    except ImportError as e:
        raise DemoError(f"the learners are not installed ({_first_line(e)}); cannot run the demo past extraction") from None
    sets = [fs for fs in DEMO_FEATURE_SETS if all(f in ready for f in fs)]
    for name in DEMO_SSL:
        if name in ready:
            sets += _ssl_sets(name, corpus, cache_dir)
    missing = [fs for fs in DEMO_FEATURE_SETS if fs not in sets]
    for fs in missing:
        echo(f"  skip {'+'.join(fs)}: its cache is missing (see the extract notes)")
    if not sets:
        raise DemoError("no feature cache could be built, so there is nothing to learn; see the notes above")
    learner, arch = "mlp", "sys2"
    done = 0
    for fs in sets:
        run_name = _run_name(fs, learner, arch)
        if _reusable(runs_dir / run_name, fs, learner, arch, seeds):
            echo(f"  reuse {runs_dir / run_name} (delete it to retrain)")
            done += 1
            continue
        t0 = time.perf_counter()
        try:
            res = learn(corpus, LearnConfig(features=list(fs), learner=learner, arch=arch, seeds=seeds),
                        cache_dir=cache_dir, runs_dir=runs_dir, name=run_name, echo=lambda *_: None,
                        overwrite=True)   # not reusable (see above): the demo retrains its own run
        except Exception as e:  # one failed run must not cost the others
            echo(f"  FAILED {'+'.join(fs)}: {_first_line(e)}")
            continue
        echo(f"  {res.summary_line()} [{time.perf_counter() - t0:.0f} s]")
        done += 1
    if not done:
        raise DemoError("every learn run failed; see the messages above")

    echo("4/5 fuse")
    for select_on in ("val", "cv"):
        res = fuse(corpus, runs_dir=runs_dir, mode="hybrid", select_on=select_on, echo=lambda *_: None)
        echo(f"  {res.summary_line()}")
        echo("    " + "; ".join(f"{s}: {', '.join(c)}" for s, c in res.chosen.items()))

    echo("5/5 report")
    table = make_report(runs_dir, runs_dir / "report", corpus=corpus)
    echo(table)
    echo(f"demo finished in {time.perf_counter() - t_all:.0f} s")
    return table
