"""Runs know what they were made from: the five ways a result went stale unnoticed (issue 24)."""
from __future__ import annotations

import csv
import json
import shutil
import textwrap

import numpy as np
import pytest
import soundfile as sf
from test_recipes import TINY     # the tiny recipe: one egemaps row that runs, three that cannot

import exvo
from exvo.fusion.report import make_report
from exvo.recipes import load as load_recipe
from exvo.cli import app
from exvo.commands.common import command_table
from exvo.recipes.run import execute

FAST = dict(seeds=1, preset="fast", epochs=2)


@pytest.fixture
def world(small_demo_copy, tmp_path):
    corpus = exvo.Corpus.from_dir(small_demo_copy)
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    exvo.extract(corpus, "egemaps", cache_dir=cache)
    run = exvo.learn(corpus, ["egemaps"], cache_dir=cache, runs_dir=runs, name="eg", **FAST)
    return corpus, cache, runs, run


def _report_row(runs, out, corpus, name):
    make_report(runs, out, corpus=corpus)
    return {r["system"]: r for r in csv.DictReader((out / "report.csv").open())}[name]


def test_fresh_run_is_not_stale_and_records_its_inputs(world):
    corpus, cache, runs, run = world
    assert run.stale == []
    p = run.provenance
    assert p["caches"] == [{"name": "egemaps", "root": str(cache.resolve()), "path": f"{corpus.name}/egemaps.h5",
                            "fingerprint": exvo.load_run(run.path).record["features"][0]["cache_fingerprint"]}]
    assert set(p["corpus"]["labels"]) == {"Train", "Val", "Test"} and "val.csv" in p["files"]
    assert p["command"].startswith("python: ") and p["code_version"].startswith(exvo.__version__ + "+")


def test_case1_corrected_val_labels_make_the_run_stale(world, tmp_path):
    corpus, cache, runs, run = world
    table = corpus.root / "data_info.csv"
    rows = list(csv.DictReader(table.open()))
    val = next(r for r in rows if r["Split"] == "Val")
    val["Age"] = str(float(val["Age"]) + 7)                 # a corrected label
    with table.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    why = exvo.load_run(run.path).stale
    assert why == [f"the Val labels of {corpus.root.resolve()}/data_info.csv changed since the run; "
                   "re-run it (same command) to score against the current labels"]
    assert _report_row(runs, tmp_path / "rep", corpus, "eg")["stale"] == why[0]


@pytest.mark.parametrize("edit", ["val.csv", "metrics.json"])
def test_case2_hand_edited_run_files_are_flagged(world, tmp_path, edit):
    corpus, cache, runs, run = world
    f = run.path / edit
    if edit == "metrics.json":
        m = json.loads(f.read_text())
        m["summary"]["s_mtl"]["mean"] = 0.999
        f.write_text(json.dumps(m))
    else:
        f.write_text(f.read_text().replace("0.", "0.9", 3))
    why = exvo.load_run(run.path).stale
    assert why == [f"{edit} changed after the run was written (edited by hand?); "
                   "re-run it to get figures its files agree with"]
    text = make_report(runs, tmp_path / "rep", corpus=corpus)
    assert "eg ‡" in text and f"‡ eg is stale: {edit} changed after" in text


def test_case3_copied_runs_folder_is_checked_against_its_own_copies(world, tmp_path):
    corpus, cache, runs, run = world
    exvo.learn(corpus, ["egemaps"], cache_dir=cache, runs_dir=runs, name="eg1", arch="sys1", **FAST)
    fused = exvo.fuse(corpus, ["eg", "eg1"], runs_dir=runs, mode="mean")
    assert fused.stale == [] and fused.provenance["sources"][0]["name"] == "eg"
    copy = tmp_path / "elsewhere"
    shutil.copytree(runs, copy)
    assert exvo.load_run(copy / fused.name).stale == []          # a plain copy (new mtimes) is still fresh
    (copy / "eg" / "val.csv").write_text((copy / "eg" / "val.csv").read_text().replace("0.", "0.8", 2))
    assert exvo.load_run(runs / fused.name).stale == []          # the original is untouched
    assert exvo.load_run(copy / fused.name).stale == [
        "source eg is stale itself (val.csv changed after the run was written (edited by hand?)); refresh it, "
        "then make this run again"]
    shutil.rmtree(copy / "eg1")
    exvo.learn(corpus, ["egemaps"], cache_dir=cache, runs_dir=copy, name="eg1", **FAST)   # a source re-made
    assert "source eg1 changed since the fusion" in exvo.load_run(copy / fused.name).stale


def test_case4_runs_on_a_superseded_cache_are_stale(world, tmp_path):
    corpus, cache, runs, run = world
    wav = corpus.audio_path(corpus.split_ids("Train")[0])
    x, sr = sf.read(wav)
    sf.write(wav, 0.5 * x, sr)                                   # the audio changed …
    exvo.extract(corpus, "egemaps", cache_dir=cache)             # … and was re-extracted
    why = exvo.load_run(run.path).stale
    assert why == [f"its input cache {corpus.name}/egemaps.h5 was rebuilt or extended since (audio or settings "
                   "changed); re-run it on the current cache"]
    new = exvo.learn(corpus, ["egemaps"], cache_dir=cache, runs_dir=runs, name="eg_new", **FAST)
    assert new.stale == []
    assert _report_row(runs, tmp_path / "rep", corpus, "eg")["stale"] == why[0]
    assert _report_row(runs, tmp_path / "rep2", corpus, "eg_new")["stale"] == ""


def test_case5_reproduce_after_changed_wavs_is_not_done_already(small_demo_copy, tmp_path):
    rp = tmp_path / "tiny.toml"
    rp.write_text(textwrap.dedent(TINY))
    r = load_recipe.load(rp)
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    first = execute(r, small_demo_copy, cache, runs, commands=command_table(app), echo=lambda m: None)
    assert first[0].status == "done" and first[0].steps_run == 2
    before = json.loads((first[0].run_dir / "config.json").read_text())["provenance"]["caches"][0]["fingerprint"]
    corpus = exvo.Corpus.from_dir(small_demo_copy)
    for cid in corpus.split_ids("Train")[:3]:                    # three wavs changed
        x, sr = sf.read(corpus.audio_path(cid))
        sf.write(corpus.audio_path(cid), np.clip(1.5 * x, -1, 1), sr)
    logs: list[str] = []
    again = execute(r, small_demo_copy, cache, runs, commands=command_table(app), echo=logs.append)
    assert not any(ln.startswith("  done already") for ln in logs), logs
    assert any(ln.startswith("  stale: reproduce-tiny-egemaps: its input cache") for ln in logs), logs
    assert again[0].status == "done" and again[0].steps_run == 2
    rec = json.loads((again[0].run_dir / "config.json").read_text())["provenance"]
    assert rec["caches"][0]["fingerprint"] != before and exvo.load_run(again[0].run_dir).stale == []
    third = execute(r, small_demo_copy, cache, runs, commands=command_table(app), echo=logs.append)
    assert third[0].steps_run == 0                               # fresh again: nothing to do
