"""A pool split along N over 8 CPU devices, on meshes from `jax.make_mesh` (Explicit axes, its
default in JAX 0.10) and with Auto axes: every strategy gives the single-device picks, returns
them replicated on the mesh, and its compiled program never all-gathers a pool-sized array."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

import activeft_jax as aft

N, D = 2048, 16
STRATEGIES = ["vtl", "itl", "ctl", "mmitl", "undirected_itl", "undirected_vtl", "uncertainty",
              "cosine", "maxdist", "random", "kmeans", "kmeans_pp", "typiclust", "probcover",
              "information_density", "max_entropy", "min_margin", "activeft"]
KEYED = {"maxdist", "random", "kmeans", "kmeans_pp", "typiclust", "activeft"}


def _problem():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((12, D))
    pool = (centers[rng.integers(0, 12, N)] + 0.5 * rng.standard_normal((N, D))).astype(np.float32)
    target = (centers[:3] + 0.3 * rng.standard_normal((3, D))).astype(np.float32)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(rng.standard_normal((N, 5))), axis=-1),
                       np.float32)
    observed = np.zeros(N, bool)
    observed[rng.choice(N, 40, replace=False)] = True
    return pool, target, probs, observed


POOL, TARGET, PROBS, OBSERVED = _problem()


def _kwargs(rule):
    kw = {"noise_std": 0.7}
    if rule in ("vtl", "itl", "ctl", "mmitl", "cosine", "information_density"):
        kw["target"] = TARGET
    if rule in KEYED:
        kw["key"] = jax.random.key(1)
    if rule == "activeft":
        kw["steps"] = 15
    if rule == "typiclust":
        kw["max_clusters"] = 40
        kw["iters"] = 10
    if rule == "kmeans":
        kw["iters"] = 10
    return kw


def _select(rule, pool, observed=None, probs=None):
    kw = _kwargs(rule)
    if rule in ("information_density", "max_entropy", "min_margin"):
        kw["probs"] = PROBS if probs is None else probs
    if rule in ("max_entropy", "min_margin"):
        return aft.select(rule, None, k=12, observed=observed, **kw)
    return aft.select(rule, pool, k=12, observed=observed, **kw)


MESHES = {
    "explicit": lambda: jax.make_mesh((8,), ("data",)),
    "auto": lambda: jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,)),
    "auto-2d": lambda: jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2),
    "explicit-2d": lambda: jax.make_mesh((4, 2), ("data", "model")),
}


def _put(x, mesh):
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec("data", *([None] * (x.ndim - 1)))))


def _gathers(text: str) -> list[int]:
    """Element counts of every all-gather in a compiled HLO module."""
    sizes = []
    for line in text.splitlines():
        if re.search(r"\ball-gather(-start)?\(", line):
            m = re.search(r"=\s*\(?\s*\w+\[([\d,]*)\]", line)
            dims = [int(v) for v in m.group(1).split(",") if v] if m else []
            sizes.append(int(np.prod(dims)) if dims else 1)
    return sizes


SINGLE = {}


def _single(rule, observed):
    key = (rule, observed is not None)
    if key not in SINGLE:
        SINGLE[key] = _select(rule, POOL, observed)
    return SINGLE[key]


#: Every strategy on a 1-D mesh with `jax.make_mesh`'s defaults (Explicit axes); one of each
#: kind of computation with Auto axes, and on 2-D meshes (the pool split over one of two axes).
KINDS = ("vtl", "itl", "maxdist", "kmeans", "typiclust", "activeft")
CASES = ([(rule, "explicit") for rule in STRATEGIES] + [(rule, "auto") for rule in KINDS]
         + [(rule, kind) for kind in ("auto-2d", "explicit-2d")
            for rule in ("vtl", "kmeans", "activeft")])


@pytest.mark.parametrize("rule, mesh_kind", CASES, ids=[f"{r}-{m}" for r, m in CASES])
def test_split_pool_gives_the_single_device_picks_and_never_gathers_the_pool(rule, mesh_kind):
    """One compiled program per case: its HLO has no pool-sized all-gather, and running it
    gives the single-device picks (with and without observed points), replicated on the mesh."""
    mesh = MESHES[mesh_kind]()
    pool, probs, observed = _put(POOL, mesh), _put(PROBS, mesh), _put(OBSERVED, mesh)

    def f(pool, probs, observed):
        return _select(rule, pool, observed, probs)

    compiled = jax.jit(f).lower(pool, probs, observed).compile()
    big = [s for s in _gathers(compiled.as_text()) if s >= N // 2]
    assert not big, f"{rule} ({mesh_kind}) all-gathers arrays of {big} elements"
    split = compiled(pool, probs, observed)
    single = _single(rule, OBSERVED)
    np.testing.assert_array_equal(split.indices, single.indices, err_msg=f"{rule} {mesh_kind}")
    finite = np.isfinite(np.asarray(single.values))
    scale = np.max(np.abs(np.asarray(single.values)[finite]), initial=0) + 1
    np.testing.assert_allclose(np.asarray(split.values)[finite], np.asarray(single.values)[finite],
                               rtol=2e-4, atol=2e-4 * scale)
    assert split.indices.sharding.is_fully_replicated
    assert split.indices.sharding.device_set == set(mesh.devices.flat)
    if mesh_kind == "explicit":  # the eager call, without observed points, too
        eager = _select(rule, pool, None, probs)
        np.testing.assert_array_equal(eager.indices, _single(rule, None).indices)


OPTION_CASES = {
    "vtl-nonsequential": ("vtl", dict(nonsequential=True)),
    "undirected_itl-nonsequential": ("undirected_itl", dict(nonsequential=True)),
    "vtl-prior_cov": ("vtl", dict(prior_cov=np.diag(np.linspace(0.5, 2, D)))),
    "vtl-max_target_size": ("vtl", dict(max_target_size=2, key=jax.random.key(3))),
    "vtl-rbf-median": ("vtl", dict(kernel="rbf")),
    "itl_noiseless-drop": ("itl_noiseless", dict(drop_observed_targets=True)),
}


@pytest.mark.parametrize("mesh_kind", ["explicit", "auto"])
def test_options_of_the_gp_rules_on_a_split_pool(mesh_kind):
    """Non-sequential scores, a prior covariance, target subsampling, the RBF's median
    lengthscale and ITLNoiseless's dropped targets give the single-device picks."""
    mesh = MESHES[mesh_kind]()
    pool = _put(POOL, mesh)
    # Auto axes: the one option with its own sharding code (the median's replicated sample)
    names = list(OPTION_CASES) if mesh_kind == "explicit" else ["vtl-rbf-median"]
    for name in names:
        rule, kw = OPTION_CASES[name]
        target = None if rule.startswith("undirected") else TARGET
        single = aft.select(rule, POOL, target, k=8, noise_std=0.7, **kw)
        split = aft.select(rule, pool, target, k=8, noise_std=0.7, **kw)
        np.testing.assert_array_equal(split.indices, single.indices, err_msg=name)
    with pytest.raises(ValueError, match="one device"):
        aft.select("undirected_vtl", pool, k=3, kernel="rbf")


