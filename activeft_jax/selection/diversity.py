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

from activeft_jax._core import Shards, default_chunk_rows, layout_of, map_rows, matmul, on_shards, plan
from activeft_jax.kernels import Linear, l2_normalize
from activeft_jax.selection._setup import as_mask, rule_inputs, validate
from activeft_jax.selection.greedy import (
    INPUT_SPECS,
    GreedyRule,
    RuleInputs,
    available_mask,
    greedy,
    masked_top_k,
)
from activeft_jax.selection.result import Selection
from activeft_jax.validation import check_key, check_positive

__all__ = ["MaxDistRule", "maxdist", "probcover", "random"]


class _DistanceState(NamedTuple):
    min_sq_dist: jax.Array  # [N] squared kernel distance to the nearest center (inf before any)
    first: jax.Array        # [] int32, the random first center (used only without centres)
    has_center: jax.Array   # [] bool, a centre exists (a pick or an observed point)


@dataclasses.dataclass(frozen=True)
class MaxDistRule:
    """k-center greedy (MaxDist / coreset) as a greedy rule spec; reads `inputs.key`.

    Observed points are existing centres. Without any, the first pick is
    uniform at random among the pickable points.

    Attributes:
      normalize: L2-normalize the pool first.
    """

    normalize: bool = False

    def build(self, inputs: RuleInputs, k: int, shards: Shards) -> GreedyRule:
        """The k-center rule on `inputs` (random first center from `inputs.key`)."""
        kernel, pool = inputs.kernel, inputs.pool
        if self.normalize:
            pool = l2_normalize(pool)
        if kernel.has_features:  # evaluate k(x*, S) as one matvec on the features
            pool, kernel = kernel.features(pool), Linear()
        n = pool.shape[0]
        diag = kernel.diag(pool)
        ids = shards.ids()
        if inputs.candidates is None:
            first = jax.random.randint(inputs.key, (), 0, shards.n, dtype=jnp.int32)
        else:  # uniform among the candidates that are not observed
            free = available_mask(n, inputs.observed, inputs.candidates)
            j = jax.random.randint(inputs.key, (), 0, jnp.maximum(shards.count(free), 1),
                                   dtype=jnp.int32)
            first = shards.nth_marked(free, j)

        def sq_dist_to(index):
            x, dx = shards.row(pool, index), shards.row(diag, index)
            k_row = kernel.cross(x[None, :], pool)[0]
            sq = jnp.maximum(dx + diag - 2 * k_row, 0)
            return jnp.where(ids == index, jnp.zeros((), sq.dtype), sq)  # exact zero at the center

        def init():
            min_sq = jnp.full((n,), jnp.inf, pool.dtype)
            has = jnp.zeros((), bool)
            if inputs.observed is not None:
                min_sq, count = shards.fold_marked(
                    inputs.observed, lambda acc, index: jnp.minimum(acc, sq_dist_to(index)), min_sq)
                has = count > 0
            return _DistanceState(min_sq, first, has)

        def score(state):
            # Before any center every distance is +inf; the first center is random,
            # as in the reference (the first element of its shuffled pool).
            first_pick = jnp.where(ids == state.first, jnp.inf, -jnp.inf)
            return jnp.where(state.has_center, state.min_sq_dist, first_pick)

        def update(state, index, valid):
            sq = jnp.where(valid, sq_dist_to(index), jnp.inf)
            return _DistanceState(jnp.minimum(state.min_sq_dist, sq), state.first,
                                  state.has_center | valid)

        return GreedyRule(num_points=n, init=init, score=score, update=update)


