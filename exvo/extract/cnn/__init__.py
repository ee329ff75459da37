"""Task-specific raw/ZFF waveform CNNs (the Idiap paper's Raw/Zff(ExVo)-ER/CR).

    model.py      the network (``paper`` and ``sinc`` architectures), sliced whole-clip pass, filter responses
    sampler.py    all-frames training data: every 250 ms window at the 10 ms hop, shuffled, never materialised
    labels.py     hard labels (ER ties broken by File_ID), the 90:10 speaker split, crossfit folds
    train.py      the paper's training recipe (lr 0.1 halved on plateaus down to 1e-6), Val UAR/WAR, model files
    extractor.py  the registered extractors (+ seeds, crossfit) and custom CNNs (``exvo train-cnn``)
"""
