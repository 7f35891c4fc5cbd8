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
On a pool split over devices each device works on its block; Lloyd's sums and
counts are summed over devices, and TypiClust's neighbour search passes the
blocks around the devices one at a time (`Shards.ring`).

`observed` (the labelled points) and `candidates` (the pickable points):
kmeans and kmeans_pp only never pick the observed points (the clustering and the
D² draws see the whole pool; BADGE seeds from the unlabelled pool); typiclust
uses them as its official code uses the labelled set (below).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from activeft_jax._core import PLAIN, Shards, default_chunk_rows, layout_of, map_rows, matmul, on_shards, plan
from activeft_jax.kernels import l2_normalize
from activeft_jax.selection._nearest import nearest_unique
from activeft_jax.selection._setup import as_mask, validate
from activeft_jax.selection.greedy import available_mask
from activeft_jax.selection.result import Selection
from activeft_jax.validation import check_key, count_true, is_traced

__all__ = ["KMeansFit", "fit_kmeans", "kmeans", "kmeans_pp", "kmeans_pp_indices", "typiclust"]


def _sq_dist_to(points, sq, center):
    """‖x − c‖² for every row, clamped at 0: [N]."""
    return jnp.maximum(sq + jnp.sum(center * center) - 2 * matmul(points, center), 0)


def kmeans_pp_indices(points: jax.Array, key: jax.Array, k: int, *, first: str = "norm",
                      excluded: Optional[jax.Array] = None,
                      shards: Optional[Shards] = None) -> Selection:
    """k-means++ seeding: k distinct indices, each drawn with probability ∝ D².

    Args:
      points: [N, d] (this device's block with `shards`).
      key: PRNG key.
      k: number of seeds (static).
      first: 'norm' (the largest ‖x‖, as BADGE) or 'random' (uniform, as k-means++).
      excluded: optional [N] bool: points never drawn (their D² still counts nothing).
      shards: the pool's blocks (default: one device).

    Returns:
      `Selection` with the indices in draw order and each pick's D² when it
      was drawn (+inf for the first). If every point not yet drawn coincides
      with a drawn one (all D² = 0), the next is uniform among them. A draw
      that finds no point left (only with traced masks) is -1.
    """
    n = points.shape[0]
    shards = Shards(PLAIN, n) if shards is None else shards
    ids = shards.ids()
    sq = jnp.sum(points * points, axis=1)
    key_first, key_rest = jax.random.split(key)
    taken = jnp.zeros((n,), bool) if excluded is None else excluded
    if first == "norm":
        i0 = shards.argmax(sq if excluded is None else jnp.where(taken, -jnp.inf, sq))
    elif excluded is None:
        i0 = jax.random.randint(key_first, (), 0, shards.n, dtype=jnp.int32)
    else:
        free = ~taken
        j = jax.random.randint(key_first, (), 0, jnp.maximum(shards.count(free), 1), jnp.int32)
        i0 = shards.nth_marked(free, j)
    d2 = jnp.where(ids == i0, 0, _sq_dist_to(points, sq, shards.row(points, i0)))
    taken = shards.mark(taken, i0)

    def body(carry, t):
        d2, taken = carry
        positive = (d2 > 0) & ~taken
        any_positive = shards.count(positive) > 0
        logits = jnp.where(any_positive, jnp.where(positive, jnp.log(jnp.where(positive, d2, 1)),
                                                   -jnp.inf), 0.0)
        logits = jnp.where(taken, -jnp.inf, logits)
        noise = shards.full(jax.random.gumbel(jax.random.fold_in(key_rest, t), (shards.n,),
                                              d2.dtype))
        score = logits + noise
        i = shards.argmax(score)
        best, value = shards.values_at(i, score, d2)
        valid = best > -jnp.inf
        d2 = jnp.minimum(d2, jnp.where(ids == i, 0, _sq_dist_to(points, sq, shards.row(points, i))))
        return (d2, shards.mark(taken, i)), (jnp.where(valid, i, -1),
                                              jnp.where(valid, value, -jnp.inf))

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


