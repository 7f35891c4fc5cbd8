"""ActiveFT: parity and speed of activeft_jax against the official code, and scale.

Both run side by side on the same features, on this machine, one at a time
(the official code through experiments/benchmarks/official/run_official.py, in
its own venv; point --official-repo at a checkout of github.com/yichen928/ActiveFT):

1. parity: fresh seeded feature sets (never used by the tests). The official
   code draws its random init; ours starts from the same indices. Overlap of
   the picks as a set (the official script saves them sorted) and the largest
   difference between the two loss curves.
2. speed (issue 15): clustered and standard-normal features at N = 20 000,
   B = 400 and N = 50 000, B = 1 000, d = 384, 300 steps (the CIFAR script's
   defaults). The official code with its anomaly detection on (as shipped; at
   N = 20 000 also off), against ours pruned (the default on CPU) and, at
   N = 20 000, dense, warm (compiled beforehand) and cold; the same initial
   indices for all. Also the fraction of similarities each pruned step computed
   (plotted), and our dense assignment's GFLOP/s next to this machine's matmul.
3. scale (--parts scale, not run by default): N = 10^6, d = 384, B = 10 000:
   a few steps of the full-batch loop and of the official ImageNet mode (a
   random batch of 100 000 features per step), time per step and peak memory,
   in a fresh process each.

    make bench-activeft OFFICIAL_REPO=../ActiveFT_official   # = the line below, after make ref-venv
    .venv/bin/python experiments/benchmarks/compare_activeft.py --official-repo ../ActiveFT_official

Writes experiments/results/compare_activeft.{json,md} and compare_activeft_work.png.
With --yardstick (default COMPATIBLE), each speed problem up to --yardstick-max-n
also runs the official code once more with Intel MKL on another code path
(MKL_CBWR): how many of its own picks float32 summation order alone moves, next to
how many ours shares with it (see docs/activeft.md). MKL's COMPATIBLE path is slow:
~75 s a run at N = 20 000 on the 2-core Intel host, against ~25 s on the default path.

Takes ~40 minutes on 2 idle cores, most of it the official code (--quick: N = 20 000
only; --repeats rounds of official / ours alternated there, best of each; --problems
picks problems by index). On a shared machine the official code slows down far
more than ours: record the load (the report does) and read the ratios with it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np

from _reference import (DEFAULT_OFFICIAL_REPO, DEFAULT_REF_PYTHON, ROOT, run_official, run_worker,
                        serve_worker, write_report)

# (name, seed, N, d, B, steps, temperature, clustered) — seeds disjoint from the fixtures'
PARITY_PROBLEMS = [
    ("gauss N=5000 d=128 B=100", 4001, 5000, 128, 100, 300, 0.07, False),
    ("mixture N=4000 d=64 B=80", 4002, 4000, 64, 80, 300, 0.07, True),
    ("gauss N=3000 d=96 B=150 tau=0.1", 4003, 3000, 96, 150, 200, 0.1, False),
]


def features(seed, n, d, clustered=False):
    rng = np.random.default_rng(seed)
    if not clustered:
        return rng.standard_normal((n, d), dtype=np.float32)
    centers = rng.standard_normal((20, d))
    labels = rng.integers(0, 20, n)
    return (centers[labels] + 0.4 * rng.standard_normal((n, d))).astype(np.float32)


# ----------------------------------------------------------------------------- ours (worker)


def worker(spec: dict) -> dict:
    """Runs one of our fits in this (fresh) process; returns a JSON-able record."""
    import jax
    import jax.numpy as jnp

    from activeft_jax.selection import activeft_solver, assign_to_prototypes, fit_activeft

    feats = np.load(spec["npz"])["features"]
    kw = dict(k=spec["k"], steps=spec["steps"], temperature=spec["temperature"],
              prune=spec.get("prune"), batch_size=spec.get("batch_size"))
    if spec.get("init") is not None:
        kw["init_indices"] = np.asarray(spec["init"])
    kw["key"] = jax.random.key(spec.get("seed", 0))
    out = {}
    if spec.get("mode") == "steps":  # time individual steps of a large problem
        solver = activeft_solver(feats, k=spec["k"], key=kw["key"], temperature=spec["temperature"],
                                 steps=spec["steps"], batch_size=spec.get("batch_size"),
                                 prune=spec.get("prune", False))
        t0 = time.perf_counter()
        state = jax.block_until_ready(solver.init())
        out["init_s"] = time.perf_counter() - t0
        times = []
        for _ in range(spec["steps"]):
            t0 = time.perf_counter()
            state = jax.block_until_ready(solver.step(state))
            times.append(time.perf_counter() - t0)
        out["step_s"] = times
        out["loss"] = [float(state.losses[0])]
        if spec.get("finish", True):
            t0 = time.perf_counter()
            fit = jax.block_until_ready(solver.finish(state))
            out["finish_s"] = time.perf_counter() - t0
            out["distinct"] = len(set(np.asarray(fit.selection.indices).tolist()))
    else:
        t0 = time.perf_counter()
        fit = jax.block_until_ready(fit_activeft(feats, **kw))
        out["cold_s"] = time.perf_counter() - t0
        warm = []
        for _ in range(spec.get("repeats", 1)):
            t0 = time.perf_counter()
            fit = jax.block_until_ready(fit_activeft(feats, **kw))
            warm.append(time.perf_counter() - t0)
        out["warm_s"] = float(np.min(warm)) if warm else None
        out["indices"] = [int(i) for i in np.asarray(fit.selection.indices)]
        out["losses"] = [float(v) for v in np.asarray(fit.losses)]
        out["recomputed"] = float(jnp.mean(fit.recomputed))
        if spec.get("curve"):
            out["work_curve"] = [float(v) for v in np.asarray(fit.recomputed)]
        if spec.get("gflops"):
            # The dense assignment alone, on the final prototypes: its N·B·d matmul is all
            # the O(N·B·d) work of a step.
            f = jnp.asarray(feats)

            def assign(p):
                return assign_to_prototypes(p, f)
            jax.block_until_ready(assign(fit.prototypes))
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                jax.block_until_ready(assign(fit.prototypes))
                ts.append(time.perf_counter() - t0)
            n, d = feats.shape
            out["assign_s"] = min(ts)
            out["assign_gflops"] = 2 * n * spec["k"] * d / min(ts) / 1e9
            a = jnp.ones((20000, 384))
            b = jnp.ones((384, 400))
            mm = jax.jit(lambda a, b: a @ b)
            jax.block_until_ready(mm(a, b))
            ts = []
            for _ in range(10):
                t0 = time.perf_counter()
                jax.block_until_ready(mm(a, b))
                ts.append(time.perf_counter() - t0)
            out["xla_matmul_gflops"] = 2 * 20000 * 384 * 400 / min(ts) / 1e9
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return out


def run_ours(spec: dict) -> dict:
    """`worker(spec)` in a fresh process (each fit compiles and runs on its own)."""
    return run_worker(__file__, spec)


def numpy_sgemm_gflops() -> float:
    """float32 20000×384 @ 384×400 through NumPy's BLAS: this machine's matmul rate."""
    a = np.random.default_rng(0).standard_normal((20000, 384), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((384, 400), dtype=np.float32)
    ts = []
    for _ in range(10):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2 * 20000 * 384 * 400 / min(ts) / 1e9


def shared(a, b) -> float:
    """The share of the picks two selections of the same size have in common (as sets)."""
    return len(set(map(int, a)) & set(map(int, b))) / len(b)


def max_diff(a, b) -> float:
    """The largest difference between two loss curves."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def compare(ours_idx, off_idx, ours_losses, off_losses) -> dict:
    return {"overlap": shared(ours_idx, off_idx), "max_loss_diff": max_diff(ours_losses, off_losses),
            "final_loss_official": off_losses[-1], "final_loss_ours": ours_losses[-1]}


