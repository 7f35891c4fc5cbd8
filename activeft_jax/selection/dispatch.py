"""`select(name, ...)`: one entry point for every strategy (DESIGN §3)."""

from __future__ import annotations

from typing import Any, Callable

from activeft_jax.selection import clustering, diversity, prototypes, similarity, transductive, undirected
from activeft_jax.selection.result import Selection

__all__ = ["STRATEGIES", "TARGETED", "select"]

# name -> (function, needs target, needs probs, needs key, accepted options)
_GP = ("noise_std", "kernel", "normalize", "allow_repeats", "space", "progress")
_TABLE: dict[str, tuple[Callable[..., Selection], bool, bool, bool, tuple[str, ...]]] = {
    "itl": (transductive.itl, True, False, False, _GP + ("formulation",)),
    "vtl": (transductive.vtl, True, False, False, _GP),
    "ctl": (transductive.ctl, True, False, False, _GP),
    "mmitl": (transductive.mmitl, True, False, False, _GP),
    "undirected_itl": (undirected.undirected_itl, False, False, False, _GP),
    "undirected_vtl": (undirected.undirected_vtl, False, False, False, _GP),
    "uncertainty": (undirected.uncertainty, False, False, False, ("kernel", "normalize")),
    "cosine": (similarity.cosine, True, False, False, ()),
    "maxdist": (diversity.maxdist, False, False, True, ("kernel", "normalize", "allow_repeats", "progress")),
    "random": (diversity.random, False, False, True, ()),
    "kmeans": (clustering.kmeans, False, False, True, ("normalize", "iters")),
    "kmeans_pp": (clustering.kmeans_pp, False, False, True, ("normalize",)),
    "typiclust": (clustering.typiclust, False, False, True, (
        "normalize", "max_clusters", "min_cluster_size", "num_neighbors", "iters")),
    "probcover": (diversity.probcover, False, False, False, ("normalize", "delta")),
    "information_density": (similarity.information_density, True, True, False, ("beta",)),
    "max_entropy": (similarity.max_entropy, False, True, False, ()),
    "activeft": (prototypes.activeft, False, False, False, (
        "init_indices", "init", "temperature", "steps", "learning_rate", "balance", "optimizer",
        "batch_size", "chunk_rows", "prune", "refresh", "num_fast", "progress")),
}

STRATEGIES: tuple[str, ...] = tuple(_TABLE)
TARGETED: frozenset[str] = frozenset(name for name, row in _TABLE.items() if row[1])

# Options every strategy accepts and ignores where they mean nothing
# (the reference ignores noise for uncertainty sampling, for example).
_COMMON = frozenset({"noise_std", "key", "allow_repeats", "normalize", "kernel", "progress"})


