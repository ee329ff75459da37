"""``exvo demo``: the whole pipeline on the procedural demo corpus, in a few minutes on a CPU.

Stages (each says what it does, what it skips and why, and how long it took):

1. corpus   make the demo corpus in ``data_dir`` unless it has a ``data_info.csv``;
2. extract  ``egemaps``, ``compare``, the task CNNs ``raw_exvo_er`` and ``zff_exvo_er``
            (trained for at most :data:`DEMO_CNN_EPOCHS` all-frames epochs), and ``wavlm`` only when
            its weights are on this machine (the hub is never contacted: ``HF_HUB_OFFLINE``
            is set while the extractor loads). An extractor that is not registered, has no
            weights or fails is skipped with a note; the rest go on;
3. learn    one MLP run per feature set in :data:`DEMO_FEATURE_SETS` (plus one early fusion),
            for the sets whose caches exist; with wavlm, a few single layers and ``@best``;
4. fuse     hybrid per-subtask selection over the runs of step 3, chosen on Val (optimistic)
            and with the cv guard;
5. papers   the reduced recipes of ``exvo reproduce`` (the rows marked ``demo``, the same
            seeds): the Idiap and baseline Multi-Task rows, Burst2Vec over ComParE, the
            ExVo-FewShot variants and enrol-to-verify, each ending in its paper-vs-ours table
            ``<runs>/reproduce-<name>/table.md``;
6. generate the ExVo-Generate Train-vs-Val FID table over eGeMAPS (``<runs>/fid/``);
7. report   the table (returned and printed) with figures in ``<runs>/report``, and the
            sections of the task CNNs, the few-shot track, enrol-to-verify and the FID table.

Idempotent: caches are resumed (a finished cache costs a read), and a learn run whose
folder already holds ``metrics.json`` for the same features, learner, arch and seeds is
reused, not retrained (delete the folder to retrain); a recipe step whose run folder exists
is skipped. Fusion runs, the FID table and the report are rebuilt each time (they take
seconds).
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from exvo.runs.reader import feature_specs, n_seeds, read_json

DEMO_CNN_EPOCHS = 12
"""Cap on the task CNNs' epochs in the demo. An epoch is one pass over every 250 ms window
of the demo's Train split (≈ 85 k windows): ≈ 6 s on one idle core, so the two demo CNNs
take ≈ 2-3 minutes together. Uncapped, the schedule runs until the lr falls below 1e-6
(≥ 17 more epochs after the last improvement); 12 epochs reach most of its Val UAR
(see benchmarks/README.md)."""
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


def _extract_all(corpus, cache_dir: Path, echo, progress: bool | str) -> list[str]:
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


def _papers(corpus, data_dir: Path, cache_dir: Path, runs_dir: Path, seeds: int, echo, commands) -> None:
    """Run every recipe's demo rows (steps whose outputs exist are skipped) and write its table."""
    from exvo.recipes import load as recipes
    from exvo.recipes.run import execute
    from exvo.recipes.table import write

    for name in recipes.names():
        recipe = recipes.load(name)
        if not recipe.demo_rows():
            continue
        t0 = time.perf_counter()
        outcomes = execute(recipe, data_dir, cache_dir, runs_dir, None, commands=commands, echo=lambda m: echo("  " + m),
                           seeds=seeds, quiet=True, only=recipe.demo_rows())
        folder = write(recipe, outcomes, runs_dir, corpus.name)
        counts = {st: sum(o.status == st for o in outcomes)
                  for st in ("done", "skipped", "missing", "not run", "stale", "failed")}
        echo(f"  {name}: {folder / 'table.md'} (" + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
             + f") [{time.perf_counter() - t0:.0f} s]")


def _fid_table(corpus, cache_dir: Path, runs_dir: Path, ready: list[str], echo) -> None:
    if "egemaps" not in ready:
        echo("  skip: no egemaps cache (see the extract notes)")
        return
    from exvo.generate import api
    from exvo.generate.table import DEFAULT_SUBDIR, write_table

    try:
        space = api.feature_space(corpus, cache_dir, features="egemaps")
        # the demo's intensities are not max-normalised per clip, so the paper's "intensity = 1"
        # bins are nearly empty: bin each clip by its strongest emotion instead
        t = api.train_val_table(corpus, space, rule="argmax", echo=lambda m: None, progress=False)
        paths = write_table(t, runs_dir / DEFAULT_SUBDIR, api.table_tag("egemaps", None, "argmax", False))
    except Exception as e:  # the FID table is one figure: its failure must not cost the report
        echo(f"  FAILED: {_first_line(e)}")
        return
    echo(f"  {t.diagonal_line()}\n  wrote {paths['csv']}")


