"""``exvo reproduce``: recipe files, the step runner (skip what exists) and the side-by-side table."""
from __future__ import annotations

import csv
import json
import os
import textwrap
from pathlib import Path

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
steps = ["extract --model egemaps", "learn --features egemaps --seeds 2 --epochs 8 --name {run}"]  # 8 epochs: a defined S_MTL (CCC > 0) on the 24-clip corpus, so the Δ below has a value

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
    # declared the paper's corpus: Δ = ours (mean over seeds) minus the paper's S_MTL
    folder = write(r, out, runs, "small", paper_corpus=True)
    rows = list(csv.reader((folder / "table.csv").open()))
    assert rows[0][:4] == ["row", "system", "source", "paper Emo-CCC"] and rows[0][-2:] == ["Δ S_MTL", "status"]
    eg = rows[1]
    assert rows[0][7] == "paper Test S_MTL" and rows[0][8] == "ours Emo-CCC"
    assert eg[0] == "egemaps" and eg[7] == "0.310" and " ± " in eg[8] and eg[-1] == "done"
    assert float(eg[-2]) == pytest.approx(float(eg[11].split(" ± ")[0]) - 0.32, abs=1.5e-3)
    assert rows[3][-1] == "unavailable: not an exvo extractor"
    # the trivial row: the learn run's constant predictor (Train mean / majority), S_MTL undefined (CCC 0)
    const = json.loads((runs / "reproduce-tiny-egemaps" / "config.json").read_text())["constant_predictor_val"]
    assert rows[-1][0] == "trivial" and rows[-1][8:12] == [f"{const['ccc']:.3f}", f"{const['uar']:.3f}",
                                                           f"{const['mae']:.2f}", "undefined (CCC 0)"]
    # any other corpus (a name, or split sizes that are not ExVo's): no Δ, the ranks of paper and ours
    folder = write(r, out, runs, "small")
    rows = list(csv.reader((folder / "table.csv").open()))
    assert rows[0][-3:] == ["paper rank (S_MTL)", "ours rank (S_MTL)", "status"] and rows[1][-3:-1] == ["1", "1"]
    assert "No Δ: the corpus's split sizes are unknown" in (folder / "table.md").read_text()

    # a second run does no work and writes the same table
    before = (folder / "table.md").read_text()
    again = execute(r, small_demo_copy, cache, runs, commands=command_table(app), echo=logs.append)
    assert [o.steps_run for o in again] == [0, 0, 0, 0]
    # ... however the folders are spelled: relative here, and with a detour (issue 27.17)
    for spelled in (Path(os.path.relpath(runs)), runs / ".." / "runs"):
        same = execute(r, small_demo_copy, Path(os.path.relpath(cache)), spelled, commands=command_table(app),
                       echo=logs.append)
        assert [(o.status, o.steps_run) for o in same][:1] == [("done", 0)]
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
    rp.write_text(textwrap.dedent(TINY).replace("--seeds 2 --epochs 8", "--seeds 2 --epochs 3"))
    third = execute(recipes.load(rp), small_demo_copy, cache, runs, commands=command_table(app), echo=logs.append)
    assert third[0].status == "stale" and "reproduce-tiny-egemaps exists but was made by `exvo learn" in third[0].detail
    assert third[0].steps_run == 0 and "--epochs 8" in third[0].detail
    assert json.loads((runs / "reproduce-tiny-egemaps" / "config.json").read_text())["train"]["epochs"] == 8


def test_cli_list_names_every_recipe():
    res = CliRunner().invoke(app, ["reproduce", "--list"])
    assert res.exit_code == 0, res.output
    for n in recipes.names():
        assert f"{n}: " in res.output


MINI = """
name = "mini"
title = "Mini"
paper = "none.txt"
metrics = ["ccc", "s_mtl"]

[[row]]
id = "a"
system = "A, stopped on Val"
source = "T1"
paper = {ccc = 0.40, s_mtl = 0.35}
steps = ["learn --features egemaps --name {run}"]

[[row]]
id = "b"
system = "B, remade since"
source = "T1"
paper = {ccc = 0.50, s_mtl = 0.30}
steps = ["learn --features compare --name {run}"]

[[row]]
id = "m"
system = "mean of A and B"
source = "T1"
paper = {s_mtl = 0.36}
steps = ["fuse --mean reproduce-mini-a reproduce-mini-b --name {run}"]
"""


