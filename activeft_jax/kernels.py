"""Kernels on embeddings: linear, cosine, RBF, a latent covariance, and your own.

A kernel is a small NamedTuple, so it is a pytree: its type (and so which
kernel it is) is static under `jax.jit`, while numeric hyperparameters such as
the RBF lengthscale are traced leaves that `jax.vmap` can sweep over.

Kernels with a finite feature map (`has_features = True`: linear and cosine)
let the GP core work in weight space, where a step costs O(N d) whatever the
number of picks, and let many targets be compressed to at most d
pseudo-targets. The RBF kernel has no finite feature map and always runs in
kernel space.

Any object with `diag(x) -> [n]` and `cross(x, y) -> [n, m]` is a kernel too
(`get_kernel` wraps it in `Custom`); with a `features(x) -> [n, p]` method it
also gets weight space. `LatentCovariance(base, factor)` is k(x, x') =
φ(x)ᵀ Σ φ(x') with Σ = factor factorᵀ (the reference's
`ModelWithLatentCovariance`); `with_prior_cov(kernel, cov)` builds it from Σ.

`RBF()` without a lengthscale takes the median heuristic: ℓ = the median
Euclidean distance between pool points (`median_lengthscale`), resolved from
the data by the selection rules (`resolve_kernel`).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from activeft_jax._core import as_concrete_array, matmul
from activeft_jax.validation import check_positive

__all__ = ["Cosine", "Custom", "Kernel", "LatentCovariance", "Linear", "RBF", "get_kernel",
           "l2_normalize", "median_lengthscale", "resolve_kernel", "with_prior_cov"]


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """Rows divided by their L2 norm; a zero row stays zero (no NaN, zero gradient).

    Every nonzero row becomes a unit vector however small or large it is: the
    row is first divided by its largest |entry| (a constant for the gradient:
    the result does not depend on it), so the squared norm neither underflows
    (a row of norm 1e-20 in float32) nor overflows.
    """
    scale = lax.stop_gradient(jnp.max(jnp.abs(x), axis=axis, keepdims=True))
    ok = scale > 0
    y = jnp.where(ok, x / jnp.where(ok, scale, 1), 1)              # (ones: a finite gradient)
    norm = jnp.sqrt(jnp.sum(y * y, axis=axis, keepdims=True))      # in [1, sqrt(d)]
    return jnp.where(ok, y / norm, 0)


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
    """k(x, x') = exp(-‖x - x'‖² / (2 ℓ²)); `lengthscale` ℓ is a traced leaf.

    `RBF()` (ℓ = None) stands for the median heuristic: the selection rules
    replace it by `median_lengthscale` of the pool before tracing. With a
    fixed ℓ far below the distances between points every kernel value
    underflows to 0 and all candidates tie (ℓ = 1 on raw 128-dimensional
    embeddings, for example); the heuristic avoids that.
    """

    lengthscale: Union[float, jax.Array, None] = None
    has_features = False  # a class attribute, not a pytree leaf

    def features(self, x: jax.Array) -> jax.Array:
        raise ValueError("the RBF kernel has no finite feature map; use kernel space")

    def diag(self, x: jax.Array) -> jax.Array:
        return jnp.ones(x.shape[:-1], x.dtype)

    def cross(self, x: jax.Array, y: jax.Array) -> jax.Array:
        if self.lengthscale is None:
            raise ValueError("RBF() has no lengthscale yet: pass one, or resolve the median "
                             "heuristic with kernels.resolve_kernel(kernel, pool).")
        sq = (
            jnp.sum(x * x, axis=-1)[:, None]
            + jnp.sum(y * y, axis=-1)[None, :]
            - 2.0 * matmul(x, y.T)
        )
        ell = jnp.asarray(self.lengthscale, x.dtype)
        return jnp.exp(-jnp.maximum(sq, 0.0) / (2.0 * ell * ell))


class LatentCovariance(NamedTuple):
    """k(x, x') = φ(x)ᵀ Σ φ(x') with Σ = factor factorᵀ: a prior weight covariance.

    The reference's `ModelWithLatentCovariance`. `base` must have a feature
    map φ (linear or cosine); the features become φ(x) · factor, so every rule
    keeps weight space. Build it from Σ with `with_prior_cov`.

    Attributes:
      base: the kernel whose features φ are reweighted.
      factor: [p, q] with Σ = factor factorᵀ (p = the feature dimension).
    """

    base: Any
    factor: jax.Array
    has_features = True  # a class attribute, not a pytree leaf

    def features(self, x: jax.Array) -> jax.Array:
        return matmul(self.base.features(x), self.factor.astype(x.dtype))

    def diag(self, x: jax.Array) -> jax.Array:
        phi = self.features(x)
        return jnp.sum(phi * phi, axis=-1)

    def cross(self, x: jax.Array, y: jax.Array) -> jax.Array:
        return matmul(self.features(x), self.features(y).T)


class _ById:
    """Hashes and compares by identity (a user's kernel object as static jit data)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _ById) and other.obj is self.obj


@jax.tree_util.register_pytree_node_class
class Custom:
    """A user's kernel: any object with `diag(x)` and `cross(x, y)` (and maybe `features(x)`).

    A pytree object (a NamedTuple or registered dataclass) keeps its array
    leaves traced, so `jax.vmap` can sweep its hyperparameters; any other
    object is static (a new object compiles anew). `has_features` is the
    object's own attribute if it has one, else whether it has `features`.
    """

    def __init__(self, obj: Any):
        self.obj = obj

    @property
    def has_features(self) -> bool:
        own = getattr(self.obj, "has_features", None)
        return bool(own) if own is not None else callable(getattr(self.obj, "features", None))

    def features(self, x: jax.Array) -> jax.Array:
        if not self.has_features:
            raise ValueError(f"the kernel {type(self.obj).__name__} has no `features` method; "
                             "use kernel space")
        return _checked(self.obj.features(x), (x.shape[0], None), "features", self.obj)

    def diag(self, x: jax.Array) -> jax.Array:
        return _checked(self.obj.diag(x), (x.shape[0],), "diag", self.obj).astype(x.dtype)

    def cross(self, x: jax.Array, y: jax.Array) -> jax.Array:
        out = self.obj.cross(x, y)
        return _checked(out, (x.shape[0], y.shape[0]), "cross", self.obj).astype(x.dtype)

    def tree_flatten(self):
        if jax.tree_util.all_leaves([self.obj]):     # a plain object: static
            return (), (True, _ById(self.obj))
        return (self.obj,), (False, None)

    @classmethod
    def tree_unflatten(cls, aux, children):
        static, held = aux
        return cls(held.obj if static else children[0])

    def __repr__(self):
        return f"Custom({self.obj!r})"


def _checked(out, shape, method, obj):
    out = jnp.asarray(out)
    if out.ndim != len(shape) or any(s is not None and s != o for s, o in zip(shape, out.shape)):
        want = "[" + ", ".join("p" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"kernel {type(obj).__name__}.{method} must return shape {want}; "
                         f"got {tuple(out.shape)}.")
    return out


def _is_split(x: Any) -> bool:
    """Whether x is split over an Explicit-axes mesh (its type carries the split)."""
    try:
        spec = jax.typeof(x).sharding.spec
    except Exception:  # noqa: BLE001 - no sharding information (one device, numpy)
        return False
    return any(entry is not None for entry in spec)


def median_lengthscale(points: jax.Array, max_points: int = 1000) -> jax.Array:
    """The median heuristic: the median Euclidean distance between distinct rows.

    Up to `max_points` evenly spaced rows are used (all pairs among them). If
    every pair coincides the lengthscale is 1.
    """
    n = points.shape[0]
    split = _is_split(points)
    if n > max_points:
        rows = np.linspace(0, n - 1, max_points).round().astype(np.int32)
        points = points.at[rows].get(out_sharding=jax.P()) if split else points[rows]
    elif split:
        points = jax.sharding.reshard(points, jax.P())
    s = points.shape[0]
    sq = jnp.sum(points * points, axis=1)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * matmul(points, points.T), 0.0)
    iu = np.triu_indices(s, 1)
    if len(iu[0]) == 0:
        return jnp.ones((), points.dtype)
    med = jnp.sqrt(jnp.median(d2[iu]))
    return jnp.where(med > 0, med, jnp.ones((), points.dtype))


