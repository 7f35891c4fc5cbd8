"""`activeft_sweep` on CPU: the fits vmapped and dense, against the fits one after another, pruned.

Runs `activeft_sweep` on the same features, temperatures and keys twice, with
`prune=False` (every fit vmapped, every step the dense N x B x d assignment) and
with `prune` left to its default (on CPU: the pruned assignment, so the fits run
one after another, since vmap would run both sides of the pruned path's
branches), and reports the wall times (compiled beforehand, best of `--repeats`
calls) and whether every (temperature, key) fit picks the same prototypes both
ways. Pruning keeps the assignment exact, so a pruned fit equals the dense
`fit_activeft` bit for bit; the vmapped dense program rounds some sums
differently (an ulp), which on clustered features can flip a near tie and a few
picks. The pruned sweep's fits are each checked against `fit_activeft` (they run
the same program), the dense sweep's last one.

    .venv/bin/python experiments/benchmarks/sweep_activeft.py      # N = 20 000, 2 x 2 fits
    .venv/bin/python experiments/benchmarks/sweep_activeft.py --n 5000 --temps 4 --keys 2
    .venv/bin/python experiments/benchmarks/sweep_activeft.py --only pruned

Features as in compare_activeft.py (clustered or standard normal, d = 384),
B = 400, 300 steps, temperatures 0.07 * 2^j around the default. The dense
sweep at N = 20 000 takes minutes (11–19 s a fit on the 2-core Intel host).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_activeft import features  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, default=400)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--temps", type=int, default=2, help="number of temperatures (0.07 * 2^j)")
    ap.add_argument("--keys", type=int, default=2, help="number of keys (random inits)")
    ap.add_argument("--problem", choices=("clustered", "normal"), default="clustered")
    ap.add_argument("--repeats", type=int, default=1,
                    help="timed calls of each after the first, best of all taken")
    ap.add_argument("--only", choices=("both", "pruned", "dense"), default="both")
    ap.add_argument("--out", help="write the record as JSON here")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    import activeft_jax as aft

    feats = jnp.asarray(features(7001, args.n, args.d, args.problem == "clustered"))
    temps = jnp.asarray([0.07 * 2.0 ** (j - args.temps // 2) for j in range(args.temps)],
                        jnp.float32)
    keys = jax.random.split(jax.random.key(3), args.keys)
    kw = dict(k=args.k, temperatures=temps, keys=keys, steps=args.steps)
    record = {"n": args.n, "d": args.d, "k": args.k, "steps": args.steps, "problem": args.problem,
              "temperatures": np.asarray(temps).tolist(), "keys": args.keys,
              "backend": jax.default_backend()}
    runs = {"dense": dict(prune=False), "pruned": {}}
    fits = {}
    for name, extra in runs.items():
        if args.only not in ("both", name):
            continue
        t0 = time.perf_counter()
        out = jax.block_until_ready(aft.selection.activeft_sweep(feats, **kw, **extra))
        first = time.perf_counter() - t0
        best = first
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = jax.block_until_ready(aft.selection.activeft_sweep(feats, **kw, **extra))
            best = min(best, time.perf_counter() - t0)
        fits[name] = out
        record[name] = {"first_call_s": first, "best_s": best,
                        "per_fit_s": best / (args.temps * args.keys),
                        "computed": float(np.mean(np.asarray(out.recomputed)))}
        print(f"{name:6s}: first call {first:7.2f} s, best {best:7.2f} s "
              f"({best / (args.temps * args.keys):.2f} s a fit), "
              f"{100 * record[name]['computed']:.2f}% of the similarities computed", flush=True)
        # Fits of the sweep against fit_activeft with the same settings: every one when
        # pruned (~1.5-3 s each), the last one when dense (9-15 s each on the 2-core Intel host).
        pairs = [(args.temps - 1, args.keys - 1)] if name == "dense" else \
            [(i, j) for i in range(args.temps) for j in range(args.keys)]
        same = []
        for i, j in pairs:
            one = aft.selection.fit_activeft(feats, k=args.k, key=keys[j],
                                             temperature=float(temps[i]), steps=args.steps, **extra)
            same.append(bool(np.array_equal(np.asarray(out.selection.indices[i, j]),
                                            np.asarray(one.selection.indices))))
        record[name]["fits_checked"] = pairs
        record[name]["equal_to_fit_activeft"] = same
        print(f"        equal to fit_activeft's picks, in order: {sum(same)} of {len(same)} "
              "fits checked")
    if len(fits) == 2:
        a = np.asarray(fits["dense"].selection.indices)
        b = np.asarray(fits["pruned"].selection.indices)
        common = [[len(set(a[i, j].tolist()) & set(b[i, j].tolist())) for j in range(args.keys)]
                  for i in range(args.temps)]
        loss = float(np.max(np.abs(np.asarray(fits["dense"].losses)
                                   - np.asarray(fits["pruned"].losses))))
        record["picks_in_common"] = common
        record["max_loss_diff"] = loss
        record["speedup"] = record["dense"]["best_s"] / record["pruned"]["best_s"]
        identical = sum(c == args.k for row in common for c in row)
        print(f"dense / pruned: {record['speedup']:.1f}x; identical pick sets in {identical} of "
              f"{args.temps * args.keys} fits, picks in common {common} (of {args.k}); "
              f"largest loss difference {loss:.2e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
