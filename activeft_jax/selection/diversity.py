"""Diversity without a target: k-center greedy (MaxDist / coreset) and random.

References:
  Sener & Savarese. Active Learning for Convolutional Neural Networks: A
  Core-Set Approach. ICLR 2018 (k-center greedy).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from activeft_jax.kernels import Linear, l2_normalize
from activeft_jax.selection._setup import validate
from activeft_jax.selection.greedy import GreedyRule, greedy, top_k
from activeft_jax.selection.result import Selection
from activeft_jax.validation import check_key

__all__ = ["maxdist", "random"]


class _DistanceState(NamedTuple):
    min_sq_dist: jax.Array  # [N] squared kernel distance to the nearest center (inf before any)
    first: jax.Array        # [] int32, the random first center
    step: jax.Array         # [] int32


def _build_maxdist(args, *, k, normalize):
    kernel, pool = args["kernel"], args["pool"]
    if normalize:
        pool = l2_normalize(pool)
    if kernel.has_features:  # evaluate k(x*, S) as one matvec on the features
        pool, kernel = kernel.features(pool), Linear()
    n = pool.shape[0]
    diag = kernel.diag(pool)
    first = jax.random.randint(args["key"], (), 0, n, dtype=jnp.int32)

    def init():
        return _DistanceState(jnp.full((n,), jnp.inf, pool.dtype), first, jnp.zeros((), jnp.int32))

    def score(state):
        # Before any center every distance is +inf; the first center is random,
        # as in the reference (the first element of its shuffled pool).
        first_pick = jnp.where(jnp.arange(n) == state.first, jnp.inf, -jnp.inf)
        return jnp.where(state.step == 0, first_pick, state.min_sq_dist)

    def update(state, index):
        k_row = kernel.cross(pool[index][None, :], pool)[0]
        sq_dist = jnp.maximum(diag[index] + diag - 2 * k_row, 0)
        sq_dist = sq_dist.at[index].set(0)  # exact zero at the center despite round-off
        return _DistanceState(jnp.minimum(state.min_sq_dist, sq_dist), state.first, state.step + 1)

    return GreedyRule(num_points=n, init=init, score=score, update=update)


def maxdist(pool: Any, *, k: int, key: Any, kernel: Any = None, normalize: bool = False,
            allow_repeats: bool = False, progress: bool = False) -> Selection:
    """MaxDist / coreset: k-center greedy on the kernel distance.

    The first center is uniform at random (from `key`); each next pick is the
    point farthest from its nearest center, d²(x, c) = k(x,x) + k(c,c) − 2k(x,c).
    O(N d) per pick, no N × N matrix.

    Args:
      pool: [N, d] pool embeddings.
      k: number of picks (static).
      key: PRNG key for the first center (traceable: vmap over keys).
      kernel: 'linear' (Euclidean distance, default), 'cosine' or 'rbf'.
      normalize: L2-normalize the pool first.
      allow_repeats: let a center be picked again (it never wins: its distance is 0).
      progress: progress bar on stderr.

    Returns:
      `Selection` of k pool indices and each pick's squared distance to the
      centers before it (+inf for the first).
    """
    key = check_key(key, "maxdist")
    inputs = validate(pool, k=k, kernel=kernel)
    args = {"pool": inputs.pool, "kernel": inputs.kernel, "key": key}
    return greedy(_build_maxdist, args, k=inputs.k, allow_repeats=allow_repeats,
                  options=(("normalize", bool(normalize)),), progress=progress, desc="maxdist")


@functools.partial(jax.jit, static_argnames=("n", "k"))
def _random(key, *, n, k):
    return top_k(jax.random.uniform(key, (n,)), k)


def random(pool: Any, *, k: int, key: Any) -> Selection:
    """k distinct pool points uniformly at random.

    Implemented as the top k of i.i.d. uniform priorities, which is a uniform
    random k-subset in uniformly random order; `values` are those priorities.

    Args:
      pool: [N, d] pool (only its length is used).
      k: number of picks (static).
      key: PRNG key (traceable: vmap over keys).
    """
    key = check_key(key, "random")
    inputs = validate(pool, k=k)
    return _random(key, n=inputs.pool.shape[0], k=inputs.k)
