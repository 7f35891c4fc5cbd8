r"""ActiveFT: prototypes that match the pool's feature distribution, as an optax loop.

Xie, Y., Lu, H., Yan, J., Yang, X., Tomizuka, M., Zhan, W. Active Finetuning:
Exploiting Annotation Budget in the Pretraining-Finetuning Paradigm. CVPR 2023.
Official code: github.com/yichen928/ActiveFT (`data_selection/sample_tools/`).

Semantics are the official code's (not the paper's formula, which differs; the
author confirms it in the repository's issue #2). With unit-norm features f_i
(i = 1..N) and B prototypes θ_k, each step

* normalizes the prototypes, θ̂ = θ / ‖θ‖;
* assigns every feature to its most similar prototype, c_i = argmax_k f_iᵀθ̂_k
  (recomputed every step, no gradient through the argmax). A feature whose two
  best are within float32 round-off of each other is decided on its exact
  similarities (`_decide`): the few such features each step would otherwise
  follow the matmul's order of summation, and the fit's trajectory with them;
* takes the loss

      L = −mean_i [ s_i − log(exp(s_i) + balance · S_{c_i}) ],
      s_i = f_iᵀθ̂_{c_i} / τ,   S_k = Σ_j exp(sg(θ̂_j)ᵀ θ̂_k / τ),

  where sg stops the gradient on the row side and the self term j = k is kept;
* applies one optimizer update (Adam, lr 1e-3 by default: torch's Adam and
  optax's agree) to the raw θ.

Prototypes start as copies of B random features (or a farthest-point init);
300 steps with all features, or the official ImageNet mode: a fresh random
batch of features every step (100 000 features, 100 steps there). Finally each
prototype, in index order, takes its most similar feature not taken yet. The
official script then sorts the indices; we return them in prototype order.

Cost. The only O(N·B·d) work of a step is the forward assignment (one matmul,
done in row chunks, so no [N, B] matrix lives at once). The loss and its
gradient take one pass over the features: the gradient of the assigned
similarities is a scatter-add of the N features into their prototypes, O(N·d),
and the prototype term is O(B²·d); the s_i come from the assignment pass
(`_own_similarity`, one formula on every path, so dense and pruned runs agree
bit for bit). With pruning (the default on CPU) the
assignment stays exact and skips most of the matmul, with Elkan's bounds: one
lower bound per (feature, prototype) pair on the angle between them, loosened
each step by the angle that prototype turned and made exact again when
recomputed; a feature whose bounds all stay above the angle to its prototype
keeps it, the others are scored against only the prototypes that might win
(`_pair_assignment`; on CPU a kernel scores just those pairs and the ones near
opening, `_cpu.refresh_pairs`). When
N·B is too large to hold the bounds, one bound per feature (Hamerly's) instead.

The whole fit is one `lax.scan`; `activeft_sweep` runs it for every temperature
and key in one compiled call (vmapped when dense; one after another when pruned).
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from activeft_jax._core import matmul
from activeft_jax.kernels import Linear, l2_normalize
from activeft_jax.selection._setup import as_mask
from activeft_jax.selection.diversity import MaxDistRule
from activeft_jax.selection.greedy import RuleInputs, available_mask, run_local
from activeft_jax._core import (
    PLAIN,
    Shards,
    default_chunk_rows,
    layout_of,
    map_rows,
    on_shards,
    plan,
    scan_rows,
)
from activeft_jax.selection import _cpu
from activeft_jax.selection._nearest import nearest_unique
from activeft_jax.selection.result import Selection
from activeft_jax.validation import (
    as_float_matrix,
    check_available,
    check_candidates,
    check_observed,
    check_finite,
    check_magnitude,
    check_k,
    check_key,
    check_positive,
    is_traced,
)

__all__ = ["ActiveFTFit", "ActiveFTSolver", "ActiveFTState", "activeft", "activeft_loss",
           "activeft_solver", "activeft_sweep", "assign_to_prototypes", "fit_activeft"]


class ActiveFTFit(NamedTuple):
    """What `fit_activeft` returns (under `vmap`, every field gains the mapped axes).

    Attributes:
      selection: `Selection` of B distinct pool indices in prototype order, with
        each pick's cosine similarity to its prototype.
      prototypes: [B, d] final prototypes, L2-normalized.
      losses: [steps] the loss before each optimizer update (the official
        code prints the same values).
      init_indices: [B] int32 pool indices the prototypes started from.
      recomputed: [steps] fraction of the N·B feature–prototype similarities
        computed in each step (all ones without `prune`; on CPUs with a matrix
        unit, the similarities it approximates count too).
    """

    selection: Selection
    prototypes: jax.Array
    losses: jax.Array
    init_indices: jax.Array
    recomputed: jax.Array


class _Bounds(NamedTuple):
    """State of the pruned assignment with one bound per feature (`bounds="rows"`)."""

    assign: jax.Array  # [N] int32, c_i
    upper: jax.Array   # [N] runner-up similarity at the last recomputation + drift then
    anchor: jax.Array  # [B, d] prototypes at the last full recomputation


class _PairBounds(NamedTuple):
    """State of the pruned assignment with one bound per (feature, prototype) pair.

    Angles, not similarities: `gap[i, k]` ≤ α_ik(t_ik) + Φ_k(t_ik), where α_ik =
    arccos f_iᵀθ̂_k is the angle at the pair's last exact computation t_ik and
    Φ_k(t) the angle prototype k has turned through so far (the sum of its
    per-step turns); so α_ik(t) ≥ gap[i, k] − Φ_k(t) at every later t (the
    triangle inequality on the sphere). A move by angle φ changes a similarity
    of cosine α by at most sin(α)·φ, so this is tighter than the chord bound
    f_iᵀθ̂_k(t) ≤ f_iᵀθ̂_k(t_ik) + Σ‖Δθ̂_k‖ when features sit close to their
    prototypes (half as many rows fail on clustered features) and as tight when
    they do not. The assigned pair holds +inf. `gap` is stored at half the
    features' precision (float16 for float32 features), rounded downwards
    (`_round_down`): it stays a lower bound, and the passes over it read and
    write half the bytes.
    """

    assign: jax.Array  # [N] int32, c_i
    gap: jax.Array     # [N, B], `_gap_dtype(features' dtype)`
    travel: jax.Array  # [B] Φ_k at the last step
    last: jax.Array    # [B, d] prototypes at the last step
    order: jax.Array   # [N] int32 features in `_chain_rank` order of their prototype
    # A bound per row on top (CPU kernel only): `turned` = Ψ, the sum over steps of the
    # largest turn of any prototype (rounded up), and rowmin[i] = min_k(gap[i, k] − Φ_k)
    # + Ψ when the check last read row i (−inf: read it next time). Since no Φ_k grew
    # by more than Ψ since, a row with rowmin[i] − Ψ(now) above its limit has no open
    # pair and its B bounds need not be read (`_cpu.open_rows`).
    rowmin: jax.Array  # [N]
    turned: jax.Array  # []


class ActiveFTState(NamedTuple):
    """The state of an ActiveFT fit between steps (see `activeft_solver`).

    Attributes:
      params: [B, d] raw prototypes θ (normalized only when used).
      opt_state: the optimizer's state.
      bounds: the pruned assignment's bounds (per feature or per pair), or
        None without pruning.
      step: [] int32, optimizer steps taken.
      init_indices: [B] int32 pool indices the prototypes started from.
      losses: [steps] the loss before each planned update (0 where not run yet).
      recomputed: [steps] fraction of the N·B similarities computed.
    """

    params: jax.Array
    opt_state: Any
    bounds: Any
    step: jax.Array
    init_indices: jax.Array
    losses: jax.Array
    recomputed: jax.Array


class _Config(NamedTuple):
    """Static settings of one fit (hashable)."""

    k: int
    steps: int
    init: str                    # "random" | "fps" | "given"
    batch_size: Optional[int]    # None: every feature each step
    chunk_rows: int
    prune: str                   # "off" | "rows" (one bound per feature) | "pairs" (per pair)
    refresh: float               # prune: recompute all when more than this fraction fails
    num_fast: int                # prune: prototypes scored exactly (those that moved most)
    wide_rows: int               # pairs, CPU: rows with this many pairs near opening go to
                                 # the matrix unit where there is one (0: never; `_cpu.wide_rows`)
    optimizer: Optional[optax.GradientTransformation]  # None: Adam(learning_rate)


class _Hyper(NamedTuple):
    """Traced hyperparameters (vmappable)."""

    temperature: jax.Array
    balance: jax.Array
    learning_rate: jax.Array


# ----------------------------------------------------------------------------- the loss


def _assigned_similarity_impl(protos, feats, assign, rows):
    def fn(x, c):
        return jnp.sum(x * protos[c], axis=-1)

    return map_rows(fn, plan(feats.shape[0], rows), feats, assign)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _assigned_similarity(protos, feats, assign, rows):
    """s_i = f_iᵀ θ̂_{c_i} for every feature: [N]; O(N d), chunked."""
    return _assigned_similarity_impl(protos, feats, assign, rows)


def _assigned_similarity_fwd(protos, feats, assign, rows):
    return _assigned_similarity_impl(protos, feats, assign, rows), (protos, feats, assign)


def _assigned_similarity_bwd(rows, res, g):
    # ∂/∂θ̂_k Σ_i g_i f_iᵀθ̂_{c_i} = Σ_{i: c_i = k} g_i f_i: a scatter-add of N rows,
    # never the dense [N, B] backward of a similarity matrix.
    protos, feats, assign = res
    b = protos.shape[0]

    def fn(acc, valid, x, gi, c):
        gi = jnp.where(valid, gi, 0)
        return acc + jax.ops.segment_sum(gi[:, None] * x, c, num_segments=b)

    grad = scan_rows(fn, jnp.zeros_like(protos), plan(feats.shape[0], rows), feats, g, assign)
    return grad, jnp.zeros_like(feats), np.zeros(assign.shape, jax.dtypes.float0)


_assigned_similarity.defvjp(_assigned_similarity_fwd, _assigned_similarity_bwd)


def _loss_terms(params, feats, assign, temperature, balance, rows):
    protos = l2_normalize(params)
    logits = _assigned_similarity(protos, feats, assign, rows) / temperature
    a = _log_diversity(protos, temperature, balance)
    return logits - jnp.logaddexp(logits, a[assign])


def _loss(params, feats, assign, temperature, balance, rows):
    return -jnp.mean(_loss_terms(params, feats, assign, temperature, balance, rows))


def _diversity(protos, temperature, balance):
    """`_log_diversity` and its vjp in the prototypes."""
    return jax.vjp(lambda p: _log_diversity(p, temperature, balance), protos)


def _log_diversity(protos, temperature, balance):
    """log(balance · S_k) for every prototype k: [B] (the row side stop-gradiented)."""
    gram = matmul(lax.stop_gradient(protos), protos.T) / temperature      # [B, B]
    return jnp.log(balance) + jax.nn.logsumexp(gram, axis=0)


def _loss_grad_sums(protos, feats, assign, a, temperature, rows, sims=None, spec=None):
    """One pass over the features: the loss and its gradients, summed over them.

    With s_i = f_iᵀθ̂_{c_i}, z_i = s_i / τ and a_k = log(balance · S_k), each
    feature adds −(z_i − logaddexp(z_i, a_{c_i})) to the loss, w_i / τ · f_i to
    −∂/∂θ̂_{c_i} and w_i to ∂/∂a_{c_i}, where w_i = σ(a_{c_i} − z_i). Reading each
    block of features once for both (a scatter-add of O(N·d), never the dense
    backward through a similarity matrix).

    `sims` [N], when given, are the s_i (`_own_similarity`, computed by the
    assignment pass that chose c_i): the features are then read only for the
    scatter-add. On CPU (float32) the w_i and the scatter-add are the kernel
    `_cpu.grad_rows` (~1.5–2x XLA's scatter on a 2-core host); `spec`, when given, is
    `_cpu.own_sims_grad`'s (s, c, w, g) of the assignment the step started from
    (`_pair_assignment`), and `_cpu.fix_grad` only sums again the rows of g whose
    features changed prototype (the same bits as `_cpu.grad_rows`).

    Returns (Σ loss, Σ ∂/∂θ̂ [B, d], Σ ∂/∂a [B]) over these features.
    """
    b = protos.shape[0]

    def terms(valid, c, s):
        # A block's Σ −loss terms and its w_i (0 on rows that another block covers).
        z, ac = s / temperature, a[c]
        w = jnp.where(valid, jax.nn.sigmoid(ac - z), 0)
        return jnp.sum(jnp.where(valid, z - jnp.logaddexp(z, ac), 0)), w

    def fn(acc, valid, x, c, s=None):
        loss, grad, grad_a = acc
        part, w = terms(valid, c, _own_similarity(x, protos, c) if s is None else s)
        grad = grad.at[c].add(-(w / temperature)[:, None] * x)
        return loss - part, grad, grad_a.at[c].add(w)

    def xla(feats, assign, *sims):
        init = (jnp.zeros((), feats.dtype), jnp.zeros_like(protos), jnp.zeros((b,), feats.dtype))
        return scan_rows(fn, init, plan(feats.shape[0], rows), feats, assign, *sims)

    def kernel(feats, assign, *sims):
        # The w_i and the scatter-add of the rows by the kernels: in row order as XLA's
        # scatter adds them, each operation rounded on its own (XLA:CPU contracts them
        # into fused multiply-adds in some fusions and not in others, and its sigmoid is
        # its own, so its bits can differ from the kernels' by round-off; dense and pruned
        # runs both take the kernels, and stay bit for bit the same). Then the chunked
        # sums of the loss and of ∂/∂a as above, over [N] scalars, with the kernels' w_i.
        s = sims[0] if sims else _own_similarities(feats, protos, assign, rows)
        if spec is None:
            w, grad = _cpu.grad_rows(feats, s, assign, a, temperature)
        else:
            w, grad = _cpu.fix_grad(feats, s, assign, a, temperature, *spec)

        def scalars(acc, valid, c, s, w):
            loss, grad_a = acc
            part, _ = terms(valid, c, s)
            return loss - part, grad_a.at[c].add(jnp.where(valid, w, 0))

        init = (jnp.zeros((), feats.dtype), jnp.zeros((b,), feats.dtype))
        loss, grad_a = scan_rows(scalars, init, plan(feats.shape[0], rows), assign, s, w)
        return loss, grad, grad_a

    arrays = (feats, assign) if sims is None else (feats, assign, sims)
    if not _cpu.usable(feats, protos):
        return xla(*arrays)
    return _cpu.on_cpu(kernel, xla, *arrays)


def _loss_and_grad(normalized, feats, assign, temperature, balance, rows, shards=None, sims=None,
                   diversity=None, spec=None):
    """The official loss and its gradient in the raw prototypes, in one pass (`_loss`'s value).

    `normalized` is `jax.vjp(l2_normalize, params)`: the step normalizes once, so its
    assignment and its loss read the same bits. With `shards`, `feats` is this
    device's block: the sums cross devices (a scalar, [B, d] and [B]), the rest is
    the same on every device. `diversity`: `_diversity`'s (a, vjp) when the step has
    it already; `spec`: see `_loss_grad_sums`.
    """
    protos, normalize_vjp = normalized
    a, a_vjp = _diversity(protos, temperature, balance) if diversity is None else diversity
    sums = _loss_grad_sums(protos, feats, assign, a, temperature, rows, sims, spec)
    n = feats.shape[0]
    if shards is not None and shards.sharded:
        sums, n = shards.psum(sums), shards.n
    loss, grad, grad_a = (x / n for x in sums)
    grad = grad + a_vjp(grad_a)[0]
    return loss, normalize_vjp(grad)[0]


def _own_similarity(x, protos, c):
    """f_iᵀθ̂_{c_i} for a block of features: [C, d], [B, d], [C] -> [C].

    The one formula every path uses for the loss's s_i (a gathered dot product,
    not the matmul's value), so the dense and pruned runs agree bit for bit: the
    sum over d is a fixed tree of elementwise adds, not a reduction, whose order
    XLA would choose by the block's shape (it differs between a chunk of the
    features and a block of open ones). On CPU with float32 inputs (and the
    kernels built) it is the kernel `_cpu.own_sims_kernel`: the same tree, each
    product and sum rounded on its own, ~4x XLA's form of it on a 2-core host
    (0.9 against 3.8 ms for 20 000 rows at d = 384), and the same bits
    whatever program calls it (XLA contracts some of the tree's multiply-adds,
    by shape and fusion).
    """
    def xla(x, protos, c):
        return _tree_reduce(jnp.add, x * protos[c])

    if not _cpu.usable(x, protos):
        return xla(x, protos, c)
    return _cpu.on_cpu(_cpu.own_sims_kernel, xla, x, protos, c)


def _own_similarities(feats, protos, assign, rows):
    """`_own_similarity` of every feature, chunked: [N] (on CPU the kernel, over all rows at
    once: it needs no [rows, d] block, and a chunk would be copied out for it first)."""
    def chunked(feats, protos, assign):
        return map_rows(lambda x, c: _own_similarity(x, protos, c), plan(feats.shape[0], rows),
                        feats, assign)

    if not _cpu.usable(feats, protos):
        return chunked(feats, protos, assign)
    return _cpu.on_cpu(_cpu.own_sims_kernel, chunked, feats, protos, assign)


def _tree_reduce(op, v):
    """op over the last axis as a fixed tree of elementwise ops: [..., m] -> [...].

    Its order does not depend on the other axes' sizes, and it stays one loop
    fusion with the slices feeding it (XLA:CPU hands a plain reduction to a
    library kernel that copies a dynamic slice of its input first). `v` may also
    be a tuple of arrays reduced together, `op` then taking and returning tuples.
    """
    def cut(t, lo, hi):
        return jax.tree.map(lambda a: a[..., lo:hi], t)

    m = jax.tree.leaves(v)[0].shape[-1]
    while m > 1:
        h = m // 2
        head = op(cut(v, 0, h), cut(v, h, 2 * h))
        v = head if m % 2 == 0 else jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=-1),
                                                 head, cut(v, 2 * h, m))
        m = (m + 1) // 2
    return jax.tree.map(lambda a: a[..., 0], v)


def _first_argmax(scores, axis=1):
    """`jnp.argmax(scores, axis)` (the first maximum) by two plain reductions.

    XLA:CPU runs argmax as a (value, index) reduction that costs ~4x a max over
    the same [C, B] block; a max, then the smallest index holding it, vectorize.
    """
    b = scores.shape[axis]
    if b >= 1 << 24:
        return jnp.argmax(scores, axis=axis).astype(jnp.int32)
    top = jnp.max(scores, axis=axis, keepdims=True)
    idx = jnp.expand_dims(jnp.arange(b, dtype=jnp.float32), 1 - axis)
    return (-jnp.max(jnp.where(scores == top, -idx, -jnp.inf), axis=axis)).astype(jnp.int32)


#: Near-tie rows are re-decided `_TIE_GROUP` at a time, their columns within the
#: margin `_TIE_CANDIDATES` at a time (`_decide`).
_TIE_GROUP = 16
_TIE_CANDIDATES = 4


def _split(v):
    """v = hi + lo exactly, hi with 12 significant bits and lo with at most 12 (float32)."""
    hi = lax.reduce_precision(v, exponent_bits=8, mantissa_bits=11)
    return hi, v - hi


def _two_sum(a, b):
    """a + b = s + e exactly (Knuth's TwoSum: no multiplication, nothing to contract)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _exact_dot(x, y):
    """Σ x·y over the last axis as an unevaluated float32 pair (hi, lo), in ~double precision.

    Each product is split into four that float32 holds exactly (`_split`); their
    sum is a fixed tree of error-free additions (`_two_sum`) whose errors are
    summed alongside. The result is within ~d²·2⁻⁴⁸ · Σ|x·y| of the exact dot
    product of the float32 inputs (~1e-10 at d = 384 for unit vectors; float32
    round-off alone is up to ~1e-5 there).
    """
    def add(a, b):
        s, err = _two_sum(a[0], b[0])
        return s, a[1] + b[1] + err

    xh, xl = _split(x)
    yh, yl = _split(y)
    s = jnp.concatenate([xh * yh, xh * yl, xl * yh, xl * yl], axis=-1)
    return _two_sum(*_tree_reduce(add, (s, jnp.zeros_like(s))))


def _exact_best(x, protos, cols, best):
    """Carries each row's exact best over more candidate columns.

    `cols` [G, K] are candidates in ascending order after those already seen (b for
    none), `x` [G, d] the rows, and `best` = (column, hi, lo) [G] so far (column b
    and −inf at first). A candidate replaces the best only when its exact similarity
    f_iᵀθ̂_k (`_exact_dot`) is larger, so ties go to the first column.
    """
    b = protos.shape[0]
    hi, lo = _exact_dot(x[:, None, :], protos[jnp.minimum(cols, b - 1)])         # [G, K]
    col, bh, bl = best
    for j in range(cols.shape[1]):
        # Candidates are within the margin of each other: hi's difference is exact
        # (Sterbenz) wherever the similarities are not near 0.
        take = (cols[:, j] < b) & ((hi[:, j] - bh) + (lo[:, j] - bl) > 0)
        col = jnp.where(take, cols[:, j], col)
        bh, bl = jnp.where(take, hi[:, j], bh), jnp.where(take, lo[:, j], bl)
    return col, bh, bl


def _decide(sims, x, protos, transposed=False):
    """Each row's prototype: the first argmax of its float32 similarities, except that a
    row whose best two are within the margin is decided on the exact similarities.

    float32 round-off in a dot product of unit vectors in d = 384 is ~1e-7 (up to
    ~1e-5), and which of two prototypes within that of each other wins steers the
    rest of the fit: the official code and ours round differently, so their fits
    would part at such rows. Deciding them exactly (to ~1e-10, `_exact_dot`) makes
    the choice independent of how the matmul summed — every path of ours, on any
    backend — and removes our round-off from the fit's trajectory. Among the
    columns within the margin of the row's best (the exact winner is one of them
    while round-off stays below half the margin), ties go to the first column.
    float64 input is decided on its matmul (its round-off is ~1e-16).

    Near-tie rows are taken `_TIE_GROUP` at a time, and their columns within the
    margin `_TIE_CANDIDATES` at a time in ascending order (one pass for nearly all
    groups): one exact-similarity computation in the program, which keeps its
    compilation short.

    `sims` [C, B] = `matmul(x, protos.T)`, or with `transposed` [B, C] =
    `matmul(protos, x.T)`; `x` [C, d], `protos` [B, d]. Returns [C] int32.
    (On CPU the transposed block is ~2x faster to decide: its reductions run over
    the major axis, elementwise across rows, where XLA:CPU vectorizes them.)
    """
    axis = 0 if transposed else 1
    c = _first_argmax(sims, axis)
    if sims.dtype != jnp.float32:
        return c
    b = sims.shape[axis]
    rows = sims.shape[1 - axis]
    k = min(_TIE_CANDIDATES, b)
    near = sims >= jnp.max(sims, axis=axis, keepdims=True) - _margin(sims.dtype)
    count = jnp.sum(near.astype(jnp.int32), axis=axis)
    tied = count >= 2
    num = jnp.sum(tied)
    g = min(_TIE_GROUP, rows)
    todo = jnp.concatenate([jnp.nonzero(tied, size=rows, fill_value=rows)[0],
                            jnp.full((g,), rows, jnp.int32)]).astype(jnp.int32)
    width = -(-b // k) * k
    cols = jnp.arange(b, dtype=jnp.int32)

    def body(st):
        i, c = st
        sel = lax.dynamic_slice_in_dim(todo, i * g, g)
        at = jnp.minimum(sel, rows - 1)
        xs = x[at]
        # Each row's columns within the margin in ascending order, then b's.
        cand = jnp.sort(jnp.where(near[:, at].T if transposed else near[at], cols[None, :], b),
                        axis=1)
        cand = jnp.pad(cand, ((0, 0), (0, width - b)), constant_values=b)

        def chunk(j, best):
            return _exact_best(xs, protos, lax.dynamic_slice_in_dim(cand, j * k, k, axis=1), best)

        start = (jnp.full((g,), b, jnp.int32), jnp.full((g,), -jnp.inf, sims.dtype),
                 jnp.zeros((g,), sims.dtype))
        passes = (jnp.max(count[at]) + k - 1) // k
        best = lax.fori_loop(0, passes, chunk, start)[0]
        return i + 1, c.at[sel].set(best, mode="drop")

    return lax.while_loop(lambda st: st[0] * g < num, body, (jnp.zeros((), jnp.int32), c))[1]


def _any(mask, axis):
    """`jnp.any(mask, axis)` as a max over int8: XLA:CPU rewrites a boolean any into a
    windowed reduction plus a second one, ~1.6x slower on the [C, B] blocks here."""
    return jnp.max(mask.astype(jnp.int8), axis=axis) > 0


def _chain_rank(protos):
    """Each prototype's position on a greedy nearest-neighbour path through them: [B] int32.

    The path starts at prototype 0 and goes on to the most similar prototype not
    visited yet, so prototypes that compete for the same features lie close on it.
    O(B²) on the [B, B] similarities, B sequential steps.
    """
    b = protos.shape[0]
    gram = matmul(protos, protos.T)

    def visit(t, st):
        cur, visited, rank = st
        nxt = jnp.argmax(jnp.where(visited, -jnp.inf, gram[cur])).astype(jnp.int32)
        return nxt, visited.at[nxt].set(True), rank.at[nxt].set(t)

    start = (jnp.zeros((), jnp.int32), jnp.zeros((b,), bool).at[0].set(True),
             jnp.zeros((b,), jnp.int32))
    return lax.fori_loop(1, b, visit, start)[2]


def _dense_assignment(protos, feats, rows, with_sims=False):
    """argmax_k f_iᵀθ̂_k for every feature (`_decide`), chunked (and its `_own_similarity`)."""

    def fn(x):
        c = _decide(matmul(protos, x.T), x, protos, transposed=True)
        return (c, _own_similarity(x, protos, c)) if with_sims else c

    return map_rows(fn, plan(feats.shape[0], rows), feats)


def _prototypes_and_features(protos: Any, feats: Any, name: str) -> tuple:
    """Both as float [B, d] and [N, d] arrays of one dimension d, or a ValueError."""
    protos = as_float_matrix(protos, name)
    feats = as_float_matrix(feats, "features")
    if protos.shape[1] != feats.shape[1]:
        raise ValueError(f"`{name}` have dimension {protos.shape[1]} but `features` have "
                         f"{feats.shape[1]}.")
    return protos, feats


def activeft_loss(params: jax.Array, features: jax.Array, *, temperature: Any = 0.07,
                  balance: Any = 1.0, chunk_rows: Optional[int] = None) -> jax.Array:
    """The official ActiveFT loss of raw prototypes `params` [B, d] on unit-norm `features` [N, d].

    Differentiable in `params` (the assignment is recomputed inside and carries
    no gradient, as in the official code). Either may be a NumPy array.
    """
    params, features = _prototypes_and_features(params, features, "params")
    rows = chunk_rows or default_chunk_rows(features.shape[0], params.shape[0])
    assign = _dense_assignment(lax.stop_gradient(l2_normalize(params)), features, rows)
    return _loss(params, features, assign, temperature, balance, rows)


# ----------------------------------------------------------------------------- pruned assignment


def _margin(dtype) -> float:
    # Slack for round-off between a gathered dot product and the matmul.
    return float(256 * jnp.finfo(dtype).eps)


def _gap_dtype(dtype):
    """The pair bounds' storage type: float16 for float32 features, float32 for float64."""
    return jnp.float16 if jnp.dtype(dtype).itemsize <= 4 else jnp.float32


def _round_up(v, dtype):
    """`v` converted to `dtype`, rounded towards +inf (an upper bound stays one)."""
    h = v.astype(dtype)
    return jnp.where(h.astype(v.dtype) < v, jnp.nextafter(h, jnp.asarray(jnp.inf, dtype)), h)


def _round_down(v, dtype):
    """`v` converted to `dtype`, rounded towards -inf (a lower bound stays one)."""
    return -_round_up(-v, dtype)


#: Bound on |_acos_poly(x) - arccos(x)| for |x| <= 1: the polynomial's 6.7e-5
#: (Abramowitz & Stegun 4.4.45) and float32 round-off.
_ACOS_ERR = 1e-4

#: On CPU (`_cpu.refresh_pairs`), a failing row's pairs scored are those open now
#: and those whose bound is within this angle of opening: ~1.5 steps of Adam's
#: early turn (lr · √d ≈ 0.02 rad at the defaults).
_HORIZON = 0.03


def _acos_poly(x):
    """arccos(x) to within 6.7e-5, clipped to [-1, 1] (XLA:CPU's arccos is ~60x slower)."""
    a = jnp.minimum(jnp.abs(x), 1)
    p = jnp.sqrt(1 - a) * (1.5707288 + a * (-0.2121144 + a * (0.0742610 + a * -0.0187293)))
    return jnp.where(x >= 0, p, jnp.pi - p)


def _acos_lower(x):
    """A lower bound on arccos(x) (the angle of a cosine x)."""
    return _acos_poly(x) - _ACOS_ERR


def _acos_upper(x):
    """An upper bound on arccos(x)."""
    return _acos_poly(x) + _ACOS_ERR


def _step_angle(protos, last):
    """An upper bound on the angle each unit-norm prototype turned since `last`: [B].

    2·arcsin(chord / 2), with the chord enlarged by 1e-6 (relative) and 1e-7 rad
    added for the float round-off of the chord and of arcsin.
    """
    chord = jnp.sqrt(jnp.sum((protos - last) ** 2, axis=1))
    return 2 * jnp.arcsin(jnp.minimum(chord * (1 + 1e-6) / 2, 1)) + _ACOS_ERR / 1000


def _runner_up(sims, assign, shift):
    """max over k != c_i of sims[i, k] + shift[k]: [C, B], [C], [B] -> [C]."""
    b = sims.shape[1]
    others = jnp.where(jnp.arange(b)[None, :] == assign[:, None], -jnp.inf, sims + shift[None, :])
    return jnp.max(others, axis=1)


def _pruned_assignment(protos, feats, bounds: _Bounds, rows: int, refresh: float, num_fast: int):
    """Exact argmax assignment that recomputes only the features whose bound fails.

    For every feature, `upper` bounds max_{k != c_i} f_iᵀθ̂_k(t_i) + δ_k(t_i) at its
    last recomputation t_i, with δ_k(t) = ‖θ̂_k(t) − anchor_k‖. Since
    |fᵀ(θ̂_k(t) − θ̂_k(t_i))| <= δ_k(t) + δ_k(t_i), every prototype k != c_i has
    similarity at most upper + δ_k(t) now. The `num_fast` prototypes that moved
    most are scored exactly instead, so the bound only pays the drift of the
    others. A feature keeps c_i while its similarity to θ̂_{c_i} beats that.

    Returns (bounds, number of features recomputed). The decisions are local to
    the features given (a device's block), so no step needs another device.
    """
    n, b = feats.shape[0], protos.shape[0]
    drift = jnp.sqrt(jnp.sum((protos - bounds.anchor) ** 2, axis=1))          # [B]
    m = min(num_fast, b - 1)
    if m > 0:
        top, fast = lax.top_k(drift, m + 1)
        rest, fast = top[m], fast[:m]
        fast_protos = protos[fast]

        def fn(x, c):
            own = jnp.sum(x * protos[c], axis=-1)
            sims = matmul(x, fast_protos.T)                                   # [C, m]
            sims = jnp.where(fast[None, :] == c[:, None], -jnp.inf, sims)
            return own, jnp.max(sims, axis=1)

        sim, fast_max = map_rows(fn, plan(n, rows), feats, bounds.assign)
        bound = jnp.maximum(bounds.upper + rest, fast_max)
    else:
        sim = _assigned_similarity_impl(protos, feats, bounds.assign, rows)
        bound = bounds.upper + jnp.max(drift)
    fail = ~(sim > bound + _margin(feats.dtype))
    count = jnp.sum(fail)

    def everything(_):
        def fn(x):
            sims = matmul(x, protos.T)
            c = _decide(sims, x, protos)
            return c, _runner_up(sims, c, jnp.zeros((b,), sims.dtype))

        assign, upper = map_rows(fn, plan(n, rows), feats)
        return _Bounds(assign, upper, protos), jnp.asarray(n, count.dtype)

    def only_failed(_):
        r = min(512, n)
        idx = jnp.concatenate([jnp.nonzero(fail, size=n, fill_value=n)[0],
                               jnp.full((r,), n, jnp.int32)]).astype(jnp.int32)

        def cond(st):
            return st[0] * r < count

        def body(st):
            i, assign, upper = st
            sel = lax.dynamic_slice_in_dim(idx, i * r, r)
            x = feats[jnp.minimum(sel, n - 1)]
            sims = matmul(x, protos.T)
            c = _decide(sims, x, protos)
            up = _runner_up(sims, c, drift)
            return (i + 1, assign.at[sel].set(c, mode="drop"), upper.at[sel].set(up, mode="drop"))

        _, assign, upper = lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), bounds.assign,
                                                       bounds.upper))
        return _Bounds(assign, upper, bounds.anchor), count

    new, recomputed = lax.cond(count > refresh * n, everything, only_failed, None)
    return new, recomputed


