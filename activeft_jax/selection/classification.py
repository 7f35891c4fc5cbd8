"""Expected information gain of a classifier's final layer (the reference's `EIG`).

* eig: value(x) = H_prior − Σ_c p(c|x) H_c(x), the expected drop of the summed
  predictive entropy of the targets when x is labelled, each hypothetical
  label c simulated by one SGD step on the final layer (Mehta et al., 2022).

It works on penultimate features: `pool` [N, H] and `target` [m, H] are the
inputs h of the final Dense layer, logits = h @ weights + bias. The SGD step on
the cross-entropy of (x, c) changes only `weights`, by −η h_x (p(x) − e_c)ᵀ, so
the target logits move to z_t − η (h_x · h_t)(p(x) − e_c) in closed form: no
backward pass, no copy of the model. The uncertainty rules that need only the
pool's class probabilities (max_entropy, min_margin, least_confidence) are in
`similarity`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from activeft_jax._core import layout_of, map_rows, matmul, plan, scan_rows
from activeft_jax.selection._setup import validate
from activeft_jax.selection.result import Selection
from activeft_jax.selection.similarity import _masks, _scored_top_k
from activeft_jax.validation import as_float_matrix, check_finite, check_positive

__all__ = ["eig"]

#: Elements of one [pool rows, C, target rows, C] block of logit changes.
_BLOCK = 1 << 20
#: Largest |δ| for which the entropy change is computed with expm1/log1p.
_SMALL = 1.0


def _entropy(z: jax.Array) -> jax.Array:
    """Entropy (nats) of softmax(z) along the last axis (0 log 0 = 0)."""
    log_p = jax.nn.log_softmax(z, axis=-1)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def _entropy_change(delta: jax.Array, q: jax.Array, z: jax.Array,
                    prior: jax.Array) -> jax.Array:
    """H(softmax(z + δ)) − H(softmax(z)) along the last axis.

    `delta` [..., T, C]; `q` = softmax(z), `z` (shifted by its q-mean) and the
    prior entropies `prior` [T] of the targets. The expected change over the
    labels is second order in δ (the first-order terms cancel), so subtracting
    two entropies of size log C would lose most digits in float32. For |δ| <= 1
    the change is written in terms of O(δ) quantities: with
    L = log Σ_j q_j e^{δ_j} = log1p(Σ_j q_j expm1(δ_j)) and q'_j/q_j − 1 =
    expm1(δ_j − L), ΔH = L − Σ_j (q'_j − q_j) z_j − Σ_j q'_j δ_j. Larger steps
    (where the change itself is large) take the plain difference.
    """
    small = jnp.clip(delta, -_SMALL, _SMALL)
    log_s = jnp.log1p(jnp.sum(q * jnp.expm1(small), axis=-1, keepdims=True))
    ratio = jnp.expm1(small - log_s)  # q'/q − 1
    accurate = (log_s[..., 0] - jnp.sum(q * ratio * z, axis=-1)
                - jnp.sum(q * (1 + ratio) * small, axis=-1))
    plain = _entropy(z + delta) - prior
    return jnp.where(jnp.max(jnp.abs(delta), axis=-1) <= _SMALL, accurate, plain)


def _eig_score(pool, target, weights, bias, step_size):
    """EIG of every (local) pool row: [N]. Blocks of pool and target rows keep memory bounded."""
    n, m, c = pool.shape[0], target.shape[0], weights.shape[1]
    z_t = matmul(target, weights) + bias[None, :]
    q_t = jax.nn.softmax(z_t, axis=1)
    z_t = z_t - jnp.sum(q_t * z_t, axis=1, keepdims=True)
    prior_t = _entropy(z_t)
    p = jax.nn.softmax(matmul(pool, weights) + bias[None, :], axis=1)
    t_rows = max(1, min(m, _BLOCK // (c * c)))
    t_chunks = plan(m, t_rows)
    p_chunks = plan(n, max(1, _BLOCK // (c * c * t_chunks.rows)))
    eye = jnp.eye(c, dtype=pool.dtype)

    def rows(h, p_x):  # [B, H], [B, C] -> [B]
        grad = p_x[:, None, :] - eye[None]  # [B, c, C]: ∂CE(x, c)/∂logits

        def over_targets(total, valid, h_t, q, z, prior):
            s = jnp.where(valid[None, :], matmul(h, h_t.T), 0)  # [B, T]; rows seen before: 0
            delta = -step_size * s[:, None, :, None] * grad[:, :, None, :]  # [B, c, T, C]
            change = _entropy_change(delta, q[None, None], z[None, None], prior[None, None])
            return total + jnp.sum(change, axis=2)  # [B, c]

        change = scan_rows(over_targets, jnp.zeros((h.shape[0], c), h.dtype), t_chunks,
                           target, q_t, z_t, prior_t)
        return -jnp.sum(p_x * change, axis=1)

    return map_rows(rows, p_chunks, pool, p)


def _validate_layer(weights: Any, bias: Any, d: int, dtype) -> tuple[jax.Array, jax.Array]:
    if weights is None:
        raise ValueError(
            "`weights` is required: the [H, C] kernel of the classifier's final layer "
            "(logits = pool @ weights + bias); it has no command-line flag, so eig runs from "
            "Python only.")
    weights = as_float_matrix(weights, "weights")
    if weights.shape[0] != d:
        raise ValueError(
            f"`weights` must be the final layer's kernel [H, C] with H = {d}, the width of "
            f"`pool` (logits = pool @ weights + bias; a torch nn.Linear weight is [C, H]: pass "
            f"its transpose); got shape {weights.shape}.")
    c = weights.shape[1]
    if c < 2:
        raise ValueError(f"`weights` must have at least 2 columns (classes); got shape "
                         f"{weights.shape}.")
    check_finite(weights, "weights")
    if bias is None:
        bias = jnp.zeros((c,), dtype)
    else:
        if not hasattr(bias, "dtype"):
            bias = jnp.asarray(bias)
        if jnp.ndim(bias) != 1 or bias.shape[0] != c or not jnp.issubdtype(
                bias.dtype, jnp.number) or jnp.iscomplexobj(bias):
            raise ValueError(f"`bias` must be a real vector [C] with C = {c} (the columns of "
                             f"`weights`), or None; got shape {jnp.shape(bias)}, dtype "
                             f"{bias.dtype}.")
        bias = jnp.asarray(bias, dtype)
        check_finite(bias, "bias")
    return jnp.asarray(weights, dtype), bias


def eig(pool: Any, target: Any, *, k: int, weights: Any = None, bias: Any = None,
        step_size: Any = 0.01, observed: Any = None, candidates: Any = None) -> Selection:
    """Expected information gain about the targets' predictions (the reference's `EIG`).

    value(x) = H_prior − Σ_c p(c|x) H_c(x), where H_prior = Σ_t H(softmax(z_t))
    is the summed predictive entropy of the targets, p(·|x) = softmax(z_x), and
    H_c(x) is the same sum after one SGD step of size `step_size` on the final
    layer's weights (not its bias) on the cross-entropy of x with label c:
    z_t ← z_t − step_size (h_x · h_t)(p(x) − e_c). Each label's step starts
    from the given weights. Scores are independent (top-k): EIG does not
    encourage diversity. Cost O(N m C²), in blocks of pool and target rows
    (memory O(block · C · m · C), never N × N).

    Differences from activeft 0.1.1's `EIG`, whose `compute` cannot run: it
    lacks the `device` argument that `select` passes (TypeError), and its loop
    over the labels c starts each step from the weights left by the previous
    label's step (they are restored only per x), so the steps accumulate over c.
    Here every label's step starts from `weights`, as the rule intends. Its
    entropies are −Σ p log p, NaN where a probability underflows to 0; here 0 log 0 = 0.

    Args:
      pool: [N, H] penultimate features of the pool (the input of the final
        layer; may be split over devices along N).
      target: [m, H] penultimate features of the targets.
      k: number of picks (static).
      weights: [H, C] kernel of the final layer, logits = h @ weights + bias
        (the Flax `nn.Dense` layout; a torch `nn.Linear.weight` transposed).
      bias: [C] bias of the final layer, or None (zero).
      step_size: SGD step size η > 0 of the hallucinated update (the
        reference's fixed learning rate 0.01; traceable).
      observed: labelled points ([n] indices or a [N] bool mask): never picked.
      candidates: [N] bool mask of the points that may be picked.

    Returns:
      `Selection`, largest gain first, with the gains in nats.
    """
    inputs = validate(pool, target, k=k, need_target=True, observed=observed,
                      candidates=candidates)
    dtype = inputs.pool.dtype
    weights, bias = _validate_layer(weights, bias, inputs.pool.shape[1], dtype)
    check_positive(step_size, "step_size")
    step_size = jnp.asarray(step_size, dtype)
    return _scored_top_k(_eig_score, (inputs.pool,), (inputs.target, weights, bias, step_size),
                         _masks(inputs), k=inputs.k, layout=layout_of(inputs.pool))
