"""Input handling shared by the rules: validation before tracing, features and space inside."""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from activeft_jax import gp
from activeft_jax._core import Shards, is_traced, layout_of
from activeft_jax.kernels import (
    Cosine,
    Kernel,
    Linear,
    get_kernel,
    l2_normalize,
    resolve_kernel,
    with_prior_cov,
)
from activeft_jax.selection.greedy import RuleInputs
from activeft_jax.validation import (
    as_float_matrix,
    check_available,
    check_candidates,
    check_finite,
    check_k,
    check_magnitude,
    check_noise_std,
    check_noise_variance,
    check_observed,
    check_target,
    count_true,
)


class Inputs(NamedTuple):
    """Validated inputs (a Python-side bundle, not traced).

    `observed` is a [N] bool mask or [n] int32 indices (as given), `candidates`
    a [N] bool mask; either may be None.
    """

    pool: jax.Array
    target: Optional[jax.Array]
    kernel: Kernel
    k: int
    observed: Optional[jax.Array] = None
    candidates: Optional[jax.Array] = None


def validate(pool: Any, target: Any = None, *, k: Any, kernel: Any = None,
             need_target: bool = False, noise_std: Any = None, check_noise: bool = False,
             observed: Any = None, candidates: Any = None,
             allow_repeats: bool = False, normalize: bool = False,
             prior_cov: Any = None) -> Inputs:
    """Checks shapes, dtypes, `k`, finiteness, noise and the masks before tracing; casts to one
    float dtype.

    The kernel is resolved here: a `prior_cov` Σ makes it `LatentCovariance`,
    and data-dependent defaults (RBF's median lengthscale, over the pool as the
    rule will see it, L2-normalized if `normalize`) are filled in.
    """
    kernel = get_kernel(kernel)
    pool = as_float_matrix(pool, "pool")
    n, d = pool.shape
    k = check_k(k, n)
    if need_target:
        target = check_target(target, d)
        dtype = jnp.result_type(pool.dtype, target.dtype)
        pool, target = pool.astype(dtype), target.astype(dtype)
    else:
        target = None
    check_finite(pool, "pool")
    check_magnitude(pool, "pool")
    if target is not None:
        check_finite(target, "target")
        check_magnitude(target, "target")
    if check_noise:
        check_noise_std(noise_std)
        check_noise_variance(noise_std, pool.dtype)
    if prior_cov is not None:
        dim = d if isinstance(kernel, (Linear, Cosine)) else None
        kernel = with_prior_cov(kernel, prior_cov, dim)
    kernel = resolve_kernel(kernel, l2_normalize(pool) if normalize else pool)
    observed = check_observed(observed, n)
    candidates = check_candidates(candidates, n)
    check_available(k, n, observed, candidates, allow_repeats)
    return Inputs(pool, target, kernel, k, observed, candidates)


def subsample_targets(target: Any, key: Any, fraction: Any, max_size: Any) -> Any:
    """A uniformly random subset of min(⌈fraction·m⌉, max_size) target rows, drawn with `key`.

    The reference's `subsampled_target_frac` / `max_target_size`: its exact mode
    draws one subset per selection call (`Targeted.get_target` at `initialize`),
    as this does. All m rows (no key needed) when the size is m.
    """
    if target is None or (fraction == 1 and max_size is None):
        return target
    m = getattr(target, "shape", (None,))[0]
    if m is None:
        return target  # check_target reports the bad target
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"`target_fraction` must be a number in (0, 1]; got {fraction!r}.")
    size = math.ceil(fraction * m)
    if max_size is not None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"`max_target_size` must be a positive int; got {max_size!r}.")
        size = min(size, max_size)
    if size >= m:
        return target
    if key is None:
        raise ValueError(f"subsampling {size} of the {m} targets (`target_fraction`/"
                         "`max_target_size`) needs `key` (e.g. key=jax.random.key(0)).")
    keep = jax.random.permutation(key, m)[:size]
    return jnp.asarray(target)[keep]