def _pair_assignment(protos, feats, bounds: _PairBounds, step, rows: int, refresh: float,
                     block: int = 512, resort: int = 16, for_grad=None, wide_rows: int = 0):
    """Exact argmax assignment that recomputes only what the per-pair bounds cannot decide.

    Elkan's bounds, on angles (`_PairBounds`): for a pair last computed at step
    t_ik, the angle between f_i and θ̂_k now is at least gap[i, k] − Φ_k(now).
    One pass over the features computes each feature's similarity to θ̂_{c_i},
    one over the [N, B] bounds finds the pairs whose angle may be as small as
    that of the similarity less the margin ("open" pairs); a feature with none
    keeps c_i. The others are taken `block` at a time, ordered by where their
    prototype lies on a nearest-neighbour path through the prototypes
    (`_chain_rank`), so that a block's features compete for few prototypes: one
    [block, U] matmul scores them against the U prototypes open for any of them
    (U <= B / 8, else the whole [block, B]), and each feature takes the best of
    its own and those. A feature whose two best are within round-off of each
    other gets its whole row from the matmul (up to 16 such rows per block
    alone, more by the whole block), as the dense path decides it. When more
    than `refresh` of the features have an open pair (the first step), every row
    is recomputed by the dense matmul. `step` (the optimizer steps taken)
    re-sorts the features every `resort` steps.

    On CPU with float32 features (and the kernels built, `_cpu`), the open
    features are not taken in blocks: `_cpu.refresh_pairs` visits each one and
    scores only its pairs that are open or within `_HORIZON` of opening (dot
    products: ~3% of the N·B pairs a step on standard-normal features, where
    whole rows take ~12%), refreshes those pairs' bounds and decides the feature
    as above; near ties get their whole row from the matmul, and the features
    that changed prototype their `_own_similarity`. A feature with at least
    `wide_rows` (> 0) such pairs goes, on a CPU with a matrix unit (AMX), to
    that unit instead: all B similarities approximated in bfloat16, exact dot
    products for the pairs the decision could depend on, every bound refreshed
    from the approximations (the same decision; the bounds stay sound).

    With `for_grad` = (a, τ) (`_log_diversity`'s a), on CPU the pass that
    computes the own similarities also sums the loss's gradient rows of the
    assignment the step starts from (`_cpu.own_sims_grad`: each feature is read
    once for both); the loss then sums again only the rows whose features changed
    prototype (`_loss_grad_sums`' `spec`).

    Returns (bounds, number of similarities computed, `_own_similarity` of the
    new assignment [N], spec or None).
    """
    n, b = feats.shape[0], protos.shape[0]
    turn = _step_angle(protos, bounds.last)
    travel = bounds.travel + turn                                                # Φ_k(now)
    # Ψ(now) ≥ Ψ + every Φ_k's growth as float arithmetic gives it: the largest turn,
    # plus an ulp of the largest Φ_k (Φ_k's own rounding), rounded up.
    grow = jnp.max(turn) + jnp.max(travel) * jnp.finfo(travel.dtype).eps
    turned = jnp.nextafter(bounds.turned + grow, jnp.asarray(jnp.inf, travel.dtype))
    unread = jnp.full((n,), -jnp.inf, travel.dtype)
    margin = _margin(feats.dtype)
    cols = jnp.arange(b)
    gap_dtype = bounds.gap.dtype

    def angle_lower(sims):
        # A lower bound on the angle of a similarity computed with round-off: the
        # margin covers the round-off, which arccos magnifies by 1 / sin(angle).
        return _acos_lower(sims + margin)

    # A pair is open when the lower bound on its angle reaches the upper bound on the
    # angle of the feature's own similarity less the margin, `limit`. (Two passes: in
    # one, XLA:CPU recomputes the [C] polynomial for each element of the [C, B] compare.)
    use_kernel = gap_dtype == jnp.float16 and _cpu.usable(feats, protos)
    spec = None
    if for_grad is not None and use_kernel:
        a, tau = for_grad

        def fused(feats, protos, assign):
            return _cpu.own_sims_grad(feats, protos, assign, a, tau)

        def apart(feats, protos, assign):   # (other platforms: the loss computes its own)
            s = _own_similarities(feats, protos, assign, rows)
            return s, jnp.zeros_like(s), jnp.zeros_like(protos)

        own, w0, g0 = _cpu.on_cpu(fused, apart, feats, protos, bounds.assign)
        spec = (own, bounds.assign, w0, g0)
    else:
        own = _own_similarities(feats, protos, bounds.assign, rows)
    limit = _acos_upper(own - margin)
    fail, rowmin = _cpu.open_rows(
        bounds.gap, travel, limit, bounds.rowmin, turned,
        lambda gap, t, lim: (map_rows(lambda g, l: _any(g - t[None, :] <= l[:, None], axis=1),
                                      plan(n, rows), gap, lim), unread))

    def whole_rows(x):
        sims = matmul(x, protos.T)
        c = _decide(sims, x, protos)
        return c, _round_down(jnp.where(cols[None, :] == c[:, None], jnp.inf,
                                        angle_lower(sims) + travel[None, :]), gap_dtype)

    def whole_rows_own(x):
        c, gap = whole_rows(x)
        return c, gap, _own_similarity(x, protos, c)

    def by_prototype(assign):
        # Features in the order of their prototype's place on a nearest-neighbour path
        # through the prototypes (`_chain_rank`), so that a block's features compete for
        # few prototypes. One int32 key (rank · N + i < N·B, which `_PAIR_BOUNDS_LIMIT`
        # keeps below 2³¹): a one-operand sort is ~5x faster than sorting (key, index) pairs.
        key = _chain_rank(protos)[assign] * n + jnp.arange(n, dtype=jnp.int32)
        return lax.sort(key) % n

    def everything(_):
        assign, gap, sims = map_rows(whole_rows_own, plan(n, rows), feats)
        return (_PairBounds(assign, gap, travel, protos, by_prototype(assign), unread, turned),
                jnp.asarray(n * b, jnp.float32), sims)

    r = min(block, n)
    width = min(b, max(8, b // 8))   # U: prototypes scored per block before a whole-row fallback
    ties = min(16, r)                # near-tie rows rescored alone (more: the whole block)

    def partial(_):
        order = bounds.order
        pos = jnp.nonzero(fail[order], size=n, fill_value=n)[0]
        todo = jnp.concatenate([jnp.where(pos < n, order[jnp.minimum(pos, n - 1)], n),
                                jnp.full((r,), n, jnp.int32)]).astype(jnp.int32)
        total = jnp.sum(fail)

        def body(st):
            i, assign, gap, work, sims = st
            sel = lax.dynamic_slice_in_dim(todo, i * r, r)
            valid = sel < n
            at = jnp.minimum(sel, n - 1)
            x, g, c, s = feats[at], gap[at], assign[at], own[at]
            open_ = (g - travel[None, :] <= limit[at][:, None]) & valid[:, None]
            used = _any(open_, axis=0)
            num_used = jnp.sum(used)

            def few(_):
                pick = jnp.nonzero(used, size=width, fill_value=b)[0]
                ok = pick < b
                kept = jnp.minimum(pick, b - 1).astype(jnp.int32)
                scores = matmul(x, protos[kept].T)                               # [r, U]
                # The own prototype counts with its similarity from the check pass.
                other = ok[None, :] & (kept[None, :] != c[:, None])
                scores = jnp.where(other, scores, -jnp.inf)
                j = _first_argmax(scores)
                best = jnp.take_along_axis(scores, j[:, None], axis=1)[:, 0]
                second = jnp.max(jnp.where(jnp.arange(width)[None, :] == j[:, None], -jnp.inf,
                                           scores), axis=1)
                win = best > s
                runner = jnp.where(win, jnp.maximum(second, s), best)
                close = valid & (runner > -jnp.inf) & (jnp.maximum(best, s) - runner <= margin)
                new_c = jnp.where(win, kept[j], c)
                # Pairs scored now get exact bounds; the assigned pair holds +inf.
                fresh = _round_down(angle_lower(scores) + travel[kept][None, :], gap_dtype)
                g2 = g.at[:, pick].set(jnp.where(other, fresh, g[:, kept]), mode="drop")
                ar = jnp.arange(r)
                g2 = g2.at[ar, c].set(_round_down(jnp.where(win, angle_lower(s) + travel[c], jnp.inf),
                                                  gap_dtype))
                g2 = g2.at[ar, new_c].set(jnp.inf)
                scored = jnp.sum(valid).astype(jnp.float32) * num_used
                num_close = jnp.sum(close)

                def rescore_ties(_):
                    # Rows whose two best are within round-off take their whole row from
                    # the matmul (as the dense path decides them; a matmul's row does not
                    # depend on the other rows given, for 2 or more rows).
                    at_close = jnp.nonzero(close, size=ties, fill_value=r)[0]
                    cc, gc = whole_rows(x[jnp.minimum(at_close, r - 1)])
                    return (new_c.at[at_close].set(cc, mode="drop"),
                            g2.at[at_close].set(gc, mode="drop"),
                            scored + num_close.astype(jnp.float32) * b)

                branch = jnp.where(num_close == 0, 0, jnp.where(num_close <= ties, 1, 2))
                return lax.switch(branch, [lambda _: (new_c, g2, scored), rescore_ties,
                                           lambda _: whole(None)], None)

            def whole(_):
                return (*whole_rows(x), jnp.sum(valid).astype(jnp.float32) * b)

            new_c, new_g, done = lax.cond(num_used <= width, few, whole, None)
            return (i + 1, assign.at[sel].set(new_c, mode="drop"),
                    gap.at[sel].set(new_g, mode="drop"), work + done,
                    sims.at[sel].set(_own_similarity(x, protos, new_c), mode="drop"))

        _, assign, gap, work, sims = lax.while_loop(
            lambda st: st[0] * r < total, body,
            (jnp.zeros((), jnp.int32), bounds.assign, bounds.gap, jnp.zeros((), jnp.float32),
             own))
        order = lax.cond(step % resort == 0, by_prototype, lambda _: bounds.order, assign)
        return _PairBounds(assign, gap, travel, protos, order, rowmin, turned), work, sims

    def partial_kernel(gap, assign, fail):
        # On CPU: the kernel scores, row by row, each failing row's pairs that are open
        # or within `_HORIZON` of opening (dot products; the other pairs' bounds stay),
        # decides the row unless its two best are within the margin, and refreshes the
        # scored pairs' bounds in place. Near ties take their whole row from the matmul
        # (as the dense path decides them), and the rows that changed prototype get
        # their `_own_similarity`, in blocks as above.
        gap, assign, touched, tied, counts, work = _cpu.refresh_pairs(
            feats, protos, gap, travel, limit, own, assign, fail, horizon=_HORIZON,
            margin=margin, acos_err=_ACOS_ERR, pad=r, amx_min=wide_rows)

        def tie_block(st):
            i, assign, gap = st
            sel = lax.dynamic_slice_in_dim(tied, i * ties, ties)
            c, g = whole_rows(feats[jnp.minimum(sel, n - 1)])
            return i + 1, assign.at[sel].set(c, mode="drop"), gap.at[sel].set(g, mode="drop")

        _, assign, gap = lax.while_loop(lambda st: st[0] * ties < counts[1], tie_block,
                                        (jnp.zeros((), jnp.int32), assign, gap))

        def sim_block(st):
            i, sims = st
            sel = lax.dynamic_slice_in_dim(touched, i * r, r)
            at = jnp.minimum(sel, n - 1)
            return i + 1, sims.at[sel].set(_own_similarity(feats[at], protos, assign[at]),
                                           mode="drop")

        _, sims = lax.while_loop(lambda st: st[0] * r < counts[0], sim_block,
                                 (jnp.zeros((), jnp.int32), own))
        # (`order` is only read by the blocks above: kept as it is.)
        return (_PairBounds(assign, gap, travel, protos, bounds.order, rowmin, turned),
                work + counts[1].astype(jnp.float32) * b, sims)

    def partial_cpu(_):
        return _cpu.on_cpu(partial_kernel, lambda *_: partial(None), bounds.gap, bounds.assign,
                           fail)

    out = lax.cond(jnp.sum(fail) > refresh * n, everything,
                   partial_cpu if use_kernel else partial, None)
    return (*out, spec)


# ----------------------------------------------------------------------------- the fit


def _initial_indices(feats, key, init_indices, cfg: _Config, shards: Shards):
    if cfg.init == "given":
        return init_indices.astype(jnp.int32)
    if cfg.init == "random":
        return jax.random.choice(key, shards.n, (cfg.k,), replace=False).astype(jnp.int32)
    # Farthest-point sampling (the official `--init fps`): k-center greedy in
    # Euclidean distance on the unit-norm features, random first point.
    return run_local(MaxDistRule(normalize=False), RuleInputs(feats, kernel=Linear(), key=key),
                     cfg.k, False, shards).indices


def _optimizer(cfg: _Config, hyper: _Hyper) -> optax.GradientTransformation:
    return cfg.optimizer if cfg.optimizer is not None else optax.adam(hyper.learning_rate)


def _init_state(feats, key, init_indices, hyper, cfg: _Config,
                shards: Optional[Shards] = None) -> ActiveFTState:
    shards = Shards(PLAIN, feats.shape[0]) if shards is None else shards
    idx = _initial_indices(feats, key, init_indices, cfg, shards)
    params = shards.rows(feats, idx)
    n, b = feats.shape[0], cfg.k
    bounds = None  # +inf bounds: the first step recomputes everything
    if cfg.prune == "rows":
        bounds = _Bounds(jnp.zeros((n,), jnp.int32), jnp.full((n,), jnp.inf, feats.dtype),
                         l2_normalize(params))
    elif cfg.prune == "pairs":
        bounds = _PairBounds(jnp.zeros((n,), jnp.int32),
                             jnp.full((n, b), -jnp.inf, _gap_dtype(feats.dtype)),
                             jnp.zeros((b,), feats.dtype), l2_normalize(params),
                             jnp.arange(n, dtype=jnp.int32), jnp.full((n,), -jnp.inf, feats.dtype),
                             jnp.zeros((), feats.dtype))
    opt_state = _optimizer(cfg, hyper).init(params)
    curve = jnp.zeros((cfg.steps,), feats.dtype)
    return ActiveFTState(params, opt_state, bounds, jnp.zeros((), jnp.int32), idx, curve, curve)


def _run_steps(state: ActiveFTState, feats, key, hyper: _Hyper, cfg: _Config,
               num_steps: int, shards: Optional[Shards] = None) -> ActiveFTState:
    shards = Shards(PLAIN, feats.shape[0]) if shards is None else shards
    opt = _optimizer(cfg, hyper)
    batch_key = jax.random.fold_in(key, 1)
    # On a split pool every device holds its block of the features: the loss and
    # its gradient are sums over the blocks. (In the batch mode every device
    # computes the whole batch, whose rows it receives.)
    split = shards.sharded and cfg.batch_size is None

    def step(carry: ActiveFTState, _):
        x = feats
        if cfg.batch_size is not None:  # the official ImageNet mode: a fresh batch each step
            pick = jax.random.choice(jax.random.fold_in(batch_key, carry.step), shards.n,
                                     (cfg.batch_size,), replace=False)
            x = shards.rows(feats, pick)
        normalized = jax.vjp(l2_normalize, carry.params)
        protos = lax.stop_gradient(normalized[0])
        diversity = _diversity(protos, hyper.temperature, hyper.balance)
        bounds = carry.bounds
        n, b = x.shape[0], cfg.k
        sims = spec = None
        if cfg.prune == "pairs":
            bounds, work, sims, spec = _pair_assignment(
                protos, x, bounds, carry.step, cfg.chunk_rows, cfg.refresh,
                for_grad=(diversity[0], hyper.temperature), wide_rows=cfg.wide_rows)
        elif cfg.prune == "rows":
            bounds, count = _pruned_assignment(protos, x, bounds, cfg.chunk_rows, cfg.refresh,
                                               cfg.num_fast)
            count = count.astype(jnp.float32)
            work = count * b + (n - count) * min(cfg.num_fast, b - 1)
        if cfg.prune == "off":
            assign, sims = _dense_assignment(protos, x, cfg.chunk_rows, with_sims=True)
            frac = jnp.ones((), feats.dtype)
        else:
            assign = bounds.assign
            total = shards.psum(work) if split else work
            frac = (total / (float(shards.n if split else n) * b)).astype(feats.dtype)
        loss, grad = _loss_and_grad(normalized, x, assign, hyper.temperature, hyper.balance,
                                    cfg.chunk_rows, shards if split else None, sims,
                                    diversity, spec)
        updates, opt_state = opt.update(grad, carry.opt_state, carry.params)
        params = optax.apply_updates(carry.params, updates)
        new = ActiveFTState(params, opt_state, bounds, carry.step + 1, carry.init_indices,
                            carry.losses, carry.recomputed)
        return new, (loss, frac)

    start = state.step
    state, (losses, fracs) = lax.scan(step, state, length=num_steps)
    # Record the curve at the steps' positions; steps past the planned number are not recorded.
    at = start + jnp.arange(num_steps, dtype=jnp.int32)
    return state._replace(losses=state.losses.at[at].set(losses, mode="drop"),
                          recomputed=state.recomputed.at[at].set(fracs, mode="drop"))


def _finish(state: ActiveFTState, feats, excluded=None,
            shards: Optional[Shards] = None) -> ActiveFTFit:
    protos = l2_normalize(state.params)
    sel = nearest_unique(protos, feats, excluded=excluded, shards=shards)
    return ActiveFTFit(sel, protos, state.losses, state.init_indices, state.recomputed)


#: The parts of an `ActiveFTState` that stay split over the devices (the per-feature bounds).
_STATE_SPECS = ActiveFTState(params=None, opt_state=None, bounds=None, step=None,
                             init_indices=None, losses=None, recomputed=None)
_BOUND_SPECS = {"off": None, "rows": _Bounds(assign="pool", upper="pool", anchor=None),
                "pairs": _PairBounds(assign="pool", gap="pool", travel=None, last=None,
                                     order="pool", rowmin="pool", turned=None)}


def _state_specs(cfg: _Config):
    return _STATE_SPECS._replace(bounds=_BOUND_SPECS[cfg.prune])


@functools.partial(jax.jit, static_argnames=("cfg", "layout"))
def _solver_init(feats, key, init_indices, hyper, *, cfg, layout):
    def local(feats, key, init_indices, hyper):
        return _init_state(feats, key, init_indices, hyper, cfg, Shards(layout, feats.shape[0]))

    return on_shards(layout, local, ("pool", None, None, None), feats, key, init_indices, hyper,
                     out_specs=_state_specs(cfg))


def _one_at_a_time(fn):
    """`fn`, whose `jax.vmap` runs the batch one element after another (`lax.map`).

    Vmap turns data-dependent branches (`lax.cond`, `lax.while_loop`) into work on
    both sides for every element: a vmapped pruned step would compute the dense
    assignment as well. With this, a vmap of ActiveFT over keys or temperatures
    (or of anything else) keeps each fit's branches real. `fn` must take every array
    it uses as an argument: a custom_vmap function cannot close over traced values.
    """
    f = jax.custom_batching.custom_vmap(fn)

    @f.def_vmap
    def rule(axis_size, in_batched, *args):
        del axis_size
        leaves, tree = jax.tree_util.tree_flatten(args)
        flags = jax.tree_util.tree_leaves(list(in_batched))
        assert len(flags) == len(leaves), (len(flags), len(leaves))

        def one(batched):
            it = iter(batched)
            return f(*jax.tree_util.tree_unflatten(tree, [next(it) if b else x
                                                         for x, b in zip(leaves, flags)]))

        out = lax.map(one, [x for x, b in zip(leaves, flags) if b])
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return f


@functools.partial(jax.jit, static_argnames=("cfg", "num_steps", "layout"),
                   donate_argnames=("state",))
def _solver_step(state, feats, key, hyper, *, cfg, num_steps, layout):
    def local(state, feats, key, hyper):
        return _run_steps(state, feats, key, hyper, cfg, num_steps,
                          Shards(layout, feats.shape[0]))

    specs = _state_specs(cfg)

    def steps(state, feats, key, hyper):
        return on_shards(layout, local, (specs, "pool", None, None), state, feats, key, hyper,
                         out_specs=specs)

    # Pruned steps are data-dependent branches: under vmap, one fit after another.
    return (steps if cfg.prune == "off" else _one_at_a_time(steps))(state, feats, key, hyper)


@functools.partial(jax.jit, static_argnames=("cfg", "layout"))
def _solver_finish(state, feats, masks, *, cfg, layout):
    def local(state, feats, masks):
        excluded = None
        if masks[0] is not None or masks[1] is not None:
            excluded = ~available_mask(feats.shape[0], *masks)
        return _finish(state, feats, excluded, Shards(layout, feats.shape[0]))

    def match(state, feats, masks):
        return on_shards(layout, local, (_state_specs(cfg), "pool", ("pool", "pool")), state,
                         feats, masks)

    # The matching has a data-dependent fallback: under vmap, one fit after another.
    return _one_at_a_time(match)(state, feats, masks)


@functools.partial(jax.jit, static_argnames=("chunk_rows",))
def _assign(prototypes, features, *, chunk_rows):
    return _dense_assignment(l2_normalize(prototypes), l2_normalize(features), chunk_rows)


def assign_to_prototypes(prototypes: Any, features: Any, *,
                         chunk_rows: Optional[int] = None) -> jax.Array:
    """The most similar prototype of every feature, argmax_k f̂_iᵀθ̂_k: [N] int32.

    Both sides are L2-normalized; the [N, B] similarities are computed in row
    chunks (never all at once). This is the O(N·B·d) work of one dense ActiveFT step.
    With float32 input, a feature whose two best prototypes are within round-off of
    each other (2⁻¹⁵ in similarity) is decided on exact similarities of the
    normalized float32 vectors (to ~1e-10), not on the matmul's rounding.

    Args:
      prototypes: [B, d] prototypes (e.g. `ActiveFTFit.prototypes`).
      features: [N, d] features.
      chunk_rows: feature rows per [rows, B] block (static).
    """
    protos, feats = _prototypes_and_features(prototypes, features, "prototypes")
    # (Blocks of ~512K similarities, as in the fits: on CPU the block's reductions then
    # run from cache.)
    rows = int(chunk_rows) if chunk_rows else default_chunk_rows(feats.shape[0], protos.shape[0],
                                                                  budget=1 << 19)
    return _assign(protos, feats, chunk_rows=rows)


class ActiveFTSolver(NamedTuple):
    """An ActiveFT fit as an optax-style triple of pure functions (see `activeft_solver`).

    Attributes:
      init: () -> `ActiveFTState`, the prototypes at their initial features.
      step: (state, num_steps=1) -> state after `num_steps` more optimizer
        steps (jitted; `num_steps` is static; the input state is donated).
      finish: state -> `ActiveFTFit`: each prototype, in order, takes its most
        similar feature not taken yet.
      steps: the planned number of steps (the length of the loss curve).
    """

    init: Callable[[], ActiveFTState]
    step: Callable[..., ActiveFTState]
    finish: Callable[[ActiveFTState], "ActiveFTFit"]
    steps: int


# ----------------------------------------------------------------------------- validation


#: Pair bounds hold N·B floats per device; past this many, one bound per feature instead.
_PAIR_BOUNDS_LIMIT = 1 << 27


def _platform(features) -> str:
    devices = getattr(features, "devices", None)
    if callable(devices) and not is_traced(features):
        try:
            return next(iter(devices())).platform
        except Exception:  # noqa: BLE001
            pass
    return jax.default_backend()


def _choose_pruning(prune, bounds, batch_size, n_local, k, platform) -> str:
    """"off", "rows" or "pairs" from the user's `prune` / `bounds` (see `fit_activeft`)."""
    if bounds not in ("auto", "pairs", "rows"):
        raise ValueError(f"`bounds` must be 'auto', 'pairs' or 'rows'; got {bounds!r}.")
    if prune is None:  # auto: on CPU with every feature every step; the matmul is cheap elsewhere
        prune = batch_size is None and platform == "cpu"
    if not prune:
        return "off"
    if bounds == "auto":
        return "pairs" if n_local * k <= _PAIR_BOUNDS_LIMIT else "rows"
    return bounds


def _prepare(features, *, k, key, init_indices, init, temperature, steps, learning_rate, balance,
             batch_size, chunk_rows, prune, refresh, num_fast, optimizer, bounds="auto"):
    feats = as_float_matrix(features, "features")
    n, d = feats.shape
    k = check_k(k, n, name="features")
    check_finite(feats, "features")
    check_magnitude(feats, "features")
    check_positive(temperature, "temperature")
    check_positive(learning_rate, "learning_rate")
    check_positive(balance, "balance")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"`steps` must be a Python int >= 0 (static); got {steps!r}.")
    if init not in ("random", "fps"):
        raise ValueError(f"`init` must be 'random' or 'fps'; got {init!r}.")
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or not 1 <= batch_size <= n:
            raise ValueError(
                f"`batch_size` must be an int in [1, N={n}] (features per step) or None; got {batch_size!r}."
            )
        batch_size = int(batch_size)
        if prune:
            raise ValueError("`prune=True` needs the same features every step; it cannot be "
                             "combined with `batch_size`.")
    if prune is not None and not isinstance(prune, (bool, np.bool_)):
        raise ValueError(f"`prune` must be True, False or None; got {prune!r}.")
    layout = layout_of(features) if hasattr(features, "shape") else PLAIN
    mode = _choose_pruning(prune, bounds, batch_size, n // layout.num_shards, k,
                           _platform(features))
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer))
                                   or chunk_rows < 1):
        raise ValueError(f"`chunk_rows` must be a positive int or None; got {chunk_rows!r}.")
    if refresh is None:  # measured on CPU (pairs: blocks beat the dense matmul unless all fail)
        refresh = 0.99 if mode == "pairs" else 0.3
    if not 0.0 <= float(refresh) <= 1.0:
        raise ValueError(f"`refresh` must be in [0, 1] or None; got {refresh!r}.")
    if isinstance(num_fast, bool) or not isinstance(num_fast, (int, np.integer)) or num_fast < 0:
        raise ValueError(f"`num_fast` must be an int >= 0; got {num_fast!r}.")
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(f"`optimizer` must be an optax.GradientTransformation; got {type(optimizer).__name__}.")

    if init_indices is not None:
        init_indices = _check_init_indices(init_indices, k, n)
        init_mode = "given"
        if key is None:
            key = jax.random.key(0)  # only draws the batches, if any
            if batch_size is not None:
                key = check_key(None, "activeft with batch_size")
    else:
        key = check_key(key, "activeft")
        init_mode = init
        init_indices = jnp.zeros((k,), jnp.int32)

    # The official code L2-normalizes the features before anything else.
    feats = l2_normalize(feats)
    # Blocks of ~512K similarities: the passes over features and bounds stay in cache
    # (4x fewer rows than elsewhere; the matmul runs as fast at this size).
    rows = int(chunk_rows) if chunk_rows else default_chunk_rows(
        n if batch_size is None else batch_size, k, budget=1 << 19)
    cfg = _Config(k=k, steps=int(steps), init=init_mode, batch_size=batch_size, chunk_rows=rows,
                  prune=mode, refresh=float(refresh), num_fast=int(num_fast),
                  wide_rows=_cpu.wide_rows(k), optimizer=optimizer)
    dtype = feats.dtype
    hyper = _Hyper(jnp.asarray(temperature, dtype), jnp.asarray(balance, dtype),
                   jnp.asarray(learning_rate, dtype))
    return feats, key, init_indices, hyper, cfg


