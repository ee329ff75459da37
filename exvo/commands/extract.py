"""Stage 1 commands: ``extract`` (also sharded and frame-level), ``train-cnn``."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from exvo.commands.common import app, friendly, fail_cli, DataOpt, CacheOpt, load_corpus


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
    rms_db: Optional[float] = typer.Option(None, help="SSL: RMS-normalise every clip to this level in dBFS before the model (Burst2Vec: -3); stored in the cache config."),
    cnn_arch: str = typer.Option("paper", help="Task CNNs: paper (4 conv + FC 10, the Idiap paper) | sinc (SincNet-style front end)."),
    cnn_seeds: int = typer.Option(1, help="Task CNNs: train N CNNs (seeds); the cache gets one layer per CNN (feature spec NAME@k)."),
    crossfit: int = typer.Option(0, help="Task CNNs: K >= 2 embeds each Train clip with a CNN trained without its speaker's fold (0: off; it hurt downstream scores on the demo corpus, see benchmarks/README.md)."),
    list_models: bool = typer.Option(False, "--list", help="List the registered extractors and exit."),
    frames: bool = typer.Option(False, "--frames", help="SSL: store one layer's frame sequences (ragged, <model>.frames.h5) instead of utterance vectors."),
    layer: int = typer.Option(-1, help="With --frames: the hidden state to store (0 = input embeddings, -1 = last)."),
    pool_frames: int = typer.Option(1, help="With --frames: average every K consecutive frames (K = 1 keeps 50 frames/s)."),
    normalize: str = typer.Option("checkpoint", help="SSL input: on (zero mean, unit variance per clip) | off | checkpoint (its feature extractor's do_normalize)."),
    layers: Optional[str] = typer.Option(None, help="Keep only these layers in the cache: e.g. 0,6,12,18,24 or last (default: all)."),
    shard: Optional[str] = typer.Option(None, help="Extract shard I/N (0-based) into its own parts; default under torchrun: RANK/WORLD_SIZE, under a SLURM array: its task. Merge with --merge."),
    merge: bool = typer.Option(False, "--merge", help="Combine the finished shards of --model into the cache file."),
):
    """Stage 1: extract utterance embeddings of every clip into the HDF5 cache (resumable).

    Progress: a bar on a terminal; with stderr redirected (a log file) a plain line every 30 s
    (clips done/total, audio-s/s, ETA). EXVO_PROGRESS=bar|lines|off|SECONDS overrides.
    """
    from exvo.extract.base import ExtractOptions, describe, find, names
    from exvo.extract.run import ExtractionAborted, extract as run_extract, interrupt_guard

    if list_models:
        for k, v in describe().items():
            typer.echo(f"{k:14s} {v}")
        return
    if model is None:
        fail_cli(f"--model is required; choose one of: {', '.join(names())}")
    if find(model, cache) is None:  # registered, or a CNN trained with `exvo train-cnn`
        fail_cli(f"unknown extractor {model!r}; choose one of: {', '.join(names())} "
              f"(or a CNN trained with `exvo train-cnn`, looked up in {cache}/models/)")
    if rms_db is not None and model not in ("wavlm", "hubert", "wav2vec2"):
        fail_cli(f"--rms-db applies to the SSL models (wavlm, hubert, wav2vec2), not to {model!r}; drop it")
    corpus = load_corpus(data)
    from exvo.extract import shard as S

    if merge:
        from exvo.extract.merge import merge as merge_shards

        return _print_merge(merge_shards(cache_path_of(cache, corpus, model), model, corpus.ids, corpus))
    the_shard = S.resolve_shard(shard)
    if the_shard is not None and the_shard.source == "torchrun":
        device, workers = S.rank_options(device, workers)
    opts = ExtractOptions(checkpoint=checkpoint, device=device, precision=precision, batch_seconds=batch_seconds,
                          workers=workers, chunk_seconds=chunk_seconds, dtype=dtype, train_epochs=epochs,
                          rms_db=rms_db, cnn_arch=cnn_arch, cnn_seeds=cnn_seeds, crossfit=crossfit,
                          normalize=normalize, layers=layers)
    if frames:  # the frame-level cache of issue 15: its own store and writer (exvo.extract.frames)
        from exvo.extract.frames_run import extract_frames

        s = extract_frames(corpus, model, cache, opts, layer=layer, pool=pool_frames, overwrite=overwrite,
                           progress=sys.stderr.isatty() or bool(os.environ.get("EXVO_PROGRESS")))
        for cid, why in s.failures:
            typer.echo(f"FAILED {cid}: {why}")
        typer.echo(s.line())
        raise typer.Exit(1 if s.failures else 0)
    if the_shard is not None:
        return _extract_shard(corpus, model, cache, opts, the_shard, overwrite, max_failures)
    try:
        with interrupt_guard():
            s = run_extract(corpus, model, cache, opts, overwrite=overwrite, max_failures=max_failures,
                            progress=True)   # bar on a terminal, plain lines in a log (EXVO_PROGRESS overrides)
    except ExtractionAborted as e:
        fail_cli(str(e), code=3)
    except KeyboardInterrupt:
        fail_cli("interrupted; the clips finished so far are saved. Run the same command again to resume", code=130)
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
    from exvo.extract import merge as M, shard as S
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
                _print_merge(M.merge(path, model, corpus.ids, corpus))
            except typer.Exit as e:
                code = max(code, e.exit_code)
            except Exception as e:
                typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
                code = 2
        dist.barrier()     # other ranks exit only after the merge: the launcher stops all ranks at the first exit
        dist.close()
    elif shard.source == "slurm-array" and code in (0, 1):
        left = M.pending(path)
        if left is not None and not left[1]:   # the last task to finish merges (the others find a shard unfinished)
            try:
                _print_merge(M.merge(path, model, corpus.ids, corpus))
            except typer.Exit as e:
                code = max(code, e.exit_code)
            except S.C.CacheError:
                if M.pending(path) is not None and not isinstance(sys.exc_info()[1], S.C.CacheBusy):
                    raise
                # another task is merging right now, or has just merged: nothing left to do here
    if code:
        raise typer.Exit(code)



@app.command("train-cnn")
@friendly
def train_cnn(
    name: str = typer.Option(..., help="Name of the new extractor (e.g. raw_ser); extract it later with --model NAME."),
    label_column: str = typer.Option(..., help="Column of data_info.csv with the class labels (hard labels, any strings)."),
    signal: str = typer.Option("raw", "--input", help="raw | zff waveform input."),
    arch: str = typer.Option("paper", help="paper (4 conv + FC 10, the Idiap paper) | sinc (SincNet-style front end)."),
    data: Optional[Path] = DataOpt,
    cache: Path = CacheOpt,
    epochs: Optional[int] = typer.Option(None, help="Cap on training epochs (default: until the lr falls below 1e-6)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    seed: int = typer.Option(0, help="Random seed."),
):
    """Train a raw/ZFF waveform CNN on any labelled corpus; it becomes an extractor usable on other corpora."""
    from exvo.extract.cnn.extractor import train_custom_cnn

    corpus = load_corpus(data)
    path = train_custom_cnn(corpus, name=name, label_column=label_column, signal=signal, cache_dir=cache, arch=arch,
                            epochs=epochs, device=device, seed=seed, echo=typer.echo)
    typer.echo(f"saved {path}; extract it with `exvo extract --model {name} --data DIR`")
