"""exvo: embeddings + small learners for vocal-burst research (ICML ExVo 2022 / HUME-VB)."""
__version__ = "0.1.0"
