"""Every rule against a brute-force implementation of its definition.

The brute force (tests/helpers.py) recomputes the dense posterior for every
candidate at every step, in float64 NumPy. float64 runs must give the same
picks and values to 1e-9; float32 runs the same picks on these well-separated
problems and values to ~1e-4.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import activeft_jax as aft
from activeft_jax.selection import similarity

from helpers import (
    TOL,
    brute_force_greedy,
    cosine_kernel,
    k_center_greedy,
    linear_kernel,
    random_problem,
    rbf_kernel,
)

GP_RULES = ["itl", "vtl", "ctl", "mmitl", "undirected_itl", "undirected_vtl"]
K = 6
NOISE = 0.5


def _ours(rule, pool, target, dtype, **kw):
    P = jnp.asarray(pool, dtype)
    T = jnp.asarray(target, dtype)
    return aft.select(rule, P, T, k=K, noise_std=NOISE, **kw)


def _check(sel, ref_idx, ref_val, dtype, rtol_scale=1.0):
    rtol, atol = TOL[dtype]
    np.testing.assert_array_equal(np.asarray(sel.indices), ref_idx)
    np.testing.assert_allclose(np.asarray(sel.values, np.float64), ref_val,
                               rtol=rtol * rtol_scale, atol=atol * rtol_scale)


@pytest.mark.parametrize("rule", GP_RULES)
@pytest.mark.parametrize("space", ["weight", "kernel"])
@pytest.mark.parametrize("allow_repeats", [False, True])
def test_gp_rule_matches_brute_force(dtype, rule, space, allow_repeats):
    pool, target = random_problem(10, n=40, d=6, m=4)
    ref_idx, ref_val = brute_force_greedy(rule, pool, target, K, NOISE**2, allow_repeats=allow_repeats)
    sel = _ours(rule, pool, target, dtype, space=space, allow_repeats=allow_repeats)
    # undirected_vtl sums N = 40 variances: scale the tolerance with the magnitude
    _check(sel, ref_idx, ref_val, dtype, rtol_scale=20 if rule == "undirected_vtl" else 1)


@pytest.mark.parametrize("rule", ["itl", "vtl", "ctl", "mmitl", "undirected_itl"])
def test_gp_rule_rbf_kernel_matches_brute_force(dtype, rule):
    pool, target = random_problem(11, n=40, d=3, m=3)
    kern = lambda x, y: rbf_kernel(x, y, 2.0)  # noqa: E731
    ref_idx, ref_val = brute_force_greedy(rule, pool, target, K, NOISE**2, kernel=kern)
    sel = _ours(rule, pool, target, dtype, kernel=aft.kernels.RBF(2.0))
    _check(sel, ref_idx, ref_val, dtype)


@pytest.mark.parametrize("rule", ["itl", "vtl", "ctl", "mmitl"])
def test_cosine_kernel_and_normalize_match_brute_force(rule):
    with jax.enable_x64(True):
        pool, target = random_problem(12, n=40, d=5, m=3)
        ref_idx, ref_val = brute_force_greedy(rule, pool, target, K, NOISE**2, kernel=cosine_kernel)
        _check(_ours(rule, pool, target, "float64", kernel="cosine"), ref_idx, ref_val, "float64")
        _check(_ours(rule, pool, target, "float64", normalize=True), ref_idx, ref_val, "float64")


@pytest.mark.parametrize("rule", ["itl", "vtl"])
def test_many_targets_are_compressed_exactly(rule):
    """m > d: the compressed pseudo-targets give the brute force's picks and values."""
    with jax.enable_x64(True):
        pool, target = random_problem(13, n=40, d=4, m=15)
        ref_idx, ref_val = brute_force_greedy(rule, pool, target, K, NOISE**2)
        for space in ("weight", "kernel"):
            _check(_ours(rule, pool, target, "float64", space=space), ref_idx, ref_val, "float64")


