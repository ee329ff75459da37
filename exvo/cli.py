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

        for stream in (sys.stdout, sys.stderr):
            # a path that is not valid UTF-8 (an odd folder name) must print, not crash the command
            if hasattr(stream, "reconfigure"):
                try:
                    stream.reconfigure(errors="backslashreplace")
                except (ValueError, OSError):
                    pass
        try:
            return fn(*a, **k)
        except (CorpusError, CacheError, PredictionError, AudioError, KeyError, ValueError, FileNotFoundError) as e:
            _discard_staging()
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            _fail(str(msg))
        except OSError as e:       # disk full, read-only folder, a file where a folder belongs …
            _discard_staging()
            _fail(os_error_message(e))
        except KeyboardInterrupt:
            _discard_staging()
            _fail("interrupted; nothing half-written is left behind (a run folder appears only when complete)", 130)
    return wrapper


def _discard_staging() -> None:
    """Remove this process's unfinished run folders (``runs/.NAME.tmpPID``) before exiting."""
    runs = sys.modules.get("exvo.learn.runs")
    if runs is not None:
        runs.discard_staging()


def os_error_message(e: OSError) -> str:
    """One line for an operating-system error: what failed, on which file, and what to do."""
    import errno

    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    what = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"could not write{where}: {what}. Free disk space (or write to another disk) and run the command again"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{what}{where}: this folder or file is not writable/readable by you; fix its permissions or choose another path"
    if e.errno in (errno.EISDIR,):
        return f"{where.strip(' ()') or 'the path'} is a folder where a file was expected; give a file name"
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"{what}{where}: a file is in the way where a folder was expected; choose another path"
    return f"{what}{where}"


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
    normalize: str = typer.Option("checkpoint", help="SSL input: on (zero mean, unit variance per clip) | off | checkpoint (its feature extractor's do_normalize)."),
    layers: Optional[str] = typer.Option(None, help="Keep only these layers in the cache: e.g. 0,6,12,18,24 or last (default: all)."),
    shard: Optional[str] = typer.Option(None, help="Extract shard I/N (0-based) into its own parts; default under torchrun: RANK/WORLD_SIZE, under a SLURM array: its task. Merge with --merge."),
    merge: bool = typer.Option(False, "--merge", help="Combine the finished shards of --model into the cache file."),
):
    """Stage 1: extract utterance embeddings of every clip into the HDF5 cache (resumable)."""
    from exvo.extract.base import ExtractOptions, describe, find, names
    from exvo.extract.run import ExtractionAborted, extract as run_extract, interrupt_guard

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
    from exvo.extract import shard as S

    if merge:
        return _print_merge(S.merge(cache_path_of(cache, corpus, model), model, corpus.ids))
    the_shard = S.resolve_shard(shard)
    if the_shard is not None and the_shard.source == "torchrun":
        device, workers = S.rank_options(device, workers)
    opts = ExtractOptions(checkpoint=checkpoint, device=device, precision=precision, batch_seconds=batch_seconds,
                          workers=workers, chunk_seconds=chunk_seconds, dtype=dtype, train_epochs=epochs,
                          normalize=normalize, layers=layers)
    if the_shard is not None:
        return _extract_shard(corpus, model, cache, opts, the_shard, overwrite, max_failures)
    try:
        with interrupt_guard():
            s = run_extract(corpus, model, cache, opts, overwrite=overwrite, max_failures=max_failures,
                            progress=sys.stderr.isatty() or bool(os.environ.get("EXVO_PROGRESS")))
    except ExtractionAborted as e:
        _fail(str(e), code=3)
    except KeyboardInterrupt:
        _fail("interrupted; the clips finished so far are saved. Run the same command again to resume", code=130)
    for msg in s.messages:
        typer.secho(f"note: {msg}", fg=typer.colors.YELLOW, err=True)
    for cid, note in s.notes:
        typer.echo(f"note {cid}: {note}")
    for cid, why in s.failures:
        typer.echo(f"FAILED {cid}: {why}")
    typer.echo(s.line())
    if s.failures:
        raise typer.Exit(1)


def cache_path_of(cache: Path, corpus, model: str) -> Path:
    from exvo.extract.cache import cache_path

    return cache_path(cache, corpus.name, model)


