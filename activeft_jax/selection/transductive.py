r"""Transductive rules: pick pool points that tell the most about the targets A.

All four are greedy: score every pool point under the current posterior, pick
the best, condition the GP on a noisy observation there (noise variance
ρ² = noise_std²), repeat. Definitions follow the reference library
`activeft` 0.1.1 in its exact mode, so that picks compare one for one:

* VTL:    −Σ_a [σ²_n(a) − Cov_n(a, x)² / (σ²_n(x) + ρ²)]
* ITL:    ½ max(0, log(σ²_n(x) / σ̃²_n(x))), σ̃²_n = Var[f(x) | D_n, y(A)]
* CTL:    mean_a ρ_n(x, a), ρ_n = Cov_n(x, a) / sqrt(σ²_n(x) σ²_n(a))
* MM-ITL: mean_a −½ log(1 − ρ_n(x, a)²)

Differences from the reference, each deliberate:

* Picked points are masked by default; `allow_repeats=True` keeps them as
  candidates, which is what the reference does.
* A zero-variance candidate (a zero embedding) scores as uninformative (0)
  instead of NaN; the reference's ITL and CTL return NaN there and pick it
  every time.
* ITL's σ̃² is a squared norm through the Cholesky factor of the precision
  conditioned on y(A) (weight space), so it does not cancel to zero in float32
  when the targets span the space (m ≥ d); the reference subtracts two nearly
  equal variances.

References:
  Hübotter, Sukhija, Treven, As, Krause. Transductive Active Learning: Theory
  and Applications. NeurIPS 2024.
  Hübotter, Bongni, Hakimi, Krause. Efficiently Learning at Test-Time: Active
  Fine-Tuning of LLMs (SIFT). ICLR 2025.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from activeft_jax import gp
from activeft_jax._core import matmul, safe_divide
from activeft_jax.selection._setup import geometry, init_posterior, resolve_space, rule_inputs, validate
from activeft_jax.selection.greedy import GreedyRule, RuleInputs, greedy
from activeft_jax.selection.result import Selection

__all__ = ["CorrelationRule", "ITLRule", "VTLRule", "ctl", "ctl_scores", "itl", "itl_scores",
           "mmitl", "mmitl_scores", "vtl", "vtl_scores"]

_COMMON_ARGS = """\
      pool: [N, d] pool embeddings (the candidates).
      target: [m, d] target embeddings.
      k: number of picks (static: a new value recompiles).
      noise_std: observation noise standard deviation ρ > 0, in embedding units
        (the default 0.1 is the reference's automatic noise, variance 0.01).
        May be traced: `jax.vmap` over it sweeps noise levels in one call.
      kernel: 'linear' (default), 'cosine', 'rbf' or a `activeft_jax.kernels` object.
      normalize: L2-normalize pool and targets first.
      allow_repeats: keep picked points as candidates (the reference's behaviour).
      space: 'auto' (by cost), 'weight' or 'kernel' (see `activeft_jax.gp`).
      progress: show a progress bar on stderr (outside of jit/vmap only).
"""


def _common_args(fn):
    """Fills the arguments the four rules share into `fn.__doc__` (a real docstring at run time)."""
    fn.__doc__ = fn.__doc__.replace("{common_args}", _COMMON_ARGS)
    return fn


# ----------------------------------------------------------------------------- VTL


def vtl_scores(state: gp.Posterior, noise_var: jax.Array) -> jax.Array:
    """−Σ_a Var[f(a) | D_n, y(x)] for every pool point x: [N]."""
    gain = jnp.sum(state.cov * state.cov, axis=1) / (state.var + noise_var)
    return gain - jnp.sum(state.var_target)


@dataclasses.dataclass(frozen=True)
class VTLRule:
    """VTL as a greedy rule spec (static options; see `greedy.greedy`).

    Attributes:
      space: 'weight' or 'kernel' (resolved, not 'auto').
      normalize: L2-normalize pool and targets first.
      undirected: the targets are the pool itself (A = S), for `undirected_vtl`.
    """

    space: str
    normalize: bool
    undirected: bool = False

    def build(self, inputs: RuleInputs, k: int) -> GreedyRule:
        """The VTL rule on `inputs` with room for k picks."""
        geo = geometry(inputs, space=self.space, normalize=self.normalize, compress=True)
        noise_var = inputs.noise_var
        target = geo.target
        if self.undirected:  # the targets are the pool itself: A = S
            pts = geo.points
            target = gp.compress_targets(pts) if pts.shape[0] > pts.shape[1] else pts
        return GreedyRule(
            num_points=inputs.pool.shape[0],
            init=lambda: init_posterior(geo, target, k),
            score=lambda state: vtl_scores(state, noise_var),
            update=lambda state, index: gp.condition(geo.space, (state,), index, noise_var)[0],
        )


@_common_args
def vtl(pool: Any, target: Any, *, k: int, noise_std: Any = 0.1, kernel: Any = None,
        normalize: bool = False, allow_repeats: bool = False, space: str = "auto",
        progress: bool = False) -> Selection:
    """VTL: greedily minimizes the total posterior variance of the targets.

    value(x) = −Σ_{a∈A} [σ²_n(a) − Cov_n(a, x)² / (σ²_n(x) + ρ²)], the negative
    total variance left at A if x were observed (negative numbers; larger is
    better). With a kernel that has features and more targets than
    dimensions, the m targets are replaced by d exact pseudo-targets.


    Args:
{common_args}
    Returns:
      `Selection` of k pool indices in pick order and their VTL values.
    """
    inputs = validate(pool, target, k=k, kernel=kernel, need_target=True,
                      noise_std=noise_std, check_noise=True)
    spec = VTLRule(space=resolve_space(space, inputs.kernel, inputs.pool), normalize=bool(normalize))
    return greedy(spec, rule_inputs(inputs, noise_std), k=inputs.k, allow_repeats=allow_repeats,
                  progress=progress, desc="vtl")


# ----------------------------------------------------------------------------- ITL


def itl_scores(var: jax.Array, var_given_target: jax.Array, noise_var: jax.Array,
               formulation: str) -> jax.Array:
    """ITL from the variances without and with the target observations: [N].

    'reference': ½ max(0, log(σ² / σ̃²)) = I(f(x); y(A) | D_n) (activeft 0.1.1).
    'paper':     ½ log((σ² + ρ²) / (σ̃² + ρ²)) = I(y(x); f(A) | D_n), the
                 form in the paper's JAX code (σ̃² conditions on noise-free f(A)).
    A zero-variance candidate scores 0. σ̃² is floored at eps·σ² so round-off
    can never make the score infinite.
    """
    if formulation == "paper":
        return 0.5 * (jnp.log(var + noise_var) - jnp.log(var_given_target + noise_var))
    eps = jnp.finfo(var.dtype).eps
    floor = jnp.maximum(var_given_target, eps * var)
    ratio = safe_divide(var, floor)
    return jnp.where(var > 0, 0.5 * jnp.maximum(jnp.log(jnp.where(var > 0, ratio, 1)), 0), 0)


@dataclasses.dataclass(frozen=True)
class ITLRule:
    """ITL as a greedy rule spec: two posteriors (without / with y(A)) take the same picks.

    Attributes:
      space: 'weight' or 'kernel'.
      normalize: L2-normalize pool and targets first.
      formulation: 'reference' or 'paper' (see `itl`).
    """

    space: str
    normalize: bool
    formulation: str = "reference"

    def build(self, inputs: RuleInputs, k: int) -> GreedyRule:
        """The ITL rule on `inputs` with room for k picks."""
        geo = geometry(inputs, space=self.space, normalize=self.normalize, compress=True)
        noise_var = inputs.noise_var
        formulation = self.formulation
        if formulation == "reference":
            target_noise = noise_var
        else:  # noise-free f(A), regularized by a dtype-relative jitter
            diag = geo.kernel.diag(geo.target)
            info = jnp.finfo(diag.dtype)
            target_noise = jnp.sqrt(info.eps) * jnp.maximum(jnp.mean(diag), info.tiny)

        def init():
            plain = init_posterior(geo, None, k)
            if isinstance(geo.space, gp.WeightSpace):
                base = gp.conditioned_precision_factor(geo.target, target_noise)
                tilde = gp.init_weight_space(geo.points, None, num_rows=k, base=base)
            else:
                rows = gp.target_observation_rows(geo.kernel, geo.points, geo.target, target_noise)
                tilde = gp.init_kernel_space(geo.kernel, geo.points, None, num_rows=k,
                                             prior_rows=rows)
            return plain, tilde

        return GreedyRule(
            num_points=inputs.pool.shape[0],
            init=init,
            score=lambda s: itl_scores(s[0].var, s[1].var, noise_var, formulation),
            update=lambda s, index: gp.condition(geo.space, s, index, noise_var),
        )


@_common_args
def itl(pool: Any, target: Any, *, k: int, noise_std: Any = 0.1, kernel: Any = None,
        normalize: bool = False, allow_repeats: bool = False, space: str = "auto",
        formulation: str = "reference", progress: bool = False) -> Selection:
    """ITL: greedily maximizes the information a pick carries about the targets.

    value(x) = I(f(x); y(A) | D_n) = ½ max(0, log(σ²_n(x) / σ̃²_n(x))) where
    σ̃²_n(x) = Var[f(x) | D_n, y(A)] also conditions on noisy targets (noise ρ²
    on A, none on x), as in the reference library. Two rank-1 states take the
    same picks: one from the prior, one from the prior conditioned on y(A).


    Args:
{common_args}      formulation: 'reference' (default) or 'paper': ½ log((σ²+ρ²)/(σ̃²+ρ²))
        with σ̃² conditioned on noise-free f(A), the paper code's form; the two
        agree on the first pick and rank differently after it.

    Returns:
      `Selection` of k pool indices in pick order and their ITL values (nats).
    """
    if formulation not in ("reference", "paper"):
        raise ValueError(f"`formulation` must be 'reference' or 'paper'; got {formulation!r}.")
    inputs = validate(pool, target, k=k, kernel=kernel, need_target=True,
                      noise_std=noise_std, check_noise=True)
    spec = ITLRule(space=resolve_space(space, inputs.kernel, inputs.pool),
                   normalize=bool(normalize), formulation=formulation)
    return greedy(spec, rule_inputs(inputs, noise_std), k=inputs.k, allow_repeats=allow_repeats,
                  progress=progress, desc="itl")


# ----------------------------------------------------------------------------- CTL / MM-ITL


def _inv_std(var: jax.Array) -> jax.Array:
    """1/σ where σ² > 0, else 0 (a zero-variance point or target is uncorrelated)."""
    ok = var > 0
    return jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, var, 1)), 0)


def ctl_scores(state: gp.Posterior) -> jax.Array:
    """CTL: mean_a ρ_n(x, a) (signed): [N].

    ρ_n(x, a) = Cov_n(x, a) / (σ_n(x) σ_n(a)) is linear in the covariances, so
    the mean is one matrix-vector product, (C w) / σ_n(x) with w_a = 1 / (m σ_n(a)),
    instead of an [N, m] elementwise pass.
    """
    m = state.var_target.shape[0]
    w = _inv_std(state.var_target) / m
    mean = matmul(state.cov, w) * _inv_std(state.var)
    return jnp.clip(mean, -1, 1)


def mmitl_scores(state: gp.Posterior) -> jax.Array:
    """MM-ITL: mean_a −½ log(1 − ρ_n(x, a)²): [N] (finite even at |ρ| = 1).

    ρ² is formed as Cov² · (1/σ²(x)) · (1/σ²(a)), and the mean over targets is
    a matrix-vector product with the constant weights −1/(2m). (One log per
    pair dominates the step. On XLA's CPU backend a row `mean` of the logs was
    fused with its consumers into a slow loop: this form made the greedy scan
    1.8× faster at N = 10⁵, m = 100.)
    """
    inv_var = jnp.square(_inv_std(state.var))
    inv_var_target = jnp.square(_inv_std(state.var_target))
    rho2 = jnp.square(state.cov) * inv_var[:, None] * inv_var_target[None, :]
    tiny = jnp.finfo(rho2.dtype).tiny
    log_terms = jnp.log(jnp.maximum(1 - rho2, tiny))                   # [N, m]
    m = log_terms.shape[1]
    return matmul(log_terms, jnp.full((m,), -0.5 / m, log_terms.dtype))


@dataclasses.dataclass(frozen=True)
class CorrelationRule:
    """CTL or MM-ITL as a greedy rule spec (each target keeps its own correlation).

    Attributes:
      space: 'weight' or 'kernel'.
      normalize: L2-normalize pool and targets first.
      measure: 'ctl' or 'mmitl'.
    """

    space: str
    normalize: bool
    measure: str = "ctl"

    def build(self, inputs: RuleInputs, k: int) -> GreedyRule:
        """The CTL / MM-ITL rule on `inputs` with room for k picks."""
        geo = geometry(inputs, space=self.space, normalize=self.normalize, compress=False)
        noise_var = inputs.noise_var
        return GreedyRule(
            num_points=inputs.pool.shape[0],
            init=lambda: init_posterior(geo, geo.target, k),
            score=ctl_scores if self.measure == "ctl" else mmitl_scores,
            update=lambda state, index: gp.condition(geo.space, (state,), index, noise_var)[0],
        )


def _correlation_rule(measure, pool, target, *, k, noise_std, kernel, normalize, allow_repeats,
                      space, progress):
    inputs = validate(pool, target, k=k, kernel=kernel, need_target=True,
                      noise_std=noise_std, check_noise=True)
    spec = CorrelationRule(space=resolve_space(space, inputs.kernel, inputs.pool),
                           normalize=bool(normalize), measure=measure)
    return greedy(spec, rule_inputs(inputs, noise_std), k=inputs.k, allow_repeats=allow_repeats,
                  progress=progress, desc=measure)


@_common_args
def ctl(pool: Any, target: Any, *, k: int, noise_std: Any = 0.1, kernel: Any = None,
        normalize: bool = False, allow_repeats: bool = False, space: str = "auto",
        progress: bool = False) -> Selection:
    """CTL: greedily picks the point most correlated with the targets.

    value(x) = mean_{a∈A} Cov_n(x, a) / sqrt(σ²_n(x) σ²_n(a)): the signed,
    noise-free posterior correlation (an anti-aligned point −a is never
    chosen, unlike VTL/ITL). Each target keeps its own correlation, so targets
    are never compressed. On clustered data the reference (with repeats)
    picks the same point several times; by default picked points are masked.


    Args:
{common_args}
    Returns:
      `Selection` of k pool indices in pick order and their mean correlations.
    """
    return _correlation_rule("ctl", pool, target, k=k, noise_std=noise_std, kernel=kernel,
                             normalize=normalize, allow_repeats=allow_repeats, space=space,
                             progress=progress)


@_common_args
def mmitl(pool: Any, target: Any, *, k: int, noise_std: Any = 0.1, kernel: Any = None,
          normalize: bool = False, allow_repeats: bool = False, space: str = "auto",
          progress: bool = False) -> Selection:
    """MM-ITL: greedily maximizes the mean marginal information about each target.

    value(x) = mean_{a∈A} −½ log(1 − ρ_n(x, a)²) with the noise-free posterior
    correlation ρ_n of CTL (the reference's definition).


    Args:
{common_args}
    Returns:
      `Selection` of k pool indices in pick order and their MM-ITL values (nats).
    """
    return _correlation_rule("mmitl", pool, target, k=k, noise_std=noise_std, kernel=kernel,
                             normalize=normalize, allow_repeats=allow_repeats, space=space,
                             progress=progress)
