"""Whole-pipeline commands: ``reproduce`` (one recipe per paper), ``demo``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from exvo.commands.common import (CacheOpt, DataOpt, DEMO_DIR, RunsOpt, app, command_table, fail_cli, friendly,
                                  load_corpus)


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
    seeds: Optional[int] = typer.Option(None, help="Seeds of every step that takes --seeds (default: each command's own, 5; "
                                                   "with --reduced: 3, the demo's)."),
    reduced: bool = typer.Option(False, "--reduced", help="Only the rows `exvo demo` runs (minutes on a CPU), with the "
                                                          "demo's 3 seeds; their own table, reproduce-NAME-reduced/."),
    list_: bool = typer.Option(False, "--list", help="List the recipes, their rows and what each needs, and exit."),
):
    """Reproduce a paper's table: run the missing steps, then write paper vs ours side by side."""
    from exvo.recipes import load as recipes
    from exvo.recipes.run import REDUCED_SEEDS, execute, plan_lines
    from exvo.recipes.table import write

    if list_ or name is None:
        for n in recipes.names():
            for line in plan_lines(recipes.load(n), checkpoint_dir, command_table()):
                typer.echo(line)
        if name is None and not list_:
            fail_cli("name a recipe (see the list above), e.g. `exvo reproduce idiap2022`")
        return
    recipe = recipes.load(name)
    only = recipe.demo_rows() if reduced else None
    if reduced and seeds is None:
        seeds = REDUCED_SEEDS
    corpus = load_corpus(data)
    typer.echo(f"reproduce {recipe.name} on {corpus.root} ({len(only) if reduced else len(recipe.rows)} of "
               f"{len(recipe.rows)} rows{f', {seeds} seeds' if seeds else ''})")
    outcomes = execute(recipe, Path(corpus.root), cache, runs, checkpoint_dir, commands=command_table(),
                       echo=typer.echo, seeds=seeds, only=only)
    folder = write(recipe, outcomes, runs, corpus, reduced=reduced)
    typer.echo((folder / "table.md").read_text())
    counts = {s: sum(o.status == s for o in outcomes)
              for s in ("done", "skipped", "unavailable", "missing", "not run", "stale", "failed")}
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

    run_demo(data, cache, runs, seeds=seeds, echo=typer.echo, commands=command_table())
