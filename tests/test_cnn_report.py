"""The task CNNs' Table 1 and Fig. 2 in the report."""
import numpy as np
import pytest
import torch

from exvo.extract.cnn.model import CNNConfig, build_model, cumulative_response, first_layer_filters
from exvo.extract.cnn.train import FORMAT, save_model
from exvo.fusion.cnn_report import cnn_section, collect, table1


def test_cumulative_response_known_answers():
    f, r = cumulative_response(np.eye(1, 32), 16000, nfft=256)          # a unit impulse: flat
    assert f[0] == 0 and f[-1] == 8000 and np.allclose(r, 1.0)
    t = np.arange(64) / 16000
    bank = np.stack([np.cos(2 * np.pi * 2000 * t) * np.hanning(64), np.zeros(64)])   # zero filter skipped
    f, r = cumulative_response(bank, 16000, nfft=1024)
    assert f[np.argmax(r)] == pytest.approx(2000, abs=16000 / 1024) and r.max() == 1.0
    with pytest.raises(ValueError, match=r"\(n_filters, taps\)"):
        cumulative_response(np.zeros(5))


def test_first_layer_filters_of_both_archs():
    for arch, taps in (("paper", 30), ("sinc", 101)):
        m = build_model(CNNConfig(n_classes=4, arch=arch))
        assert first_layer_filters(m).shape == (32, taps)


def _save(d, name, signal, label, seed_suffix="", uar=0.5, war=0.6, fold=""):
    torch.manual_seed(len(name) + len(seed_suffix))
    n = 10 if label == "emotion" else 4
    m = build_model(CNNConfig(n_classes=n, channels=(4, 4, 4, 4)))
    meta = {"format": FORMAT, "signal": signal, "label_column": label, "classes": [str(i) for i in range(n)],
            "model_config": m.cfg.to_json(), "extractor": name}
    info = {**meta, "epochs_run": 7, "val_metrics": {"clip_uar": uar, "clip_war": war}}
    save_model(m, meta, info, d / f"{name}{seed_suffix}{fold}.pt")


def test_table1_and_figure(tmp_path):
    d = tmp_path / "cache" / "demo" / "models"
    _save(d, "raw_exvo_er", "raw", "emotion", uar=0.4, war=0.5)
    _save(d, "raw_exvo_er", "raw", "emotion", ".s1", uar=0.5, war=0.7)
    _save(d, "raw_exvo_er", "raw", "emotion", fold=".cf0of3", uar=0.0, war=0.0)     # crossfit: not in the table
    _save(d, "zff_exvo_cr", "zff", "Country", uar=0.3, war=0.35)
    models = collect([d])
    assert sorted(models) == ["raw_exvo_er", "zff_exvo_cr"] and len(models["raw_exvo_er"]) == 2
    rows = {r[0]: r for r in table1(models)}
    assert rows["raw_exvo_er"][4:] == ["2", "7/7", "45.00 ± 5.00", "60.00 ± 10.00", "10.00"]
    assert rows["zff_exvo_cr"][6:] == ["30.00", "35.00", "25.00"]
    md, text = cnn_section([], tmp_path / "out", model_dirs=[d])
    assert any("Table 1" in line for line in md) and (tmp_path / "out" / "cnn_filters.png").stat().st_size > 1000
    assert cnn_section([], tmp_path / "out2") == ([], [])                          # no CNN: no section
