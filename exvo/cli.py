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
    convention: str = typer.Option("challenge", help="CCC convention: challenge (official ExVo) or population (multitask; the fewshot track is always population)."),
    track: str = typer.Option("multitask", help="multitask (File_ID,Country,Age,<emotions>) | fewshot (File_ID,<emotions> of the query clips; population CCC + 95 % bootstrap CI)."),
    support_seed: Optional[int] = typer.Option(None, help="fewshot, Val: random support clips with this seed (default: each speaker's first 2)."),
    support_file: Optional[Path] = typer.Option(None, help="fewshot: labelled support file (data_info.csv columns); Test default <data>/fewshot_support.csv."),
):
    """Score a prediction file; prints JSON (ccc, uar, mae, s_mtl, ccc_per_emotion)."""
    import warnings

    from exvo.predictions import Predictions, score as score_fn

    corpus = load_corpus(data)
    if track == "fewshot":
        from exvo.fewshot.protocol import protocol_for, read_submission, score_submission

        proto = protocol_for(corpus, split, support_seed, support_file)
        typer.echo(json.dumps(score_submission(*read_submission(pred), corpus, proto), indent=2))
        return
    if track != "multitask":
        _fail(f"unknown --track {track!r}; choose multitask or fewshot")
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
        _fail(f"--model is required; choose one of: {', '.join(names())}")
    if find(model, cache) is None:  # registered, or a CNN trained with `exvo train-cnn`
        _fail(f"unknown extractor {model!r}; choose one of: {', '.join(names())} "
              f"(or a CNN trained with `exvo train-cnn`, looked up in {cache}/models/)")
    if rms_db is not None and model not in ("wavlm", "hubert", "wav2vec2"):
        _fail(f"--rms-db applies to the SSL models (wavlm, hubert, wav2vec2), not to {model!r}; drop it")
    corpus = load_corpus(data)
    from exvo.extract import shard as S

    if merge:
        return _print_merge(S.merge(cache_path_of(cache, corpus, model), model, corpus.ids))
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
def _learner_help() -> str:
    try:
        from exvo.learn.registry import describe, names

        names()  # loads $EXVO_LEARNERS
        return "Learner: " + "; ".join(f"{k} ({v})" for k, v in describe().items()) + "."
    except Exception:  # help must render even if a learner fails to import
        return "Learner name (see exvo.learn.registry)."


def _preset_help() -> str:
    from exvo.learn.presets import HELP

    return "Protocol: " + "; ".join(f"{k} = {v}" for k, v in HELP.items()) + ". Explicit options override it."