def maxdist(pool: Any, *, k: int, key: Any, kernel: Any = None, normalize: bool = False,
            allow_repeats: bool = False, progress: bool = False, observed: Any = None,
            candidates: Any = None) -> Selection:
    """MaxDist / coreset: k-center greedy on the kernel distance.

    The first center is uniform at random (from `key`); each next pick is the
    point farthest from its nearest center, d²(x, c) = k(x,x) + k(c,c) − 2k(x,c).
    O(N d) per pick, no N × N matrix.

    Args:
      pool: [N, d] pool embeddings (may be split over devices along N).
      k: number of picks (static).
      key: PRNG key for the first center (traceable: vmap over keys).
      kernel: 'linear' (Euclidean distance, default), 'cosine' or 'rbf'.
      normalize: L2-normalize the pool first.
      allow_repeats: let a center be picked again (it never wins: its distance is 0).
      progress: progress bar on stderr.
      observed: labelled points ([n] indices or a [N] bool mask): existing
        centres (then no pick is random), never picked.
      candidates: [N] bool mask of the points that may be picked; all points
        still count as places a centre must cover.

    Returns:
      `Selection` of k pool indices and each pick's squared distance to the
      centers before it (+inf for the first, when nothing is observed).
    """
    key = check_key(key, "maxdist")
    inputs = validate(pool, k=k, kernel=kernel, observed=observed, candidates=candidates,
                      allow_repeats=allow_repeats, normalize=bool(normalize))
    spec = MaxDistRule(normalize=bool(normalize))
    return greedy(spec, rule_inputs(inputs, key=key), k=inputs.k, allow_repeats=allow_repeats,
                  progress=progress, desc="maxdist")


@functools.partial(jax.jit, static_argnames=("k", "layout"))
def _random(inputs, *, k, layout):
    def local(inputs):
        shards = Shards(layout, inputs.pool.shape[0])
        priorities = shards.full(jax.random.uniform(inputs.key, (shards.n,)))
        available = None
        if inputs.observed is not None or inputs.candidates is not None:
            available = available_mask(inputs.pool.shape[0], inputs.observed, inputs.candidates)
        return masked_top_k(priorities, k, available, shards)

    return on_shards(layout, local, (INPUT_SPECS,), inputs)


def random(pool: Any, *, k: int, key: Any, observed: Any = None,
           candidates: Any = None) -> Selection:
    """k distinct pool points uniformly at random.

    Implemented as the top k of i.i.d. uniform priorities, which is a uniform
    random k-subset in uniformly random order; `values` are those priorities.

    Args:
      pool: [N, d] pool (only its length and layout are used).
      k: number of picks (static).
      key: PRNG key (traceable: vmap over keys).
      observed: labelled points ([n] indices or a [N] bool mask): never picked.
      candidates: [N] bool mask of the points that may be picked.
    """
    key = check_key(key, "random")
    inputs = validate(pool, k=k, observed=observed, candidates=candidates)
    return _random(rule_inputs(inputs, key=key), k=inputs.k, layout=layout_of(inputs.pool))


def _ball_counts(points, sq, centers, center_sq, weight, delta2, rows):
    """For every point x: Σ_c weight_c [‖x − c‖² < δ²], over the given centers: [N]."""

    def fn(x, s):
        d2 = s[:, None] + center_sq[None, :] - 2 * matmul(x, centers.T)
        return jnp.sum(jnp.where(d2 < delta2, weight[None, :], 0), axis=1)

    return map_rows(fn, plan(points.shape[0], rows), points, sq)


def _ball_counts_all(points, sq, weight, delta2, rows, shards: Shards):
    """For every local point x: Σ_{y in the pool} weight_y [‖x − y‖² < δ²] (the blocks travel)."""

    def visit(acc, offset, keys, key_sq, key_weight):
        return acc + _ball_counts(points, sq, keys, key_sq, key_weight, delta2, rows)

    return shards.ring(visit, jnp.zeros((points.shape[0],), weight.dtype), points, sq, weight)


@functools.partial(jax.jit, static_argnames=("k", "normalize", "layout"))
def _probcover(points, delta, masks, *, k, normalize, layout):
    def local(points, delta, masks):
        return _probcover_local(points, delta, *masks, Shards(layout, points.shape[0]), k=k,
                                normalize=normalize)

    return on_shards(layout, local, ("pool", None, ("pool", "pool")), points, delta, masks)


