"""SIFT: ours (one vmapped call over all prompts) vs the reference `Retriever`.

    python experiments/benchmarks/compare_sift.py [--sizes 20000,1000000] [--prompts 1000]

Inputs (seeded, regenerated here, never seen by any test): clustered unit-norm
embeddings, d = 64: 500 cluster centres ~ N(0, I), each point = its centre +
N(0, 0.7² I) noise, L2-normalized; the prompts are fresh draws from the same
mixture. Reference: `Retriever(faiss.IndexFlatIP, llambda=0.01).batch_search(
prompts[:, None, :], N=k, K=K, threads=1)` in .ref-venv (reference/run_sift_ref.py),
on the same float32 arrays. Ours: `aft.sift(pool, prompts, k, candidates=K,
lambda_=0.01)` timed warm (after a compile call), best of 3.
Writes experiments/results/compare_sift.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
WORKER = os.path.join(HERE, "reference", "run_sift_ref.py")
REF_PYTHON = os.path.join(ROOT, ".ref-venv", "bin", "python")
RESULTS = os.path.join(ROOT, "experiments", "results")


def clustered(seed: int, n: int, p: int, d: int, clusters: int = 500, spread: float = 0.7):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))

    def draw(m):
        x = centres[rng.integers(0, clusters, m)] + spread * rng.standard_normal((m, d))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return draw(n), draw(p)


def run_ours(pool, prompts, k, K, lam, repeats=3):
    import jax

    import activeft_jax as aft

    t0 = time.perf_counter()
    jax.block_until_ready(aft.sift(pool, prompts, k=k, candidates=K, lambda_=lam))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sel = jax.block_until_ready(aft.sift(pool, prompts, k=k, candidates=K, lambda_=lam))
        times.append(time.perf_counter() - t0)
    return np.asarray(sel.indices), np.asarray(sel.values), first, min(times)


def run_reference(pool, prompts, k, K, lam):
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(inp, pool=pool, prompts=prompts)
        cmd = [REF_PYTHON, WORKER, "--npz", inp, "--out", out, "--k", str(k), "--K", str(K),
               "--llambda", str(lam)]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        if res.returncode != 0:
            raise RuntimeError(f"reference failed: {res.stderr[-2000:]}")
        z = np.load(out)
        return {key: z[key] for key in z.files}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="20000")
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--K", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--llambda", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=2026)
    a = ap.parse_args(argv)
    rows = []
    for n in [int(s) for s in a.sizes.split(",")]:
        pool, prompts = clustered(a.seed + n, n, a.prompts, a.d)
        ours_idx, ours_val, first, warm = run_ours(pool, prompts, a.k, a.K, a.llambda)
        ref = run_reference(pool, prompts, a.k, a.K, a.llambda)
        same_rows = (ours_idx == ref["indices"]).all(axis=1)
        row = {
            "N": n, "P": a.prompts, "d": a.d, "K": a.K, "k": a.k, "lambda": a.llambda,
            "ours_warm_s": warm, "ours_first_call_s": first,
            "ref_s": float(ref["wall_s"]), "ref_faiss_s": float(ref["faiss_s"]),
            "ref_sift_s": float(ref["sift_s"]), "ref_index_build_s": float(ref["index_s"]),
            "speedup": float(ref["wall_s"]) / warm,
            "prompts_identical_frac": float(same_rows.mean()),
            "picks_identical_frac": float((ours_idx == ref["indices"]).mean()),
            "pick_sets_identical_frac": float(np.mean([set(o) == set(r) for o, r in
                                                       zip(ours_idx.tolist(), ref["indices"].tolist())])),
            "max_abs_value_diff": float(np.abs(ours_val - ref["values"]).max()),
            "first_differing_prompts": np.flatnonzero(~same_rows)[:10].tolist(),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    import jax

    meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "jax": jax.__version__, "backend": jax.default_backend(), "data": "clustered unit-norm "
            "(500 centres, spread 0.7), seed " + str(a.seed) + " + N", "rows": rows}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "compare_sift.json"), "w") as f:
        json.dump(meta, f, indent=1)
    lines = ["# SIFT: activeft_jax vs reference `Retriever` (activeft 0.1.1)", "",
             f"{meta['machine']}, jax {meta['jax']} ({meta['backend']}). Data: {meta['data']}; "
             f"d = {a.d}, K = {a.K}, k = {a.k}, λ = {a.llambda}. Reference: faiss IndexFlatIP, "
             "`batch_search(threads=1)` (torch uses its default threads); ours: one vmapped call, "
             "warm (best of 3, after a compile call). Same float32 arrays.", "",
             "| N | prompts | ours warm (s) | ours 1st call (s) | reference (s) [faiss / sift] | speed-up "
             "| prompts with identical pick lists | identical picks | max abs value diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['N']:,} | {r['P']} | {r['ours_warm_s']:.3f} | {r['ours_first_call_s']:.2f} | "
                     f"{r['ref_s']:.1f} [{r['ref_faiss_s']:.1f} / {r['ref_sift_s']:.1f}] | "
                     f"{r['speedup']:.0f}× | {r['prompts_identical_frac']:.1%} | "
                     f"{r['picks_identical_frac']:.1%} | {r['max_abs_value_diff']:.1e} |")
    lines += ["", "Notes: the reference's per-prompt SIFT phase (a torch DataLoader with one worker "
              "process per prompt) varies a lot from run to run on this machine (98-189 s for 1000 "
              "prompts in our runs; the issue quotes ~52 s). Its `as_completed` result order is "
              "replaced by prompt order in the worker (ordering only; see run_sift_ref.py). "
              "At N = 10⁶ ours is bound by the [P, N] score matmul (128 GFLOP; sgemm runs at "
              "~40 GFLOP/s with d = 64 on this machine, so ~3.2 s of the 5 s).",
              "", "Reproduce: `python experiments/benchmarks/compare_sift.py --sizes "
              + a.sizes + "`."]
    with open(os.path.join(RESULTS, "compare_sift.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
