"""The diversity baselines against NumPy implementations of their official procedures.

k-means against a NumPy Lloyd loop from the same seeds; k-means++ / BADGE by
its sampling statistics; TypiClust and ProbCover against loops written as the
official code's (`deep-al/pycls/al/{typiclust,prob_cover}.py`), on the same
clusters; and small problems whose answer is known by construction.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import activeft_jax as aft
from activeft_jax.selection.clustering import fit_kmeans, kmeans_pp_indices
from helpers import official_probcover, official_typiclust


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _blobs(seed, sizes, d=4, spread=0.05, sep=3.0):
    rng = np.random.default_rng(seed)
    centers = sep * rng.standard_normal((len(sizes), d))
    x = np.concatenate([c + spread * rng.standard_normal((s, d)) for c, s in zip(centers, sizes)])
    labels = np.repeat(np.arange(len(sizes)), sizes)
    perm = rng.permutation(len(x))
    return x[perm].astype(np.float32), labels[perm]


def numpy_lloyd(x, centroids, iters):
    inertia = []
    for _ in range(iters + 1):
        d2 = ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
        assign = d2.argmin(1)
        inertia.append(d2[np.arange(len(x)), assign].sum())
        if len(inertia) == iters + 1:
            break
        new = centroids.copy()
        for c in range(len(centroids)):
            if np.any(assign == c):
                new[c] = x[assign == c].mean(0)
        centroids = new
    return centroids, assign, np.array(inertia)


# ----------------------------------------------------------------------------- k-means


def test_kmeans_matches_numpy_lloyd(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 5)).astype(dtype)
    key = jax.random.key(1)
    fit = fit_kmeans(x, k=8, key=key, iters=15)
    seeds = np.asarray(kmeans_pp_indices(jnp.asarray(x), key, 8, first="random").indices)
    cent, assign, inertia = numpy_lloyd(x.astype(np.float64), x[seeds].astype(np.float64), 15)
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(fit.centroids, cent, rtol=tol, atol=tol)
    np.testing.assert_array_equal(fit.assign, assign)
    np.testing.assert_allclose(fit.inertia, inertia, rtol=tol)
    assert np.all(np.diff(inertia) <= 1e-9 * inertia[0])  # Lloyd never increases the inertia

    sel = aft.select("kmeans", x, k=8, key=key, iters=15)
    taken, ref = set(), []
    for c in cent:  # nearest untaken pool point, centroid by centroid
        for j in np.argsort(((x - c) ** 2).sum(1), kind="stable"):
            if j not in taken:
                taken.add(int(j))
                ref.append(int(j))
                break
    np.testing.assert_array_equal(sel.indices, ref)
    np.testing.assert_allclose(sel.values, ((x[ref] - cent) ** 2).sum(1), rtol=10 * tol, atol=10 * tol)


def test_kmeans_finds_separated_blobs():
    x, labels = _blobs(1, [40, 30, 20, 10])
    sel = aft.select("kmeans", x, k=4, key=jax.random.key(0))
    assert sorted(labels[np.asarray(sel.indices)].tolist()) == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- k-means++ (BADGE)


def test_kmeans_pp_first_is_largest_norm_then_d2_sampling():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 2)).astype(np.float32)
    x[3] *= 5  # the largest norm
    keys = jax.random.split(jax.random.key(0), 20000)
    picks = jax.jit(jax.vmap(lambda k: aft.select("kmeans_pp", x, k=2, key=k).indices))(keys)
    assert np.all(np.asarray(picks[:, 0]) == 3)
    d2 = ((x - x[3]) ** 2).sum(1)
    expected = d2 / d2.sum()
    freq = np.bincount(np.asarray(picks[:, 1]), minlength=6) / len(keys)
    # 20000 draws: the standard error of each frequency is below 0.0036.
    np.testing.assert_allclose(freq, expected, atol=0.015)
    assert freq[3] == 0


def test_kmeans_pp_never_repeats_even_with_duplicates():
    x = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 3 distinct points, 4 copies each
    sel = aft.select("kmeans_pp", x, k=12, key=jax.random.key(5))
    assert sorted(np.asarray(sel.indices).tolist()) == list(range(12))
    # the first three picks cover the three distinct points (D² > 0 beats D² = 0)
    assert len({int(i) // 4 for i in np.asarray(sel.indices[:3])}) == 3
    np.testing.assert_array_equal(sel.values[3:], 0)


# ----------------------------------------------------------------------------- TypiClust


@pytest.mark.parametrize("budget", [4, 9])
def test_typiclust_matches_official_loop(budget):
    x, _ = _blobs(3, [60, 45, 30, 4], d=3, spread=0.4, sep=2.0)
    key = jax.random.key(2)
    sel = aft.select("typiclust", x, k=budget, key=key)
    fit = fit_kmeans(x, k=min(budget, 500), key=key, iters=100, normalize=True)
    ref = official_typiclust(_unit(x.astype(np.float64)), np.asarray(fit.assign), budget)
    np.testing.assert_array_equal(sel.indices, ref)


def test_typiclust_picks_the_densest_point_of_each_blob():
    x, labels = _blobs(4, [40, 30, 20], d=3, spread=0.3, sep=4.0)
    sel = aft.select("typiclust", x, k=3, key=jax.random.key(0), normalize=False)
    got = labels[np.asarray(sel.indices)]
    assert got.tolist() == [0, 1, 2]  # largest blob first
    for i, b in zip(np.asarray(sel.indices), got):
        members = np.nonzero(labels == b)[0]
        d2 = ((x[members][:, None] - x[members][None]) ** 2).sum(-1)
        np.fill_diagonal(d2, np.inf)
        mean = np.sort(d2, 1)[:, :min(20, len(members) // 2)].mean(1)
        assert members[np.argmin(mean)] == i


def test_typiclust_budget_beyond_kept_clusters():
    x, _ = _blobs(5, [8, 7, 3, 2], d=2, spread=0.2)
    sel = aft.select("typiclust", x, k=20, key=jax.random.key(0))
    assert sorted(np.asarray(sel.indices).tolist()) == list(range(20))


# ----------------------------------------------------------------------------- ProbCover


@pytest.mark.parametrize("delta", [0.3, 0.6, 1.0])
def test_probcover_matches_official_greedy(delta):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((150, 4))
    sel = aft.select("probcover", x, k=25, delta=delta)
    picks, counts = official_probcover(_unit(x), delta, 25)
    np.testing.assert_array_equal(sel.indices, picks)
    np.testing.assert_array_equal(sel.values, counts)
    assert len(set(np.asarray(sel.indices).tolist())) == 25


def test_probcover_covers_each_blob_once():
    x, labels = _blobs(7, [50, 30, 10], d=3, spread=0.02, sep=5.0)
    sel = aft.select("probcover", x, k=3, delta=0.5, normalize=False)
    assert labels[np.asarray(sel.indices)].tolist() == [0, 1, 2]
    np.testing.assert_array_equal(sel.values, [50, 30, 10])


def test_probcover_vmaps_over_delta():
    x = np.random.default_rng(8).standard_normal((80, 3))
    deltas = jnp.array([0.2, 0.5, 0.9])
    out = jax.vmap(lambda dl: aft.select("probcover", x, k=6, delta=dl).indices)(deltas)
    for i, dl in enumerate([0.2, 0.5, 0.9]):
        np.testing.assert_array_equal(out[i], official_probcover(_unit(x), dl, 6)[0])


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name, kwargs, match", [
    ("kmeans", dict(key=None), "needs `key`"),
    ("kmeans", dict(iters=-1), r"`iters` must be an int >= 0; got -1"),  # validation.NUMERIC_OPTIONS
    ("kmeans_pp", dict(k=31), r"1 <= k <= N=30"),
    ("typiclust", dict(max_clusters=0), r"`max_clusters` must be an int >= 1; got 0"),
    ("probcover", dict(delta=0.0), r"`delta` must be finite and > 0"),
    ("probcover", dict(delta=float("nan")), r"`delta` must be finite and > 0"),
    ("kmeans", dict(space="weight"), r"does not take option"),
])
def test_bad_input(name, kwargs, match):
    x = np.random.default_rng(0).standard_normal((30, 3))
    args = dict(k=5, key=jax.random.key(0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        aft.select(name, x, **args)
