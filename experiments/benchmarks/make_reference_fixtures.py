"""Writes tests/data/reference_activeft_0_1_1.{npz,json}: golden picks of the reference.

Runs the PyTorch reference `activeft==0.1.1` (its own venv, see
reference/README.md) in exact mode (one greedy pass over the whole pool) on a
few seeded problems and stores the inputs and its picks and values, so that
`tests/test_reference_parity.py` checks parity in every CI run without torch.

    .venv/bin/python experiments/benchmarks/make_reference_fixtures.py --ref-python .ref-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

from _reference import DEFAULT_REF_PYTHON, gaussian, run_reference

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# name -> (generator, k, noise_std, reference strategies)
GP = ["ITL", "VTL", "CTL", "MMITL", "UndirectedVTL", "UndirectedITL", "UncertaintySampling",
      "CosineSimilarity", "InformationDensity", "MaxEntropy"]


def clustered(seed, n, d, m, clusters=5):
    """Tight clusters: CTL/VTL with repeats pick the same point several times."""
    rng = np.random.default_rng(seed)
    centers = 3 * rng.standard_normal((clusters, d))
    labels = rng.integers(0, clusters, n)
    pool = centers[labels] + 0.3 * rng.standard_normal((n, d))
    target = centers[rng.integers(0, clusters, m)] + 0.3 * rng.standard_normal((m, d))
    return pool.astype(np.float32), target.astype(np.float32)


PROBLEMS = {
    "gauss_n300_d16": (lambda: gaussian(101, 300, 16, 5), 20, 1.0, GP),
    "unit_n200_d8": (lambda: gaussian(102, 200, 8, 3, normalize=True), 15, 0.1, GP),
    "clusters_n150_d4": (lambda: clustered(103, 150, 4, 4), 15, 0.5, ["CTL", "VTL", "ITL", "MMITL"]),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref-python", default=DEFAULT_REF_PYTHON)
    p.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "reference_activeft_0_1_1"))
    a = p.parse_args()
    arrays, meta = {}, {"library": "activeft 0.1.1 (exact mode: mini_batch_size = N + 1)",
                        "harness": "experiments/benchmarks/reference/run_ref.py",
                        "probabilities": "InformationDensity/MaxEntropy use the harness's model "
                                         "softmax(x), to which the library applies softmax again: "
                                         "probs = softmax(softmax(pool))",
                        "problems": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (gen, k, noise, strategies) in PROBLEMS.items():
            pool, target = gen()
            arrays[f"{name}/pool"], arrays[f"{name}/target"] = pool, target
            npz = os.path.join(tmp, f"{name}.npz")
            np.savez(npz, pool=pool, target=target)
            picks = {}
            for s in strategies:
                res = run_reference(a.ref_python, npz, s, k, noise)
                picks[s] = {"indices": res["indices"], "values": res["values"]}
                print(f"{name:18s} {s:20s} {picks[s]['indices'][:8]}...", file=sys.stderr)
            meta["problems"][name] = {"k": k, "noise_std": noise, "picks": picks}
    np.savez_compressed(a.out + ".npz", **arrays)
    with open(a.out + ".json", "w") as f:
        json.dump(meta, f, indent=1)
    print(f"wrote {a.out}.npz and .json", file=sys.stderr)


if __name__ == "__main__":
    main()
