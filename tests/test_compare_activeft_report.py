"""experiments/benchmarks/compare_activeft.py: the speed part's bookkeeping, with both codes stubbed.

The runs themselves take minutes (`make bench-activeft`); here the official code and
ours are replaced by stand-ins whose picks are known, so the overlaps, the ratios and
the MKL yardstick in the report can be checked against them.
"""

import argparse
import os

import pytest

from helpers import benchmark_module

B = 400


def _module():
    return benchmark_module("compare_activeft")


def _stub(monkeypatch, m, device="cpu"):
    calls = []

    def official(ref_python, repo, npz, budget, *, seed=0, init_indices=None, anomaly=True,
                 threads=None, extra=(), env=None):
        calls.append({"anomaly": anomaly, "env": env, "init": init_indices})
        picks = list(range(budget))
        losses = [1.0] * 300
        if env and env.get("MKL_CBWR") == "COMPATIBLE":   # another summation order: 4 picks move
            picks[:4] = range(10_000, 10_004)
            losses = [1.0 + 7.5e-4] + [1.0] * 299
        return {"indices": picks, "losses": losses, "init_indices": list(range(budget)),
                "wall_time_s": 20.0 if anomaly else 18.0, "device": device}

    def ours(spec):
        picks = list(range(B))
        picks[1:6] = range(20_000 - 5, 20_000)              # 5 picks differ from the official run
        picks[0] = 10_000                                     # one of them shared with COMPATIBLE's
        out = {"warm_s": 2.0 if spec["prune"] is False else 1.0, "cold_s": 3.0, "indices": picks,
               "losses": [1.0] * 300, "recomputed": 0.01, "peak_rss_gb": 0.5,
               "work_curve": [0.01] * 300}
        if spec.get("gflops"):
            out.update(assign_s=0.03, assign_gflops=200.0, xla_matmul_gflops=250.0)
        return out

    monkeypatch.setattr(m, "run_official", official)
    monkeypatch.setattr(m, "run_ours", ours)
    monkeypatch.setattr(m, "numpy_sgemm_gflops", lambda: 300.0)
    monkeypatch.setattr(m, "SPEED_PROBLEMS", [("clustered N=2000 B=400", 2000, 8, B, True)])
    return calls


def _args(tmp_path, **kw):
    a = dict(quick=True, problems="", repeats=2, repeats_no_anomaly=1, seed=5001,
             ref_python="python", official_repo=".", yardstick="COMPATIBLE",
             yardstick_max_n=20_000, out=str(tmp_path / "speed"))
    a.update(kw)
    return argparse.Namespace(**a)


def test_speed_part_reports_the_official_codes_own_spread(monkeypatch, tmp_path):
    m = _module()
    calls = _stub(monkeypatch, m)
    res = m.part_speed(_args(tmp_path), str(tmp_path), lambda msg: None)
    row = res["problems"][0]
    # 2 rounds with anomaly detection, 1 without, 1 on MKL's COMPATIBLE path, all from the
    # first run's init.
    assert [c["anomaly"] for c in calls] == [True, False, True, False]
    assert [c["env"] for c in calls] == [None, None, None, {"MKL_CBWR": "COMPATIBLE"}]
    assert all(c["init"] is not None for c in calls[1:])
    assert row["official_repeat_overlap"] == [1.0]
    y = row["yardstick"]["COMPATIBLE"]
    assert y["official_vs_official"] == pytest.approx(396 / 400)
    assert y["official_max_loss_diff"] == pytest.approx(7.5e-4, rel=1e-6)
    assert y["wall_time_s"] == 18.0
    pruned = row["pruned"]
    assert pruned["overlap"] == pytest.approx(394 / 400)      # 6 of ours are not official picks
    # against the COMPATIBLE run: 10 000 is shared too; its picks 4 and 5 are not ours
    assert pruned["vs_yardstick"]["COMPATIBLE"]["overlap"] == pytest.approx(395 / 400)
    assert pruned["ratio"] == pytest.approx(20.0) and row["dense"]["ratio"] == pytest.approx(10.0)
    assert row["pruned_equals_dense"] is True
    md = m.markdown({"speed": res})
    assert "| clustered N=2000 B=400 | COMPATIBLE | 99.0% | 7.5e-04 | 98.5% | 98.8% |" in md
    assert "| clustered N=2000 B=400 | default (run again, anomaly detection off) | 100.0% |" in md
    assert os.path.exists(str(tmp_path / "speed_work.png"))


@pytest.mark.parametrize("case", ["gpu", "off", "too large"])
def test_no_yardstick_where_it_means_nothing_or_is_not_asked_for(monkeypatch, tmp_path, case):
    m = _module()
    calls = _stub(monkeypatch, m, device="cuda:0" if case == "gpu" else "cpu")
    kw = {"off": {"yardstick": ""}, "too large": {"yardstick_max_n": 1000}}.get(case, {})
    res = m.part_speed(_args(tmp_path, **kw), str(tmp_path), lambda msg: None)
    assert all(c["env"] is None for c in calls)
    assert "yardstick" not in res["problems"][0]
    assert "How far" not in m.markdown({"speed": res})