def _probcover_local(points, delta, observed, candidates, shards: Shards, *, k, normalize):
    if normalize:
        points = l2_normalize(points)
    n = points.shape[0]
    dtype = points.dtype
    sq = jnp.sum(points * points, axis=1)
    delta2 = jnp.square(jnp.asarray(delta, dtype))
    rows = default_chunk_rows(n, shards.n)
    ones = jnp.ones((n,), jnp.int32)
    # Points inside a ball of an observed point are covered from the start (the
    # official code drops the edges into them).
    covered = jnp.zeros((n,), bool)
    if observed is not None:
        covered = _ball_counts_all(points, sq, observed.astype(jnp.int32), delta2, rows, shards) > 0
    # Out-degree of every point in the δ-ball graph (self-loops included) into the
    # uncovered points: one chunked O(N² d) pass, then updated as points get covered.
    degree = _ball_counts_all(points, sq, ones if observed is None else (~covered).astype(jnp.int32),
                              delta2, rows, shards)
    unpickable = ~available_mask(n, observed, candidates)
    batch = min(64, shards.n)
    ids = shards.ids()

    def step(carry, _):
        degree, covered, selected = carry
        score = jnp.where(selected, -1, degree)
        pick = shards.argmax(score)                                    # ties: the lowest index
        valid = shards.row(score, pick) >= 0
        x, x_sq = shards.row(points, pick), shards.row(sq, pick)
        d2 = jnp.maximum(sq + x_sq - 2 * matmul(points, x), 0)
        new = (d2 < delta2) & ~covered & valid                         # newly covered points
        count = shards.count(new)
        if shards.sharded:
            def centers_of(i):  # the i-th batch of newly covered points, anywhere in the pool
                j = i * batch + jnp.arange(batch, dtype=jnp.int32)
                return shards.nth_marked(new, j), j < count
        else:
            idx = jnp.concatenate([jnp.nonzero(new, size=n, fill_value=n)[0],
                                   jnp.full((batch,), n, jnp.int32)]).astype(jnp.int32)

            def centers_of(i):
                sel = lax.dynamic_slice_in_dim(idx, i * batch, batch)
                return sel, sel < n

        # Every edge into a newly covered point goes: subtract, from every
        # point's degree, how many newly covered points lie in its ball.
        def cond(st):
            return st[0] * batch < count

        def body(st):
            i, degree = st
            sel, valid_c = centers_of(i)
            sel = jnp.minimum(sel, shards.n - 1)
            lost = _ball_counts(points, sq, shards.rows(points, sel), shards.rows(sq, sel),
                                valid_c.astype(jnp.int32), delta2, rows)
            return i + 1, degree - lost

        _, degree = lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), degree))
        selected = selected | ((ids == pick) & valid)
        out = (jnp.where(valid, pick, -1), jnp.where(valid, count, 0).astype(dtype))
        return (degree, covered | new, selected), out

    init = (degree, covered, unpickable)
    _, (picks, counts) = lax.scan(step, init, length=k)
    return Selection(picks, counts)


def probcover(pool: Any, *, k: int, delta: Any = 0.6, normalize: bool = True,
              observed: Any = None, candidates: Any = None) -> Selection:
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

    With `observed` (the labelled set), the balls of the observed points count
    as covered from the start, as in the official code; observed points are
    never picked. Only `candidates` are picked; every point counts for coverage.
    On a pool split over devices, the O(N² d) degree pass passes the blocks
    around the devices one at a time, and each pick moves only the rows of the
    points it newly covers.

    Args:
      pool: [N, d] embeddings.
      k: number of picks (static).
      delta: ball radius δ > 0 (traced: vmap over radii).
      normalize: L2-normalize first (default, as the official code's features).
      observed: the labelled points ([n] indices or a [N] bool mask).
      candidates: [N] bool mask of the points that may be picked.

    Returns:
      `Selection` in pick order with the number of points each pick newly covered.
    """
    check_positive(delta, "delta")
    inputs = validate(pool, k=k, observed=observed, candidates=candidates)
    masks = (as_mask(inputs.observed, inputs.pool), inputs.candidates)
    return _probcover(inputs.pool, delta, masks, k=inputs.k, normalize=bool(normalize),
                      layout=layout_of(inputs.pool))
