"""CLI rough edges: help text as users read it, specs that would silently duplicate a run."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from exvo.cli import app

runner = CliRunner()


@pytest.mark.parametrize("cmd,usage", [("score", "exvo score [OPTIONS] PRED"),
                                       ("demo-corpus", "exvo demo-corpus [OPTIONS] OUT"),
                                       ("fuse", "exvo fuse [OPTIONS] [RUN_NAMES]..."),
                                       ("predict", "exvo predict [OPTIONS] RUN")])
def test_help_usage_names_arguments_plainly_and_flags_have_no_type(cmd, usage):
    r = runner.invoke(app, [cmd, "--help"], prog_name="exvo", terminal_width=120)
    assert r.exit_code == 0, r.output
    assert usage in r.output
    assert "<bool>" not in r.output and "{" not in r.output.split("\n\n")[0]
    if cmd == "fuse":
        line = next(ln for ln in r.output.splitlines() if "--hybrid" in ln and "Per subtask" in ln)
        assert "<" not in line.split("Per subtask")[0]


def test_best_on_a_single_layer_cache_is_refused():
    from exvo.learn.features import FeatureError, parse_spec, resolve_layer

    with pytest.raises(FeatureError, match=r"'egemaps@best': the egemaps cache has a single layer, so @best has "
                                           r"nothing to choose; write 'egemaps'"):
        resolve_layer(parse_spec("egemaps@best"), SimpleNamespace(n_layers=1, layer_ids=[0], config={}))
    assert resolve_layer(parse_spec("egemaps"), SimpleNamespace(n_layers=1, layer_ids=[0], config={})) == (0, "only")
    assert resolve_layer(parse_spec("wavlm@best"), SimpleNamespace(n_layers=25, layer_ids=list(range(25)), config={})) == (None, "best (ridge probe)")


def test_top_level_help_shows_no_type_after_help():
    r = runner.invoke(app, ["--help"], prog_name="exvo", terminal_width=120)
    assert r.exit_code == 0 and "--help" in r.output and "<bool>" not in r.output


def test_learn_help_gives_each_learners_own_defaults():
    r = runner.invoke(app, ["learn", "--help"], prog_name="exvo", terminal_width=200)
    text = " ".join(r.output.split())
    for part in ("Default: mlp presets 20 (fast: 30); burst2vec 100.", "burst2vec 1e-4", "burst2vec 32 (per task)",
                 "burst2vec: on age min-max scaled to [0, 1] by Train (default mae)"):
        assert part in text.replace("│ ", "").replace(" │", ""), part


def test_reproduce_list_says_what_will_run_and_each_reason_once():
    r = runner.invoke(app, ["reproduce", "--list"], prog_name="exvo", terminal_width=200)
    assert r.exit_code == 0, r.output
    import torch

    gpu = [ln for ln in r.output.splitlines() if "needs a CUDA GPU" in ln]
    assert len(gpu) <= 1                  # one line per reason, not one per row
    if not torch.cuda.is_available():
        assert gpu[0].lstrip().startswith("skipped (10): v1, v2, v3")
        assert "will run (3): baseline, compare-b2v (demo), compare-b2v-noadv (demo)" in r.output