def _check_lengthscale(ell: Any) -> None:
    """A given lengthscale must be a finite scalar > 0 (None: the median heuristic)."""
    if ell is not None:
        check_positive(ell, "lengthscale")


_median_jit = jax.jit(median_lengthscale, static_argnums=1)


def resolve_kernel(kernel: Any, points: jax.Array) -> Any:
    """`kernel` with data-dependent defaults filled from `points` (RBF's median lengthscale)."""
    if isinstance(kernel, RBF):
        _check_lengthscale(kernel.lengthscale)
        if kernel.lengthscale is None:
            if isinstance(points, jax.core.Tracer):
                return RBF(median_lengthscale(points))
            from activeft_jax._core import concrete

            return RBF(concrete(_median_jit, points, 1000))
    if isinstance(kernel, LatentCovariance):
        return kernel._replace(base=resolve_kernel(kernel.base, points))
    return kernel


def with_prior_cov(kernel: Any, cov: Any, dim: Optional[int] = None) -> LatentCovariance:
    """`LatentCovariance` of `kernel` with prior weight covariance Σ = `cov` [p, p].

    Σ must be symmetric positive semi-definite (checked when concrete); its
    factor is V diag(√λ) from its eigendecomposition, so a singular Σ works.
    """
    kernel = get_kernel(kernel)
    if not kernel.has_features:
        raise ValueError("`prior_cov` needs a kernel with a feature map ('linear', 'cosine' or a "
                         "kernel with `features`): it is the covariance of the feature weights.")
    cov = as_concrete_array(cov)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1] or (dim is not None and cov.shape[0] != dim):
        want = f"[{dim}, {dim}]" if dim is not None else "[p, p]"
        raise ValueError(f"`prior_cov` must be a square matrix {want} (the feature dimension); "
                         f"got shape {tuple(cov.shape)}.")
    if not jnp.issubdtype(cov.dtype, jnp.floating):
        cov = cov.astype(jnp.float32)
    if not isinstance(cov, jax.core.Tracer):
        c = np.asarray(cov, np.float64)
        if not np.all(np.isfinite(c)):
            raise ValueError("`prior_cov` has NaN or inf entries.")
        scale = max(float(np.max(np.abs(c))), np.finfo(np.float64).tiny)
        if np.max(np.abs(c - c.T)) > 1e-5 * scale:
            raise ValueError("`prior_cov` must be symmetric.")
        if np.linalg.eigvalsh((c + c.T) / 2)[0] < -1e-5 * scale:
            raise ValueError("`prior_cov` must be positive semi-definite (it has a negative "
                             "eigenvalue).")
    lam, vec = jnp.linalg.eigh((cov + cov.T) / 2)
    return LatentCovariance(kernel, vec * jnp.sqrt(jnp.maximum(lam, 0))[None, :])


