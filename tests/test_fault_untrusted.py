"""Issue 27, cases 1 and 2: no code runs from a file exvo did not just write, and no name given by a
user or a file makes exvo write outside the folder it was asked to write in.

Case 1 plants pickles whose unpickling would create a marker file (``exec`` by ``__reduce__``)
where exvo reads files back: a fine-tuning resume state, a task-CNN model, a run's per-seed
predictions, a cache part; the marker must never appear. A scan of the sources keeps it so.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fault_corpus import toy_learn_world
from exvo.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


class Payload:
    """Unpickling this runs ``exec``: it writes ``marker``. A safe loader refuses it instead."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('the planted file ran')",)


def _plant_torch(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "st": Payload(marker), "format": "exvo-waveform-cnn/2"}, path)
    return path


# ----------------------------------------------------------------------------- 1. code execution
def test_load_torch_refuses_a_pickle_and_runs_nothing(tmp_path):
    from exvo.runs.store import load_torch

    marker = tmp_path / "ran"
    p = _plant_torch(tmp_path / "state.pt", marker)
    with pytest.raises(ValueError, match=rf"{p} holds objects other than tensors and plain containers, so exvo "
                                         r"does not load it \(nothing in it was run; .*\)\. It was not written by "
                                         r"exvo, or was altered: delete it"):
        load_torch(p)
    assert not marker.exists()
    torch.save({"w": torch.ones(2), "n": 3, "names": ["a"]}, tmp_path / "ok.pt")     # what exvo writes loads
    assert load_torch(tmp_path / "ok.pt")["n"] == 3


def test_finetune_resume_state_planted_in_a_shared_runs_folder_does_not_run(tiny_corpus, ssl_models, tmp_path):
    runs = tmp_path / "runs"
    marker = tmp_path / "ran"
    _plant_torch(runs / ".ft.finetune" / "seed0.pt", marker)
    res = runner.invoke(app, ["finetune", "--model", "hubert", "--checkpoint", str(ssl_models["hubert"]),
                              "--data", str(tiny_corpus), "--runs", str(runs), "--epochs", "1", "--batch-size", "4",
                              "--stop-on", "val", "--device", "cpu", "--name", "ft"])
    assert res.exit_code == 2, res.output
    assert "seed0.pt holds objects other than tensors" in res.output and "Traceback" not in res.output
    assert not marker.exists() and not (runs / "ft").exists()


def test_a_planted_task_cnn_model_does_not_run(tmp_path):
    from exvo.extract.cnn.files import load_model

    marker = tmp_path / "ran"
    p = _plant_torch(tmp_path / "cache" / "models" / "mine.pt", marker)
    with pytest.raises(ValueError, match=r"is not a readable exvo CNN .*holds objects other than tensors"):
        load_model(p)
    assert not marker.exists()


def test_object_arrays_in_run_and_cache_files_are_refused(tmp_path):
    from exvo.extract.cache_writer import CacheWriter
    from exvo.predictions import PredictionError, load_seed_predictions

    marker = tmp_path / "ran"
    obj = np.array([Payload(marker)], dtype=object)
    (tmp_path / "run" / "per_seed").mkdir(parents=True)
    np.savez(tmp_path / "run" / "per_seed" / "val.npz", ids=obj, seeds=np.zeros(1), emotions=obj,
             country_proba=obj, age=obj)
    with pytest.raises(PredictionError, match=r"val\.npz cannot be read .*allow_pickle=False"):
        load_seed_predictions(tmp_path / "run", "Val")
    parts = tmp_path / "c" / "x.parts"
    parts.mkdir(parents=True)
    with CacheWriter(tmp_path / "c" / "x.h5", "x", {}):                # writes parts/config.json first
        pass
    np.savez(parts / "part-000000.npz", ids=obj, features=obj)
    with CacheWriter(tmp_path / "c" / "x.h5", "x", {}) as w:
        assert w.done == set()                                      # the part is set aside, not read
    assert (parts / "part-000000.damaged").exists() and not marker.exists()


