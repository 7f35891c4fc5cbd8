"""Independent dense references (NumPy, float64) and per-dtype tolerances.

Every reference here recomputes the full GP posterior from scratch with dense
solves: nothing is shared with the library's rank-1 machinery.
"""

from __future__ import annotations

import importlib
import os
import sys

import numpy as np

#: experiments/benchmarks, whose scripts import each other as top-level modules.
BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "experiments", "benchmarks")


def benchmark_module(name: str):
    """The script experiments/benchmarks/`name`.py, imported as a module (its own imports
    of its neighbours, e.g. `_reference`, resolved there)."""
    sys.path.insert(0, BENCHMARKS)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(BENCHMARKS)


def default_codegen_options() -> dict:
    """`compiler_options` for `jax.jit` that undo the suite's quicker XLA:CPU flags.

    For a test's own program that is bound by running rather than compiling (a whole
    model over long texts), where LLVM level 0 and the loop emitters (tests/conftest.py)
    cost more time than they save. Empty when the suite runs with XLA's defaults.
    """
    defaults = {"xla_backend_optimization_level": 3, "xla_cpu_use_fusion_emitters": True}
    names = (f.lstrip("-").split("=")[0]
             for f in os.environ.get("ACTIVEFT_TESTS_FAST_FLAGS", "").split())
    return {name: defaults[name] for name in names}


def quick_codegen() -> bool:
    """Whether this process compiles with the suite's quicker XLA:CPU flags (tests/conftest.py)."""
    return bool(os.environ.get("ACTIVEFT_TESTS_FAST_FLAGS", "").split())


