"""Undirected rules: no target set; pick what the GP is most uncertain about.

* uncertainty (MaxVar): the k largest prior variances k(x, x) = ‖φ(x)‖², no
  conditioning (the reference's `UncertaintySampling`).
* undirected_itl: greedy largest posterior variance σ²_n(x), conditioning on
  each pick (greedy log-det maximization).
* undirected_vtl: VTL with the targets being the pool itself, A = S (BAIT-like;
  the reference library's default when no target is given).

`observed` conditions the GP before the first pick and is never picked;
`candidates` restricts the picks (undirected VTL's targets stay the whole pool).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax

from activeft_jax._core import Shards, layout_of, on_shards
from activeft_jax.kernels import get_kernel, l2_normalize
from activeft_jax.selection._setup import rule_inputs, validate
from activeft_jax.selection.greedy import (
    INPUT_SPECS,
    GreedyRule,
    RuleInputs,
    available_mask,
    masked_top_k,
)
from activeft_jax.selection.result import Selection
from activeft_jax.selection.transductive import GPRule, VTLRule, _common_args, run_gp_rule

__all__ = ["UndirectedITLRule", "uncertainty", "undirected_itl", "undirected_vtl"]


@dataclasses.dataclass(frozen=True)
class UndirectedITLRule(GPRule):
    """Undirected ITL as a greedy rule spec: the largest posterior variance, conditioned."""

    def build(self, inputs: RuleInputs, k: int, shards: Shards) -> GreedyRule:
        """The undirected ITL rule on `inputs` with room for k picks."""
        geo = self.geometry(inputs, compress=False)
        return self.single(geo, inputs, shards,
                           init=lambda: self.prior(geo, None, k, inputs, shards),
                           score=lambda state: state.var)


@_common_args
def undirected_itl(pool: Any, *, k: int, noise_std: Any = 0.1, kernel: Any = None,
                   normalize: bool = False, allow_repeats: bool = False, space: str = "auto",
                   progress: bool = False, observed: Any = None, candidates: Any = None,
                   max_observed: Optional[int] = None) -> Selection:
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
                       max_observed=max_observed)


@_common_args
def undirected_vtl(pool: Any, *, k: int, noise_std: Any = 0.1, kernel: Any = None,
                   normalize: bool = False, allow_repeats: bool = False, space: str = "auto",
                   progress: bool = False, observed: Any = None, candidates: Any = None,
                   max_observed: Optional[int] = None) -> Selection:
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
    if not get_kernel(kernel).has_features:
        raise ValueError(
            "undirected_vtl needs a kernel with a feature map ('linear' or 'cosine'): its targets "
            "are the whole pool, which in kernel space would need an N x N covariance."
        )
    return run_gp_rule(lambda sp, nz: VTLRule(sp, nz, undirected=True), "undirected_vtl", pool,
                       None, directed=False, k=k, noise_std=noise_std, kernel=kernel,
                       normalize=normalize, allow_repeats=allow_repeats, space=space,
                       progress=progress, observed=observed, candidates=candidates,
                       max_observed=max_observed)


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
                observed: Any = None, candidates: Any = None) -> Selection:
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

    Returns:
      `Selection` of k pool indices, largest variance first, and the variances.
    """
    inputs = validate(pool, k=k, kernel=kernel, observed=observed, candidates=candidates)
    return _uncertainty(rule_inputs(inputs), k=inputs.k, normalize=bool(normalize),
                        layout=layout_of(inputs.pool))
