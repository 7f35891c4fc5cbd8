"""float32 against the exact (float64) greedy on clustered low-noise problems with re-picks.

With `allow_repeats=True`, tight clusters and a small noise, the exact greedy
re-picks points, and the scores it compares are small differences of large
numbers (posterior variances near ρ², correlations near ±1). This benchmark
counts, per rule, on how many of 60 seeded problems the whole float32 pick
sequence equals the float64 one, for ours and for the PyTorch reference
`activeft` 0.1.1 (float32, exact mode: one greedy pass over the pool).

Problem generator (`problem(seed)`, seeds 0..59), all in float32:

    d = (4, 8, 16)[seed % 3];  N ∈ {150, 300};  C ~ U{2..5} clusters
    centres ~ N(0, I_d);  radius r = 10^U(-2, -1)
    pool_i = centre_{c_i} + r · N(0, I_d),  c_i ~ U{0..C-1}
    m ∈ {3, 6} targets, each centre_c + r · N(0, I_d) with c ~ U{0..C-1}
    noise_std = 10^U(-1.5, -0.5)  (feature norms are ~sqrt(d))
    k ∈ {15, 30}

(numpy `default_rng(10_000 + seed)`; N, m, k from two values each so that few
shapes compile.) The exact greedy re-picks points on most problems (column
"re-picks" of the table).

The float64 greedy ("exact") is ours in float64 with allow_repeats=True; on the
first problems it is checked against `dense_greedy`, an independent NumPy
float64 implementation that conditions the full joint (N+m)² kernel matrix as
the reference does.

    .venv/bin/python experiments/benchmarks/float32_repicks.py            # table + JSON
    .venv/bin/python experiments/benchmarks/float32_repicks.py --reuse-reference \
        --baseline OLD.json                                           # + an older run's picks
    .venv/bin/python experiments/benchmarks/float32_repicks.py --timing   # speed check only

Writes experiments/results/float32_repicks.json (counts and the per-problem
pick sequences). The reference runs in its own interpreter (.ref-venv), one
subprocess per rule over all problems (this file doubles as that worker; it
imports jax only in the parent).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RESULTS = os.path.join(ROOT, "experiments", "results", "float32_repicks.json")
REF_PYTHON = os.path.join(ROOT, ".ref-venv", "bin", "python")

RULES = ["vtl", "itl", "ctl", "mmitl", "undirected_itl", "undirected_vtl"]
REFERENCE_NAME = {"vtl": "VTL", "itl": "ITL", "ctl": "CTL", "mmitl": "MMITL",
                  "undirected_itl": "UndirectedITL", "undirected_vtl": "UndirectedVTL"}
DIRECTED = {"vtl", "itl", "ctl", "mmitl"}
NUM_PROBLEMS = 60


# ----------------------------------------------------------------------------- problems


def problem(seed: int) -> dict:
    """One clustered low-noise problem (see the module docstring); arrays are float32."""
    rng = np.random.default_rng(10_000 + seed)
    d = (4, 8, 16)[seed % 3]
    n = int(rng.choice([150, 300]))
    c = int(rng.integers(2, 6))
    centres = rng.standard_normal((c, d))
    radius = 10 ** rng.uniform(-2, -1)
    pool = centres[rng.integers(0, c, n)] + radius * rng.standard_normal((n, d))
    m = int(rng.choice([3, 6]))
    target = centres[rng.integers(0, c, m)] + radius * rng.standard_normal((m, d))
    noise_std = float(10 ** rng.uniform(-1.5, -0.5))
    k = int(rng.choice([15, 30]))
    return dict(seed=seed, pool=pool.astype(np.float32), target=target.astype(np.float32),
                noise_std=noise_std, k=k)


# ----------------------------------------------------------------------------- NumPy float64


def dense_greedy(rule: str, pool, target, k: int, noise_std: float) -> list:
    """The exact greedy in float64 on the dense joint kernel matrix (as the reference, with
    repeats; a zero-variance point scores 0 where the formulas would give NaN)."""
    x = np.asarray(pool, np.float64)
    n = x.shape[0]
    a = np.asarray(target, np.float64) if rule in DIRECTED else np.zeros((0, x.shape[1]))
    joint = np.concatenate([x, a])
    cov = joint @ joint.T
    s2 = noise_std ** 2
    picks = []
    for _ in range(k):
        var = np.diag(cov)[:n].copy()
        c_sa = cov[:n, n:]
        var_a = np.diag(cov)[n:]
        with np.errstate(divide="ignore", invalid="ignore"):
            if rule in ("vtl", "undirected_vtl"):
                c = c_sa if rule == "vtl" else cov[:n, :n]
                tot = var_a.sum() if rule == "vtl" else var.sum()
                score = -(tot - (c * c).sum(axis=1) / (var + s2))
            elif rule == "itl":
                kaa = cov[n:, n:] + s2 * np.eye(a.shape[0])
                cond = var - np.einsum("ia,ia->i", c_sa, np.linalg.solve(kaa, c_sa.T).T)
                score = np.where(var > 0, 0.5 * np.maximum(np.log(var / cond), 0), 0)
            elif rule == "undirected_itl":
                score = var
            else:
                rho = c_sa / np.sqrt(np.outer(var, var_a))
                rho = np.where(np.outer(var > 0, var_a > 0), rho, 0)
                if rule == "ctl":
                    score = rho.mean(axis=1)
                else:
                    score = (-0.5 * np.log(np.maximum(1 - rho * rho, 1e-300))).mean(axis=1)
        i = int(np.argmax(np.where(np.isnan(score), -np.inf, score)))
        picks.append(i)
        col = cov[:, i].copy()
        cov = cov - np.outer(col, col) / (col[i] + s2)
    return picks


# ----------------------------------------------------------------------------- ours


def ours(rule: str, prob: dict, dtype: str) -> list:
    """Our picks with allow_repeats=True, in float32 or float64."""
    import jax
    import jax.numpy as jnp

    from activeft_jax import selection

    with jax.enable_x64(dtype == "float64"):
        pool = jnp.asarray(prob["pool"], dtype)
        fn = getattr(selection, rule)
        kw = dict(k=prob["k"], noise_std=prob["noise_std"], allow_repeats=True)
        if rule in DIRECTED:
            sel = fn(pool, jnp.asarray(prob["target"], dtype), **kw)
        else:
            sel = fn(pool, **kw)
        return [int(i) for i in np.asarray(sel.indices)]


# ----------------------------------------------------------------------------- reference


def _reference_worker(npz: str, strategy: str, out: str) -> None:
    """Runs in the reference interpreter: every problem of `npz` through the harness."""
    sys.path.insert(0, os.path.join(HERE, "reference"))
    import run_ref  # noqa: E402  (the harness; installs its wandb stub)
    import torch

    torch.set_num_threads(1)
    z = np.load(npz)
    res = []
    for j in range(int(z["count"])):
        pool = torch.from_numpy(z[f"pool{j}"])
        target = torch.from_numpy(z[f"target{j}"])
        k, noise_std = int(z[f"k{j}"]), float(z[f"noise_std{j}"])
        torch.manual_seed(0)
        idx, _, _ = run_ref.run_loader(strategy, pool, target, k, noise_std, pool.shape[0] + 1,
                                       False, 1.0, torch.device("cpu"))
        res.append(idx)
    with open(out, "w") as f:
        json.dump(res, f)


def reference(rule: str, probs: list) -> list:
    """The reference's float32 picks on every problem (one subprocess)."""
    if not os.path.exists(REF_PYTHON):
        raise SystemExit(f"reference interpreter not found: {REF_PYTHON} (run `make ref-venv`)")
    with tempfile.TemporaryDirectory() as tmp:
        npz, out = os.path.join(tmp, "p.npz"), os.path.join(tmp, "out.json")
        arrays = {"count": np.array(len(probs))}
        for j, p in enumerate(probs):
            arrays[f"pool{j}"] = p["pool"]
            # undirected rules ignore the target; the harness wants one anyway
            arrays[f"target{j}"] = p["target"]
            arrays[f"k{j}"] = np.array(p["k"])
            arrays[f"noise_std{j}"] = np.array(p["noise_std"])
        np.savez(npz, **arrays)
        run = subprocess.run([REF_PYTHON, os.path.abspath(__file__), "--ref-worker", npz,
                              REFERENCE_NAME[rule], out], capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"reference {rule} failed: {run.stderr[-3000:]}")
        with open(out) as f:
            return json.load(f)