@pytest.mark.parametrize("mesh_kind", ["explicit", "auto"])
def test_sift_and_retrieval_on_a_split_pool(mesh_kind):
    mesh = MESHES[mesh_kind]()
    pool = _put(POOL, mesh)
    prompts = POOL[:5] + 0.1
    one = aft.sift(POOL, prompts, k=6, prefilter=64, lambda_=0.05, observed=OBSERVED)
    split = aft.sift(pool, prompts, k=6, prefilter=64, lambda_=0.05, observed=_put(OBSERVED, mesh))
    np.testing.assert_array_equal(split.indices, one.indices)
    top1 = aft.retrieval.top_k(prompts, POOL, k=50, metric="abs")
    top8 = aft.retrieval.top_k(prompts, pool, k=50, metric="abs")
    np.testing.assert_array_equal(top8.indices, top1.indices)
    # Only the per-device top-K lists ([P, D·K] = 2 × 8 × 32 here) and the picked rows travel.
    text = jax.jit(lambda p: aft.sift(p, prompts[:2], k=6, prefilter=32)).lower(pool).compile().as_text()
    assert not [s for s in _gathers(text) if s >= N // 2]


def test_activeft_solver_keeps_its_bounds_split_between_steps():
    mesh = MESHES["explicit"]()
    pool = _put(POOL, mesh)
    solver = aft.selection.activeft_solver(pool, k=20, key=jax.random.key(0), steps=6, prune=True)
    state = solver.init()
    for _ in range(3):
        state = solver.step(state, 2)
    assert state.bounds.assign.sharding.spec[0] == "data"
    fit = solver.finish(state)
    ref = aft.selection.fit_activeft(POOL, k=20, key=jax.random.key(0), steps=6, prune=True)
    np.testing.assert_array_equal(fit.selection.indices, ref.selection.indices)
    np.testing.assert_allclose(fit.losses, ref.losses, rtol=1e-5)


@pytest.mark.parametrize("mesh_kind", ["explicit", "auto"])
def test_activeft_sweep_on_a_split_pool(mesh_kind):
    """The sweep's pruned fits (one after another, the CPU default) and a vmap of select on a
    split pool: the single-device picks, and no pool-sized all-gather in the compiled programs."""
    mesh = MESHES[mesh_kind]()
    pool = _put(POOL, mesh)
    kw = dict(k=12, temperatures=jnp.array([0.07, 0.2]), keys=jax.random.split(jax.random.key(2), 2),
              steps=8)
    split = aft.selection.activeft_sweep(pool, **kw)
    one = aft.selection.activeft_sweep(POOL, **kw)
    np.testing.assert_array_equal(split.selection.indices, one.selection.indices)
    np.testing.assert_allclose(split.losses, one.losses, rtol=1e-5)
    assert np.asarray(split.recomputed)[..., 1:].mean() < 1  # pruned
    # (Only the de-duplication's per-device candidate lists travel: [k, 8 devices x 8].)
    text = jax.jit(lambda p: aft.selection.activeft_sweep(p, **kw)).lower(pool).compile().as_text()
    assert not [s for s in _gathers(text) if s >= N // 2]
    # A vmap of select over the keys: pruned fits one after another, on the split pool too.
    f = jax.jit(jax.vmap(lambda key, p: aft.select("activeft", p, k=12, key=key, steps=8).indices,
                         in_axes=(0, None)))
    out = f(kw["keys"], pool)
    for j, key in enumerate(kw["keys"]):
        np.testing.assert_array_equal(out[j], aft.select("activeft", POOL, k=12, key=key,
                                                         steps=8).indices)
    assert not [s for s in _gathers(f.lower(kw["keys"], pool).compile().as_text()) if s >= N // 2]


# ----------------------------------------------------------------------------- several processes


def test_two_processes_joined_by_jax_distributed_give_the_one_process_picks(tmp_path):
    """2 processes × 4 CPU devices (gloo collectives), the pool built from process-local rows."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    import multiprocess_problem as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    here = Path(__file__).parent
    # the job replaces the device count in XLA_FLAGS; other flags (conftest's) pass on
    env = dict(__import__("os").environ)
    env["PYTHONPATH"] = str(here) + ":" + env.get("PYTHONPATH", "")
    procs = [subprocess.Popen([sys.executable, str(here / "_multiprocess_job.py"), str(pid),
                               str(port), str(tmp_path / f"p{pid}.json")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for pid in (0, 1)]
    try:
        # the one-process reference, computed while the two processes run (they spend much
        # of their time waiting on each other's collectives)
        pool, target, observed = mp.problem()
        refs = {rule: np.asarray(mp.select(aft, rule, pool, target, observed).indices).tolist()
                for rule in mp.RULES}
        ref_sift = aft.sift(pool, target, k=4, prefilter=40, lambda_=0.05, observed=observed)
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    results = [__import__("json").loads((tmp_path / f"p{pid}.json").read_text()) for pid in (0, 1)]

    for rule in mp.RULES:
        for pid in (0, 1):
            assert results[pid]["picks"][rule] == refs[rule], (rule, pid)
            assert results[pid]["replicated"][rule], rule
    for pid in (0, 1):
        assert results[pid]["picks"]["sift"] == np.asarray(ref_sift.indices).tolist()
    # bad input: the same ValueError on both processes, naming the argument
    assert results[0]["errors"] == results[1]["errors"]
    errors = results[0]["errors"]
    assert "`pool`" in errors["nan"] and f"index ({mp.N // 2 + 3}, 2)" in errors["nan"]
    assert "`observed` indices must lie" in errors["observed"]
    assert "`candidates` leave 2 pool point(s)" in errors["candidates"]