def noise_variance(noise_std: Any, dtype) -> jax.Array:
    """ρ² from the surface's noise standard deviation ρ (the only place a std becomes a variance)."""
    return jnp.square(jnp.asarray(noise_std, dtype=dtype))


def _mask_of(observed: jax.Array, n: int) -> jax.Array:
    if observed.dtype == jnp.bool_:
        return observed
    return jnp.zeros((n,), bool).at[observed].set(True)


_mask_jit = jax.jit(_mask_of, static_argnums=1)


def as_mask(observed: Optional[jax.Array], like: jax.Array) -> Optional[jax.Array]:
    """`observed` (indices or a mask) as a [N] bool mask laid out like the pool `like`.

    On a pool split over concrete devices the mask is made split the same way
    (so it also spans every process of a multi-process mesh).
    """
    if observed is None:
        return None
    n = like.shape[0]
    if observed.dtype == jnp.bool_:
        return observed
    layout = layout_of(like)
    if is_traced(observed) or is_traced(like) or not layout.sharded:
        return _mask_of(observed, n) if is_traced(observed) or is_traced(like) else _mask_jit(observed, n)
    from jax.sharding import NamedSharding

    out = NamedSharding(layout.mesh, layout.spec())
    return jax.jit(_mask_of, static_argnums=1, out_shardings=out)(observed, n)


def _as_mask(observed: jax.Array, n: int) -> jax.Array:
    """Indices or a mask -> a [N] bool mask (on the default device; see `as_mask`)."""
    return observed if observed.dtype == jnp.bool_ else _mask_jit(observed, n)


@functools.partial(jax.jit, static_argnums=1)
def _index_list(mask: jax.Array, capacity: int) -> jax.Array:
    return jnp.nonzero(mask, size=capacity, fill_value=-1)[0].astype(jnp.int32)


def observed_capacity(observed: Optional[jax.Array], max_observed: Optional[int]) -> int:
    """Static room for the rows of the observed points (kernel space).

    Indices: their number. A concrete mask: its count rounded up to a power of
    two (so growing masks recompile rarely). A traced mask: `max_observed`,
    which must then be given.
    """
    if observed is None:
        return 0
    if max_observed is not None:
        return int(max_observed)
    if observed.dtype != jnp.bool_:
        return int(observed.shape[0])
    if is_traced(observed):
        raise ValueError(
            "`observed` is a traced mask and the rule runs in kernel space (a kernel without a "
            "feature map, e.g. RBF), where every observed point needs a row of the state: pass "
            "`max_observed` (a bound on how many points are observed), or `observed` as indices.")
    count = count_true(observed)
    return 0 if count == 0 else 1 << (count - 1).bit_length()


def rule_inputs(inputs: Inputs, noise_std: Any = None, key: Any = None, *,
                rows_per_observation: bool = False,
                max_observed: Optional[int] = None) -> RuleInputs:
    """The traced `RuleInputs` of validated inputs; the noise enters as a variance.

    With `rows_per_observation` (kernel space), the observed points are also
    listed as indices with a static capacity (`observed_capacity`).
    """
    noise_var = None if noise_std is None else noise_variance(noise_std, inputs.pool.dtype)
    mask = as_mask(inputs.observed, inputs.pool)
    index = None
    if rows_per_observation and inputs.observed is not None:
        capacity = observed_capacity(inputs.observed, max_observed)
        index = _index_list(mask, capacity)
    return RuleInputs(inputs.pool, inputs.target, inputs.kernel, noise_var, key, mask,
                      inputs.candidates, index)


class Geometry(NamedTuple):
    """Where the GP lives, as seen inside a traced rule."""

    space: Any                 # gp.WeightSpace or gp.KernelSpace
    points: jax.Array          # features [N, d] (feature kernels) or raw points (local block)
    target: Optional[jax.Array]  # target features / points, maybe compressed
    kernel: Kernel             # Linear on features, or the raw kernel


