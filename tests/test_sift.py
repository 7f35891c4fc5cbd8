"""Exact top-K retrieval and SIFT (prefilter by |<x, q>| + VTL with repeats), vs NumPy references."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import activeft_jax as aft
from activeft_jax import retrieval
from activeft_jax.cli import main as cli_main
from activeft_jax.selection.sift import adaptive_steps


def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _np_scores(q, pool, metric):
    s = q @ pool.T
    if metric == "abs":
        return np.abs(s)
    if metric == "cosine":
        return s / np.linalg.norm(q, axis=1)[:, None] / np.linalg.norm(pool, axis=1)[None, :]
    return s


def _np_top_k(q, pool, k, metric):
    # best first, ties to the lower index
    return np.argsort(-_np_scores(q, pool, metric), axis=1, kind="stable")[:, :k]


# ----------------------------------------------------------------------------- retrieval


@pytest.mark.parametrize("metric", retrieval.METRICS)
@pytest.mark.parametrize("chunk_rows", [None, 37, 1000])
def test_top_k_matches_numpy_argsort(metric, chunk_rows):
    rng = np.random.default_rng(0)
    pool, q = rng.standard_normal((1000, 12)), rng.standard_normal((7, 12))
    with jax.enable_x64(True):
        res = retrieval.top_k(q, pool, k=25, metric=metric, chunk_rows=chunk_rows)
        ref = _np_top_k(q, pool, 25, metric)
        np.testing.assert_array_equal(res.indices, ref)
        np.testing.assert_allclose(res.values, np.take_along_axis(_np_scores(q, pool, metric), ref, 1),
                                   rtol=1e-12)
    assert res.indices.dtype == jnp.int32


@pytest.mark.parametrize("metric", retrieval.METRICS)
def test_top_k_ties_go_to_the_lower_index_across_chunks(metric):
    rng = np.random.default_rng(1)
    base = rng.integers(-2, 3, size=(40, 4)).astype(np.float32)
    pool = np.concatenate([base, base, -base, base])        # many exact ties, over chunk borders
    q = rng.integers(-2, 3, size=(5, 4)).astype(np.float32) + np.float32(0.5)
    ref = _np_top_k(q.astype(np.float64), pool.astype(np.float64), 30, metric)
    for chunk_rows in (None, 30, 47):
        res = retrieval.top_k(q, pool, k=30, metric=metric, chunk_rows=chunk_rows)
        np.testing.assert_array_equal(res.indices, ref)


def test_top_k_sharded_over_8_devices_equals_single_device():
    assert jax.device_count() == 8
    rng = np.random.default_rng(2)
    pool, q = rng.standard_normal((800, 16)).astype(np.float32), rng.standard_normal((9, 16)).astype(np.float32)
    mesh = Mesh(np.array(jax.devices()), ("pool",))
    sharded = jax.device_put(pool, NamedSharding(mesh, PartitionSpec("pool", None)))
    assert len(sharded.sharding.device_set) == 8
    for metric in retrieval.METRICS:
        single = retrieval.top_k(q, pool, k=150, metric=metric)            # k > 100 rows per shard
        split = retrieval.top_k(q, sharded, k=150, metric=metric, chunk_rows=32)
        np.testing.assert_array_equal(split.indices, single.indices)
        np.testing.assert_allclose(split.values, single.values, rtol=1e-6)
    # SIFT on a sharded pool: same picks
    a = aft.sift(pool, q, k=5, prefilter=40, lambda_=0.1)
    b = aft.sift(sharded, q, k=5, prefilter=40, lambda_=0.1)
    np.testing.assert_array_equal(a.indices, b.indices)


def test_top_k_jits_and_approx_runs():
    rng = np.random.default_rng(3)
    pool, q = rng.standard_normal((500, 8)).astype(np.float32), rng.standard_normal((4, 8)).astype(np.float32)
    jitted = jax.jit(lambda q, p: retrieval.top_k(q, p, k=10, chunk_rows=64))(q, pool)
    np.testing.assert_array_equal(jitted.indices, _np_top_k(q, pool, 10, "ip"))
    approx = retrieval.top_k(q, pool, k=10, approx=True, recall_target=1.0, chunk_rows=64)
    assert approx.indices.shape == (4, 10)   # exact on CPU
    np.testing.assert_array_equal(approx.indices, _np_top_k(q, pool, 10, "ip"))


def test_top_k_bad_input():
    pool, q = np.ones((10, 3)), np.ones((2, 3))
    with pytest.raises(ValueError, match="metric"):
        retrieval.top_k(q, pool, k=2, metric="l2")
    with pytest.raises(ValueError, match="`k`"):
        retrieval.top_k(q, pool, k=11)
    with pytest.raises(ValueError, match="`queries`"):
        retrieval.top_k(np.ones((2, 4)), pool, k=2)
    with pytest.raises(ValueError, match="chunk_rows"):
        retrieval.top_k(q, pool, k=2, chunk_rows=0)


# ----------------------------------------------------------------------------- SIFT reference


def _ref_sift(pool, q, k, K, lam):
    """Per prompt, float64: top-K by |<x, q>|, then dense VTL greedy with repeats.

    VTL value of candidate x after picks S: −Var[f(q) | y(S ∪ {x})], from the
    dense (|S|+1)² noisy kernel matrix; returns indices, values and σ²_n(q).
    """
    cand = np.argsort(-np.abs(pool @ q), kind="stable")[:K]
    X = pool[cand]
    picks, values, variances = [], [], []
    for _ in range(k):
        best, best_v = None, -np.inf
        for j in range(K):
            S = X[picks + [j]]
            G = S @ S.T + lam * np.eye(len(S))
            c = S @ q
            v = -(q @ q - c @ np.linalg.solve(G, c))
            if v > best_v + 1e-12:
                best, best_v = j, v
        picks.append(best)
        values.append(best_v)
        variances.append(-best_v)
    return cand[picks], np.array(values)


def test_sift_matches_a_dense_float64_reference_for_several_prompts():
    rng = np.random.default_rng(4)
    pool, prompts = _unit(rng, 600, 10), _unit(rng, 5, 10)
    with jax.enable_x64(True):
        sel = aft.sift(pool, prompts, k=6, prefilter=30, lambda_=0.01)
    for p in range(5):
        idx, val = _ref_sift(pool, prompts[p], 6, 30, 0.01)
        np.testing.assert_array_equal(sel.indices[p], idx)
        np.testing.assert_allclose(sel.values[p], val, rtol=1e-8, atol=1e-10)
    # float32 gives the same picks here
    sel32 = aft.sift(pool.astype(np.float32), prompts.astype(np.float32), k=6, prefilter=30)
    np.testing.assert_array_equal(sel32.indices, sel.indices)


def test_sift_repeats_a_point_when_it_is_still_the_best():
    # d = 2: after a few picks the same candidates keep being the most informative
    rng = np.random.default_rng(5)
    pool, prompts = _unit(rng, 50, 2), _unit(rng, 2, 2)
    with jax.enable_x64(True):
        sel = aft.sift(pool, prompts, k=8, prefilter=10, lambda_=0.1)
        for p in range(2):
            idx, _ = _ref_sift(pool, prompts[p], 8, 10, 0.1)
            np.testing.assert_array_equal(sel.indices[p], idx)
    assert len(set(np.asarray(sel.indices[0]).tolist())) < 8


def test_sift_vmap_over_prompts_equals_a_loop_and_jit():
    rng = np.random.default_rng(6)
    pool, prompts = _unit(rng, 400, 8).astype(np.float32), _unit(rng, 6, 8).astype(np.float32)
    batch = aft.sift(pool, prompts, k=4, prefilter=20, lambda_=0.05)
    for p in range(6):
        one = aft.sift(pool, prompts[p:p + 1], k=4, prefilter=20, lambda_=0.05)
        np.testing.assert_array_equal(one.indices[0], batch.indices[p])
        np.testing.assert_allclose(one.values[0], batch.values[p], rtol=1e-5)
    jitted = jax.jit(lambda lam: aft.sift(pool, prompts, k=4, prefilter=20, lambda_=lam))(0.05)
    np.testing.assert_array_equal(jitted.indices, batch.indices)
    via_select = aft.select("sift", pool, prompts, k=4, prefilter=20, noise_std=np.sqrt(0.05))
    np.testing.assert_array_equal(via_select.indices, batch.indices)


def test_adaptive_steps_follow_the_posterior_variance():
    rng = np.random.default_rng(7)
    pool, prompts = _unit(rng, 500, 10), _unit(rng, 4, 10)
    prompts[3] *= 0.1                                     # prior variance 0.01: needs no pick
    thr = 0.3
    with jax.enable_x64(True):
        sel = aft.sift(pool, prompts, k=6, prefilter=40, lambda_=0.01, adaptive=thr)
    for p in range(4):
        idx, val = _ref_sift(pool, prompts[p], 6, 40, 0.01)
        var = np.concatenate([[prompts[p] @ prompts[p]], -val])     # σ²_0..σ²_k of the prompt
        below = np.flatnonzero(var <= thr)
        expect = int(below[0]) if below.size else 6
        assert int(sel.steps[p]) == expect
        np.testing.assert_array_equal(sel.indices[p], idx)
    assert int(sel.steps[3]) == 0
    # unit steps of the rule itself
    vals = jnp.array([[-0.5, -0.2, -0.1], [-0.9, -0.8, -0.7]])
    np.testing.assert_array_equal(adaptive_steps(jnp.array([1.0, 1.0]), vals, 0.2), [2, 3])


def test_sift_bad_input():
    pool, prompts = np.ones((20, 3)), np.ones((2, 3))
    cases = [
        (dict(prompts=np.ones((0, 3))), "prompts"),
        (dict(prefilter=2, k=3), "`k`"),
        (dict(prefilter=21), "prefilter"),
        (dict(prompts=np.ones((2, 4))), "prompts"),
        (dict(lambda_=0.0), "lambda_"),
        (dict(lambda_=-1.0), "lambda_"),
        (dict(adaptive=-0.1), "adaptive"),
        (dict(prompts=np.full((2, 3), np.nan)), "prompts"),
    ]
    for change, name in cases:
        kw = dict(pool=pool, prompts=prompts, k=3, prefilter=10, lambda_=0.01)
        kw.update(change)
        with pytest.raises(ValueError, match=name):
            aft.sift(**kw)
    with pytest.raises(ValueError, match="option"):
        aft.select("sift", pool, prompts, k=2, bogus=1)


def test_cli_sift(tmp_path, capsys):
    rng = np.random.default_rng(8)
    pool, prompts = _unit(rng, 300, 8).astype(np.float32), _unit(rng, 3, 8).astype(np.float32)
    np.savez(tmp_path / "in.npz", pool=pool, prompts=prompts)
    np.save(tmp_path / "prompts.npy", prompts)
    out = tmp_path / "sel.json"
    assert cli_main(["sift", "--pool", str(tmp_path / "in.npz"), "--prompts", str(tmp_path / "prompts.npy"),
                     "--k", "4", "--prefilter", "30", "--lambda", "0.02", "--adaptive", "0.5",
                     "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    ref = aft.sift(pool, prompts, k=4, prefilter=30, lambda_=0.02, adaptive=0.5)
    assert got["indices"] == np.asarray(ref.indices).tolist()
    np.testing.assert_allclose(got["values"], ref.values, rtol=1e-6)
    assert got["steps"] == np.asarray(ref.steps).tolist()
    capsys.readouterr()
    for argv, word in [(["--lambda", "0"], "--lambda"), (["--prefilter", "301"], "--prefilter"),
                       (["--k", "201"], "--k")]:
        assert cli_main(["sift", "--pool", str(tmp_path / "in.npz"), "--prompts",
                         str(tmp_path / "in.npz")] + argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and word in err and "Traceback" not in err
