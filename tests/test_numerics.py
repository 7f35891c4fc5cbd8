"""Numerics of the greedy rules and the input checks (issue 16), in float32 and float64.

Property tests over a small fixed grid of noise levels (relative to the feature
scale), input scales and k up to 3·d: the picks are distinct without repeats,
every value is finite, and in float64 every pick is the argmax of an
independent dense float64 greedy (NumPy, `tests.helpers.posterior_cov`) given
the picks before it. Tolerances are relative to the scores' magnitude.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import activeft_jax as aft
from activeft_jax.kernels import l2_normalize
from tests.helpers import posterior_cov

N, D, M = 30, 6, 3
K_MAX = 3 * D
RULES = ("vtl", "itl", "ctl", "mmitl", "undirected_itl", "undirected_vtl")
DIRECTED = {"vtl", "itl", "ctl", "mmitl"}
# (relative noise ν, input scale s): noise_std = ν·s.
GRID = [(1e-6, 1e-3), (1e-4, 1.0), (1e-2, 1e3), (1.0, 1.0), (10.0, 1e-3)]


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, D)), rng.standard_normal((M, D))


def _dense_scores(rule, pool, target, obs, noise_var):
    """Every pool point's score given noisy observations at `obs`, from dense solves."""
    n = pool.shape[0]
    x_all = pool if target is None else np.concatenate([pool, target])
    K = x_all @ x_all.T
    S = posterior_cov(K, obs, noise_var)
    var = np.diag(S)[:n]
    if rule == "undirected_itl":
        return var.copy()
    if rule == "undirected_vtl":
        return np.sum(S[:n, :n] ** 2, axis=1) / (var + noise_var) - np.trace(S[:n, :n])
    a = np.arange(n, n + target.shape[0])
    if rule == "vtl":
        return np.sum(S[:n][:, a] ** 2, axis=1) / (var + noise_var) - np.trace(S[np.ix_(a, a)])
    if rule == "itl":
        var_t = np.diag(posterior_cov(K, list(obs) + list(a), noise_var))[:n]
        return np.where(var > 0, 0.5 * np.maximum(np.log(var / var_t), 0), 0)
    corr = S[:n][:, a] / np.sqrt(var[:, None] * np.diag(S)[a][None, :])
    if rule == "ctl":
        return corr.mean(axis=1)
    return np.mean(-0.5 * np.log1p(-corr ** 2), axis=1)


def _run(rule, pool, target, k, noise_std, **kw):
    args = (pool, target) if rule in DIRECTED else (pool,)
    return aft.select(rule, *args, k=k, noise_std=noise_std, **kw)


@pytest.mark.parametrize("rule", RULES)
def test_greedy_rules_hold_over_noise_scale_and_k(rule, dtype):
    """Distinct, finite picks at every grid point; float64 picks follow a dense float64 greedy."""
    pool0, target0 = _problem()
    for nu, scale in GRID:
        pool, target = (pool0 * scale).astype(dtype), (target0 * scale).astype(dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # float32 may say it cannot resolve
            sel = _run(rule, pool, target, K_MAX, nu * scale)
        idx, val = np.asarray(sel.indices), np.asarray(sel.values, np.float64)
        where = f"{rule} {dtype} noise {nu}·{scale}"
        assert len(set(idx.tolist())) == K_MAX and idx.min() >= 0 and idx.max() < N, where
        assert np.all(np.isfinite(val)), where
        if dtype != "float64" or nu < 1e-2:
            continue  # the dense reference's own subtractions lose the digits below that
        noise_var = (nu * scale) ** 2
        p64, t64 = pool.astype(np.float64), target.astype(np.float64)
        for step in range(K_MAX):
            scores = _dense_scores(rule, p64, None if rule not in DIRECTED else t64,
                                   idx[:step].tolist(), noise_var)
            scores[idx[:step]] = -np.inf
            best = scores.max()
            tol = 1e-7 * max(np.abs(scores[np.isfinite(scores)]).max(), 1e-300)
            assert scores[idx[step]] >= best - tol, (where, step, idx[step], np.argmax(scores))
            np.testing.assert_allclose(val[step], scores[idx[step]], rtol=1e-6,
                                       atol=tol, err_msg=f"{where} step {step}")


def test_itl_float32_follows_float64_at_small_noise():
    """ITL's target-conditioned variance comes from the SVD of the targets (no Gram matrix):
    at noise 1e-4 of the feature scale float32 takes float64's picks until the pool's d
    directions are observed (it used to score every point 0 and pick 0, 1, 2, ...)."""
    rng = np.random.default_rng(1)
    pool, target = rng.standard_normal((100, 16)), rng.standard_normal((4, 16))
    for noise in (1e-4, 1e-3):
        with jax.enable_x64(True):
            ref = np.asarray(aft.select("itl", pool, target, k=12, noise_std=noise).indices)
        got = aft.select("itl", pool.astype(np.float32), target.astype(np.float32), k=12,
                         noise_std=noise)
        np.testing.assert_array_equal(np.asarray(got.indices), ref, err_msg=f"noise {noise}")
        assert np.all(np.asarray(got.values) > 0)


def test_float32_warns_when_it_cannot_resolve_the_scores():
    """k > d at a tiny noise in float32: one RuntimeWarning naming the dtype and the way out;
    none at the default noise, and none in float64."""
    pool, target = _problem(2)
    pool, target = pool.astype(np.float32), target.astype(np.float32)
    with pytest.warns(RuntimeWarning, match=r"float32.*float64.*noise_std") as record:
        _run("vtl", pool, target, K_MAX, 1e-5)
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _run("vtl", pool, target, D, 0.1)
        with jax.enable_x64(True):
            _run("vtl", pool.astype(np.float64), target.astype(np.float64), K_MAX, 1e-5)


def test_undirected_itl_float32_warns_where_its_picks_leave_float64():
    """Undirected ITL scores the variance itself, so its round-off is ε·k(x, x) / σ²_n(x)
    (not the square root the other GP rules use): past k = d at a small noise float32 leaves
    the float64 picks, and it now says so (it used to stay silent); with k = d it does not."""
    pool = np.random.default_rng(0).standard_normal((300, 16))
    for noise in (1e-2, 1e-3, 1e-4):
        with jax.enable_x64(True), warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            ref = np.asarray(aft.select("undirected_itl", pool, k=48, noise_std=noise).indices)
        with pytest.warns(RuntimeWarning, match=r"undirected_itl: float32.*float64"):
            got = aft.select("undirected_itl", pool.astype(np.float32), k=48, noise_std=noise)
        assert np.any(np.asarray(got.indices) != ref), f"float32 follows float64 at {noise}"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = aft.select("undirected_itl", pool.astype(np.float32), k=16, noise_std=0.1)
        with jax.enable_x64(True):
            ref = aft.select("undirected_itl", pool, k=16, noise_std=0.1)
    np.testing.assert_array_equal(np.asarray(got.indices), np.asarray(ref.indices))


@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_half_precision_inputs_are_computed_in_float32(low):
    """float16 / bfloat16 inputs of norm ~300 (squares overflow float16) are upcast."""
    pool, target = _problem(3)
    pool, target = 300 * pool / np.sqrt(D), 300 * target / np.sqrt(D)
    half = jnp.dtype(low)
    ref = _run("vtl", jnp.asarray(pool, half).astype(jnp.float32),
               jnp.asarray(target, half).astype(jnp.float32), 10, 0.1)
    got = _run("vtl", jnp.asarray(pool, half), jnp.asarray(target, half), 10, 0.1)
    assert got.values.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got.indices), np.asarray(ref.indices))
    assert np.all(np.isfinite(np.asarray(got.values)))
    sel = aft.select("maxdist", jnp.asarray(pool, half), k=10, key=jax.random.key(0))
    assert len(set(np.asarray(sel.indices).tolist())) == 10


