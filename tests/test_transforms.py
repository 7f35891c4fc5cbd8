"""jit vs eager, vmap over noise / targets / keys, the pool sharded over 8 devices, no retraces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import activeft_jax as aft

from helpers import TOL, count_traces, random_problem

GP_RULES = ["itl", "vtl", "ctl", "mmitl", "undirected_itl", "undirected_vtl"]
ALL = GP_RULES + ["uncertainty", "cosine", "maxdist", "random"]


def _kwargs(rule):
    return {"key": jax.random.key(0)} if rule in ("maxdist", "random") else {}


@pytest.mark.parametrize("rule", GP_RULES + ["maxdist"])
def test_jit_and_eager_give_identical_picks(rule):
    with jax.enable_x64(True):
        pool, target = random_problem(30, n=32, d=5, m=3)
        P, T = jnp.asarray(pool), jnp.asarray(target)
        kw = _kwargs(rule)
        plain = aft.select(rule, P, T, k=5, noise_std=0.4, **kw)
        jitted = jax.jit(lambda P, T, s: aft.select(rule, P, T, k=5, noise_std=s, **kw))(P, T, 0.4)
        with jax.disable_jit():
            eager = aft.select(rule, P, T, k=5, noise_std=0.4, **kw)
        for other in (jitted, eager):
            np.testing.assert_array_equal(other.indices, plain.indices)
            np.testing.assert_allclose(other.values, plain.values, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule", GP_RULES)
def test_vmap_over_noise_std_equals_a_loop(rule):
    pool, target = random_problem(31, n=40, d=6, m=4)
    P, T = jnp.asarray(pool, jnp.float32), jnp.asarray(target, jnp.float32)
    noises = jnp.asarray([0.05, 0.3, 1.0, 3.0], jnp.float32)
    batched = jax.vmap(lambda s: aft.select(rule, P, T, k=6, noise_std=s))(noises)
    assert batched.indices.shape == (4, 6)
    for j, s in enumerate(noises):
        one = aft.select(rule, P, T, k=6, noise_std=float(s))
        np.testing.assert_array_equal(batched.indices[j], one.indices)
        # batched and single calls sum in different orders: float32 round-off
        rtol, atol = TOL["float32"]
        np.testing.assert_allclose(batched.values[j], one.values, rtol=rtol, atol=atol)


@pytest.mark.parametrize("rule", ["itl", "vtl", "ctl", "mmitl", "cosine"])
def test_vmap_over_stacked_target_sets_equals_a_loop(rule):
    rng = np.random.default_rng(32)
    P = jnp.asarray(rng.standard_normal((40, 6)), jnp.float32)
    targets = jnp.asarray(rng.standard_normal((3, 4, 6)), jnp.float32)
    batched = jax.vmap(lambda T: aft.select(rule, P, T, k=5, noise_std=0.5))(targets)
    for j in range(3):
        one = aft.select(rule, P, targets[j], k=5, noise_std=0.5)
        np.testing.assert_array_equal(batched.indices[j], one.indices)
        np.testing.assert_allclose(batched.values[j], one.values, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rule", ["maxdist", "random"])
def test_vmap_over_keys_equals_a_loop(rule):
    pool, _ = random_problem(33, n=40, d=3)
    keys = jax.random.split(jax.random.key(7), 5)
    batched = jax.vmap(lambda key: aft.select(rule, pool, k=6, key=key))(keys)
    for j in range(5):
        one = aft.select(rule, pool, k=6, key=keys[j])
        np.testing.assert_array_equal(batched.indices[j], one.indices)


def test_vmap_over_rbf_lengthscale():
    pool, target = random_problem(34, n=40, d=3, m=3)
    ells = jnp.asarray([0.7, 1.5, 3.0])
    batched = jax.vmap(lambda ell: aft.select("vtl", pool, target, k=5, noise_std=0.3,
                                              kernel=aft.kernels.RBF(ell)))(ells)
    for j, ell in enumerate(ells):
        one = aft.select("vtl", pool, target, k=5, noise_std=0.3, kernel=aft.kernels.RBF(float(ell)))
        np.testing.assert_array_equal(batched.indices[j], one.indices)


@pytest.mark.parametrize("rule", ALL)
def test_pool_sharded_over_8_devices_gives_the_same_picks(rule):
    assert len(jax.devices()) == 8, "conftest.py sets 8 host devices"
    pool, target = random_problem(35, n=64, d=6, m=4)
    P, T = jnp.asarray(pool, jnp.float32), jnp.asarray(target, jnp.float32)
    mesh = Mesh(np.array(jax.devices()), ("pool",))
    P_sharded = jax.device_put(P, NamedSharding(mesh, PartitionSpec("pool", None)))
    assert len(P_sharded.sharding.device_set) == 8
    kw = _kwargs(rule)
    single = aft.select(rule, P, T, k=8, noise_std=0.5, **kw)
    sharded = aft.select(rule, P_sharded, T, k=8, noise_std=0.5, **kw)
    np.testing.assert_array_equal(sharded.indices, single.indices)
    np.testing.assert_allclose(sharded.values, single.values, rtol=1e-5, atol=1e-5)


def test_no_retrace_for_new_values_of_the_same_shapes():
    pool, target = random_problem(36, n=40, d=6, m=4)
    P, T = jnp.asarray(pool, jnp.float32), jnp.asarray(target, jnp.float32)
    aft.select("vtl", P, T, k=4, noise_std=0.5)
    with count_traces("_greedy_full") as traced:
        aft.select("vtl", P + 1, T * 2, k=4, noise_std=0.7)
        aft.select("vtl", P - 1, T, k=4, noise_std=1.5)
    assert traced.count == 0


def test_progress_bar_chunks_give_identical_picks(capsys):
    """Chunked execution (for the progress bar) is the same scan split in pieces."""
    with jax.enable_x64(True):
        pool, target = random_problem(37, n=50, d=6, m=4)
        P, T = jnp.asarray(pool), jnp.asarray(target)
        for rule in ("itl", "vtl", "maxdist"):
            kw = _kwargs(rule)
            plain = aft.select(rule, P, T, k=13, **kw)
            with_bar = aft.select(rule, P, T, k=13, progress=True, **kw)
            np.testing.assert_array_equal(with_bar.indices, plain.indices)
            np.testing.assert_allclose(with_bar.values, plain.values, rtol=1e-10)
    err = capsys.readouterr().err
    assert "itl:" in err and "/13 " in err and "pick/s" in err


def test_values_are_differentiable_with_respect_to_noise():
    """For fixed picks, d(values)/d(noise_std) by autodiff matches finite differences."""
    with jax.enable_x64(True):
        pool, target = random_problem(38, n=30, d=5, m=3)

        def total(s):
            return jnp.sum(aft.select("vtl", pool, target, k=4, noise_std=s).values)

        g = jax.grad(total)(0.7)
        h = 1e-6
        fd = (total(0.7 + h) - total(0.7 - h)) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-5)
