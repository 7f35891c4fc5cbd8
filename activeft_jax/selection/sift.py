r"""SIFT: select data for test-time fine-tuning on each prompt, many prompts at once.

Per prompt (one embedding q [d], or m embeddings Q [m, d] of one prompt):

1. Prefilter: the K = `prefilter` pool points with the largest |⟨x, q̄⟩|
   (`activeft_jax.retrieval.top_k(metric="abs")`), q̄ the mean of the prompt's
   embeddings, exactly as the reference `Retriever` does by querying q̄ and −q̄
   in an inner-product index (`query_opposite=False`: the largest ⟨x, q̄⟩).
   `prefilter=None` skips it: the whole pool is the candidate set.
2. VTL on those K candidates with the prompt's m embeddings as targets (the
   mean alone with `mean_pooling=True`), noise variance λ = `lambda_` and
   repeats allowed (the paper and the reference keep a picked point as a
   candidate): k greedy picks.

Every prompt's selection is one `jax.vmap`-ed call; indices are pool indices.
Values are VTL values as the reference returns them: the value of the n-th pick
is −Σ_a σ²_n(a), minus the prompt's total posterior variance after observing
picks 1..n (negative; closer to 0 is better).

Adaptive SIFT (`adaptive=threshold`): `steps[p]` is the number of picks a prompt
earns, the smallest n in 0..k with σ²_n ≤ threshold (σ²_0 the prior variance
Σ_a ‖a‖², or conditioned on `observed`; σ²_n = −values[n−1] for n ≥ 1), or k if
σ² stays above the threshold for all k picks. The picks themselves are the same
k as without `adaptive`; a caller trains on the first `steps[p]` of them. (The
reference's unreleased HEAD uses another rule, 1/(α·j) on √−value with an
elementwise mask.)

`observed` (points already used) conditions every prompt's GP before its first
pick, wherever the points are (weight space: a factor of the prior covariance),
and they are never candidates; `candidates` ([N] bool) limits the candidates.
A pool split over devices is searched where it lies; only the K candidate rows
of each prompt cross devices.

Differences from the reference (activeft 0.1.1):

* For K > N/2 the reference's q / −q merge can list a point twice; here the K
  candidates are always distinct.
* Ties in the prefilter go to the lower pool index (the reference's argsort is
  not stable).
* Embeddings are used as given (like the reference); SIFT's λ = 0.01 assumes
  unit-norm embeddings: pass `normalize=True` to L2-normalize pool and prompts.

Reference:
  Hübotter, Bongni, Hakimi, Krause. Efficiently Learning at Test-Time: Active
  Fine-Tuning of LLMs. ICLR 2025.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from activeft_jax import gp, retrieval
from activeft_jax._core import PLAIN, Shards, as_concrete_array, layout_of, matmul, on_shards
from activeft_jax.kernels import Linear, l2_normalize
from activeft_jax.selection._setup import as_mask
from activeft_jax.selection.greedy import RuleInputs, available_mask, greedy
from activeft_jax.selection.result import Selection
from activeft_jax.selection.transductive import VTLRule
from activeft_jax.validation import (
    as_float_matrix,
    check_candidates,
    check_finite,
    check_magnitude,
    check_observed,
    check_positive,
    is_traced,
)

__all__ = ["AdaptiveSelection", "SIFTSelection", "adaptive_steps", "sift"]


class AdaptiveSelection(NamedTuple):
    """SIFT picks plus how many of them each prompt earned.

    Attributes:
      indices: [P, k] int32 pool indices in pick order.
      values: [P, k] VTL values (−σ²_n of the prompt after pick n).
      steps: [P] int32 in 0..k: picks until σ²_n(prompt) ≤ threshold (k if never).
    """

    indices: jax.Array
    values: jax.Array
    steps: jax.Array


class SIFTSelection(NamedTuple):
    """SIFT picks with their embeddings (`return_embeddings=True`).

    Attributes:
      indices: [P, k] int32 pool indices in pick order.
      values: [P, k] VTL values.
      embeddings: [P, k, d] the picked pool rows (as given, before `normalize`).
      steps: [P] adaptive steps, or None without `adaptive`.
    """

    indices: jax.Array
    values: jax.Array
    embeddings: jax.Array
    steps: Optional[jax.Array] = None


def adaptive_steps(prior_var: jax.Array, values: jax.Array, threshold: Any) -> jax.Array:
    """Smallest n in 0..k with σ²_n ≤ threshold (k if none): [P] int32.

    `prior_var` [P] is σ²_0 of each prompt, `values` [P, k] the VTL values of
    the picks (σ²_n = −values[:, n−1]).
    """
    var = jnp.concatenate([prior_var[:, None], -values], axis=1)   # [P, k+1]: σ²_0..σ²_k
    below = var <= threshold
    k = values.shape[1]
    return jnp.where(jnp.any(below, axis=1), jnp.argmax(below, axis=1), k).astype(jnp.int32)


def _observed_precision(pool, observed, noise_var, layout):
    """Σ_obs φφᵀ/λ [d, d], summed over the devices (None without observed points)."""
    if observed is None:
        return None

    def local(pool, observed):
        return gp.observation_precision(pool, observed, noise_var, Shards(layout, pool.shape[0]))

    return on_shards(layout, local, ("pool", "pool"), pool, observed)


def _gather(pool, cand, layout):
    """The candidates' rows [P, K, d] (only they cross devices)."""

    def local(pool, cand):
        return Shards(layout, pool.shape[0]).rows(pool, cand)

    return on_shards(layout, local, ("pool", None), pool, cand)


