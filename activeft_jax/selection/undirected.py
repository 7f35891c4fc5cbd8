"""Undirected rules: no target set; pick what the GP is most uncertain about.

* uncertainty (MaxVar): the k largest prior variances k(x, x) = ‖φ(x)‖², no
  conditioning (the reference's `UncertaintySampling`).
* undirected_itl: greedy largest posterior variance σ²_n(x), conditioning on
  each pick (greedy log-det maximization).
* undirected_vtl: VTL with the targets being the pool itself, A = S (BAIT-like;
  the reference library's default when no target is given). With a kernel
  that has a feature map the N targets compress to min(N, d) exact
  pseudo-targets; with any other kernel (RBF, your own) the score's
  Σ_a Cov_n(a, x)² is kept per point and updated by one streamed pass over the
  kernel matrix per pick, O(N² d) time and O(N k) memory, never an N × N array.

`observed` conditions the GP before the first pick and is never picked;
`candidates` restricts the picks (undirected VTL's targets stay the whole pool).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import jax

import jax.numpy as jnp
from jax import lax

from activeft_jax import gp
from activeft_jax._core import (
    Shards,
    default_chunk_rows,
    layout_of,
    map_rows,
    matmul,
    on_shards,
    plan,
    scan_rows,
)
from activeft_jax.kernels import get_kernel, l2_normalize
from activeft_jax.selection._setup import init_posterior, rule_inputs, validate
from activeft_jax.selection.greedy import (
    INPUT_SPECS,
    GreedyRule,
    RuleInputs,
    available_mask,
    masked_top_k,
)
from activeft_jax.selection.result import Selection
from activeft_jax.selection.transductive import GPRule, VTLRule, _common_args, run_gp_rule

__all__ = ["UndirectedITLRule", "UndirectedVTLKernelRule", "uncertainty", "undirected_itl",
           "undirected_vtl"]


@dataclasses.dataclass(frozen=True)
class UndirectedITLRule(GPRule):
    """Undirected ITL as a greedy rule spec: the largest posterior variance, conditioned."""

    def build(self, inputs: RuleInputs, k: int, shards: Shards) -> GreedyRule:
        """The undirected ITL rule on `inputs` with room for k picks."""
        geo = self.geometry(inputs, compress=False)
        # The score is the variance itself: its round-off is ε·k(x, x) in absolute terms.
        return self.single(geo, inputs, shards,
                           init=lambda: self.prior(geo, None, k, inputs, shards),
                           score=lambda state: gp.posterior.refine_scores(geo.space, (state,),
                                                                lambda st: st[0].var),
                           variance_scores=True)


class _StreamedVTL(NamedTuple):
    """Kernel-space undirected VTL state: the posterior and c(x) = Σ_{a∈S} Cov_n(a, x)²."""

    post: gp.Posterior
    sq_cov: jax.Array  # [N]


@dataclasses.dataclass(frozen=True)
class UndirectedVTLKernelRule(GPRule):
    """Undirected VTL in kernel space (any kernel), with the targets' covariances streamed.

    value(x) = c_n(x) / (σ²_n(x) + ρ²) − Σ_a σ²_n(a) with c_n(x) = Σ_a Cov_n(a, x)².
    A pick's Cholesky row v updates c_n − 2 v ⊙ (Cov_n v) + v² ‖v‖², and
    Cov_n v = K v − Vᵀ(V v) needs one pass over K in row blocks, recomputed
    from the points: O(N² d) per pick, no N × N array. One device only.

    Attributes:
      block: rows of K computed at once (None: about 2²² kernel values).
    """

    block: Optional[int] = None

    def build(self, inputs: RuleInputs, k: int, shards: Shards) -> GreedyRule:
        """The rule on `inputs` with room for k picks."""
        if shards.sharded:
            raise ValueError("undirected_vtl with a kernel without a feature map runs on one "
                             "device: gather the pool first, or use a linear/cosine kernel.")
        geo = self.geometry(inputs, compress=False)
        points, kernel = geo.points, geo.kernel
        n = points.shape[0]
        chunks = plan(n, self.block or default_chunk_rows(n, n))

        def k_times(v):  # K v, [N]
            return map_rows(lambda blk: matmul(kernel.cross(blk, points), v), chunks, points)

        def prior_sq_cov():  # Σ_a K(a, x)², [N]
            def add(acc, valid, blk):
                kb = kernel.cross(blk, points)
                return acc + jnp.sum(jnp.where(valid[:, None], kb * kb, 0), axis=0)
            return scan_rows(add, jnp.zeros((n,), points.dtype), chunks, points)

        def update(state, index, valid):
            post = state.post
            past = post.rows[:, index]                                   # v_j(x*)
            x = points[index]
            r = kernel.cross(x[None, :], points)[0] - matmul(past, post.rows)  # Cov_n(x*, S)
            v = r * lax.rsqrt(post.var[index] + inputs.noise_var)
            cov_v = k_times(v) - matmul(matmul(post.rows, v), post.rows)  # Cov_n v
            sq = state.sq_cov - 2 * v * cov_v + v * v * jnp.sum(v * v)
            new = gp.condition(geo.space, (post,), index, inputs.noise_var, shards=shards,
                               valid=valid)[0]
            return _StreamedVTL(new, jnp.where(valid, jnp.maximum(sq, 0), state.sq_cov))

        def init():
            post = init_posterior(geo, None, k, inputs, shards)
            state = _StreamedVTL(post, prior_sq_cov())
            if inputs.observed_index is None:
                return state
            return lax.scan(lambda st, i: (update(st, jnp.maximum(i, 0), i >= 0), None), state,
                            inputs.observed_index)[0]

        def score(state):
            post = state.post
            return state.sq_cov / (post.var + inputs.noise_var) - jnp.sum(post.var)

        return GreedyRule(num_points=n, init=init, score=score, update=update)


@_common_args
def undirected_itl(pool: Any, *, k: int, noise_std: Any = 0.1, kernel: Any = None,
                   normalize: bool = False, allow_repeats: bool = False, space: str = "auto",
                   progress: bool = False, observed: Any = None, candidates: Any = None,
                   max_observed: Optional[int] = None, prior_cov: Any = None,
                   nonsequential: bool = False) -> Selection:
    """Undirected ITL: greedily picks the largest posterior variance σ²_n(x).

    Args:
{common_args}
    (There is no `target`.)

    Returns:
      `Selection` of k pool indices and the posterior variance at each pick.
    """
    return run_gp_rule(lambda sp, nz: UndirectedITLRule(sp, nz), "undirected_itl", pool, None,
                       directed=False, k=k, noise_std=noise_std, kernel=kernel,
                       normalize=normalize, allow_repeats=allow_repeats, space=space,
                       progress=progress, observed=observed, candidates=candidates,
                       max_observed=max_observed, prior_cov=prior_cov,
                       nonsequential=nonsequential)


@_common_args
def undirected_vtl(pool: Any, *, k: int, noise_std: Any = 0.1, kernel: Any = None,
                   normalize: bool = False, allow_repeats: bool = False, space: str = "auto",
                   progress: bool = False, observed: Any = None, candidates: Any = None,
                   max_observed: Optional[int] = None, prior_cov: Any = None,
                   nonsequential: bool = False) -> Selection:
    """Undirected VTL: VTL whose targets are the whole pool (A = S).

    value(x) = −Σ_{a∈S} Var[f(a) | D_n, y(x)]. The N targets enter only through
    Φ_SᵀΦ_S, so they are compressed to min(N, d) exact pseudo-targets and the
    state stays [N, min(N, d)]. Needs a kernel with a feature map (linear or
    cosine): in kernel space the N targets would need an N × N covariance.
    The targets are the whole pool whatever `candidates` says.

    Args:
{common_args}
    (There is no `target`.)

    Returns:
      `Selection` of k pool indices and their (negative) undirected VTL values.
    """
    def spec_of(space, normalize):
        if space == "kernel" and not kernel_has_features:
            return UndirectedVTLKernelRule(space, normalize)
        return VTLRule(space, normalize, undirected=True)

    kernel_has_features = get_kernel(kernel).has_features
    return run_gp_rule(spec_of, "undirected_vtl", pool,
                       None, directed=False, k=k, noise_std=noise_std, kernel=kernel,
                       normalize=normalize, allow_repeats=allow_repeats, space=space,
                       progress=progress, observed=observed, candidates=candidates,
                       max_observed=max_observed, prior_cov=prior_cov,
                       nonsequential=nonsequential)


@functools.partial(jax.jit, static_argnames=("k", "normalize", "layout"))
def _uncertainty(inputs, *, k, normalize, layout):
    def local(inputs):
        pool = l2_normalize(inputs.pool) if normalize else inputs.pool
        shards = Shards(layout, pool.shape[0])
        available = None
        if inputs.observed is not None or inputs.candidates is not None:
            available = available_mask(pool.shape[0], inputs.observed, inputs.candidates)
        return masked_top_k(inputs.kernel.diag(pool), k, available, shards)

    return on_shards(layout, local, (INPUT_SPECS,), inputs)


def uncertainty(pool: Any, *, k: int, kernel: Any = None, normalize: bool = False,
                observed: Any = None, candidates: Any = None, prior_cov: Any = None) -> Selection:
    """Uncertainty sampling (MaxVar): the k largest prior variances k(x, x).

    With the linear kernel that is the k largest squared norms ‖φ(x)‖²; no
    conditioning, so noise plays no role (as in the reference). With RBF or
    normalized embeddings all variances tie and the order is arbitrary.

    Args:
      pool: [N, d] pool embeddings (may be split over devices along N).
      k: number of picks (static).
      kernel: 'linear' (default), 'cosine', 'rbf' or a kernel object.
      normalize: L2-normalize the pool first.
      observed: labelled points ([n] indices or a [N] bool mask): never picked.
      candidates: [N] bool mask of the points that may be picked.
      prior_cov: [p, p] prior covariance Σ of the feature weights: the
        variances become φ(x)ᵀ Σ φ(x) (see `kernels.with_prior_cov`).

    Returns:
      `Selection` of k pool indices, largest variance first, and the variances.
    """
    inputs = validate(pool, k=k, kernel=kernel, observed=observed, candidates=candidates,
                      normalize=bool(normalize), prior_cov=prior_cov)
    return _uncertainty(rule_inputs(inputs), k=inputs.k, normalize=bool(normalize),
                        layout=layout_of(inputs.pool))
