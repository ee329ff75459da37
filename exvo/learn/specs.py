"""Feature specs: which cache and which of its layers a run reads (parsed, then resolved on the cache).

Forms (layers are the model's own indices: 0 = the input embeddings, as the model returns
them; also in a cache made with ``exvo extract --layers``, which must have kept them)::

    egemaps          the only layer of an openSMILE cache
    wavlm            the last layer
    wavlm@12         layer 12;  wavlm@-2  the second-to-last layer
    wavlm@best       one layer, chosen by a closed-form ridge probe (see :mod:`exvo.learn.probe`)
    wavlm@all        every layer the cache stores                      } multi-layer: the
    wavlm@3-8        layers 3 to 8, both included                      } learner gets an
    wavlm@0,6,12     these layers (items may be ranges: wavlm@0-4,12)  } (n, L, F) block

In a comma-separated list of feature sets (``--features wavlm@0,6,12,egemaps``) a bare number
or range continues the layer list of the set before it; a cache named only by digits cannot
be given in such a list.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from exvo.extract.cache import CacheError, EmbeddingCache

_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(?:@(?P<layer>[^@]+))?$")
_INT = re.compile(r"^-?\d+$")
_ITEM = re.compile(r"^(?:-?\d+|\d+-\d+)$")
WORDS = ("best", "all")

Layer = int | str | tuple | None
"""A spec's layer part: an int, ``"best"``, ``"all"``, a tuple of ints (a layer list) or None (last)."""


class FeatureError(CacheError):
    """A feature spec or a feature cache cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class FeatureSpec:
    """``name`` of the cache (extractor); ``layer``: an int, ``"best"``, ``"all"``, a tuple of
    layer indices (multi-layer) or None (= last)."""

    name: str
    layer: Layer = None

    @property
    def multi(self) -> bool:
        """True when the spec names several layers (``@all``, ``@a-b``, ``@a,b,c``)."""
        return self.layer == "all" or isinstance(self.layer, tuple)

    @property
    def text(self) -> str:
        if self.layer is None:
            return self.name
        part = layers_text(self.layer) if isinstance(self.layer, tuple) else str(self.layer)
        return f"{self.name}@{part}"


def layers_text(layers: Sequence[int]) -> str:
    """``(0, 1, 2, 3, 12)`` → ``"0-3,12"``: ascending runs of consecutive layers as ranges."""
    out, k = [], 0
    vals = [int(v) for v in layers]
    while k < len(vals):
        j = k
        while j + 1 < len(vals) and vals[j] >= 0 and vals[j + 1] == vals[j] + 1:
            j += 1
        out.append(f"{vals[k]}-{vals[j]}" if j > k else str(vals[k]))
        k = j + 1
    return ",".join(out)


def _bad(text: str, why: str = "") -> FeatureError:
    return FeatureError(
        f"bad feature spec {text!r}{': ' + why if why else ''}: expected NAME, NAME@LAYER (an integer, negative "
        "counts from the last), NAME@best, or several layers NAME@all, NAME@a-b, NAME@a,b,c, where NAME is an "
        "extractor cached with `exvo extract --model NAME` (e.g. egemaps, wavlm@12, hubert@best, wavlm@0-24)"
    )


def _layer_list(text: str, part: str) -> tuple[int, ...]:
    vals: list[int] = []
    for item in (p.strip() for p in part.split(",")):
        if not _ITEM.match(item):
            raise _bad(text)
        if _INT.match(item):
            vals.append(int(item))
            continue
        a, b = (int(v) for v in item.split("-"))
        if a >= b:
            raise _bad(text, f"range {item} must go up (a < b); for one layer write NAME@{a}")
        vals.extend(range(a, b + 1))
    dups = sorted({v for v in vals if vals.count(v) > 1})
    if dups:
        raise _bad(text, f"layer(s) {dups} named twice")
    if len(vals) < 2:
        raise _bad(text)
    return tuple(sorted(vals)) if min(vals) >= 0 else tuple(vals)


def parse_spec(text: str) -> FeatureSpec:
    """``"wavlm@12"`` → ``FeatureSpec("wavlm", 12)``, ``"wavlm@0-2"`` → ``FeatureSpec("wavlm", (0, 1, 2))``;
    raises :class:`FeatureError` on bad input."""
    s = str(text).strip()
    m = _SPEC.match(s)
    if not m:
        raise _bad(text)
    part = m.group("layer")
    if part is None:
        return FeatureSpec(m.group("name"))
    part = part.strip()
    if part in WORDS:
        return FeatureSpec(m.group("name"), part)
    if _INT.match(part):
        return FeatureSpec(m.group("name"), int(part))
    return FeatureSpec(m.group("name"), _layer_list(text, part))


def _join_layer_lists(items: list[str]) -> list[str]:
    """Bare numbers / ranges continue the layer list of the spec before them (``wavlm@0``, ``6`` → ``wavlm@0,6``)."""
    out: list[str] = []
    for t in items:
        if t and _ITEM.match(t):
            prev = out[-1] if out else ""
            if "@" not in prev or prev.split("@", 1)[1].strip() in WORDS:
                raise FeatureError(
                    f"{t!r} in the feature list {','.join(items)!r} is a layer without a feature set before it "
                    "(NAME@LAYER); write the layers after their set, e.g. wavlm@0,6,12 or wavlm@0-24")
            out[-1] = f"{prev},{t}"
        else:
            out.append(t)
    return out


def parse_specs(texts: Sequence[str] | str) -> list[FeatureSpec]:
    """Parse a list (or one comma-separated string) of specs; duplicates and empties are refused."""
    if isinstance(texts, str):
        texts = [texts]
    items = [t.strip() for raw in texts for t in str(raw).split(",")]
    if not items or any(not t for t in items):
        raise FeatureError(f"empty feature spec in {list(texts)!r}; give e.g. --features egemaps or --features wavlm@12,egemaps")
    items = _join_layer_lists(items)
    specs = [parse_spec(t) for t in items]
    names = [s.name for s in specs]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise FeatureError(f"feature set(s) {dups} given more than once in {items}; each cache may appear once")
    return specs


def block_spec(record: dict) -> FeatureSpec:
    """The spec that reads exactly the layers of a run's feature block (``config.json`` ``features[i]``)."""
    if record.get("layers"):
        return FeatureSpec(record["name"], tuple(int(v) for v in record["layers"]))
    return FeatureSpec(record["name"], int(record["layer"]))


