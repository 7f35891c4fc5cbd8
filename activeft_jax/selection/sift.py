r"""SIFT: select data for test-time fine-tuning on each prompt, many prompts at once.

Per prompt q (one embedding of the prompt, a row of `prompts`):

1. Prefilter: the K = `candidates` pool points with the largest |⟨x, q⟩|
   (`activeft_jax.retrieval.top_k(metric="abs")`), exactly as the reference
   `Retriever` does by querying q and −q in an inner-product index.
2. VTL on those K candidates with the single target q, noise variance
   λ = `lambda_` (noise_std = √λ) and repeats allowed (the paper and the
   reference keep a picked point as a candidate): k greedy picks.

Every prompt's selection is one `jax.vmap`-ed call; indices are pool indices.
Values are VTL values as the reference returns them: the value of the n-th pick
is −σ²_n(q), minus the prompt's posterior variance after observing picks
1..n (negative; closer to 0 is better).

Adaptive SIFT (`adaptive=threshold`): `steps[p]` is the number of picks a prompt
earns, the smallest n in 0..k with σ²_n(q) ≤ threshold (σ²_0(q) = ‖q‖², the
prior variance; σ²_n(q) = −values[n−1] for n ≥ 1), or k if σ² stays above the
threshold for all k picks. The picks themselves are the same k as without
`adaptive`; a caller trains on the first `steps[p]` of them. (The reference's
unreleased HEAD uses another rule, 1/(α·j) on √−value with an elementwise mask.)

Differences from the reference (activeft 0.1.1):

* Prompts are single embeddings ([P, d]); the reference takes m embeddings per
  prompt and prefilters with their mean.
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

from activeft_jax import gp, retrieval
from activeft_jax.kernels import Linear, l2_normalize
from activeft_jax.selection.greedy import RuleInputs, greedy
from activeft_jax.selection.result import Selection
from activeft_jax.selection.transductive import VTLRule
from activeft_jax.validation import check_positive, is_traced

__all__ = ["AdaptiveSelection", "adaptive_steps", "sift"]


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


def adaptive_steps(prior_var: jax.Array, values: jax.Array, threshold: Any) -> jax.Array:
    """Smallest n in 0..k with σ²_n ≤ threshold (k if none): [P] int32.

    `prior_var` [P] is σ²_0 of each prompt, `values` [P, k] the VTL values of
    the picks (σ²_n = −values[:, n−1]).
    """
    var = jnp.concatenate([prior_var[:, None], -values], axis=1)   # [P, k+1]: σ²_0..σ²_k
    below = var <= threshold
    k = values.shape[1]
    return jnp.where(jnp.any(below, axis=1), jnp.argmax(below, axis=1), k).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("k",))
def _vtl_on_candidates(pool, prompts, cand, lambda_, *, k):
    noise_var = jnp.asarray(lambda_, pool.dtype)     # λ is the noise variance itself
    num, d = cand.shape[1], pool.shape[1]
    spec = VTLRule(space=gp.choose_space(Linear(), num, d), normalize=False)

    def one(q, idx):
        inputs = RuleInputs(pool[idx], q[None, :], Linear(), noise_var)
        sel = greedy(spec, inputs, k=k, allow_repeats=True)
        return Selection(idx[sel.indices], sel.values)

    return jax.vmap(one)(prompts, cand)


def _check_threshold(threshold: Any) -> None:
    if is_traced(threshold):
        return
    arr = np.asarray(threshold)
    if arr.ndim != 0 or arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) \
            or np.iscomplexobj(arr) or not np.isfinite(arr) or arr < 0:
        raise ValueError(f"`adaptive` must be a finite threshold >= 0 on the prompt's posterior "
                         f"variance (or None); got {threshold!r}.")


def sift(pool: Any, prompts: Any, *, k: int = 10, candidates: int = 200, lambda_: Any = 0.01,
         adaptive: Optional[Any] = None, normalize: bool = False, chunk_rows: Optional[int] = None,
         approx: bool = False):
    """SIFT for a batch of prompts: prefilter by |⟨x, q⟩|, then VTL with repeats.

    Args:
      pool: [N, d] pool embeddings (may be sharded along N).
      prompts: [P, d] prompt embeddings, one row per prompt.
      k: picks per prompt (static), 1 <= k <= candidates.
      candidates: K, the prefilter size (static), k <= K <= N.
      lambda_: λ > 0, the observation noise *variance* (noise_std = √λ); may be traced.
      adaptive: None, or a threshold on the prompt's posterior variance; then
        the result also holds `steps` (see the module docstring).
      normalize: L2-normalize pool and prompts first (the paper's setting).
      chunk_rows: pool rows per chunk of the prefilter (see `retrieval.top_k`).
      approx: `lax.approx_max_k` in the prefilter.

    Returns:
      `Selection(indices [P, k] int32, values [P, k])`, or with `adaptive`
      an `AdaptiveSelection` that adds `steps` [P].

    Raises:
      ValueError: empty prompts, d mismatch, k < 1, K < k, K > N, λ <= 0,
        NaN/inf, a bad threshold, before anything is traced.
    """
    prompts, pool, candidates = retrieval.check_query_pool(
        prompts, pool, candidates, queries_name="prompts", k_name="candidates")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"`k` must be a Python int (it fixes the output shape); got {k!r}.")
    if not 1 <= int(k) <= candidates:
        raise ValueError(f"`k` must satisfy 1 <= k <= candidates={candidates}; got k={k}.")
    k = int(k)
    check_positive(lambda_, "lambda_")
    if adaptive is not None:
        _check_threshold(adaptive)
    if normalize:
        pool, prompts = l2_normalize(pool), l2_normalize(prompts)
    cand = retrieval.top_k(prompts, pool, k=candidates, metric="abs", chunk_rows=chunk_rows,
                           approx=approx).indices
    sel = _vtl_on_candidates(pool, prompts, cand, lambda_, k=k)
    if adaptive is None:
        return sel
    prior = jnp.sum(prompts * prompts, axis=1)
    return AdaptiveSelection(sel.indices, sel.values, adaptive_steps(prior, sel.values, adaptive))
