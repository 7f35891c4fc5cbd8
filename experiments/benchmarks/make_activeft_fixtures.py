"""Writes tests/data/activeft_official.npz: golden runs of the official ActiveFT code.

Runs the official selection code (github.com/yichen928/ActiveFT, CIFAR script:
every feature every step) through its harness (official/README.md) on a few
seeded feature sets and stores the features, the initial indices it drew, its
per-iteration losses and its picks (sorted, as the official script saves
them), so that tests/test_activeft.py checks parity in every CI run without
torch.

    .venv/bin/python experiments/benchmarks/make_activeft_fixtures.py \
        --ref-python .ref-venv/bin/python --official-repo ../ActiveFT_official
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

from _reference import DEFAULT_OFFICIAL_REPO, DEFAULT_REF_PYTHON, ROOT, run_official


def gaussian_features(seed, n, d):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def mixture_features(seed, n, d, clusters=12):
    """Features in clusters, like a pretrained encoder's: assignments rarely change."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d))
    labels = rng.integers(0, clusters, n)
    return (centers[labels] + 0.35 * rng.standard_normal((n, d))).astype(np.float32)


# name -> (features, budget, iterations, temperature, harness seed)
PROBLEMS = {
    "gauss_n800_d32_b25": (lambda: gaussian_features(11, 800, 32), 25, 60, 0.07, 1),
    "mixture_n600_d16_b30": (lambda: mixture_features(12, 600, 16), 30, 80, 0.07, 2),
    "gauss_n500_d24_b40_tau0.2": (lambda: gaussian_features(13, 500, 24), 40, 50, 0.2, 3),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref-python", default=DEFAULT_REF_PYTHON)
    p.add_argument("--official-repo", default=DEFAULT_OFFICIAL_REPO)
    p.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "activeft_official.npz"))
    a = p.parse_args(argv)

    arrays = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (make, budget, iters, tau, seed) in PROBLEMS.items():
            feats = make()
            npz = os.path.join(tmp, f"{name}.npz")
            np.savez(npz, features=feats)
            res = run_official(a.ref_python, a.official_repo, npz, budget, seed=seed, anomaly=False,
                               extra=("--max-iter", str(iters), "--temperature", str(tau)))
            arrays[f"{name}/features"] = feats
            arrays[f"{name}/init_indices"] = np.asarray(res["init_indices"], np.int32)
            arrays[f"{name}/losses"] = np.asarray(res["losses"], np.float64)
            arrays[f"{name}/indices"] = np.asarray(res["indices"], np.int32)
            arrays[f"{name}/temperature"] = np.asarray(tau)
            print(f"{name}: B={budget}, {iters} iterations, loss {res['losses'][0]:.6f} -> "
                  f"{res['losses'][-1]:.6f}", file=sys.stderr)
    np.savez_compressed(a.out, **arrays)
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
