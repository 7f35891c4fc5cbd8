"""Kernels of any kind, a prior weight covariance, the RBF default, non-sequential
scores, undirected VTL in kernel space and ITLNoiseless (issue 14), against the
dense references of tests/helpers.py."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import activeft_jax as aft
from activeft_jax import kernels
from helpers import TOL, brute_force_greedy, random_problem, rbf_kernel


class ScaledLinear(NamedTuple):
    """A pytree kernel: c · xᵀy with a traced scale and a feature map."""

    scale: jax.Array

    def features(self, x):
        return jnp.sqrt(self.scale) * x

    def diag(self, x):
        return self.scale * jnp.sum(x * x, axis=1)

    def cross(self, x, y):
        return self.scale * x @ y.T


class Laplace:
    """A plain object kernel (static under jit): exp(-‖x - y‖₁ / 3)."""

    def diag(self, x):
        return jnp.ones(x.shape[0], x.dtype)

    def cross(self, x, y):
        return jnp.exp(-jnp.sum(jnp.abs(x[:, None, :] - y[None, :, :]), axis=-1) / 3)


def laplace_np(x, y):
    return np.exp(-np.abs(x[:, None, :] - y[None, :, :]).sum(-1) / 3)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rule", ["itl", "undirected_vtl"])
def test_a_user_kernel_object_matches_the_dense_greedy(rule, dtype):
    pool, target = random_problem(3, n=30, d=4, m=3)
    target = None if rule.startswith("undirected") else target
    with jax.enable_x64(dtype == "float64"):
        sel = aft.select(rule, jnp.asarray(pool, dtype), None if target is None else
                         jnp.asarray(target, dtype), k=6, noise_std=0.3, kernel=Laplace())
        idx, val = brute_force_greedy(rule, pool, target, 6, 0.09, kernel=laplace_np)
    assert [int(i) for i in sel.indices] == list(idx)
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(np.asarray(sel.values), val, rtol=10 * rtol,
                               atol=10 * atol * max(1, np.max(np.abs(val))))


def test_a_pytree_kernel_is_traced_and_uses_weight_space():
    pool, target = random_problem(4, n=50, d=5, m=3)
    pool, target = jnp.asarray(pool, jnp.float32), jnp.asarray(target, jnp.float32)

    def run(scale):
        return aft.select("vtl", pool, target, k=4, noise_std=0.5, kernel=ScaledLinear(scale),
                          space="weight").values

    swept = jax.vmap(run)(jnp.array([0.5, 2.0]))
    for i, c in enumerate([0.5, 2.0]):    # c·xᵀy with noise ρ² = linear on √c·x
        ref = aft.select("vtl", np.sqrt(c) * pool, np.sqrt(c) * target, k=4, noise_std=0.5)
        np.testing.assert_allclose(swept[i], ref.values, rtol=1e-4)


def test_bad_kernel_objects_are_refused_in_one_line():
    pool, target = random_problem(5, n=20, d=3, m=2)
    with pytest.raises(ValueError, match="diag.*cross|without diag"):
        aft.select("vtl", pool, target, k=2, kernel=object())
    with pytest.raises(ValueError, match="unknown kernel 'poly'"):
        aft.select("vtl", pool, target, k=2, kernel="poly")

    class Wrong:
        def diag(self, x):
            return jnp.ones(x.shape[0])

        def cross(self, x, y):
            return jnp.ones((x.shape[0], 2))

    with pytest.raises(ValueError, match=r"cross must return shape \[1, 20\]|cross must return"):
        aft.select("vtl", pool, target, k=2, kernel=Wrong())


@pytest.mark.parametrize("rule", ["ctl", "uncertainty"])
def test_prior_cov_is_the_linear_kernel_on_transformed_features(rule):
    """k(x, x') = xᵀ Σ x' equals the linear kernel on L-transformed rows (Σ = L Lᵀ)."""
    pool, target = random_problem(6, n=60, d=5, m=3)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 4))
    sigma = a @ a.T                                     # rank 4 of 5: singular
    chol = np.linalg.cholesky(sigma + 1e-12 * np.eye(5))
    with jax.enable_x64(True):
        kw = dict(k=5) if rule == "uncertainty" else dict(k=5, noise_std=0.4)
        tgt = None if rule in ("undirected_itl", "uncertainty") else target
        sel = aft.select(rule, pool, tgt, prior_cov=sigma, **kw)
        ref = aft.select(rule, pool @ chol, None if tgt is None else tgt @ chol, **kw)
    np.testing.assert_array_equal(sel.indices, ref.indices)
    np.testing.assert_allclose(sel.values, ref.values, rtol=1e-6, atol=1e-9)


def test_bad_prior_covariances_are_refused():
    pool, target = random_problem(7, n=20, d=3, m=2)
    for bad, msg in [(np.eye(4), r"\[3, 3\]"), (np.array([[1, 2, 0], [0, 1, 0], [0, 0, 1.0]]),
                     "symmetric"), (-np.eye(3), "positive semi-definite"),
                     (np.full((3, 3), np.nan), "NaN")]:
        with pytest.raises(ValueError, match=msg):
            aft.select("vtl", pool, target, k=2, prior_cov=bad)
    with pytest.raises(ValueError, match="feature map"):
        aft.select("vtl", pool, target, k=2, prior_cov=np.eye(3), kernel="rbf")


def test_rbf_default_is_the_median_heuristic_and_never_all_ties():
    """lengthscale 1 on d = 128 embeddings underflows every value; the median does not."""
    rng = np.random.default_rng(8)
    pool = rng.standard_normal((200, 128)).astype(np.float32)
    target = rng.standard_normal((4, 128)).astype(np.float32)
    with pytest.warns(RuntimeWarning, match="float32 could not resolve"):  # and says so
        fixed = aft.select("vtl", pool, target, k=5, kernel=kernels.RBF(1.0))
    assert np.ptp(np.asarray(fixed.values)) == 0          # the old default: all tie
    sel = aft.select("vtl", pool, target, k=5, kernel="rbf")
    d = np.sqrt(((pool[:, None] - pool[None]) ** 2).sum(-1))
    ell = np.median(d[np.triu_indices(200, 1)])
    ref = aft.select("vtl", pool, target, k=5, kernel=kernels.RBF(float(ell)))
    np.testing.assert_array_equal(sel.indices, ref.indices)
    assert len(set(np.asarray(sel.values).round(6))) > 1
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lengthscale"):
            aft.select("vtl", pool, target, k=2, kernel=kernels.RBF(bad))


@pytest.mark.parametrize("rule", ["itl", "undirected_itl"])
def test_nonsequential_ranks_the_first_scores(rule):
    """Each value is the score a one-pick greedy gives that point; picks are the top k."""
    pool, target = random_problem(9, n=40, d=4, m=3)
    tgt = None if rule == "undirected_itl" else target
    observed, candidates = [3, 11], np.arange(40) % 3 != 0
    pickable = candidates & ~np.isin(np.arange(40), observed)
    with jax.enable_x64(True):
        sel = aft.select(rule, pool, tgt, k=8, noise_std=0.5, nonsequential=True,
                         observed=observed, candidates=candidates)

        def first(only):   # the first greedy value with only one candidate (a traced mask)
            return aft.select(rule, pool, tgt, k=1, noise_std=0.5, observed=observed,
                              candidates=only).values[0]

        firsts = np.asarray(jax.vmap(first)(jnp.eye(40, dtype=bool)))
    firsts = np.where(pickable, firsts, -np.inf)
    np.testing.assert_allclose(np.asarray(sel.values), np.sort(firsts)[::-1][:8], rtol=1e-9)
    np.testing.assert_allclose(firsts[np.asarray(sel.indices)], np.asarray(sel.values), rtol=1e-9)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_undirected_vtl_in_kernel_space_matches_the_dense_greedy(dtype):
    pool, _ = random_problem(10, n=45, d=3, m=1)
    with jax.enable_x64(dtype == "float64"):
        kern = kernels.RBF(1.3)
        sel = aft.select("undirected_vtl", jnp.asarray(pool, dtype), k=7, noise_std=0.3,
                         kernel=kern, observed=[2, 9])
        runs = [sel]
        if dtype == "float64":  # small blocks: the streamed K·v pass runs over several
            small = aft.selection.undirected.UndirectedVTLKernelRule("kernel", False, block=8)
            inputs = aft.selection._setup.rule_inputs(
                aft.selection._setup.validate(jnp.asarray(pool, dtype), k=7, kernel=kern,
                                              observed=jnp.array([2, 9])),
                0.3, rows_per_observation=True)
            runs.append(aft.selection.greedy.greedy(small, inputs, k=7))
    idx, val = brute_force_greedy("undirected_vtl", pool, None, 7, 0.09,
                                  kernel=lambda x, y: rbf_kernel(x, y, 1.3), observed=[2, 9])
    rtol, atol = TOL[dtype]
    for got in runs:
        assert [int(i) for i in got.indices] == list(idx)
        np.testing.assert_allclose(np.asarray(got.values), val, rtol=20 * rtol,
                                   atol=20 * atol * np.max(np.abs(val)))


def test_itl_noiseless_drops_observed_targets_in_both_spaces():
    pool, target = random_problem(11, n=50, d=4, m=3)
    target = np.concatenate([target, pool[[4, 20]]])
    with jax.enable_x64(True):
        runs = [aft.select("itl_noiseless", pool, target, k=6, space=space,
                           drop_observed_targets=True) for space in ("weight", "kernel")]
        keep = aft.select("itl_noiseless", pool, target, k=6)
        itl = aft.select("itl", pool, target, k=6)
        # continuing from observed points = the same greedy run
        cont = aft.select("itl_noiseless", pool, target, k=4, drop_observed_targets=True,
                          observed=runs[0].indices[:2])
    np.testing.assert_array_equal(runs[0].indices, runs[1].indices)
    np.testing.assert_allclose(runs[0].values, runs[1].values, rtol=1e-8)
    np.testing.assert_array_equal(keep.indices, itl.indices)   # default: ITL without repeats
    np.testing.assert_array_equal(cont.indices, runs[0].indices[2:])
    np.testing.assert_allclose(cont.values, runs[0].values[2:], rtol=1e-8)
    with pytest.raises(ValueError, match="distinct targets"):
        aft.select("itl_noiseless", pool, np.concatenate([target, target[:1]]), k=2,
                   drop_observed_targets=True)
