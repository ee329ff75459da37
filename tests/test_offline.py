"""Offline, a hub checkpoint with no local copy fails at once and points to --checkpoint."""
from __future__ import annotations

import socket
import time

import pytest

from exvo.extract.ssl import CheckpointError, _hub_reachable, load_checkpoint


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                     # nothing listens there now: connections are refused at once
    return port


def test_hub_probe_tells_a_dead_endpoint_from_a_live_one(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert _hub_reachable(timeout=2) is False
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{srv.getsockname()[1]}")
        assert _hub_reachable(timeout=2) is True
    finally:
        srv.close()


@pytest.fixture
def no_local_copy(monkeypatch):
    """from_pretrained finds nothing locally; a network download is recorded (and must not happen)."""
    import transformers

    calls = []

    def fake(ckpt, *a, local_files_only=False, **k):
        calls.append("local" if local_files_only else "network")
        raise OSError(f"{ckpt} not in the local cache")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    return calls


def test_unreachable_hub_fails_fast_without_download_retries(no_local_copy):
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"could not load the wavlm checkpoint 'microsoft/wavlm-large' offline"
                                              r".*--checkpoint /path/to/local/folder.*no answer from the hub"):
        load_checkpoint("wavlm", "microsoft/wavlm-large")
    assert time.perf_counter() - t0 < 5
    assert no_local_copy == ["local"]                 # the download (with its retries) was never tried


def test_cli_says_so_and_points_to_checkpoint(no_local_copy, tiny_corpus, tmp_path):
    from typer.testing import CliRunner

    from exvo.cli import app

    r = CliRunner().invoke(app, ["extract", "--model", "wavlm", "--data", str(tiny_corpus), "--cache",
                                 str(tmp_path), "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert "--checkpoint /path/to/local/folder" in r.output and "Traceback" not in r.output
    assert no_local_copy == ["local"]
