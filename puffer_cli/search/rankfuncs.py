"""The rank functions ``Saturate``, ``Decay`` and ``Dist`` (turbopuffer's rank_by
functions over a text ranking expression), in numpy, shared by every query path
(:func:`puffer_cli.search.scoring.text_eval` calls :func:`apply`).

For an inner score ``x`` of a document the inner expression matches:

* ``Saturate(x; m, e) = x^e / (x^e + m^e)`` for x > 0, else 0: rises from 0 to 1, 0.5 at x = m
  (Lucene's FeatureField saturation / sigmoid);
* ``Decay(x; m, e) = m^e / (x^e + m^e)`` for x > 0, else 1: falls from 1 to 0, 0.5 at x = m;
* ``Dist(x; o) = |x - o|``.

Where the inner expression does not match (missing attribute, no BM25 term) the function
scores 0 and does not match either (every leaf scores 0 where it does not match); it matches
where the inner expression does.  Computed in float64 as ``1 / (1 + (m/x)^e)`` (and
``1 / (1 + (x/m)^e)``), so huge exponents or values saturate to 0 or 1 instead of NaN.
"""

from __future__ import annotations

import numpy as np

from puffer_cli.query import model


def saturate(x: np.ndarray, midpoint: float, exponent: float) -> np.ndarray:
    with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
        r = np.power(midpoint / np.where(x > 0, x, 1.0), exponent)
        return np.where(x > 0, 1.0 / (1.0 + r), 0.0)


def decay(x: np.ndarray, midpoint: float, exponent: float) -> np.ndarray:
    with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
        r = np.power(np.where(x > 0, x, 0.0) / midpoint, exponent)
        return 1.0 / (1.0 + r)


def dist(x: np.ndarray, origin: float) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return np.abs(x - origin)


def apply(e, s: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Function node ``e`` over the inner (score, matched); 0 where unmatched (or NaN)."""
    s = np.asarray(s, dtype=np.float64)
    if isinstance(e, model.Saturate):
        out = saturate(s, e.midpoint, e.exponent)
    elif isinstance(e, model.Decay):
        out = decay(s, e.midpoint, e.exponent)
    else:
        out = dist(s, e.origin)
    return np.where(m & ~np.isnan(out), out, 0.0)