# ----------------------------------------------------------------------------- parts


def part_parity(a, tmp, log) -> list[dict]:
    rows = []
    for name, seed, n, d, b, steps, tau, clustered in PARITY_PROBLEMS:
        npz = os.path.join(tmp, f"parity{seed}.npz")
        np.savez(npz, features=features(seed, n, d, clustered))
        off = run_official(a.ref_python, a.official_repo, npz, b, seed=seed, anomaly=False,
                           extra=("--max-iter", str(steps), "--temperature", str(tau)))
        ours = run_ours({"npz": npz, "k": b, "steps": steps, "temperature": tau,
                         "init": off["init_indices"], "repeats": 0})
        row = {"problem": name, **compare(ours["indices"], off["indices"], ours["losses"], off["losses"])}
        rows.append(row)
        log(f"parity  {name:34s} picks identical as a set {row['overlap']:.1%}  "
            f"max |loss diff| {row['max_loss_diff']:.1e} (official prints 6 decimals)")
    return rows


#: (name, N, d, B, clustered): the sizes of issue 15, unseen features (seeds from --seed).
SPEED_PROBLEMS = [
    ("clustered N=20000 B=400", 20_000, 384, 400, True),
    ("standard normal N=20000 B=400", 20_000, 384, 400, False),
    ("clustered N=50000 B=1000", 50_000, 384, 1000, True),
    ("standard normal N=50000 B=1000", 50_000, 384, 1000, False),
]