def run_demo(data_dir: Path, cache_dir: Path, runs_dir: Path, seeds: int = 3,
             echo: Callable[[str], None] = print, *, commands: dict[str, set[str]]) -> str:
    """Run the demo pipeline (see the module docstring); returns the report table text.
    ``commands``: the CLI's command table the recipe steps run against
    (:func:`exvo.commands.common.command_table`)."""
    from exvo.corpus import Corpus
    from exvo.demo import make_demo_corpus
    from exvo.fusion.api import fuse
    from exvo.fusion.report import make_report

    data_dir, cache_dir, runs_dir = Path(data_dir), Path(cache_dir), Path(runs_dir)
    progress = sys.stderr.isatty()
    t_all = time.perf_counter()

    echo("1/7 corpus")
    if (data_dir / "data_info.csv").is_file():
        echo(f"  using the corpus in {data_dir}")
    else:
        t0 = time.perf_counter()
        make_demo_corpus(data_dir, progress=progress)
        echo(f"  made the demo corpus in {data_dir} [{time.perf_counter() - t0:.0f} s]")
    corpus = Corpus.from_dir(data_dir)
    echo(f"  {len(corpus)} clips: " + ", ".join(f"{s} {len(corpus.split_ids(s))}" for s in ("Train", "Val", "Test")))

    echo(f"2/7 extract (cache: {cache_dir})")
    ready = _extract_all(corpus, cache_dir, echo, True)   # bar on a terminal, plain lines in a log

    echo(f"3/7 learn (runs: {runs_dir}, {seeds} seeds each)")
    try:
        from exvo.config import build
        from exvo.learn.api import learn
        from exvo.learn.config import LearnConfig
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
    done, names = 0, []
    for fs in sets:
        run_name = _run_name(fs, learner, arch)
        if _reusable(runs_dir / run_name, fs, learner, arch, seeds):
            echo(f"  reuse {runs_dir / run_name} (delete it to retrain)")
            done += 1
            names.append(run_name)
            continue
        t0 = time.perf_counter()
        try:
            res = learn(corpus, build(LearnConfig, features=list(fs), learner=learner, arch=arch, seeds=seeds),
                        cache_dir=cache_dir, runs_dir=runs_dir, name=run_name, echo=lambda *_: None,
                        overwrite=True)   # not reusable (see above): the demo retrains its own run
        except Exception as e:  # one failed run must not cost the others
            echo(f"  FAILED {'+'.join(fs)}: {_first_line(e)}")
            continue
        echo(f"  {res.summary_line()} [{time.perf_counter() - t0:.0f} s]")
        done += 1
        names.append(run_name)
    if not done:
        raise DemoError("every learn run failed; see the messages above")

    echo("4/7 fuse")
    for select_on in ("val", "cv"):
        res = fuse(corpus, runs_dir=runs_dir, run_names=names, mode="hybrid", select_on=select_on,
                   echo=lambda *_: None)
        echo(f"  {res.summary_line()}")
        echo("    " + "; ".join(f"{s}: {', '.join(c)}" for s, c in res.chosen.items()))

    echo(f"5/7 papers (the demo rows of each `exvo reproduce` recipe, {seeds} seeds)")
    _papers(corpus, data_dir, cache_dir, runs_dir, seeds, echo, commands)
    echo("6/7 generate (ExVo-Generate: Train-vs-Val FID between emotion bins, eGeMAPS)")
    _fid_table(corpus, cache_dir, runs_dir, ready, echo)

    echo("7/7 report")
    table = make_report(runs_dir, runs_dir / "report", corpus=corpus)
    echo(table)
    echo(f"demo finished in {time.perf_counter() - t_all:.0f} s")
    return table
