"""`select(name, ...)`: one entry point for every strategy (DESIGN §3)."""

from __future__ import annotations

from typing import Any

from activeft_jax.selection.registry import (
    COMMON_OPTIONS,
    REGISTRY,
    STRATEGIES,
    TARGETED,
    get_strategy,
)
from activeft_jax.selection.result import Selection
from activeft_jax.validation import check_options

__all__ = ["STRATEGIES", "TARGETED", "select"]


def select(name: str, pool: Any = None, target: Any = None, *, k: int, noise_std: Any = 0.1,
           key: Any = None, allow_repeats: bool = False, normalize: Any = None,
           kernel: Any = None, probs: Any = None, progress: bool = False,
           observed: Any = None, candidates: Any = None, **options: Any) -> Selection:
    """Selects k pool points with the strategy `name`.

    Args:
      name: one of `STRATEGIES`: itl, vtl, ctl, mmitl, undirected_itl,
        undirected_vtl, uncertainty, cosine, maxdist, random,
        information_density, max_entropy, min_margin, least_confidence, eig,
        activeft, kmeans, kmeans_pp, typiclust, probcover; and sift (see below).
      pool: [N, d] pool embeddings (for max_entropy, min_margin and
        least_confidence it may be omitted; for eig: penultimate features).
      target: [m, d] target embeddings; required by itl, vtl, ctl, mmitl,
        cosine, information_density and eig, ignored by the others.
      k: number of picks (a Python int: static under jit).
      noise_std: observation noise standard deviation of the GP rules (> 0).
      key: PRNG key, required by random and maxdist.
      allow_repeats: keep picked points as candidates (GP rules and maxdist).
      normalize: L2-normalize embeddings first; None (default) keeps each
        strategy's own default: off, except typiclust and probcover (their
        official code works on normalized features; activeft always normalizes).
      kernel: 'linear' (default), 'cosine', 'rbf' or a kernel object.
      probs: [N, C] class probabilities (information_density, max_entropy,
        min_margin, least_confidence).
      progress: progress bar on stderr for the sequential rules.
      observed: the points already labelled, as [n] int pool indices or a [N]
        bool mask; traced, so rounds with a fixed pool reuse one compiled
        program. The GP rules condition on noisy observations there before
        the first pick (continuing their greedy run), maxdist takes them as
        existing centres, typiclust and probcover use them as their official
        code uses the labelled set, and every strategy never picks them.
      candidates: [N] bool mask of the points that may be picked; the others
        still count wherever a rule reads the pool.
      **options: strategy-specific options: `space` ('auto'|'weight'|'kernel')
        for the GP rules, `formulation` for itl, `beta` for information_density,
        `weights` (required), `bias` and `step_size` for eig,
        and for activeft those of `selection.fit_activeft` (`init_indices`,
        `temperature`, `steps`, `learning_rate`, `batch_size`, ...).

    Returns:
      `Selection(indices [k] int32, values [k])` in pick order.

    `select("sift", pool, prompts, k=..., prefilter=200)` runs
    `activeft_jax.selection.sift` with one row of `target` per prompt and returns
    [P, k] arrays; λ is `lambda_` if given, else noise_std² (the default 0.1
    gives SIFT's λ = 0.01). It is not in `STRATEGIES` (whose rules return [k]).

    Raises:
      ValueError: unknown strategy or option, or bad input (wrong rank,
        dimension mismatch, k out of [1, N], NaN/inf, noise_std <= 0, empty or
        missing target, missing key or probs), before anything is traced.
    """
    rec = get_strategy(name)
    if rec.batched:
        return _select_sift(pool, target, k=k, noise_std=noise_std, normalize=normalize,
                            observed=observed, candidates=candidates, **options)
    unknown = sorted(set(options) - rec.option_names)
    if unknown:
        raise ValueError(f"strategy {name!r} does not take option(s) {unknown}.")
    given = dict(zip(COMMON_OPTIONS, (noise_std, allow_repeats, normalize, kernel, progress,
                                      observed, candidates)))
    if normalize is None:  # each strategy's own default
        del given["normalize"]
    kwargs = {opt: value for opt, value in given.items() if opt in rec.option_names}
    kwargs.update(options)
    if rec.key != "none":
        kwargs["key"] = key
    data = {"pool": pool, "target": target, "probs": probs}
    if rec.needs_target and target is None:
        raise ValueError(f"strategy {name!r} needs a `target` of shape [m, d]; got None.")
    if rec.needs_probs and probs is None:
        raise ValueError(f"strategy {name!r} needs `probs`, the [N, C] class probabilities of the pool.")
    if "pool" in rec.data and pool is None:
        raise ValueError(f"strategy {name!r} needs a `pool` of shape [N, d]; got None.")
    if "pool" not in rec.data and pool is not None:  # max_entropy: the pool only fixes N
        n_pool = getattr(pool, "shape", (None,))[0]
        n_probs = getattr(probs, "shape", (None,))[0]
        if n_pool is not None and n_probs is not None and n_pool != n_probs:
            raise ValueError(
                f"`probs` must have one row per pool point: {n_pool} rows; got shape {probs.shape}."
            )
    check_options(kwargs)  # every numeric option: finite and in range (validation.NUMERIC_OPTIONS)
    return rec.fn(*(data[arg] for arg in rec.data), k=k, **kwargs)


def _select_sift(pool: Any, prompts: Any, *, k: int, noise_std: Any, normalize: Any,
                 observed: Any, candidates: Any, **options: Any) -> Any:
    rec = REGISTRY["sift"]
    unknown = sorted(set(options) - rec.option_names)
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
    check_options(options)
    return rec.fn(pool, prompts, k=k, normalize=bool(normalize), observed=observed,
                  candidates=candidates, **options)
