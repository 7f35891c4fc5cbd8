"""Exact top-K retrieval: for each query, the K pool rows with the largest score.

    vals, idx = aft.retrieval.top_k(queries, pool, k=200)                 # inner product
    vals, idx = aft.retrieval.top_k(queries, pool, k=200, metric="abs")   # |<x, q>| (SIFT)

Scores of a query q [d] against a pool row x [d]:

* ``"ip"``:     ⟨x, q⟩
* ``"cosine"``: ⟨x, q⟩ / (‖x‖ ‖q‖)  (a zero row scores 0)
* ``"abs"``:    |⟨x, q⟩|, SIFT's prefilter. The reference `Retriever` searches
  q and −q in an inner-product index and keeps the K largest of the 2K hits,
  i.e. the top-K by |⟨x, q⟩| (for K ≤ N/2; beyond that the reference can
  return a point twice, this function never does).

The pool is read in chunks of `chunk_rows` rows inside one `lax.scan`; a
running [P, K] top-K is merged with each chunk's [P, C] scores, so memory is
O(P·(K + C)) however large N is. Results are sorted by score, best first; ties
go to the lower pool index (deterministic). A pool split along N over devices
(any mesh, Explicit or Auto axes, one process or several) is searched where it
lies: each device finds its local top-K and only the [P, K] lists travel; the
result is replicated. `mask` ([N] bool) limits the rows that may be returned.

`approx=True` uses `lax.approx_max_k` per chunk (TPU-friendly; on CPU it is
exact), with `recall_target`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from activeft_jax._core import Shards, layout_of, matmul, on_shards, plan
from activeft_jax.validation import (
    as_float_matrix,
    check_candidates,
    check_finite,
    check_magnitude,
)

__all__ = ["METRICS", "TopK", "sharded_top_k", "top_k"]

METRICS = ("ip", "cosine", "abs")


class TopK(NamedTuple):
    """Top-K per query: `values` [P, K] scores, best first; `indices` [P, K] int32 pool rows."""

    values: jax.Array
    indices: jax.Array


def _scores(queries: jax.Array, block: jax.Array, metric: str) -> jax.Array:
    s = matmul(queries, block.T)                                   # [P, C]
    if metric == "abs":
        return jnp.abs(s)
    if metric == "cosine":
        tiny = jnp.finfo(s.dtype).tiny
        qn = jnp.maximum(jnp.linalg.norm(queries, axis=1), tiny)
        bn = jnp.maximum(jnp.linalg.norm(block, axis=1), tiny)
        return s / qn[:, None] / bn[None, :]
    return s


def _select(scores: jax.Array, k: int, approx: bool, recall_target: float):
    if approx:
        return lax.approx_max_k(scores, k, recall_target=recall_target)
    return lax.top_k(scores, k)


def _merge(run_v, run_i, v, i, k):
    # Running entries come first and hold lower pool indices than the new
    # chunk; lax.top_k keeps the earlier position on ties, so ties go to the
    # lower pool index.
    vals, pos = lax.top_k(jnp.concatenate([run_v, v], axis=1), k)
    idx = jnp.take_along_axis(jnp.concatenate([run_i, i], axis=1), pos, axis=1)
    return vals, idx


def _local_top_k(queries, pool, ids, mask, *, k, metric, chunk_rows, approx, recall_target):
    n = pool.shape[0]
    chunks = plan(n, max(chunk_rows, k))
    if chunks.rows == n:
        s = _scores(queries, pool, metric)
        if mask is not None:
            s = jnp.where(mask[None, :], s, -jnp.inf)
        v, i = _select(s, k, approx, recall_target)
        return v, ids[i]
    p = queries.shape[0]
    local = jnp.arange(chunks.rows, dtype=jnp.int32)

    def body(carry, inp):
        start, lo = inp
        block = lax.dynamic_slice_in_dim(pool, start, chunks.rows)
        s = _scores(queries, block, metric)
        ok = local >= lo                                          # rows an earlier chunk covered
        if mask is not None:
            ok = ok & lax.dynamic_slice_in_dim(mask, start, chunks.rows)
        s = jnp.where(ok[None, :], s, -jnp.inf)
        v, i = _select(s, k, approx, recall_target)
        return _merge(*carry, v, lax.dynamic_slice_in_dim(ids, start, chunks.rows)[i], k), None

    init = (jnp.full((p, k), -jnp.inf, queries.dtype), jnp.full((p, k), -1, jnp.int32))
    (v, i), _ = lax.scan(body, init, (jnp.asarray(chunks.starts), jnp.asarray(chunks.lo)))
    return v, i


def sharded_top_k(queries: jax.Array, pool: jax.Array, mask: Optional[jax.Array], shards: Shards,
                  *, k: int, metric: str = "ip", chunk_rows: int = 1 << 16, approx: bool = False,
                  recall_target: float = 0.95) -> TopK:
    """`top_k` from inside `on_shards`: the pool (and mask) are this device's block.

    Each device keeps its best min(k, rows) per query; the lists are merged in
    device order, so ties still go to the lower pool index. Returns global indices.
    """
    v, i = _local_top_k(queries, pool, shards.ids(), mask, k=min(k, pool.shape[0]),
                        metric=metric, chunk_rows=chunk_rows, approx=approx,
                        recall_target=recall_target)
    if shards.sharded:
        v, pos = lax.top_k(shards.concat(v, axis=1), k)
        i = jnp.take_along_axis(shards.concat(i, axis=1), pos, axis=1)
    return TopK(v, i)


@functools.partial(jax.jit, static_argnames=("k", "metric", "chunk_rows", "approx",
                                             "recall_target", "layout"))
def _top_k(queries, pool, mask, *, k, metric, chunk_rows, approx, recall_target, layout):
    def local(queries, pool, mask):
        return sharded_top_k(queries, pool, mask, Shards(layout, pool.shape[0]), k=k,
                             metric=metric, chunk_rows=chunk_rows, approx=approx,
                             recall_target=recall_target)

    return on_shards(layout, local, (None, "pool", "pool"), queries, pool, mask)


def check_query_pool(queries: Any, pool: Any, k: Any, *, queries_name: str = "queries",
                     k_name: str = "k"):
    """Validates [P, d] queries, an [N, d] pool and 1 <= k <= N before tracing."""
    pool = as_float_matrix(pool, "pool")
    shape = tuple(getattr(queries, "shape", np.shape(queries)))
    if len(shape) == 2 and shape[0] == 0:
        raise ValueError(f"`{queries_name}` is empty (shape {shape}); give at least one row.")
    queries = as_float_matrix(queries, queries_name)
    n, d = pool.shape
    if queries.shape[1] != d:
        raise ValueError(f"`{queries_name}` has embedding dimension {queries.shape[1]} "
                         f"(shape {queries.shape}) but `pool` has {d}.")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"`{k_name}` must be a Python int (it fixes the output shape); got {k!r}.")
    if not 1 <= int(k) <= n:
        raise ValueError(f"`{k_name}` must satisfy 1 <= {k_name} <= N={n} (the rows of `pool`); "
                         f"got {k_name}={k}.")
    check_finite(pool, "pool")
    check_finite(queries, queries_name)
    check_magnitude(pool, "pool")
    check_magnitude(queries, queries_name)
    dtype = jnp.result_type(pool.dtype, queries.dtype)
    return queries.astype(dtype), pool.astype(dtype), int(k)


def top_k(queries: Any, pool: Any, *, k: int, metric: str = "ip", chunk_rows: Optional[int] = None,
          approx: bool = False, recall_target: float = 0.95, mask: Any = None) -> TopK:
    """The k best pool rows for every query, exactly (see the module docstring).

    Args:
      queries: [P, d] query embeddings.
      pool: [N, d] pool embeddings; may be split over devices along N.
      k: rows per query, 1 <= k <= N (static).
      metric: 'ip' (inner product), 'cosine' or 'abs' (|inner product|).
      chunk_rows: pool rows scored at once (default: about 2²⁶ scores per
        chunk, 256 MB in float32); at least k.
      approx: use `lax.approx_max_k` within each chunk.
      recall_target: approx_max_k's recall target.
      mask: optional [N] bool: only these rows may be returned (with fewer
        than k of them, the rest of the list is -1 with score -inf).

    Returns:
      `TopK(values [P, k], indices [P, k] int32)`, best first, ties to the lower index.

    Raises:
      ValueError: wrong rank, d mismatch, empty queries, k outside [1, N],
        NaN/inf, unknown metric, a bad mask, before tracing.
    """
    if metric not in METRICS:
        raise ValueError(f"`metric` must be one of {', '.join(METRICS)}; got {metric!r}.")
    queries, pool, k = check_query_pool(queries, pool, k)
    n = pool.shape[0]
    if chunk_rows is None:
        chunk_rows = max(k, (1 << 26) // max(queries.shape[0], 1), 1024)
    elif isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise ValueError(f"`chunk_rows` must be a positive int; got {chunk_rows!r}.")
    chunk_rows = int(min(max(int(chunk_rows), k), n))
    if mask is not None:
        mask = check_candidates(mask, n, name="mask")
    layout = layout_of(pool)
    out = _top_k(queries, pool, mask, k=k, metric=metric, chunk_rows=chunk_rows,
                 approx=bool(approx), recall_target=float(recall_target), layout=layout)
    if mask is None:
        return out
    return TopK(out.values, jnp.where(out.values > -jnp.inf, out.indices, -1))
