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
