"""Commands on a corpus: ``demo-corpus``, ``score``."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from exvo.commands.common import app, friendly, fail_cli, DataOpt, TaskOpt, load_corpus


# --------------------------------------------------------------------------- corpus
@app.command("demo-corpus")
@friendly
def demo_corpus(
    out: Path = typer.Argument(..., help="Folder to write (data_info.csv, wav/, hidden_test_labels.csv)."),
    speakers: int = typer.Option(60, help="Number of speakers (split 50/25/25 % into Train/Val/Test)."),
    clips_per_speaker: int = typer.Option(20, help="Clips per speaker."),
    seed: int = typer.Option(0, help="Random seed (same seed, same corpus)."),
    layout: str = typer.Option("exvo", help="exvo (data_info.csv + wav/) | avb (the A-VB 2022 release: labels/data_info.csv, labels/<task>_info.csv, audio/wav/) | both (the ExVo layout plus the A-VB labels/: one folder and cache for all five tasks)."),
):
    """Write a procedural demo corpus in the exact ExVo layout (or the A-VB 2022 layout: --layout avb)."""
    from exvo.demo import make_demo_corpus

    make_demo_corpus(out, speakers=speakers, clips_per_speaker=clips_per_speaker, seed=seed,
                     progress=sys.stderr.isatty(), layout=layout)
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
    task: Optional[str] = TaskOpt,
):
    """Score a prediction file of a task; prints JSON (ExVo: ccc, uar, mae, s_mtl, ccc_per_emotion)."""
    import warnings

    from exvo.predictions import Predictions, score as score_fn

    corpus = load_corpus(data, task)
    if track == "fewshot" and corpus.task.name != "exvo-mtl":
        fail_cli("the fewshot track scores the ExVo emotions; drop --task")
    if track == "fewshot":
        from exvo.fewshot.protocol import protocol_for, read_submission, score_submission

        proto = protocol_for(corpus, split, support_seed, support_file)
        typer.echo(json.dumps(score_submission(*read_submission(pred), corpus, proto), indent=2))
        return
    if track != "multitask":
        fail_cli(f"unknown --track {track!r}; choose multitask or fewshot")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = score_fn(Predictions.read(pred, task=corpus.task), corpus, split, convention)  # type: ignore[arg-type]
    for w in caught:
        typer.secho(f"warning: {w.message}", fg=typer.colors.YELLOW, err=True)
    typer.echo(json.dumps(result, indent=2))