def load() -> str:
    """The 1-, 5- and 15-minute load averages (the machine is shared)."""
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def part_speed(a, tmp, log) -> dict:
    """Official and ours alternated, `--repeats` rounds, best of each (the machine is shared)."""
    steps = 300
    res = {"steps": steps, "d": 384, "numpy_sgemm_gflops": numpy_sgemm_gflops(),
           "repeats": a.repeats, "problems": []}
    for i, (name, n, d, b, clustered) in enumerate(SPEED_PROBLEMS):
        if (a.quick and n > 20_000) or (a.problems and str(i) not in a.problems.split(",")):
            continue
        npz = os.path.join(tmp, f"speed{i}.npz")
        np.savez(npz, features=features(a.seed + i, n, d, clustered))
        row = {"problem": name, "N": n, "B": b, "load_before": load()}
        # At N = 50 000 the official code takes minutes a run: one round there.
        rounds = a.repeats if n <= 20_000 else 1
        off_runs, na_runs, ours_runs = [], [], []
        off = None
        for r in range(rounds):
            o = run_official(a.ref_python, a.official_repo, npz, b, seed=a.seed, anomaly=True,
                             threads=2, init_indices=None if off is None else off["init_indices"])
            off = off or o
            off_runs.append(o["wall_time_s"])
            ours = run_ours({"npz": npz, "k": b, "steps": steps, "temperature": 0.07,
                             "prune": None, "init": off["init_indices"], "repeats": 2,
                             "curve": True})
            ours_runs.append(ours)
            msg = (f"speed   {name} round {r + 1}: official {o['wall_time_s']:.1f} s, ours pruned "
                   f"{ours['warm_s']:.2f} s")
            if n <= 20_000 and r < a.repeats_no_anomaly:
                o2 = run_official(a.ref_python, a.official_repo, npz, b, seed=a.seed,
                                  anomaly=False, threads=2, init_indices=off["init_indices"])
                na_runs.append(o2["wall_time_s"])
                # (The same arithmetic: the official code gives itself the same picks.)
                row.setdefault("official_repeat_overlap", []).append(shared(o2["indices"],
                                                                            off["indices"]))
                msg += f", official without anomaly detection {o2['wall_time_s']:.1f} s"
            log(msg + f" (load {load()})")
        row["official_s"] = min(off_runs)
        row["official_runs_s"] = off_runs
        # The yardstick for "identical picks": the same official program on the same input
        # and init, with MKL on another code path (only the order of its float32 sums
        # changes, as on another CPU), against its default run and against ours.
        yard, yard_runs = {}, {}
        # (MKL only sums the CPU runs: on a GPU the official code's matmuls are cuBLAS's.)
        if n <= a.yardstick_max_n and str(off.get("device", "cpu")).startswith("cpu"):
            for path in [x for x in a.yardstick.split(",") if x]:
                y = yard_runs[path] = run_official(
                    a.ref_python, a.official_repo, npz, b, seed=a.seed, anomaly=False, threads=2,
                    init_indices=off["init_indices"], env={"MKL_CBWR": path})
                yard[path] = {"official_vs_official": shared(y["indices"], off["indices"]),
                              "official_max_loss_diff": max_diff(y["losses"], off["losses"]),
                              "wall_time_s": y["wall_time_s"]}
                log(f"speed   {name}: official with MKL_CBWR={path} shares "
                    f"{yard[path]['official_vs_official']:.1%} of the default run's picks "
                    f"(max |loss diff| {yard[path]['official_max_loss_diff']:.1e}; "
                    f"{y['wall_time_s']:.1f} s)")
        if na_runs:
            row["official_no_anomaly_s"] = min(na_runs)
            row["official_no_anomaly_runs_s"] = na_runs
        best = min(ours_runs, key=lambda o: o["warm_s"])
        variants = [("pruned", best)]
        # Ours dense only where it is quick: it is the reference of the pruned picks (the
        # tests hold the two identical), and both are compared with the official picks here.
        if n <= 20_000:
            variants.append(("dense", run_ours({"npz": npz, "k": b, "steps": steps,
                                                "temperature": 0.07, "prune": False,
                                                "init": off["init_indices"], "repeats": 1,
                                                "gflops": True})))
        for label, ours in variants:
            cmp = compare(ours["indices"], off["indices"], ours["losses"], off["losses"])
            row[label] = {**{k: v for k, v in ours.items() if k not in ("indices", "losses")},
                          **cmp, "ratio": row["official_s"] / ours["warm_s"],
                          "indices": ours["indices"]}
            if label == "pruned":
                row[label]["runs_s"] = [o["warm_s"] for o in ours_runs]
            for path, y in yard_runs.items():
                row[label].setdefault("vs_yardstick", {})[path] = {
                    "overlap": shared(ours["indices"], y["indices"]),
                    "max_loss_diff": max_diff(ours["losses"], y["losses"])}
            if "official_no_anomaly_s" in row:
                row[label]["ratio_no_anomaly"] = row["official_no_anomaly_s"] / ours["warm_s"]
            log(f"speed   {name}: ours {label}: best warm {ours['warm_s']:.2f} s (cold "
                f"{ours['cold_s']:.1f} s), x{row[label]['ratio']:.1f} vs official's best "
                f"{row['official_s']:.1f} s"
                + (f", x{row[label]['ratio_no_anomaly']:.1f} vs official without anomaly detection"
                   if "ratio_no_anomaly" in row[label] else "")
                + f"; picks identical as a set {cmp['overlap']:.1%}, max |loss diff| "
                f"{cmp['max_loss_diff']:.1e}; similarities computed per step "
                f"{ours['recomputed']:.1%}; peak RSS {ours['peak_rss_gb']:.2f} GB")
            if "assign_gflops" in ours:
                log(f"speed   dense assignment: {ours['assign_s']*1e3:.0f} ms a step = "
                    f"{ours['assign_gflops']:.0f} GFLOP/s (XLA matmul 20000x384x400: "
                    f"{ours['xla_matmul_gflops']:.0f} GFLOP/s, NumPy sgemm "
                    f"{res['numpy_sgemm_gflops']:.0f} GFLOP/s)")
        for path in yard:
            vs = row["pruned"]["vs_yardstick"][path]
            log(f"speed   {name}: ours pruned shares {vs['overlap']:.1%} of the picks of the "
                f"official run with MKL_CBWR={path} (max |loss diff| {vs['max_loss_diff']:.1e})")
        if yard:
            row["yardstick"] = yard
        if "dense" in row:
            row["pruned_equals_dense"] = row["pruned"]["indices"] == row["dense"]["indices"]
            log(f"speed   {name}: pruned picks == dense picks (same order): "
                f"{row['pruned_equals_dense']}")
        for label in ("pruned", "dense"):
            row.get(label, {}).pop("indices", None)
        row["load_after"] = load()
        os.remove(npz)
        res["problems"].append(row)
    plot_work(res, a.out + "_work.png")
    return res


