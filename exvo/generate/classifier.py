"""``--classifier RUN``: the last shared layer of a learn run's multitask MLP as the FID space.

Paper ``002`` §3.2 measures the FID "using features from a classifier trained on the training
set of HUME-VB". An ``exvo learn`` MLP run is such a classifier: its trunk (two shared
Linear → LayerNorm → LeakyReLU layers, see :mod:`exvo.learn.mlp`) feeds the emotion,
country and age heads; the trunk's output (``h2`` = 128 dims for ``sys2``, 64 for ``sys1``)
is the embedding used here.

What a run needs: ``config.json`` of kind ``learn`` with ``learner: mlp`` and its feature
blocks (name, layer, cache config), ``models/scaler.npz`` and the learner's saved models. Real clips
come from the corpus caches of the run's feature sets (each must have the config the run
was trained on); generated clips are embedded with the same extractors
(:class:`~exvo.generate.embed.ExtractorSpace`), early-fused in the run's order and
standardised with the run's Train scaler.

Seeds: each seed's network is its own feature space, so each seed gives one FID; results
are mean ± std over the run's seeds (never one chosen seed).

The only function that knows the saved model is :func:`load_trunk`: it loads the run through
the learner registry and runs the module's ``trunk`` (every seed at once, ``vmap``).
XGBoost and other runs without a shared trunk are refused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from exvo.corpus import Corpus
from exvo.extract.base import ExtractOptions
from exvo.extract.cache import CacheMismatch, config_diff
from exvo.generate.embed import Embedded, ExtractorSpace, FeatureSpace, plain_of
from exvo.learn.features import FeatureError, FeatureSpec, Scaler
from exvo.runs.reader import read_learn_record as read_config

Trunk = Callable[[np.ndarray], np.ndarray]
"""``X`` ``(n, D)`` standardised features → ``(S, n, h)`` last-shared-layer activations."""


class ClassifierError(ValueError):
    """The run cannot serve as a feature space; the message says what it lacks."""


def load_trunk(run_dir: Path) -> tuple[Trunk, int, int]:
    """``(trunk, n_seeds, out_dim)`` of a learn run whose module has a shared ``trunk`` (the MLP)."""
    import torch
    from torch.func import functional_call, vmap

    from exvo.learn import registry
    from exvo.learn.folds import load_fitted

    cfg = read_config(Path(run_dir))
    models = Path(run_dir) / "models"
    try:
        fitted = load_fitted(models, registry.get(cfg.get("learner", "?")).load)
    except (KeyError, FileNotFoundError, ValueError) as e:
        raise ClassifierError(f"{run_dir}: its models cannot be loaded ({e}); --classifier needs an "
                              "`exvo learn --learner mlp` run") from None
    stack = getattr(fitted, "stack", None)
    if stack is None or not hasattr(stack.base, "trunk"):
        raise ClassifierError(f"{run_dir} is a {cfg.get('learner')!r} run without a shared trunk; --classifier "
                              "needs an `exvo learn --learner mlp` run")
    params = {k[len("trunk."):]: v for k, v in stack.params.items() if k.startswith("trunk.")}
    if getattr(fitted, "k", 1) > 1:
        # a speaker-fold run keeps S × K models (seed-major): one embedding space per seed, its first fold's
        params = {k: v[::fitted.k] for k, v in params.items()}
    dim = int(params["0.weight"].shape[-1])        # (S, out, in): nn.Linear weights with a seed dimension
    h2 = int(params["3.weight"].shape[-2])
    S = int(params["0.weight"].shape[0])

    @torch.no_grad()
    def trunk(X: np.ndarray, chunk: int = 4096) -> np.ndarray:
        if X.shape[1] != dim:
            raise ClassifierError(f"{run_dir}: the network takes {dim} features, got {X.shape[1]}")
        out = np.empty((S, X.shape[0], h2))
        for k in range(0, X.shape[0], chunk):
            x = torch.from_numpy(np.ascontiguousarray(X[k:k + chunk], dtype=np.float32))
            z = vmap(lambda p, xx: functional_call(stack.base.trunk, p, (xx,)), in_dims=(0, None))(params, x)
            out[:, k:k + chunk] = z.double().numpy()
        return out

    return trunk, S, h2


class ClassifierSpace(FeatureSpace):
    """The last shared layer of learn run ``run_dir``, one view per seed."""

    def __init__(self, run_dir: str | Path, corpus: Corpus, cache_dir: str | Path,
                 opts: ExtractOptions | None = None):
        self.run_dir = Path(run_dir)
        cfg = read_config(self.run_dir)
        if cfg.get("learner") != "mlp":
            raise ClassifierError(f"{self.run_dir} is a {cfg.get('learner')!r} run; only MLP runs have a shared "
                                  "layer to embed with (train one with `exvo learn --learner mlp`)")
        self.blocks = cfg.get("features") or []
        if not self.blocks or not all(isinstance(b, dict) and "name" in b and "layer" in b for b in self.blocks):
            raise ClassifierError(f"{self.run_dir}/config.json lists no feature blocks (name, layer); re-run `exvo learn`")
        multi = [b.get("spec", b["name"]) for b in self.blocks if b["layer"] is None or b.get("layers")]
        if multi:
            raise ClassifierError(f"{self.run_dir.name} was trained on several layers of one cache ({', '.join(multi)}); "
                                  "fid --classifier embeds each feature set at one layer: use a run trained on single "
                                  "layers (e.g. `exvo learn --features wavlm@12`)")
        self.parts = []
        for b in self.blocks:
            sp = ExtractorSpace(FeatureSpec(b["name"], int(b["layer"])), corpus, cache_dir, opts, standardise=False)
            if "cache_config" in b and plain_of(sp.cache.config) != plain_of(b["cache_config"]):
                raise CacheMismatch(
                    f"the {b['name']} cache of {corpus.name} ({sp.cache.path}) was built with other settings than "
                    f"the one {self.run_dir.name} was trained on ({config_diff(sp.cache.config, b['cache_config'])})")
            self.parts.append(sp)
        self.scaler, _ = Scaler.load(self.run_dir / "models" / "scaler.npz")
        self.trunk, self.views, self.dim = load_trunk(self.run_dir)
        feats = "+".join(p.spec.text for p in self.parts)
        self.label = (f"last shared layer ({self.dim} dims) of {self.run_dir.name} [{feats}], "
                      f"{self.views} seed(s)")

    def _project(self, embs: list[Embedded]) -> Embedded:
        common = set(embs[0].ids)
        for e in embs[1:]:
            common &= set(e.ids)
        ids = [i for i in embs[0].ids if i in common]
        fails = list(dict.fromkeys(f for e in embs for f in e.failures))
        blocks = []
        for e in embs:
            pos = {i: k for k, i in enumerate(e.ids)}
            blocks.append(e.X[0][[pos[i] for i in ids]] if ids else e.X[0][:0])
        X = np.concatenate(blocks, axis=1).astype(np.float32)
        if X.shape[1] != self.scaler.mean.shape[0]:
            raise FeatureError(f"{self.run_dir}: features have {X.shape[1]} dims, its scaler {self.scaler.mean.shape[0]}")
        self.scaler.apply_(X)
        return Embedded(self.trunk(X), ids, fails)

    def real(self, ids: Sequence[str]) -> Embedded:
        return self._project([p.real(ids) for p in self.parts])

    def generated(self, items: Sequence[tuple[str, Path]], progress: bool = False) -> Embedded:
        return self._project([p.generated(items, progress) for p in self.parts])
