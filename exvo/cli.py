"""``exvo`` command line: parses options, calls library functions, prints results.

Exit codes: 0 success; 1 the command ran but some clips failed; 2 bad input or
settings (the message says what to fix); 3 aborted by ``--max-failures``; 130
interrupted (Ctrl-C) during ``extract`` (finished clips are kept; rerun to resume).
"""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="exvo: embeddings + small learners for vocal-burst research (ICML ExVo 2022 / HUME-VB).\n\n"
         "Stage 1: `exvo extract --model NAME` caches utterance embeddings. "
         "Stage 2: `exvo learn --features A,B` trains multitask learners; `exvo fuse --hybrid` "
         "combines runs per subtask; `exvo report` compares them.",
)

DEMO_DIR = Path("demo_data")

DataOpt = typer.Option(None, "--data", help="Corpus folder (data_info.csv + wav/). Default: $EXVO_DATA, else ./demo_data (created if absent).")
CacheOpt = typer.Option(Path("cache"), "--cache", help="Embedding cache folder; files go to <cache>/<corpus>/<extractor>.h5.")
RunsOpt = typer.Option(Path("runs"), "--runs", help="Folder of learn/fuse run folders.")


def _fail(msg: str, code: int = 2):
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def friendly(fn):
    """Turn the library's validation errors into a one-line message and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*a, **k):
        from exvo.corpus import AudioError, CorpusError
        from exvo.extract.cache import CacheError
        from exvo.predictions import PredictionError

        try:
            return fn(*a, **k)
        except (CorpusError, CacheError, PredictionError, AudioError, KeyError, ValueError, FileNotFoundError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            _fail(str(msg))
    return wrapper


def resolve_data(data: Optional[Path]) -> Path:
    if data is not None:
        return data
    env = os.environ.get("EXVO_DATA")
    if env:
        return Path(env)
    if not (DEMO_DIR / "data_info.csv").is_file():
        from exvo.demo import make_demo_corpus

        typer.echo(f"no --data and no $EXVO_DATA: creating the demo corpus in {DEMO_DIR}/ …", err=True)
        make_demo_corpus(DEMO_DIR, progress=sys.stderr.isatty())
    return DEMO_DIR


def load_corpus(data: Optional[Path]):
    from exvo.corpus import Corpus

    return Corpus.from_dir(resolve_data(data))


# --------------------------------------------------------------------------- corpus
@app.command("demo-corpus")
@friendly
def demo_corpus(
    out: Path = typer.Argument(..., help="Folder to write (data_info.csv, wav/, hidden_test_labels.csv)."),
    speakers: int = typer.Option(60, help="Number of speakers (split 50/25/25 % into Train/Val/Test)."),
    clips_per_speaker: int = typer.Option(20, help="Clips per speaker."),
    seed: int = typer.Option(0, help="Random seed (same seed, same corpus)."),
):
    """Write a procedural demo corpus in the exact ExVo layout."""
    from exvo.demo import make_demo_corpus

    if (out / "data_info.csv").exists():
        _fail(f"{out}/data_info.csv already exists; choose another folder or delete it")
    make_demo_corpus(out, speakers=speakers, clips_per_speaker=clips_per_speaker, seed=seed,
                     progress=sys.stderr.isatty())
    typer.echo(f"wrote {speakers * clips_per_speaker} clips to {out}/")


@app.command()
@friendly
def score(
    pred: Path = typer.Argument(..., help="Prediction CSV: File_ID,Country,Age,<10 emotions>."),
    data: Optional[Path] = DataOpt,
    split: str = typer.Option("Val", help="Split to score against (Test needs hidden labels)."),
    convention: str = typer.Option("challenge", help="CCC convention: challenge (official ExVo) or population."),
):
    """Score a prediction file; prints JSON (ccc, uar, mae, s_mtl, ccc_per_emotion)."""
    import warnings

    from exvo.predictions import Predictions, score as score_fn

    corpus = load_corpus(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = score_fn(Predictions.read(pred), corpus, split, convention)  # type: ignore[arg-type]
    for w in caught:
        typer.secho(f"warning: {w.message}", fg=typer.colors.YELLOW, err=True)
    typer.echo(json.dumps(result, indent=2))


# --------------------------------------------------------------------------- stage 1
def _model_help() -> str:
    try:
        from exvo.extract.base import describe

        return "Extractor: " + "; ".join(f"{k} ({v})" if v else k for k, v in describe().items())
    except Exception:  # help must render even if an optional family fails to import
        return "Extractor name (see `exvo extract --list`)."


@app.command()
@friendly
def extract(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=_model_help()),
    data: Optional[Path] = DataOpt,
    cache: Path = CacheOpt,
    checkpoint: Optional[str] = typer.Option(None, help="SSL: model id or local folder for from_pretrained (overrides the default)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    precision: str = typer.Option("fp32", help="fp32 | fp16 | bf16 (SSL on CUDA)."),
    batch_seconds: float = typer.Option(120.0, help="SSL on CUDA: audio seconds per padded, length-bucketed batch."),
    workers: int = typer.Option(0, help="Worker processes/threads; 0 = all cores."),
    chunk_seconds: float = typer.Option(20.0, help="SSL: clips longer than this are processed in chunks with exact pooled statistics."),
    dtype: str = typer.Option("float32", help="Cache storage: float32 | float16."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild the cache even if it exists (other settings are otherwise refused)."),
    max_failures: Optional[str] = typer.Option(None, help="Abort once more clips than this fail: a count (10), fraction (0.05) or percentage (5%)."),
    epochs: Optional[int] = typer.Option(None, help="Task CNNs: cap on training epochs (default: until the lr falls below 1e-6)."),
    list_models: bool = typer.Option(False, "--list", help="List the registered extractors and exit."),
):
    """Stage 1: extract utterance embeddings of every clip into the HDF5 cache (resumable)."""
    from exvo.extract.base import ExtractOptions, describe, find, names
    from exvo.extract.run import ExtractionAborted, extract as run_extract

    if list_models:
        for k, v in describe().items():
            typer.echo(f"{k:14s} {v}")
        return
    if model is None:
        _fail(f"--model is required; choose one of: {', '.join(names())}")
    if find(model, cache) is None:  # registered, or a CNN trained with `exvo train-cnn`
        _fail(f"unknown extractor {model!r}; choose one of: {', '.join(names())} "
              f"(or a CNN trained with `exvo train-cnn`, looked up in {cache}/models/)")
    corpus = load_corpus(data)
    opts = ExtractOptions(checkpoint=checkpoint, device=device, precision=precision, batch_seconds=batch_seconds,
                          workers=workers, chunk_seconds=chunk_seconds, dtype=dtype, train_epochs=epochs)
    try:
        s = run_extract(corpus, model, cache, opts, overwrite=overwrite, max_failures=max_failures,
                        progress=sys.stderr.isatty() or bool(os.environ.get("EXVO_PROGRESS")))
    except ExtractionAborted as e:
        _fail(str(e), code=3)
    except KeyboardInterrupt:
        _fail("interrupted; the clips finished so far are saved. Run the same command again to resume", code=130)
    for cid, note in s.notes:
        typer.echo(f"note {cid}: {note}")
    for cid, why in s.failures:
        typer.echo(f"FAILED {cid}: {why}")
    typer.echo(s.line())
    if s.failures:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- stage 2
@app.command()
@friendly
def learn(
    features: str = typer.Option(..., "--features", "-f", help="Comma-separated feature sets, early-fused: e.g. wavlm@12,raw_exvo_er. SSL sets take @LAYER or @best."),
    learner: str = typer.Option("mlp", help="mlp | xgb."),
    arch: str = typer.Option("sys2", help="MLP: sys1 (128/64, the official baseline) | sys2 (256/128)."),
    seeds: int = typer.Option(5, help="Number of seeds; results are mean ± std over seeds."),
    loss: str = typer.Option("uncertainty", help="MLP task weighting: uncertainty (learned, as the baseline) | mean."),
    epochs: int = typer.Option(20, help="MLP: maximum epochs."),
    patience: int = typer.Option(5, help="MLP: early-stopping patience (the best epoch is restored)."),
    batch_size: int = typer.Option(8, help="MLP: batch size."),
    name: Optional[str] = typer.Option(None, help="Run folder name (default derived from features/learner/arch)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    data: Optional[Path] = DataOpt,
    cache: Path = CacheOpt,
    runs: Path = RunsOpt,
):
    """Stage 2: train a multitask learner on cached features; report Val scores; write predictions."""
    from exvo.learn.api import LearnConfig, learn as run_learn

    corpus = load_corpus(data)
    cfg = LearnConfig(features=[f.strip() for f in features.split(",") if f.strip()], learner=learner, arch=arch,
                      seeds=seeds, loss=loss, epochs=epochs, patience=patience, batch_size=batch_size, device=device)
    result = run_learn(corpus, cfg, cache_dir=cache, runs_dir=runs, name=name, echo=typer.echo)
    typer.echo(result.summary_line())


@app.command()
@friendly
def predict(
    run: Path = typer.Argument(..., help="A learn run folder."),
    data: Optional[Path] = DataOpt,
    cache: Path = CacheOpt,
    split: str = typer.Option("Test", help="Split to predict (Train, Val or Test)."),
    out: Optional[Path] = typer.Option(None, help="Output CSV (default: <run>/predict_<corpus>_<split>.csv)."),
):
    """Apply a saved learn run to a corpus (same extractors cached) and write a submission file."""
    from exvo.learn.api import predict_run

    corpus = load_corpus(data)
    path = predict_run(run, corpus, cache_dir=cache, split=split, out=out)
    typer.echo(f"wrote {path}")


@app.command()
@friendly
def fuse(
    run_names: Optional[List[str]] = typer.Argument(None, help="Run folders or names under --runs (default: all learn runs)."),
    hybrid: bool = typer.Option(False, "--hybrid", help="Per subtask, take the run with the best Val score."),
    mean: bool = typer.Option(False, "--mean", help="Average the runs (country: averaged probabilities)."),
    top: int = typer.Option(1, help="With --hybrid: average the K best runs per subtask."),
    weighted: bool = typer.Option(False, help="With --mean (or --hybrid --top K): weight runs per subtask by their Val score (CCC, UAR, 1/MAE)."),
    select_on: str = typer.Option("val", help="val (choose on all of Val; optimistic) | cv (choose on half the Val speakers, score on the other half)."),
    name: Optional[str] = typer.Option(None, help="Output run name."),
    data: Optional[Path] = DataOpt,
    runs: Path = RunsOpt,
):
    """Late fusion of learn runs: hybrid per-subtask selection or averaging ensembles."""
    from exvo.fusion.api import fuse as run_fuse

    if hybrid == mean:
        _fail("choose exactly one of --hybrid or --mean")
    corpus = load_corpus(data)
    result = run_fuse(corpus, runs_dir=runs, run_names=run_names or None, mode="hybrid" if hybrid else "mean",
                      top=top, weighted=weighted, select_on=select_on, name=name, echo=typer.echo)
    typer.echo(result.summary_line())


@app.command()
@friendly
def report(
    runs: Path = RunsOpt,
    out: Optional[Path] = typer.Option(None, help="Output folder for report.md, report.csv and PNG figures (default: <runs>/report)."),
    data: Optional[Path] = DataOpt,
):
    """Table of every run (sorted by S_MTL) plus figures."""
    from exvo.fusion.report import make_report

    corpus = load_corpus(data)
    table = make_report(runs, out or runs / "report", corpus=corpus)
    typer.echo(table)


@app.command("train-cnn")
@friendly
def train_cnn(
    name: str = typer.Option(..., help="Name of the new extractor (e.g. raw_ser); extract it later with --model NAME."),
    label_column: str = typer.Option(..., help="Column of data_info.csv with the class labels (hard labels, any strings)."),
    signal: str = typer.Option("raw", "--input", help="raw | zff waveform input."),
    data: Optional[Path] = DataOpt,
    cache: Path = CacheOpt,
    epochs: Optional[int] = typer.Option(None, help="Cap on training epochs (default: until the lr falls below 1e-6)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    seed: int = typer.Option(0, help="Random seed."),
):
    """Train a raw/ZFF waveform CNN on any labelled corpus; it becomes an extractor usable on other corpora."""
    from exvo.extract.waveform_cnn import train_custom_cnn

    corpus = load_corpus(data)
    path = train_custom_cnn(corpus, name=name, label_column=label_column, signal=signal, cache_dir=cache,
                            epochs=epochs, device=device, seed=seed, echo=typer.echo)
    typer.echo(f"saved {path}; extract it with `exvo extract --model {name} --data DIR`")


# --------------------------------------------------------------------------- recipes
@app.command()
@friendly
def reproduce(
    name: Optional[str] = typer.Argument(None, help="Recipe: one per paper (see --list)."),
    data: Optional[Path] = DataOpt,
    cache: Path = CacheOpt,
    runs: Path = RunsOpt,
    checkpoint_dir: Optional[Path] = typer.Option(
        None, help="Folder of SSL weights named like their hub ids (DIR/microsoft/wavlm-large); rows whose "
                   "weights are missing are skipped with the download command."),
    seeds: Optional[int] = typer.Option(None, help="Seeds of every step that takes --seeds (default: each command's own, 5)."),
    reduced: bool = typer.Option(False, "--reduced", help="Only the rows `exvo demo` runs (minutes on a CPU)."),
    list_: bool = typer.Option(False, "--list", help="List the recipes, their rows and what each needs, and exit."),
):
    """Reproduce a paper's table: run the missing steps, then write paper vs ours side by side."""
    from exvo.recipes import load as recipes
    from exvo.recipes.run import execute, plan
    from exvo.recipes.table import write

    if list_ or name is None:
        for n in recipes.names():
            r = recipes.load(n)
            p = plan(r, checkpoint_dir)
            typer.echo(f"{n}: {r.title}\n  {len(r.rows)} rows; commands: {', '.join(r.commands())}; "
                       f"weights: {', '.join(r.checkpoints()) or 'none'}")
            for o in p.outcomes.values():
                typer.echo(f"    {o.status} {o.row.id}: {o.detail}")
        if name is None and not list_:
            _fail("name a recipe (see the list above), e.g. `exvo reproduce idiap2022`")
        return
    recipe = recipes.load(name)
    if reduced:
        recipe = recipe.reduced()
    corpus = load_corpus(data)
    typer.echo(f"reproduce {recipe.name} on {corpus.root} ({len(recipe.rows)} rows)")
    outcomes = execute(recipe, Path(corpus.root), cache, runs, checkpoint_dir, echo=typer.echo, seeds=seeds)
    folder = write(recipe, outcomes, runs, corpus.name)
    typer.echo((folder / "table.md").read_text())
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "unavailable", "missing", "failed")}
    typer.echo(f"wrote {folder}/table.md and table.csv; rows: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    if counts["failed"]:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- demo
@app.command()
@friendly
def demo(
    data: Path = typer.Option(DEMO_DIR, "--data", help="Demo corpus folder (created if absent)."),
    cache: Path = CacheOpt,
    runs: Path = RunsOpt,
    seeds: int = typer.Option(3, help="Seeds per learn run."),
):
    """The whole pipeline on the demo corpus: extract → learn → fuse → report."""
    from exvo.pipeline import run_demo

    run_demo(data, cache, runs, seeds=seeds, echo=typer.echo)


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
