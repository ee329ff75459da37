"""``exvo reproduce``: recipe files, the step runner (skip what exists) and the side-by-side table."""
from __future__ import annotations

import csv
import json
import textwrap

import pytest
from typer.testing import CliRunner

from exvo.cli import app
from exvo.recipes import load as recipes
from exvo.commands.common import command_table
from exvo.recipes.run import execute, plan, step_problems
from exvo.recipes.table import write


@pytest.mark.parametrize("name", recipes.names())
def test_shipped_recipes_parse_and_name_only_real_commands(name):
    r = recipes.load(name)
    assert r.rows and r.metrics and r.title
    commands = command_table(app)
    for row in r.rows:
        # every row carries the paper's figures, with where they were transcribed from
        assert row.source.strip() and (row.paper or row.paper_test or row.extra), row.id
        if not row.unavailable:
            assert step_problems(row.steps, commands) == [], row.id


def test_expected_recipes_are_shipped():
    assert {"idiap2022", "exvo-baseline"} <= set(recipes.names())


def test_unknown_command_and_option_are_named():
    commands = command_table(app)
    assert step_problems([["nosuch", "--x"]], commands) == ["`exvo nosuch` does not exist in this version"]
    assert step_problems([["learn", "--features", "a", "--bogus", "1"]], commands) == ["`exvo learn` has no option --bogus"]


def test_malformed_recipe_is_refused(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('name="bad"\ntitle="t"\npaper="p"\nmetrics=["ccc"]\n[[row]]\nid="a"\nsystem="s"\nsource="T1"\n'
                 'paper={ccc=0.5, cccc=1}\nsteps=["learn"]\n')
    with pytest.raises(recipes.RecipeError, match="unknown metric 'cccc'"):
        recipes.load(p)
    p.write_text('name="bad"\ntitle="t"\npaper="p"\nmetrics=["ccc"]\n[[row]]\nid="a"\nsystem="s"\nsource="T1"\n'
                 'paper={ccc=0.5}\n')
    with pytest.raises(recipes.RecipeError, match="needs steps, or `unavailable`"):
        recipes.load(p)
    with pytest.raises(recipes.RecipeError, match="no recipe 'nope'"):
        recipes.load("nope")


TINY = """
name = "tiny"
title = "Tiny test recipe"
paper = "none.txt"
metrics = ["ccc", "uar", "mae", "s_mtl"]

[[row]]
id = "egemaps"
system = "eGeMAPS MLP"
source = "Table 0, row 1"
paper = {ccc = 0.35, uar = 0.42, mae = 4.0, s_mtl = 0.32}
paper_test = {s_mtl = 0.31}
steps = ["extract --model egemaps", "learn --features egemaps --seeds 2 --epochs 2 --name {run}"]

[[row]]
id = "ssl"
system = "WavLM"
source = "Table 0, row 2"
paper = {s_mtl = 0.39}
checkpoint = "microsoft/wavlm-large"
steps = ["extract --model wavlm", "learn --features wavlm --name {run}"]

[[row]]
id = "gone"
system = "DeepSpectrum"
source = "Table 0, row 3"
paper = {s_mtl = 0.3}
unavailable = "not an exvo extractor"

[[row]]
id = "future"
system = "A learner this version lacks"
source = "Table 0, row 4"
paper = {s_mtl = 0.5}
steps = ["teleport --features egemaps --name {run}"]
"""


def test_reproduce_runs_missing_steps_once_and_writes_the_table(small_demo_copy, tmp_path):
    rp = tmp_path / "tiny.toml"
    rp.write_text(textwrap.dedent(TINY))
    r = recipes.load(rp)
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    p = plan(r, None, command_table(app))
    assert [x.id for x in p.ready] == ["egemaps"]
    assert p.outcomes["ssl"].status == "skipped" and "snapshot_download('microsoft/wavlm-large'" in p.outcomes["ssl"].detail
    assert p.outcomes["gone"].status == "unavailable"
    assert p.outcomes["future"].detail == "`exvo teleport` does not exist in this version"

    logs: list[str] = []
    out = execute(r, small_demo_copy, cache, runs, commands=command_table(app), echo=logs.append)
    assert [o.status for o in out] == ["done", "skipped", "unavailable", "missing"]
    assert out[0].steps_run == 2 and (runs / "reproduce-tiny-egemaps" / "metrics.json").is_file()
    folder = write(r, out, runs, "small")
    rows = list(csv.reader((folder / "table.csv").open()))
    assert rows[0][:4] == ["row", "system", "source", "paper Emo-CCC"] and rows[0][-2:] == ["Δ S_MTL", "status"]
    eg = rows[1]
    assert rows[0][7] == "paper Test S_MTL" and rows[0][8] == "ours Emo-CCC"
    assert eg[0] == "egemaps" and eg[7] == "0.310" and " ± " in eg[8] and eg[-1] == "done"
    # Δ is ours (mean over seeds) minus the paper's S_MTL
    assert float(eg[-2]) == pytest.approx(float(eg[11].split(" ± ")[0]) - 0.32, abs=1.5e-3)
    assert rows[3][-1] == "unavailable: not an exvo extractor"

    # a second run does no work and writes the same table
    before = (folder / "table.md").read_text()
    again = execute(r, small_demo_copy, cache, runs, commands=command_table(app), echo=logs.append)
    assert [o.steps_run for o in again] == [0, 0, 0, 0]
    write(r, again, runs, "small")
    assert (folder / "table.md").read_text() == before

    # a reduced run (here no row selected) keeps the earlier run's figures, never empties the table
    reduced = execute(r, small_demo_copy, cache, runs, commands=command_table(app), echo=logs.append, only=set())
    assert (reduced[0].status, reduced[0].detail, reduced[0].steps_run) == ("done", "from an earlier run", 0)
    kept = list(csv.reader((write(r, reduced, runs, "small") / "table.csv").open()))[1]
    assert kept[8:12] == eg[8:12] and kept[-1] == "done: from an earlier run"
    fresh = execute(r, small_demo_copy, cache, tmp_path / "runs2", commands=command_table(app), echo=logs.append, only=set())
    assert fresh[0].status == "not run" and "`exvo reproduce tiny` runs it" in fresh[0].detail
    assert not (tmp_path / "runs2" / "reproduce-tiny-egemaps").exists()

    # the same run name asked with other settings: the old run is neither reused nor replaced
    rp.write_text(textwrap.dedent(TINY).replace("--seeds 2 --epochs 2", "--seeds 2 --epochs 3"))
    third = execute(recipes.load(rp), small_demo_copy, cache, runs, commands=command_table(app), echo=logs.append)
    assert third[0].status == "stale" and "reproduce-tiny-egemaps exists but was made by `exvo learn" in third[0].detail
    assert third[0].steps_run == 0 and "--epochs 2" in third[0].detail
    assert json.loads((runs / "reproduce-tiny-egemaps" / "config.json").read_text())["train"]["epochs"] == 2


def test_cli_list_names_every_recipe():
    res = CliRunner().invoke(app, ["reproduce", "--list"])
    assert res.exit_code == 0, res.output
    for n in recipes.names():
        assert f"{n}: " in res.output
