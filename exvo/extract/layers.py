"""``--layers``: keep a subset of an extractor's layers (hidden states) in the cache.

The extractor still computes every layer; the cache stores only the kept ones, in
ascending order, and records them in its config as ``layers_kept`` (original indices,
0 = the SSL model's input embeddings) so that a reader maps ``wavlm@12`` to hidden state
12 wherever it is stored (:attr:`exvo.extract.cache.EmbeddingCache.layer_ids`). Keeping
every layer (the default, or a list naming all of them) records nothing, so such a cache
is the same as one made without ``--layers``.
"""
from __future__ import annotations

import numpy as np

from exvo.extract.cache import CacheError

KEY = "layers_kept"


def model_layers(config: dict) -> int:
    """Layers the extractor produces: the config's ``n_layers`` (SSL), else 1."""
    return int(config.get("n_layers", 1))


def parse_layers(text: str | None, n_layers: int) -> list[int] | None:
    """``"0,6,12"`` / ``"last"`` / ``"-1"`` / ``"all"`` → sorted unique indices, None for all layers."""
    if text is None or str(text).strip().lower() in ("", "all"):
        return None
    s = str(text).strip().lower()
    out: set[int] = set()
    for tok in s.split(","):
        tok = tok.strip()
        if tok == "last":
            out.add(n_layers - 1)
            continue
        try:
            k = int(tok)
        except ValueError:
            raise ValueError(f"--layers must be 'all', 'last' or comma-separated layer indices (e.g. 0,6,12,18,24; "
                             f"negative counts from the last); got {text!r}") from None
        if not -n_layers <= k < n_layers:
            raise ValueError(f"--layers {text!r}: layer {k} does not exist; this extractor has {n_layers} layer(s) "
                             f"(valid: 0..{n_layers - 1}, or -1..-{n_layers} from the last)")
        out.add(k % n_layers)
    keep = sorted(out)
    return None if keep == list(range(n_layers)) else keep


def with_layers(config: dict, text: str | None) -> tuple[dict, list[int] | None]:
    """``(cache config, kept indices or None)`` for the extractor's ``config`` and ``--layers``."""
    keep = parse_layers(text, model_layers(config))
    return (config if keep is None else dict(config, **{KEY: keep})), keep


def kept(embedding: np.ndarray, keep: list[int], name: str) -> np.ndarray:
    """``(L, F)`` → ``(len(keep), F)``."""
    e = np.asarray(embedding)
    if e.ndim != 2 or e.shape[0] <= max(keep):
        raise CacheError(f"{name} returned an embedding of shape {e.shape}; --layers {keep} needs "
                         f"{max(keep) + 1} layers or more")
    return e[keep]