def _fake_run(folder, config: dict, metrics: dict):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def _summary(ccc, s_mtl, seeds):
    per = [{"seed": k, "ccc": ccc, "s_mtl": s_mtl} for k in range(seeds)]
    return {"split": "Val", "per_seed": per, "summary": {"ccc": {"mean": ccc, "std": 0.0 if seeds == 1 else 0.01},
                                                         "s_mtl": {"mean": s_mtl, "std": 0.0 if seeds == 1 else 0.02}},
            "ensemble": {"ccc": ccc + 0.01, "s_mtl": s_mtl + 0.01}}


def test_table_marks_val_chosen_and_stale_rows_and_never_takes_delta_across_corpora(tmp_path):
    """One flag (config val_optimistic) gives †, also to a plain mean of such a run; a stale row
    keeps its figures (‡, the reason beside them); one seed is ± n/a; no Δ off the paper's corpus."""
    from exvo.recipes.run import RowOutcome
    from exvo.recipes.table import rows as table_rows

    rp = tmp_path / "mini.toml"
    rp.write_text(textwrap.dedent(MINI))
    r = recipes.load(rp)
    runs = tmp_path / "runs"
    const = {"ccc": 0.0, "uar": 0.25, "mae": 4.37, "s_mtl": 0.0}
    a = _fake_run(runs / "reproduce-mini-a", {"kind": "learn", "val_optimistic": True,
                                              "constant_predictor_val": const}, _summary(0.45, 0.33, 1))
    b = _fake_run(runs / "reproduce-mini-b", {"kind": "learn", "val_optimistic": False}, _summary(0.55, 0.31, 3))
    m = _fake_run(runs / "reproduce-mini-m", {"kind": "fusion", "mode": "mean", "sources": [a.name, b.name]},
                  _summary(0.52, 0.34, 3) | {"selection": {"select_on": "val", "optimistic": False}})
    outcomes = [RowOutcome(r.rows[0], "done", run_dir=a),
                RowOutcome(r.rows[1], "stale", "reproduce-mini-b exists but was made by another command", run_dir=b),
                RowOutcome(r.rows[2], "done", run_dir=m)]
    head, body = table_rows(r, outcomes, paper_corpus=False)
    cols = {h: [row[k] for row in body] for k, h in enumerate(head)}
    assert cols["ours Emo-CCC"][:3] == ["0.450 ± n/a †", "0.550 ± 0.010 ‡", "0.520 ± 0.010 †"]
    assert cols["ours ens. S_MTL"][:3] == ["0.340 †", "0.320 ‡", "0.350 †"]
    assert "Δ S_MTL" not in head
    # ranks by S_MTL: the paper orders m, a, b; ours orders m, a, b as well
    assert cols["paper rank (S_MTL)"][:3] == ["2", "3", "1"] and cols["ours rank (S_MTL)"][:3] == ["2", "3", "1"]
    assert cols["status"][1] == "stale: reproduce-mini-b exists but was made by another command"
    assert body[-1][0] == "trivial" and cols["ours S_MTL"][-1] == "undefined (CCC 0)"
    head, body = table_rows(r, outcomes, paper_corpus=True)
    assert head[-2] == "Δ S_MTL" and body[0][-2] == "-0.020" and body[2][-2] == "-0.020"


def test_verify_table_names_its_test_queries_and_drops_the_empty_ensemble_column(tmp_path):
    from exvo.recipes.run import RowOutcome
    from exvo.recipes.table import rows as table_rows, splits_of

    rp = tmp_path / "v.toml"
    rp.write_text('name="v"\ntitle="V"\npaper="p"\nmetrics=["uar", "f1"]\n[[row]]\nid="namp"\nsystem="NAMP"\n'
                  'source="T4"\npaper={uar=0.719, f1=0.7}\nsteps=["verify --features egemaps --name {run}"]\n')
    r = recipes.load(rp)
    run = _fake_run(tmp_path / "runs" / "verify" / "x", {"kind": "verify"},
                    {"uar": {"mean": 0.9, "std": 0.01}, "f1_weighted": {"mean": 0.88, "std": 0.02}, "seeds": 3,
                     "chance_uar": 0.5, "queries": {"split": "Test (labelled)", "n": 105}})
    outcomes = [RowOutcome(r.rows[0], "done", run_dir=run)]
    head, body = table_rows(r, outcomes)
    assert not any(h.startswith("ours ens.") for h in head) and splits_of(outcomes) == ["Test"]
    assert body[0][head.index("ours UAR")] == "0.900 ± 0.010" and body[-1][head.index("ours UAR")] == "0.500"


