"""Relevance by similarity: nearest neighbours, and the softmax-based rules.

* cosine: the k pool points with the largest mean cosine similarity to the
  targets (nearest-neighbour retrieval; the reference's `CosineSimilarity`).
* max_entropy: the k largest predictive entropies H(p(x)).
* information_density: H(p(x)) · (mean cosine similarity to A)^β (Settles &
  Craven, 2008), β = 1 by default.

The last two take class probabilities `probs` [N, C] computed by the caller.
(The reference applies a softmax to whatever `model(x)` returns; to compare
with it, pass exactly the probabilities it ends up using.)
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np

from activeft_jax.kernels import l2_normalize
from activeft_jax._core import matmul
from activeft_jax.selection._setup import validate
from activeft_jax.selection.greedy import top_k
from activeft_jax.selection.result import Selection
from activeft_jax.validation import as_float_matrix, check_finite, check_k, is_traced

__all__ = ["cosine", "information_density", "max_entropy", "mean_cosine_similarity", "entropy"]


def mean_cosine_similarity(pool: jax.Array, target: jax.Array) -> jax.Array:
    """mean_a cos(x, a) for every pool point: [N]. Zero rows have similarity 0."""
    centroid = jnp.mean(l2_normalize(target), axis=0)
    return matmul(l2_normalize(pool), centroid)


def entropy(probs: jax.Array) -> jax.Array:
    """Shannon entropy in nats of each row of probabilities (0 log 0 = 0): [N]."""
    return jnp.sum(jsp.entr(probs), axis=-1)


@functools.partial(jax.jit, static_argnames=("k",))
def _cosine(pool, target, *, k):
    return top_k(mean_cosine_similarity(pool, target), k)


def cosine(pool: Any, target: Any, *, k: int) -> Selection:
    """Nearest neighbours: the k largest mean cosine similarities to the targets.

    Args:
      pool: [N, d] pool embeddings.
      target: [m, d] target embeddings.
      k: number of picks (static).

    Returns:
      `Selection`, most similar first, with the mean cosine similarities.
    """
    inputs = validate(pool, target, k=k, need_target=True)
    return _cosine(inputs.pool, inputs.target, k=inputs.k)


def _validate_probs(probs: Any, n: int | None) -> jax.Array:
    probs = as_float_matrix(probs, "probs")
    if n is not None and probs.shape[0] != n:
        raise ValueError(
            f"`probs` must have one row per pool point: shape [{n}, C]; got shape {probs.shape}."
        )
    check_finite(probs, "probs")
    if not is_traced(probs):
        p = np.asarray(probs)
        if np.any(p < 0):
            raise ValueError(f"`probs` (shape {probs.shape}) has negative entries; pass probabilities, not logits.")
        sums = p.sum(axis=1)
        if not np.allclose(sums, 1.0, atol=1e-3):
            i = int(np.argmax(np.abs(sums - 1.0)))
            raise ValueError(
                f"`probs` rows must sum to 1 (shape {probs.shape}); row {i} sums to {sums[i]:.6g}. "
                "Pass probabilities, e.g. jax.nn.softmax(logits)."
            )
    return probs


@functools.partial(jax.jit, static_argnames=("k",))
def _max_entropy(probs, *, k):
    return top_k(entropy(probs), k)


def max_entropy(probs: Any, *, k: int) -> Selection:
    """The k pool points with the most uncertain predictions.

    Args:
      probs: [N, C] predicted class probabilities of the pool points.
      k: number of picks (static).

    Returns:
      `Selection`, largest entropy first, with the entropies in nats.
    """
    probs = _validate_probs(probs, None)
    k = check_k(k, probs.shape[0], name="probs")
    return _max_entropy(probs, k=k)


@functools.partial(jax.jit, static_argnames=("k",))
def _information_density(pool, target, probs, beta, *, k):
    sim = mean_cosine_similarity(pool, target)
    return top_k(entropy(probs) * jnp.power(sim, beta), k)


def information_density(pool: Any, target: Any, probs: Any, *, k: int, beta: Any = 1.0) -> Selection:
    """Information density: entropy weighted by similarity to the targets.

    value(x) = H(p(x)) · (mean_a cos(x, a))^β. With a negative mean similarity
    and a non-integer β the power is NaN; such points are never picked.

    Args:
      pool: [N, d] pool embeddings.
      target: [m, d] target embeddings.
      probs: [N, C] predicted class probabilities of the pool points.
      k: number of picks (static).
      beta: exponent β on the similarity (traceable; default 1).

    Returns:
      `Selection`, best first, with the information-density values.
    """
    inputs = validate(pool, target, k=k, need_target=True)
    probs = _validate_probs(probs, inputs.pool.shape[0]).astype(inputs.pool.dtype)
    beta = jnp.asarray(beta, inputs.pool.dtype)
    return _information_density(inputs.pool, inputs.target, probs, beta, k=inputs.k)