def _unsafe_loads(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, what)`` for every call in ``tree`` that could run code from the file it reads."""
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        kw = {k.arg: k.value for k in node.keywords}
        f = node.func
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
        attr = f.attr if isinstance(f, ast.Attribute) else None

        def is_const(key, value):
            return key in kw and isinstance(kw[key], ast.Constant) and kw[key].value is value

        if (owner, attr) == ("torch", "load") and not is_const("weights_only", True):
            out.append((node.lineno, "torch.load without weights_only=True"))
        if owner in ("np", "numpy") and attr == "load" and "allow_pickle" in kw and not is_const("allow_pickle", False):
            out.append((node.lineno, "np.load(allow_pickle=...)"))
        if (owner in ("pickle", "cloudpickle", "dill") and attr in ("load", "loads")) or (owner, attr) == ("joblib", "load"):
            out.append((node.lineno, f"{owner}.{attr}"))
        if "trust_remote_code" in kw and not is_const("trust_remote_code", False):
            out.append((node.lineno, "trust_remote_code"))
    return out


def test_the_scan_finds_unsafe_loads():
    tree = ast.parse("torch.load(p)\ntorch.load(p, weights_only=True)\nnp.load(p, allow_pickle=True)\n"
                     "np.load(p)\npickle.loads(b)\nAutoModel.from_pretrained(x, trust_remote_code=True)\n")
    assert [w for _, w in _unsafe_loads(tree)] == ["torch.load without weights_only=True", "np.load(allow_pickle=...)",
                                                   "pickle.loads", "trust_remote_code"]


def test_every_load_in_the_package_cannot_run_code():
    found = [f"{f.relative_to(ROOT)}:{line}: {what}" for f in sorted((ROOT / "exvo").rglob("*.py"))
             for line, what in _unsafe_loads(ast.parse(f.read_text()))]
    assert found == []


# ----------------------------------------------------------------------------- 2. names
BAD_NAMES = ["/../../x", "x/../../y", "..", ".hidden", "a/b"]


def _nothing_outside(tmp_path: Path, before: set[Path]) -> None:
    after = {p for p in tmp_path.parent.iterdir()}
    assert after == before, after - before


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_every_run_writing_command_refuses_a_name_that_leaves_its_folder(tmp_path, bad):
    root, cache = toy_learn_world(tmp_path, 24)
    runs = tmp_path / "runs"
    common = ["--data", str(root), "--runs", str(runs)]
    ok = runner.invoke(app, ["learn", "--features", "toy", "--cache", str(cache), "--seeds", "1", "--epochs", "1",
                             "--device", "cpu", "--stop-on", "val", "--name", "a", *common])
    assert ok.exit_code == 0, ok.output
    runner.invoke(app, ["learn", "--features", "toy", "--cache", str(cache), "--seeds", "1", "--epochs", "1",
                        "--device", "cpu", "--stop-on", "val", "--name", "b", *common])
    before = set(runs.iterdir())
    outside = set(tmp_path.parent.iterdir())
    commands = {
        "learn": ["learn", "--features", "toy", "--cache", str(cache), "--seeds", "1", "--epochs", "1",
                  "--device", "cpu", "--stop-on", "val"],
        "fuse --pool": ["fuse", "--pool", "a", "b"],
        "fuse --hybrid": ["fuse", "--hybrid", "a", "b"],
        "fuse --mean": ["fuse", "--mean", "a", "b"],
        "fewshot": ["fewshot", "--features", "toy", "--cache", str(cache), "--seeds", "1", "--device", "cpu"],
    }
    for what, args in commands.items():
        res = runner.invoke(app, [*args, "--name", bad, *common])
        assert res.exit_code == 2, (what, res.output)
        assert f"run name {bad!r} must be a plain folder name" in res.output, (what, res.output)
        assert "Traceback" not in res.output
    assert set(runs.iterdir()) == before           # nothing written, not even a staging folder
    _nothing_outside(tmp_path, outside)


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_the_run_writer_refuses_a_name_that_leaves_its_folder(tmp_path, bad):
    """Every run folder (learn, fuse, pool, fewshot, verify, finetune, reproduce tables) is written by RunWriter."""
    from exvo.runs.store import RunWriter

    runs = tmp_path / "a" / "runs"
    with pytest.raises(ValueError, match=rf"run name {re.escape(repr(bad))} must be a plain folder name"):
        RunWriter(runs, bad)
    assert not (tmp_path / "a").exists()


def test_pool_checks_the_name_before_reading_anything(tmp_path):
    from exvo.corpus import Corpus
    from exvo.fusion.pool import pool

    root, _ = toy_learn_world(tmp_path, 12)
    with pytest.raises(ValueError, match=r"run name '/\.\./\.\./x' must be a plain folder name"):
        pool(Corpus.from_dir(root), tmp_path / "no-runs-here", ["a", "b"], "/../../x")


def test_a_recipe_name_that_leaves_the_runs_folder_is_refused(tmp_path):
    from exvo.recipes import table
    from exvo.recipes.load import load

    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x/../../y"\ntitle = "t"\npaper = "p"\nmetrics = ["ccc"]\n[[row]]\nid = "r"\n'
                   'system = "s"\nsource = "here"\npaper = {ccc = 0.5}\nunavailable = "test"\n')
    runs = tmp_path / "a" / "b" / "runs"
    with pytest.raises(ValueError, match=r"must be a plain folder name"):
        table.write(load(bad), [], runs, "corpus")
    assert not runs.exists() or list(runs.iterdir()) == []