def test_delta_only_on_the_papers_corpus():
    from types import SimpleNamespace

    from exvo.recipes.table import EXVO_SPLITS, is_paper_corpus

    exvo = SimpleNamespace(split_ids=lambda s: [0] * EXVO_SPLITS[s])
    demo = SimpleNamespace(split_ids=lambda s: [0] * {"Train": 600, "Val": 300, "Test": 300}[s])
    assert is_paper_corpus(recipes.load("idiap2022"), exvo) == (True, "ExVo 2022 split sizes (59,201 clips)")
    same, why = is_paper_corpus(recipes.load("idiap2022"), demo)
    assert not same and why.endswith("this corpus has 600/300/300")
    assert is_paper_corpus(recipes.load("enrol-verify"), exvo) == (False, "the paper used IEMOCAP")


def _opt(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_burst2vec_adv_ablations_follow_table_2():
    """Paper 003 Table 2 marks V2, V3 and V5 '– Adv' (§5: 'the three main variants without adversarial
    debiasing (V2, V3, and V5)'); those rows run alpha1 = alpha2 = 0, every other fine-tuned row keeps the
    adversarial terms, and Ensembles A-C average exactly the members the table names."""
    r = recipes.load("burst2vec")
    rows = {row.id: row for row in r.rows}
    no_adv = {"v2", "v3", "v5"}
    for vid in ("v1", "v2", "v3", "v4", "v5", "v6", "v7"):
        argv = rows[vid].steps[-1]
        off = _opt(argv, "--alpha1") == "0" and _opt(argv, "--alpha2") == "0"
        assert off == (vid in no_adv), (vid, argv)
        assert ("-Adv" in rows[vid].system) == (vid in no_adv), rows[vid].system
    assert rows["v3"].checkpoint == "facebook/hubert-base-ls960"
    members = {"ensemble-a": {"v1", "v2", "v3", "v6"}, "ensemble-b": {"v1", "v2", "v3", "v5", "v6"},
               "ensemble-c": {"v1", "v2", "v3", "v4", "v5", "v6"}}
    for eid, want in members.items():
        argv = rows[eid].steps[-1]
        got = {a.removeprefix("reproduce-burst2vec-") for a in argv if a.startswith("reproduce-burst2vec-")}
        assert got == want, (eid, got)


def test_idiap_hybrids_take_country_from_the_cnns_own_softmax():
    """Paper 001: the hybrid country UARs (.437 / .456) are Table 1's softmax UARs of the CR CNNs
    (43.70 / 45.65), so the hybrid rows fuse the ER run with the CR CNN's own posteriors, not with an
    MLP trained on the CR embeddings."""
    rows = {row.id: row for row in recipes.load("idiap2022").rows}
    for rid, cnn, want in (("hybrid-raw-er+raw-cr-sys2", "raw_exvo_cr", 0.437),
                           ("hybrid-raw-er+zff-cr-sys2", "zff_exvo_cr", 0.456)):
        row = rows[rid]
        assert row.paper["uar"] == want
        post = [s for s in row.steps if s[0] == "cnn-posteriors"]
        assert len(post) == 1 and _opt(post[0], "--model") == cnn
        fuse_step = row.steps[-1]
        assert fuse_step[:2] == ["fuse", "--hybrid"] and _opt(post[0], "--name") in fuse_step
        assert not any(s[0] == "learn" and cnn in " ".join(s) for s in row.steps), rid
    from exvo.recipes.run import RUN_COMMANDS_WITH_NAME

    assert "cnn-posteriors" in RUN_COMMANDS_WITH_NAME      # its run folder is found (and reused) by --name