def select(name: str, pool: Any = None, target: Any = None, *, k: int, noise_std: Any = 0.1,
           key: Any = None, allow_repeats: bool = False, normalize: Any = None,
           kernel: Any = None, probs: Any = None, progress: bool = False,
           **options: Any) -> Selection:
    """Selects k pool points with the strategy `name`.

    Args:
      name: one of `STRATEGIES`: itl, vtl, ctl, mmitl, undirected_itl,
        undirected_vtl, uncertainty, cosine, maxdist, random,
        information_density, max_entropy, activeft, kmeans, kmeans_pp,
        typiclust, probcover; and sift (see below).
      pool: [N, d] pool embeddings (for max_entropy it may be omitted).
      target: [m, d] target embeddings; required by itl, vtl, ctl, mmitl,
        cosine and information_density, ignored by the others.
      k: number of picks (a Python int: static under jit).
      noise_std: observation noise standard deviation of the GP rules (> 0).
      key: PRNG key, required by random and maxdist.
      allow_repeats: keep picked points as candidates (GP rules and maxdist).
      normalize: L2-normalize embeddings first; None (default) keeps each
        strategy's own default: off, except typiclust and probcover (their
        official code works on normalized features; activeft always normalizes).
      kernel: 'linear' (default), 'cosine', 'rbf' or a kernel object.
      probs: [N, C] class probabilities (information_density, max_entropy).
      progress: progress bar on stderr for the sequential rules.
      **options: strategy-specific options: `space` ('auto'|'weight'|'kernel')
        for the GP rules, `formulation` for itl, `beta` for information_density,
        and for activeft those of `selection.fit_activeft` (`init_indices`,
        `temperature`, `steps`, `learning_rate`, `batch_size`, ...).

    Returns:
      `Selection(indices [k] int32, values [k])` in pick order.

    `select("sift", pool, prompts, k=..., candidates=200)` runs
    `activeft_jax.selection.sift` with one row of `target` per prompt and returns
    [P, k] arrays; λ is `lambda_` if given, else noise_std² (the default 0.1
    gives SIFT's λ = 0.01). It is not in `STRATEGIES` (whose rules return [k]).

    Raises:
      ValueError: unknown strategy or option, or bad input (wrong rank,
        dimension mismatch, k out of [1, N], NaN/inf, noise_std <= 0, empty or
        missing target, missing key or probs), before anything is traced.
    """
    if name == "sift":
        return _select_sift(pool, target, k=k, noise_std=noise_std, normalize=normalize, **options)
    if name not in _TABLE:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}, sift.")
    fn, needs_target, needs_probs, needs_key, accepted = _TABLE[name]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"strategy {name!r} does not take option(s) {unknown}.")

    given = {
        "noise_std": noise_std,
        "key": key,
        "allow_repeats": allow_repeats,
        "normalize": normalize,
        "kernel": kernel,
        "progress": progress,
        **options,
    }
    if normalize is None:
        del given["normalize"]
    kwargs = {opt: given[opt] for opt in accepted if opt in given}
    if needs_key or name == "activeft":  # activeft: needed unless init_indices are given
        kwargs["key"] = key
    if needs_target and target is None:
        raise ValueError(f"strategy {name!r} needs a `target` of shape [m, d]; got None.")
    if needs_probs and probs is None:
        raise ValueError(f"strategy {name!r} needs `probs`, the [N, C] class probabilities of the pool.")

    if name == "max_entropy":
        if pool is not None:
            n_pool = getattr(pool, "shape", (None,))[0]
            n_probs = getattr(probs, "shape", (None,))[0]
            if n_pool is not None and n_probs is not None and n_pool != n_probs:
                raise ValueError(
                    f"`probs` must have one row per pool point: {n_pool} rows; got shape {probs.shape}."
                )
        return fn(probs, k=k)
    if pool is None:
        raise ValueError(f"strategy {name!r} needs a `pool` of shape [N, d]; got None.")
    if name == "information_density":
        return fn(pool, target, probs, k=k, **kwargs)
    if needs_target:
        return fn(pool, target, k=k, **kwargs)
    return fn(pool, k=k, **kwargs)


_SIFT_OPTIONS = ("candidates", "lambda_", "adaptive", "chunk_rows", "approx")


def _select_sift(pool: Any, prompts: Any, *, k: int, noise_std: Any, normalize: Any,
                 **options: Any) -> Any:
    from activeft_jax.selection.sift import sift

    unknown = sorted(set(options) - set(_SIFT_OPTIONS))
    if unknown:
        raise ValueError(f"strategy 'sift' does not take option(s) {unknown}; see `aft.sift`.")
    if pool is None:
        raise ValueError("strategy 'sift' needs a `pool` of shape [N, d]; got None.")
    if prompts is None:
        raise ValueError("strategy 'sift' needs `target`: the prompt embeddings [P, d]; got None.")
    if "lambda_" not in options:
        from activeft_jax.validation import check_noise_std

        check_noise_std(noise_std)
        options["lambda_"] = noise_std * noise_std
    return sift(pool, prompts, k=k, normalize=bool(normalize), **options)