def _check_init_indices(init_indices, k, n):
    if is_traced(init_indices):
        if tuple(init_indices.shape) != (k,):
            raise ValueError(f"`init_indices` must have shape [{k}] (one per prototype); got {init_indices.shape}.")
        return init_indices
    arr = np.asarray(init_indices)
    if arr.shape != (k,):
        raise ValueError(f"`init_indices` must have shape [{k}] (one per prototype); got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"`init_indices` must hold integers; got dtype {arr.dtype}.")
    if arr.min() < 0 or arr.max() >= n:
        raise ValueError(f"`init_indices` must lie in [0, N={n}); got values from {arr.min()} to {arr.max()}.")
    if len(np.unique(arr)) != k:
        raise ValueError("`init_indices` must be distinct (each prototype starts at its own feature).")
    return jnp.asarray(arr, jnp.int32)


# ----------------------------------------------------------------------------- public API


def activeft_solver(features: Any, *, k: int, key: Any = None, init_indices: Any = None,
                    init: str = "random", temperature: Any = 0.07, steps: int = 300,
                    learning_rate: Any = 1e-3, balance: Any = 1.0,
                    optimizer: Optional[optax.GradientTransformation] = None,
                    batch_size: Optional[int] = None, chunk_rows: Optional[int] = None,
                    prune: Optional[bool] = None, bounds: str = "auto", refresh: Optional[float] = None,
                    num_fast: int = 32, observed: Any = None,
                    candidates: Any = None) -> ActiveFTSolver:
    """ActiveFT as `(init, step, finish)`: drive the fit yourself, a step at a time.

        solver = activeft_solver(feats, k=100, key=key)
        state = solver.init()
        for _ in range(solver.steps):
            state = solver.step(state)          # or solver.step(state, 10)
        fit = solver.finish(state)              # == fit_activeft(feats, k=100, key=key)

    The arguments are validated here, once, exactly as `fit_activeft` does;
    see it for their meaning. On a pool split over devices the state's
    per-feature bounds stay split between calls.
    """
    feats, key, init_indices, hyper, cfg = _prepare(
        features, k=k, key=key, init_indices=init_indices, init=init, temperature=temperature,
        steps=steps, learning_rate=learning_rate, balance=balance, batch_size=batch_size,
        chunk_rows=chunk_rows, prune=prune, refresh=refresh, num_fast=num_fast,
        optimizer=optimizer, bounds=bounds)
    n = feats.shape[0]
    observed = check_observed(observed, n)
    candidates = check_candidates(candidates, n)
    check_available(cfg.k, n, observed, candidates)
    masks = (None if observed is None else as_mask(observed, features if hasattr(features, "sharding") else feats), candidates)
    layout = layout_of(features) if hasattr(features, "shape") else layout_of(feats)

    def init_fn() -> ActiveFTState:
        return _solver_init(feats, key, init_indices, hyper, cfg=cfg, layout=layout)

    def step_fn(state: ActiveFTState, num_steps: int = 1) -> ActiveFTState:
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) \
                or num_steps < 1:
            raise ValueError(f"`num_steps` must be a Python int >= 1 (static); got {num_steps!r}.")
        return _solver_step(state, feats, key, hyper, cfg=cfg, num_steps=int(num_steps),
                            layout=layout)

    def finish_fn(state: ActiveFTState) -> ActiveFTFit:
        return _solver_finish(state, feats, masks, cfg=cfg, layout=layout)

    return ActiveFTSolver(init_fn, step_fn, finish_fn, cfg.steps)


