"""Greedy de-duplicated matching of centers to pool points (ActiveFT's final step, k-means).

Each center, in index order, takes its highest-scoring pool point that no
earlier center took; score(c, x) = cᵀx + bias(x). With bias = 0 on unit-norm
rows this is the most similar point (ActiveFT, as the official code does it);
with bias(x) = −‖x‖²/2 it is the nearest point in Euclidean distance (k-means).

The top-T candidates of every center come from one chunked pass over the pool
(a running top-T merge, never the [B, N] matrix at once); a center whose T
candidates were all taken falls back to one pass over the pool for that center.
Points in `excluded` (observed, not candidates) count as taken from the start.
On a pool split over devices each device finds its local top-T and only the
[B, D·T] lists and single picks cross devices.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from activeft_jax._core import PLAIN, Shards, default_chunk_rows, matmul, plan, scan_rows
from activeft_jax.selection.result import Selection

__all__ = ["nearest_unique"]


def _candidates(centers, points, bias, num: int, rows: int, ids):
    """Top-`num` (scores [B, T], indices [B, T]) of every center over the (local) pool, best first."""
    b = centers.shape[0]
    n = points.shape[0]
    init = (jnp.full((b, num), -jnp.inf, centers.dtype), jnp.zeros((b, num), jnp.int32))

    def fn(carry, valid, x, bx, ix):
        vals, idx = carry
        sims = matmul(centers, x.T) + bx[None, :]
        sims = jnp.where(valid[None, :], sims, -jnp.inf)
        v, j = lax.top_k(sims, num)
        # Earlier chunks first: among equal scores top_k keeps the lower pool index.
        v_all = jnp.concatenate([vals, v], axis=1)
        i_all = jnp.concatenate([idx, ix[j]], axis=1)
        v, j = lax.top_k(v_all, num)
        return v, jnp.take_along_axis(i_all, j, axis=1)

    return scan_rows(fn, init, plan(n, max(rows, num)), points, bias, ids)


def nearest_unique(centers: jax.Array, points: jax.Array, bias: Optional[jax.Array] = None, *,
                   num_candidates: int = 8, chunk_rows: Optional[int] = None,
                   excluded: Optional[jax.Array] = None,
                   shards: Optional[Shards] = None) -> Selection:
    """Matches B centers to B distinct pool points, greedily in center order.

    Args:
      centers: [B, d] centers (prototypes, centroids), B <= N.
      points: [N, d] pool (this device's block with `shards`).
      bias: optional [N] added to every score (e.g. −‖x‖²/2 for Euclidean nearest).
      num_candidates: T, candidates per center kept from the chunked pass (static).
      chunk_rows: pool rows per chunk of that pass (static; default: ~4M scores a chunk).
      excluded: optional [N] bool: points that may not be taken.
      shards: the pool's blocks (default: one device).

    Returns:
      `Selection(indices [B], values [B])`: center b's point and its score cᵀx + bias(x)
      (-1 and -inf for a center that found no point left).
    """
    n = points.shape[0]
    shards = Shards(PLAIN, n) if shards is None else shards
    if bias is None:
        bias = jnp.zeros((n,), points.dtype)
    taken0 = jnp.zeros((n,), bool) if excluded is None else excluded
    num = min(num_candidates, n)
    rows = chunk_rows or default_chunk_rows(n, centers.shape[0])
    masked_bias = bias if excluded is None else jnp.where(excluded, -jnp.inf, bias)
    cand_val, cand_idx = _candidates(centers, points, masked_bias, num, rows, shards.ids())
    if shards.sharded:  # the best T of every device's T; device order keeps ties to the lower index
        cand_val, pos = lax.top_k(shards.concat(cand_val, axis=1), num)
        cand_idx = jnp.take_along_axis(shards.concat(cand_idx, axis=1), pos, axis=1)

    def body(taken, inp):
        center, vals, idx = inp
        free = ~shards.rows(taken, idx) & (vals > -jnp.inf)
        j = jnp.argmax(free)

        def from_candidates():
            return idx[j], vals[j]

        def full_pass():  # all T candidates taken: score the whole pool for this center
            scores = jnp.where(taken, -jnp.inf, matmul(points, center) + bias)
            i = shards.argmax(scores)
            return i, shards.row(scores, i)

        i, v = lax.cond(jnp.any(free), from_candidates, full_pass)
        valid = v > -jnp.inf
        return shards.mark(taken, i), (jnp.where(valid, i, -1), v)

    _, (indices, values) = lax.scan(body, taken0, (centers, cand_val, cand_idx))
    return Selection(indices, values)