Kernel = Union[Linear, Cosine, RBF, LatentCovariance, Custom]

_BY_NAME = {"linear": Linear, "cosine": Cosine, "rbf": RBF}
_BUILTIN = (Linear, Cosine, RBF, LatentCovariance, Custom)


def get_kernel(kernel: "Kernel | str | None", lengthscale: float | None = None) -> Kernel:
    """Resolves a kernel: None (linear), a name ('linear', 'cosine', 'rbf'), one of ours,
    or any object with `diag(x)` and `cross(x, y)` (wrapped in `Custom`)."""
    if kernel is None:
        return Linear()
    if isinstance(kernel, _BUILTIN):
        return kernel
    if isinstance(kernel, str) and kernel.lower() in _BY_NAME:
        name = kernel.lower()
        if name == "rbf":
            _check_lengthscale(lengthscale)
            return RBF(lengthscale)
        return _BY_NAME[name]()
    if callable(getattr(kernel, "diag", None)) and callable(getattr(kernel, "cross", None)):
        return Custom(kernel)
    if isinstance(kernel, str):
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {sorted(_BY_NAME)}, or pass "
                         "an object with diag(x) and cross(x, y).")
    missing = [m for m in ("diag", "cross") if not callable(getattr(kernel, m, None))]
    raise ValueError(
        f"`kernel` must be one of {sorted(_BY_NAME)} or an object with methods diag(x) -> [n] and "
        f"cross(x, y) -> [n, m] (and optionally features(x) -> [n, p]); got "
        f"{type(kernel).__name__} without {' and '.join(missing)}."
    )
