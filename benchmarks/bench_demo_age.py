"""How much age information a demo corpus's features carry (benchmarks/README.md, "Age on the demo corpus").

    python benchmarks/bench_demo_age.py DATA CACHE [FEATURES]   (default egemaps; extract it first)

Prints the trivial predictors' Val MAE (Train mean and median), a ridge regression of age on the
standardised features (fitted on Train, several penalties), per clip and averaged over each Val
speaker's clips, and the features most correlated with age on Train. A linear probe, not a
learner: it says whether the cue is there, not how well a model finds it.
"""
from __future__ import annotations

import sys

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from exvo.api import load_features
from exvo.corpus import Corpus


def main(data: str, cache: str, features: str = "egemaps") -> None:
    c = Corpus.from_dir(data)
    pos = {i: k for k, i in enumerate(c.ids)}

    def split(name):
        df = load_features(c, features, name, cache_dir=cache, frame=True)
        idx = np.array([pos[i] for i in df.index])
        return df, c.age[idx], c.speakers[idx]

    (dft, at, _), (dfv, av, sv) = split("Train"), split("Val")
    print(f"{features}: Train {len(at)} clips / {len(set(c.speakers[c.indices('Train')]))} speakers, "
          f"Val {len(av)} clips / {len(set(sv))} speakers")
    print(f"trivial Val MAE: Train mean {np.abs(av - at.mean()).mean():.2f}, Train median "
          f"{np.abs(av - np.median(at)).mean():.2f} years")
    sc = StandardScaler().fit(dft.values)
    xt, xv = np.nan_to_num(sc.transform(dft.values)), np.nan_to_num(sc.transform(dfv.values))
    for a in (1, 10, 100, 1000, 10000):
        p = Ridge(alpha=a).fit(xt, at).predict(xv)
        ps = np.array([p[sv == s].mean() for s in sv])
        print(f"ridge alpha={a:<6g} Val MAE per clip {np.abs(p - av).mean():.2f}, speaker-averaged {np.abs(ps - av).mean():.2f}")
    r = np.nan_to_num([np.corrcoef(dft.values[:, k], at)[0, 1] for k in range(dft.shape[1])])
    for k in np.argsort(-np.abs(r))[:8]:
        print(f"  r(age, {dft.columns[k]}) = {r[k]:+.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
