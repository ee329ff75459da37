"""``exvo demo``: the whole pipeline on the procedural demo corpus, in a few minutes on a CPU.

Stages (each says what it does, what it skips and why, and ends with how long it took and the
1-minute load average; the timings are kept in ``<runs>/report/demo_timings.json``):

1. corpus   make the demo corpus in ``data_dir`` unless it has a ``data_info.csv``;
2. extract  ``egemaps``, ``compare``, the task CNNs ``raw_exvo_er`` and ``zff_exvo_er``
            (trained for at most :data:`DEMO_CNN_EPOCHS` all-frames epochs), and ``wavlm`` only when
            its weights are on this machine (the hub is never contacted: ``HF_HUB_OFFLINE``
            is set while the extractor loads). An extractor that is not registered, has no
            weights or fails is skipped with a note; the rest go on;
3. learn    one MLP run per feature set in :data:`DEMO_FEATURE_SETS` (plus one early fusion),
            for the sets whose caches exist; with wavlm, a few single layers and ``@best``;
4. fuse     hybrid per-subtask selection over the runs of step 3, chosen on their out-of-fold Train predictions (Val stays clean) and on halves of Val (cv)
            and with the cv guard;
5. papers   the reduced recipes of ``exvo reproduce`` (the rows marked ``demo``, the same
            seeds): the Idiap and baseline Multi-Task rows, Burst2Vec over ComParE, the
            ExVo-FewShot variants and enrol-to-verify, each ending in its paper-vs-ours table
            ``<runs>/reproduce-<name>-reduced/table.md`` (a full ``exvo reproduce NAME`` keeps its own);
            each step shows a line at least every 25 s while it runs;
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
        folder = write(recipe, outcomes, runs_dir, corpus, reduced=True)
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
    from exvo.generate.table import small_sample_caveat, table_record

    echo(f"  {t.diagonal_line()}\n  wrote {paths['csv']}")
    if caveat := small_sample_caveat(table_record(t)):
        echo(f"  note: {caveat}")


LOAD_SAMPLE_SECONDS = 10.0
"""How often the demo samples the 1-minute load average (its timings mean little without it)."""
LINE_SECONDS = "20"
"""``EXVO_PROGRESS`` during the demo when it is unset and stderr is not a terminal: progress lines every
20 s, so that a log shows a line at least every 30 s (the default is a line every 30 s)."""


class StageClock:
    """Numbered stages that say what they do and, when they end, how long they took and the load
    they ran under (1-minute load average at the stage's end, and sampled every
    :data:`LOAD_SAMPLE_SECONDS` over the whole run): the demo's timings mean little without it."""

    def __init__(self, echo: Callable[[str], None], n: int):
        import threading

        self.echo, self.n, self.k = echo, n, 0
        self.seconds: dict[str, float] = {}
        self.load: dict[str, float] = {"start": _load()}
        self.samples: list[float] = [self.load["start"]]
        self.t0 = time.perf_counter()
        self.done = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self.done.wait(LOAD_SAMPLE_SECONDS):
            self.samples.append(_load())

    def stop(self) -> None:
        self.done.set()

    @contextmanager
    def stage(self, name: str, what: str = ""):
        self.k += 1
        self.echo(f"{self.k}/{self.n} {name}" + (f" ({what})" if what else ""))
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - t0
            self.load[name] = _load()
            self.echo(f"  [{name}: {self.seconds[name]:.0f} s, load {self.load[name]:.1f}]")

    def load_range(self) -> tuple[float, float, float] | None:
        """``(min, mean, max)`` of the 1-minute load average sampled over the run (None: not available)."""
        got = [v for v in self.samples + list(self.load.values()) if v == v]
        return (min(got), sum(got) / len(got), max(got)) if got else None

    def summary(self) -> str:
        total = time.perf_counter() - self.t0
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items())
        r = self.load_range()
        load = f"; 1-min load average {r[0]:.1f}–{r[2]:.1f}, mean {r[1]:.1f}, on {os.cpu_count()} cores" if r else ""
        return f"demo finished in {total:.0f} s ({total / 60:.1f} min: {parts}{load})"

    def record(self) -> dict:
        """What ``<runs>/report/demo_timings.json`` keeps (read by ``scripts/demo_figures.py``)."""
        import platform

        r = self.load_range()
        return {"seconds": {k: round(v, 1) for k, v in self.seconds.items()},
                "total_seconds": round(time.perf_counter() - self.t0, 1), "load_1min_at_stage_end": self.load,
                "load_1min_over_run": None if r is None else {"min": r[0], "mean": round(r[1], 2), "max": r[2],
                                                              "every_seconds": LOAD_SAMPLE_SECONDS},
                "cores": os.cpu_count(), "machine": platform.platform(), "python": platform.python_version()}


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:        # not on every platform
        return float("nan")


HEARTBEAT_SECONDS = 25.0
"""Longest silence of the demo's in-process work (a learn run over ComParE takes minutes under load)."""