@functools.partial(jax.jit, static_argnames=("k", "prefilter", "mean_pooling", "query_opposite",
                                             "chunk_rows", "approx", "layout"))
def _sift(pool, prompts, masks, lambda_, *, k, prefilter, mean_pooling, query_opposite,
          chunk_rows, approx, layout):
    noise_var = jnp.asarray(lambda_, pool.dtype)     # λ is the noise variance itself
    observed, candidates = masks
    query = jnp.mean(prompts, axis=1)                                     # [P, d]
    targets = query[:, None, :] if mean_pooling else prompts              # [P, m', d]
    allowed = None
    if observed is not None or candidates is not None:
        allowed = available_mask(pool.shape[0], observed, candidates)
    n, d = pool.shape
    precision = _observed_precision(pool, observed, noise_var, layout)
    if prefilter is None:  # every pool point is a candidate of every prompt
        spec = VTLRule(space="weight" if observed is not None else gp.choose_space(Linear(), n, d),
                       normalize=False)

        def whole(target):
            inputs = RuleInputs(pool, target, Linear(), noise_var, candidates=allowed,
                                prior_precision=precision)
            return greedy(spec, inputs, k=k, allow_repeats=True, layout=layout)

        return lax.map(whole, targets), precision
    metric = "abs" if query_opposite else "ip"
    top = _prefilter(query, pool, allowed, k=prefilter, metric=metric, chunk_rows=chunk_rows,
                     approx=approx, layout=layout)
    cand = jnp.maximum(top.indices, 0)
    rows = _gather(pool, cand, layout)
    space = "weight" if observed is not None else gp.choose_space(Linear(), prefilter, d)
    spec = VTLRule(space=space, normalize=False)

    def one(target, idx, x, valid):
        inputs = RuleInputs(x, target, Linear(), noise_var, candidates=valid,
                            prior_precision=precision)
        sel = greedy(spec, inputs, k=k, allow_repeats=True, layout=PLAIN)
        return Selection(jnp.where(sel.indices >= 0, idx[jnp.maximum(sel.indices, 0)], -1),
                         sel.values)

    valid = top.indices >= 0 if allowed is not None else None
    return jax.vmap(one)(targets, cand, rows, valid), precision


