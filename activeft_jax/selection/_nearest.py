"""Greedy de-duplicated matching of centers to pool points (ActiveFT's final step, k-means).

Each center, in index order, takes its highest-scoring pool point that no
earlier center took; score(c, x) = cᵀx + bias(x). With bias = 0 on unit-norm
rows this is the most similar point (ActiveFT, as the official code does it);
with bias(x) = −‖x‖²/2 it is the nearest point in Euclidean distance (k-means).

The top-T candidates of every center come from one chunked pass over the pool
(a running top-T merge, never the [B, N] matrix at once); a center whose T
candidates were all taken falls back to one pass over the pool for that center.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from activeft_jax._core import matmul
from activeft_jax._core import default_chunk_rows, plan, scan_rows
from activeft_jax.selection.result import Selection

__all__ = ["nearest_unique"]


def _candidates(centers, points, bias, num: int, rows: int):
    """Top-`num` (scores [B, T], indices [B, T]) of every center over the pool, best first."""
    b = centers.shape[0]
    n = points.shape[0]
    ids = jnp.arange(n, dtype=jnp.int32)
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
                   num_candidates: int = 8, chunk_rows: Optional[int] = None) -> Selection:
    """Matches B centers to B distinct pool points, greedily in center order.

    Args:
      centers: [B, d] centers (prototypes, centroids), B <= N.
      points: [N, d] pool.
      bias: optional [N] added to every score (e.g. −‖x‖²/2 for Euclidean nearest).
      num_candidates: T, candidates per center kept from the chunked pass (static).
      chunk_rows: pool rows per chunk of that pass (static; default: ~4M scores a chunk).

    Returns:
      `Selection(indices [B], values [B])`: center b's point and its score cᵀx + bias(x).
    """
    n = points.shape[0]
    if bias is None:
        bias = jnp.zeros((n,), points.dtype)
    num = min(num_candidates, n)
    rows = chunk_rows or default_chunk_rows(n, centers.shape[0])
    cand_val, cand_idx = _candidates(centers, points, bias, num, rows)

    def body(taken, inp):
        center, vals, idx = inp
        free = ~taken[idx] & (vals > -jnp.inf)
        j = jnp.argmax(free)

        def from_candidates():
            return idx[j], vals[j]

        def full_pass():  # all T candidates taken: score the whole pool for this center
            scores = jnp.where(taken, -jnp.inf, matmul(points, center) + bias)
            i = jnp.argmax(scores).astype(jnp.int32)
            return i, scores[i]

        i, v = lax.cond(jnp.any(free), from_candidates, full_pass)
        return taken.at[i].set(True), (i, v)

    _, (indices, values) = lax.scan(body, jnp.zeros((n,), bool), (centers, cand_val, cand_idx))
    return Selection(indices, values)