def assert_same_run(actual, desired) -> None:
    """Two programs' values of one fit (losses, prototypes): bit for bit with XLA's default
    code generation, which users run; within a few float32 ulps under the suite's quicker
    flags, where LLVM level 0 and the loop emitters contract multiply-adds by how each
    program happens to fuse (tests/conftest.py). The tests marked `default_codegen` hold
    each path of the pruned fit to bit for bit."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    if not quick_codegen():
        np.testing.assert_array_equal(actual, desired)
        return
    scale = float(np.max(np.abs(desired))) if desired.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=2e-6, atol=1e-6 * scale)


# (rtol, atol) by dtype for values that went through a few rank-1 steps.
TOL = {"float32": (2e-4, 2e-4), "float64": (1e-9, 1e-9)}


def random_problem(seed: int, n: int = 40, d: int = 6, m: int = 4, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    pool = scale * rng.standard_normal((n, d))
    target = scale * rng.standard_normal((m, d))
    return pool, target


def linear_kernel(x, y):
    return x @ y.T


def rbf_kernel(x, y, ell=1.0):
    sq = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return np.exp(-sq / (2 * ell**2))


def cosine_kernel(x, y):
    def nrm(z):
        n = np.linalg.norm(z, axis=1, keepdims=True)
        return np.where(n > 0, z / np.where(n > 0, n, 1), 0)

    return nrm(x) @ nrm(y).T


def posterior_cov(K: np.ndarray, obs, noise_var: float, noise_free=()) -> np.ndarray:
    """Dense posterior covariance of all points given noisy observations at `obs`
    (indices, repeats allowed) and noise-free observations at `noise_free`."""
    idx = list(obs) + list(noise_free)
    if not idx:
        return K.copy()
    noise = np.array([noise_var] * len(obs) + [0.0] * len(noise_free))
    Koo = K[np.ix_(idx, idx)] + np.diag(noise)
    Kxo = K[:, idx]
    return K - Kxo @ np.linalg.solve(Koo, Kxo.T)


def _joint(pool, target, kernel):
    X = np.concatenate([pool, target]) if target is not None else pool
    return kernel(X, X)


def brute_force_greedy(rule: str, pool, target, k: int, noise_var: float, *, kernel=linear_kernel,
                       allow_repeats: bool = False, observed=(), candidates=None):
    """Greedy selection by the definitions of DESIGN §2, recomputing the posterior
    for every candidate at every step. Returns (indices, values).

    `observed` points are conditioned on (noisy) before the first pick and never
    picked; only points with `candidates[x]` True are picked."""
    n = pool.shape[0]
    if rule == "undirected_vtl":
        K = kernel(pool, pool)
        A = list(range(n))
    elif target is None:
        K = kernel(pool, pool)
        A = []
    else:
        K = _joint(pool, target, kernel)
        A = list(range(n, n + target.shape[0]))
    obs, values = [int(i) for i in observed], []
    prior = list(obs)
    for _ in range(k):
        S = posterior_cov(K, obs, noise_var)
        scores = np.empty(n)
        for x in range(n):
            if rule in ("vtl", "undirected_vtl"):
                post = posterior_cov(K, obs + [x], noise_var)
                scores[x] = -np.trace(post[np.ix_(A, A)])
            elif rule == "itl":
                var = S[x, x]
                var_t = posterior_cov(K, obs + A, noise_var)[x, x]
                scores[x] = 0.5 * max(0.0, np.log(var / var_t)) if var > 0 else 0.0
            elif rule == "itl_paper":
                var = S[x, x]
                var_t = posterior_cov(K, obs, noise_var, noise_free=A)[x, x]
                scores[x] = 0.5 * np.log((var + noise_var) / (var_t + noise_var))
            elif rule in ("ctl", "mmitl"):
                corr = np.array([S[x, a] / np.sqrt(S[x, x] * S[a, a]) for a in A])
                scores[x] = corr.mean() if rule == "ctl" else np.mean(-0.5 * np.log(1 - corr**2))
            elif rule == "undirected_itl":
                scores[x] = S[x, x]
            else:
                raise ValueError(rule)
        if not allow_repeats:
            scores[obs] = -np.inf
        scores[prior] = -np.inf
        if candidates is not None:
            scores[~np.asarray(candidates)] = -np.inf
        i = int(np.argmax(scores))
        obs.append(i)
        values.append(scores[i])
    return np.array(obs[len(prior):]), np.array(values)


def k_center_greedy(pool, k: int, first: int, kernel=linear_kernel):
    """Textbook k-center greedy from a given first center (squared kernel distances)."""
    K = kernel(pool, pool)
    diag = np.diag(K)
    D = diag[:, None] + diag[None, :] - 2 * K
    centers, values = [first], [np.inf]
    for _ in range(k - 1):
        dist = D[:, centers].min(axis=1)
        dist[centers] = -np.inf
        i = int(np.argmax(dist))
        centers.append(i)
        values.append(dist[i])
    return np.array(centers), np.array(values)


class count_traces:
    """Counts how often jitted functions named `name` are traced inside the `with` block.

        with count_traces("_greedy_full") as traced:
            aft.select("vtl", P, T, k=4)
        assert traced.count == 1

    Uses `jax.monitoring`'s trace events (public API), so it needs no private
    attribute of the function (the event carries the traced function's name).
    """

    EVENT = "/jax/core/compile/jaxpr_trace_duration"

    def __init__(self, name: str):
        self.name = name
        self.count = 0

    def _listen(self, event, duration, **kwargs):
        if event == self.EVENT and kwargs.get("fun_name") == self.name:
            self.count += 1

    def __enter__(self):
        import jax

        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc):
        import jax

        jax.monitoring.unregister_event_duration_listener(self._listen)
        return False


def official_typiclust(x, clusters, budget, labelled=(), min_size=5, k_nn=20):
    """The official TypiClust selection loop (deep-al/pycls/al/typiclust.py) on given cluster
    labels and a labelled set: clusters sorted by labelled count, then size; labelled points
    leave the clusters' remaining members."""
    labels = clusters.copy()
    ids, sizes = np.unique(labels, return_counts=True)
    existing = np.bincount(labels[list(labelled)], minlength=ids.max() + 1)[ids] if len(labelled) \
        else np.zeros_like(ids)
    keep = sizes > min_size
    order = [c for _, _, c in sorted(zip(existing[keep], -sizes[keep], ids[keep]))]
    labels[list(labelled)] = -1
    picks = []
    for i in range(budget):
        c = order[i % len(order)]
        idx = np.nonzero(labels == c)[0]
        f = x[idx]
        kk = min(k_nn, len(idx) // 2)
        d2 = ((f[:, None] - f[None]) ** 2).sum(-1)
        np.fill_diagonal(d2, np.inf)
        mean = np.sort(d2, axis=1)[:, :kk].mean(1) if kk > 0 else np.zeros(len(idx))
        j = idx[np.argmax(1 / (mean + 1e-5))]
        picks.append(j)
        labels[j] = -1
    return np.array(picks)


def official_probcover(x, delta, budget, labelled=()):
    """The official ProbCover greedy: the labelled points' balls count as covered."""
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    edges = d < delta
    covered = edges[list(labelled)].any(0) if len(labelled) else np.zeros(len(x), bool)
    picks, counts = [], []
    for _ in range(budget):
        deg = (edges & ~covered[None, :]).sum(1).astype(float)
        deg[picks + list(labelled)] = -1
        cur = int(np.argmax(deg))
        new = edges[cur] & ~covered
        picks.append(cur)
        counts.append(new.sum())
        covered |= new
    return np.array(picks), np.array(counts)
