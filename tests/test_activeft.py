"""ActiveFT against direct dense implementations and the official code's golden runs.

The references here are written as the official code computes (dense [N, B]
similarities, exp without max-subtraction, the max of exp for the assignment,
torch-style Adam by hand): nothing is shared with the library's chunked,
scatter-add or pruned machinery.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import activeft_jax as aft
from activeft_jax.selection import _cpu
from activeft_jax.selection import prototypes as A
from activeft_jax.selection._nearest import nearest_unique
from helpers import assert_same_run

TOL = {"float32": 2e-5, "float64": 1e-11}
GOLDEN = np.load(os.path.join(os.path.dirname(__file__), "data", "activeft_official.npz"))
PROBLEMS = sorted({k.split("/")[0] for k in GOLDEN.files})


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def dense_loss(params, feats, tau, balance=1.0):
    """The official `get_loss`, line for line, in jnp (so jax.grad gives its gradient)."""
    protos = params / jnp.linalg.norm(params, axis=1, keepdims=True)
    prod = jnp.exp(feats @ protos.T / tau)
    pos = jnp.max(prod, axis=1)
    k = jnp.argmax(prod, axis=1)
    cent = jnp.sum(jnp.exp(jax.lax.stop_gradient(protos) @ protos.T / tau), axis=0)
    j = jnp.log(pos) - jnp.log(pos + cent[k] * balance)
    return -jnp.mean(j)


def dense_fit(feats, init, tau, steps, lr=1e-3, sgd=False):
    """Torch-style Adam (or plain SGD) on the dense loss; returns (params, losses)."""
    params = jnp.asarray(feats[init])
    m = jnp.zeros_like(params)
    v = jnp.zeros_like(params)
    losses = []
    grad_fn = jax.jit(jax.value_and_grad(dense_loss), static_argnums=())
    for t in range(1, steps + 1):
        loss, g = grad_fn(params, feats, tau)
        losses.append(float(loss))
        if sgd:
            params = params - lr * g
            continue
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        denom = jnp.sqrt(v) / np.sqrt(1 - 0.999**t) + 1e-8
        params = params - (lr / (1 - 0.9**t)) * m / denom
    return params, np.array(losses)


def official_dedup(protos, feats):
    """The official final step: full descending sort per prototype, first untaken, in order."""
    order = np.argsort(-(protos @ feats.T), axis=1, kind="stable")
    taken, out = set(), []
    for row in order:
        for j in row:
            if j not in taken:
                taken.add(int(j))
                out.append(int(j))
                break
    return np.array(out)


def _problem(seed, n=300, d=12, b=15, clustered=False):
    rng = np.random.default_rng(seed)
    if clustered:
        centers = rng.standard_normal((6, d))
        x = centers[rng.integers(0, 6, n)] + 0.3 * rng.standard_normal((n, d))
    else:
        x = rng.standard_normal((n, d))
    return _unit(x), rng.choice(n, b, replace=False)


# ----------------------------------------------------------------------------- loss and gradient


@pytest.mark.parametrize("balance", [1.0, 0.5])
@pytest.mark.parametrize("chunk_rows", [None, 37])
def test_loss_and_gradient_match_dense(dtype, balance, chunk_rows):
    feats, init = _problem(0)
    feats = jnp.asarray(feats, dtype)
    params = feats[init] + 0.05 * jnp.asarray(np.random.default_rng(1).standard_normal((15, 12)), dtype)
    tau = 0.1 if dtype == "float32" else 0.07
    ours, g = jax.value_and_grad(
        lambda p: A.activeft_loss(p, feats, temperature=tau, balance=balance, chunk_rows=chunk_rows))(params)
    ref, g_ref = jax.value_and_grad(lambda p: dense_loss(p, feats, tau, balance))(params)
    assert ours.dtype == jnp.dtype(dtype)
    np.testing.assert_allclose(ours, ref, rtol=TOL[dtype])
    scale = float(jnp.max(jnp.abs(g_ref)))
    np.testing.assert_allclose(g, g_ref, rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10 * scale)


def test_gradient_flows_only_through_assigned_prototypes():
    # A prototype no feature is assigned to gets only the diversity term's gradient.
    feats, _ = _problem(2, n=50, d=5)
    params = jnp.concatenate([jnp.asarray(feats[:4]), -jnp.ones((1, 5))])  # the last one is far away
    g = jax.grad(lambda p: A.activeft_loss(p, jnp.asarray(feats), temperature=0.07))(params)
    g_ref = jax.grad(lambda p: dense_loss(p, jnp.asarray(feats), 0.07))(params)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6)


def test_loss_takes_numpy_and_names_bad_shapes():
    # NumPy features used to fail inside the near-tie decision (a NumPy array indexed by a
    # traced index); the loss and its gradient are those of the same jax arrays.
    feats, init = _problem(3, n=60, d=6)
    params = np.asarray(feats[init[:5]] + 0.1, np.float32)
    want, g_want = jax.value_and_grad(A.activeft_loss)(jnp.asarray(params), jnp.asarray(feats))
    got, g = jax.value_and_grad(A.activeft_loss)(params, np.asarray(feats))
    assert got == want and bool((g == g_want).all())
    np.testing.assert_allclose(got, dense_loss(jnp.asarray(params), jnp.asarray(feats), 0.07),
                               rtol=TOL["float32"])
    with pytest.raises(ValueError, match="dimension 5 but `features` have 6"):
        A.activeft_loss(params[:, :5], feats)
    with pytest.raises(ValueError, match="rank 2"):
        A.activeft_loss(params, feats[0])


# ----------------------------------------------------------------------------- the fit


@pytest.mark.parametrize("clustered", [False, True])
def test_fit_matches_dense_adam_loop(dtype, clustered):
    feats, init = _problem(3, clustered=clustered)
    feats = np.asarray(feats, dtype)
    steps = 25
    params, losses = dense_fit(jnp.asarray(feats), init, 0.07, steps)
    fit = aft.selection.fit_activeft(feats, k=15, init_indices=init, steps=steps, prune=False)
    np.testing.assert_allclose(fit.losses, losses, rtol=TOL[dtype] * 5)
    np.testing.assert_allclose(fit.prototypes, _unit(np.asarray(params)), rtol=1e-4, atol=TOL[dtype] * 50)
    np.testing.assert_array_equal(fit.selection.indices, official_dedup(np.asarray(fit.prototypes), feats))
    np.testing.assert_array_equal(fit.init_indices, init)


def test_any_optax_optimizer():
    feats, init = _problem(4)
    params, losses = dense_fit(jnp.asarray(feats), init, 0.07, 15, lr=0.05, sgd=True)
    fit = aft.selection.fit_activeft(feats, k=15, init_indices=init, steps=15, optimizer=optax.sgd(0.05))
    np.testing.assert_allclose(fit.losses, losses, rtol=1e-5)
    np.testing.assert_allclose(fit.prototypes, _unit(np.asarray(params)), atol=1e-5)


#: Pruned and dense runs are the same bit for bit with XLA's default code generation
#: (tests/conftest.py): the cases marked run in a process of their own with it, one for each
#: path of the pruned fit. The others compare with `assert_same_run` (bit for bit with the
#: default code generation, within a few ulps under the suite's quicker flags).
DEFAULT_CODEGEN = pytest.mark.default_codegen


@pytest.mark.parametrize("clustered", [False, True])
@pytest.mark.parametrize("chunk_rows", [pytest.param(None, marks=DEFAULT_CODEGEN), 64])
def test_pruned_assignment_is_exact(clustered, chunk_rows):
    feats, init = _problem(5, n=700, d=10, b=40, clustered=clustered)
    kw = dict(k=40, init_indices=init, steps=60, chunk_rows=chunk_rows)
    dense = aft.selection.fit_activeft(feats, prune=False, **kw)
    # (other refresh values and pair bounds: test_pair_and_row_bounds_give_the_dense_run)
    for bounds, refresh, num_fast in [("auto", None, 32), ("rows", 0.05, 4)]:
        pruned = aft.selection.fit_activeft(feats, prune=True, bounds=bounds, refresh=refresh,
                                            num_fast=num_fast, **kw)
        np.testing.assert_array_equal(pruned.selection.indices, dense.selection.indices)
        assert_same_run(pruned.losses, dense.losses)
        assert float(pruned.recomputed[0]) == 1.0  # the first step computes everything
        if bounds == "auto":  # the defaults: later steps skip work
            assert float(jnp.mean(pruned.recomputed)) < 0.5


def test_chunking_does_not_change_results():
    feats, init = _problem(6, n=517, d=8, b=20)
    a = aft.selection.fit_activeft(feats, k=20, init_indices=init, steps=20, prune=False)
    b = aft.selection.fit_activeft(feats, k=20, init_indices=init, steps=20, prune=False, chunk_rows=50)
    np.testing.assert_array_equal(a.selection.indices, b.selection.indices)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-6)


@pytest.mark.parametrize("name", PROBLEMS)
def test_official_code_golden(name):
    feats = GOLDEN[f"{name}/features"]
    init = GOLDEN[f"{name}/init_indices"]
    losses = GOLDEN[f"{name}/losses"]
    fit = aft.selection.fit_activeft(feats, k=len(init), init_indices=init, steps=len(losses),
                                     temperature=float(GOLDEN[f"{name}/temperature"]))
    # The official script prints each loss with 6 decimals.
    np.testing.assert_allclose(fit.losses, losses, atol=2e-5)
    np.testing.assert_array_equal(np.sort(np.asarray(fit.selection.indices)), GOLDEN[f"{name}/indices"])


def test_select_dispatch_and_random_init():
    feats, _ = _problem(7)
    key = jax.random.key(3)
    sel = aft.select("activeft", feats, k=15, key=key, steps=10)
    fit = aft.selection.fit_activeft(feats, k=15, key=key, steps=10)
    np.testing.assert_array_equal(sel.indices, fit.selection.indices)
    assert len(set(np.asarray(fit.init_indices).tolist())) == 15
    other = aft.selection.fit_activeft(feats, k=15, key=jax.random.key(4), steps=10)
    assert not np.array_equal(other.init_indices, fit.init_indices)
    # picks are distinct and their values are the similarities to their prototypes
    idx = np.asarray(sel.indices)
    assert len(set(idx.tolist())) == 15
    np.testing.assert_allclose(sel.values, np.sum(feats[idx] * np.asarray(fit.prototypes), axis=1), atol=1e-5)


def test_fps_init_is_farthest_point_sampling():
    feats, _ = _problem(8, n=200, d=6)
    fit = aft.selection.fit_activeft(feats, k=12, key=jax.random.key(0), init="fps", steps=0)
    idx = [int(fit.init_indices[0])]
    dist = np.linalg.norm(feats - feats[idx[0]], axis=1)
    for _ in range(11):
        idx.append(int(np.argmax(dist)))
        dist = np.minimum(dist, np.linalg.norm(feats - feats[idx[-1]], axis=1))
    np.testing.assert_array_equal(fit.init_indices, idx)


def test_batch_mode():
    feats, init = _problem(9, n=400, d=8, b=10)
    key = jax.random.key(1)
    a = aft.selection.fit_activeft(feats, k=10, init_indices=init, key=key, steps=20, batch_size=100)
    b = aft.selection.fit_activeft(feats, k=10, init_indices=init, key=key, steps=20, batch_size=100)
    np.testing.assert_array_equal(a.losses, b.losses)
    c = aft.selection.fit_activeft(feats, k=10, init_indices=init, key=jax.random.key(2), steps=20,
                                   batch_size=100)
    assert not np.array_equal(a.losses, c.losses)
    # A batch of all N features is a permutation of the full pass: same fit up to round-off.
    full = aft.selection.fit_activeft(feats, k=10, init_indices=init, steps=20, prune=False)
    perm = aft.selection.fit_activeft(feats, k=10, init_indices=init, key=key, steps=20, batch_size=400)
    np.testing.assert_allclose(perm.losses, full.losses, rtol=1e-5)
    np.testing.assert_array_equal(perm.selection.indices, full.selection.indices)


@pytest.mark.parametrize("prune", [None, False])
def test_sweep_equals_loop(prune):
    # prune=None on CPU: pruned fits one after another (lax.map); False: vmapped dense fits.
    feats, _ = _problem(10, n=250, d=8)
    temps = jnp.array([0.05, 0.1, 0.3])
    keys = jax.random.split(jax.random.key(0), 2)
    sweep = aft.selection.activeft_sweep(feats, k=12, temperatures=temps, keys=keys, steps=15,
                                         prune=prune)
    assert sweep.selection.indices.shape == (3, 2, 12)
    assert sweep.losses.shape == (3, 2, 15)
    computed = np.asarray(sweep.recomputed)
    if prune is None:  # the pruned path ran: after the first step not every similarity
        assert np.all(computed[..., 0] == 1) and np.all(computed[..., 1:].mean(-1) < 0.9)
    else:
        np.testing.assert_array_equal(computed, 1)
    for i, t in enumerate(temps):
        for j in range(2):
            one = aft.selection.fit_activeft(feats, k=12, key=keys[j], temperature=float(t), steps=15,
                                             prune=prune)
            np.testing.assert_array_equal(sweep.selection.indices[i, j], one.selection.indices)
            np.testing.assert_array_equal(sweep.init_indices[i, j], one.init_indices)
            # (Vmapped, some sums round differently; pruned, the fit runs inside lax.map's
            # loop, where this suite's quick code generation can also round a sum
            # differently: XLA's default one gave the same bits.)
            np.testing.assert_allclose(sweep.losses[i, j], one.losses, rtol=1e-5)
            np.testing.assert_allclose(sweep.prototypes[i, j], one.prototypes, rtol=0, atol=1e-5)


def test_pruned_sweep_equals_dense_sweep():
    feats, _ = _problem(12, n=600, d=16)
    temps = jnp.array([0.07, 0.2])
    keys = jax.random.split(jax.random.key(4), 2)
    kw = dict(k=20, temperatures=temps, keys=keys, steps=40)
    pruned = aft.selection.activeft_sweep(feats, prune=True, **kw)
    dense = aft.selection.activeft_sweep(feats, prune=False, **kw)
    # Picks equal; the vmapped program rounds a few sums differently (an ulp of the loss).
    np.testing.assert_array_equal(pruned.selection.indices, dense.selection.indices)
    np.testing.assert_allclose(pruned.losses, dense.losses, rtol=1e-5)
    np.testing.assert_allclose(pruned.prototypes, dense.prototypes, rtol=0, atol=1e-5)
    assert np.asarray(pruned.recomputed).mean() < 0.5


@pytest.mark.parametrize("prune", [None, False])
def test_jit_and_vmap_over_keys(prune):
    feats, _ = _problem(11, n=120, d=6)
    keys = jax.random.split(jax.random.key(1), 3)
    f = jax.jit(jax.vmap(lambda key: aft.select("activeft", feats, k=8, key=key, steps=5, prune=prune)))
    out = f(keys)
    for j in range(3):
        one = aft.select("activeft", feats, k=8, key=keys[j], steps=5)
        np.testing.assert_array_equal(out.indices[j], one.indices)


def test_vmapped_pruned_fits_run_one_after_another():
    # Under vmap (CPU default: pruned) each fit keeps its branches (`_one_at_a_time`): the
    # compiled program has no batched dense step, and the fits equal the single ones.
    feats, _ = _problem(13, n=400, d=10)
    temps = jnp.array([0.05, 0.1])
    keys = jax.random.split(jax.random.key(5), 2)
    f = jax.jit(jax.vmap(jax.vmap(
        lambda t, key: aft.selection.fit_activeft(feats, k=12, key=key, temperature=t, steps=20),
        in_axes=(None, 0)), in_axes=(0, None)))
    fits = f(temps, keys)
    assert fits.selection.indices.shape == (2, 2, 12)
    assert np.all(np.asarray(fits.recomputed)[..., 1:].mean(-1) < 0.9)  # pruned
    for i in range(2):
        for j in range(2):
            one = aft.selection.fit_activeft(feats, k=12, key=keys[j], temperature=float(temps[i]),
                                             steps=20)
            np.testing.assert_array_equal(fits.selection.indices[i, j], one.selection.indices)
            np.testing.assert_allclose(fits.losses[i, j], one.losses, rtol=1e-5)
    # Every branch of the single fit stays a branch (plain vmap turns the ones whose
    # predicate differs between fits into selects that run both sides: 12 of 14 here).
    single = jax.jit(lambda t, key: aft.selection.fit_activeft(feats, k=12, key=key, temperature=t,
                                                               steps=20))
    cases = [g.lower(t, k).as_text().count("stablehlo.case")
             for g, t, k in ((f, temps, keys), (single, temps[0], keys[0]))]
    assert cases[0] == cases[1] > 0


# ----------------------------------------------------------------------------- the final de-duplication


@pytest.mark.parametrize("num_candidates", [1, 3, 32])
def test_dedup_matches_official_procedure(num_candidates):
    # Prototypes crowded around few features, so later ones find their best features taken
    # (and with few candidates they fall back to a full pass).
    rng = np.random.default_rng(12)
    feats = _unit(rng.standard_normal((90, 5)))
    protos = _unit(feats[rng.integers(0, 4, 30)] + 0.05 * rng.standard_normal((30, 5)))
    sel = nearest_unique(jnp.asarray(protos), jnp.asarray(feats), num_candidates=num_candidates,
                         chunk_rows=16)
    np.testing.assert_array_equal(sel.indices, official_dedup(protos, feats))
    np.testing.assert_allclose(sel.values, np.sum(protos * feats[np.asarray(sel.indices)], 1), atol=1e-6)


def test_dedup_with_bias_is_euclidean_nearest():
    rng = np.random.default_rng(13)
    pts = rng.standard_normal((60, 3)) * rng.uniform(0.5, 2, (60, 1))
    centers = pts[rng.integers(0, 60, 10)] + 0.1
    sel = nearest_unique(jnp.asarray(centers), jnp.asarray(pts), -0.5 * jnp.sum(jnp.asarray(pts) ** 2, 1),
                         num_candidates=2)
    taken, ref = set(), []
    for c in centers:
        for j in np.argsort(np.linalg.norm(pts - c, axis=1), kind="stable"):
            if j not in taken:
                taken.add(int(j))
                ref.append(int(j))
                break
    np.testing.assert_array_equal(sel.indices, ref)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=0), r"1 <= k <= N=50"),
    (dict(k=51), r"1 <= k <= N=50"),
    (dict(temperature=0.0), r"`temperature` must be finite and > 0"),
    (dict(temperature=-1.0), r"`temperature` must be finite and > 0"),
    (dict(learning_rate=0.0), r"`learning_rate`"),
    (dict(steps=-1), r"`steps` must be a Python int >= 0"),
    (dict(init="kmeans"), r"`init` must be 'random' or 'fps'"),
    (dict(batch_size=0), r"`batch_size` must be an int in \[1, N=50\]"),
    (dict(batch_size=10, prune=True), r"cannot be combined with `batch_size`"),
    (dict(key=None), r"needs `key`"),
    (dict(init_indices=np.arange(4)), r"`init_indices` must have shape \[5\]"),
    (dict(init_indices=np.array([0, 1, 2, 3, 3])), r"must be distinct"),
    (dict(init_indices=np.array([0, 1, 2, 3, 50])), r"must lie in \[0, N=50\)"),
    (dict(optimizer="adam"), r"optax.GradientTransformation"),
])
def test_bad_input(kwargs, match):
    feats = np.random.default_rng(0).standard_normal((50, 4))
    args = dict(k=5, key=jax.random.key(0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        aft.selection.fit_activeft(feats, **args)


def test_bad_features():
    feats = np.random.default_rng(0).standard_normal((50, 4))
    feats[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"`features` \(shape \(50, 4\)\) contains NaN or inf"):
        aft.select("activeft", feats, k=5, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"rank 2"):
        aft.select("activeft", np.ones(10), k=5, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"temperatures"):
        aft.selection.activeft_sweep(np.ones((10, 3)), k=2, temperatures=[0.1, -1.0],
                                     keys=jax.random.split(jax.random.key(0), 2))


@pytest.mark.parametrize("bounds,refresh,kernels", [
    ("pairs", None, True), ("pairs", 1.0, True), pytest.param("rows", None, True, marks=DEFAULT_CODEGEN),
    ("rows", 1.0, True), pytest.param("pairs", None, False, marks=DEFAULT_CODEGEN)])
def test_pair_and_row_bounds_give_the_dense_run(bounds, refresh, kernels, monkeypatch):
    # Clustered features: near ties, open pairs each step, blocks that score a few
    # prototypes and blocks that fall back to whole rows (B // 8 = 6 columns). On CPU
    # the failing rows of the pair bounds go to a kernel (`_cpu.refresh_pairs`); with
    # `kernels` False, to the blocks, as on other platforms.
    rng = np.random.default_rng(11)
    centers = rng.standard_normal((6, 12))
    feats = (centers[rng.integers(0, 6, 900)] + 0.4 * rng.standard_normal((900, 12))).astype(np.float32)
    init = rng.choice(900, 48, replace=False)
    kw = dict(k=48, init_indices=init, steps=40, chunk_rows=128)
    if not kernels:
        jax.clear_caches()
        monkeypatch.setattr(_cpu, "available", lambda: False)
    try:
        dense = aft.selection.fit_activeft(feats, prune=False, **kw)
        num_fast = 0 if refresh == 1.0 else 32  # (rows: with and without exactly scored prototypes)
        pruned = aft.selection.fit_activeft(feats, prune=True, bounds=bounds, refresh=refresh,
                                            num_fast=num_fast, **kw)
    finally:
        if not kernels:
            monkeypatch.undo()
            jax.clear_caches()
    np.testing.assert_array_equal(pruned.selection.indices, dense.selection.indices)
    assert_same_run(pruned.losses, dense.losses)
    assert_same_run(pruned.prototypes, dense.prototypes)
    work = np.asarray(pruned.recomputed)
    # The first step computes every similarity; with `refresh` 1.0 on CPU the pair
    # kernel takes the first step too, and skips the own pairs (the check pass has them).
    assert work[0] >= (1.0 - 1.0 / 48 if refresh == 1.0 else 1.0)
    assert np.all(work <= 1.0) and np.all(work >= 0.0)
    assert work[1:].mean() < (0.5 if bounds == "pairs" else 1.0)  # later steps skip work


def test_pair_bounds_are_rounded_up_to_half_precision(dtype):
    from activeft_jax.selection.prototypes import _gap_dtype, _round_up

    half = np.dtype(_gap_dtype(dtype))
    assert half == (np.float16 if dtype == "float32" else np.float32)
    rng = np.random.default_rng(4)
    v = np.concatenate([rng.uniform(-1, 1, 4000), rng.uniform(-9, 9, 4000) * 10.0 ** rng.integers(-6, 1, 4000),
                        [0.0, -0.0, 1.0, -0.5, 2.0 ** -20, np.inf, -np.inf]]).astype(dtype)
    up = np.asarray(_round_up(jnp.asarray(v), half))
    assert up.dtype == half
    # An upper bound, and the smallest one in the half type: the next value down is below v.
    assert np.all(up.astype(dtype) >= v)
    below = np.nextafter(up, np.asarray(-np.inf, half)).astype(dtype)
    finite = np.isfinite(v)
    assert np.all(below[finite] < v[finite])
    exact = up.astype(dtype) == v  # values the half type holds are kept as they are
    np.testing.assert_array_equal(exact, v.astype(half).astype(dtype) == v)


def test_pair_bounds_are_rounded_down_when_they_bound_angles(dtype):
    from activeft_jax.selection.prototypes import _gap_dtype, _round_down

    half = np.dtype(_gap_dtype(dtype))
    rng = np.random.default_rng(5)
    v = np.concatenate([rng.uniform(0, 4, 4000), rng.uniform(-1, 1, 2000) * 10.0 ** rng.integers(-6, 1, 2000),
                        [0.0, 1.0, 2.0 ** -20, np.inf, -np.inf]]).astype(dtype)
    down = np.asarray(_round_down(jnp.asarray(v), half))
    assert down.dtype == half and np.all(down.astype(dtype) <= v)
    above = np.nextafter(down, np.asarray(np.inf, half)).astype(dtype)  # the largest such value
    finite = np.isfinite(v)
    assert np.all(above[finite] > v[finite])


def test_angle_bounds_hold_on_the_whole_range(dtype):
    # The pair bounds store lower bounds on angles, arccos of similarities, and compare
    # them with upper bounds: both must hold for every cosine, ±1 and round-off past them.
    from activeft_jax.selection.prototypes import _acos_lower, _acos_upper

    x = np.concatenate([np.linspace(-1, 1, 200_001), 1 - np.logspace(-12, -1, 500),
                        -1 + np.logspace(-12, -1, 500), [-1.0, 0.0, 1.0]])
    xs = jnp.asarray(x, dtype)
    exact_of_given = np.arccos(np.clip(np.asarray(xs, np.float64), -1, 1))
    lo, hi = np.asarray(_acos_lower(xs), np.float64), np.asarray(_acos_upper(xs), np.float64)
    assert np.all(lo <= exact_of_given) and np.all(hi >= exact_of_given)
    assert np.max(hi - lo) < 4e-4  # tight: the bounds decide which pairs are recomputed
    past = jnp.asarray([1 + 1e-6, 1.01, -1 - 1e-6, -1.01], dtype)  # round-off past ±1: clipped
    np.testing.assert_array_less(np.asarray(_acos_lower(past)), [1e-12, 1e-12, np.pi, np.pi])
    assert np.all(np.asarray(_acos_upper(past)) >= [0, 0, np.pi - 1e-6, np.pi - 1e-6])


def test_step_angle_bounds_the_angle_each_prototype_turned(dtype):
    from activeft_jax.selection.prototypes import _step_angle

    rng = np.random.default_rng(6)
    a = _unit(rng.standard_normal((300, 16)))
    scale = 10.0 ** rng.uniform(-7, 0.5, (300, 1))  # from round-off to half a turn and more
    b = _unit(a + scale * rng.standard_normal((300, 16)))
    b[:3] = a[:3]            # no move
    b[3] = -a[3]             # a half turn
    got = np.asarray(_step_angle(jnp.asarray(b, dtype), jnp.asarray(a, dtype)), np.float64)
    a64, b64 = (np.asarray(jnp.asarray(v, dtype), np.float64) for v in (a, b))
    a64, b64 = _unit(a64), _unit(b64)
    true = np.arccos(np.clip(np.sum(a64 * b64, axis=1), -1, 1))
    assert np.all(got >= true)
    np.testing.assert_allclose(got, true, rtol=1e-3, atol=1e-3)


def test_chain_rank_is_a_greedy_nearest_neighbour_path():
    from activeft_jax.selection.prototypes import _chain_rank

    rng = np.random.default_rng(7)
    p = _unit(rng.standard_normal((40, 8))).astype(np.float32)
    rank = np.asarray(_chain_rank(jnp.asarray(p)))
    np.testing.assert_array_equal(np.sort(rank), np.arange(40))  # a permutation
    gram = p.astype(np.float64) @ p.T.astype(np.float64)
    path, seen = [0], {0}
    for _ in range(39):
        row = np.where([j in seen for j in range(40)], -np.inf, gram[path[-1]])
        path.append(int(np.argmax(row)))
        seen.add(path[-1])
    np.testing.assert_array_equal(np.argsort(rank), path)


@DEFAULT_CODEGEN
def test_pair_bounds_give_the_dense_run_with_exact_ties():
    # Repeated features: prototypes that start on copies of one feature score every
    # feature the same, so their two best are within round-off (rescored as whole rows);
    # and near copies, one ulp apart in one entry, whose prototypes differ below float32
    # round-off (decided on exact similarities, `_decide`, by both runs alike).
    rng = np.random.default_rng(13)
    base = rng.standard_normal((60, 10)) + 2.0 * rng.standard_normal((4, 10))[rng.integers(0, 4, 60)]
    feats = np.concatenate([base] * 6).astype(np.float32)
    twins = feats[:20].copy()
    twins[:, 0] = np.nextafter(twins[:, 0], np.float32(np.inf))
    feats = np.concatenate([feats, twins])
    init = np.concatenate([np.arange(0, 10), np.arange(60, 70), np.arange(360, 370),
                           rng.choice(np.arange(120, 360), 10, replace=False)])
    kw = dict(k=40, init_indices=init, steps=40, chunk_rows=64)
    dense = aft.selection.fit_activeft(feats, prune=False, **kw)
    pruned = aft.selection.fit_activeft(feats, prune=True, bounds="pairs", **kw)
    np.testing.assert_array_equal(pruned.selection.indices, dense.selection.indices)
    np.testing.assert_array_equal(pruned.losses, dense.losses)
    np.testing.assert_array_equal(pruned.prototypes, dense.prototypes)
    assert float(jnp.mean(pruned.recomputed[1:])) < 0.9


@DEFAULT_CODEGEN
def test_pair_bounds_give_the_dense_run_in_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(12)
        centers = rng.standard_normal((5, 10))
        feats = centers[rng.integers(0, 5, 500)] + 0.4 * rng.standard_normal((500, 10))
        init = rng.choice(500, 30, replace=False)
        kw = dict(k=30, init_indices=init, steps=30, chunk_rows=128)
        dense = aft.selection.fit_activeft(feats, prune=False, **kw)
        pruned = aft.selection.fit_activeft(feats, prune=True, bounds="pairs", **kw)
        assert pruned.losses.dtype == np.float64
        np.testing.assert_array_equal(pruned.selection.indices, dense.selection.indices)
        np.testing.assert_array_equal(pruned.losses, dense.losses)
        assert float(jnp.mean(pruned.recomputed[1:])) < 0.5


def test_first_argmax_is_argmax_with_ties():
    from activeft_jax.selection.prototypes import _first_argmax

    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, (200, 37)).astype(np.float32)  # many ties: the first one wins
    scores[5] = -np.inf
    scores[6, :] = 2.0
    np.testing.assert_array_equal(_first_argmax(jnp.asarray(scores)), np.argmax(scores, axis=1))
    # The transposed block (the dense assignment's): the first maximum down each column.
    np.testing.assert_array_equal(_first_argmax(jnp.asarray(scores.T), axis=0),
                                  np.argmax(scores, axis=1))


def test_exact_dot_is_the_float64_dot_of_the_float32_inputs():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 384)).astype(np.float32)
    y = rng.standard_normal((50, 384)).astype(np.float32)
    y[:25] = -x[:25] + np.float32(1e-3) * y[:25]    # heavy cancellation: dot ~ -|x|^2 + small
    y[25:30] = x[25:30] * np.float32(1e-20)          # tiny products
    hi, lo = jax.jit(A._exact_dot)(jnp.asarray(x), jnp.asarray(y))
    ref = np.sum(x.astype(np.float64) * y.astype(np.float64), axis=1)  # exact products
    scale = np.sum(np.abs(x.astype(np.float64) * y), axis=1)
    got = np.asarray(hi, np.float64) + np.asarray(lo, np.float64)
    np.testing.assert_array_less(np.abs(got - ref), 1e-13 * scale)
    # float32 alone is ~1e-7 off: the test can tell the two apart.
    assert np.max(np.abs(np.sum(x * y, axis=1) - ref) / scale) > 1e-9


def _near_copies(rng, n, d, centers, copies=2):
    """Unit prototypes in groups of `copies`, each copy one ulp from the first in its own
    entry, and features around them."""
    p = np.array(aft.kernels.l2_normalize(jnp.asarray(rng.standard_normal((centers, d)), jnp.float32)))
    groups = [p]
    for j in range(1, copies):
        q = p.copy()
        at = (np.arange(centers), (np.arange(centers) + 7 * j) % d)
        q[at] = np.nextafter(p[at], np.float32(1))
        groups.append(q)
    protos = np.concatenate(groups).astype(np.float32)
    feats = (p[rng.integers(0, centers, n)] * 3 + rng.standard_normal((n, d))).astype(np.float32)
    return protos, feats


@pytest.mark.parametrize("copies", [2, 7])
def test_assignment_decides_near_ties_on_exact_similarities(copies):
    # Prototypes one ulp apart: which one a feature is nearer to is far below float32
    # round-off (~1e-10 against ~1e-7), so a float32 argmax picks one by chance. (Given
    # unit-norm inputs as they are: which of two such prototypes wins also depends on
    # the last bit of each one's normalization.) Seven copies: more columns within the
    # margin than `_decide` takes in one pass.
    rng = np.random.default_rng(5)
    protos, feats = _near_copies(rng, 3000, 384, 6, copies)
    feats = np.asarray(aft.kernels.l2_normalize(jnp.asarray(feats)))
    exact = np.argmax(feats.astype(np.float64) @ protos.astype(np.float64).T, axis=1)
    float32 = np.argmax(np.asarray(A.matmul(jnp.asarray(feats), jnp.asarray(protos).T)), axis=1)
    assert np.sum(float32 != exact) > 100                # round-off decides these in float32
    if copies > A._TIE_CANDIDATES:                       # winners beyond the first pass
        assert np.sum(exact >= 6 * A._TIE_CANDIDATES) > 100
    assign = jax.jit(A._dense_assignment, static_argnums=2)
    for rows in (512, 3000):                             # chunked and in one block
        np.testing.assert_array_equal(np.asarray(assign(jnp.asarray(protos), jnp.asarray(feats), rows)),
                                      exact)
    # The dense assignment decides [B, C] blocks; the pruned paths' whole rows decide
    # [C, B] ones: the same exact winners.
    p32, f32 = jnp.asarray(protos), jnp.asarray(feats)
    rows_first = jax.jit(lambda f, p: A._decide(A.matmul(f, p.T), f, p))(f32, p32)
    np.testing.assert_array_equal(np.asarray(rows_first), exact)
    # float64 input is decided on its matmul.
    with jax.enable_x64(True):
        got = assign(jnp.asarray(protos, jnp.float64), jnp.asarray(feats, jnp.float64), 512)
        np.testing.assert_array_equal(np.asarray(got), exact)


def test_pruning_is_chosen_by_platform_and_size():
    from activeft_jax.selection.prototypes import _PAIR_BOUNDS_LIMIT, _choose_pruning

    assert _choose_pruning(None, "auto", None, 1000, 10, "cpu") == "pairs"
    assert _choose_pruning(None, "auto", None, _PAIR_BOUNDS_LIMIT, 2, "cpu") == "rows"
    assert _choose_pruning(None, "auto", None, 1000, 10, "gpu") == "off"
    assert _choose_pruning(None, "auto", None, 1000, 10, "tpu") == "off"
    assert _choose_pruning(True, "auto", None, 1000, 10, "gpu") == "pairs"
    assert _choose_pruning(None, "auto", 100, 1000, 10, "cpu") == "off"
    assert _choose_pruning(True, "rows", None, 1000, 10, "cpu") == "rows"
    with pytest.raises(ValueError, match="bounds"):
        _choose_pruning(True, "elkan", None, 1000, 10, "cpu")


@pytest.mark.parametrize("clustered", [False, True])
def test_pair_bounds_assign_as_the_dense_argmax_every_step(clustered):
    # Step by step: the pruned assignment of each step is the dense argmax of that
    # step's prototypes, and the loss sees the same s_i (so the two runs stay equal).
    feats, init = _problem(8, n=600, d=24, b=30, clustered=clustered)
    kw = dict(k=30, init_indices=init, steps=25, chunk_rows=128)
    solver = aft.selection.activeft_solver(feats, prune=True, bounds="pairs", **kw)
    state = solver.init()
    skipped = []
    for _ in range(kw["steps"]):
        before = np.asarray(state.params)  # (step donates the state)
        state = solver.step(state)
        np.testing.assert_array_equal(state.bounds.assign,
                                      aft.selection.assign_to_prototypes(before, feats,
                                                                         chunk_rows=128))
        skipped.append(1.0 - float(state.recomputed[int(state.step) - 1]))
    dense = aft.selection.fit_activeft(feats, prune=False, **kw)
    fit = solver.finish(state)
    np.testing.assert_array_equal(fit.selection.indices, dense.selection.indices)
    assert_same_run(fit.losses, dense.losses)   # step programs against the fit's scan
    assert skipped[0] == 0.0 and max(skipped[1:]) > 0.5  # later steps skip most of the matmul


def test_own_similarity_does_not_depend_on_the_block_shape():
    # XLA's own reductions change their order with the block's row count (seen at d = 10,
    # 64 rows); the fixed tree gives every row the same bits in any block.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((700, 10), dtype=np.float32))
    p = jnp.asarray(rng.standard_normal((40, 10), dtype=np.float32))
    c = jnp.asarray(rng.integers(0, 40, 700).astype(np.int32))
    whole = jax.jit(A._own_similarity)(x, p, c)
    for rows in (1, 7, 64, 512):
        part = jax.jit(A._own_similarity)(x[:rows], p, c[:rows])
        np.testing.assert_array_equal(part, whole[:rows])
    np.testing.assert_allclose(whole, np.sum(np.asarray(x) * np.asarray(p)[np.asarray(c)], 1),
                               rtol=1e-5, atol=1e-5)
