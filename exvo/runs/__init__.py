"""Run folders: one writer (:mod:`exvo.runs.store`), one reader (:mod:`exvo.runs.reader`) and
the provenance that tells when a run went stale (:mod:`exvo.runs.provenance`)."""
