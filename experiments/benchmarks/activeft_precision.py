"""ActiveFT: which half of a step's float32 round-off moves our picks away from the official ones.

A probe behind docs/activeft_log.md ("Near ties decided exactly"). It runs a plain
dense ActiveFT loop (the library's loss, optax Adam, 300 steps; not the
library's fit) on the clustered N = 20 000, B = 400 problem of the round-off
yardstick, from the official init of each given `activeft_roundoff.py` run,
with the assignment and the loss gradient each in float32 or float64, and
compares its picks with the official runs' stored picks (MKL's default path
and the run's first other path):

    a32g32  float32 assignment, float32 gradient
    a32g64  float32 assignment, float64 gradient
    a64g32  float64 assignment (prototypes normalized in float64), float32 gradient
    a64g64  both in float64
    tie32   float32, near ties (two best within the margin) decided on exact
            similarities of the float32 vectors: the library's assignment (`_decide`);
            the a32 variants take the plain first argmax of the float32 matmul

    .venv/bin/python experiments/benchmarks/activeft_precision.py --variants a32g32,a64g32,tie32 \\
        --runs experiments/results/activeft_roundoff_clustered.json \\
               experiments/results/activeft_roundoff_clustered_init*.json

~45-80 s per variant and init on 2 cores (the float64 matmuls dominate).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from activeft_roundoff import official_init  # noqa: E402
from compare_activeft import SPEED_PROBLEMS, features, shared  # noqa: E402

VARIANTS = ("a32g32", "a32g64", "a64g32", "a64g64", "tie32")


def fit(variant: str, feats32, feats64, init, steps: int = 300, rows: int = 2048):
    import jax
    import jax.numpy as jnp
    import optax
    from jax import lax

    from activeft_jax.kernels import l2_normalize
    from activeft_jax.selection._nearest import nearest_unique
    from activeft_jax._core import map_rows, plan, matmul
    from activeft_jax.selection.prototypes import _dense_assignment, _first_argmax, _loss

    f64 = jnp.float64
    a_dtype = f64 if variant.startswith("a64") else jnp.float32
    g_dtype = f64 if variant.endswith("g64") else jnp.float32
    fa = feats64 if a_dtype == f64 else feats32
    fg = feats64 if g_dtype == f64 else feats32
    n = feats32.shape[0]
    opt = optax.adam(1e-3)

    def assign(p):
        q = l2_normalize(p.astype(a_dtype))
        if variant == "tie32" or a_dtype == f64:   # float64: `_decide` keeps the matmul's argmax
            return _dense_assignment(q, fa, rows)
        return map_rows(lambda x: _first_argmax(matmul(x, q.T)), plan(n, rows), fa)

    @jax.jit
    def run(params):
        def step(carry, _):
            p, st = carry
            c = assign(p)
            loss, g = jax.value_and_grad(lambda q: _loss(q, fg, c, 0.07, 1.0, rows))(p.astype(g_dtype))
            u, st = opt.update(g.astype(jnp.float32), st, p)
            return (optax.apply_updates(p, u), st), loss

        (p, _), losses = lax.scan(step, (params, opt.init(params)), length=steps)
        return p, losses

    p, _ = run(feats32[jnp.asarray(init)])
    return sorted(int(i) for i in np.asarray(nearest_unique(l2_normalize(p), feats32).indices))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--runs", nargs="+", required=True, help="activeft_roundoff.py JSONs (clustered problem)")
    p.add_argument("--steps", type=int, default=300, help="Adam steps (the official 300; fewer for a smoke run)")
    a = p.parse_args(argv)
    variants = a.variants.split(",")
    if any(v not in VARIANTS for v in variants):
        p.error(f"--variants: choose from {', '.join(VARIANTS)}")
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from activeft_jax.kernels import l2_normalize

    runs = []
    for path in a.runs:
        with open(path) as f:
            runs.append(json.load(f))
    name, n, d, b, clustered = next(x for x in SPEED_PROBLEMS if x[0] == runs[0]["problem"])
    base = features(runs[0]["seed"], n, d, clustered)
    feats32 = l2_normalize(jnp.asarray(base))
    feats64 = l2_normalize(jnp.asarray(base, jnp.float64))
    lines = ["| variant | " + " | ".join(f"init {r['init_seed']}" for r in runs)
             + " | mean vs official | mean vs official (other path) |",
             "|---|" + "---:|" * (len(runs) + 2)]
    for v in variants:
        cells, mains, others = [], [], []
        for r in runs:
            t0 = time.perf_counter()
            idx = fit(v, feats32, feats64, official_init(r), steps=a.steps)
            x = round(shared(idx, r["rows"][0]["official_indices"]) * b)
            y = round(shared(idx, r["paths"][0]["official_indices"]) * b) if r["paths"] else None
            mains.append(x)
            others += [] if y is None else [y]
            cells.append(f"{x} / {y}")
            print(f"{v} init {r['init_seed']}: {x} / {y} ({time.perf_counter() - t0:.0f} s)", flush=True)
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {np.mean(mains):.2f} | "
                     + (f"{np.mean(others):.2f} |" if others else "n/a |"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