# ----------------------------------------------------------------------------- timing


def timing(repeats: int = 3) -> dict:
    """Warm float32 VTL / MM-ITL greedy, k = 100 at N = 1e5, d = 128, m = 100: min of `repeats`."""
    import jax
    import jax.numpy as jnp

    from activeft_jax import selection

    rng = np.random.default_rng(0)
    pool = jnp.asarray(rng.standard_normal((100_000, 128)), jnp.float32)
    target = jnp.asarray(rng.standard_normal((100, 128)), jnp.float32)
    out = {}
    for rule in ("vtl", "mmitl"):
        fn = getattr(selection, rule)
        jax.block_until_ready(fn(pool, target, k=100, noise_std=1.0).indices)  # compile
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(pool, target, k=100, noise_std=1.0).indices)
            times.append(time.perf_counter() - t0)
        out[rule] = dict(min_s=min(times), all_s=times)
        print(f"{rule}: min {min(times):.3f} s of {[round(t, 3) for t in times]}", flush=True)
    return out


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rules", nargs="*", default=RULES)
    p.add_argument("--problems", type=int, default=NUM_PROBLEMS)
    p.add_argument("--reuse-reference", action="store_true",
                   help="take the reference's picks from the existing JSON (they never change)")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--baseline", default=None,
                   help="an earlier run's JSON: its float32 picks are compared too "
                   "(column 'before')")
    p.add_argument("--check-dense", type=int, default=3,
                   help="check our float64 picks against the NumPy greedy on this many problems")
    p.add_argument("--timing", action="store_true", help="only the speed check")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--ref-worker", nargs=3, metavar=("NPZ", "STRATEGY", "OUT"),
                   help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.ref_worker:
        _reference_worker(*a.ref_worker)
        return 0
    if a.timing:
        print(json.dumps(timing()))
        return 0

    old, base = {}, {}
    if a.reuse_reference and os.path.exists(a.out):
        with open(a.out) as f:
            old = json.load(f).get("rules", {})
    if a.baseline:
        with open(a.baseline) as f:
            base = json.load(f).get("rules", {})
    probs = [problem(s) for s in range(a.problems)]
    results = {}
    for rule in a.rules:
        t0 = time.perf_counter()
        exact = [ours(rule, pr, "float64") for pr in probs]
        f32 = [ours(rule, pr, "float32") for pr in probs]
        for j in range(min(a.check_dense, len(probs))):
            pr = probs[j]
            dense = dense_greedy(rule, pr["pool"], pr["target"], pr["k"], pr["noise_std"])
            if dense != exact[j]:
                print(f"  {rule} problem {j}: our float64 != NumPy float64\n"
                      f"    ours  {exact[j]}\n    numpy {dense}", flush=True)
        if a.no_reference:
            ref = None
        elif old.get(rule, {}).get("reference") and len(old[rule]["reference"]) == len(probs):
            ref = old[rule]["reference"]
        else:
            ref = reference(rule, probs)
        repeats = sum(len(set(e)) < len(e) for e in exact)
        row = dict(
            exact=exact, ours=f32, reference=ref,
            ours_match=[f == e for f, e in zip(f32, exact)],
            reference_match=None if ref is None else [r == e for r, e in zip(ref, exact)],
            problems_with_repeats=repeats,
        )
        if rule in base and len(base[rule]["ours"]) == len(probs):
            row["baseline"] = base[rule]["ours"]
            row["baseline_match"] = [b == e for b, e in zip(base[rule]["ours"], exact)]
        results[rule] = row
        ours_n = sum(row["ours_match"])
        ref_n = "-" if ref is None else sum(row["reference_match"])
        print(f"{rule:15s} ours f32 {ours_n:2d}/{len(probs)}  reference f32 {ref_n}/{len(probs)}"
              f"  (exact re-picks on {repeats}; {time.perf_counter() - t0:.0f} s)", flush=True)

    lines = ["| rule | ours f32 = f64 | before | reference f32 = f64 | f64 greedy re-picks |",
             "|---|---|---|---|---|"]
    for rule, row in results.items():
        ref_n = "-" if row["reference"] is None else sum(row["reference_match"])
        before = sum(row["baseline_match"]) if "baseline_match" in row else "-"
        lines.append(f"| {rule} | {sum(row['ours_match'])}/{len(probs)} | {before}/{len(probs)} | "
                     f"{ref_n}/{len(probs)} | {row['problems_with_repeats']}/{len(probs)} |")
    print("\n" + "\n".join(lines))
    if a.out:
        merged = {}
        if os.path.exists(a.out):
            with open(a.out) as f:
                merged = json.load(f).get("rules", {})
        merged.update(results)
        with open(a.out, "w") as f:
            json.dump({"problems": a.problems, "generator": "problem(seed), seeds 0..problems-1",
                       "rules": merged}, f)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
