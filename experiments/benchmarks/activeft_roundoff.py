"""ActiveFT: how many picks float32 round-off alone moves, in the official code and in ours.

Issue 15 asks for the official code's pick set exactly. On clustered features ours
agrees on 98.8-99.8% of the picks (N = 20 000, B = 400; by CPU and version,
docs/activeft.md), and the differences are float32 round-off. This script measures two yardsticks for
that figure, on one problem of `compare_activeft.py`'s speed part (the same
features and seed; the official code draws its init once, on the unperturbed
features, and every run below starts from it):

1. *Other arithmetic.* The official code on the same input with Intel MKL made
   to take another code path (`MKL_CBWR=<path>` in its environment, e.g.
   COMPATIBLE, which MKL documents for results reproducible across CPUs): the
   same program, the same library, summing its matmuls in another order, as on
   another CPU. Against the official run with MKL's default path, and against
   ours.
2. *Perturbed input.* `--draws` copies of the features in which a fraction
   `--fraction` of the entries moved by one ulp (each up or down at random;
   numpy `default_rng(draw)`). The official code and ours (`fit_activeft`,
   float32, the default path: pruned on CPU) each run on every copy; each is
   compared with its own run on the unperturbed features, and ours with the
   official run on the same copy.

With `--float64`, ours also runs once in float64 on the unperturbed features
(`jax_enable_x64`, float64 features): whether more precision on our side brings
ours nearer to each official run, and so whose round-off the differences are
(`--combine` adds its columns when every run given has it). The official runs on
the MKL paths are also compared with each other.

Reported: the share of the B picks two runs have in common (as sets) and the
largest difference of their loss curves (the official code prints the loss
with 6 decimals). The official code runs with anomaly detection off (it does
not change the values).

    make bench-activeft-roundoff        # = the first line below
    .venv/bin/python experiments/benchmarks/activeft_roundoff.py --problem clustered --draws 8
    # other inits of the official code, the MKL paths only (docs/activeft_log.md's tables)
    .venv/bin/python experiments/benchmarks/activeft_roundoff.py --draws 0 --init-seed 1 \
        --out experiments/results/activeft_roundoff_clustered_init1
    # one table and plot over such runs
    .venv/bin/python experiments/benchmarks/activeft_roundoff.py --combine \
        experiments/results/activeft_roundoff_clustered.json experiments/results/activeft_roundoff_clustered_init*.json
    # the official code on two more MKL paths, and ours in float64 too (~6 minutes)
    .venv/bin/python experiments/benchmarks/activeft_roundoff.py --draws 0 \
        --mkl-paths AVX2,COMPATIBLE --float64 --out experiments/results/activeft_roundoff_clustered_paths
    # after a change of ours: our side again, against the stored official picks (~1 minute)
    .venv/bin/python experiments/benchmarks/activeft_roundoff.py --rerun-ours \
        experiments/results/activeft_roundoff_clustered.json experiments/results/activeft_roundoff_clustered_init*.json

Writes experiments/results/activeft_roundoff_<problem>.{json,md} (or --out) and a
plot (_picks.png) of the picks in common; `--replot JSON` redraws both from a
run's JSON. 75-95 s per official run on 2 cores, 130-170 s on MKL's COMPATIBLE
path: ~15-20 minutes with the defaults, ~4 minutes with --draws 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _reference import (DEFAULT_OFFICIAL_REPO, DEFAULT_REF_PYTHON, ROOT, run_official,  # noqa: E402
                        run_worker, serve_worker, write_report)
from compare_activeft import SPEED_PROBLEMS, features, max_diff, shared  # noqa: E402


def perturb(x: np.ndarray, fraction: float, draw: int) -> np.ndarray:
    """A copy of `x` with `fraction` of its entries (at least one) moved by one ulp, up or down."""
    rng = np.random.default_rng(draw)
    flat = x.reshape(-1).copy()
    count = max(1, int(round(fraction * flat.size)))
    where = rng.choice(flat.size, size=count, replace=False)
    up = rng.random(count) < 0.5
    flat[where] = np.where(up, np.nextafter(flat[where], np.float32(np.inf)),
                           np.nextafter(flat[where], np.float32(-np.inf)))
    return flat.reshape(x.shape)


def write_inputs(tmp: str, base: np.ndarray, fraction: float, draws: int) -> list:
    """The unperturbed features and `draws` perturbed copies (`perturb`), as .npz files in `tmp`."""
    paths = []
    for draw in range(draws + 1):
        x = base if draw == 0 else perturb(base, fraction, draw)
        paths.append(os.path.join(tmp, f"input{draw}.npz"))
        np.savez(paths[-1], features=x)
    return paths


def worker(spec: dict) -> dict:
    """Our fits on every input, in this process (one compilation); JSON-able picks and losses.

    With `spec["x64"]`, in float64: `jax_enable_x64` and the features cast to float64
    (as near to exact arithmetic as the library goes; no CPU kernels, so slower).
    """
    import jax

    if spec.get("x64"):
        jax.config.update("jax_enable_x64", True)
    from activeft_jax.selection import fit_activeft

    init = np.asarray(spec["init"])
    out = []
    for path in spec["npz"]:
        feats = np.load(path)["features"]
        if spec.get("x64"):
            feats = feats.astype(np.float64)
        t0 = time.perf_counter()
        fit = jax.block_until_ready(fit_activeft(feats, k=spec["k"], init_indices=init,
                                                 key=jax.random.key(0)))
        out.append({"indices": [int(i) for i in np.asarray(fit.selection.indices)],
                    "losses": [float(v) for v in np.asarray(fit.losses)],
                    "seconds": time.perf_counter() - t0})
    return {"runs": out}


def run_ours(spec: dict) -> dict:
    """`worker(spec)` in a fresh process (each fit compiles and runs on its own)."""
    return run_worker(__file__, spec)


def ours_in_float64(path: str, b: int, init) -> dict:
    """Our fit in float64 on one input (`worker`'s `x64`), as the report's `ours64_*` fields."""
    run = run_ours({"npz": [path], "k": b, "init": init, "x64": True})["runs"][0]
    return {"ours64_indices": sorted(run["indices"]), "ours64_losses": run["losses"],
            "ours64_s": run["seconds"]}


def official_init(res: dict) -> list:
    """The official run's initial indices: stored, or drawn again as the official code draws them.

    (`random.seed(seed)`, then `random.sample(range(N), B)`: runs from before the
    indices were stored; checked against those runs' own picks of ours.)
    """
    if "init_indices" in res:
        return res["init_indices"]
    import random

    n = next(p[1] for p in SPEED_PROBLEMS if p[0] == res["problem"])
    return random.Random(res["init_seed"]).sample(list(range(n)), res["B"])


def our_side(res: dict, ours: list) -> None:
    """Fills in our side of every row of `res` from our runs `ours` (one per input, the
    unperturbed first), against each row's stored official picks and loss curve (n/a
    where the curve was not kept: runs from before 5 Dec)."""
    for row in res["paths"]:
        row["ours_vs_official"] = shared(ours[0]["indices"], row["official_indices"])
        row["cross_loss"] = (max_diff(ours[0]["losses"], row["official_losses"])
                             if "official_losses" in row else None)
    for row, m in zip(res["rows"], ours):
        row["ours_self"] = shared(m["indices"], ours[0]["indices"])
        row["ours_vs_official"] = shared(m["indices"], row["official_indices"])
        row["ours_self_loss"] = max_diff(m["losses"], ours[0]["losses"])
        row["cross_loss"] = (max_diff(m["losses"], row["official_losses"])
                             if "official_losses" in row else None)
        row["ours_indices"] = sorted(m["indices"])
    res["ours_s_min"] = min(m["seconds"] for m in ours)
    res["ours_s_max"] = max(m["seconds"] for m in ours)


def rerun_ours(res: dict) -> dict:
    """Our side of an earlier run again (after a change of ours), against its stored official picks.

    The inputs are rebuilt from the run's problem, seed, fraction and draws (the
    perturbations are seeded), and our fits run on all of them (and in float64
    again, where the run has a float64 fit); the official picks, timings and
    self-comparisons are kept.
    """
    name, n, d, b, clustered = next(p for p in SPEED_PROBLEMS if p[0] == res["problem"])
    base = features(res["seed"], n, d, clustered)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_inputs(tmp, base, res["fraction"], res["draws"])
        ours = run_ours({"npz": paths, "k": b, "init": official_init(res)})["runs"]
        ours64 = (ours_in_float64(paths[0], b, official_init(res))
                  if "ours64_indices" in res else {})
    out = json.loads(json.dumps(res))
    our_side(out, ours)
    out.update(ours64)
    out["ours_rerun"] = time.strftime("%Y-%m-%d")
    return out


def summary(values) -> str:
    v = np.asarray(values)
    return f"mean {v.mean():.2%}, min {v.min():.2%}, max {v.max():.2%}"


def loss(x) -> str:
    """A loss difference, or n/a where the official curve was not kept (`--rerun-ours` of older runs)."""
    return "n/a" if x is None else f"{x:.1e}"


def markdown(r: dict) -> str:
    b = r["B"]

    def picks(x):
        return f"{x:.2%} ({round(x * b)})"

    lines = [f"## ActiveFT, float32 round-off: {r['problem']} (features' seed {r['seed']}, the official "
             f"init's seed {r['init_seed']}), the same init for every run",
             "",
             "### The official code with MKL on another code path (MKL_CBWR), unperturbed features",
             "",
             "| MKL code path | official vs official (default path) | ours vs this run | max loss diff: "
             "official vs official | ours vs this run | official run |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in r["paths"]:
        lines.append(f"| {row['path']} | {picks(row['official_self'])} | {picks(row['ours_vs_official'])} | "
                     f"{row['official_self_loss']:.1e} | {loss(row['cross_loss'])} | {row['seconds']:.1f} s |")
    if r["paths"]:
        lines += ["", "(A path whose loss difference is 0 ran bit for bit the default computation: MKL "
                  "kept its kernels on this CPU. Only the others change the arithmetic.)"]
    lines += official_paths_table(r) + float64_table(r)
    lines += ["",
              f"### {r['draws']} inputs with {r['fraction']:g} of the feature entries moved by one ulp",
              "",
              "| input | official vs official (unperturbed) | ours vs ours (unperturbed) | ours vs official | "
              "max loss diff: official vs its own | ours vs its own | ours vs official |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        lines.append(
            f"| {row['input']} | {picks(row['official_self'])} | {picks(row['ours_self'])} | "
            f"{picks(row['ours_vs_official'])} | {row['official_self_loss']:.1e} | "
            f"{row['ours_self_loss']:.1e} | {loss(row['cross_loss'])} |")
    pert = [row for row in r["rows"] if row["input"] != "unperturbed"]
    lines += [""]
    if pert:
        lines += [f"Over the {len(pert)} perturbed inputs: official vs itself "
                  f"{summary([x['official_self'] for x in pert])}; "
                  f"ours vs itself {summary([x['ours_self'] for x in pert])}; "
                  f"ours vs official (all {len(r['rows'])} inputs) {summary([x['ours_vs_official'] for x in r['rows']])}."]
    if r.get("ours_rerun"):
        lines += [f"Our side rerun on {r['ours_rerun']} (`--rerun-ours`), against the official runs' "
                  "stored picks.", ""]
    lines += [f"Official runs (MKL's default path) took {r['official_s_min']:.1f}-{r['official_s_max']:.1f} s, ours "
              f"{r['ours_s_min']:.2f}-{r['ours_s_max']:.2f} s (the first includes compilation).", ""]
    return "\n".join(lines)


def official_runs(r: dict) -> list:
    """(MKL path, picks) of the official runs on the unperturbed features, the default path first."""
    return [("default", r["rows"][0]["official_indices"])] + [
        (q["path"], q["official_indices"]) for q in r["paths"]]


def official_paths_table(r: dict) -> list:
    """Markdown lines: the official runs on the MKL paths against each other (two or more paths)."""
    runs = official_runs(r)
    if len(runs) < 3:
        return []
    lines = ["", "### The official runs against each other (picks in common, of "
             f"{r['B']}; unperturbed features)", "",
             "| | " + " | ".join(name for name, _ in runs) + " |",
             "|---|" + "---:|" * len(runs)]
    for i, (name, idx) in enumerate(runs):
        cells = [str(round(shared(idx, other) * r["B"])) if j >= i else ""
                 for j, (_, other) in enumerate(runs)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def float64_table(r: dict) -> list:
    """Markdown lines: ours in float32 and in float64 against each official run (`--float64`)."""
    if "ours64_indices" not in r:
        return []
    ours32 = r["rows"][0]["ours_indices"]
    lines = ["", "### Ours in float32 and in float64 (`jax_enable_x64`, float64 features) against "
             f"each official run (picks in common, of {r['B']}; unperturbed features)", "",
             "| official run (MKL path) | ours, float32 | ours, float64 |", "|---|---:|---:|"]
    for name, idx in official_runs(r):
        lines.append(f"| {name} | {round(shared(ours32, idx) * r['B'])} | "
                     f"{round(shared(r['ours64_indices'], idx) * r['B'])} |")
    lines.append(f"| ours, float32 | | {round(shared(r['ours64_indices'], ours32) * r['B'])} |")
    lines += ["", f"(Ours in float64 took {r['ours64_s']:.1f} s, compilation included.)"]
    return lines


def plot(r: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [x for x in r["rows"] if x["input"] != "unperturbed"]
    changed = [x for x in r["paths"] if x["official_self_loss"] > 0]   # the arithmetic changed
    series = [("official vs itself,\nanother MKL path", [x["official_self"] for x in changed]),
              ("official vs itself,\n1-ulp inputs", [x["official_self"] for x in rows]),
              ("ours vs itself,\n1-ulp inputs", [x["ours_self"] for x in rows]),
              ("ours vs official,\nsame input", [x["ours_vs_official"] for x in r["rows"]])]
    fig, ax = plt.subplots(figsize=(7.2, 3.8))
    rng = np.random.default_rng(0)
    for i, (label, v) in enumerate(series):
        if not v:
            continue
        picks = np.asarray(v) * r["B"]
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(picks)), picks, s=22, alpha=0.75)
        ax.hlines(np.mean(picks), i - 0.25, i + 0.25, color="k", lw=1)
    ax.set_xticks(range(len(series)), [s[0] for s in series], fontsize=8)
    ax.set_ylabel(f"picks in common (of {r['B']})")
    ax.set_title(f"ActiveFT float32 round-off, {r['problem']} (dots: runs; bars: means)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def combine(runs: list, out: str) -> str:
    """One table and one plot over several runs' JSONs (e.g. other inits), for every MKL path
    that all of them ran (looked up by name: runs may list their paths in other orders)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = runs[0]["B"]
    names = [q["path"] for q in runs[0]["paths"]
             if all(any(o["path"] == q["path"] for o in r["paths"]) for r in runs)]

    def on(path, field):
        return lambda r: next(q for q in r["paths"] if q["path"] == path)[field]

    cols = [(f"official vs official (MKL_CBWR={name})", on(name, "official_self"))
            for name in names]
    cols.append(("ours vs official (default path)", lambda r: r["rows"][0]["ours_vs_official"]))
    cols += [(f"ours vs official (MKL_CBWR={name})", on(name, "ours_vs_official"))
             for name in names]
    if all("ours64_indices" in r for r in runs):   # runs with --float64
        def ours64_vs(field_of):
            return lambda r: shared(r["ours64_indices"], field_of(r))

        cols.append(("ours float64 vs official (default path)",
                     ours64_vs(lambda r: r["rows"][0]["official_indices"])))
        cols += [(f"ours float64 vs official (MKL_CBWR={name})",
                  ours64_vs(on(name, "official_indices"))) for name in names]
        cols.append(("ours float64 vs ours float32", ours64_vs(lambda r: r["rows"][0]["ours_indices"])))
    lines = [f"## ActiveFT, float32 round-off over {len(runs)} inits: {runs[0]['problem']} "
             f"(picks in common, of {b})", "",
             "| official init seed | " + " | ".join(c[0] for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    values = [[round(f(r) * b) for _, f in cols] for r in runs]
    for r, v in zip(runs, values):
        lines.append(f"| {r['init_seed']} | " + " | ".join(map(str, v)) + " |")
    mean = np.mean(values, axis=0)
    lines.append("| mean | " + " | ".join(f"{m:.2f} ({m / b:.2%})" for m in mean) + " |")
    lines.append("| identical sets | " + " | ".join(
        f"{sum(v[i] == b for v in values)} of {len(runs)}" for i in range(len(cols))) + " |")
    md = "\n".join(lines) + "\n"
    with open(out + ".md", "w") as f:
        f.write(md)
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    x = np.arange(len(runs))
    width = 0.72 / len(cols)
    for i, ((label, _), marker) in enumerate(zip(cols, "os^vDP*Xph<>")):
        ax.scatter(x + (i - (len(cols) - 1) / 2) * width, [v[i] for v in values], marker=marker,
                   s=36, label=label)
    ax.set_xticks(x, [str(r["init_seed"]) for r in runs])
    ax.set_xlabel("the official code's init seed")
    ax.set_ylabel(f"picks in common (of {b})")
    ax.set_ylim(min(min(v) for v in values) - 1.5, b + 0.8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    ax.set_title(f"ActiveFT float32 round-off, {runs[0]['problem']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out + ".png", dpi=120)
    plt.close(fig)
    return md


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref-python", default=DEFAULT_REF_PYTHON)
    p.add_argument("--official-repo", default=DEFAULT_OFFICIAL_REPO)
    p.add_argument("--problem", choices=["clustered", "normal"], default="clustered",
                   help="compare_activeft.py's N = 20 000 speed problem of that kind")
    p.add_argument("--seed", type=int, default=5001, help="compare_activeft.py's --seed")
    p.add_argument("--init-seed", type=int, default=None,
                   help="seed of the official code's random init (default: --seed)")
    p.add_argument("--draws", type=int, default=8, help="perturbed inputs (0: none)")
    p.add_argument("--fraction", type=float, default=1e-4,
                   help="share of the feature entries moved by one ulp in each perturbed input")
    p.add_argument("--mkl-paths", default="COMPATIBLE",
                   help="comma-separated MKL_CBWR values to run the official code under (empty: none)")
    p.add_argument("--float64", action="store_true",
                   help="also run ours once in float64 (jax_enable_x64) on the unperturbed features")
    p.add_argument("--out", default=None)
    p.add_argument("--replot", metavar="JSON", help="redraw the tables and plot of an earlier run's JSON")
    p.add_argument("--combine", metavar="JSON", nargs="+",
                   help="one table and plot (--out, default experiments/results/activeft_roundoff_inits) "
                        "over several runs' JSONs")
    p.add_argument("--rerun-ours", metavar="JSON", nargs="+",
                   help="run our side of earlier runs again (after a change of ours) against their stored "
                        "official picks; rewrites each JSON, its tables and plot")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        serve_worker(a.worker, worker)
        return 0
    if a.combine:
        runs = []
        for path in a.combine:
            with open(path) as f:
                runs.append(json.load(f))
        out = a.out or os.path.join(ROOT, "experiments", "results", "activeft_roundoff_inits")
        print(combine(runs, out))
        print(f"wrote {out}.md and .png")
        return 0
    if a.rerun_ours:
        for path in a.rerun_ours:
            with open(path) as f:
                res = rerun_ours(json.load(f))
            out = path[:-len(".json")] if path.endswith(".json") else path
            write_report(out, res, markdown(res))
            plot(res, out + "_picks.png")
        return 0
    if a.replot:
        with open(a.replot) as f:
            res = json.load(f)
        out = a.replot[:-len(".json")] if a.replot.endswith(".json") else a.replot
        write_report(out, res, markdown(res))
        plot(res, out + "_picks.png")
        return 0
    if a.draws < 0 or not 0 < a.fraction <= 1:
        p.error("--draws must be >= 0 and --fraction in (0, 1]")
    mkl_paths = [x for x in a.mkl_paths.split(",") if x]
    index = 0 if a.problem == "clustered" else 1
    name, n, d, b, clustered = SPEED_PROBLEMS[index]
    seed = a.seed + index  # as compare_activeft.part_speed draws the features
    out = a.out or os.path.join(ROOT, "experiments", "results", f"activeft_roundoff_{a.problem}")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    base = features(seed, n, d, clustered)
    init_seed = a.seed if a.init_seed is None else a.init_seed
    res = {"problem": name, "seed": seed, "init_seed": init_seed, "B": b, "draws": a.draws,
           "fraction": a.fraction, "rows": [], "paths": []}
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_inputs(tmp, base, a.fraction, a.draws)
        official = []
        for draw, path in enumerate(paths):
            init = None if draw == 0 else official[0]["init_indices"]
            official.append(run_official(a.ref_python, a.official_repo, path, b, seed=init_seed,
                                         anomaly=False, threads=2, init_indices=init))
            print(f"official, input {draw}: {official[-1]['wall_time_s']:.1f} s", flush=True)
        other = {}
        for mkl in mkl_paths:
            other[mkl] = run_official(a.ref_python, a.official_repo, paths[0], b, seed=init_seed,
                                      anomaly=False, threads=2, init_indices=official[0]["init_indices"],
                                      env={"MKL_CBWR": mkl})
            print(f"official, MKL_CBWR={mkl}: {other[mkl]['wall_time_s']:.1f} s", flush=True)
        ours = run_ours({"npz": paths, "k": b, "init": official[0]["init_indices"]})["runs"]
        if a.float64:
            res.update(ours_in_float64(paths[0], b, official[0]["init_indices"]))
            print(f"ours in float64: {res['ours64_s']:.1f} s", flush=True)
    for mkl, o in other.items():
        res["paths"].append({
            "path": mkl, "seconds": o["wall_time_s"],
            "official_self": shared(o["indices"], official[0]["indices"]),
            "official_self_loss": max_diff(o["losses"], official[0]["losses"]),
            "official_indices": sorted(map(int, o["indices"])), "official_losses": o["losses"]})
    for draw, o in enumerate(official):
        res["rows"].append({
            "input": "unperturbed" if draw == 0 else f"draw {draw}",
            "official_self": shared(o["indices"], official[0]["indices"]),
            "official_self_loss": max_diff(o["losses"], official[0]["losses"]),
            "official_indices": sorted(map(int, o["indices"])), "official_losses": o["losses"]})
    our_side(res, ours)
    for row in res["paths"]:
        print(f"MKL_CBWR={row['path']}: official vs official {row['official_self']:.2%}, ours vs it "
              f"{row['ours_vs_official']:.2%}", flush=True)
    for row in res["rows"]:
        print(f"{row['input']}: official vs itself {row['official_self']:.2%}, ours vs itself "
              f"{row['ours_self']:.2%}, ours vs official {row['ours_vs_official']:.2%}", flush=True)
    res["init_indices"] = [int(i) for i in official[0]["init_indices"]]
    res["official_s_min"] = min(o["wall_time_s"] for o in official)
    res["official_s_max"] = max(o["wall_time_s"] for o in official)
    write_report(out, res, markdown(res))
    plot(res, out + "_picks.png")
    print(f"wrote {out}_picks.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
