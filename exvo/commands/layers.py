"""``exvo layers``: the layer sweep of one multi-layer cache (:mod:`exvo.learn.layers`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from exvo.commands.common import app, friendly, DataOpt, CacheOpt, RunsOpt, load_corpus


@app.command()
@friendly
def layers(
    features: str = typer.Option(..., "--features", "-f", help="One multi-layer cache: NAME (all its layers), or a subset NAME@a-b / NAME@a,b,c (e.g. wavlm, wavlm@0-12, raw_exvo_cr for a --cnn-seeds cache)."),
    preset: str = typer.Option("default", help="Protocol, as `exvo learn --preset` (default | paper | baseline | fast); explicit options override it."),
    arch: Optional[str] = typer.Option(None, help="The MLP head of every candidate: sys1 | sys2 (default: the preset's)."),
    seeds: int = typer.Option(5, help="Seeds per candidate; scores are mean ± std over seeds and the seed ensemble's."),
    stop_on: Optional[str] = typer.Option(None, help="Where epochs are chosen and layers ranked: holdout (speaker-disjoint part of Train) | folds (K speaker folds; ranking on the out-of-fold predictions) | val (Val scores optimistic †). Default: the preset's."),
    folds: Optional[int] = typer.Option(None, "--folds", help="With --stop-on folds: number of speaker folds (default 5)."),
    top_k: int = typer.Option(3, help="Concatenate the K best layers, ranked on Train (never on Val)."),
    weights: str = typer.Option("shared", help="The weighted sum's softmax weights: shared (one set) | task (one per task: emotions, country, age)."),
    resamples: int = typer.Option(500, help="Speaker-bootstrap draws of the 95 % intervals."),
    loss: Optional[str] = typer.Option(None, help="uncertainty | mean | fixed (as `exvo learn`)."),
    emotion_loss: Optional[str] = typer.Option(None, help="mse | ccc."),
    age_loss: Optional[str] = typer.Option(None, help="mse | mae."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs (preset: 20)."),
    patience: Optional[int] = typer.Option(None, help="Early-stopping patience (preset: 5)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (preset: 8)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (preset: 1e-3)."),
    stack_params: Optional[int] = typer.Option(None, help="Parameters per stack of layer probes trained together (whole layers; default 2,000,000 on the CPU, where larger stacks outgrow the caches; every layer in one stack on CUDA; 0 = one stack)."),
    threads: int = typer.Option(0, help="CPU threads; 0 = automatic."),
    name: Optional[str] = typer.Option(None, help="Sweep name (default <features>_layers); written to <runs>/layers/NAME."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing sweep of the same name."),
    data: Optional[Path] = DataOpt,
    cache: Path = CacheOpt,
    runs: Path = RunsOpt,
):
    """Which layer? Every layer probed with the learn head (all at once), the learned weighted sum and the best-k concatenation; Val scores with 95 % intervals, a figure and a table (`exvo report` shows them)."""
    from exvo.config import build
    from exvo.learn.layers import LayersConfig, sweep

    corpus = load_corpus(data)
    cfg = build(LayersConfig, features=features, preset=preset, arch=arch, seeds=seeds, stop_on=stop_on, folds=folds,
                top_k=top_k, weights=weights, resamples=resamples, loss=loss, emotion_loss=emotion_loss,
                age_loss=age_loss, epochs=epochs, patience=patience, batch_size=batch_size, lr=lr, threads=threads,
                stack_params=stack_params, device=device)
    result = sweep(corpus, cfg, cache_dir=cache, runs_dir=runs, name=name, echo=typer.echo, overwrite=overwrite)
    typer.echo(f"wrote {result.run_dir} (sweep.json, table.md, layers.png)")
