"""Stage 2 commands: ``learn``, ``finetune``, ``predict``, ``fuse``, ``report``."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from exvo.commands.common import app, friendly, fail_cli, DataOpt, CacheOpt, RunsOpt, TaskOpt, load_corpus


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
    stop_on: Optional[str] = typer.Option(None, help="Where early stopping, the epoch and the @best layer are chosen: folds (K speaker folds of Train, each fold model stopped on its own speakers; out-of-fold Train estimate saved) | holdout (one speaker-disjoint part of Train, stratified by country) | val (the papers' protocol; Val scores marked optimistic †). Val stays clean unless val. Default: the preset's."),
    folds: Optional[int] = typer.Option(None, "--folds", help="With --stop-on folds: number of speaker folds (default 5, or the number of Train speakers when fewer)."),
    final: Optional[str] = typer.Option(None, help="With --stop-on folds: ensemble (Val/Test = mean of the fold models, default) | refit (one model per seed on all of Train for the folds' median epochs / trees)."),
    loss: Optional[str] = typer.Option(None, help="How the task losses are combined: uncertainty (learned weights, as the baseline) | mean | fixed (see --loss-weights)."),
    emotion_loss: Optional[str] = typer.Option(None, help="mse (the 10 MSEs summed, baseline) | ccc (1 − batch CCC). Default: the preset's (mse); burst2vec: ccc."),
    age_loss: Optional[str] = typer.Option(None, help="mse | mae. mlp: on age standardised by the Train mean/std (default mse); burst2vec: on age min-max scaled to [0, 1] by Train (default mae)."),
    loss_weights: Optional[str] = typer.Option(None, help="With --loss fixed: weights of emotions,country,age, e.g. 1,0.5,0.5."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs. Default: mlp presets 20 (fast: 30); burst2vec 100."),
    patience: Optional[int] = typer.Option(None, help="Early-stopping patience in epochs. Default: mlp presets 5 (fast: 6); burst2vec 10."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size. Default: mlp presets 8 (fast: 256); burst2vec 32 (per task)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate. Default: mlp presets 1e-3 (fast: 8e-3 with warm-up and cosine decay); burst2vec 1e-4."),
    threads: int = typer.Option(0, help="CPU threads; 0 = automatic: the idle cores now (cores minus load), or $OMP_NUM_THREADS if set."),
    opt: Optional[List[str]] = typer.Option(None, "--opt", help="A learner's own setting KEY=VALUE (repeatable), e.g. --opt max_bin=64 for xgb."),
    alpha1: Optional[float] = typer.Option(None, help="burst2vec: weight of the reversed task-discrimination loss (default 0.5; 0 = off)."),
    alpha2: Optional[float] = typer.Option(None, help="burst2vec: weight of the reversed task-specific adversarial losses (default 0.25; 0 = off)."),
    oversample: bool = typer.Option(False, "--oversample", help="burst2vec: oversample Train over joint (country, age range, dominant emotion) cells."),
    name: Optional[str] = typer.Option(None, help="Run folder name (default derived from features/learner/arch)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run of the same name (refused otherwise)."),
    task: Optional[str] = TaskOpt,
    data: Optional[Path] = DataOpt,
    cache: Path = CacheOpt,
    runs: Path = RunsOpt,
):
    """Stage 2: train a multitask learner on cached features; report Val scores; write predictions."""
    from exvo.config import build
    from exvo.learn.api import learn as run_learn
    from exvo.learn.config import LearnConfig

    options = {}
    for item in opt or []:
        if "=" not in item:
            fail_cli(f"--opt expects KEY=VALUE, got {item!r}")
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
            fail_cli(f"--loss-weights expects 3 numbers like 1,0.5,0.5, got {loss_weights!r}")
    corpus = load_corpus(data, task)
    cfg = build(LearnConfig, features=[f.strip() for f in features.split(",") if f.strip()], learner=learner,
                preset=preset, arch=arch, seeds=seeds, loss=loss, emotion_loss=emotion_loss, age_loss=age_loss,
                loss_weights=weights, epochs=epochs, patience=patience, batch_size=batch_size, lr=lr,
                stop_on=stop_on, folds=folds, final=final, threads=threads, options=options, device=device)
    result = run_learn(corpus, cfg, cache_dir=cache, runs_dir=runs, name=name, echo=typer.echo, overwrite=overwrite)
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
    from exvo.config import build
    from exvo.learn.burst2vec import Burst2VecConfig
    from exvo.learn.finetune import export_encoder, finetune as run_finetune
    from exvo.learn.finetune_config import FinetuneConfig

    if learner != "burst2vec":
        fail_cli(f"--learner {learner!r} cannot be fine-tuned end to end; choose burst2vec")
    if export is not None and export.exists():
        fail_cli(f"--export {export} already exists; choose a new folder for the exported encoder")
    corpus = load_corpus(data)
    head = Burst2VecConfig(alpha1=alpha1, alpha2=alpha2, emotion_loss=emotion_loss, age_loss=age_loss,
                           oversample=oversample)
    cfg = build(FinetuneConfig, model=model, checkpoint=checkpoint, head=head, seeds=seeds, epochs=epochs,
                patience=patience, batch_size=batch_size, lr=lr, precision=precision,
                freeze_feature_encoder=freeze_feature_encoder, holdout=holdout, stop_on=stop_on, rms_db=rms_db,
                device=device)
    try:
        run_dir, metrics = run_finetune(corpus, cfg, runs_dir=runs, name=name, echo=typer.echo,
                                        progress=sys.stderr.isatty())
    except KeyboardInterrupt:
        fail_cli("interrupted; finished epochs are saved. Run the same command again to resume", code=130)
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
    task: Optional[str] = typer.Option(None, "--task", help="The run's task (default: the one its config.json records)."),
):
    """Apply a saved learn run to a corpus (same extractors cached) and write a submission file."""
    from exvo.learn.api import predict_run
    from exvo.predictions import run_task

    corpus = load_corpus(data, task if task is not None else run_task(run))
    path = predict_run(run, corpus, cache_dir=cache, split=split, out=out)
    typer.echo(f"wrote {path}")


@app.command()
@friendly
def fuse(
    run_names: Optional[List[str]] = typer.Argument(None, help="Run folders or names under --runs (default: all learn runs)."),
    hybrid: bool = typer.Option(False, "--hybrid", help="Per subtask, take the run with the best Val score."),
    mean: bool = typer.Option(False, "--mean", help="Average the runs (country: averaged probabilities)."),
    pool: bool = typer.Option(False, "--pool", help="One run with every seed of the named runs, which differ only in a "
                                                   "CNN seed (NAME@k of an --cnn-seeds cache): mean ± std includes the CNN's variance."),
    top: int = typer.Option(1, help="With --hybrid: average the K best runs per subtask."),
    weighted: bool = typer.Option(False, help="With --mean (or --hybrid --top K): weight runs per subtask by their Val score (CCC, UAR, 1/MAE)."),
    select_on: str = typer.Option("oof", help="oof (choose on the runs' out-of-fold Train predictions, from `learn --stop-on folds`, the default; Val stays a clean score) | val (choose on all of Val; optimistic †) | cv (choose on half the Val speakers, score on the other half)."),
    name: Optional[str] = typer.Option(None, help="Output run name."),
    task: Optional[str] = TaskOpt,
    data: Optional[Path] = DataOpt,
    runs: Path = RunsOpt,
):
    """Late fusion of learn runs (of one task): hybrid per-subtask selection or averaging ensembles."""
    from exvo.fusion.api import fuse as run_fuse

    if hybrid + mean + pool != 1:
        fail_cli("choose exactly one of --hybrid, --mean or --pool")
    corpus = load_corpus(data, task)
    if pool:
        from exvo.fusion.pool import pool as run_pool

        if not run_names or not name:
            fail_cli("--pool needs the runs to pool and a --name, e.g. "
                  "`exvo fuse --pool raw_exvo_cr@0 raw_exvo_cr@1 --name raw_exvo_cr_pooled`")
        run_pool(corpus, runs, list(run_names), name, echo=typer.echo)
        return
    result = run_fuse(corpus, runs_dir=runs, run_names=run_names or None, mode="hybrid" if hybrid else "mean",
                      top=top, weighted=weighted, select_on=select_on, name=name, echo=typer.echo)
    typer.echo(result.summary_line())


@app.command("cnn-posteriors")
@friendly
def cnn_posteriors(
    model: str = typer.Option(..., "--model", help="The task CNN extractor whose own clip decisions to keep: raw_exvo_cr or zff_exvo_cr (trained by `exvo extract --model NAME`)."),
    name: Optional[str] = typer.Option(None, help="Run name (default: <model>-softmax)."),
    device: str = typer.Option("cpu", help="cpu | cuda | auto."),
    data: Optional[Path] = DataOpt,
    cache: Path = CacheOpt,
    runs: Path = RunsOpt,
):
    """A country CNN's own clip posteriors (summed frame softmax, paper 001 Table 1) as a run that `exvo fuse` takes for the country only."""
    from exvo.device import resolve_device
    from exvo.fusion.cnn_source import cnn_source

    cnn_source(load_corpus(data), model, cache, runs, name, device=resolve_device(device), echo=typer.echo)


@app.command()
@friendly
def report(
    runs: Path = RunsOpt,
    out: Optional[Path] = typer.Option(None, help="Output folder for report.md, report.csv and PNG figures (default: <runs>/report)."),
    task: Optional[str] = TaskOpt,
    data: Optional[Path] = DataOpt,
):
    """Table of every run of a task (mean ± std over seeds and the seed-ensemble score, sorted by the task score's seed mean, S_MTL for ExVo) plus figures."""
    from exvo.fusion.report import make_report

    corpus = load_corpus(data, task)
    table = make_report(runs, out or runs / "report", corpus=corpus)
    typer.echo(table)
