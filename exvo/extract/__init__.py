"""Stage 1: audio → utterance embeddings in the HDF5 cache (see ``base`` for the registry)."""
from exvo.extract.base import ExtractOptions, Extractor, get_extractor, names, register

__all__ = ["ExtractOptions", "Extractor", "get_extractor", "names", "register"]

from exvo.callable_module import make_callable

make_callable(__name__)   # exvo.extract(...) is the API function (exvo.api.extract)
