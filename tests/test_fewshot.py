"""ExVo-FewShot: protocol, metric, bootstrap, fine-tuning isolation, gradient reversal, enrolment pairs.

A hand-made corpus whose features are ``emotions @ W + speaker offset + noise`` (written
straight into an embedding cache) keeps every run tiny and the answers known.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from exvo.config import build
from exvo.cli import app
from exvo.corpus import Corpus
from exvo.extract.cache import cache_path
from exvo.extract.cache_writer import CacheWriter
from exvo.fewshot import protocol as P
from exvo.fewshot.api import fewshot
from exvo.fewshot.select import holdout_protocol
from exvo.fewshot.config import FewShotConfig
from exvo.fewshot.report import fewshot_section
from exvo.fewshot.models import FewShotNet, parse_heads, reversal_schedule
from exvo.fewshot.train import draw_pairs, finetune_episodes, partner_table, predict_rows, train_sampler
from exvo.learn.framework import SeedStack
from exvo.metrics import EMOTIONS, ccc

torch.set_num_threads(1)
HEADER = ["File_ID", "Split", "Subject_ID", "Country", "Age", "Country_string", *EMOTIONS]


def make_world(root, n_spk=16, per_spk=6, dim=8, seed=0):
    """Corpus (Train/Val/Test 8/4/4 speakers), an ``lin`` cache, hidden Test labels and a support file."""
    rng = np.random.default_rng(seed)
    n = n_spk * per_spk
    emo = rng.uniform(0, 1, size=(n, 10)).round(4)
    W = rng.normal(size=(10, dim))
    off = rng.normal(0, 1.0, size=(n_spk, dim))
    X = emo @ W + np.repeat(off, per_spk, 0) + rng.normal(0, 0.1, size=(n, dim))
    split = ["Train"] * (n_spk // 2) + ["Val"] * (n_spk // 4) + ["Test"] * (n_spk - n_spk // 2 - n_spk // 4)
    root.mkdir(parents=True, exist_ok=True)
    rows, hidden = [], []
    for k in range(n):
        s = k // per_spk
        full = [f"[{k:05d}]", split[s], f"Speaker_{s}", s % 4, 30, "x", *emo[k]]
        rows.append(full if split[s] != "Test" else full[:3] + [""] * 13)
        if split[s] == "Test":
            hidden.append(full)
    for name, body in (("data_info.csv", rows), ("hidden_test_labels.csv", hidden),
                       ("fewshot_support.csv", [r for r in hidden if int(r[0][1:-1]) % per_spk < 2])):
        with open(root / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(HEADER)
            w.writerows(body)
    corpus = Corpus.from_dir(root)
    with CacheWriter(cache_path(root.parent / "cache", corpus.name, "lin"), "lin", {"extractor": "lin"}) as w:
        for i, x in zip(corpus.ids, X):
            w.add(i, x[None].astype(np.float32))
        w.finalize(order=corpus.ids, files=[])
    return corpus


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("fewshot") / "corp")


def quick(**kw):
    base = dict(features=["lin"], seeds=2, epochs=3, patience=3, batch_size=8, hidden=16, zdim=8, resamples=50)
    base.update(kw)
    return build(FewShotConfig, base)


# ------------------------------------------------------------------ metric and bootstrap
def test_population_ccc_matches_a_hand_computed_value():
    t = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([2.0, 2.0, 3.0, 5.0])
    # means 2.5 / 3; cov (1.5 + .5 + 0 + 3) / 4 = 1.25; var_t 1.25; var_p 1.5; (2.5 - 3)² = .25
    hand = 2 * 1.25 / (1.25 + 1.5 + 0.25)
    T = np.repeat(t[:, None], 10, 1)
    Pm = np.repeat(p[:, None], 10, 1)
    m, per = P.fewshot_ccc(T, Pm)
    assert m == pytest.approx(hand) and per == pytest.approx([hand] * 10)
    assert ccc(t, p, "challenge") < hand          # the track uses the population form, not the challenge one
    from exvo.metrics import ccc_along

    assert ccc_along(T[None], Pm[None], 1).mean(1)[0] == pytest.approx(hand)      # the one CCC, vectorised
    assert ccc_along(t, p, 0, "challenge") == pytest.approx(ccc(t, p, "challenge"))


def test_bootstrap_interval_brackets_the_score_and_is_reproducible():
    rng = np.random.default_rng(0)
    t = rng.uniform(size=(200, 10))
    p = np.clip(t + rng.normal(0, 0.2, size=t.shape), 0, 1)
    lo, hi = P.bootstrap_ci(t, p, 300)
    m, _ = P.fewshot_ccc(t, p)
    assert lo < m < hi and hi - lo < 0.2
    assert P.bootstrap_ci(t, p, 300) == (lo, hi)


def test_paired_gain_is_zero_for_identical_predictions_and_positive_for_a_better_one():
    rng = np.random.default_rng(1)
    t = rng.uniform(size=(150, 10))
    a = np.clip(t + rng.normal(0, 0.3, size=t.shape), 0, 1)
    b = np.clip(t + rng.normal(0, 0.1, size=t.shape), 0, 1)
    assert P.paired_gain_ci(t, a, a, 200) == (0.0, 0.0, 0.0)
    g, lo, hi = P.paired_gain_ci(t, a, b, 200)
    assert g == pytest.approx(P.fewshot_ccc(t, b)[0] - P.fewshot_ccc(t, a)[0]) and 0 < lo < g < hi


# ------------------------------------------------------------------ protocol
def test_val_support_is_the_first_two_clips_and_disjoint_from_queries(world):
    pr = P.val_protocol(world)
    val = world.indices("Val")
    assert len(pr.episodes) == 4
    for e in pr.episodes:
        mine = [k for k in val if world.speakers[k] == e.speaker]
        assert e.support.tolist() == mine[:2] and e.query.tolist() == mine[2:]
        np.testing.assert_array_equal(e.support_y, world.emotions[mine[:2]])
    assert set(pr.support_rows) | set(pr.query_rows) == set(val)
    assert not set(pr.support_rows) & set(pr.query_rows)
    a, b = P.val_protocol(world, seed=3), P.val_protocol(world, seed=3)
    assert a.support_rows.tolist() == b.support_rows.tolist()
    assert all(set(e.support) <= {k for k in val if world.speakers[k] == e.speaker} for e in a.episodes)


def test_support_file_problems_are_named(world, tmp_path):
    good = world.root / "fewshot_support.csv"
    pr = P.read_support_file(good, world)
    assert len(pr.episodes) == 4 and pr.support_rows.size == 8
    rows = list(csv.reader(open(good)))
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(rows[0])
        w.writerows(rows[2:])                                  # one speaker has 1 support clip
        w.writerow([rows[1][0], "Test", "Speaker_0"] + rows[1][3:])   # and a clip under the wrong speaker
    with pytest.raises(P.FewShotError) as e:
        P.read_support_file(bad, world)
    msg = str(e.value)
    assert "belongs to Speaker_12" in msg and "exactly 2 support clips" in msg and "Speaker_12 (1)" in msg


# ------------------------------------------------------------------ end to end
def test_support_clips_are_never_scored(world, tmp_path):
    res = fewshot(world, quick(), cache_dir=world.root.parent / "cache", runs_dir=tmp_path / "runs", echo=lambda m: None)
    val_ids, val_pred = P.read_submission(res.run_dir / "val.csv")
    vp = P.val_protocol(world)
    sup = {world.ids[k] for k in vp.support_rows}
    assert set(val_ids) == set(vp.query_ids(world)) and not set(val_ids) & sup
    test_ids, _ = P.read_submission(res.run_dir / "test.csv")
    tp = P.read_support_file(world.root / "fewshot_support.csv", world)
    assert set(test_ids) == set(tp.query_ids(world)) and not set(test_ids) & {world.ids[k] for k in tp.support_rows}
    m = json.loads((res.run_dir / "metrics.json").read_text())
    lo, hi = m["ensemble"]["ci95"]
    assert lo <= m["ensemble"]["ccc"] <= hi and len(m["per_seed"]) == 2 and "test" in m
    # scoring: the run's number is reproduced by `exvo score --track fewshot`; support clips are refused
    r = CliRunner().invoke(app, ["score", str(res.run_dir / "val.csv"), "--data", str(world.root), "--track", "fewshot"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["ccc"] == pytest.approx(m["ensemble"]["ccc"])
    # the report's few-shot table shows this run with its interval
    md, text = fewshot_section(tmp_path / "runs")
    row = [line for line in md if res.run_dir.name in line]
    assert len(row) == 1 and f"{m['ensemble']['ccc']:.3f} [{lo:.3f}–{hi:.3f}]" in row[0]
    assert any(res.run_dir.name in t for t in text)
    one = sorted(sup)[0]
    with pytest.raises(P.FewShotError, match="support clips are never scored"):
        P.score_submission(val_ids + [one], np.vstack([val_pred, val_pred[:1]]), world, vp)


@pytest.mark.parametrize("kw", [dict(variant="finetune", ft_steps=2), dict(variant="finetune", ft_select=True),
                                dict(variant="finetune", ft_params="bias", ft_steps=3, ft_lr=0.1), dict(variant="enrol", heads=["h", "h~", "f~"]),
                                dict(variant="none", heads=["h"]), dict(variant="znorm"),
                                dict(variant="znorm", znorm="residual")])
def test_every_variant_runs(world, tmp_path, kw):
    res = fewshot(world, quick(seeds=1, epochs=2, **kw), cache_dir=world.root.parent / "cache",
                  runs_dir=tmp_path / "runs", echo=lambda m: None)
    assert np.isfinite(res.metrics["ensemble"]["ccc"]) and (res.run_dir / "test.csv").is_file()
    if kw.get("ft_select"):
        ft = res.config["finetune"]
        assert ft["chosen_by"] == "held-out Train speakers" and len(ft["trials_on_holdout"]) > 1
        assert ft["chosen"]["params"] in ("all", "head", "bias")


def test_runs_are_reproducible(world, tmp_path):
    a, b = (fewshot(world, quick(seeds=2, epochs=2), cache_dir=world.root.parent / "cache", runs_dir=tmp_path / d,
                    echo=lambda m: None) for d in ("a", "b"))
    assert a.metrics["per_seed"] == b.metrics["per_seed"]
    assert (a.run_dir / "val.csv").read_text() == (b.run_dir / "val.csv").read_text()


def test_holdout_is_speaker_disjoint(world):
    spk = np.asarray(world.speakers)
    tr = world.indices("Train")
    fit, eps = holdout_protocol(tr, spk, 0.25, seed=0)
    held = {e.speaker for e in eps}
    assert len(held) == 2 and not held & set(spk[fit].tolist())
    assert sorted(np.concatenate([fit] + [np.r_[e.support, e.query] for e in eps]).tolist()) == tr.tolist()


def test_bad_settings_are_explained():
    with pytest.raises(ValueError, match="unknown few-shot variant"):
        quick(variant="maml").validate()
    with pytest.raises(ValueError, match="unknown auxiliary head"):
        parse_heads("h,g~")
    with pytest.raises(ValueError, match="use --variant enrol"):
        FewShotNet(4, 3, enrol=False, heads=("f~",))


# ------------------------------------------------------------------ fine-tuning isolation
def _stack(dim=8, seeds=(0, 1), **kw):
    return SeedStack.build(lambda: FewShotNet(dim, 3, hidden=16, zdim=8, dropout=0.0, **kw), list(seeds))


def test_finetune_starts_every_speaker_from_the_original_weights():
    torch.manual_seed(0)
    X = torch.randn(12, 8)
    st = _stack()
    before = {k: v.clone() for k, v in st.params.items()}
    eps = [P.Episode(f"s{k}", np.array([4 * k, 4 * k + 1]), np.array([4 * k + 2, 4 * k + 3]),
                     np.random.default_rng(k).uniform(size=(2, 10))) for k in range(3)]

    def rows(e):
        return e.support, e.query

    kw = dict(steps=3, lr=1e-2)
    all3 = finetune_episodes(st, X, eps, rows, **kw)
    alone = finetune_episodes(st, X, eps[2:], rows, **kw)
    np.testing.assert_array_equal(all3[:, 4:], alone)           # speaker 3 does not see speakers 1 and 2
    rev = finetune_episodes(st, X, eps[::-1], rows, **kw)
    np.testing.assert_array_equal(rev[:, :2], alone)
    for k, v in st.params.items():
        assert torch.equal(v, before[k])                        # the trained weights are untouched
    base = predict_rows(st, X, np.arange(2, 4))
    assert not np.allclose(all3[:, :2], base)                   # the steps did change this speaker's model
    np.testing.assert_allclose(finetune_episodes(st, X, eps[:1], rows, steps=0), base)


# ------------------------------------------------------------------ gradient reversal
def _grads(net, batch, term):
    net.zero_grad(set_to_none=True)
    out = net.outputs(batch)
    net.loss_terms(out, batch)[term].backward()
    return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in net.named_parameters()}


@pytest.mark.parametrize("term, reversed_prefix, plain_prefix", [("h", "g.", "h."), ("f~", "g_enr.", "f_enr."),
                                                                  ("h~", None, "g_enr."), ("emo", None, "g.")])
def test_gradient_reversal_reverses_only_the_encoder_behind_it(term, reversed_prefix, plain_prefix):
    torch.manual_seed(1)
    net = FewShotNet(6, 4, enrol=True, heads=("h", "h~", "f~"), hidden=12, zdim=5, dropout=0.0)
    base = {"x": torch.randn(8, 6), "enr": torch.randn(8, 2, 6), "y": torch.rand(8, 10), "enr_y": torch.rand(8, 10),
            "spk": torch.randint(0, 4, (8,))}
    plain = _grads(net, base | {"lam": torch.full((8,), -1.0)}, term)    # λ = −1: the gradient passes unchanged
    rev = _grads(net, base | {"lam": torch.full((8,), 0.5)}, term)       # λ = .5: behind the layer, × −.5
    for k in plain:
        if reversed_prefix and k.startswith(reversed_prefix):
            assert plain[k].abs().sum() > 0
            torch.testing.assert_close(rev[k], -0.5 * plain[k])
        else:
            torch.testing.assert_close(rev[k], plain[k])
    assert any(k.startswith(plain_prefix) and plain[k].abs().sum() > 0 for k in plain)


def test_reversal_warmup_follows_eihw():
    assert [reversal_schedule(e, 10, 60) for e in (1, 10, 35, 60, 120)] == [-1.0, -1.0, 0.0, 1.0, 1.0]


# ------------------------------------------------------------------ enrolment pairs
def test_enrolment_pairs_are_always_same_speaker_and_distinct():
    sizes = [1, 2, 3, 7, 5]
    spk = np.repeat([f"s{k}" for k in range(len(sizes))], sizes)
    rows = np.arange(spk.size)
    X = torch.arange(spk.size, dtype=torch.float32)[:, None].repeat(1, 3)      # a row's features name the row
    Y = torch.zeros(spk.size, 10)
    sample = train_sampler(X, Y, torch.zeros(spk.size, dtype=torch.long), rows, 4, True, lambda e: 1.0, spk)
    gen = torch.Generator().manual_seed(0)
    seen = 0
    for epoch in range(30):
        for b in sample(gen, epoch):
            tgt = b["x"][:, 0].long().numpy()
            pair = b["enr"][:, :, 0].long().numpy()
            for t, (a, c) in zip(tgt, pair):
                assert spk[a] == spk[t] and spk[c] == spk[t]
                n = sizes[int(spk[t][1:])]
                if n >= 2:
                    assert a != c
                if n >= 3:
                    assert t not in (a, c)
                seen += 1
    assert seen > 400
    others, count = partner_table(rows, spk)
    pair = draw_pairs(torch.arange(spk.size), torch.from_numpy(others), torch.from_numpy(count), gen)
    assert (spk[pair[:, 0].numpy()] == spk).all()


def test_demo_corpus_writes_a_valid_test_support_file(small_demo_corpus_dir):
    corpus = Corpus.from_dir(small_demo_corpus_dir)
    pr = P.protocol_for(corpus, "Test")                  # default: <data>/fewshot_support.csv
    test = corpus.indices("Test")
    assert {e.speaker for e in pr.episodes} == set(corpus.speakers[test].tolist())
    for e in pr.episodes:
        mine = [k for k in test if corpus.speakers[k] == e.speaker]
        assert e.support.tolist() == mine[:2]
    emo, _, _ = corpus.labels("Test")
    pos = {int(k): j for j, k in enumerate(test)}
    np.testing.assert_allclose(np.concatenate([e.support_y for e in pr.episodes]),
                               emo[[pos[int(k)] for k in pr.support_rows]])


def test_cli_fewshot_writes_a_run(world, tmp_path):
    r = CliRunner().invoke(app, ["fewshot", "--features", "lin", "--variant", "enrol", "--heads", "h~", "--seeds", "1",
                                 "--epochs", "1", "--data", str(world.root), "--cache", str(world.root.parent / "cache"),
                                 "--runs", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    assert "seed ensemble" in r.output and (tmp_path / "runs" / "fewshot" / "lin_fewshot_enrol_ht" / "val.csv").is_file()
    r = CliRunner().invoke(app, ["fewshot", "--features", "lin", "--variant", "maml", "--data", str(world.root),
                                 "--cache", str(world.root.parent / "cache"), "--runs", str(tmp_path / "runs")])
    assert r.exit_code == 2 and "unknown few-shot variant 'maml'" in r.output


# ------------------------------------------------------------------ speaker folds (the default)
def test_folds_hold_every_train_speaker_out_once_and_never_fit_on_it(world):
    from exvo.config import SelectionConfig
    from exvo.fewshot.select import make_parts
    from exvo.learn.features import load_features, parse_specs

    fm = load_features(world, parse_specs("lin"), world.root.parent / "cache", echo=lambda m: None)
    spk = np.array([str(s) for s in world.speakers])[[world.ids.index(i) for i in fm.ids]]
    notes = []
    parts = make_parts(world, fm, spk, SelectionConfig(on="folds", k=4), notes.append)
    held = [e.speaker for p in parts for e in p.eps]
    assert len(parts) == 4 and sorted(held) == sorted(set(spk[fm.rows["Train"]].tolist()))    # each once
    for p in parts:
        assert not {e.speaker for e in p.eps} & set(spk[p.fit_rows].tolist())
        assert all(e.support.size == 2 and e.query.size == 4 for e in p.eps)
    assert "4 speaker folds of 8 Train speakers" in notes[0]


def test_fold_selection_refits_for_the_median_epoch_and_val_labels_change_nothing(world, tmp_path):
    import csv as _csv
    import json
    import shutil

    cfg = quick(seeds=2, epochs=4, patience=4, folds=4)
    a = fewshot(world, cfg, cache_dir=world.root.parent / "cache", runs_dir=tmp_path / "a", echo=lambda m: None)
    hist = json.loads((a.run_dir / "history.json").read_text())
    fold_epochs = [e for f in hist["folds"] for e in f["best_epoch"]]
    assert len(hist["folds"]) == 4 and hist["epochs_run"] == max(1, int(np.floor(np.median(fold_epochs) + 0.5)))
    oof = a.metrics["oof"]
    assert oof["n_speakers"] == 8 and oof["n_query"] == 8 * 4 and len(oof["ccc"]["per_seed"]) == 2
    assert oof["ensemble"]["ci95"][0] <= oof["ensemble"]["ccc"] <= oof["ensemble"]["ci95"][1]
    assert a.config["protocol"]["selection"]["on"] == "folds"
    # the same corpus with every Val label permuted: no prediction and no OOF figure moves
    root = tmp_path / "perm" / world.root.name
    shutil.copytree(world.root, root)
    rows = list(_csv.reader(open(root / "data_info.csv")))
    val = [k for k, r in enumerate(rows) if r[1] == "Val"]
    emo = [rows[k][6:] for k in val]
    for k, e in zip(val, emo[::-1]):
        rows[k][6:] = e
    with open(root / "data_info.csv", "w", newline="") as f:
        _csv.writer(f).writerows(rows)
    shutil.copytree(world.root.parent / "cache" / world.name, tmp_path / "perm" / "cache" / world.name)
    b = fewshot(Corpus.from_dir(root), cfg, cache_dir=tmp_path / "perm" / "cache", runs_dir=tmp_path / "b",
                echo=lambda m: None)
    assert (a.run_dir / "val.csv").read_text() == (b.run_dir / "val.csv").read_text()
    assert a.metrics["oof"] == b.metrics["oof"] and a.metrics["summary"] != b.metrics["summary"]
