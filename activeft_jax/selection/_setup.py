"""Input handling shared by the rules: validation before tracing, features and space inside."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from activeft_jax import gp
from activeft_jax.kernels import Kernel, Linear, get_kernel, l2_normalize
from activeft_jax.selection.greedy import RuleInputs
from activeft_jax.validation import (
    as_float_matrix,
    check_finite,
    check_k,
    check_noise_std,
    check_target,
)


class Inputs(NamedTuple):
    """Validated inputs (a Python-side bundle, not traced)."""

    pool: jax.Array
    target: Optional[jax.Array]
    kernel: Kernel
    k: int


def validate(pool: Any, target: Any = None, *, k: Any, kernel: Any = None,
             need_target: bool = False, noise_std: Any = None, check_noise: bool = False) -> Inputs:
    """Checks shapes, dtypes, `k`, finiteness and noise before tracing; casts to one float dtype."""
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
    if target is not None:
        check_finite(target, "target")
    if check_noise:
        check_noise_std(noise_std)
    return Inputs(pool, target, kernel, k)


def noise_variance(noise_std: Any, dtype) -> jax.Array:
    """ρ² from the surface's noise standard deviation ρ (the only place a std becomes a variance)."""
    return jnp.square(jnp.asarray(noise_std, dtype=dtype))


def rule_inputs(inputs: Inputs, noise_std: Any = None, key: Any = None) -> RuleInputs:
    """The traced `RuleInputs` of validated inputs; the noise enters as a variance."""
    noise_var = None if noise_std is None else noise_variance(noise_std, inputs.pool.dtype)
    return RuleInputs(inputs.pool, inputs.target, inputs.kernel, noise_var, key)


class Geometry(NamedTuple):
    """Where the GP lives, as seen inside a traced rule."""

    space: Any                 # gp.WeightSpace or gp.KernelSpace
    points: jax.Array          # features [N, d] (feature kernels) or raw points
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


def init_posterior(geo: Geometry, target: Optional[jax.Array], k: int) -> gp.Posterior:
    """The prior over the pool (and `target`, if given) with room for k rows."""
    if isinstance(geo.space, gp.WeightSpace):
        return gp.init_weight_space(geo.points, target, num_rows=k)
    return gp.init_kernel_space(geo.kernel, geo.points, target, num_rows=k)


def resolve_space(space: str, kernel: Kernel, pool: jax.Array) -> str:
    n, d = pool.shape
    return gp.choose_space(kernel, n, d, space)
