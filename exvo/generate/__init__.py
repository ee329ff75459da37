"""ExVo-Generate evaluation (paper 002 §3.2, §5.2, Table 3): FID per emotion in a corpus-trained
feature space, HEEP from human ratings, S_GEN.

Modules: ``fid`` (the Fréchet distance), ``bins`` (per-emotion bins of real clips), ``embed``
(feature spaces: extractor caches + direct embedding of generated clips), ``classifier``
(a learn run's last shared layer), ``heep`` (HEEP, S_GEN, ratings/manifest files),
``table`` (the Train-vs-Val table: CSV, JSON, heat map, report hook), ``api`` (what the CLI calls).
"""