@app.command()
@friendly
def learn(
    features: str = typer.Option(..., "--features", "-f", help="Comma-separated feature sets, early-fused: e.g. wavlm@12,raw_exvo_er. SSL sets take @LAYER or @best."),
    learner: str = typer.Option("mlp", help=_learner_help()),
    preset: str = typer.Option("default", help=_preset_help()),
    arch: Optional[str] = typer.Option(None, help="MLP: sys1 (128/64, the official baseline) | sys2 (256/128). Default: the preset's (sys2; baseline: sys1)."),
    seeds: int = typer.Option(5, help="Number of seeds; results are mean ± std over seeds."),
    stop_on: Optional[str] = typer.Option(None, help="Where early stopping, the epoch and the @best layer are chosen: holdout (a speaker-disjoint part of Train, stratified by country; Val stays clean) | val (the papers' protocol; Val scores marked optimistic †). Default: the preset's."),
    loss: Optional[str] = typer.Option(None, help="How the task losses are combined: uncertainty (learned weights, as the baseline) | mean | fixed (see --loss-weights)."),
    emotion_loss: Optional[str] = typer.Option(None, help="mse (the 10 MSEs summed, baseline) | ccc (1 − batch CCC)."),
    age_loss: Optional[str] = typer.Option(None, help="mse | mae (on standardised age)."),
    loss_weights: Optional[str] = typer.Option(None, help="With --loss fixed: weights of emotions,country,age, e.g. 1,0.5,0.5."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs (preset: 20; fast: 30)."),
    patience: Optional[int] = typer.Option(None, help="Early-stopping patience in epochs (preset: 5)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (preset: 8; fast: 256)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (preset: 1e-3; fast: 8e-3 with warm-up and cosine decay)."),
    threads: int = typer.Option(0, help="CPU threads; 0 = automatic: the idle cores now (cores minus load), or $OMP_NUM_THREADS if set."),
    opt: Optional[List[str]] = typer.Option(None, "--opt", help="A learner's own setting KEY=VALUE (repeatable), e.g. --opt max_bin=64 for xgb."),
    alpha1: Optional[float] = typer.Option(None, help="burst2vec: weight of the reversed task-discrimination loss (default 0.5; 0 = off)."),
    alpha2: Optional[float] = typer.Option(None, help="burst2vec: weight of the reversed task-specific adversarial losses (default 0.25; 0 = off)."),
    oversample: bool = typer.Option(False, "--oversample", help="burst2vec: oversample Train over joint (country, age range, dominant emotion) cells."),
    name: Optional[str] = typer.Option(None, help="Run folder name (default derived from features/learner/arch)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run of the same name (refused otherwise)."),
    data: Optional[Path] = DataOpt,
    cache: Path = CacheOpt,
    runs: Path = RunsOpt,
):
    """Stage 2: train a multitask learner on cached features; report Val scores; write predictions."""
    from exvo.learn.api import LearnConfig, learn as run_learn

    options = {}
    for item in opt or []:
        if "=" not in item:
            _fail(f"--opt expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        options[k.strip()] = v.strip()
    # learner-specific flags are options of that learner (another learner refuses them by name)
    for k, v in (("alpha1", alpha1), ("alpha2", alpha2), ("oversample", oversample or None)):
        if v is not None:
            options[k] = v
    weights = None
    if loss_weights is not None:
        try:
            weights = tuple(float(x) for x in loss_weights.split(","))
        except ValueError:
            _fail(f"--loss-weights expects 3 numbers like 1,0.5,0.5, got {loss_weights!r}")
    corpus = load_corpus(data)
    cfg = LearnConfig(features=[f.strip() for f in features.split(",") if f.strip()], learner=learner, preset=preset,
                      arch=arch, seeds=seeds, loss=loss, emotion_loss=emotion_loss, age_loss=age_loss,
                      loss_weights=weights, epochs=epochs, patience=patience, batch_size=batch_size, lr=lr,
                      stop_on=stop_on, threads=threads, options=options, device=device)
    result = run_learn(corpus, cfg, cache_dir=cache, runs_dir=runs, name=name, echo=typer.echo, overwrite=overwrite)
    typer.echo(result.summary_line())


from exvo.fewshot.registry import FT_LOSSES, FT_PARAMS, HEADS, VARIANTS, ZNORM_MODES  # noqa: E402  (no torch)


@app.command()
@friendly
def fewshot(
    features: str = typer.Option(..., "--features", "-f", help="Comma-separated feature sets, early-fused (as `exvo learn`)."),
    variant: str = typer.Option("none", help="; ".join(f"{k}: {v}" for k, v in VARIANTS.items())),
    heads: str = typer.Option("", help="Auxiliary heads (EIHW Table 1), comma-separated: "
                              + "; ".join(f"{k}: {v}" for k, v in HEADS.items())),
    seeds: int = typer.Option(5, help="Number of seeds; results are mean ± std over seeds and the seed ensemble."),
    epochs: int = typer.Option(30, help="Maximum epochs."),
    patience: int = typer.Option(8, help="Early-stopping patience on held-out Train speakers (best epoch restored)."),
    batch_size: int = typer.Option(16, help="Batch size."),
    lr: float = typer.Option(1e-3, help="AdamW learning rate."),
    holdout: float = typer.Option(0.2, help="Fraction of Train speakers held out for model selection (Val never chooses)."),
    ft_steps: int = typer.Option(1, help="finetune: AdamW steps per speaker on its support clips (baseline: 1)."),
    ft_lr: float = typer.Option(1e-4, help="finetune: learning rate of those steps (baseline: 1e-4)."),
    ft_loss: str = typer.Option("mse", help="finetune: " + " | ".join(FT_LOSSES) + " (mse: the baseline's)."),
    ft_select: bool = typer.Option(False, "--ft-select", help="finetune: choose weights/steps/lr from a small grid on the held-out Train speakers (overrides the three options)."),
    ft_params: str = typer.Option("all", help="finetune: which weights move: " + "; ".join(f"{k}: {v}" for k, v in FT_PARAMS.items())),
    znorm: str = typer.Option("features", help="znorm: " + " | ".join(ZNORM_MODES) + " (features: centre each speaker on its support clips; residual: shift predictions by the mean support residual)."),
    support_seed: Optional[int] = typer.Option(None, help="Val support: random clips with this seed (default: each speaker's first 2)."),
    support_file: Optional[Path] = typer.Option(None, help="Test support: labelled file in data_info.csv format (default <data>/fewshot_support.csv)."),
    name: Optional[str] = typer.Option(None, help="Run folder name (default derived); written to <runs>/fewshot/NAME."),
    device: str = typer.Option("cpu", help="cpu | cuda | auto."),
    data: Optional[Path] = DataOpt,
    cache: Path = CacheOpt,
    runs: Path = RunsOpt,
):
    """ExVo-FewShot: train on Train, personalise with 2 support clips per Val/Test speaker, score the query clips."""
    from exvo.fewshot.api import FewShotConfig, fewshot as run_fewshot

    corpus = load_corpus(data)
    cfg = FewShotConfig(features=[f.strip() for f in features.split(",") if f.strip()], variant=variant,
                        heads=[h for h in heads.split(",") if h.strip()], seeds=seeds, epochs=epochs, patience=patience,
                        batch_size=batch_size, lr=lr, holdout=holdout, ft_steps=ft_steps, ft_lr=ft_lr, ft_loss=ft_loss, ft_params=ft_params,
                        ft_select=ft_select,
                        znorm=znorm, support_seed=support_seed,
                        support_file=str(support_file) if support_file else None, device=device)
    result = run_fewshot(corpus, cfg, cache_dir=cache, runs_dir=runs, name=name, echo=typer.echo)
    typer.echo(result.summary_line())


@app.command()
@friendly
def finetune(
    model: str = typer.Option(..., "--model", "-m", help="Speech model to fine-tune: hubert | wav2vec2 | wavlm."),
    checkpoint: Optional[str] = typer.Option(None, help="Hub id or local folder for from_pretrained (default: the extractor's default checkpoint)."),
    learner: str = typer.Option("burst2vec", help="Head trained with the encoder: burst2vec."),
    alpha1: float = typer.Option(0.5, help="Burst2Vec: weight of the reversed task-discrimination loss (0 = off)."),
    alpha2: float = typer.Option(0.25, help="Burst2Vec: weight of the reversed task-specific adversarial losses (0 = off)."),
    emotion_loss: str = typer.Option("ccc", help="Burst2Vec emotion loss: ccc (1 - CCC, the paper) | mse."),
    age_loss: str = typer.Option("mae", help="Burst2Vec age loss on [0, 1] ages: mae (the paper) | mse."),
    oversample: bool = typer.Option(False, "--oversample", help="Oversample Train over joint (country, age range, dominant emotion) cells."),
    seeds: int = typer.Option(1, help="Number of seeds (models trained one after another)."),
    epochs: int = typer.Option(100, help="Maximum epochs."),
    patience: int = typer.Option(10, help="Early-stopping patience in epochs (best epoch restored)."),
    batch_size: int = typer.Option(32, help="Clips per (single-task) batch."),
    lr: float = typer.Option(1e-5, help="Adam learning rate for every weight."),
    precision: str = typer.Option("auto", help="auto (fp16 autocast on CUDA, fp32 on CPU) | fp32 | fp16 | bf16."),
    freeze_feature_encoder: bool = typer.Option(True, help="Keep the CNN front end frozen."),
    holdout: float = typer.Option(0.1, help="Fraction of Train speakers held out for early stopping."),
    stop_on: str = typer.Option("holdout", help="Where early stopping chooses: holdout (speaker-disjoint part of Train) | val (the paper's; Val scores optimistic †)."),
    rms_db: Optional[float] = typer.Option(None, help="RMS-normalise every clip to this level in dBFS first (the paper: -3)."),
    export: Optional[Path] = typer.Option(None, help="Also copy the first seed's fine-tuned encoder to this new folder (for `exvo extract --checkpoint`)."),
    name: Optional[str] = typer.Option(None, help="Run folder name (default <model>-finetuned_burst2vec)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    data: Optional[Path] = DataOpt,
    runs: Path = RunsOpt,
):
    """Fine-tune a speech model end to end with the Burst2Vec head on raw audio (resumable per epoch)."""
    from exvo.learn.burst2vec import Burst2VecConfig
    from exvo.learn.finetune import FinetuneConfig, export_encoder, finetune as run_finetune

    if learner != "burst2vec":
        _fail(f"--learner {learner!r} cannot be fine-tuned end to end; choose burst2vec")
    if export is not None and export.exists():
        _fail(f"--export {export} already exists; choose a new folder for the exported encoder")
    corpus = load_corpus(data)
    head = Burst2VecConfig(alpha1=alpha1, alpha2=alpha2, emotion_loss=emotion_loss, age_loss=age_loss,
                           oversample=oversample)
    cfg = FinetuneConfig(model=model, checkpoint=checkpoint, head=head, seeds=seeds, epochs=epochs, patience=patience,
                         batch_size=batch_size, lr=lr, precision=precision, freeze_feature_encoder=freeze_feature_encoder,
                         holdout=holdout, stop_on=stop_on, rms_db=rms_db, device=device)
    try:
        run_dir, metrics = run_finetune(corpus, cfg, runs_dir=runs, name=name, echo=typer.echo,
                                        progress=sys.stderr.isatty())
    except KeyboardInterrupt:
        _fail("interrupted; finished epochs are saved. Run the same command again to resume", code=130)
    if metrics is not None:
        from exvo.learn.runs import summary_line

        typer.echo(summary_line(run_dir, metrics))
    if export is not None:
        typer.echo(f"exported the encoder to {export_encoder(run_dir, export)}")


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
    """Table of every run (mean ± std over seeds and the seed-ensemble score, sorted by the S_MTL seed mean) plus figures."""
    from exvo.fusion.report import make_report

    corpus = load_corpus(data)
    table = make_report(runs, out or runs / "report", corpus=corpus)
    typer.echo(table)


def _verify_loss_help() -> str:
    from exvo.verify.losses import LOSSES

    return f"Encoder loss: {' | '.join(LOSSES)} (paper 004 Exp I; namp = negative angular margin prototypical + CE)."


@app.command()
@friendly
def verify(
    features: str = typer.Option(..., "--features", "-f", help="Feature set: an utterance cache spec (egemaps, wavlm@12) or a frame cache name (exvo extract --frames)."),
    seen: str = typer.Option(..., "--seen", help="Comma-separated pretraining classes (dominant emotions), e.g. Amusement,Awe,Distress,Fear."),
    task: str = typer.Option(..., "--task", help="The new task's classes, e.g. Amusement,Awkwardness (at least one not in --seen)."),
    enrol: int = typer.Option(10, "--enrol", help="Clips enrolled per task class (drawn from Val, afresh per seed)."),
    loss: str = typer.Option("namp", "--loss", help=_verify_loss_help()),
    encoder: str = typer.Option("auto", help="auto (GRU-transformer when a frame cache exists, else MLP) | mlp | gru."),
    seeds: int = typer.Option(5, help="Number of seeds; results are mean ± std over seeds."),
    epochs: int = typer.Option(40, help="Maximum training epochs."),
    n_per_class: int = typer.Option(10, help="N clips per seen class in a training episode."),
    margin: float = typer.Option(0.3, help="namp/amproto: |m| at the start, in (0, 0.5); the sign comes from the loss."),
    fixed_margin: bool = typer.Option(False, "--fixed-margin", help="namp/amproto: keep m at --margin (the paper's Fig. 2 sweep) instead of learning it."),
    reference: bool = typer.Option(True, "--reference/--no-reference", help="Also train the paper's \"All\" classifier on all Train clips of the task classes."),
    name: Optional[str] = typer.Option(None, help="Run folder name under <runs>/verify/ (default derived)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    data: Optional[Path] = DataOpt,
    cache: Path = CacheOpt,
    runs: Path = RunsOpt,
):
    """Enrol-to-verify: pretrain on seen classes, enrol N clips per class of a new task, verify queries (prints JSON)."""
    from exvo.verify.api import VerifyConfig, verify as run_verify
    from exvo.verify.losses import LossConfig

    corpus = load_corpus(data)
    cfg = VerifyConfig(features=features, seen=seen.split(","), task=task.split(","), enrol=enrol, loss=loss,
                       encoder=encoder, seeds=seeds, epochs=epochs, n_per_class=n_per_class, reference=reference,
                       device=device, loss_cfg=LossConfig(margin_init=margin, learn_margin=not fixed_margin))
    result = run_verify(corpus, cfg, cache_dir=cache, runs_dir=runs, name=name,
                        echo=lambda m: typer.echo(m, err=True))
    typer.echo(json.dumps(result.summary(), indent=1))


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


# --------------------------------------------------------------------------- generation (ExVo-Generate)
def _bin_help() -> str:
    from exvo.generate.bins import BIN_RULES

    return (f"Real clips per emotion: {' | '.join(BIN_RULES)} (one: intensity 1, the paper's bins; "
            "argmax: the clip's strongest emotion, for corpora not scaled to a max of 1 per clip).")


@app.command("fid")
@friendly
def fid_cmd(
    gen_dir: Optional[Path] = typer.Argument(None, help="Folder of generated clips (*.wav, *.flac) that target --emotion."),
    emotion: Optional[str] = typer.Option(None, "--emotion", "-e", help="Target emotion of the generated clips (e.g. Amusement)."),
    features: Optional[str] = typer.Option(None, "--features", "-f", help="Feature space: an extractor cached for this corpus, NAME or NAME@LAYER (e.g. egemaps, wavlm@12, raw_exvo_er = a task CNN's bottleneck)."),
    classifier: Optional[Path] = typer.Option(None, "--classifier", help="Feature space: the last shared layer of an `exvo learn` MLP run folder (FID per seed, mean ± std)."),
    against: str = typer.Option("Train", help="Real clips from: Train (paper §3.2) | Val (Eq. 3, §6.2)."),
    bin_rule: str = typer.Option("one", "--bin", help=_bin_help()),
    table: bool = typer.Option(False, "--table", help="Instead: the Train-vs-Val table of the emotion bins (paper Table 3): CSV, JSON, heat map."),
    out: Optional[Path] = typer.Option(None, help="--table: output folder (default <runs>/fid, where `exvo report` finds it)."),
    save: Optional[Path] = typer.Option(None, help="Add this emotion's FID to a CSV (replacing its old row), for `exvo heep --fid-csv`."),
    raw: bool = typer.Option(False, "--raw", help="--features: keep cached units (default: standardise every dimension with Train mean/std)."),
    checkpoint: Optional[str] = typer.Option(None, help="SSL features: the checkpoint the cache was built with."),
    device: str = typer.Option("auto", help="auto | cpu | cuda (embedding the generated clips)."),
    workers: int = typer.Option(0, help="Extractor workers; 0 = all cores."),
    data: Optional[Path] = DataOpt,
    cache: Path = CacheOpt,
    runs: Path = RunsOpt,
):
    """ExVo-Generate: FID of generated clips vs the real clips of one emotion, or the Train-vs-Val table."""
    from exvo.extract.base import ExtractOptions
    from exvo.generate import api

    if table and (gen_dir is not None or emotion is not None):
        _fail("--table compares the corpus's own Train and Val bins; leave out GEN_DIR and --emotion")
    if not table and (gen_dir is None or emotion is None):
        _fail("give GEN_DIR and --emotion E (or --table for the Train-vs-Val table)")
    corpus = load_corpus(data)
    space = api.feature_space(corpus, cache, features=features, classifier=classifier, standardise=not raw,
                              opts=ExtractOptions(checkpoint=checkpoint, device=device, workers=workers))
    warn = lambda m: typer.secho(m, fg=typer.colors.YELLOW, err=True)  # noqa: E731
    if table:
        from exvo.generate.table import DEFAULT_SUBDIR, write_table

        t = api.train_val_table(corpus, space, rule=bin_rule, echo=warn, progress=sys.stderr.isatty())
        paths = write_table(t, out or runs / DEFAULT_SUBDIR, api.table_tag(features, classifier, bin_rule, raw))
        typer.echo(paths["csv"].read_text().rstrip())
        typer.echo(t.diagonal_line())
        typer.echo(f"space: {t.space}; wrote {paths['csv']}, {paths['json']}, {paths['png']}")
        return
    r = api.fid_generated(corpus, gen_dir, emotion, space, against=against, rule=bin_rule,
                          progress=sys.stderr.isatty(), echo=warn)
    typer.echo(r.line())
    if save is not None:
        typer.echo(f"saved to {api.save_fid_row(save, r, gen_dir)}")


@app.command("heep")
@friendly
def heep_cmd(
    ratings: Path = typer.Argument(..., help="Ratings CSV: File_ID,<10 emotions> (average human intensities of generated clips)."),
    manifest: Optional[Path] = typer.Option(None, help="CSV File_ID,Target (emotion; several separated by ';'). Default: the emotion named in each File_ID."),
    fid: Optional[List[str]] = typer.Option(None, "--fid", help="EMOTION=FID for S_GEN (repeatable), e.g. --fid Amusement=4.92."),
    fid_csv: Optional[Path] = typer.Option(None, help="CSV with emotion,fid columns (as `exvo fid --save` writes) for S_GEN."),
):
    """ExVo-Generate: HEEP (paper Eq. 4) per targeted emotion and overall; with FIDs, S_GEN (Eq. 5)."""
    from exvo.generate import api

    fids = api.read_fids(fid, fid_csv) if (fid or fid_csv) else None
    rep = api.heep_report(ratings, manifest, fids)
    for line in rep.lines():
        typer.echo(line)


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
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "unavailable", "missing", "stale", "failed")}
    typer.echo(f"wrote {folder}/table.md and table.csv; rows: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    if counts["failed"] or counts["stale"]:
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


class _Command(typer.core.TyperCommand):
    """Help as users read it: ``PRED`` (not ``{pred}``) in usage lines, no ``<bool>`` after flags."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for p in params:
            if getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""          # a flag takes no value: show no type
        return params

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if p.param_type_name != "argument":
                continue
            name = (p.metavar or p.name or "ARG").upper()
            name = name if p.required else f"[{name}]"
            pieces.append(name + ("..." if p.nargs != 1 else ""))
        return pieces


for _info in app.registered_commands:   # every command, without repeating cls= on each decorator
    if _info.cls in (None, typer.core.TyperCommand):
        _info.cls = _Command


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
