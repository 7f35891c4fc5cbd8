"""ActiveFT: two versions of our code, step by step, interleaved in one process.

On a shared 2-core machine the load changes within a minute, so two fits timed
one after the other (or in separate processes) differ by 10-30% with no change
in the code. This script imports the `activeft_jax` package of each git ref
given (a copy renamed `activeft_jax_ab0`, `activeft_jax_ab1`, ...), builds each
version's solver on the same features and initial indices, and steps the fits
alternately: version 0 step t, version 1 step t, ... so that both see the same
load. Each step's time is the best over `--reps` runs of the whole fit; the
report is the sum over the steps (per 50-step window too) and whether each
version picks what the first one does (they should).

    .venv/bin/python experiments/benchmarks/ab_activeft_steps.py main HEAD
    .venv/bin/python experiments/benchmarks/ab_activeft_steps.py main HEAD --problem normal
    .venv/bin/python experiments/benchmarks/ab_activeft_steps.py main HEAD --march haswell
    .venv/bin/python experiments/benchmarks/ab_activeft_steps.py main HEAD --dense

Features as in compare_activeft.py (N = 20 000, d = 384, B = 400, 300 steps,
τ = 0.07). Steps are dispatched one at a time, so each pays a Python dispatch
(~0.1 ms) that the fit's single scan does not. About 2 minutes per version. Each copy
builds its CPU kernels into its own cache (`~/.cache/activeft_jax_ab0`, ...);
`--march haswell` builds them for AVX2 (the 8-lane code) on an AVX-512 host.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_activeft import features  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def export(ref: str, name: str, into: str) -> str:
    """Copies the package at git `ref` into `into`/`name`, its imports renamed."""
    archive = subprocess.run(["git", "-C", ROOT, "archive", ref, "activeft_jax"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    os.rename(os.path.join(into, "activeft_jax"), os.path.join(into, name))
    for folder, _, files in os.walk(os.path.join(into, name)):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                with open(path) as fh:
                    text = fh.read()
                with open(path, "w") as fh:
                    # Each copy registers its CPU kernels under its own FFI target names
                    # (XLA refuses a second handler under a name already registered).
                    text = re.sub(r"\bactiveft_jax\b", name, text)
                    fh.write(re.sub(r"\"afj_", f'"{name}_afj_', text))
    return name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("refs", nargs="+", help="git refs (commits, branches) to compare")
    ap.add_argument("--problem", choices=["clustered", "normal"], default="clustered")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--k", type=int, default=400)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--dense", action="store_true",
                    help="the dense fit (prune=False) instead of the default (pruned on CPU)")
    ap.add_argument("--march", default=None,
                    help="build every version's CPU kernels with -march=THIS instead of native "
                         "(e.g. haswell: the AVX2 code on an AVX-512 host)")
    args = ap.parse_args()

    import jax

    tmp = tempfile.mkdtemp(prefix="ab_activeft_")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    sys.path.insert(0, tmp)
    names = [export(ref, f"activeft_jax_ab{i}", tmp) for i, ref in enumerate(args.refs)]
    if args.march:
        for name in names:
            path = os.path.join(tmp, name, "selection", "_cpu.py")
            with open(path) as fh:
                text = fh.read()
            if '"-march=native"' not in text:
                raise SystemExit(f"{path}: no -march=native to replace")
            with open(path, "w") as fh:
                fh.write(text.replace('"-march=native"', f'"-march={args.march}"'))
    clustered = args.problem == "clustered"
    feats = features(5001 + (0 if clustered else 1), args.n, 384, clustered)
    init = np.random.default_rng(5001).choice(args.n, args.k, replace=False)
    solvers = [importlib.import_module(n + ".selection").activeft_solver(
        feats, k=args.k, steps=args.steps, temperature=0.07, init_indices=init,
        **({"prune": False} if args.dense else {})) for n in names]
    best = np.full((len(solvers), args.steps), np.inf)
    picks = [None] * len(solvers)
    for rep in range(args.reps + 1):  # the first run compiles
        states = [s.init() for s in solvers]
        jax.block_until_ready(states)
        for t in range(args.steps):
            for j, s in enumerate(solvers):
                t0 = time.perf_counter()
                states[j] = jax.block_until_ready(s.step(states[j]))
                if rep > 0:
                    best[j, t] = min(best[j, t], time.perf_counter() - t0)
        picks = [np.asarray(s.finish(st).selection.indices) for s, st in zip(solvers, states)]
    print(f"{args.problem} N={args.n} B={args.k}{' dense' if args.dense else ''}, {args.steps} "
          f"steps, best of {args.reps} "
          "interleaved runs per step (ms per step by 50-step window):")
    for ref, b, p in zip(args.refs, best, picks):
        windows = " ".join(f"{a}:{1e3 * b[a:a + 50].mean():.1f}" for a in range(0, args.steps, 50))
        same = "same picks as the first" if np.array_equal(p, picks[0]) else "PICKS DIFFER"
        print(f"  {ref:>20s}: {b.sum():6.2f} s | {windows} | {same}")


if __name__ == "__main__":
    main()
