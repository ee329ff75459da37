"""Shared fixtures. Add yours with unique names; keep them small and fast."""
import shutil
from pathlib import Path

import pytest

from exvo.demo import make_demo_corpus


@pytest.fixture(scope="session")
def small_demo_corpus_dir(tmp_path_factory) -> Path:
    """A read-only 8-speaker × 3-clip demo corpus (24 clips). Copy it before modifying."""
    return make_demo_corpus(tmp_path_factory.mktemp("demo") / "small", speakers=8, clips_per_speaker=3,
                            seed=1, progress=False)


@pytest.fixture
def small_demo_copy(small_demo_corpus_dir, tmp_path) -> Path:
    """A private, writable copy of the small demo corpus."""
    dst = tmp_path / "small"
    shutil.copytree(small_demo_corpus_dir, dst)
    return dst


# --------------------------------------------------------------- extraction (SSL/openSMILE) fixtures
@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A read-only 8-speaker × 2-clip demo corpus (16 clips, some stereo / 48 kHz)."""
    return make_demo_corpus(tmp_path_factory.mktemp("tiny") / "tiny", speakers=8, clips_per_speaker=2,
                            seed=3, progress=False)


def _ssl_tiny_model(kind: str, folder: Path, *, attention_mask: bool, preprocessor: bool = True) -> Path:
    """A random 2-layer, 32-dim SSL model with the real conv front end (400-sample frames, 320 hop)."""
    import torch
    from transformers import (HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor,
                              Wav2Vec2Model, WavLMConfig, WavLMModel)

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    torch.manual_seed({"wavlm": 1, "hubert": 2, "wav2vec2": 3}[kind])
    if kind == "wavlm":    # wavlm-large style: layer-norm front end, stable layer norm
        model = WavLMModel(WavLMConfig(feat_extract_norm="layer", do_stable_layer_norm=True, **small))
    elif kind == "hubert":
        model = HubertModel(HubertConfig(feat_extract_norm="layer", do_stable_layer_norm=True, **small))
    else:                  # wav2vec2-base style: group-norm front end, trained without masks
        model = Wav2Vec2Model(Wav2Vec2Config(feat_extract_norm="group", do_stable_layer_norm=False, **small))
    model.save_pretrained(folder)
    if preprocessor:
        Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                 return_attention_mask=attention_mask).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def ssl_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random checkpoints saved like real ones: ``{"wavlm"|"hubert"|"wav2vec2": folder}``."""
    root = tmp_path_factory.mktemp("ssl_models")
    return {k: _ssl_tiny_model(k, root / k, attention_mask=(k != "wav2vec2")) for k in ("wavlm", "hubert", "wav2vec2")}


@pytest.fixture(scope="session")
def ssl_model_no_preprocessor(tmp_path_factory) -> Path:
    """A tiny WavLM folder without preprocessor_config.json (default input settings apply)."""
    return _ssl_tiny_model("wavlm", tmp_path_factory.mktemp("ssl_nopre") / "wavlm", attention_mask=True,
                           preprocessor=False)