def _prefilter(query, pool, allowed, *, k, metric, chunk_rows, approx, layout):
    def local(query, pool, allowed):
        return retrieval.sharded_top_k(query, pool, allowed, Shards(layout, pool.shape[0]), k=k,
                                       metric=metric, chunk_rows=chunk_rows, approx=approx)

    top = on_shards(layout, local, (None, "pool", "pool"), query, pool, allowed)
    if allowed is None:
        return top
    return retrieval.TopK(top.values, jnp.where(top.values > -jnp.inf, top.indices, -1))


@functools.partial(jax.jit, static_argnames=("layout",))
def _rows_of(pool, indices, layout):
    return _gather(pool, jnp.maximum(indices, 0), layout)


def _prior_variance(targets: jax.Array, precision: Optional[jax.Array]) -> jax.Array:
    """Σ_a σ²_0(a) per prompt: Σ ‖a‖², or Σ ‖G a‖² conditioned on the observed points."""
    if precision is None:
        return jnp.sum(targets * targets, axis=(1, 2))
    g = gp.precision_factor(precision)
    white = matmul(targets, g.T)
    return jnp.sum(white * white, axis=(1, 2))


def _check_threshold(threshold: Any) -> None:
    if is_traced(threshold):
        return
    arr = np.asarray(threshold)
    if arr.ndim != 0 or arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) \
            or np.iscomplexobj(arr) or not np.isfinite(arr) or arr < 0:
        raise ValueError(f"`adaptive` must be a finite threshold >= 0 on the prompt's posterior "
                         f"variance (or None); got {threshold!r}.")


def _check_prompts(prompts: Any, d: int) -> jax.Array:
    shape = tuple(getattr(prompts, "shape", np.shape(prompts)))
    if len(shape) in (2, 3) and shape[0] == 0:
        raise ValueError(f"`prompts` is empty (shape {shape}); give at least one prompt.")
    if len(shape) == 3:
        if shape[1] == 0:
            raise ValueError(f"`prompts` has no embeddings per prompt (shape {shape}).")
        flat = as_float_matrix(as_concrete_array(prompts, shape=(-1, shape[2])), "prompts")
        prompts3 = as_concrete_array(flat, shape=shape)
    else:
        flat = as_float_matrix(prompts, "prompts")
        prompts3 = as_concrete_array(flat, shape=(flat.shape[0], 1, flat.shape[1]))
    if prompts3.shape[2] != d:
        raise ValueError(f"`prompts` has embedding dimension {prompts3.shape[2]} (shape "
                         f"{shape}) but `pool` has {d}.")
    return prompts3


