"""Tasks as data (exvo.tasks): specs, TOML task files, the A-VB layout, and a user task end to end.

Corpora are hand-made with labels that are known functions of a latent ``z`` carried by a
written feature cache (as in test_learn.py), so what a learner should reach is known.
"""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from exvo.config import build
from exvo.corpus import Corpus, CorpusError
from exvo.extract.cache import cache_path
from exvo.extract.cache_writer import CacheWriter
from exvo.learn.api import learn
from exvo.learn.config import LearnConfig
from exvo.metrics import ccc, combined_score, score_all, uar
from exvo.predictions import PredictionError, Predictions, load_split
from exvo.tasks import AVB_TYPES, BUILTIN, TaskError, TaskSpec, avb_culture_columns, get_task, read_task_file

torch.set_num_threads(1)

USER_TASK = """
name = "affect-gender"
combine = "mean"
description = "arousal/valence regression plus gender classification"

[[targets]]
name = "affect"
kind = "regression"
columns = ["Arousal", "Valence"]
range = [0, 1]
metric = "ccc"

[[targets]]
name = "gender"
kind = "classification"
columns = ["Gender"]
classes = ["female", "male"]
"""


# ------------------------------------------------------------------ specs
@pytest.mark.parametrize("name", list(BUILTIN))
def test_builtin_specs_round_trip_through_json(name):
    t = get_task(name)
    again = TaskSpec.from_dict(json.loads(json.dumps(t.to_dict())))
    assert again == t and again.submission == t.submission and again.metric_keys == t.metric_keys


def test_builtin_shapes_follow_the_organisers():
    assert get_task("exvo-mtl").submission[:2] == ("Country", "Age") and get_task("exvo-mtl").is_exvo
    assert get_task("avb-two").submission == ("Valence", "Arousal")
    cols = avb_culture_columns()
    assert len(cols) == 40 and cols[0] == "China_Awe" and cols[-1] == "Venezuela_Surprise"
    assert get_task("avb-type").classes == AVB_TYPES and get_task("avb-type").metric_keys == ("uar", "score")
    assert get_task(None) is BUILTIN["exvo-mtl"]


def test_combine_rules_known_answers():
    two = get_task("avb-two")
    assert combined_score(two, {"ccc": 0.4}) == 0.4
    harmonic = TaskSpec("h", ({"name": "a", "kind": "regression", "columns": ["A"], "range": [0, 1]},
                              {"name": "g", "kind": "classification", "columns": ["G"], "classes": ["x", "y"]}),
                        combine="harmonic")
    assert math.isclose(combined_score(harmonic, {"ccc": 0.5, "uar": 0.25}), 2 / (2 + 4))
    mean = TaskSpec("m", harmonic.groups, combine="mean")
    assert math.isclose(combined_score(mean, {"ccc": 0.5, "uar": 0.25}), 0.375)
    # ExVo-MTL: S_MTL = 3 / (1/CCC + 1/UAR + MAE)
    assert math.isclose(combined_score(get_task("exvo-mtl"), {"ccc": 0.5, "uar": 0.5, "mae": 2.0}), 3 / 6)


def test_score_all_of_another_task_by_hand():
    rng = np.random.default_rng(0)
    t, p = rng.random((30, 2)), rng.random((30, 2))
    s = score_all(t, p, None, None, None, None, task=get_task("avb-two"))
    want = (ccc(t[:, 0], p[:, 0]) + ccc(t[:, 1], p[:, 1])) / 2
    assert math.isclose(s["ccc"], want) and s["score"] == s["ccc"] and set(s["ccc_per_emotion"]) == {"Valence", "Arousal"}
    c_t, c_p = rng.integers(0, 8, 40), rng.integers(0, 8, 40)
    s = score_all(np.zeros((40, 0)), np.zeros((40, 0)), c_t, c_p, None, None, task=get_task("avb-type"))
    assert s["uar"] == uar(c_t, c_p) == s["score"] and "ccc" not in s and "mae" not in s


