"""How representative is each subset? Earth mover's distance to the pool on real data.

ActiveFT (Xie et al., CVPR 2023, §3.3) picks B samples whose empirical
distribution is close to the pool's: its objective pulls the prototypes toward
the feature distribution while keeping them apart. Here every diversity
strategy picks B samples of scikit-learn's handwritten digits (all 1 797
images, pixels as features, L2-normalized as ActiveFT does) at budgets of
1%, 2%, 5% and 10%, and we measure

* the earth mover's distance (exact optimal transport, Euclidean ground cost,
  uniform weights 1/N on the pool and 1/B on the subset) between subset and
  pool: lower is more representative;
* how many of the 10 digit classes the subset covers (labels are not used to
  select).

Strategies: activeft, random, kmeans, kmeans_pp, maxdist (k-center greedy),
typiclust, probcover; the randomized ones over `--seeds` seeds (mean ± std).
ProbCover's δ is chosen as in its paper: the largest δ on a grid whose balls
are at least 95% pure with respect to k-means pseudo-labels (k = 10).

    .venv/bin/python -m experiments.activeft_quality

Writes experiments/results/activeft_quality.{png,md,json}. Takes ~2 minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import matplotlib
import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix, vstack
from sklearn.datasets import load_digits

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import activeft_jax as aft  # noqa: E402
from experiments.common import save_figure, write_text  # noqa: E402

STRATEGIES = ("activeft", "random", "kmeans", "kmeans_pp", "maxdist", "typiclust", "probcover")
DETERMINISTIC = frozenset({"probcover"})
BUDGETS = (0.01, 0.02, 0.05, 0.10)
OUT_DIR = Path(__file__).resolve().parent / "results"


def emd(pool: np.ndarray, subset: np.ndarray) -> float:
    """Exact earth mover's distance between the uniform distributions on two point sets."""
    n, b = len(pool), len(subset)
    sq = (pool**2).sum(1)[:, None] + (subset**2).sum(1)[None, :] - 2 * pool @ subset.T
    cost = np.sqrt(np.maximum(sq, 0)).ravel()
    var = np.arange(n * b)
    rows = coo_matrix((np.ones(n * b), (np.repeat(np.arange(n), b), var)), shape=(n, n * b))
    cols = coo_matrix((np.ones(n * b), (np.tile(np.arange(b), n), var)), shape=(b, n * b))
    a_eq = vstack([rows, cols]).tocsr()[:-1]   # one constraint is implied by the others
    b_eq = np.concatenate([np.full(n, 1 / n), np.full(b, 1 / b)])[:-1]
    res = linprog(cost, A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    if not res.success:
        raise RuntimeError(f"optimal transport failed: {res.message}")
    return float(res.fun)


def probcover_delta(x: np.ndarray, alpha: float = 0.95, classes: int = 10) -> float:
    """The largest δ on a grid with ball purity >= alpha w.r.t. k-means pseudo-labels (the paper's rule)."""
    fit = aft.selection.fit_kmeans(x, k=classes, key=jax.random.key(0))
    labels = np.asarray(fit.assign)
    d = np.sqrt(np.maximum((x**2).sum(1)[:, None] + (x**2).sum(1)[None] - 2 * x @ x.T, 0))
    best = None
    for delta in np.arange(0.05, 1.5, 0.05):
        ball = d < delta
        pure = np.all(~ball | (labels[:, None] == labels[None, :]), axis=1)
        if pure.mean() >= alpha:
            best = float(delta)
    return best if best is not None else 0.05


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    a = p.parse_args(argv)
    a.out_dir.mkdir(parents=True, exist_ok=True)

    digits = load_digits()
    x = digits.data.astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = digits.target
    n = len(x)
    delta = probcover_delta(x.astype(np.float64))
    print(f"digits: N = {n}, d = {x.shape[1]}; ProbCover δ = {delta:.2f} (95% pure balls)")

    results: dict = {s: {} for s in STRATEGIES}
    for frac in BUDGETS:
        b = max(1, int(round(frac * n)))
        for name in STRATEGIES:
            seeds = [0] if name in DETERMINISTIC else list(range(a.seeds))
            emds, covered, secs = [], [], []
            for seed in seeds:
                kw = {"delta": delta} if name == "probcover" else {"key": jax.random.key(seed)}
                if name in ("kmeans", "kmeans_pp", "maxdist"):
                    kw["normalize"] = True
                t0 = time.perf_counter()
                sel = jax.block_until_ready(aft.select(name, x, k=b, **kw))
                secs.append(time.perf_counter() - t0)
                idx = np.asarray(sel.indices)
                assert len(set(idx.tolist())) == b, name
                emds.append(emd(x.astype(np.float64), x[idx].astype(np.float64)))
                covered.append(len(set(labels[idx].tolist())))
            results[name][b] = {"emd_mean": float(np.mean(emds)), "emd_std": float(np.std(emds)),
                                "classes_mean": float(np.mean(covered)), "classes_std": float(np.std(covered)),
                                "seconds": float(np.median(secs)), "runs": len(seeds)}
            r = results[name][b]
            print(f"B = {b:4d} ({frac:.0%})  {name:10s} EMD {r['emd_mean']:.4f} ± {r['emd_std']:.4f}  "
                  f"classes {r['classes_mean']:.1f}  ({r['seconds']:.2f} s a run, first includes compile)")

    budgets = sorted(results["random"])
    header = "| strategy | " + " | ".join(f"B = {b} ({b / n:.0%})" for b in budgets) + " |"
    lines = ["Earth mover's distance between subset and pool (lower is more representative; "
             f"mean ± std over {a.seeds} seeds, probcover deterministic):", "", header,
             "|---|" + "---:|" * len(budgets)]
    for name in STRATEGIES:
        cells = [f"{results[name][b]['emd_mean']:.4f} ± {results[name][b]['emd_std']:.4f}"
                 if results[name][b]["runs"] > 1 else f"{results[name][b]['emd_mean']:.4f}" for b in budgets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Digit classes covered (of 10):", "", header, "|---|" + "---:|" * len(budgets)]
    for name in STRATEGIES:
        lines.append(f"| {name} | " + " | ".join(f"{results[name][b]['classes_mean']:.1f}" for b in budgets) + " |")
    md = "\n".join(lines) + "\n"
    print("\n" + md)

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for name in STRATEGIES:
        ys = np.array([results[name][b]["emd_mean"] for b in budgets])
        es = np.array([results[name][b]["emd_std"] for b in budgets])
        style = dict(lw=2.5) if name == "activeft" else dict(lw=1.3)
        axes[0].errorbar(budgets, ys, yerr=es, marker="o", capsize=3, label=name, **style)
        cs = [results[name][b]["classes_mean"] for b in budgets]
        axes[1].plot(budgets, cs, marker="o", label=name, **style)
    for ax in axes:
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(budgets)
        ax.set_xticklabels([f"{b}\n({b / n:.0%})" for b in budgets])
        ax.set_xlabel("budget B (share of the pool)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("earth mover's distance to the pool")
    axes[0].set_title("Representativeness (lower is better)")
    axes[1].set_ylabel("digit classes covered (of 10)")
    axes[1].set_title("Coverage of the classes (labels unused)")
    axes[1].legend(loc="lower right")
    fig.suptitle(f"scikit-learn digits, N = {n}, unit-norm pixels: subsets picked without labels")
    fig.tight_layout()
    save_figure(fig, a.out_dir / "activeft_quality.png", dpi=120)
    write_text(a.out_dir / "activeft_quality.md", md)
    write_text(a.out_dir / "activeft_quality.json", json.dumps({"delta": delta, "results": results}, indent=1))
    print(f"wrote {a.out_dir / 'activeft_quality.png'}, .md and .json")


if __name__ == "__main__":
    main()
