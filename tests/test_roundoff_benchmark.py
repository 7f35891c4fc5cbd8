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


def test_report_compares_the_official_paths_and_ours_in_float64():
    m = _module()
    b = 6
    default, avx2, compat = [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 9, 8], [0, 1, 2, 3, 4, 7]
    ours32, ours64 = [0, 1, 2, 3, 4, 9], [0, 1, 2, 3, 9, 8]
    r = {"problem": "clustered", "seed": 1, "init_seed": 2, "B": b, "draws": 0, "fraction": 1e-4,
         "official_s_min": 1.0, "official_s_max": 1.0, "ours_s_min": 0.5, "ours_s_max": 0.5,
         "ours64_indices": ours64, "ours64_losses": [1.0], "ours64_s": 3.0,
         "rows": [{"input": "unperturbed", "official_self": 1.0, "ours_self": 1.0,
                   "ours_vs_official": 5 / 6, "official_self_loss": 0.0, "ours_self_loss": 0.0,
                   "cross_loss": 1e-4, "official_indices": default, "ours_indices": ours32}],
         "paths": [{"path": p, "seconds": 1.0, "official_self": m.shared(idx, default),
                    "ours_vs_official": m.shared(ours32, idx), "official_self_loss": 1e-5,
                    "cross_loss": 1e-4, "official_indices": idx}
                   for p, idx in (("AVX2", avx2), ("COMPATIBLE", compat))]}
    lines = m.markdown(r).splitlines()
    # the official runs against each other: default/AVX2 share 4, default/COMPATIBLE 5,
    # AVX2/COMPATIBLE 4 (an upper triangle, the diagonal B)
    assert "| default | 6 | 4 | 5 |" in lines
    assert "| AVX2 |  | 6 | 4 |" in lines
    assert "| COMPATIBLE |  |  | 6 |" in lines
    # ours in float32 and float64 against each official run, and against each other
    assert "| default | 5 | 4 |" in lines
    assert "| AVX2 | 5 | 6 |" in lines
    assert "| COMPATIBLE | 5 | 4 |" in lines
    assert "| ours, float32 | | 5 |" in lines
    # without --float64 (and with one path) neither table appears
    del r["ours64_indices"]
    r["paths"] = r["paths"][:1]
    text = m.markdown(r)
    assert "float64" not in text and "against each other" not in text


def test_combine_tables_ours_in_float64_over_runs(tmp_path):
    m = _module()

    def run(seed, default, avx2, ours32, ours64):
        return {"problem": "clustered", "B": 4, "init_seed": seed, "ours64_indices": ours64,
                "rows": [{"ours_vs_official": m.shared(ours32, default),
                          "official_indices": default, "ours_indices": ours32}],
                "paths": [{"path": "AVX2", "official_self": m.shared(avx2, default),
                           "ours_vs_official": m.shared(ours32, avx2),
                           "official_indices": avx2}]}

    runs = [run(1, [0, 1, 2, 3], [0, 1, 2, 5], [0, 1, 2, 3], [0, 1, 2, 5]),
            run(2, [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 6, 7], [0, 1, 2, 3])]
    md = m.combine(runs, str(tmp_path / "inits"))
    lines = md.splitlines()
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header[1:] == ["official vs official (MKL_CBWR=AVX2)", "ours vs official (default path)",
                          "ours vs official (MKL_CBWR=AVX2)", "ours float64 vs official (default path)",
                          "ours float64 vs official (MKL_CBWR=AVX2)", "ours float64 vs ours float32"]
    assert lines[4] == "| 1 | 3 | 4 | 3 | 3 | 4 | 3 |"
    assert lines[5] == "| 2 | 4 | 2 | 2 | 4 | 4 | 2 |"
    assert lines[7] == "| identical sets | 1 of 2 | 1 of 2 | 0 of 2 | 1 of 2 | 2 of 2 | 0 of 2 |"
    assert (tmp_path / "inits.png").exists()
    # runs without --float64: no float64 columns
    for r in runs:
        del r["ours64_indices"]
    assert "float64" not in m.combine(runs, str(tmp_path / "plain"))
