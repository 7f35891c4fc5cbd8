"""The reference's remaining surface against its golden outputs (issue 14).

tests/data/reference_surface.{npz,json} were written by
experiments/benchmarks/reference/run_ref_surface.py, which ran the PyTorch
`activeft` 0.1.1 in exact mode on seeded problems: `force_nonsequential`, a
model's own kernel (RBF, polynomial), a latent covariance, and the law of the
picks under target subsampling over 400 torch seeds.
"""

import itertools
import json
import math
import os
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import activeft_jax as aft
from activeft_jax import kernels

DATA = os.path.join(os.path.dirname(__file__), "data", "reference_surface")
with open(DATA + ".json") as f:
    META = json.load(f)
ARRAYS = np.load(DATA + ".npz")
OURS = {"ITL": "itl", "VTL": "vtl", "CTL": "ctl", "MMITL": "mmitl",
        "UndirectedITL": "undirected_itl", "UndirectedVTL": "undirected_vtl",
        "ITLNoiseless": "itl_noiseless"}


class Poly:
    """A user's kernel object: (xᵀy / d + 1)², no feature map (kernel space)."""

    def diag(self, x):
        return jnp.square(jnp.sum(x * x, axis=1) / x.shape[1] + 1.0)

    def cross(self, x, y):
        return jnp.square(x @ y.T / x.shape[1] + 1.0)


def _kernel_of(case):
    if case.get("kernel") == "rbf":
        return kernels.RBF(META["rbf_lengthscale"])
    if case.get("kernel") == "poly":
        return Poly()
    return None


def _problem(case, dtype):
    pool = jnp.asarray(ARRAYS[case["problem"] + "/pool"], dtype)
    target = jnp.asarray(ARRAYS[case["problem"] + "/target"], dtype)
    return pool, target


DETERMINISTIC = [c for c, v in META["cases"].items() if v["problem"] != "subsample"]


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_same_picks_as_the_reference(name):
    case = META["cases"][name]
    with jax.enable_x64(True):
        pool, target = _problem(case, jnp.float64)
        opts = dict(k=case["k"], noise_std=case["noise_std"], kernel=_kernel_of(case))
        if case["rule"] == "ITLNoiseless":
            opts["drop_observed_targets"] = case["drop_observed_targets"]
        else:
            opts["allow_repeats"] = True
        if case["problem"] == "nonseq":
            opts["nonsequential"] = True
        if case["problem"] == "latent":
            opts["prior_cov"] = jnp.asarray(ARRAYS["latent/sigma"], jnp.float64)
        ref_idx, ref = case["indices"], np.asarray(case["values"])
        if name == "kernel_rbf/UndirectedITL":
            # Every RBF prior variance is 1: the first pick is a tie (the reference's is
            # random); continue from its first pick.
            assert np.allclose(ref[0], 1.0)
            opts.update(k=case["k"] - 1, observed=[ref_idx[0]])
            ref_idx, ref = ref_idx[1:], ref[1:]
        sel = aft.select(OURS[case["rule"]], pool, target, **opts)
        ours = [int(i) for i in sel.indices]
        values = np.asarray(sel.values)
    assert ours == ref_idx
    scale = max(1.0, float(np.max(np.abs(ref))))
    np.testing.assert_allclose(values, ref, rtol=2e-3, atol=1e-4 * scale)


def _law(case):
    """Exact law of the pick sequence: every subset of the kept size is equally likely."""
    pool, target = _problem(case, jnp.float64)
    m = target.shape[0]
    opts = case["options"]
    size = math.ceil(opts.get("subsampled_target_frac", 1.0) * m)
    size = min(size, opts.get("max_target_size") or m)
    subsets = list(itertools.combinations(range(m), size))
    law = Counter()
    for sub in subsets:
        sel = aft.select("vtl", pool, target[np.array(sub)], k=case["k"],
                         noise_std=case["noise_std"], allow_repeats=True)
        law[" ".join(str(int(i)) for i in sel.indices)] += 1 / len(subsets)
    return law


def _chi2_pvalue(counts, law):
    from scipy import stats

    keys = sorted(law)
    assert set(counts) <= set(keys), set(counts) - set(keys)   # no impossible outcome
    total = sum(counts.values())
    observed = np.array([counts.get(key, 0) for key in keys], float)
    expected = np.array([law[key] * total for key in keys])
    return stats.chisquare(observed, expected).pvalue


SUBSAMPLE = [c for c, v in META["cases"].items() if v["problem"] == "subsample"]


@pytest.mark.parametrize("name", SUBSAMPLE)
def test_target_subsampling_has_the_reference_law(name):
    """The reference's picks over 400 torch seeds and ours over 300 keys follow the exact law."""
    case = META["cases"][name]
    opts = case["options"]
    ours_opts = {"max_target_size": opts.get("max_target_size"),
                 "target_fraction": opts.get("subsampled_target_frac", 1.0)}
    with jax.enable_x64(True):
        law = _law(case)
        assert len(law) >= 3                     # the subsample changes the picks
        assert _chi2_pvalue(Counter(case["counts"]), law) > 1e-3
        pool, target = _problem(case, jnp.float64)
        ours = Counter()
        for seed in range(300):
            sel = aft.select("vtl", pool, target, k=case["k"], noise_std=case["noise_std"],
                             allow_repeats=True, key=jax.random.key(seed), **ours_opts)
            ours[" ".join(str(int(i)) for i in sel.indices)] += 1
    assert _chi2_pvalue(ours, law) > 1e-3


def test_target_subsampling_needs_a_key_and_valid_sizes():
    pool, target = _problem(META["cases"][SUBSAMPLE[0]], jnp.float32)
    with pytest.raises(ValueError, match="needs `key`"):
        aft.select("vtl", pool, target, k=2, max_target_size=2)
    with pytest.raises(ValueError, match="target_fraction"):
        aft.select("vtl", pool, target, k=2, target_fraction=0.0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="max_target_size"):
        aft.select("vtl", pool, target, k=2, max_target_size=0, key=jax.random.key(0))
    # all targets kept: no key needed, same picks as without the option
    full = aft.select("vtl", pool, target, k=3, max_target_size=10)
    np.testing.assert_array_equal(full.indices, aft.select("vtl", pool, target, k=3).indices)
