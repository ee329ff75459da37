"""Stage 2, late fusion: combine the prediction files of finished runs.

``runs.py``     read run folders (config, metrics, predictions) and check they fit together
``select.py``   per-subtask scores of candidate runs, ranking, ties, weights
``cv.py``       speaker-disjoint halves of Val (selection on one half, scoring on the other)
``ensemble.py`` compose predictions column by column from weighted sources
``seeds.py``    seed by seed: pair the sources' seeds, score each seed, summarise over seeds
``api.py``      ``fuse()``: hybrid per-subtask selection and averaging ensembles → a run folder
``report.py``   ``make_report()``: the comparison table of every run; ``rows.py`` what each row's
                numbers are and its flags; ``plots.py`` its figures
"""