def test_task_file_read_and_refused_with_reasons(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text(USER_TASK)
    t = read_task_file(f)
    assert t.name == "affect-gender" and t.reg_columns == ("Arousal", "Valence") and t.classes == ("female", "male")
    assert get_task(str(f)) == t
    bad = tmp_path / "two_classes.toml"
    bad.write_text(USER_TASK + '\n[[targets]]\nname = "c2"\nkind = "classification"\ncolumns = ["C2"]\n'
                   'classes = ["a", "b"]\n')
    with pytest.raises(TaskError, match=r"groups 'gender' and 'c2' are both class groups"):
        read_task_file(bad)
    bad.write_text('[[targets]]\nname = "a"\nkind = "regression"\ncolumns = ["A"]\n')
    with pytest.raises(TaskError, match=r"needs range = \[low, high\]"):
        read_task_file(bad)
    bad.write_text('[[targets]]\nname = "a"\nkind = "regresion"\ncolumns = ["A"]\n')
    with pytest.raises(TaskError, match=r"kind 'regresion'; expected one of \('regression', 'classification'\)"):
        read_task_file(bad)
    bad.write_text('colour = 1\n[[targets]]\nname = "a"\nkind = "regression"\ncolumns = ["A"]\nrange = [0, 1]\n')
    with pytest.raises(TaskError, match=r"unknown task field\(s\) \['colour'\]"):
        read_task_file(bad)
    with pytest.raises(TaskError, match=r"unknown task 'avb-hgh'; choose one of exvo-mtl, avb-high"):
        get_task("avb-hgh")
    with pytest.raises(TaskError, match=r"mean' cannot mix an MAE group"):
        TaskSpec("x", ({"name": "v", "kind": "regression", "columns": ["V"], "metric": "mae"},), combine="mean")


# ------------------------------------------------------------------ corpora with latent labels
def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _latent(n_spk: int, per: int, seed: int):
    rng = np.random.default_rng(seed)
    n = n_spk * per
    z = rng.normal(size=(n, 4))
    splits = ["Train"] * (n_spk // 2) + ["Val"] * (n_spk // 4) + ["Test"] * (n_spk - n_spk // 2 - n_spk // 4)
    return z, [splits[k // per] for k in range(n)], [f"Speaker_{k // per}" for k in range(n)], \
        [f"[{k:05d}]" for k in range(n)]


def _write(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _cache(cache_dir, corpus, z):
    rng = np.random.default_rng(9)
    feats = np.concatenate([3 * z + 1, rng.normal(size=(len(z), 4))], 1)[:, None, :].astype(np.float32)
    with CacheWriter(cache_path(cache_dir, corpus.name, "lin"), "lin", {"extractor": "lin", "v": 1}) as w:
        for i, x in zip(corpus.ids, feats):
            w.add(i, x)
        w.finalize(order=corpus.ids, files=[])


def make_user_corpus(root):
    """ExVo layout without ExVo labels: File_ID, Split, Subject_ID, Arousal, Valence, Gender."""
    z, splits, spk, ids = _latent(32, 16, 1)
    ar, va = _sigmoid(1.5 * z[:, 0]), _sigmoid(1.5 * z[:, 1] - 0.5 * z[:, 2])
    gender = np.where(z[:, 3] > 0, "male", "female")
    rows = [[i, sp, s] + ([f"{a:.4f}", f"{v:.4f}", g] if sp != "Test" else ["", "", ""])
            for i, sp, s, a, v, g in zip(ids, splits, spk, ar, va, gender)]
    _write(root / "data_info.csv", ["File_ID", "Split", "Subject_ID", "Arousal", "Valence", "Gender"], rows)
    return z


def make_avb_corpus(root):
    """The A-VB layout: labels/data_info.csv, labels/two_info.csv, labels/type_info.csv (Test cells empty)."""
    z, splits, spk, ids = _latent(32, 16, 2)
    _write(root / "labels" / "data_info.csv", ["File_ID", "Split", "Subject_ID", "Country"],
           [[i, sp, s, "China"] for i, sp, s in zip(ids, splits, spk)])
    va, ar = _sigmoid(1.5 * z[:, 0]), _sigmoid(1.5 * z[:, 1])
    _write(root / "labels" / "two_info.csv", ["File_ID", "Split", "Valence", "Arousal"],
           [[i, sp] + ([f"{v:.4f}", f"{a:.4f}"] if sp != "Test" else ["", ""]) for i, sp, v, a in zip(ids, splits, va, ar)])
    types = np.array(AVB_TYPES)[np.argmax(z @ np.random.default_rng(5).normal(size=(4, 4)), axis=1)]
    _write(root / "labels" / "type_info.csv", ["File_ID", "Split", "Voc_Type"],
           [[i, sp, t if sp != "Test" else ""] for i, sp, t in zip(ids, splits, types)])
    return z, types


@pytest.fixture(scope="module")
def avb(tmp_path_factory):
    root = tmp_path_factory.mktemp("avb") / "avbcorp"
    z, types = make_avb_corpus(root)
    cache = root.parent / "cache"
    _cache(cache, Corpus.from_dir(root, task="avb-two"), z)
    return {"root": root, "cache": cache, "types": types, "runs": root.parent / "runs"}


def _cfg(**kw):
    base = dict(features=["lin"], learner="mlp", arch="sys1", seeds=2, epochs=12, patience=4, batch_size=8,
                device="cpu", threads=1)
    return build(LearnConfig, base | kw)


# ------------------------------------------------------------------ the A-VB layout
def test_avb_layout_read_by_column_name(avb):
    c = Corpus.from_dir(avb["root"], task="avb-type")
    assert c.layout == "avb" and c.wav_dir == avb["root"] / "audio" / "wav"
    _, cls, _ = c.labels("Train")
    tr = c.indices("Train")
    assert [AVB_TYPES[k] for k in cls] == list(avb["types"][tr])
    # the A-VB layout's default task is avb-high, whose columns this corpus lacks: said so, by name
    with pytest.raises(CorpusError, match=r"task 'avb-high' needs column 'Awe', which none of the tables has"):
        Corpus.from_dir(avb["root"])
    assert not c.has_labels("Test")
    with pytest.raises(CorpusError, match=r"no labels"):
        c.labels("Test")


def test_avb_bad_cells_are_named_with_file_and_line(tmp_path):
    root = tmp_path / "bad"
    make_avb_corpus(root)
    p = root / "labels" / "type_info.csv"
    lines = p.read_text().splitlines()
    k = next(n for n, line in enumerate(lines) if ",Train," in line)
    lines[k] = lines[k].rsplit(",", 1)[0] + ",Sneeze"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=rf"type_info.csv: Voc_Type not one of .* on line\(s\) {k + 1} \(values \['Sneeze'\]\)"):
        Corpus.from_dir(root, task="avb-type")
    p = root / "labels" / "two_info.csv"
    lines = p.read_text().splitlines()
    lines[k] = lines[k].rsplit(",", 1)[0] + ",1.7"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=rf"two_info.csv: Arousal outside \[0, 1\] on line\(s\) {k + 1}"):
        Corpus.from_dir(root, task="avb-two")


def test_avb_tasks_learn_above_the_trivial_predictor_and_fusing_tasks_is_refused(avb):
    runs = avb["runs"]
    two = learn(Corpus.from_dir(avb["root"], task="avb-two"), _cfg(), cache_dir=avb["cache"], runs_dir=runs,
                name="two", echo=lambda m: None)
    typ = learn(Corpus.from_dir(avb["root"], task="avb-type"), _cfg(), cache_dir=avb["cache"], runs_dir=runs,
                name="type", echo=lambda m: None)
    assert two.config["task"]["name"] == "avb-two" and two.config["constant_predictor_val"]["ccc"] == 0.0
    assert two.metrics["summary"]["ccc"]["mean"] > 0.6 and set(two.metrics["summary"]) == {"ccc", "score"}
    assert typ.metrics["summary"]["uar"]["mean"] > 0.6 > 2 * typ.config["constant_predictor_val"]["uar"]
    sub = (runs / "type" / "val.csv").read_text().splitlines()
    assert sub[0] == "File_ID,Voc_Type" and sub[1].split(",")[1] in AVB_TYPES
    assert load_split(runs / "type", "Val").task.name == "avb-type"
    from exvo.fusion.api import fuse

    with pytest.raises(ValueError, match=r"runs of different tasks cannot be fused: type \(avb-type\) is not of task "
                                         r"'avb-two'"):
        fuse(Corpus.from_dir(avb["root"], task="avb-two"), runs, ["two", "type"], echo=lambda m: None)


def test_predictions_of_another_task_are_refused_by_score(avb):
    c = Corpus.from_dir(avb["root"], task="avb-two")
    ids = c.split_ids("Val")
    p = Predictions(ids, np.zeros((len(ids), 10)), np.zeros(len(ids)), np.zeros(len(ids)), task="avb-high")
    from exvo.predictions import score

    with pytest.raises(PredictionError, match=r"predictions are for task 'avb-high' but the corpus was read for task "
                                              r"'avb-two'"):
        score(p, c, "Val")


def test_submission_round_trip_of_type_names(tmp_path):
    ids = ["[1]", "[2]", "[3]"]
    proba = np.eye(8)[[0, 3, 7]] * 0.9 + 0.1 / 8
    p = Predictions.from_proba(ids, np.zeros((3, 0)), proba, np.zeros(3), "avb-type")
    p.write(tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().splitlines() == ["File_ID,Voc_Type", "[1],Gasp", "[2],Scream", "[3],Other"]
    q = Predictions.read(tmp_path / "t.csv", task="avb-type")
    assert q.country.tolist() == [0, 3, 7]
    with pytest.raises(PredictionError, match=r"expected exactly File_ID,Valence,Arousal \(task avb-two"):
        Predictions.read(tmp_path / "t.csv", task="avb-two")


# ------------------------------------------------------------------ a user's task file, end to end
def test_user_task_file_end_to_end(tmp_path):
    from exvo.cli import app

    root = tmp_path / "mine"
    z = make_user_corpus(root)
    task = tmp_path / "affect.toml"
    task.write_text(USER_TASK)
    corpus = Corpus.from_dir(root, task=str(task))
    _cache(tmp_path / "cache", corpus, z)
    cli = CliRunner()
    common = ["--task", str(task), "--data", str(root)]
    for learner in ("mlp", "xgb"):
        r = cli.invoke(app, ["learn", "-f", "lin", "--learner", learner, "--seeds", "2", "--epochs", "12",
                             "--arch", "sys1", "--threads", "1", "--cache", str(tmp_path / "cache"),
                             "--runs", str(tmp_path / "runs"), *common])
        assert r.exit_code == 0, r.output
    met = json.loads((tmp_path / "runs" / "lin_mlp_sys1" / "metrics.json").read_text())
    const = json.loads((tmp_path / "runs" / "lin_mlp_sys1" / "config.json").read_text())["constant_predictor_val"]
    assert set(met["summary"]) == {"ccc", "uar", "score"}
    assert met["summary"]["ccc"]["mean"] > 0.6 and met["summary"]["uar"]["mean"] > 0.8 > 0.6 > const["uar"]
    r = cli.invoke(app, ["fuse", "--hybrid", "--runs", str(tmp_path / "runs"), *common])
    assert r.exit_code == 0, r.output
    assert "CCC" in r.output and "score" in r.output and "Age" not in r.output
    r = cli.invoke(app, ["report", "--runs", str(tmp_path / "runs"), *common])
    assert r.exit_code == 0, r.output
    head = r.output.splitlines()[0]
    assert "CCC" in head and "UAR" in head and "score ▼" in head and "MAE" not in head and "S_MTL" not in head
    assert "constant predictor" in r.output
    val = tmp_path / "runs" / "hybrid_oof" / "val.csv"     # chosen on the out-of-fold Train predictions (the default)
    assert val.read_text().splitlines()[0] == "File_ID,Gender,Arousal,Valence"
    r = cli.invoke(app, ["score", str(val), *common])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["score"] == pytest.approx((s["ccc"] + s["uar"]) / 2) and s["uar"] > 0.8
    r = cli.invoke(app, ["predict", str(tmp_path / "runs" / "lin_mlp_sys1"), "--data", str(root), "--cache",
                         str(tmp_path / "cache"), "--split", "Val", "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p_gender_proba.csv").read_text().splitlines()[0] == "File_ID,female,male"
    again = Predictions.read(tmp_path / "p.csv", tmp_path / "p_gender_proba.csv", task=corpus.task)
    np.testing.assert_allclose(again.take(load_split(tmp_path / "runs" / "lin_mlp_sys1", "Val").ids).emotions,
                               load_split(tmp_path / "runs" / "lin_mlp_sys1", "Val").emotions, atol=1e-6)
    r = cli.invoke(app, ["learn", "-f", "lin", "--learner", "burst2vec", "--seeds", "1", "--threads", "1",
                         "--cache", str(tmp_path / "cache"), "--runs", str(tmp_path / "runs"), *common])
    assert r.exit_code == 2 and "learns the ExVo-MTL task only" in r.output


def test_a_run_of_another_task_goes_stale_when_its_label_file_changes(tmp_path):
    from exvo.runs.reader import load_run

    root = tmp_path / "avbstale"
    z, _ = make_avb_corpus(root)
    _cache(tmp_path / "cache", Corpus.from_dir(root, task="avb-two"), z)
    run = learn(Corpus.from_dir(root, task="avb-two"), _cfg(seeds=1, epochs=2), cache_dir=tmp_path / "cache",
                runs_dir=tmp_path / "runs", name="two", echo=lambda m: None)
    assert load_run(run.run_dir).stale == []           # re-read with its own task: nothing changed
    p = root / "labels" / "two_info.csv"
    lines = p.read_text().splitlines()
    k = next(n for n, line in enumerate(lines) if ",Val," in line)
    lines[k] = lines[k].rsplit(",", 1)[0] + ",0.123"
    p.write_text("\n".join(lines) + "\n")
    stale = load_run(run.run_dir).stale
    assert len(stale) == 1 and "the Val labels of" in stale[0] and "changed since the run" in stale[0]