def fit_activeft(features: Any, *, k: int, key: Any = None, init_indices: Any = None,
                 init: str = "random", temperature: Any = 0.07, steps: int = 300,
                 learning_rate: Any = 1e-3, balance: Any = 1.0,
                 optimizer: Optional[optax.GradientTransformation] = None,
                 batch_size: Optional[int] = None, chunk_rows: Optional[int] = None,
                 prune: Optional[bool] = None, bounds: str = "auto", refresh: Optional[float] = None,
                 num_fast: int = 32, progress: bool = False, observed: Any = None,
                 candidates: Any = None) -> ActiveFTFit:
    """Fits B = k ActiveFT prototypes and matches each to a distinct pool feature.

    Args:
      features: [N, d] pool features (L2-normalized inside, as the official code does).
      k: B, the budget (static).
      key: PRNG key for the random (or farthest-point) init and the per-step
        batches; traced, so `jax.vmap` sweeps seeds. Needed unless `init_indices`.
      init_indices: optional [B] distinct pool indices to start the prototypes
        from (to reproduce a run of the official code).
      init: 'random' (B random features, the default) or 'fps' (farthest-point).
      temperature: τ > 0 (traced).
      steps: optimizer steps (static); 300 in the official CIFAR script.
      learning_rate: Adam's learning rate (traced) when `optimizer` is None.
      balance: weight of the diversity term (1.0 in the official code; traced).
      optimizer: any optax `GradientTransformation` (static) instead of Adam.
      batch_size: features drawn at random per step (the official ImageNet
        mode: 100 000 features, 100 steps); None uses every feature every step.
      chunk_rows: rows of the [rows, B] similarity block computed at once (static).
      prune: exact pruned assignment (module docstring): the same picks and
        losses with a fraction of the work. None (default): on when the
        features live on a CPU and `batch_size` is None; off on GPU and TPU,
        where the dense matmul is cheap and the pruned path's gathers and
        branches are not. Under `jax.vmap` pruned fits run one after another
        (`lax.map`), each keeping its branches (vmap would run both sides of
        them, the dense assignment included); pass False to vmap dense fits.
      bounds: with `prune`, 'pairs' (one bound per feature and prototype, N·B
        floats per device: the least work), 'rows' (one bound per feature) or
        'auto' (default): 'pairs' while N·B <= 2^27 per device, else 'rows'.
      refresh: with `prune`, recompute every assignment when more than this
        fraction of the features fails its bound (None: 0.99 with pair
        bounds, 0.3 with row bounds).
      num_fast: with `bounds='rows'`, how many of the prototypes that moved
        most are scored exactly every step instead of bounded.
      progress: progress bar on stderr (outside jit/vmap only).
      observed: labelled points ([n] indices or a [N] bool mask): they shape
        the prototypes like every feature but are never matched (picked).
      candidates: [N] bool mask of the points that may be matched.

    Features may be split over devices along N: each device assigns its block
    (pruning included) and only the [B, d] gradient sums cross devices.

    Returns:
      `ActiveFTFit`: the selection, the final prototypes, the loss curve, the
      initial indices and the per-step recomputed fraction.

    Raises:
      ValueError: bad shapes, B outside [1, N], NaN/inf features, τ, learning
        rate or balance <= 0, bad init indices, or a missing key.
    """
    solver = activeft_solver(
        features, k=k, key=key, init_indices=init_indices, init=init, temperature=temperature,
        steps=steps, learning_rate=learning_rate, balance=balance, optimizer=optimizer,
        batch_size=batch_size, chunk_rows=chunk_rows, prune=prune, bounds=bounds,
        refresh=refresh, num_fast=num_fast, observed=observed, candidates=candidates)
    state = solver.init()
    traced = any(is_traced(x) for x in jax.tree_util.tree_leaves((features, key, temperature,
                                                                  learning_rate, balance)))
    if not progress or traced or solver.steps == 0:
        if solver.steps:
            state = solver.step(state, solver.steps)
        return solver.finish(state)
    from tqdm.auto import tqdm

    chunk = max(1, math.ceil(solver.steps / 50))
    with tqdm(total=solver.steps, desc="activeft", unit="step", file=sys.stderr,
              leave=False) as bar:
        done = 0
        while done < solver.steps:
            n = min(chunk, solver.steps - done)
            state = solver.step(state, n)
            done += n
            bar.set_postfix(loss=f"{float(state.losses[done - 1]):.4f}")
            bar.update(n)
    return solver.finish(state)


