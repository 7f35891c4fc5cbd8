"""`observed=` (the labelled points) and `candidates=` (the pickable points) on every strategy.

The GP rules condition on the observed points before the first pick, so
select(k=10, observed=first 10 picks) continues the greedy run of select(k=20);
checked exactly in float64 and against a dense brute-force posterior in float32
and float64. Every strategy never picks an observed or a non-candidate point.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import activeft_jax as aft
from helpers import (
    TOL,
    brute_force_greedy,
    count_traces,
    official_probcover,
    official_typiclust,
    random_problem,
)

GREEDY = ["vtl", "itl", "ctl", "mmitl", "undirected_itl", "undirected_vtl", "maxdist"]
TARGETED = {"vtl", "itl", "ctl", "mmitl"}
ALL = ["itl", "vtl", "ctl", "mmitl", "undirected_itl", "undirected_vtl", "uncertainty", "cosine",
       "maxdist", "random", "kmeans", "kmeans_pp", "typiclust", "probcover", "information_density",
       "max_entropy", "activeft"]


def _args(rule, pool, target):
    kw = {}
    if rule in TARGETED or rule in ("cosine", "information_density"):
        kw["target"] = target
    if rule in ("maxdist", "random", "kmeans", "kmeans_pp", "typiclust", "activeft"):
        kw["key"] = jax.random.key(3)
    if rule in ("information_density", "max_entropy"):
        logits = np.random.default_rng(1).standard_normal((pool.shape[0], 4))
        kw["probs"] = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
    if rule == "activeft":
        kw["steps"] = 20
    if rule == "typiclust":
        kw["max_clusters"] = 10
    return kw


@pytest.mark.parametrize("form", ["indices", "mask"])
@pytest.mark.parametrize("rule", GREEDY)
def test_observed_continues_the_greedy_run_exactly_in_float64(rule, form):
    with jax.enable_x64(True):
        pool, target = random_problem(50, n=70, d=6, m=5)
        kw = _args(rule, pool, target)
        full = aft.select(rule, pool, k=20, noise_std=0.7, **kw)
        first = np.asarray(full.indices[:10])
        observed = first if form == "indices" else np.isin(np.arange(70), first)
        rest = aft.select(rule, pool, k=10, noise_std=0.7, observed=observed, **kw)
        np.testing.assert_array_equal(rest.indices, full.indices[10:])
        np.testing.assert_allclose(rest.values, full.values[10:], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("rule", ["vtl", "itl", "ctl", "undirected_itl"])
def test_observed_in_kernel_space_rbf(rule):
    """RBF: kernel space, where every observed point takes a row of the state."""
    with jax.enable_x64(True):
        pool, target = random_problem(51, n=60, d=4, m=3)
        kernel = aft.kernels.RBF(1.5)
        kw = _args(rule, pool, target)
        full = aft.select(rule, pool, k=14, noise_std=0.5, kernel=kernel, **kw)
        first = np.asarray(full.indices[:6])
        mask = np.isin(np.arange(60), first)
        for observed in (first, mask):  # indices: their length; a mask: its count, bucketed
            rest = aft.select(rule, pool, k=8, noise_std=0.5, kernel=kernel, observed=observed, **kw)
            np.testing.assert_array_equal(rest.indices, full.indices[6:])
        # a traced mask needs a static bound on the count
        f = jax.jit(lambda m: aft.select(rule, pool, k=8, noise_std=0.5, kernel=kernel,
                                         observed=m, max_observed=10, **kw).indices)
        np.testing.assert_array_equal(f(mask), full.indices[6:])
        with pytest.raises(ValueError, match="max_observed"):
            jax.jit(lambda m: aft.select(rule, pool, k=8, kernel=kernel, observed=m, **kw))(mask)


@pytest.mark.parametrize("rule", ["vtl", "itl", "ctl", "mmitl", "undirected_itl", "undirected_vtl"])
def test_observed_and_candidates_against_a_dense_posterior(rule, dtype):
    pool, target = random_problem(52, n=30, d=4, m=3)
    rng = np.random.default_rng(5)
    observed = rng.choice(30, 6, replace=False)
    candidates = rng.random(30) < 0.6
    ref_idx, ref_val = brute_force_greedy(rule, pool, None if rule.startswith("undirected") else target,
                                          5, 0.5**2, observed=observed, candidates=candidates)
    kw = {"target": target.astype(dtype)} if rule in TARGETED else {}
    sel = aft.select(rule, pool.astype(dtype), k=5, noise_std=0.5, observed=observed,
                     candidates=candidates, **kw)
    np.testing.assert_array_equal(sel.indices, ref_idx)
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(sel.values, ref_val, rtol=rtol * 10, atol=atol * 10)


def _maxdist_reference(pool, centers, k, candidates=None):
    d2 = ((pool[:, None] - pool[None]) ** 2).sum(-1)
    centers, picks = list(centers), []
    for _ in range(k):
        dist = d2[:, centers].min(axis=1)
        dist[centers] = -np.inf
        if candidates is not None:
            dist[~candidates] = -np.inf
        i = int(np.argmax(dist))
        centers.append(i)
        picks.append(i)
    return picks


def test_maxdist_takes_observed_points_as_centres():
    pool, _ = random_problem(53, n=40, d=3, m=1)
    observed = np.array([3, 17, 29])
    candidates = np.arange(40) % 3 != 0
    sel = aft.select("maxdist", pool, k=6, key=jax.random.key(0), observed=observed,
                     candidates=candidates)
    assert sel.indices.tolist() == _maxdist_reference(pool, observed, 6, candidates)
    assert np.all(np.isfinite(sel.values))  # no random first pick: there are centres


@pytest.mark.parametrize("rule", ALL)
def test_observed_and_non_candidates_are_never_picked(rule):
    pool, target = random_problem(54, n=60, d=5, m=4)
    kw = _args(rule, pool, target)
    rng = np.random.default_rng(9)
    observed = rng.choice(60, 12, replace=False)
    candidates = rng.random(60) < 0.7
    for repeats in ([False, True] if rule in GREEDY else [False]):
        extra = {"allow_repeats": True} if repeats else {}
        sel = aft.select(rule, pool, k=8, observed=observed, candidates=candidates, **kw, **extra)
        picks = np.asarray(sel.indices)
        assert picks.shape == (8,)
        assert not np.isin(picks, observed).any(), (rule, picks)
        assert candidates[picks].all(), (rule, picks)
        if not repeats:
            assert len(set(picks.tolist())) == 8, (rule, picks)


@pytest.mark.parametrize("rule", ["uncertainty", "cosine", "random", "kmeans", "kmeans_pp",
                                  "information_density", "max_entropy", "activeft"])
def test_exclusion_only_rules_pick_the_best_remaining(rule):
    """kmeans, activeft, random and the top-k rules only exclude: their picks are those of
    a run without `observed` with the observed points skipped."""
    pool, target = random_problem(55, n=50, d=4, m=3)
    kw = _args(rule, pool, target)
    free = aft.select(rule, pool, k=5, **kw)
    first = np.asarray(free.indices[:2])
    sel = aft.select(rule, pool, k=5, observed=first, **kw)
    assert not np.isin(np.asarray(sel.indices), first).any()
    if rule in ("uncertainty", "cosine", "information_density", "max_entropy"):
        # top-k: the next ones of the same order
        longer = aft.select(rule, pool, k=7, **kw)
        np.testing.assert_array_equal(sel.indices, longer.indices[2:])


def _blobs(seed, sizes, d, spread, sep):
    rng = np.random.default_rng(seed)
    centers = sep * rng.standard_normal((len(sizes), d))
    x = np.concatenate([c + spread * rng.standard_normal((s, d)) for c, s in zip(centers, sizes)])
    return x.astype(np.float32)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_typiclust_with_a_labelled_set_matches_the_official_loop():
    x = _blobs(3, [60, 45, 30, 25, 4], d=3, spread=0.4, sep=2.0)
    key = jax.random.key(2)
    labelled = np.array([0, 1, 2, 61, 62])   # two clusters already hold labels
    budget = 4
    sel = aft.select("typiclust", x, k=budget, key=key, observed=labelled)
    fit = aft.selection.fit_kmeans(x, k=len(labelled) + budget, key=key, iters=100, normalize=True)
    ref = official_typiclust(_unit(x.astype(np.float64)), np.asarray(fit.assign), budget,
                             labelled=labelled)
    np.testing.assert_array_equal(sel.indices, ref)
    # a traced mask (|L| not static) gives the same clusters and picks
    mask = np.isin(np.arange(len(x)), labelled)
    traced = jax.jit(lambda m: aft.select("typiclust", x, k=budget, key=key, observed=m,
                                          max_clusters=30).indices)(mask)
    np.testing.assert_array_equal(traced, ref)


def test_probcover_counts_the_labelled_balls_as_covered():
    x = np.random.default_rng(6).standard_normal((120, 4))
    labelled = [5, 40, 77]
    sel = aft.select("probcover", x, k=12, delta=0.8, observed=np.array(labelled))
    picks, counts = official_probcover(_unit(x), 0.8, 12, labelled)
    np.testing.assert_array_equal(sel.indices, picks)
    np.testing.assert_array_equal(sel.values, counts)


def test_a_fixed_pool_with_changing_masks_never_retraces():
    pool, target = random_problem(56, n=80, d=5, m=3)
    P, T = jnp.asarray(pool, jnp.float32), jnp.asarray(target, jnp.float32)
    labelled = np.zeros(80, bool)
    picks = []
    with count_traces("_greedy_full") as traced:
        for _ in range(3):
            sel = aft.select("vtl", P, T, k=5, noise_std=0.5, observed=labelled)
            picks.extend(np.asarray(sel.indices).tolist())
            labelled = labelled.copy()
            labelled[np.asarray(sel.indices)] = True
    assert traced.count == 1
    assert len(set(picks)) == 15
    once = aft.select("vtl", P, T, k=15, noise_std=0.5)
    assert picks == np.asarray(once.indices).tolist()  # rounds continue one greedy run


def test_traced_masks_with_too_few_pickable_points_give_minus_one_never_a_repeat():
    pool, target = random_problem(57, n=20, d=3, m=2)
    candidates = np.zeros(20, bool)
    candidates[[2, 5, 9]] = True
    for rule in ["vtl", "maxdist", "uncertainty", "kmeans_pp"]:
        kw = _args(rule, pool, target)
        f = jax.jit(lambda c: aft.select(rule, pool, k=5, candidates=c, **kw))
        sel = f(candidates)
        got = np.asarray(sel.indices)
        assert sorted(got[:3].tolist()) == [2, 5, 9], (rule, got)
        assert got[3:].tolist() == [-1, -1], (rule, got)
        assert np.all(np.asarray(sel.values)[3:] == -np.inf)


@pytest.mark.parametrize("kwargs, match", [
    (dict(observed=np.array([0, 25])), r"`observed` indices must lie in \[0, N=20\)"),
    (dict(observed=np.array([-1])), r"`observed` indices must lie"),
    (dict(observed=np.ones(19, bool)), r"`observed` as a bool mask must have shape \[20\]"),
    (dict(observed=np.ones((2, 2), int)), r"`observed` must be a \[N\] bool mask or \[n\] int"),
    (dict(observed=np.ones(3, float)), r"`observed` must be a bool mask or integer indices"),
    (dict(candidates=np.ones(20, int)), r"`candidates` must be a bool mask of shape \[20\]"),
    (dict(candidates=np.ones(21, bool)), r"`candidates` must be a bool mask of shape \[20\]"),
    (dict(candidates=np.arange(20) < 3), r"`candidates` leave 3 pool point\(s\).*k=4"),
    (dict(observed=np.arange(18)), r"`observed` leave 2 pool point\(s\)"),
])
def test_bad_masks_raise_one_value_error_naming_the_argument(kwargs, match):
    pool, target = random_problem(58, n=20, d=3, m=2)
    for rule in ["vtl", "kmeans", "probcover", "uncertainty"]:
        kw = _args(rule, pool, target)
        with pytest.raises(ValueError, match=match):
            aft.select(rule, pool, k=4, **kw, **kwargs)


def test_sift_conditions_every_prompt_on_the_observed_points():
    """Observed points condition each prompt's GP (wherever they are) and are never candidates."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(11)
        pool = _unit(rng.standard_normal((200, 6)))
        prompts = _unit(rng.standard_normal((3, 6)))
        observed = np.array([4, 50, 120])
        sel = aft.sift(pool, prompts, k=4, prefilter=30, lambda_=0.1, observed=observed)
        for p in range(3):
            cand = np.argsort(-np.abs(pool @ prompts[p]), kind="stable")
            cand = cand[~np.isin(cand, observed)][:30]
            # dense posterior on [observed, candidates, prompt]
            X = np.concatenate([pool[observed], pool[cand], prompts[p:p + 1]])
            K = X @ X.T
            obs, picks = list(range(3)), []
            for _ in range(4):
                best, best_v = None, -np.inf
                for j in range(30):
                    o = obs + [3 + j]
                    Koo = K[np.ix_(o, o)] + 0.1 * np.eye(len(o))
                    v = K[-1, -1] - K[-1, o] @ np.linalg.solve(Koo, K[o, -1])
                    if -v > best_v:
                        best, best_v = j, -v
                obs.append(3 + best)
                picks.append(int(cand[best]))
            assert sel.indices[p].tolist() == picks