def _print_merge(r) -> None:
    for msg in r.messages:
        typer.secho(f"note: {msg}", fg=typer.colors.YELLOW, err=True)
    for cid, why in r.failures:
        typer.echo(f"FAILED {cid}: {why}")
    typer.echo(f"merged {r.n_shards} shards: {r.n_rows} clips cached → {r.path}")
    if r.failures:
        raise typer.Exit(1)


def _extract_shard(corpus, model, cache, opts, shard, overwrite, max_failures):
    """One shard (exvo.extract.shard); under torchrun all ranks wait, then the last one merges."""
    from exvo.extract import shard as S
    from exvo.extract.run import ExtractionAborted, extract as run_extract, interrupt_guard

    import shlex

    args, skip = [], False
    argv = sys.argv[1:] if sys.argv[1:2] == ["extract"] else [   # not run from a shell (e.g. a test runner)
        "extract", "--model", model, "--data", str(corpus.root), "--cache", str(cache)]
    for a in argv:      # the same command for another shard: this one's --shard left out
        if skip or a == "--shard" or a.startswith("--shard="):
            skip = a == "--shard"
            continue
        args.append(a)
    command = "exvo " + shlex.join(args) + " --shard {shard}"
    dist = S.Distributed() if shard.source == "torchrun" else None
    code, s = 0, None
    try:
        with interrupt_guard():
            s = run_extract(corpus, model, cache, opts, overwrite=overwrite, max_failures=max_failures,
                            progress=sys.stderr.isatty() or bool(os.environ.get("EXVO_PROGRESS")),
                            shard=shard, command=command)
    except ExtractionAborted as e:
        typer.secho(f"error: shard {shard.text}: {e}", fg=typer.colors.RED, err=True)
        code = 3
    except KeyboardInterrupt:
        typer.secho(f"error: shard {shard.text} interrupted; its finished clips are saved. Run the same command "
                    "again to resume", fg=typer.colors.RED, err=True)
        code = 130
    if s is not None:
        for msg in s.messages:
            typer.secho(f"note: {msg}", fg=typer.colors.YELLOW, err=True)
        for cid, why in s.failures:
            typer.echo(f"FAILED {cid}: {why}")
        typer.echo(f"shard {shard.text} ({shard.source}): " + s.line())
        code = 1 if s.failures else 0
    path = cache_path_of(cache, corpus, model)
    if dist is not None:
        # a rank that stopped early makes the barrier fail for all: no merge of an incomplete set
        ok = dist.all_ok(code in (0, 1))
        if ok and dist.rank == dist.world - 1:
            try:
                _print_merge(S.merge(path, model, corpus.ids))
            except typer.Exit as e:
                code = max(code, e.exit_code)
            except Exception as e:
                typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
                code = 2
        dist.barrier()     # other ranks exit only after the merge: the launcher stops all ranks at the first exit
        dist.close()
    elif shard.source == "slurm-array" and code in (0, 1):
        left = S.pending(path)
        if left is not None and not left[1]:   # the last task to finish merges (the others find a shard unfinished)
            try:
                _print_merge(S.merge(path, model, corpus.ids))
            except typer.Exit as e:
                code = max(code, e.exit_code)
            except S.C.CacheError:
                if S.pending(path) is not None and not isinstance(sys.exc_info()[1], S.C.CacheBusy):
                    raise
                # another task is merging right now, or has just merged: nothing left to do here
    if code:
        raise typer.Exit(code)


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
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run of the same name (refused otherwise)."),
    data: Optional[Path] = DataOpt,
    cache: Path = CacheOpt,
    runs: Path = RunsOpt,
):
    """Stage 2: train a multitask learner on cached features; report Val scores; write predictions."""
    from exvo.learn.api import LearnConfig, learn as run_learn

    corpus = load_corpus(data)
    cfg = LearnConfig(features=[f.strip() for f in features.split(",") if f.strip()], learner=learner, arch=arch,
                      seeds=seeds, loss=loss, epochs=epochs, patience=patience, batch_size=batch_size, device=device)
    result = run_learn(corpus, cfg, cache_dir=cache, runs_dir=runs, name=name, echo=typer.echo, overwrite=overwrite)
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
