"""Diversity without a target: k-center greedy (MaxDist / coreset), ProbCover and random.

References:
  Sener & Savarese. Active Learning for Convolutional Neural Networks: A
  Core-Set Approach. ICLR 2018 (k-center greedy).
  Yehuda, Dekel, Hacohen, Weinshall. Active Learning Through a Covering Lens.
  NeurIPS 2022 (ProbCover; official code github.com/avihu111/TypiClust,
  `deep-al/pycls/al/prob_cover.py`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from activeft_jax._core import matmul
from activeft_jax.kernels import Linear, l2_normalize
from activeft_jax._core import default_chunk_rows, map_rows, plan
from activeft_jax.selection._setup import validate
from activeft_jax.selection.greedy import GreedyRule, RuleInputs, greedy, top_k
from activeft_jax.selection.result import Selection
from activeft_jax.validation import check_key, check_positive

__all__ = ["MaxDistRule", "maxdist", "probcover", "random"]


class _DistanceState(NamedTuple):
    min_sq_dist: jax.Array  # [N] squared kernel distance to the nearest center (inf before any)
    first: jax.Array        # [] int32, the random first center
    step: jax.Array         # [] int32


@dataclasses.dataclass(frozen=True)
class MaxDistRule:
    """k-center greedy (MaxDist / coreset) as a greedy rule spec; reads `inputs.key`.

    Attributes:
      normalize: L2-normalize the pool first.
    """

    normalize: bool = False

    def build(self, inputs: RuleInputs, k: int) -> GreedyRule:
        """The k-center rule on `inputs` (random first center from `inputs.key`)."""
        kernel, pool = inputs.kernel, inputs.pool
        if self.normalize:
            pool = l2_normalize(pool)
        if kernel.has_features:  # evaluate k(x*, S) as one matvec on the features
            pool, kernel = kernel.features(pool), Linear()
        n = pool.shape[0]
        diag = kernel.diag(pool)
        first = jax.random.randint(inputs.key, (), 0, n, dtype=jnp.int32)

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
    spec = MaxDistRule(normalize=bool(normalize))
    return greedy(spec, RuleInputs(inputs.pool, kernel=inputs.kernel, key=key), k=inputs.k,
                  allow_repeats=allow_repeats, progress=progress, desc="maxdist")


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


def _ball_counts(points, sq, centers, center_sq, weight, delta2, rows):
    """For every point x: Σ_c weight_c [‖x − c‖² < δ²], over the given centers: [N]."""

    def fn(x, s):
        d2 = s[:, None] + center_sq[None, :] - 2 * matmul(x, centers.T)
        return jnp.sum(jnp.where(d2 < delta2, weight[None, :], 0), axis=1)

    return map_rows(fn, plan(points.shape[0], rows), points, sq)


@functools.partial(jax.jit, static_argnames=("k", "normalize"))
def _probcover(points, delta, *, k, normalize):
    if normalize:
        points = l2_normalize(points)
    n = points.shape[0]
    dtype = points.dtype
    sq = jnp.sum(points * points, axis=1)
    delta2 = jnp.square(jnp.asarray(delta, dtype))
    rows = default_chunk_rows(n, n)
    # Out-degree of every point in the δ-ball graph (self-loops included): one
    # chunked O(N² d) pass, then updated as points get covered.
    degree = _ball_counts(points, sq, points, sq, jnp.ones((n,), jnp.int32), delta2, rows)
    batch = min(64, n)

    def step(carry, _):
        degree, covered, selected = carry
        score = jnp.where(selected, -1, degree)
        pick = jnp.argmax(score).astype(jnp.int32)                     # ties: the lowest index
        d2 = jnp.maximum(sq + sq[pick] - 2 * matmul(points, points[pick]), 0)
        new = (d2 < delta2) & ~covered                                 # newly covered points
        count = jnp.sum(new)
        idx = jnp.concatenate([jnp.nonzero(new, size=n, fill_value=n)[0],
                               jnp.full((batch,), n, jnp.int32)]).astype(jnp.int32)

        # Every edge into a newly covered point goes: subtract, from every
        # point's degree, how many newly covered points lie in its ball.
        def cond(st):
            return st[0] * batch < count

        def body(st):
            i, degree = st
            sel = lax.dynamic_slice_in_dim(idx, i * batch, batch)
            valid = sel < n
            c = points[jnp.minimum(sel, n - 1)]
            lost = _ball_counts(points, sq, c, sq[jnp.minimum(sel, n - 1)], valid.astype(jnp.int32),
                                delta2, rows)
            return i + 1, degree - lost

        _, degree = lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), degree))
        return (degree, covered | new, selected.at[pick].set(True)), (pick, count)

    init = (degree, jnp.zeros((n,), bool), jnp.zeros((n,), bool))
    _, (picks, counts) = lax.scan(step, init, length=k)
    return Selection(picks, counts.astype(dtype))


def probcover(pool: Any, *, k: int, delta: Any = 0.6, normalize: bool = True) -> Selection:
    """ProbCover: greedy maximum coverage of δ-balls.

    As the official code: the graph has an edge x → y when ‖x − y‖ < δ
    (strict; every point covers itself); each pick is the point whose ball
    holds the most points not covered yet (ties: the lowest index), and the
    points in its ball become covered. The official code's features are
    L2-normalized; its default δ is 0.6 (`train_al.py`; 0.75 is used for
    CIFAR-10). The paper picks the largest δ whose balls are at least 95% pure
    with respect to k-means pseudo-labels.

    Two official-code defects are not copied: its graph gives the last
    N mod 500 points no outgoing edges (they can never be picked), and once
    everything is covered it picks index 0 again and again. Here every point
    has its edges, and once everything is covered the next picks are the
    lowest indices not picked yet (all degrees are 0), so the k picks are
    distinct.

    Cost: one chunked O(N² d) pass for the degrees, then each pick costs
    O(N d) plus O(N d) per newly covered point (each point is covered once):
    O(N² d) in all, with no N × N matrix or edge list in memory.

    Args:
      pool: [N, d] embeddings.
      k: number of picks (static).
      delta: ball radius δ > 0 (traced: vmap over radii).
      normalize: L2-normalize first (default, as the official code's features).

    Returns:
      `Selection` in pick order with the number of points each pick newly covered.
    """
    check_positive(delta, "delta")
    inputs = validate(pool, k=k)
    return _probcover(inputs.pool, delta, k=inputs.k, normalize=bool(normalize))