def activeft(features: Any, *, k: int, key: Any = None, init_indices: Any = None,
             temperature: Any = 0.07, steps: int = 300, learning_rate: Any = 1e-3,
             observed: Any = None, candidates: Any = None, **options: Any) -> Selection:
    """ActiveFT selection: B = k distinct pool indices in prototype order (see `fit_activeft`).

    `values` are the cosine similarities of each pick to its prototype. The
    official script saves the indices sorted; sort them to compare.
    """
    return fit_activeft(features, k=k, key=key, init_indices=init_indices, temperature=temperature,
                        steps=steps, learning_rate=learning_rate, observed=observed,
                        candidates=candidates, **options).selection


@functools.partial(jax.jit, static_argnames=("cfg", "layout"))
def _sweep(feats, keys, init_indices, temperatures, hyper, *, cfg: _Config, layout):
    def local(feats, keys, init_indices, temperatures, hyper):
        # (Arrays, `Shards` included, made inside or passed as arguments: a function given
        # to `_one_at_a_time` cannot close over traced values.)
        def fit_one(temperature, key, feats, init_indices, hyper):
            shards = Shards(layout, feats.shape[0])
            h = hyper._replace(temperature=temperature)
            state = _run_steps(_init_state(feats, key, init_indices, h, cfg, shards), feats, key,
                               h, cfg, cfg.steps, shards)
            return state.params, state.init_indices, state.losses, state.recomputed

        # Pruned fits run one after another (`_one_at_a_time`): vmap would run both sides
        # of their branches, the dense assignment every step.
        fit = fit_one if cfg.prune == "off" else _one_at_a_time(fit_one)
        shared = (None, None, None)
        params, idx, losses, recomputed = jax.vmap(
            jax.vmap(fit, in_axes=(None, 0, *shared)), in_axes=(0, None, *shared))(
                temperatures, keys, feats, init_indices, hyper)
        # The de-duplication is sequential with a data-dependent fallback: one fit at a
        # time as well.
        protos = l2_normalize(params)
        match = _one_at_a_time(
            lambda p, feats: nearest_unique(p, feats, shards=Shards(layout, feats.shape[0])))
        sel = jax.vmap(jax.vmap(match, in_axes=(0, None)), in_axes=(0, None))(protos, feats)
        return ActiveFTFit(sel, protos, losses, idx, recomputed)

    return on_shards(layout, local, ("pool", None, None, None, None), feats, keys, init_indices,
                     temperatures, hyper)


