"""Stage 2, late fusion: combine the prediction files of finished runs.

``select.py``   per-subtask scores of candidate runs, ranking, ties, weights
``cv.py``       speaker-disjoint halves of Val (selection on one half, scoring on the other)
``ensemble.py`` compose predictions column by column from weighted sources
``seeds.py``    seed by seed: pair the sources' seeds, score each seed, summarise over seeds
``steps.py``    the computation of a fusion: candidates, the choice, Val/CV estimates, Test
``api.py``      ``fuse()``: sources in, the steps, a run folder out (run reading: :mod:`exvo.runs`)
``report.py``   ``make_report()``: the comparison table of every run; ``rows.py`` what each row's
                numbers are and its flags; ``plots.py`` its figures
"""