def full_layers(cache: EmbeddingCache) -> int:
    """How many layers the model had (a ``--layers`` cache stores some of them)."""
    ids, L = cache.layer_ids, cache.n_layers
    return int(cache.config.get("n_layers", ids[-1] + 1)) if ids != list(range(L)) else L


def check_layer(spec: FeatureSpec, k: int, cache: EmbeddingCache) -> int:
    """Layer ``k`` of ``spec`` as the model's index (``-1`` → last); refused if out of range or not kept."""
    ids, full = cache.layer_ids, full_layers(cache)
    if not -full <= k < full:
        raise FeatureError(
            f"feature spec {spec.text!r}: layer {k} does not exist; the {spec.name} cache has {full} layer(s) "
            f"(valid: 0..{full - 1}, or -1..-{full} from the end)"
        )
    if k % full not in ids:
        raise FeatureError(
            f"feature spec {spec.text!r}: layer {k % full} was not kept in the {spec.name} cache ({cache.path} "
            f"stores layers {','.join(map(str, ids))}, made with `--layers`); use one of those, or extract again "
            f"with --layers including {k % full} (or without --layers for all layers) and --overwrite"
        )
    return k % full


def resolve_layer(spec: FeatureSpec, cache: EmbeddingCache) -> tuple[int | None, str]:
    """``(layer or None for @best, how it was chosen)``; out-of-range or not kept layers are refused.

    Layers are the model's own indices (``wavlm@12`` = hidden state 12), also in a cache that
    keeps a subset (``exvo extract --layers``): read it at ``cache.layer_ids.index(layer)``.
    A multi-layer spec is refused (see :func:`resolve_layers`).
    """
    ids, L = cache.layer_ids, cache.n_layers
    if spec.multi:
        raise FeatureError(f"feature spec {spec.text!r} names several layers; this needs one: write "
                           f"{spec.name}@LAYER (e.g. {spec.name}@{ids[-1]}) or {spec.name}@best")
    if spec.layer is None:
        return ids[-1], ("only" if L == 1 else "last" if ids[-1] == full_layers(cache) - 1 else "last kept")
    if spec.layer == "best":
        if L == 1:   # accepting it would make a second, differently named run of the very same features
            raise FeatureError(
                f"feature spec {spec.text!r}: the {spec.name} cache has a single layer, so @best has nothing to "
                f"choose; write {spec.name!r} (@LAYER and @best are for multi-layer SSL caches)")
        return None, "best (ridge probe)"
    return check_layer(spec, int(spec.layer), cache), "given"


def resolve_layers(spec: FeatureSpec, cache: EmbeddingCache) -> tuple[list[int], str]:
    """``(model layer indices in stored order, how)`` of a multi-layer spec: ``@all`` = every
    stored layer; a list / range: each checked as :func:`check_layer` (kept, in range)."""
    if spec.layer == "all":
        if cache.n_layers == 1:
            raise FeatureError(f"feature spec {spec.text!r}: the {spec.name} cache has a single layer, so @all is "
                               f"that layer; write {spec.name!r}")
        return list(cache.layer_ids), "all"
    got = [check_layer(spec, int(k), cache) for k in spec.layer]
    dups = sorted({v for v in got if got.count(v) > 1})
    if dups:
        raise FeatureError(f"feature spec {spec.text!r} names layer(s) {dups} twice (negative indices count from the "
                           f"last of {full_layers(cache)} layers)")
    return sorted(got, key=cache.layer_ids.index), "given"