def test_the_command_line_takes_observed_and_candidates(tmp_path, capsys):
    import json

    from activeft_jax import cli

    pool, target = random_problem(59, n=40, d=4, m=2)
    np.savez(tmp_path / "d.npz", pool=pool.astype(np.float32), target=target.astype(np.float32),
             observed=np.array([1, 5, 9]), candidates=np.arange(40) % 2 == 0)
    (tmp_path / "obs.json").write_text(json.dumps([1, 5, 9]))
    base = ["select", "--strategy", "vtl", "--pool", str(tmp_path / "d.npz"), "--target",
            str(tmp_path / "d.npz"), "--k", "4", "--noise-std", "0.5"]
    ref = aft.select("vtl", pool.astype(np.float32), target.astype(np.float32), k=4,
                     noise_std=0.5, observed=np.array([1, 5, 9]),
                     candidates=np.arange(40) % 2 == 0)
    for observed in (str(tmp_path / "d.npz"), str(tmp_path / "obs.json")):
        assert cli.main(base + ["--observed", observed, "--candidates", str(tmp_path / "d.npz")]) == 0
        assert json.loads(capsys.readouterr().out)["indices"] == np.asarray(ref.indices).tolist()
    np.save(tmp_path / "bad.npy", np.array([1, 99]))
    assert cli.main(base + ["--observed", str(tmp_path / "bad.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`observed` indices must lie in [0, N=40)" in err


def test_a_users_jitted_round_with_new_masks_is_traced_once():
    """`observed` and `candidates` are traced: a user's jitted selection never retraces."""
    import chex

    pool, target = random_problem(60, n=50, d=4, m=2)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def pick(observed, candidates):
        return aft.select("itl", pool, target, k=3, noise_std=0.5, observed=observed,
                          candidates=candidates).indices

    rng = np.random.default_rng(0)
    labelled = np.zeros(50, bool)
    for _ in range(3):
        picks = np.asarray(pick(labelled, rng.random(50) < 0.8))
        assert not labelled[picks].any()
        labelled[picks] = True