def _nearest_centroid(points, sq, centroids, rows, active=None):
    """(assignment [N], squared distance [N]) to the nearest (active) centroid, chunked."""
    half_norm = 0.5 * jnp.sum(centroids * centroids, axis=1)
    if active is not None:  # centroid slots at and after `active` are unused
        half_norm = jnp.where(jnp.arange(centroids.shape[0]) < active, half_norm, jnp.inf)

    def fn(x, s):
        score = matmul(x, centroids.T) - half_norm[None, :]   # argmax = argmin ‖x − c‖²
        a = jnp.argmax(score, axis=1).astype(jnp.int32)
        best = jnp.take_along_axis(score, a[:, None], axis=1)[:, 0]
        return a, jnp.maximum(s - 2 * best, 0)

    return map_rows(fn, plan(points.shape[0], rows), points, sq)


def _fit_kmeans(points, key, *, k, iters, rows, shards, active=None):
    sq = jnp.sum(points * points, axis=1)
    seeds = kmeans_pp_indices(points, key, k, first="random", shards=shards).indices
    centroids = shards.rows(points, seeds)

    def lloyd(centroids, _):
        assign, d2 = _nearest_centroid(points, sq, centroids, rows, active)
        sums = shards.psum(jax.ops.segment_sum(points, assign, num_segments=k))
        counts = shards.psum(jax.ops.segment_sum(jnp.ones_like(sq), assign, num_segments=k))
        # An empty cluster keeps its centroid.
        new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centroids)
        return new, shards.psum(jnp.sum(d2))

    centroids, inertia = lax.scan(lloyd, centroids, length=iters)
    assign, d2 = _nearest_centroid(points, sq, centroids, rows, active)
    return KMeansFit(centroids, assign, jnp.concatenate([inertia, shards.psum(jnp.sum(d2))[None]]))


@functools.partial(jax.jit, static_argnames=("k", "iters", "normalize"))
def _fit_kmeans_jit(points, key, *, k, iters, normalize):
    if normalize:
        points = l2_normalize(points)
    return _fit_kmeans(points, key, k=k, iters=iters, rows=default_chunk_rows(points.shape[0], k),
                       shards=Shards(PLAIN, points.shape[0]))


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


_SPECS = ("pool", None, ("pool", "pool"))


def _masks(inputs) -> tuple:
    observed = None if inputs.observed is None else as_mask(inputs.observed, inputs.pool)
    return observed, inputs.candidates


@functools.partial(jax.jit, static_argnames=("k", "iters", "normalize", "layout"))
def _kmeans(points, key, masks, *, k, iters, normalize, layout):
    def local(points, key, masks):
        shards = Shards(layout, points.shape[0])
        if normalize:
            points = l2_normalize(points)
        fit = _fit_kmeans(points, key, k=k, iters=iters,
                          rows=default_chunk_rows(points.shape[0], k), shards=shards)
        sq = jnp.sum(points * points, axis=1)
        excluded = None
        if masks[0] is not None or masks[1] is not None:
            excluded = ~available_mask(points.shape[0], *masks)
        sel = nearest_unique(fit.centroids, points, -0.5 * sq, excluded=excluded, shards=shards)
        # score = cᵀx − ‖x‖²/2, so ‖x − c‖² = ‖c‖² − 2 score.
        d2 = jnp.maximum(jnp.sum(fit.centroids**2, axis=1) - 2 * sel.values, 0)
        return Selection(sel.indices, jnp.where(sel.indices >= 0, d2, jnp.inf))

    return on_shards(layout, local, _SPECS, points, key, masks)


