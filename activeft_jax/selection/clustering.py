"""Representative subsets by clustering: k-means, k-means++ seeding (BADGE) and TypiClust.

* kmeans_pp: k-means++ seeding as BADGE selects (Ash et al., Deep Batch Active
  Learning by Diverse, Uncertain Gradient Lower Bounds, ICLR 2020; official
  code github.com/JordanAsh/badge): the point of largest norm first, then
  each next point with probability proportional to D², its squared Euclidean
  distance to the nearest point chosen so far; no point twice. Pass gradient
  embeddings to get BADGE itself.
* kmeans: k-means++ init (uniform first center, then D² sampling), `iters`
  Lloyd steps in one `lax.scan`, then each centroid, in order, takes its
  nearest pool point not taken yet (ActiveFT's K-Means baseline).
* typiclust: TypiClust, TPC-RP variant (Hacohen, Dekel, Weinshall. Active
  Learning on a Budget: Opposite Strategies Suit High and Low Budgets. ICML
  2022; official code github.com/avihu111/TypiClust, `deep-al/pycls/al/typiclust.py`).

Distances never form an N × N matrix at once: every pass over pairs is chunked.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from activeft_jax._core import matmul
from activeft_jax.kernels import l2_normalize
from activeft_jax._core import default_chunk_rows, map_rows, plan
from activeft_jax.selection._nearest import nearest_unique
from activeft_jax.selection._setup import validate
from activeft_jax.selection.result import Selection
from activeft_jax.validation import check_key

__all__ = ["KMeansFit", "fit_kmeans", "kmeans", "kmeans_pp", "kmeans_pp_indices", "typiclust"]


def _sq_dist_to(points, sq, center):
    """‖x − c‖² for every row, clamped at 0: [N]."""
    return jnp.maximum(sq + jnp.sum(center * center) - 2 * matmul(points, center), 0)


def kmeans_pp_indices(points: jax.Array, key: jax.Array, k: int, *, first: str = "norm") -> Selection:
    """k-means++ seeding: k distinct indices, each drawn with probability ∝ D².

    Args:
      points: [N, d].
      key: PRNG key.
      k: number of seeds (static).
      first: 'norm' (the largest ‖x‖, as BADGE) or 'random' (uniform, as k-means++).

    Returns:
      `Selection` with the indices in draw order and each pick's D² when it
      was drawn (+inf for the first). If every point not yet drawn coincides
      with a drawn one (all D² = 0), the next is uniform among them.
    """
    n = points.shape[0]
    sq = jnp.sum(points * points, axis=1)
    key_first, key_rest = jax.random.split(key)
    if first == "norm":
        i0 = jnp.argmax(sq).astype(jnp.int32)
    else:
        i0 = jax.random.randint(key_first, (), 0, n, dtype=jnp.int32)
    d2 = _sq_dist_to(points, sq, points[i0]).at[i0].set(0)
    taken = jnp.zeros((n,), bool).at[i0].set(True)

    def body(carry, t):
        d2, taken = carry
        positive = (d2 > 0) & ~taken
        logits = jnp.where(jnp.any(positive), jnp.where(positive, jnp.log(jnp.where(positive, d2, 1)),
                                                        -jnp.inf), 0.0)
        logits = jnp.where(taken, -jnp.inf, logits)
        i = jnp.argmax(logits + jax.random.gumbel(jax.random.fold_in(key_rest, t), (n,),
                                                  d2.dtype)).astype(jnp.int32)
        value = d2[i]
        d2 = jnp.minimum(d2, _sq_dist_to(points, sq, points[i])).at[i].set(0)
        return (d2, taken.at[i].set(True)), (i, value)

    _, (rest, values) = lax.scan(body, (d2, taken), jnp.arange(k - 1))
    inf = jnp.full((1,), jnp.inf, points.dtype)
    return Selection(jnp.concatenate([i0[None], rest]), jnp.concatenate([inf, values]))


class KMeansFit(NamedTuple):
    """Result of `fit_kmeans`.

    Attributes:
      centroids: [K, d].
      assign: [N] int32 cluster of every point (nearest centroid).
      inertia: [iters + 1] Σ_i ‖x_i − c_{a_i}‖² before each Lloyd step and after the last.
    """

    centroids: jax.Array
    assign: jax.Array
    inertia: jax.Array


def _nearest_centroid(points, sq, centroids, rows):
    """(assignment [N], squared distance [N]) to the nearest centroid, chunked."""
    half_norm = 0.5 * jnp.sum(centroids * centroids, axis=1)

    def fn(x, s):
        score = matmul(x, centroids.T) - half_norm[None, :]   # argmax = argmin ‖x − c‖²
        a = jnp.argmax(score, axis=1).astype(jnp.int32)
        best = jnp.take_along_axis(score, a[:, None], axis=1)[:, 0]
        return a, jnp.maximum(s - 2 * best, 0)

    return map_rows(fn, plan(points.shape[0], rows), points, sq)


def _fit_kmeans(points, key, *, k, iters, rows):
    sq = jnp.sum(points * points, axis=1)
    seeds = kmeans_pp_indices(points, key, k, first="random").indices
    centroids = points[seeds]

    def lloyd(centroids, _):
        assign, d2 = _nearest_centroid(points, sq, centroids, rows)
        sums = jax.ops.segment_sum(points, assign, num_segments=k)
        counts = jax.ops.segment_sum(jnp.ones_like(sq), assign, num_segments=k)
        # An empty cluster keeps its centroid.
        new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centroids)
        return new, jnp.sum(d2)

    centroids, inertia = lax.scan(lloyd, centroids, length=iters)
    assign, d2 = _nearest_centroid(points, sq, centroids, rows)
    return KMeansFit(centroids, assign, jnp.concatenate([inertia, jnp.sum(d2)[None]]))


@functools.partial(jax.jit, static_argnames=("k", "iters", "normalize"))
def _fit_kmeans_jit(points, key, *, k, iters, normalize):
    if normalize:
        points = l2_normalize(points)
    return _fit_kmeans(points, key, k=k, iters=iters, rows=default_chunk_rows(points.shape[0], k))


def _check_iters(iters):
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"`iters` must be a Python int >= 0 (static); got {iters!r}.")


def fit_kmeans(points: Any, *, k: int, key: Any, iters: int = 100,
               normalize: bool = False) -> KMeansFit:
    """k-means: k-means++ init, then `iters` Lloyd steps in one `lax.scan`.

    Args:
      points: [N, d].
      k: number of clusters (static).
      key: PRNG key for the k-means++ init (traced: vmap over seeds).
      iters: Lloyd steps (static); a converged fit stays where it is.
      normalize: L2-normalize the points first.
    """
    key = check_key(key, "kmeans")
    _check_iters(iters)
    inputs = validate(points, k=k)
    return _fit_kmeans_jit(inputs.pool, key, k=inputs.k, iters=iters, normalize=bool(normalize))


@functools.partial(jax.jit, static_argnames=("k", "iters", "normalize"))
def _kmeans(points, key, *, k, iters, normalize):
    if normalize:
        points = l2_normalize(points)
    fit = _fit_kmeans(points, key, k=k, iters=iters, rows=default_chunk_rows(points.shape[0], k))
    sq = jnp.sum(points * points, axis=1)
    sel = nearest_unique(fit.centroids, points, -0.5 * sq)
    # score = cᵀx − ‖x‖²/2, so ‖x − c‖² = ‖c‖² − 2 score.
    d2 = jnp.maximum(jnp.sum(fit.centroids**2, axis=1) - 2 * sel.values, 0)
    return Selection(sel.indices, d2)


def kmeans(pool: Any, *, k: int, key: Any, iters: int = 100, normalize: bool = False) -> Selection:
    """K-Means selection: k clusters, then each centroid's nearest pool point not taken yet.

    Centroids are visited in index order and each takes its nearest pool point
    (Euclidean) that no earlier centroid took, so the k picks are distinct.

    Args:
      pool: [N, d] embeddings.
      k: budget = number of clusters (static).
      key: PRNG key for the k-means++ init.
      iters: Lloyd steps (static).
      normalize: L2-normalize the pool first (ActiveFT's features are unit-norm).

    Returns:
      `Selection` in centroid order, with each pick's squared distance to its centroid.
    """
    key = check_key(key, "kmeans")
    _check_iters(iters)
    inputs = validate(pool, k=k)
    return _kmeans(inputs.pool, key, k=inputs.k, iters=iters, normalize=bool(normalize))


@functools.partial(jax.jit, static_argnames=("k", "normalize"))
def _kmeans_pp(points, key, *, k, normalize):
    if normalize:
        points = l2_normalize(points)
    return kmeans_pp_indices(points, key, k, first="norm")


def kmeans_pp(pool: Any, *, k: int, key: Any, normalize: bool = False) -> Selection:
    """k-means++ seeding as BADGE selects: largest norm first, then D² sampling, no repeats.

    With the gradient embeddings of a model's last layer this is BADGE; on any
    other embeddings it is a diversity baseline. One pass over the pool per
    pick, O(N d).

    Args:
      pool: [N, d] embeddings.
      k: number of picks (static).
      key: PRNG key (traced: vmap over seeds).
      normalize: L2-normalize the pool first (then every norm ties and the
        first pick is the lowest index).

    Returns:
      `Selection` in draw order with each pick's D² when it was drawn (+inf first).
    """
    key = check_key(key, "kmeans_pp")
    inputs = validate(pool, k=k)
    return _kmeans_pp(inputs.pool, key, k=inputs.k, normalize=bool(normalize))


# ----------------------------------------------------------------------------- TypiClust


def _typicality(points, sq, cluster, remaining, *, num_clusters, num_neighbors, rows):
    """1 / (mean squared distance to the k_c nearest remaining members of the own cluster + 1e-5).

    k_c = min(num_neighbors, |remaining members of c| // 2), as the official
    code. Chunked over rows: a [rows, N] block of distances at a time, O(N² d).
    Points that are not remaining get -inf.
    """
    n = points.shape[0]
    size = jax.ops.segment_sum(remaining.astype(jnp.int32), cluster, num_segments=num_clusters)
    kc = jnp.minimum(num_neighbors, size[cluster] // 2)                    # [N]
    ids = jnp.arange(n, dtype=jnp.int32)
    t = min(num_neighbors, n)

    def fn(x, s, c, i, k):
        d2 = jnp.maximum(s[:, None] + sq[None, :] - 2 * matmul(x, points.T), 0)   # [C, N]
        ok = (cluster[None, :] == c[:, None]) & remaining[None, :] & (ids[None, :] != i[:, None])
        neg, _ = lax.top_k(jnp.where(ok, -d2, -jnp.inf), t)                 # nearest first
        use = jnp.arange(t)[None, :] < k[:, None]
        mean = jnp.sum(jnp.where(use, -neg, 0), axis=1) / jnp.maximum(k, 1)
        return 1.0 / (mean + 1e-5)

    typ = map_rows(fn, plan(n, rows), points, sq, cluster, ids, kc)
    return jnp.where(remaining, typ, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("k", "num_clusters", "iters", "min_cluster_size",
                                             "num_neighbors", "normalize"))
def _typiclust(points, key, *, k, num_clusters, iters, min_cluster_size, num_neighbors, normalize):
    if normalize:
        points = l2_normalize(points)
    n = points.shape[0]
    rows = default_chunk_rows(n, n, budget=1 << 23)
    fit = _fit_kmeans(points, key, k=num_clusters, iters=iters, rows=default_chunk_rows(n, num_clusters))
    cluster = fit.assign
    sq = jnp.sum(points * points, axis=1)
    size = jax.ops.segment_sum(jnp.ones((n,), jnp.int32), cluster, num_segments=num_clusters)
    kept = size > min_cluster_size
    # Cluster order: kept clusters by size, largest first (ties: lower id), then the rest.
    order_key = jnp.where(kept, -size, n + 1)
    order = jnp.argsort(order_key, stable=True)
    rank_of = jnp.zeros((num_clusters,), jnp.int32).at[order].set(jnp.arange(num_clusters, dtype=jnp.int32))
    ids = jnp.arange(n, dtype=jnp.int32)

    def cond(st):
        return st[0] < k

    def round_(st):
        done, remaining, picks, values = st
        left = jax.ops.segment_sum(remaining.astype(jnp.int32), cluster, num_segments=num_clusters)
        active = kept & (left > 0)
        # Once the kept clusters are used up, the small ones take their turn.
        active = jnp.where(jnp.any(active), active, left > 0)
        typ = _typicality(points, sq, cluster, remaining, num_clusters=num_clusters,
                          num_neighbors=num_neighbors, rows=rows)
        best = jax.ops.segment_max(typ, cluster, num_segments=num_clusters)
        winner = jax.ops.segment_min(jnp.where(remaining & (typ == best[cluster]), ids, n), cluster,
                                     num_segments=num_clusters)
        # Position of each active cluster in this round: its rank among active ones, in order.
        active_in_order = active[order]
        pos_in_order = jnp.cumsum(active_in_order) - 1
        position = done + pos_in_order[rank_of]                          # [K]
        position = jnp.where(active & (position < k), position, k)       # k: dropped
        picks = picks.at[position].set(winner, mode="drop")
        values = values.at[position].set(best, mode="drop")
        chosen = jnp.zeros((n,), bool).at[jnp.where(position < k, winner, n)].set(True, mode="drop")
        return done + jnp.sum(position < k), remaining & ~chosen, picks, values

    init = (jnp.zeros((), jnp.int32), jnp.ones((n,), bool), jnp.zeros((k,), jnp.int32),
            jnp.zeros((k,), points.dtype))
    _, _, picks, values = lax.while_loop(cond, round_, init)
    return Selection(picks, values)


def typiclust(pool: Any, *, k: int, key: Any, max_clusters: int = 500, min_cluster_size: int = 5,
              num_neighbors: int = 20, iters: int = 100, normalize: bool = True) -> Selection:
    """TypiClust (TPC-RP): the most typical point of each of the largest clusters.

    As the official code: K = min(budget, `max_clusters`) k-means clusters of
    the L2-normalized features; clusters of `min_cluster_size` points or fewer
    are dropped; the others are visited largest first, round after round, and
    each visit picks the cluster's most typical point not picked yet, where
    typicality = 1 / (mean squared Euclidean distance to its
    min(`num_neighbors`, |cluster| // 2) nearest remaining cluster members + 1e-5).

    Differences from the official code, all documented choices: the clusters
    come from our k-means (k-means++ init, `iters` Lloyd steps) instead of
    scikit-learn's KMeans (n_init=10, K <= 50) or MiniBatchKMeans (K > 50);
    there is no labelled set (every cluster's count is 0); and when the kept
    clusters run out of points (budget larger than they hold) the small
    clusters take their turn instead of the official code failing.

    Cost: k-means, then one O(N² d) chunked pass over point pairs per round of
    visits (ceil(budget / clusters) rounds); never an N × N matrix at once.

    Args:
      pool: [N, d] embeddings.
      k: budget (static).
      key: PRNG key of the k-means init.
      max_clusters: the official MAX_NUM_CLUSTERS, 500.
      min_cluster_size: the official MIN_CLUSTER_SIZE, 5.
      num_neighbors: the official K_NN, 20.
      iters: Lloyd steps of the clustering.
      normalize: L2-normalize first (the official code's features are normalized).

    Returns:
      `Selection` in visit order with each pick's typicality.
    """
    key = check_key(key, "typiclust")
    _check_iters(iters)
    for name, v in (("max_clusters", max_clusters), ("min_cluster_size", min_cluster_size),
                    ("num_neighbors", num_neighbors)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "min_cluster_size" else 1):
            raise ValueError(f"`{name}` must be a positive Python int; got {v!r}.")
    inputs = validate(pool, k=k)
    num_clusters = min(inputs.k, max_clusters)
    return _typiclust(inputs.pool, key, k=inputs.k, num_clusters=num_clusters, iters=iters,
                      min_cluster_size=min_cluster_size, num_neighbors=num_neighbors,
                      normalize=bool(normalize))