def test_itl_paper_formulation_matches_brute_force():
    with jax.enable_x64(True):
        pool, target = random_problem(14, n=40, d=6, m=3)
        ref_idx, ref_val = brute_force_greedy("itl_paper", pool, target, K, NOISE**2)
        for space in ("weight", "kernel"):
            sel = _ours("itl", pool, target, "float64", space=space, formulation="paper")
            np.testing.assert_array_equal(sel.indices, ref_idx)
            np.testing.assert_allclose(sel.values, ref_val, rtol=1e-6)


def test_itl_float32_keeps_its_score_when_targets_span_the_space():
    """m ≥ d and small noise: σ̃² ≪ σ². float32 ITL must agree with float64 (the
    reference's subtraction loses the score to cancellation here)."""
    rng = np.random.default_rng(15)
    pool = rng.standard_normal((200, 8))
    target = 3 * rng.standard_normal((40, 8))
    kw = dict(k=10, noise_std=0.05)
    s32 = aft.select("itl", jnp.asarray(pool, jnp.float32), jnp.asarray(target, jnp.float32), **kw)
    with jax.enable_x64(True):
        s64 = aft.select("itl", jnp.asarray(pool), jnp.asarray(target), **kw)
        ref_idx, ref_val = brute_force_greedy("itl", pool, target, 10, 0.05**2)
    np.testing.assert_array_equal(s64.indices, ref_idx)
    np.testing.assert_array_equal(s32.indices, ref_idx)
    np.testing.assert_allclose(s32.values, ref_val, rtol=1e-3)
    assert np.all(np.asarray(s32.values) > 1.0)  # informative, not cancelled to 0


def test_repeats_allowed_reproduce_the_reference_behaviour():
    """Low dimension, many picks: with repeats the same point is picked several times
    (as in the reference); by default every pick is distinct."""
    with jax.enable_x64(True):
        pool, target = random_problem(16, n=30, d=2, m=2)
        ref_idx, _ = brute_force_greedy("ctl", pool, target, 8, 0.1**2, allow_repeats=True)
        rep = aft.select("ctl", pool, target, k=8, noise_std=0.1, allow_repeats=True)
        np.testing.assert_array_equal(rep.indices, ref_idx)
        assert len(set(ref_idx.tolist())) < 8
        masked = aft.select("ctl", pool, target, k=8, noise_std=0.1)
        assert len(set(np.asarray(masked.indices).tolist())) == 8


@pytest.mark.parametrize("rule", ["itl", "ctl", "mmitl", "vtl", "undirected_itl"])
def test_zero_embedding_is_uninformative_not_nan(rule):
    """The reference's ITL/CTL score a zero row NaN and pick it every time; we never do."""
    pool, target = random_problem(17, n=30, d=4, m=3)
    pool[5] = 0.0
    for repeats in (False, True):
        sel = aft.select(rule, jnp.asarray(pool, jnp.float32), jnp.asarray(target, jnp.float32),
                         k=5, allow_repeats=repeats)
        assert 5 not in np.asarray(sel.indices).tolist()
        assert np.all(np.isfinite(sel.values))


def test_duplicate_points_do_not_produce_nan():
    pool, target = random_problem(18, n=30, d=4, m=3)
    pool[7] = pool[3]
    for rule in GP_RULES:
        sel = aft.select(rule, jnp.asarray(pool, jnp.float32), jnp.asarray(target, jnp.float32), k=8)
        assert np.all(np.isfinite(sel.values)), rule


# ----------------------------------------------------------------------------- top-k rules


def test_uncertainty_is_top_k_of_prior_variance(dtype):
    pool, _ = random_problem(20, n=50, d=5)
    sel = aft.select("uncertainty", jnp.asarray(pool, dtype), k=7)
    norms = (pool**2).sum(1)
    np.testing.assert_array_equal(sel.indices, np.argsort(-norms)[:7])
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(sel.values, np.sort(norms)[::-1][:7], rtol=rtol, atol=atol)