@pytest.mark.parametrize("strategy", ["vtl", "itl", "maxdist", "cosine", "kmeans_pp", "activeft"])
def test_squared_norms_that_overflow_are_rejected(strategy):
    pool, target = _problem(4)
    pool = pool.astype(np.float32)
    pool[3] *= 1e20 / np.linalg.norm(pool[3])
    record = aft.selection.registry.get_strategy(strategy)
    args = (pool, target.astype(np.float32)) if record.needs_target else (pool,)
    kw = {"key": jax.random.key(0)} if record.key != "none" else {}
    name = "features" if strategy == "activeft" else "pool"
    with pytest.raises(ValueError, match=rf"`{name}`.*squared norm.*float32"):
        aft.select(strategy, *args, k=5, **kw)
    bad_target = target.astype(np.float32)
    bad_target[0] = 1e20
    with pytest.raises(ValueError, match=r"`target`.*squared norm"):
        aft.select("vtl", pool[:3], bad_target, k=2)


STRATEGIES = ("vtl", "itl", "ctl", "mmitl", "undirected_itl", "cosine", "maxdist", "kmeans",
              "kmeans_pp", "activeft")


def test_degenerate_rows_give_finite_values():
    """Rows of norm 0 and 1e-20 in the pool: finite values in every strategy (maxdist and
    kmeans_pp report +inf for their first pick only, by definition: no centre before it)."""
    pool, target = _problem(5)
    pool = pool.astype(np.float32)
    pool[:2] = 0
    pool[2:4] *= 1e-20 / np.linalg.norm(pool[2:4], axis=1, keepdims=True)
    for strategy in STRATEGIES:
        record = aft.selection.registry.get_strategy(strategy)
        args = (pool, target.astype(np.float32)) if record.needs_target else (pool,)
        kw = {"key": jax.random.key(0)} if record.key != "none" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            sel = aft.select(strategy, *args, k=8, **kw)
        val = np.asarray(sel.values, np.float64)
        if strategy in ("maxdist", "kmeans_pp"):
            assert val[0] == np.inf
            val = val[1:]
        assert np.all(np.isfinite(val)), (strategy, val)
        assert len(set(np.asarray(sel.indices).tolist())) == 8, strategy
    cos = np.asarray(aft.select("cosine", pool, target.astype(np.float32), k=N).values)
    assert np.all(np.abs(cos) <= 1 + 1e-6)


def test_l2_normalize_is_scale_safe_with_a_zero_gradient_at_zero():
    x = jnp.asarray([[3e-21, 4e-21], [0.0, 0.0], [3e30, 4e30]], jnp.float32)
    np.testing.assert_allclose(np.asarray(l2_normalize(x)), [[0.6, 0.8], [0, 0], [0.6, 0.8]],
                               rtol=1e-6)
    grad = jax.grad(lambda z: jnp.sum(l2_normalize(z)[:, 0]))(x)
    assert np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_array_equal(np.asarray(grad[1]), [0, 0])


@pytest.mark.parametrize("noise", [1e-30, 1e25])
def test_noise_whose_square_leaves_the_dtype_is_rejected(noise):
    pool, target = _problem(6)
    with pytest.raises(ValueError, match=r"`noise_std`.*float32"):
        aft.select("vtl", pool.astype(np.float32), target.astype(np.float32), k=3,
                   noise_std=noise)
