"""experiments/benchmarks/activeft_roundoff.py: its inputs differ from the features as it says."""

import numpy as np

from helpers import benchmark_module


def _module():
    return benchmark_module("activeft_roundoff")


def test_perturb_moves_the_given_share_of_entries_by_one_ulp_each():
    m = _module()
    x = np.random.default_rng(3).standard_normal((200, 64)).astype(np.float32)
    x[0, :4] = 0.0                                       # zeros move to the smallest subnormals
    y = m.perturb(x, 1e-2, 5)
    moved = x != y
    assert y.dtype == np.float32 and moved.sum() == 128
    assert np.array_equal(x[~moved], y[~moved])
    # each moved entry is the next float32 from the original in its direction
    assert np.array_equal(np.nextafter(x[moved], y[moved]), y[moved])
    assert (y[moved] > x[moved]).any() and (y[moved] < x[moved]).any()
    assert np.array_equal(m.perturb(x, 1e-2, 5), y) and not np.array_equal(m.perturb(x, 1e-2, 6), y)
    assert (m.perturb(x, 1e-9, 0) != x).sum() == 1     # at least one entry


def test_shared_counts_common_picks_as_sets():
    m = _module()
    assert m.shared([3, 1, 2, 9], [9, 2, 4, 5]) == 0.5
    assert m.shared(np.array([1, 2]), [2, 1]) == 1.0
