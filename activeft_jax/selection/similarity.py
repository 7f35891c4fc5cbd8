"""Relevance by similarity: nearest neighbours, and the softmax-based rules.

* cosine: the k pool points with the largest mean cosine similarity to the
  targets (nearest-neighbour retrieval; the reference's `CosineSimilarity`).
* max_entropy: the k largest predictive entropies H(p(x)).
* min_margin: the k smallest margins p_(1)(x) − p_(2)(x) between the two most
  probable classes (the reference's `MinMargin`).
* least_confidence: the k smallest top-class probabilities max_c p(c|x) (the
  reference's `LeastConfidence`).
* information_density: H(p(x)) · (mean cosine similarity to A)^β (Settles &
  Craven, 2008), β = 1 by default.

All but cosine take class probabilities `probs` [N, C] computed by the caller.
(The reference applies a softmax to whatever `model(x)` returns; to compare
with it, pass exactly the probabilities it ends up using.)
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp

from activeft_jax.kernels import l2_normalize
from activeft_jax._core import matmul
from activeft_jax._core import Shards, concrete, layout_of, on_shards
from activeft_jax.selection._setup import as_mask, validate
from activeft_jax.selection.greedy import available_mask, masked_top_k
from activeft_jax.selection.result import Selection
from activeft_jax.validation import (
    as_float_matrix,
    check_available,
    check_candidates,
    check_finite,
    check_k,
    check_observed,
    is_traced,
)

__all__ = ["cosine", "entropy", "information_density", "least_confidence", "max_entropy",
           "mean_cosine_similarity", "min_margin"]


def mean_cosine_similarity(pool: jax.Array, target: jax.Array) -> jax.Array:
    """mean_a cos(x, a) for every pool point: [N]. Zero rows have similarity 0."""
    centroid = jnp.mean(l2_normalize(target), axis=0)
    return matmul(l2_normalize(pool), centroid)


def entropy(probs: jax.Array) -> jax.Array:
    """Shannon entropy in nats of each row of probabilities (0 log 0 = 0): [N]."""
    return jnp.sum(jsp.entr(probs), axis=-1)


@functools.partial(jax.jit, static_argnames=("score", "k", "layout"))
def _scored_top_k(score, pool_args, shared_args, masks, *, k, layout):
    """top-k of `score(*pool_args, *shared_args)` over the (local block of the) pool."""
    def local(pool_args, shared_args, masks):
        observed, candidates = masks
        n = pool_args[0].shape[0]
        shards = Shards(layout, n)
        available = None
        if observed is not None or candidates is not None:
            available = available_mask(n, observed, candidates)
        return masked_top_k(score(*pool_args, *shared_args), k, available, shards)

    pool_specs = tuple("pool" for _ in pool_args)
    return on_shards(layout, local, (pool_specs, None, ("pool", "pool")), pool_args, shared_args,
                     masks)


def _masks(inputs) -> tuple:
    return as_mask(inputs.observed, inputs.pool), inputs.candidates


def _cosine_score(pool, target):
    return mean_cosine_similarity(pool, target)


def cosine(pool: Any, target: Any, *, k: int, observed: Any = None,
           candidates: Any = None) -> Selection:
    """Nearest neighbours: the k largest mean cosine similarities to the targets.

    Args:
      pool: [N, d] pool embeddings (may be split over devices along N).
      target: [m, d] target embeddings.
      k: number of picks (static).
      observed: labelled points ([n] indices or a [N] bool mask): never picked.
      candidates: [N] bool mask of the points that may be picked.

    Returns:
      `Selection`, most similar first, with the mean cosine similarities.
    """
    inputs = validate(pool, target, k=k, need_target=True, observed=observed,
                      candidates=candidates)
    return _scored_top_k(_cosine_score, (inputs.pool,), (inputs.target,), _masks(inputs),
                         k=inputs.k, layout=layout_of(inputs.pool))


@jax.jit
def _probs_summary(p):
    # Reductions only: the same replicated answer on every device and process.
    sums = jnp.sum(p, axis=1)
    worst = jnp.argmax(jnp.abs(sums - 1.0))
    worst_sum = jnp.sum(jnp.where(jnp.arange(p.shape[0]) == worst, sums, 0))
    return jnp.any(p < 0), jnp.all(jnp.abs(sums - 1.0) <= 1e-3), worst, worst_sum


def _validate_probs(probs: Any, n: int | None) -> jax.Array:
    probs = as_float_matrix(probs, "probs")
    if n is not None and probs.shape[0] != n:
        raise ValueError(
            f"`probs` must have one row per pool point: shape [{n}, C]; got shape {probs.shape}."
        )
    check_finite(probs, "probs")
    if not is_traced(probs):
        negative, sum_to_one, worst, worst_sum = concrete(_probs_summary, probs)
        if bool(negative):
            raise ValueError(f"`probs` (shape {probs.shape}) has negative entries; pass probabilities, not logits.")
        if not bool(sum_to_one):
            raise ValueError(
                f"`probs` rows must sum to 1 (shape {probs.shape}); row {int(worst)} sums to "
                f"{float(worst_sum):.6g}. Pass probabilities, e.g. jax.nn.softmax(logits)."
            )
    return probs


def _entropy_score(probs):
    return entropy(probs)


def max_entropy(probs: Any, *, k: int, observed: Any = None, candidates: Any = None) -> Selection:
    """The k pool points with the most uncertain predictions.

    Args:
      probs: [N, C] predicted class probabilities of the pool points (may be
        split over devices along N).
      k: number of picks (static).
      observed: labelled points ([n] indices or a [N] bool mask): never picked.
      candidates: [N] bool mask of the points that may be picked.

    Returns:
      `Selection`, largest entropy first, with the entropies in nats.
    """
    return _top_k_of_probs(_entropy_score, probs, k, observed, candidates)


def _top_k_of_probs(score, probs: Any, k: Any, observed: Any, candidates: Any, *,
                    min_classes: int = 1) -> Selection:
    """Validates `probs` [N, C], `k` and the masks, then the top-k of `score(probs)` [N]."""
    probs = _validate_probs(probs, None)
    n, c = probs.shape
    if c < min_classes:
        raise ValueError(f"`probs` must have at least {min_classes} classes (columns); got shape "
                         f"{probs.shape}.")
    k = check_k(k, n, name="probs")
    observed = check_observed(observed, n)
    candidates = check_candidates(candidates, n)
    check_available(k, n, observed, candidates)
    masks = (None if observed is None else as_mask(observed, probs), candidates)
    return _scored_top_k(score, (probs,), (), masks, k=k, layout=layout_of(probs))


def _margin_score(probs):
    # max and the max of the rest (a tied top class counts twice): cheaper to compile than top_k
    first = jnp.argmax(probs, axis=1)
    top = jnp.take_along_axis(probs, first[:, None], axis=1)[:, 0]
    rest = jnp.where(jnp.arange(probs.shape[1])[None, :] == first[:, None], -jnp.inf, probs)
    return jnp.max(rest, axis=1) - top


def min_margin(probs: Any, *, k: int, observed: Any = None, candidates: Any = None) -> Selection:
    """The k pool points whose two most probable classes are the closest.

    value(x) = −(p_(1)(x) − p_(2)(x)), minus the margin between the largest and
    the second largest class probability (larger is more uncertain), as in the
    reference's `MinMargin` (Settles & Craven, 2008).

    Args:
      probs: [N, C] predicted class probabilities of the pool points, C >= 2
        (may be split over devices along N).
      k: number of picks (static).
      observed: labelled points ([n] indices or a [N] bool mask): never picked.
      candidates: [N] bool mask of the points that may be picked.

    Returns:
      `Selection`, smallest margin first, with the values −margin (in [−1, 0]).
    """
    return _top_k_of_probs(_margin_score, probs, k, observed, candidates, min_classes=2)


def _confidence_score(probs):
    return -jnp.max(probs, axis=1)


def least_confidence(probs: Any, *, k: int, observed: Any = None,
                     candidates: Any = None) -> Selection:
    """The k pool points whose most probable class is the least probable.

    value(x) = −max_c p(c|x), as in the reference's `LeastConfidence` (Settles &
    Craven, 2008). With two classes it ranks like `min_margin` and `max_entropy`.

    Args:
      probs: [N, C] predicted class probabilities of the pool points (may be
        split over devices along N).
      k: number of picks (static).
      observed: labelled points ([n] indices or a [N] bool mask): never picked.
      candidates: [N] bool mask of the points that may be picked.

    Returns:
      `Selection`, least confident first, with the values −max_c p(c|x).
    """
    return _top_k_of_probs(_confidence_score, probs, k, observed, candidates)


def _density_score(pool, probs, target, beta):
    return entropy(probs) * jnp.power(mean_cosine_similarity(pool, target), beta)


def information_density(pool: Any, target: Any, probs: Any, *, k: int, beta: Any = 1.0,
                        observed: Any = None, candidates: Any = None) -> Selection:
    """Information density: entropy weighted by similarity to the targets.

    value(x) = H(p(x)) · (mean_a cos(x, a))^β. With a negative mean similarity
    and a non-integer β the power is NaN; such points rank below every other
    (they are picked only when nothing else is left).

    Args:
      pool: [N, d] pool embeddings (may be split over devices along N).
      target: [m, d] target embeddings.
      probs: [N, C] predicted class probabilities of the pool points.
      k: number of picks (static).
      beta: exponent β on the similarity (traceable; default 1).
      observed: labelled points ([n] indices or a [N] bool mask): never picked.
      candidates: [N] bool mask of the points that may be picked.

    Returns:
      `Selection`, best first, with the information-density values.
    """
    inputs = validate(pool, target, k=k, need_target=True, observed=observed,
                      candidates=candidates)
    probs = _validate_probs(probs, inputs.pool.shape[0]).astype(inputs.pool.dtype)
    beta = jnp.asarray(beta, inputs.pool.dtype)
    return _scored_top_k(_density_score, (inputs.pool, probs), (inputs.target, beta),
                         _masks(inputs), k=inputs.k, layout=layout_of(inputs.pool))