def test_cosine_is_top_k_mean_cosine(dtype):
    pool, target = random_problem(21, n=50, d=5, m=4)
    ref = cosine_kernel(pool, target).mean(1)
    sel = aft.select("cosine", jnp.asarray(pool, dtype), jnp.asarray(target, dtype), k=7)
    np.testing.assert_array_equal(sel.indices, np.argsort(-ref)[:7])
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(sel.values, np.sort(ref)[::-1][:7], rtol=rtol, atol=atol)


def _probs(seed, n, c):
    logits = np.random.default_rng(seed).standard_normal((n, c)) * 2
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def test_max_entropy_is_top_k_entropy(dtype):
    probs = _probs(22, 50, 4)
    probs[3] = [1.0, 0.0, 0.0, 0.0]  # 0 log 0 = 0, not NaN
    ent = -(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1)), 0)).sum(1)
    sel = aft.select("max_entropy", probs=jnp.asarray(probs, dtype), k=6)
    np.testing.assert_array_equal(sel.indices, np.argsort(-ent)[:6])
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(sel.values, np.sort(ent)[::-1][:6], rtol=rtol, atol=atol)
    assert float(similarity.entropy(jnp.asarray(probs[3:4], dtype))[0]) == 0.0


def test_information_density_is_entropy_times_similarity(dtype):
    pool, target = random_problem(23, n=50, d=5, m=4)
    probs = _probs(24, 50, 3)
    ent = -(probs * np.log(probs)).sum(1)
    sim = cosine_kernel(pool, target).mean(1)
    for beta in (1.0, 2.0):
        ref = ent * sim**beta
        sel = aft.select("information_density", jnp.asarray(pool, dtype), jnp.asarray(target, dtype),
                         probs=jnp.asarray(probs, dtype), k=6, beta=beta)
        np.testing.assert_array_equal(sel.indices, np.argsort(-ref)[:6])
        rtol, atol = TOL[dtype]
        np.testing.assert_allclose(sel.values, np.sort(ref)[::-1][:6], rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- maxdist / random


@pytest.mark.parametrize("kernel,ref_kernel", [("linear", linear_kernel),
                                               (aft.kernels.RBF(1.0),
                                                lambda x, y: rbf_kernel(x, y, 1.0))])
def test_maxdist_is_a_true_k_center_greedy(dtype, kernel, ref_kernel):
    pool, _ = random_problem(25, n=60, d=4)
    sel = aft.select("maxdist", jnp.asarray(pool, dtype), k=10, key=jax.random.key(3), kernel=kernel)
    first = int(sel.indices[0])
    ref_idx, ref_val = k_center_greedy(pool, 10, first, ref_kernel)
    np.testing.assert_array_equal(sel.indices, ref_idx)
    assert np.isinf(sel.values[0])
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(sel.values[1:], ref_val[1:], rtol=rtol, atol=10 * atol)
    # covering radius is non-increasing: each pick is the farthest remaining point
    assert np.all(np.diff(np.asarray(sel.values[1:])) <= 1e-5)


def test_maxdist_first_pick_is_uniform():
    pool, _ = random_problem(26, n=8, d=2)
    keys = jax.random.split(jax.random.key(0), 4000)
    firsts = jax.vmap(lambda key: aft.select("maxdist", pool, k=2, key=key).indices[0])(keys)
    counts = np.bincount(np.asarray(firsts), minlength=8)
    chi2 = ((counts - 500) ** 2 / 500).sum()
    assert chi2 < 24.3  # chi-square, 7 dof, p = 0.001


def test_random_is_a_uniform_subset_without_replacement():
    pool = np.zeros((10, 2))
    keys = jax.random.split(jax.random.key(1), 3000)
    picks = np.asarray(jax.vmap(lambda key: aft.select("random", pool, k=3, key=key).indices)(keys))
    assert all(len(set(row)) == 3 for row in picks.tolist())
    counts = np.bincount(picks.ravel(), minlength=10)  # each point in 3/10 of the draws
    chi2 = ((counts - 900) ** 2 / 900).sum()
    assert chi2 < 27.9  # chi-square, 9 dof, p = 0.001
    first = np.bincount(picks[:, 0], minlength=10)  # and the order is random too
    assert ((first - 300) ** 2 / 300).sum() < 27.9