def geometry(inputs: RuleInputs, *, space: str, normalize: bool, compress: bool) -> Geometry:
    """Builds the feature/kernel view of pool and targets inside a traced rule.

    Kernels with a feature map are reduced to the linear kernel on φ(x); with
    `compress`, more targets than dimensions are replaced by d exact
    pseudo-targets (`gp.compress_targets`).
    """
    kernel, pool, target = inputs.kernel, inputs.pool, inputs.target
    if normalize:
        pool = l2_normalize(pool)
        target = None if target is None else l2_normalize(target)
    if not kernel.has_features:
        return Geometry(gp.KernelSpace(kernel, pool), pool, target, kernel)
    phi = kernel.features(pool)
    phi_a = None if target is None else kernel.features(target)
    if compress and phi_a is not None and phi_a.shape[0] > phi_a.shape[1]:
        phi_a = gp.compress_targets(phi_a)
    if space == "weight":
        return Geometry(gp.WeightSpace(phi), phi, phi_a, Linear())
    return Geometry(gp.KernelSpace(Linear(), phi), phi, phi_a, Linear())


def init_posterior(geo: Geometry, target: Optional[jax.Array], k: int, inputs: RuleInputs,
                   shards: Shards, *, extra_rows: Optional[jax.Array] = None,
                   prior_rows: Optional[jax.Array] = None) -> gp.Posterior:
    """The prior over the pool (and `target`), conditioned on the observed points.

    Weight space: the observed points (and `extra_rows` R, more observations
    given as scaled rows φ/ρ) enter as a factor of the prior weight covariance,
    (I + Σ_obs φφᵀ/ρ² + RᵀR)⁻¹, for any number of them, in O(N d²). R is never
    squared into a Gram matrix (`gp.precision_factor_rows`): ITL's targets over
    a small noise would lose the unobserved directions in float32.
    Kernel space: the buffers get room for k rows plus one per observed point
    (after any `prior_rows`); `condition_on_observed` fills them.
    """
    if isinstance(geo.space, gp.WeightSpace):
        terms = []
        if inputs.prior_precision is not None:
            terms.append(inputs.prior_precision)
        if inputs.observed is not None:
            terms.append(gp.observation_precision(geo.points, inputs.observed, inputs.noise_var,
                                                  shards))
        extra = sum(terms[1:], terms[0]) if terms else None
        if extra_rows is not None:
            base = gp.precision_factor_rows(extra_rows, extra)
        else:
            base = None if extra is None else gp.precision_factor(extra)
        return gp.init_weight_space(geo.points, target, num_rows=k, base=base)
    extra = 0 if inputs.observed_index is None else inputs.observed_index.shape[0]
    return gp.init_kernel_space(geo.kernel, geo.points, target, num_rows=k + extra,
                                prior_rows=prior_rows)


def condition_on_observed(geo: Geometry, states: Sequence[gp.Posterior], inputs: RuleInputs,
                          shards: Shards) -> tuple:
    """Kernel space: one rank-1 step per observed point (padding entries change nothing).

    Weight space needs nothing: `init_posterior` already conditioned on them.
    """
    states = tuple(states)
    if isinstance(geo.space, gp.WeightSpace) or inputs.observed_index is None:
        return states

    def step(sts, index):
        return gp.condition(geo.space, sts, jnp.maximum(index, 0), inputs.noise_var,
                            shards=shards, valid=index >= 0), None

    return lax.scan(step, states, inputs.observed_index)[0]


def resolve_space(space: str, kernel: Kernel, pool: jax.Array, observed: Any = None) -> str:
    """'weight' or 'kernel' by cost (`gp.choose_space`); a traced observed mask needs weight space."""
    n, d = pool.shape
    chosen = gp.choose_space(kernel, n, d, space)
    if (space == "auto" and chosen == "kernel" and kernel.has_features and observed is not None
            and observed.dtype == jnp.bool_ and is_traced(observed)):
        return "weight"  # the observed points' count is not static: only weight space is free of it
    return chosen
