"""Kernels on embeddings: linear, cosine and RBF.

A kernel is a small NamedTuple, so it is a pytree: its type (and so which
kernel it is) is static under `jax.jit`, while numeric hyperparameters such as
the RBF lengthscale are traced leaves that `jax.vmap` can sweep over.

Kernels with a finite feature map (`has_features = True`: linear and cosine)
let the GP core work in weight space, where a step costs O(N d) whatever the
number of picks, and let many targets be compressed to at most d
pseudo-targets. The RBF kernel has no finite feature map and always runs in
kernel space.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import jax
import jax.numpy as jnp

from activeft_jax._core import matmul

__all__ = ["Cosine", "Kernel", "Linear", "RBF", "get_kernel", "l2_normalize"]


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """Rows divided by their L2 norm; a zero row stays zero (no NaN)."""
    norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
    tiny = jnp.finfo(x.dtype).tiny
    return x / jnp.maximum(norm, tiny)


class Linear(NamedTuple):
    """k(x, x') = xᵀx' (the reference library's default kernel)."""

    has_features = True  # a class attribute, not a pytree leaf

    def features(self, x: jax.Array) -> jax.Array:
        """The explicit feature map φ with k(x, x') = φ(x)ᵀφ(x'): [n, d] -> [n, d]."""
        return x

    def diag(self, x: jax.Array) -> jax.Array:
        """k(x_i, x_i) for every row: [n, d] -> [n]."""
        phi = self.features(x)
        return jnp.sum(phi * phi, axis=-1)

    def cross(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """k(x_i, y_j): [n, d], [m, d] -> [n, m]."""
        return matmul(self.features(x), self.features(y).T)


class Cosine(NamedTuple):
    """k(x, x') = xᵀx' / (‖x‖ ‖x'‖): the linear kernel on L2-normalized rows.

    A zero row has zero prior variance (it is uninformative), not NaN.
    """

    has_features = True  # a class attribute, not a pytree leaf

    def features(self, x: jax.Array) -> jax.Array:
        return l2_normalize(x)

    def diag(self, x: jax.Array) -> jax.Array:
        phi = self.features(x)
        return jnp.sum(phi * phi, axis=-1)

    def cross(self, x: jax.Array, y: jax.Array) -> jax.Array:
        return matmul(self.features(x), self.features(y).T)


class RBF(NamedTuple):
    """k(x, x') = exp(-‖x - x'‖² / (2 ℓ²)); `lengthscale` ℓ is a traced leaf."""

    lengthscale: Union[float, jax.Array] = 1.0
    has_features = False  # a class attribute, not a pytree leaf

    def features(self, x: jax.Array) -> jax.Array:
        raise ValueError("the RBF kernel has no finite feature map; use kernel space")

    def diag(self, x: jax.Array) -> jax.Array:
        return jnp.ones(x.shape[:-1], x.dtype)

    def cross(self, x: jax.Array, y: jax.Array) -> jax.Array:
        sq = (
            jnp.sum(x * x, axis=-1)[:, None]
            + jnp.sum(y * y, axis=-1)[None, :]
            - 2.0 * matmul(x, y.T)
        )
        ell = jnp.asarray(self.lengthscale, x.dtype)
        return jnp.exp(-jnp.maximum(sq, 0.0) / (2.0 * ell * ell))


Kernel = Union[Linear, Cosine, RBF]

_BY_NAME = {"linear": Linear, "cosine": Cosine, "rbf": RBF}


def get_kernel(kernel: "Kernel | str | None", lengthscale: float | None = None) -> Kernel:
    """Resolves a kernel object or one of the names 'linear', 'cosine', 'rbf'."""
    if kernel is None:
        return Linear()
    if isinstance(kernel, (Linear, Cosine, RBF)):
        return kernel
    if isinstance(kernel, str) and kernel.lower() in _BY_NAME:
        name = kernel.lower()
        if name == "rbf":
            return RBF(1.0 if lengthscale is None else lengthscale)
        return _BY_NAME[name]()
    raise ValueError(
        f"`kernel` must be one of {sorted(_BY_NAME)} or a kernel object; got {kernel!r}."
    )