def plot_work(res: dict, path: str) -> None:
    """The fraction of the N·B similarities each pruned step computed, per problem."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, ax) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True)
    for row in res["problems"]:
        curve = row["pruned"].get("work_curve")
        if curve:
            steps = np.arange(1, len(curve) + 1)
            skipped = 100 * (1 - np.asarray(curve))
            top.plot(steps, skipped, label=f"{row['problem']} (mean {skipped.mean():.1f}%)")
            ax.plot(steps, np.asarray(curve) * 100, label=row["problem"])
    top.set_ylabel("similarities skipped (% of N·B)")
    top.set_title("ActiveFT with exact pair bounds: work per step")
    top.grid(True, alpha=0.3)
    top.legend(fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("similarities computed (% of N·B)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def part_scale(a, tmp, log) -> list[dict]:
    n, d, b = 1_000_000, 384, 10_000
    npz = os.path.join(tmp, "scale.npz")
    np.savez(npz, features=features(a.seed + 1, n, d))
    rows = []
    for label, batch, steps, finish in (("full batch (every feature each step)", None, a.scale_steps, True),
                                        ("ImageNet mode (100 000 random features a step)", 100_000,
                                         a.scale_steps, False)):
        ours = run_ours({"npz": npz, "k": b, "steps": steps, "temperature": 0.07, "mode": "steps",
                         "batch_size": batch, "prune": False, "finish": finish})
        row = {"setting": label, "N": n, "d": d, "B": b, **ours}
        rows.append(row)
        log(f"scale   {label}: steps {', '.join(f'{t:.1f}' for t in ours['step_s'])} s "
            f"(first includes compilation); init {ours['init_s']:.1f} s"
            + (f"; final matching {ours['finish_s']:.1f} s ({ours['distinct']} distinct)" if finish else "")
            + f"; peak RSS {ours['peak_rss_gb']:.2f} GB")
    os.remove(npz)
    return rows


# ----------------------------------------------------------------------------- report


def markdown(r: dict) -> str:
    lines = []
    if r.get("parity"):
        lines += ["| problem (unseen features, same init) | picks identical as a set | max loss-curve difference |",
                  "|---|---:|---:|"]
        for row in r["parity"]:
            lines.append(f"| {row['problem']} | {row['overlap']:.1%} | {row['max_loss_diff']:.1e} |")
        lines.append("")
    s = r.get("speed")
    if s:
        lines += [f"d = {s['d']}, {s['steps']} steps, ours warm (compiled beforehand), both given "
                  f"the same initial indices; official and ours alternated, best of "
                  f"{s.get('repeats', 1)} rounds at N = 20 000 (one at N = 50 000):", "",
                  "| features | official | official, anomaly detection off | ours dense | "
                  "ours pruned | official ÷ ours pruned | same picks as official | pruned = dense | "
                  "max loss diff | similarities computed | load (1/5/15 min) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for row in s["problems"]:
            pr, de = row["pruned"], row.get("dense")
            na = row.get("official_no_anomaly_s")
            ratio = f"{pr['ratio']:.1f}×" + (f" ({pr['ratio_no_anomaly']:.1f}×)" if na else "")
            lines.append(
                f"| {row['problem']} | {row['official_s']:.1f} s | "
                + (f"{na:.1f} s" if na else "—") + " | "
                + (f"{de['warm_s']:.2f} s" if de else "—")
                + f" | {pr['warm_s']:.2f} s | {ratio} | {pr['overlap']:.1%} | "
                + {True: "yes", False: "NO"}.get(row.get("pruned_equals_dense"), "—")
                + f" | {pr['max_loss_diff']:.1e} | {pr['recomputed']:.1%} | "
                f"{row.get('load_before', '')} → {row.get('load_after', '')} |")
        lines.append("")
        yard = [row for row in s["problems"] if row.get("yardstick")]
        if yard:
            lines += ["How far \"same picks\" can go: the official code run again on the same "
                      "input and init, with Intel MKL on another code path (`MKL_CBWR`: only the "
                      "order of its float32 sums changes, as on another CPU):", "",
                      "| features | MKL path | official vs official (default path): same picks | "
                      "its max loss diff | ours pruned vs official (default path) | "
                      "ours pruned vs official (this path) |",
                      "|---|---|---:|---:|---:|---:|"]
            for row in yard:
                rep = row.get("official_repeat_overlap")
                if rep:
                    lines.append(f"| {row['problem']} | default (run again, anomaly detection off) | "
                                 f"{min(rep):.1%} | — | {row['pruned']['overlap']:.1%} | — |")
                for path, y in row["yardstick"].items():
                    vs = row["pruned"]["vs_yardstick"][path]
                    lines.append(f"| {row['problem']} | {path} | {y['official_vs_official']:.1%} | "
                                 f"{y['official_max_loss_diff']:.1e} | {row['pruned']['overlap']:.1%} | "
                                 f"{vs['overlap']:.1%} |")
            lines.append("")
        dense = [row["dense"] for row in s["problems"] if row.get("dense")]
        if dense:
            o = dense[0]
            lines.append(f"Dense assignment: {o['assign_s']*1e3:.0f} ms a step, "
                         f"{o['assign_gflops']:.0f} GFLOP/s; this machine: XLA float32 matmul "
                         f"{o['xla_matmul_gflops']:.0f} GFLOP/s, NumPy sgemm "
                         f"{s['numpy_sgemm_gflops']:.0f} GFLOP/s (20000×384×400).")
            lines.append("")
    if r.get("scale"):
        lines += ["| N = 10⁶, d = 384, B = 10 000 | time per step | init | final matching | peak RSS |",
                  "|---|---:|---:|---:|---:|"]
        for row in r["scale"]:
            steps = row["step_s"]
            warm = steps[1:] or steps
            fin = f"{row['finish_s']:.1f} s" if "finish_s" in row else "—"
            lines.append(f"| {row['setting']} | {np.mean(warm):.1f} s (first, with compile: {steps[0]:.1f} s) | "
                         f"{row['init_s']:.1f} s | {fin} | {row['peak_rss_gb']:.2f} GB |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref-python", default=DEFAULT_REF_PYTHON)
    p.add_argument("--official-repo", default=DEFAULT_OFFICIAL_REPO)
    p.add_argument("--parts", default="parity,speed", help="comma-separated subset of parity,speed,scale")
    p.add_argument("--quick", action="store_true", help="speed at N = 20 000 only")
    p.add_argument("--seed", type=int, default=5001)
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds of official / ours alternated at N = 20 000 (best of each)")
    p.add_argument("--problems", default="",
                   help="comma-separated indices into SPEED_PROBLEMS (default: all)")
    p.add_argument("--repeats-no-anomaly", type=int, default=3,
                   help="how many of those rounds also run the official code without its "
                        "anomaly detection")
    p.add_argument("--yardstick", default="COMPATIBLE",
                   help="comma-separated MKL_CBWR code paths to run the official code under once "
                        "more per speed problem, as the yardstick of 'same picks' (empty: none)")
    p.add_argument("--yardstick-max-n", type=int, default=20_000,
                   help="run the yardstick only on speed problems up to this N (an official "
                        "run at N = 50 000 takes minutes)")
    p.add_argument("--scale-steps", type=int, default=3)
    p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "compare_activeft"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        serve_worker(a.worker, worker)
        return 0
    parts = set(a.parts.split(","))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    results = {"machine": f"{os.cpu_count()} CPU cores"}
    with tempfile.TemporaryDirectory() as tmp:
        if "parity" in parts:
            results["parity"] = part_parity(a, tmp, log)
        if "speed" in parts:
            results["speed"] = part_speed(a, tmp, log)
        if "scale" in parts:
            results["scale"] = part_scale(a, tmp, log)
    write_report(a.out, results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
