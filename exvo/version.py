"""The version of exvo (recorded in every run's provenance)."""
__version__ = "0.2.0"
