"""Small numeric helpers shared by the GP core and the selection rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["matmul", "safe_divide"]

# GP conditioning subtracts nearly equal quantities; on GPU/TPU the default
# float32 matmul precision (TF32 / bf16 passes) would make every pick noisy.
_HIGHEST = lax.Precision.HIGHEST


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """`a @ b` at full float32 (or float64) precision on every backend."""
    return jnp.matmul(a, b, precision=_HIGHEST)


def safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den where den > 0, else 0 (a zero-variance point is uninformative).

    The double `where` keeps gradients finite at den == 0.
    """
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), 0)
