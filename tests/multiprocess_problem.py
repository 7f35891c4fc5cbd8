"""The problem and the calls shared by the two-process test and its one-process reference."""

from __future__ import annotations

import numpy as np

N, D = 512, 8
#: One of each kind of computation (every strategy runs split over devices in test_sharding).
RULES = ["vtl", "itl", "maxdist", "random", "kmeans", "typiclust", "activeft"]


def problem():
    rng = np.random.default_rng(42)
    centers = rng.standard_normal((6, D))
    pool = (centers[rng.integers(0, 6, N)] + 0.4 * rng.standard_normal((N, D))).astype(np.float32)
    target = (centers[:2] + 0.2 * rng.standard_normal((2, D))).astype(np.float32)
    observed = np.zeros(N, bool)
    observed[rng.choice(N, 10, replace=False)] = True
    return pool, target, observed


def select(aft, rule, pool, target, observed):
    import jax

    kw = {"k": 6, "noise_std": 0.5, "observed": observed}
    if rule in ("vtl", "kmeans"):  # the index form: made into a mask laid out like the pool
        kw["observed"] = np.nonzero(problem()[2])[0]
    if rule in ("vtl", "itl", "ctl"):
        kw["target"] = target
    if rule in ("maxdist", "random", "kmeans", "kmeans_pp", "typiclust", "activeft"):
        kw["key"] = jax.random.key(7)
    if rule in ("kmeans", "typiclust"):
        kw["iters"] = 8
    if rule == "typiclust":
        kw["max_clusters"] = 20
    if rule == "activeft":
        kw["steps"] = 10
    return aft.select(rule, pool, **kw)
