"""exvo: embeddings + small learners for vocal-burst research (ICML ExVo 2022 / HUME-VB).

The Python API (``docs/api.md``)::

    import exvo
    corpus = exvo.Corpus.from_dir("demo_data")
    exvo.extract(corpus, "egemaps", cache_dir="cache")
    run = exvo.learn(corpus, ["egemaps"], learner="mlp", seeds=5, cache_dir="cache", runs_dir="runs")
    run.scores            # DataFrame: one row per seed, then mean, std, ensemble
"""
from exvo.version import __version__

_API = ("Corpus", "Run", "cnn_posteriors", "extract", "fewshot", "fuse", "learn", "load_features", "load_run", "report", "verify")
_TASKS = ("TaskSpec", "get_task")
__all__ = ["__version__", *_API, *_TASKS]


def __getattr__(name: str):
    # imported on first use: `import exvo` (and every CLI start) stays light. extract, learn,
    # fewshot and verify are subpackages made callable (exvo.callable_module).
    if name in ("extract", "learn", "fewshot", "verify"):
        import importlib

        return importlib.import_module(f"exvo.{name}")
    if name in _TASKS:
        from exvo import tasks

        return getattr(tasks, name)
    if name in _API:
        from exvo import api

        return getattr(api, name)
    raise AttributeError(f"module 'exvo' has no attribute {name!r}")
