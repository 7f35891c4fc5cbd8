r"""The GP posterior over a pool and its rank-1 Cholesky step (DESIGN §2).

After n noisy observations x_1..x_n (noise variance ρ²) the posterior
covariance of a GP with kernel k is

    Cov_n(u, w) = k(u, w) − Σ_{j≤n} v_j(u) v_j(w),
    v_{n+1}(·) = Cov_n(x_{n+1}, ·) / sqrt(σ²_n(x_{n+1}) + ρ²),

which is exactly growing the Cholesky factor of K_XX + ρ²I by one row.
`Posterior` carries, in fixed-size buffers, what the selection scores read:
the marginal variances of the N pool points, their covariances with m'
(pseudo-)targets and the targets' variances. The rows themselves live

* in **weight space** (kernels with a feature map φ ∈ R^d): a square-root
  factor Σ_n = S_n S_nᵀ of the weight covariance (Potter's form), kept as
  S_n = Gᵀ − Σ_j β_j w_j e_jᵀ with e_j = S_{j-1}ᵀφ(x_j) and w_j = S_{j-1} e_j,
  so Cov_n(u, w) = φ(u)ᵀ Σ_n φ(w) and a step costs one pass over the pool,
  O(N d), plus O(r d) for the factor; B = GᵀG is the prior weight
  covariance, the identity unless a base factor G is given;
* in **kernel space** (any kernel): rows V [r, N] over the pool, a step costs
  O(N (d + r)).

Every per-point array keeps the pool axis leading ([N, m'], never [m', N]):
on XLA's CPU backend the transposed layout made the same update 14× slower.
Nothing here ever forms an N × N matrix.

float32 (weight space). The per-point variances and covariances are updated by
subtraction, σ²_{n+1} = σ²_n − v², so their round-off is relative to the
prior (ε‖φ‖²), which is large next to a posterior variance near ρ² after
re-picks. Three things keep the picks on the exact greedy:

* the factor is a square root, so ψ = S_nᵀφ(x), whose squared norm is σ²_n(x),
  cancels on the scale of the posterior standard deviation, not the variance;
  the targets are carried as their conditional embeddings Ψ_A = Φ_A S_n;
* the observed point itself is recomputed from the factor at every step:
  σ²_{n+1}(x*) = ‖e‖² ρ²/(‖e‖² + ρ²) and Cov_{n+1}(x*, A) = Ψ_A e ρ²/(‖e‖² + ρ²);
* `refine_scores` recomputes, before each pick, the scores of the best few
  points from the factor (`fresh_rows`), until the best is a recomputed one.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from activeft_jax._core import PLAIN, Shards, matmul
from activeft_jax.kernels import Kernel

__all__ = [
    "FreshRows",
    "KernelSpace",
    "Posterior",
    "WeightSpace",
    "choose_space",
    "compress_targets",
    "condition",
    "conditioned_precision_factor",
    "decorrelation",
    "fresh_rows",
    "init_kernel_space",
    "init_weight_space",
    "observation_precision",
    "precision_factor",
    "precision_factor_rows",
    "refine_scores",
    "rowwise_sq_norm",
    "target_observation_rows",
]

#: `refine_scores`: points recomputed from the factor per round, and at most this many rounds.
REFINE_POINTS = 8
REFINE_ROUNDS = 8


class Posterior(NamedTuple):
    """GP posterior over the pool S and (pseudo-)targets A after `step` rows.

    Attributes:
      var: [N] σ²_n(x) for every pool point.
      cov: [N, m'] Cov_n(x, a) for every pool point and (pseudo-)target.
      var_target: [m'] σ²_n(a).
      rows: weight space [2, r, d]: rows[0, j] = e_j and rows[1, j] = β_j w_j,
        the terms of the factor S_n = Gᵀ − rows[1]ᵀ rows[0] with Σ_n = S_n S_nᵀ;
        kernel space [r, N] (Cov_n(S, S) = K − rowsᵀrows). Rows at and after
        `step` are zero.
      base: weight space only: [d, d] factor G of the prior weight covariance
        B = GᵀG (S_0 = Gᵀ), or None for B = I. Always None in kernel space.
      step: [] int32, the index of the next row to write.
      targets: weight space: [m', d] the targets' conditional embeddings
        Ψ_A = Φ_A S_n (Cov_n(A, A) = Ψ_A Ψ_Aᵀ); kernel space: the target points.
      target_rows: kernel space only: [r, m'] the rows at the targets,
        v_j(A); None in weight space.

    A step computes the new row at the targets, v_{n+1}(A), from `targets`
    (and `target_rows`) rather than by reading row x* of `cov`: a read of the
    [N, m'] state inside its own rank-1 update would stop XLA from updating it
    in place, and it would copy the whole state every step.
    """

    var: jax.Array
    cov: jax.Array
    var_target: jax.Array
    rows: jax.Array
    base: Optional[jax.Array]
    step: jax.Array
    targets: jax.Array
    target_rows: Optional[jax.Array]


class WeightSpace(NamedTuple):
    """Pool given by explicit features φ(S) [N, d]; linear kernel on them."""

    features: jax.Array


class KernelSpace(NamedTuple):
    """Pool given by raw points [N, d] and a kernel evaluated on the fly."""

    kernel: Kernel
    points: jax.Array


def choose_space(kernel: Kernel, num_points: int, dim: int, space: str = "auto") -> str:
    """Picks 'weight' or 'kernel' space by cost (static: from shapes only).

    Per step both spaces pay O(N d) for the pass over the pool; on top of that
    weight space reads its [k, d] rows and kernel space its [k, N] rows, so
    weight space wins whenever d <= N. Kernels without a feature map (RBF)
    always use kernel space.
    """
    if space not in ("auto", "weight", "kernel"):
        raise ValueError(f"`space` must be 'auto', 'weight' or 'kernel'; got {space!r}.")
    if space == "weight" and not kernel.has_features:
        raise ValueError(
            f"`space='weight'` needs a kernel with a feature map; {type(kernel).__name__} has none."
        )
    if space != "auto":
        return space
    return "weight" if kernel.has_features and dim <= num_points else "kernel"


def rowwise_sq_norm(x: jax.Array, transform_t: Optional[jax.Array] = None,
                    batch_size: int = 4096) -> jax.Array:
    """‖x_i Tᵀ‖² for every row (‖x_i‖² if T is None), in bounded memory: [N, d] -> [N].

    With a transform the rows are processed in blocks of `batch_size`, so the
    [N, d] product never lives at once.
    """
    if transform_t is None:
        return jnp.sum(x * x, axis=-1)

    def one(row):
        y = matmul(row, transform_t)
        return jnp.sum(y * y)

    return lax.map(one, x, batch_size=min(batch_size, x.shape[0]))


def compress_targets(target_features: jax.Array, shards: Optional[Shards] = None) -> jax.Array:
    """m targets -> d pseudo-targets R with RᵀR = Φ_AᵀΦ_A (exact for m > d).

    VTL and ITL see the targets only through Φ_AᵀΦ_A, so R [d, d] stands in for
    Φ_A [m, d]: memory is bounded by N·d whatever m is. R is the triangular
    factor of a QR decomposition of Φ_A, which tolerates rank deficiency and,
    unlike a factor of the Gram matrix, does not square Φ_A's condition number
    (in float32 the Gram matrix lost the small directions of clustered targets).
    With `shards` on a split pool, the targets are a pool's local block and R
    comes from the Gram matrix summed over the devices (d² floats cross
    devices), as the square root of its eigendecomposition.
    """
    if shards is None or not shards.sharded:
        return jnp.linalg.qr(target_features, mode="r")
    gram = shards.psum(matmul(target_features.T, target_features))
    evals, evecs = jnp.linalg.eigh(gram)
    return jnp.sqrt(jnp.maximum(evals, 0))[:, None] * evecs.T


def precision_factor(extra: jax.Array) -> jax.Array:
    """G = L⁻¹ with L Lᵀ = I + `extra`: the weight covariance (I + extra)⁻¹ = GᵀG.

    `extra` [d, d] is a sum of observation precisions Φᵀ Φ / ρ². Then the
    posterior variance of f(x) is ‖G φ(x)‖²: a squared norm, with no
    cancellation even when the observations explain almost all of the variance.
    Where the Cholesky factorization fails (`extra` not positive semidefinite
    after round-off, e.g. a float32 Gram matrix over a tiny ρ²), G comes from
    the eigendecomposition with the eigenvalues clamped at 0 instead of NaN.
    """
    d = extra.shape[-1]
    eye = jnp.eye(d, dtype=extra.dtype)
    chol = jnp.linalg.cholesky(eye + extra)
    g = jax.scipy.linalg.solve_triangular(chol, eye, lower=True)

    def from_eigh(_):
        evals, evecs = jnp.linalg.eigh((extra + extra.T) / 2)
        return evecs.T * lax.rsqrt(1 + jnp.maximum(evals, 0))[:, None]

    return lax.cond(jnp.all(jnp.isfinite(g)), lambda _: g, from_eigh, None)


def precision_factor_rows(rows: jax.Array, extra: Optional[jax.Array] = None) -> jax.Array:
    """G with GᵀG = (I + rowsᵀrows + extra)⁻¹, from the rows (no Gram matrix of them).

    `rows` [r, d] are scaled observations φ/ρ (e.g. ITL's targets over their
    noise). The Gram matrix rowsᵀrows squares their condition number: in
    float32, over a small ρ², its round-off (ε‖rows‖²) swamps the unit prior
    in the directions the rows do not span, and `precision_factor` then loses
    every digit of the variance left there. Here, from the thin SVD
    rows = U diag(s) Vᵀ and the weights w = 1/√(1 + s²) (computed without
    cancellation, `hypot`: no overflow), G = diag(w) Vᵀ when the rows span
    R^d, else the symmetric G = I − V diag(1 − w) Vᵀ (GᵀG = I − VVᵀ +
    V diag(w²) Vᵀ). ‖G φ(x)‖² then carries round-off ε‖φ‖ on the scale of the
    posterior standard deviation, like the Potter factor, whatever the ρ.
    O(min(r, d)·r·d + d² min(r, d)); an `extra` [d, d] precision joins as the
    rows √λ qᵀ of its eigenpairs.
    """
    d = rows.shape[-1]
    if extra is not None:
        evals, evecs = jnp.linalg.eigh((extra + extra.T) / 2)
        rows = jnp.concatenate([rows, jnp.sqrt(jnp.maximum(evals, 0))[:, None] * evecs.T])
    _, s, vt = jnp.linalg.svd(rows, full_matrices=False)          # vt [min(r, d), d]
    w = 1 / jnp.hypot(jnp.ones((), s.dtype), s)
    if vt.shape[0] == d:
        return vt * w[:, None]
    return jnp.eye(d, dtype=rows.dtype) - matmul(vt.T, (1 - w)[:, None] * vt)


def observation_precision(features: jax.Array, mask: jax.Array, noise_var: jax.Array,
                          shards: Optional[Shards] = None) -> jax.Array:
    """Σ_{i: mask_i} φ_iᵀ φ_i / ρ²: [d, d], the precision that noisy observations at the
    masked pool points add (O(N d²); summed over the devices with `shards`)."""
    w = jnp.where(mask[:, None], features, jnp.zeros((), features.dtype))
    gram = matmul(w.T, features)
    if shards is not None:
        gram = shards.psum(gram)
    return gram / noise_var


def conditioned_precision_factor(target_features: jax.Array, noise_var: jax.Array) -> jax.Array:
    """G = L⁻¹ with L Lᵀ = I + Φ_AᵀΦ_A / ρ², the precision after observing y(A).

    Then Var[f(x) | y(A)] = φ(x)ᵀ GᵀG φ(x) = ‖G φ(x)‖²: a squared norm, with no
    cancellation even when the targets explain almost all of the variance
    (m ≥ d), unlike the kernel-space difference k(x,x) − k(x,A)(K_AA+ρ²I)⁻¹k(A,x).
    """
    return precision_factor_rows(target_features * lax.rsqrt(noise_var))


def init_weight_space(features: jax.Array, target_features: Optional[jax.Array], *,
                      num_rows: int, base: Optional[jax.Array] = None) -> Posterior:
    """The prior (no observations yet) in weight space.

    Args:
      features: [N, d] φ(S).
      target_features: [m', d] φ(A), or None for no targets.
      num_rows: r, the number of observations the buffers can hold (static).
      base: optional [d, d] factor G of the prior weight covariance B = GᵀG.
    """
    n, d = features.shape
    dtype = features.dtype
    if target_features is None:
        target_features = jnp.zeros((0, d), dtype)
    if base is None:
        var = rowwise_sq_norm(features)
        cov = matmul(features, target_features.T)
        target_white = target_features
    else:
        var = rowwise_sq_norm(features, base.T)
        target_white = matmul(target_features, base.T)             # [m', d] Φ_A S_0
        cov = matmul(features, matmul(base.T, target_white.T))     # φ Gᵀ G Rᵀ
    return Posterior(
        var=var,
        cov=cov,
        var_target=rowwise_sq_norm(target_white),
        rows=jnp.zeros((2, num_rows, d), dtype),
        base=base,
        step=jnp.zeros((), jnp.int32),
        targets=target_white,
        target_rows=None,
    )


def init_kernel_space(kernel: Kernel, points: jax.Array, targets: Optional[jax.Array], *,
                      num_rows: int, prior_rows: Optional[jax.Array] = None) -> Posterior:
    """The prior in kernel space.

    Args:
      kernel: the kernel k.
      points: [N, d] pool points.
      targets: [m', d] target points, or None.
      num_rows: r, the number of observations the buffers can hold (static).
      prior_rows: optional [p, N] rows already observed (e.g. the Cholesky rows
        of noisy target observations); they occupy the first p of p + r rows.
    """
    n, d = points.shape
    dtype = points.dtype
    if targets is None:
        targets = jnp.zeros((0, d), dtype)
    var = kernel.diag(points)
    cov = kernel.cross(points, targets)
    var_target = kernel.diag(targets)
    rows = jnp.zeros((num_rows, n), dtype)
    target_rows = jnp.zeros((num_rows, targets.shape[0]), dtype)
    step = jnp.zeros((), jnp.int32)
    if prior_rows is not None:
        if targets.shape[0]:
            raise ValueError("`prior_rows` cannot be combined with `targets`.")
        var = var - jnp.sum(prior_rows * prior_rows, axis=0)
        var = jnp.maximum(var, 0)
        rows = jnp.concatenate([prior_rows.astype(dtype), rows], axis=0)
        target_rows = jnp.zeros((rows.shape[0], 0), dtype)
        step = step + prior_rows.shape[0]
    return Posterior(var=var, cov=cov, var_target=var_target, rows=rows, base=None, step=step,
                     targets=targets, target_rows=target_rows)


def _append(state: Posterior, index: jax.Array, cov_row: jax.Array, payload: jax.Array,
            target_cov_row: jax.Array, noise_var: jax.Array, shards: Shards,
            valid: jax.Array) -> Posterior:
    """Appends the Cholesky row for an observation at pool point `index`.

    Kernel space (weight space takes `_potter_step`). `cov_row` is
    Cov_n(x_index, S) [N] and `target_cov_row` Cov_n(x_index, A) [m'];
    `payload` is what the row buffer stores (`cov_row` itself). With `valid`
    False the row is zero: nothing changes but the step counter.
    """
    inv_scale = lax.rsqrt(shards.row(state.var, index) + noise_var)
    inv_scale = jnp.where(valid, inv_scale, jnp.zeros((), inv_scale.dtype))
    v = cov_row * inv_scale                       # [N]  v_{n+1}(S)
    v_target = target_cov_row * inv_scale         # [m'] v_{n+1}(A)
    target_rows = state.target_rows
    if target_rows is not None:
        target_rows = lax.dynamic_update_index_in_dim(target_rows, v_target, state.step, 0)
    return Posterior(
        var=jnp.maximum(state.var - v * v, 0),
        cov=state.cov - v[:, None] * v_target[None, :],
        var_target=jnp.maximum(state.var_target - v_target * v_target, 0),
        rows=lax.dynamic_update_index_in_dim(state.rows, payload * inv_scale, state.step, 0),
        base=state.base,
        step=state.step + 1,
        targets=state.targets,
        target_rows=target_rows,
    )


def _factor_t(state: Posterior, phi: jax.Array) -> jax.Array:
    """Rows φ S_n [b, d] for rows φ [b, d]: (S_nᵀφ)ᵀ, the conditional embeddings (weight space)."""
    prior = phi if state.base is None else matmul(phi, state.base.T)
    return prior - matmul(matmul(phi, state.rows[1].T), state.rows[0])


def _factor(state: Posterior, e: jax.Array) -> jax.Array:
    """S_n e [d] (weight space)."""
    prior = e if state.base is None else matmul(state.base.T, e)
    return prior - matmul(state.rows[1].T, matmul(state.rows[0], e))


def _potter_step(state: Posterior, e: jax.Array, w: jax.Array, cov_row: jax.Array,
                 local: jax.Array, noise_var: jax.Array, valid: jax.Array) -> Posterior:
    """Weight space: conditions on an observation with e = S_nᵀφ*, w = S_n e = Σ_n φ*.

    `cov_row` is Φ w = Cov_n(S, x*) [N]; `local` is x*'s row in the local block
    (out of range where it lies elsewhere or the step is not `valid`).
    S_{n+1} = S_n (I − β e eᵀ) with β = 1 / (δ + ρ sqrt(δ)), δ = ‖e‖² + ρ², so
    S_{n+1} S_{n+1}ᵀ = Σ_n − w wᵀ / δ. The row of x* itself is written from the
    factor, σ²_{n+1}(x*) = ‖e‖² ρ²/δ and Cov_{n+1}(x*, A) = Ψ_A e ρ²/δ, instead
    of subtracting nearly equal numbers (a one-row write: the [N, m'] state is
    still updated in place).
    """
    var_star = jnp.sum(e * e)                              # σ²_n(x*) from the factor
    total = var_star + noise_var
    zero = jnp.zeros((), total.dtype)
    inv_scale = jnp.where(valid, lax.rsqrt(total), zero)
    beta = jnp.where(valid, 1 / (total + jnp.sqrt(noise_var * total)), zero)
    shrink = noise_var / total                             # σ²_{n+1}(x*) / σ²_n(x*)
    v = cov_row * inv_scale                                # [N]  v_{n+1}(S)
    cov_target = matmul(state.targets, e)                  # [m'] Cov_n(A, x*)
    v_target = cov_target * inv_scale                      # [m'] v_{n+1}(A)
    var = jnp.maximum(state.var - v * v, 0).at[local].set(var_star * shrink, mode="drop")
    cov = (state.cov - v[:, None] * v_target[None, :]).at[local].set(cov_target * shrink,
                                                                      mode="drop")
    targets = state.targets - beta * cov_target[:, None] * e[None, :]    # Ψ_A (I − β e eᵀ)
    var_target = jnp.where(valid, jnp.sum(targets * targets, axis=1), state.var_target)
    new_rows = jnp.stack([e * valid.astype(e.dtype), beta * w])[:, None, :]
    rows = lax.dynamic_update_slice_in_dim(state.rows, new_rows, state.step, axis=1)
    return state._replace(var=var, cov=cov, var_target=var_target, rows=rows,
                          step=state.step + 1, targets=targets)


def condition(space: "WeightSpace | KernelSpace", states: Sequence[Posterior],
              index: jax.Array, noise_var: jax.Array, *, shards: Optional[Shards] = None,
              valid: Any = True) -> tuple[Posterior, ...]:
    """Conditions several posteriors on one noisy observation at pool point `index`.

    The posteriors share the pool but may start from different priors (ITL
    tracks one with and one without the target observations). They are
    updated together so that the pool is read once: in weight space all
    Σ_n φ(x*) go through a single [N, d] × [d, s] product; in kernel space the
    kernel row k(x*, S) is evaluated once.

    Args:
      space: `WeightSpace` or `KernelSpace` of the pool (its local block).
      states: posteriors over that pool.
      index: [] int pool index of the observed point (global).
      noise_var: [] observation noise variance ρ² > 0.
      shards: where the pool's blocks live (default: one device); the
        observed point's row crosses devices as d floats.
      valid: [] bool; False leaves every posterior as it is (the step counter aside).

    Returns:
      The conditioned posteriors, in the same order.
    """
    shards = Shards(PLAIN, space_size(space)) if shards is None else shards
    valid = jnp.asarray(valid, bool)
    if isinstance(space, WeightSpace):
        phi = shards.row(space.features, index)                        # [d]
        es = [_factor_t(st, phi[None, :])[0] for st in states]         # e = S_nᵀ φ*
        ws = [_factor(st, e) for st, e in zip(states, es)]             # w = S_n e = Σ_n φ*
        cov_rows = matmul(space.features, jnp.stack(ws, axis=1))       # [N, s]
        local = index - shards.offset                                  # x*'s row here, if any
        local = jnp.where(valid & (local >= 0) & (local < shards.n_local), local, shards.n_local)
        return tuple(
            _potter_step(st, es[j], ws[j], cov_rows[:, j], local, noise_var, valid)
            for j, st in enumerate(states)
        )
    x = shards.row(space.points, index)
    k_row = space.kernel.cross(x[None, :], space.points)[0]           # [N]
    out = []
    for st in states:
        past = shards.col(st.rows, index)                              # v_j(x*)
        r = k_row - matmul(past, st.rows)                              # Cov_n(x*, S)
        r_target = space.kernel.cross(x[None, :], st.targets)[0] - matmul(past, st.target_rows)
        out.append(_append(st, index, r, r, r_target, noise_var, shards, valid))
    return tuple(out)


def space_size(space: "WeightSpace | KernelSpace") -> int:
    """Rows of the pool (block) a space holds."""
    points = space.features if isinstance(space, WeightSpace) else space.points
    return points.shape[0]


class FreshRows(NamedTuple):
    """Some pool points' posterior recomputed from the weight-space factor (`fresh_rows`).

    Has the fields a score function reads from a `Posterior` (var, cov,
    var_target), for b points instead of N, and the embeddings they came from.

    Attributes:
      var: [b] σ²_n(x) = ‖ψ(x)‖².
      cov: [b, m'] Cov_n(x, A) = ψ(x) Ψ_Aᵀ.
      var_target: [m'] σ²_n(A) (as in the state).
      embeddings: [b, d] ψ(x) = φ(x) S_n.
      target_embeddings: [m', d] Ψ_A.
    """

    var: jax.Array
    cov: jax.Array
    var_target: jax.Array
    embeddings: jax.Array
    target_embeddings: jax.Array


def fresh_rows(space: WeightSpace, state: Posterior, index: jax.Array) -> FreshRows:
    """Recomputes the posterior of the local pool points `index` [b] from the factor.

    O(b r d): each variance is a squared norm of a conditional embedding, which
    cancels on the scale of the posterior standard deviation; the tracked
    `state.var` and `state.cov` carry round-off on the scale of the prior.
    """
    psi = _factor_t(state, space.features[index])                     # [b, d]
    return FreshRows(var=jnp.sum(psi * psi, axis=1), cov=matmul(psi, state.targets.T),
                     var_target=state.var_target, embeddings=psi,
                     target_embeddings=state.targets)


def decorrelation(rows: FreshRows) -> jax.Array:
    """1 − ρ_n(x, a)² [b, m'] from the embeddings, without cancelling when |ρ| → 1.

    With unit vectors u = ψ(x)/‖ψ(x)‖ and t = ψ(a)/‖ψ(a)‖,
    1 − ρ² = ‖u − t‖² ‖u + t‖² / 4, a product of two sums of squares: its
    relative error is about ε/(1 − ρ²)^½, where 1 − (uᵀt)² loses every digit
    once 1 − ρ² nears ε. A zero-variance point or target is uncorrelated (1).
    """
    def unit(x):
        norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
        ok = norm > 0
        return jnp.where(ok, x / jnp.where(ok, norm, 1), 0), ok[..., 0]

    u, ok_u = unit(rows.embeddings)
    t, ok_t = unit(rows.target_embeddings)
    diff = jnp.sum(jnp.square(u[:, None, :] - t[None, :, :]), axis=-1)
    both = jnp.sum(jnp.square(u[:, None, :] + t[None, :, :]), axis=-1)
    return jnp.where(ok_u[:, None] & ok_t[None, :], diff * both / 4, 1)


def refine_scores(space: "WeightSpace | KernelSpace", states: Sequence[Posterior],
                  score_fn: Any, *, num: int = REFINE_POINTS,
                  max_rounds: int = REFINE_ROUNDS) -> jax.Array:
    """`score_fn(states)` [N] with the best points' scores recomputed from the factor.

    The tracked state's round-off is on the scale of the prior, enough to swap
    near-tied candidates after re-picks in float32. In weight space the `num`
    best points are scored again, `score_fn` applied to their `fresh_rows` (the
    same indices in every state), and again while the best is a point that was
    not (at most `max_rounds` rounds; usually one). Local to the block: on a
    sharded pool every device refines its own best points. Kernel space
    returns `score_fn(states)`. `score_fn` must score each point from its own
    row (var[i], cov[i]) and the target quantities only. Availability is not
    known here: a masked point among the best takes a slot.
    """
    scores = score_fn(states)
    if not isinstance(space, WeightSpace):
        return scores
    n = scores.shape[0]
    k = min(num, n)

    def clean(s):
        return jnp.where(jnp.isnan(s), -jnp.inf, s)

    def refine(s):
        top, index = lax.top_k(clean(s), k)
        fresh = score_fn(tuple(fresh_rows(space, st, index) for st in states))
        # Another round while a point left as it was (all at most min(top)) may be the best.
        # (Slicing `top_k`'s outputs instead made XLA:CPU sort the whole array: 30 ms at
        # N = 10⁵.)
        again = (k < n) & (jnp.max(clean(fresh)) < jnp.min(top))
        return s.at[index].set(fresh.astype(s.dtype)), again

    def body(carry, _):
        s, again = carry
        # A fixed trip count with a `cond` inside (not a `while_loop`): reverse-mode
        # differentiable, and a round that is not needed costs nothing outside vmap.
        return lax.cond(again, refine, lambda s: (s, jnp.zeros((), bool)), s), None

    (scores, _), _ = lax.scan(body, refine(scores), None, length=max_rounds - 1)
    return scores


def target_observation_rows(kernel: Kernel, points: jax.Array, targets: jax.Array,
                            noise_var: jax.Array) -> jax.Array:
    """Kernel-space Cholesky rows [m, N] of observing y(A) with noise ρ²: L_A⁻¹ k(A, S).

    Passed as `prior_rows` to `init_kernel_space`, they condition the pool on
    the targets' noisy observations. (In kernel space the resulting variance is
    a difference k(x,x) − ‖L_A⁻¹k(A,x)‖²; weight space avoids that with
    `conditioned_precision_factor`.)
    """
    m = targets.shape[0]
    k_aa = kernel.cross(targets, targets) + noise_var * jnp.eye(m, dtype=points.dtype)
    chol = jnp.linalg.cholesky(k_aa)
    return jax.scipy.linalg.solve_triangular(chol, kernel.cross(targets, points), lower=True)