def kmeans(pool: Any, *, k: int, key: Any, iters: int = 100, normalize: bool = False,
           observed: Any = None, candidates: Any = None) -> Selection:
    """K-Means selection: k clusters, then each centroid's nearest pool point not taken yet.

    Centroids are visited in index order and each takes its nearest pool point
    (Euclidean) that no earlier centroid took, so the k picks are distinct.

    Args:
      pool: [N, d] embeddings (may be split over devices along N).
      k: budget = number of clusters (static).
      key: PRNG key for the k-means++ init.
      iters: Lloyd steps (static).
      normalize: L2-normalize the pool first (ActiveFT's features are unit-norm).
      observed: labelled points ([n] indices or a [N] bool mask): clustered
        with the rest, never picked.
      candidates: [N] bool mask of the points that may be picked.

    Returns:
      `Selection` in centroid order, with each pick's squared distance to its centroid.
    """
    key = check_key(key, "kmeans")
    _check_iters(iters)
    inputs = validate(pool, k=k, observed=observed, candidates=candidates)
    return _kmeans(inputs.pool, key, _masks(inputs), k=inputs.k, iters=iters,
                   normalize=bool(normalize), layout=layout_of(inputs.pool))


@functools.partial(jax.jit, static_argnames=("k", "normalize", "layout"))
def _kmeans_pp(points, key, masks, *, k, normalize, layout):
    def local(points, key, masks):
        if normalize:
            points = l2_normalize(points)
        excluded = None
        if masks[0] is not None or masks[1] is not None:
            excluded = ~available_mask(points.shape[0], *masks)
        return kmeans_pp_indices(points, key, k, first="norm", excluded=excluded,
                                 shards=Shards(layout, points.shape[0]))

    return on_shards(layout, local, _SPECS, points, key, masks)


def kmeans_pp(pool: Any, *, k: int, key: Any, normalize: bool = False, observed: Any = None,
              candidates: Any = None) -> Selection:
    """k-means++ seeding as BADGE selects: largest norm first, then D² sampling, no repeats.

    With the gradient embeddings of a model's last layer this is BADGE; on any
    other embeddings it is a diversity baseline. One pass over the pool per
    pick, O(N d).

    Args:
      pool: [N, d] embeddings (may be split over devices along N).
      k: number of picks (static).
      key: PRNG key (traced: vmap over seeds).
      normalize: L2-normalize the pool first (then every norm ties and the
        first pick is the lowest index).
      observed: labelled points ([n] indices or a [N] bool mask): never drawn
        (BADGE seeds among the unlabelled points).
      candidates: [N] bool mask of the points that may be drawn.

    Returns:
      `Selection` in draw order with each pick's D² when it was drawn (+inf first).
    """
    key = check_key(key, "kmeans_pp")
    inputs = validate(pool, k=k, observed=observed, candidates=candidates)
    return _kmeans_pp(inputs.pool, key, _masks(inputs), k=inputs.k, normalize=bool(normalize),
                      layout=layout_of(inputs.pool))


# ----------------------------------------------------------------------------- TypiClust