def sift(pool: Any, prompts: Any, *, k: int = 10, prefilter: Optional[int] = 200,
         lambda_: Any = 0.01, adaptive: Optional[Any] = None, normalize: bool = False,
         mean_pooling: bool = False, query_opposite: bool = True,
         return_embeddings: bool = False, observed: Any = None, candidates: Any = None,
         chunk_rows: Optional[int] = None, approx: bool = False):
    """SIFT for a batch of prompts: prefilter by |⟨x, q̄⟩|, then VTL with repeats.

    Args:
      pool: [N, d] pool embeddings (may be split over devices along N).
      prompts: [P, d] (one embedding per prompt) or [P, m, d] (m per prompt).
      k: picks per prompt (static), 1 <= k <= prefilter.
      prefilter: K, the prefilter size (static), k <= K <= N; None: no
        prefilter, VTL over the whole pool for every prompt.
      lambda_: λ > 0, the observation noise *variance* (noise_std = √λ); may be traced.
      adaptive: None, or a threshold on the prompt's posterior variance; then
        the result also holds `steps` (see the module docstring).
      normalize: L2-normalize pool and prompts first (the paper's setting).
      mean_pooling: the mean of a prompt's m embeddings is its only target
        (the reference's `mean_pooling=True`); default: all m are targets.
      query_opposite: prefilter by |⟨x, q̄⟩| (the reference's default
        `also_query_opposite=True`); False: by ⟨x, q̄⟩.
      return_embeddings: also return the picked rows [P, k, d].
      observed: points already used ([n] indices or a [N] bool mask): every
        prompt's GP is conditioned on them; never candidates.
      candidates: [N] bool mask of the points that may be candidates.
      chunk_rows: pool rows per chunk of the prefilter (see `retrieval.top_k`).
      approx: `lax.approx_max_k` in the prefilter.

    Returns:
      `Selection(indices [P, k] int32, values [P, k])`; with `adaptive` an
      `AdaptiveSelection` that adds `steps` [P]; with `return_embeddings` a
      `SIFTSelection` (indices, values, embeddings, steps or None). A prompt
      whose prefilter finds fewer than K allowed points picks among those
      (picks beyond none are -1 with value -inf; only with traced masks).

    Raises:
      ValueError: empty prompts, d mismatch, k < 1, K < k, K > N, λ <= 0,
        NaN/inf, a bad threshold or mask, before anything is traced.
    """
    pool = as_float_matrix(pool, "pool")
    n, d = pool.shape
    prompts3 = _check_prompts(prompts, d)
    if prefilter is not None:
        if isinstance(prefilter, bool) or not isinstance(prefilter, (int, np.integer)):
            raise ValueError(f"`prefilter` must be a Python int (it fixes the output shape) or "
                             f"None; got {prefilter!r}.")
        if not 1 <= int(prefilter) <= n:
            raise ValueError(f"`prefilter` must satisfy 1 <= prefilter <= N={n} (the rows of "
                             f"`pool`); got prefilter={prefilter}.")
        prefilter = int(prefilter)
    width = n if prefilter is None else prefilter
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"`k` must be a Python int (it fixes the output shape); got {k!r}.")
    if not 1 <= int(k) <= width:
        bound = "N" if prefilter is None else "prefilter"
        raise ValueError(f"`k` must satisfy 1 <= k <= {bound}={width}; got k={k}.")
    k = int(k)
    check_finite(pool, "pool")
    check_finite(prompts3, "prompts")
    check_magnitude(pool, "pool")
    check_magnitude(prompts3, "prompts")
    dtype = jnp.result_type(pool.dtype, prompts3.dtype)
    pool, prompts3 = pool.astype(dtype), prompts3.astype(dtype)
    check_positive(lambda_, "lambda_")
    if adaptive is not None:
        _check_threshold(adaptive)
    observed = check_observed(observed, n)
    candidates = check_candidates(candidates, n)
    if chunk_rows is None:
        chunk_rows = max(width, (1 << 26) // max(prompts3.shape[0], 1), 1024)
    elif isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) \
            or chunk_rows < 1:
        raise ValueError(f"`chunk_rows` must be a positive int; got {chunk_rows!r}.")
    raw = pool
    if normalize:
        pool, prompts3 = l2_normalize(pool), l2_normalize(prompts3)
    masks = (None if observed is None else as_mask(observed, raw), candidates)
    layout = layout_of(raw)
    sel, precision = _sift(pool, prompts3, masks, lambda_, k=k, prefilter=prefilter,
                              mean_pooling=bool(mean_pooling),
                              query_opposite=bool(query_opposite),
                              chunk_rows=int(min(max(int(chunk_rows), width), n)),
                              approx=bool(approx), layout=layout)
    steps = None
    if adaptive is not None:
        targets = jnp.mean(prompts3, axis=1, keepdims=True) if mean_pooling else prompts3
        steps = adaptive_steps(_prior_variance(targets, precision), sel.values, adaptive)
    if return_embeddings:
        return SIFTSelection(sel.indices, sel.values, _rows_of(raw, sel.indices, layout), steps)
    if steps is not None:
        return AdaptiveSelection(sel.indices, sel.values, steps)
    return sel
