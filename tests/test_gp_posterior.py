"""The GP posterior state and its rank-1 step against dense solves, f32 and f64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from activeft_jax import gp
from activeft_jax.kernels import RBF, Cosine, Linear

from helpers import TOL, linear_kernel, posterior_cov, random_problem, rbf_kernel

OBS = [3, 17, 3, 8, 25]  # includes a repeat: the posterior is defined with noise > 0
NOISE = 0.3


def _run(space, states, noise_var):
    for i in OBS:
        states = gp.condition(space, states, jnp.asarray(i), noise_var)
    return states


def _dense(pool, target, kernel, noise_free_targets_noise=None):
    X = np.concatenate([pool, target])
    K = kernel(X, X)
    n = pool.shape[0]
    A = list(range(n, X.shape[0]))
    S = posterior_cov(K, OBS, NOISE**2)
    return S[:n, :n].diagonal(), S[:n, n:], S[n:, n:].diagonal(), K, A


@pytest.mark.parametrize("space", ["weight", "kernel"])
def test_linear_posterior_matches_dense_solve(dtype, space):
    pool, target = random_problem(0, n=30, d=5, m=4)
    var_ref, cov_ref, var_a_ref, _, _ = _dense(pool, target, linear_kernel)
    P, A = jnp.asarray(pool, dtype), jnp.asarray(target, dtype)
    noise_var = jnp.asarray(NOISE**2, dtype)
    if space == "weight":
        sp, st = gp.WeightSpace(P), gp.init_weight_space(P, A, num_rows=len(OBS))
    else:
        sp, st = gp.KernelSpace(Linear(), P), gp.init_kernel_space(Linear(), P, A, num_rows=len(OBS))
    (st,) = _run(sp, (st,), noise_var)
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(st.var, var_ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(st.cov, cov_ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(st.var_target, var_a_ref, rtol=rtol, atol=atol)
    assert st.var.dtype == jnp.dtype(dtype)
    assert int(st.step) == len(OBS)


def test_rbf_posterior_matches_dense_solve(dtype):
    pool, target = random_problem(1, n=30, d=3, m=3)
    var_ref, cov_ref, var_a_ref, _, _ = _dense(pool, target, lambda x, y: rbf_kernel(x, y, 1.5))
    P, A = jnp.asarray(pool, dtype), jnp.asarray(target, dtype)
    kern = RBF(1.5)
    sp = gp.KernelSpace(kern, P)
    (st,) = _run(sp, (gp.init_kernel_space(kern, P, A, num_rows=len(OBS)),), jnp.asarray(NOISE**2, dtype))
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(st.var, var_ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(st.cov, cov_ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(st.var_target, var_a_ref, rtol=rtol, atol=atol)


def test_rows_are_the_cholesky_factor(dtype):
    """Kernel-space rows satisfy K(S,S) − VᵀV = posterior covariance (the full matrix)."""
    pool, _ = random_problem(2, n=30, d=4)
    P = jnp.asarray(pool, dtype)
    sp = gp.KernelSpace(Linear(), P)
    (st,) = _run(sp, (gp.init_kernel_space(Linear(), P, None, num_rows=len(OBS)),), jnp.asarray(NOISE**2, dtype))
    post = pool @ pool.T - np.asarray(st.rows, np.float64).T @ np.asarray(st.rows, np.float64)
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(post, posterior_cov(pool @ pool.T, OBS, NOISE**2), rtol=rtol, atol=atol)


@pytest.mark.parametrize("space", ["weight", "kernel"])
def test_conditioning_on_noisy_targets_first(dtype, space):
    """σ̃² state (ITL): the prior conditioned on y(A), then the same picks."""
    pool, target = random_problem(3, n=30, d=5, m=4)
    X = np.concatenate([pool, target])
    n = pool.shape[0]
    A = list(range(n, n + 4))
    ref = posterior_cov(X @ X.T, OBS + A, NOISE**2)[:n, :n].diagonal()
    P, T = jnp.asarray(pool, dtype), jnp.asarray(target, dtype)
    noise_var = jnp.asarray(NOISE**2, dtype)
    if space == "weight":
        base = gp.conditioned_precision_factor(T, noise_var)
        sp, st = gp.WeightSpace(P), gp.init_weight_space(P, None, num_rows=len(OBS), base=base)
    else:
        rows = gp.target_observation_rows(Linear(), P, T, noise_var)
        sp = gp.KernelSpace(Linear(), P)
        st = gp.init_kernel_space(Linear(), P, None, num_rows=len(OBS), prior_rows=rows)
    (st,) = _run(sp, (st,), noise_var)
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(st.var, ref, rtol=rtol, atol=atol)


def test_joint_condition_equals_separate(dtype):
    """Conditioning two states together (one pool pass) equals one at a time."""
    pool, target = random_problem(4, n=30, d=4, m=3)
    P, T = jnp.asarray(pool, dtype), jnp.asarray(target, dtype)
    nv = jnp.asarray(NOISE**2, dtype)
    base = gp.conditioned_precision_factor(T, nv)
    sp = gp.WeightSpace(P)
    a0, b0 = gp.init_weight_space(P, T, num_rows=5), gp.init_weight_space(P, None, num_rows=5, base=base)
    a, b = _run(sp, (a0, b0), nv)
    (a1,) = _run(sp, (a0,), nv)
    (b1,) = _run(sp, (b0,), nv)
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(a.var, a1.var, rtol=rtol, atol=atol)
    np.testing.assert_allclose(b.var, b1.var, rtol=rtol, atol=atol)


def test_conditioned_variance_has_no_cancellation_in_float32():
    """m ≥ d: Var[f(x) | y(A)] is tiny relative to k(x,x). The squared-norm form keeps
    float32 within 1e-3 of float64, where the difference form loses every digit."""
    rng = np.random.default_rng(0)
    d, m = 16, 64
    pool = rng.standard_normal((50, d))
    target = 10 * rng.standard_normal((m, d))
    noise_var = 1e-2
    exact = np.diag(pool @ np.linalg.inv(np.eye(d) + target.T @ target / noise_var) @ pool.T)
    G = gp.conditioned_precision_factor(jnp.asarray(target, jnp.float32), jnp.float32(noise_var))
    ours = gp.init_weight_space(jnp.asarray(pool, jnp.float32), None, num_rows=1, base=G).var
    np.testing.assert_allclose(ours, exact, rtol=1e-3)
    # The kernel-space difference (the reference's formula) in float32, for contrast:
    P, T = pool.astype(np.float32), target.astype(np.float32)
    kxa = P @ T.T
    diff = (P * P).sum(1) - np.einsum(
        "ij,ij->i", kxa, np.linalg.solve(T @ T.T + noise_var * np.eye(m, dtype=np.float32), kxa.T).T
    )
    assert np.max(np.abs(diff - exact) / exact) > 1e-2


def test_compressed_targets_are_exact(dtype):
    """m > d targets -> d pseudo-targets with the same Gram matrix, so VTL scores are unchanged."""
    rng = np.random.default_rng(5)
    pool, target = rng.standard_normal((30, 4)), rng.standard_normal((11, 4))
    T = jnp.asarray(target, dtype)
    R = gp.compress_targets(T)
    assert R.shape == (4, 4)
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(R.T @ R, target.T @ target, rtol=rtol, atol=10 * atol)
    P = jnp.asarray(pool, dtype)
    nv = jnp.asarray(NOISE**2, dtype)
    full = _run(gp.WeightSpace(P), (gp.init_weight_space(P, T, num_rows=5),), nv)[0]
    comp = _run(gp.WeightSpace(P), (gp.init_weight_space(P, R, num_rows=5),), nv)[0]
    np.testing.assert_allclose(jnp.sum(comp.cov**2, 1), jnp.sum(full.cov**2, 1), rtol=10 * rtol, atol=10 * atol)
    np.testing.assert_allclose(jnp.sum(comp.var_target), jnp.sum(full.var_target), rtol=10 * rtol)


def test_choose_space_by_cost():
    assert gp.choose_space(Linear(), 1000, 64) == "weight"
    assert gp.choose_space(Linear(), 50, 64) == "kernel"
    assert gp.choose_space(Cosine(), 1000, 64) == "weight"
    assert gp.choose_space(RBF(1.0), 1000, 64) == "kernel"
    assert gp.choose_space(Linear(), 1000, 64, "kernel") == "kernel"
    with pytest.raises(ValueError, match="feature map"):
        gp.choose_space(RBF(1.0), 1000, 64, "weight")
    with pytest.raises(ValueError, match="space"):
        gp.choose_space(Linear(), 10, 2, "nope")


def test_gradient_through_the_rank_one_steps_matches_dense():
    """d/dρ² and d/dφ of Σ_x σ²_n(x) after fixed picks, against the dense formula (f64)."""
    with jax.enable_x64(True):
        pool, _ = random_problem(6, n=30, d=4)
        P = jnp.asarray(pool)

        def ours(P, nv):
            st = gp.init_weight_space(P, None, num_rows=len(OBS))
            (st,) = _run(gp.WeightSpace(P), (st,), nv)
            return jnp.sum(st.var)

        def dense(P, nv):
            K = P @ P.T
            idx = jnp.asarray(OBS)
            Koo = K[jnp.ix_(idx, idx)] + nv * jnp.eye(len(OBS))
            post = jnp.diag(K) - jnp.sum(K[:, idx] * jnp.linalg.solve(Koo, K[idx, :]).T, axis=1)
            return jnp.sum(post)

        g_ours = jax.grad(ours, argnums=(0, 1))(P, 0.2)
        g_dense = jax.grad(dense, argnums=(0, 1))(P, 0.2)
        np.testing.assert_allclose(g_ours[0], g_dense[0], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(g_ours[1], g_dense[1], rtol=1e-8)


def test_vmap_over_noise_of_the_step():
    pool, target = random_problem(7, n=30, d=3, m=2)
    P, T = jnp.asarray(pool, jnp.float32), jnp.asarray(target, jnp.float32)

    def run(nv):
        st = gp.init_weight_space(P, T, num_rows=len(OBS))
        return _run(gp.WeightSpace(P), (st,), nv)[0].var

    noises = jnp.asarray([0.01, 0.1, 1.0], jnp.float32)
    batched = jax.vmap(run)(noises)
    for j, nv in enumerate(noises):
        np.testing.assert_allclose(batched[j], run(nv), rtol=1e-6, atol=1e-6)
