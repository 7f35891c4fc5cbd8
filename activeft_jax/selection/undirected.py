"""Undirected rules: no target set; pick what the GP is most uncertain about.

* uncertainty (MaxVar): the k largest prior variances k(x, x) = ‖φ(x)‖², no
  conditioning (the reference's `UncertaintySampling`).
* undirected_itl: greedy largest posterior variance σ²_n(x), conditioning on
  each pick (greedy log-det maximization).
* undirected_vtl: VTL with the targets being the pool itself, A = S (BAIT-like;
  the reference library's default when no target is given).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax

from activeft_jax import gp
from activeft_jax.kernels import get_kernel, l2_normalize
from activeft_jax.selection._setup import geometry, init_posterior, resolve_space, rule_inputs, validate
from activeft_jax.selection.greedy import GreedyRule, RuleInputs, greedy, top_k
from activeft_jax.selection.result import Selection
from activeft_jax.selection.transductive import VTLRule

__all__ = ["UndirectedITLRule", "uncertainty", "undirected_itl", "undirected_vtl"]


@dataclasses.dataclass(frozen=True)
class UndirectedITLRule:
    """Undirected ITL as a greedy rule spec: the largest posterior variance, conditioned.

    Attributes:
      space: 'weight' or 'kernel'.
      normalize: L2-normalize the pool first.
    """

    space: str
    normalize: bool

    def build(self, inputs: RuleInputs, k: int) -> GreedyRule:
        """The undirected ITL rule on `inputs` with room for k picks."""
        geo = geometry(inputs, space=self.space, normalize=self.normalize, compress=False)
        noise_var = inputs.noise_var
        return GreedyRule(
            num_points=inputs.pool.shape[0],
            init=lambda: init_posterior(geo, None, k),
            score=lambda state: state.var,
            update=lambda state, index: gp.condition(geo.space, (state,), index, noise_var)[0],
        )


def undirected_itl(pool: Any, *, k: int, noise_std: Any = 0.1, kernel: Any = None,
                   normalize: bool = False, allow_repeats: bool = False, space: str = "auto",
                   progress: bool = False) -> Selection:
    """Undirected ITL: greedily picks the largest posterior variance σ²_n(x).

    Args:
      pool: [N, d] pool embeddings.
      k: number of picks (static).
      noise_std: observation noise standard deviation ρ > 0 (traceable).
      kernel: 'linear' (default), 'cosine', 'rbf' or a kernel object.
      normalize: L2-normalize the pool first.
      allow_repeats: keep picked points as candidates (the reference's behaviour).
      space: 'auto', 'weight' or 'kernel'.
      progress: progress bar on stderr.

    Returns:
      `Selection` of k pool indices and the posterior variance at each pick.
    """
    inputs = validate(pool, k=k, kernel=kernel, noise_std=noise_std, check_noise=True)
    spec = UndirectedITLRule(space=resolve_space(space, inputs.kernel, inputs.pool),
                             normalize=bool(normalize))
    return greedy(spec, rule_inputs(inputs, noise_std), k=inputs.k, allow_repeats=allow_repeats,
                  progress=progress, desc="undirected_itl")


def undirected_vtl(pool: Any, *, k: int, noise_std: Any = 0.1, kernel: Any = None,
                   normalize: bool = False, allow_repeats: bool = False, space: str = "auto",
                   progress: bool = False) -> Selection:
    """Undirected VTL: VTL whose targets are the whole pool (A = S).

    value(x) = −Σ_{a∈S} Var[f(a) | D_n, y(x)]. The N targets enter only through
    Φ_SᵀΦ_S, so they are compressed to min(N, d) exact pseudo-targets and the
    state stays [N, min(N, d)]. Needs a kernel with a feature map (linear or
    cosine): in kernel space the N targets would need an N × N covariance.

    Args:
      pool: [N, d] pool embeddings.
      k: number of picks (static).
      noise_std: observation noise standard deviation ρ > 0 (traceable).
      kernel: 'linear' (default) or 'cosine'.
      normalize: L2-normalize the pool first.
      allow_repeats: keep picked points as candidates (the reference's behaviour).
      space: 'auto', 'weight' or 'kernel'.
      progress: progress bar on stderr.

    Returns:
      `Selection` of k pool indices and their (negative) undirected VTL values.
    """
    if not get_kernel(kernel).has_features:
        raise ValueError(
            "undirected_vtl needs a kernel with a feature map ('linear' or 'cosine'): its targets "
            "are the whole pool, which in kernel space would need an N x N covariance."
        )
    inputs = validate(pool, k=k, kernel=kernel, noise_std=noise_std, check_noise=True)
    spec = VTLRule(space=resolve_space(space, inputs.kernel, inputs.pool),
                   normalize=bool(normalize), undirected=True)
    return greedy(spec, rule_inputs(inputs, noise_std), k=inputs.k, allow_repeats=allow_repeats,
                  progress=progress, desc="undirected_vtl")


@functools.partial(jax.jit, static_argnames=("k", "normalize"))
def _uncertainty(pool, kernel, *, k, normalize):
    if normalize:
        pool = l2_normalize(pool)
    return top_k(kernel.diag(pool), k)


def uncertainty(pool: Any, *, k: int, kernel: Any = None, normalize: bool = False) -> Selection:
    """Uncertainty sampling (MaxVar): the k largest prior variances k(x, x).

    With the linear kernel that is the k largest squared norms ‖φ(x)‖²; no
    conditioning, so noise plays no role (as in the reference). With RBF or
    normalized embeddings all variances tie and the order is arbitrary.

    Returns:
      `Selection` of k pool indices, largest variance first, and the variances.
    """
    inputs = validate(pool, k=k, kernel=kernel)
    return _uncertainty(inputs.pool, inputs.kernel, k=inputs.k, normalize=bool(normalize))