def activeft_sweep(features: Any, *, k: int, temperatures: Any, keys: Any, steps: int = 300,
                   learning_rate: Any = 1e-3, init: str = "random", balance: Any = 1.0,
                   optimizer: Optional[optax.GradientTransformation] = None,
                   batch_size: Optional[int] = None, chunk_rows: Optional[int] = None,
                   prune: Optional[bool] = None, bounds: str = "auto",
                   refresh: Optional[float] = None, num_fast: int = 32) -> ActiveFTFit:
    """ActiveFT for every (temperature, key) pair in one compiled call.

    Without pruning the T·S fits are vmapped: each step assigns the features of
    every fit in one batched matmul, which suits GPUs and TPUs. With pruning
    (the default on CPU, as in `fit_activeft`) they run one after another
    (`lax.map`), since vmap would evaluate both sides of the pruned path's
    branches, i.e. the dense assignment every step. On a 2-core CPU, 4 x 2 fits
    at N = 20 000, B = 400 took 4-8x less time than vmapped dense ones
    (`experiments/benchmarks/sweep_activeft.py`). Pruned, each fit runs the
    program of `fit_activeft` with the same settings and key (the same bits
    with XLA's default code generation); the vmapped dense program rounds some
    sums differently (an ulp of the loss), which on clustered features can
    move a pick or two.

    Args:
      features: [N, d] pool features.
      k: B, the budget (static).
      temperatures: [T] temperatures.
      keys: [S] PRNG keys (e.g. `jax.random.split(key, S)`); each gives its own
        random init (and batches).
      steps, learning_rate, init, balance, optimizer, batch_size, chunk_rows,
        prune, bounds, refresh, num_fast: as in `fit_activeft` (`prune=None`:
        pruned fits, one after another, when the features live on a CPU and
        `batch_size` is None; vmapped dense fits otherwise).

    Returns:
      `ActiveFTFit` whose fields have leading axes [T, S]: selection.indices
      [T, S, B], losses [T, S, steps], and so on.
    """
    temps = temperatures if is_traced(temperatures) else np.asarray(temperatures)
    if temps.ndim != 1 or temps.shape[0] < 1:
        raise ValueError(f"`temperatures` must have shape [T] with T >= 1; got shape {temps.shape}.")
    if not is_traced(temps) and not (np.all(np.isfinite(temps)) and np.all(temps > 0)):
        raise ValueError(f"`temperatures` must all be finite and > 0; got {temps.tolist()}.")
    if keys is None or jnp.ndim(keys) < 1:
        raise ValueError("`keys` must be a batch of PRNG keys, e.g. jax.random.split(key, 4).")
    # Everything but the temperatures is checked as for a single fit (keys[0] stands in).
    feats, _, init_indices, hyper, cfg = _prepare(
        features, k=k, key=keys[0], init_indices=None, init=init, temperature=1.0, steps=steps,
        learning_rate=learning_rate, balance=balance, batch_size=batch_size,
        chunk_rows=chunk_rows, prune=prune, refresh=refresh, num_fast=num_fast,
        optimizer=optimizer, bounds=bounds)
    return _sweep(feats, keys, init_indices, jnp.asarray(temps, feats.dtype), hyper, cfg=cfg,
                  layout=layout_of(features) if hasattr(features, "shape") else PLAIN)