class Heartbeat:
    """An ``echo`` for in-process work that prints nothing per message but, every ``every`` seconds
    while the ``with`` block runs, one line ``    [N s] <prefix>still running; latest: <message>``:
    a long learn run stays visible at a steady pace, whatever the time per epoch."""

    def __init__(self, echo: Callable[[str], None], prefix: str, every: float = HEARTBEAT_SECONDS):
        import threading

        self.echo, self.prefix, self.every = echo, prefix, every
        self.latest = ""
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def __call__(self, msg: str = "", *_) -> None:
        if str(msg).strip():
            self.latest = str(msg).strip()

    def _beat(self) -> None:
        t0 = time.monotonic()
        while not self.done.wait(self.every):
            self.echo(f"    [{time.monotonic() - t0:.0f} s] {self.prefix}still running"
                      + (f"; latest: {self.latest[:160]}" if self.latest else ""))

    def __enter__(self) -> "Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def _corpus_stage(data_dir: Path, echo, progress: bool):
    from exvo.corpus import Corpus
    from exvo.demo import make_demo_corpus

    if (data_dir / "data_info.csv").is_file():
        echo(f"  using the corpus in {data_dir}")
    else:
        make_demo_corpus(data_dir, progress=progress)
        echo(f"  made the demo corpus in {data_dir}")
    corpus = Corpus.from_dir(data_dir)
    echo(f"  {len(corpus)} clips: " + ", ".join(f"{s} {len(corpus.split_ids(s))}" for s in ("Train", "Val", "Test")))
    return corpus


def _learn_stage(corpus, cache_dir: Path, runs_dir: Path, ready: list[str], seeds: int, echo) -> list[str]:
    """One MLP run per demo feature set whose caches exist (reused when already made); returns the run names."""
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
    for fs in [fs for fs in DEMO_FEATURE_SETS if fs not in sets]:
        echo(f"  skip {'+'.join(fs)}: its cache is missing (see the extract notes)")
    if not sets:
        raise DemoError("no feature cache could be built, so there is nothing to learn; see the notes above")
    learner, arch = "mlp", "sys2"
    names = []
    for fs in sets:
        run_name = _run_name(fs, learner, arch)
        if _reusable(runs_dir / run_name, fs, learner, arch, seeds):
            echo(f"  reuse {runs_dir / run_name} (delete it to retrain)")
            names.append(run_name)
            continue
        t0 = time.perf_counter()
        try:
            with Heartbeat(echo, f"{run_name}: ") as beat:
                res = learn(corpus, build(LearnConfig, features=list(fs), learner=learner, arch=arch, seeds=seeds,
                                          progress=True),
                            cache_dir=cache_dir, runs_dir=runs_dir, name=run_name, echo=beat,
                            overwrite=True)   # not reusable (see above): the demo retrains its own run
        except Exception as e:  # one failed run must not cost the others
            echo(f"  FAILED {'+'.join(fs)}: {_first_line(e)}")
            continue
        echo(f"  {res.summary_line()} [{time.perf_counter() - t0:.0f} s]")
        names.append(run_name)
    if not names:
        raise DemoError("every learn run failed; see the messages above")
    return names


def _fuse_stage(corpus, runs_dir: Path, names: list[str], echo) -> None:
    from exvo.fusion.api import fuse

    for select_on in ("oof", "cv"):
        res = fuse(corpus, runs_dir=runs_dir, run_names=names, mode="hybrid", select_on=select_on,
                   echo=lambda *_: None)
        echo(f"  {res.summary_line()}")
        echo("    " + "; ".join(f"{s}: {', '.join(c)}" for s, c in res.chosen.items()))
        for n in res.notes:
            if ": chosen on each candidate's" in n:
                echo(f"    {n}")      # what chose, on which quantity, and the seed means beside it


def run_demo(data_dir: Path, cache_dir: Path, runs_dir: Path, seeds: int = 3,
             echo: Callable[[str], None] = print, *, commands: dict[str, set[str]]) -> str:
    """Run the demo pipeline (see the module docstring); returns the report table text.
    ``commands``: the CLI's command table the recipe steps run against
    (:func:`exvo.commands.common.command_table`). Every stage ends with its time and the load;
    the timings are kept in ``<runs>/report/demo_timings.json``."""

    data_dir, cache_dir, runs_dir = Path(data_dir), Path(cache_dir), Path(runs_dir)
    progress = sys.stderr.isatty()
    lines = "EXVO_PROGRESS" not in os.environ and not progress
    if lines:
        os.environ["EXVO_PROGRESS"] = LINE_SECONDS       # the recipe steps inherit it too
    clock = StageClock(echo, 7)
    try:
        return _run_stages(clock, data_dir, cache_dir, runs_dir, seeds, echo, commands, progress)
    finally:
        clock.stop()
        if lines:
            os.environ.pop("EXVO_PROGRESS", None)


def _run_stages(clock: StageClock, data_dir: Path, cache_dir: Path, runs_dir: Path, seeds: int, echo,
                commands: dict[str, set[str]], progress: bool) -> str:
    from exvo.fusion.report import make_report
    from exvo.runs.store import write_json

    with clock.stage("corpus"):
        corpus = _corpus_stage(data_dir, echo, progress)
    with clock.stage("extract", f"cache: {cache_dir}"):
        ready = _extract_all(corpus, cache_dir, echo, True)   # bar on a terminal, plain lines in a log
    with clock.stage("learn", f"runs: {runs_dir}, {seeds} seeds each"):
        names = _learn_stage(corpus, cache_dir, runs_dir, ready, seeds, echo)
    with clock.stage("fuse", "hybrid per subtask, chosen on out-of-fold Train predictions, and on Val halves (cv)"):
        _fuse_stage(corpus, runs_dir, names, echo)
    with clock.stage("papers", f"the demo rows of each `exvo reproduce` recipe, {seeds} seeds"):
        _papers(corpus, data_dir, cache_dir, runs_dir, seeds, echo, commands)
    with clock.stage("generate", "ExVo-Generate: Train-vs-Val FID between emotion bins, eGeMAPS"):
        _fid_table(corpus, cache_dir, runs_dir, ready, echo)
    with clock.stage("report"):
        table = make_report(runs_dir, runs_dir / "report", corpus=corpus)
        echo(table)
    write_json(runs_dir / "report" / "demo_timings.json", clock.record() | {"seeds": seeds, "corpus": str(data_dir)})
    echo(clock.summary())
    return table