def _typicality(points, sq, cluster, remaining, shards, *, num_clusters, num_neighbors, rows):
    """1 / (mean squared distance to the k_c nearest remaining members of the own cluster + 1e-5).

    k_c = min(num_neighbors, |remaining members of c| // 2), as the official
    code. Local rows in chunks against every shard's block in turn (a running
    top-t of the nearest), O(N² d) in all. Points that are not remaining get -inf.
    """
    n = points.shape[0]
    size = shards.psum(jax.ops.segment_sum(remaining.astype(jnp.int32), cluster,
                                           num_segments=num_clusters))
    kc = jnp.minimum(num_neighbors, size[cluster] // 2)                    # [n]
    ids = shards.ids()
    t = min(num_neighbors, shards.n)

    def visit(near, offset, keys, key_sq, key_cluster, key_remaining):
        key_ids = offset + jnp.arange(keys.shape[0], dtype=jnp.int32)
        tt = min(t, keys.shape[0])

        def fn(x, s, c, i, best):
            d2 = jnp.maximum(s[:, None] + key_sq[None, :] - 2 * matmul(x, keys.T), 0)  # [C, n]
            ok = ((key_cluster[None, :] == c[:, None]) & key_remaining[None, :]
                  & (key_ids[None, :] != i[:, None]))
            neg, _ = lax.top_k(jnp.where(ok, -d2, -jnp.inf), tt)             # nearest first
            return lax.top_k(jnp.concatenate([best, neg], axis=1), t)[0]

        return map_rows(fn, plan(n, rows), points, sq, cluster, ids, near)

    init = jnp.full((n, t), -jnp.inf, points.dtype)
    neg = shards.ring(visit, init, points, sq, cluster, remaining)
    use = jnp.arange(t)[None, :] < kc[:, None]
    mean = jnp.sum(jnp.where(use, -neg, 0), axis=1) / jnp.maximum(kc, 1)
    return jnp.where(remaining, 1.0 / (mean + 1e-5), -jnp.inf)


@functools.partial(jax.jit, static_argnames=("k", "num_clusters", "iters", "min_cluster_size",
                                             "num_neighbors", "normalize", "layout"))
def _typiclust(points, key, masks, *, k, num_clusters, iters, min_cluster_size, num_neighbors,
               normalize, layout):
    def local(points, key, masks):
        observed, candidates = masks
        shards = Shards(layout, points.shape[0])
        return _typiclust_local(points, key, observed, candidates, shards, k=k,
                                num_clusters=num_clusters, iters=iters,
                                min_cluster_size=min_cluster_size, num_neighbors=num_neighbors,
                                normalize=normalize)

    return on_shards(layout, local, _SPECS, points, key, masks)


def _typiclust_local(points, key, observed, candidates, shards, *, k, num_clusters, iters,
                     min_cluster_size, num_neighbors, normalize):
    if normalize:
        points = l2_normalize(points)
    n = points.shape[0]
    active_clusters = None
    if observed is not None:  # the first min(|L| + k, slots) slots hold the clusters
        active_clusters = jnp.minimum(shards.count(observed) + k, num_clusters)
    rows = default_chunk_rows(n, shards.n, budget=1 << 23)
    fit = _fit_kmeans(points, key, k=num_clusters, iters=iters,
                      rows=default_chunk_rows(n, num_clusters), shards=shards,
                      active=active_clusters)
    cluster = fit.assign
    sq = jnp.sum(points * points, axis=1)
    size = shards.psum(jax.ops.segment_sum(jnp.ones((n,), jnp.int32), cluster,
                                           num_segments=num_clusters))
    kept = size > min_cluster_size
    existing = jnp.zeros((num_clusters,), jnp.int32)
    if observed is not None:
        existing = shards.psum(jax.ops.segment_sum(observed.astype(jnp.int32), cluster,
                                                   num_segments=num_clusters))
    # Cluster order: kept clusters by fewest observed points, then largest (ties: lower id);
    # then the rest, by id.
    order = jnp.lexsort((jnp.where(kept, -size, 0), jnp.where(kept, existing, 0), ~kept))
    rank_of = jnp.zeros((num_clusters,), jnp.int32).at[order].set(
        jnp.arange(num_clusters, dtype=jnp.int32))
    ids = shards.ids()
    remaining0 = jnp.ones((n,), bool) if observed is None else ~observed
    pickable = (lambda r: r) if candidates is None else (lambda r: r & candidates)

    def cond(st):
        return (st[0] < k) & st[4]

    def round_(st):
        done, remaining, picks, values, _ = st
        can = pickable(remaining)
        left = shards.psum(jax.ops.segment_sum(can.astype(jnp.int32), cluster,
                                               num_segments=num_clusters))
        active = kept & (left > 0)
        # Once the kept clusters are used up, the small ones take their turn.
        active = jnp.where(jnp.any(active), active, left > 0)
        typ = _typicality(points, sq, cluster, remaining, shards, num_clusters=num_clusters,
                          num_neighbors=num_neighbors, rows=rows)
        typ_can = jnp.where(can, typ, -jnp.inf)
        best = jax.ops.segment_max(typ_can, cluster, num_segments=num_clusters)
        if shards.sharded:
            best = lax.pmax(best, shards.layout.axes)
        winner = jax.ops.segment_min(jnp.where(can & (typ_can == best[cluster]), ids, shards.n),
                                     cluster, num_segments=num_clusters)
        if shards.sharded:
            winner = lax.pmin(winner, shards.layout.axes)
        # Position of each active cluster in this round: its rank among active ones, in order.
        active_in_order = active[order]
        pos_in_order = jnp.cumsum(active_in_order) - 1
        position = done + pos_in_order[rank_of]                          # [K]
        position = jnp.where(active & (position < k), position, k)       # k: dropped
        picks = picks.at[position].set(winner, mode="drop")
        values = values.at[position].set(best, mode="drop")
        chosen = shards.mark(jnp.zeros((n,), bool), jnp.where(position < k, winner, shards.n))
        added = jnp.sum(position < k)
        return done + added, remaining & ~chosen, picks, values, added > 0

    init = (jnp.zeros((), jnp.int32), remaining0, jnp.full((k,), -1, jnp.int32),
            jnp.full((k,), -jnp.inf, points.dtype), jnp.ones((), bool))
    _, _, picks, values, _ = lax.while_loop(cond, round_, init)
    return Selection(picks, values)


def typiclust(pool: Any, *, k: int, key: Any, max_clusters: int = 500, min_cluster_size: int = 5,
              num_neighbors: int = 20, iters: int = 100, normalize: bool = True,
              observed: Any = None, candidates: Any = None) -> Selection:
    """TypiClust (TPC-RP): the most typical point of each of the largest clusters.

    As the official code: K = min(|L| + budget, `max_clusters`) k-means
    clusters of the L2-normalized features (|L| = the number of observed
    points); clusters of `min_cluster_size` points or fewer are dropped; the
    others are visited in order of how few observed points they hold, then
    largest first, round after round, and each visit picks the cluster's most
    typical point not observed or picked yet, where typicality = 1 / (mean
    squared Euclidean distance to its min(`num_neighbors`, |cluster| // 2)
    nearest remaining cluster members + 1e-5). Observed points count in the
    cluster sizes but not among the remaining members. Only `candidates` are
    picked; the other points still count as members.

    Differences from the official code, all documented choices: the clusters
    come from our k-means (k-means++ init, `iters` Lloyd steps) instead of
    scikit-learn's KMeans (n_init=10, K <= 50) or MiniBatchKMeans (K > 50);
    and when the kept clusters run out of points (budget larger than they
    hold) the small clusters take their turn instead of the official code
    failing. With a traced `observed` (whose count is not static) the
    clustering runs with min(N, `max_clusters`) centroid slots of which the
    first min(|L| + budget, `max_clusters`) are used: the same clusters.

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
      observed: the labelled points ([n] indices or a [N] bool mask).
      candidates: [N] bool mask of the points that may be picked.

    Returns:
      `Selection` in visit order with each pick's typicality.
    """
    key = check_key(key, "typiclust")
    _check_iters(iters)
    for name, v in (("max_clusters", max_clusters), ("min_cluster_size", min_cluster_size),
                    ("num_neighbors", num_neighbors)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "min_cluster_size" else 1):
            raise ValueError(f"`{name}` must be a positive Python int; got {v!r}.")
    inputs = validate(pool, k=k, observed=observed, candidates=candidates)
    n = inputs.pool.shape[0]
    if inputs.observed is None:
        num_clusters = min(inputs.k, max_clusters)
    elif is_traced(inputs.observed):  # |L| is not static: every slot, the first |L| + k used
        num_clusters = min(n, max_clusters)
    else:
        labelled = count_true(as_mask(inputs.observed, inputs.pool))
        num_clusters = min(labelled + inputs.k, max_clusters, n)
    return _typiclust(inputs.pool, key, _masks(inputs), k=inputs.k, num_clusters=num_clusters,
                      iters=iters, min_cluster_size=min_cluster_size,
                      num_neighbors=num_neighbors, normalize=bool(normalize),
                      layout=layout_of(inputs.pool))
