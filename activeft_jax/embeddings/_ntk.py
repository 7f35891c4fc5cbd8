r"""Empirical-NTK embeddings: per-example Jacobians of the outputs, exact or projected.

For a model ``apply_fn(params, x)`` with O outputs per example and a chosen
parameter subset θ of size P, let J(x) = ∂f(x)/∂θ ∈ R^{O×P}. The empirical
NTK (traced over outputs) is

.. math::  \Theta(x, x') = \sum_{o=1}^{O} J_o(x) J_o(x')^\top
                         = \langle \mathrm{vec}\, J(x), \mathrm{vec}\, J(x') \rangle ,

so φ(x) = vec J(x) is an exact feature map of Θ, and φ(x) = J(x) R / sqrt(D)
with a Gaussian R ∈ R^{P×D} an unbiased random projection of it
(E_R ⟨φ(x), φ(x')⟩ = Θ(x, x')).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from activeft_jax.embeddings._batching import (
    check_inputs,
    check_int,
    check_key,
    map_batches,
    probe,
)
from activeft_jax.embeddings._params import Wrt, ParamSelection, ravel_leaves, select_params

__all__ = ["ntk", "projection_tangent"]


def projection_tangent(key: Any, direction: Any, leaves: Sequence[Any]) -> list:
    """Column `direction` of the projection matrix R, split like `leaves`.

    Column d of R is ``jax.random.normal(jax.random.fold_in(key, d), (P,),
    dtype)`` with P the total size of `leaves` and `dtype` their common float
    dtype; its first entries fill the first leaf (row-major), and so on. Each
    direction is drawn on its own, so R is never held as one P×D matrix.

    Args:
      key: the PRNG key given to `ntk`.
      direction: d in [0, D) (int or traced int).
      leaves: the selected parameter leaves (only shapes / dtypes are used).

    Returns:
      A list of arrays shaped like `leaves`.
    """
    dtype = jnp.result_type(*leaves)
    sizes = [math.prod(jnp.shape(leaf)) for leaf in leaves]
    column = jax.random.normal(jax.random.fold_in(key, direction), (sum(sizes),), dtype)
    pieces = jnp.split(column, list(itertools.accumulate(sizes))[:-1])
    return [
        jnp.reshape(piece, jnp.shape(leaf)).astype(jnp.result_type(leaf))
        for piece, leaf in zip(pieces, leaves)
    ]


def _unsqueeze(tree):
    return jax.tree_util.tree_map(lambda a: a[None], tree)


def _ntk_exact_batch(static, params, xb):
    apply_fn, sel, out_size, flatten = static
    leaves = sel.take(params)

    def one(xe):
        def f(selected):
            return jnp.reshape(apply_fn(sel.merge(params, selected), _unsqueeze(xe)), (-1,))

        out, vjp_fn = jax.vjp(f, leaves)
        (rows,) = jax.vmap(vjp_fn)(jnp.eye(out_size, dtype=out.dtype))  # leaves [O, *shape]
        jac = ravel_leaves(rows, lead=1)  # [O, P]
        return jnp.reshape(jac, (-1,)) if flatten else jac

    return jax.vmap(one)(xb)


def _ntk_projected_batch(static, dyn, xb):
    apply_fn, sel, out_size, dim, chunk, flatten = static
    params, key = dyn
    leaves = sel.take(params)
    b = jax.tree_util.tree_leaves(xb)[0].shape[0]

    def f(selected):
        return jnp.reshape(apply_fn(sel.merge(params, selected), xb), (b, out_size))

    _, f_jvp = jax.linearize(f, leaves)  # one forward pass; D Jacobian-vector products

    def column(d):
        return f_jvp(projection_tangent(key, d, leaves))  # [B, O] = J(x) r_d

    cols = lax.map(column, jnp.arange(dim), batch_size=chunk)  # [D, B, O]
    phi = jnp.transpose(cols, (1, 2, 0)) / jnp.sqrt(jnp.asarray(dim, cols.dtype))  # [B, O, D]
    return jnp.reshape(phi, (b, -1)) if flatten else phi


def ntk(
    apply_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    x: Any,
    *,
    wrt: Wrt = None,
    projection_dim: Optional[int] = None,
    key: Optional[Any] = None,
    flatten: bool = True,
    input_shape: Optional[Sequence[int]] = None,
    batch_size: int = 32,
    direction_batch_size: int = 8,
    progress: bool = False,
) -> jax.Array:
    r"""Empirical-NTK embeddings: rows of the per-example Jacobian, or a projection.

    With O outputs per example (``apply_fn``'s output for one example,
    flattened) and P selected parameters:

    * exact (``projection_dim=None``): φ(x) = J(x) ∈ R^{O×P}, computed per
      example with ``jax.vjp`` vmapped over the O standard basis
      cotangents. Returns [n, O·P] (row-major: output o's Jacobian row is
      columns ``o*P:(o+1)*P``), or [n, O, P] with ``flatten=False``. Memory
      per batch is ``batch_size · O · P`` numbers.
    * projected (``projection_dim=D``): φ(x) = J(x) R / sqrt(D) ∈ R^{O×D}
      with R ∈ R^{P×D} i.i.d. N(0, 1), computed by ``jax.linearize`` and D
      Jacobian-vector products (``direction_batch_size`` at a time); neither
      J nor R is ever materialized. Column d of R is
      ``jax.random.normal(jax.random.fold_in(key, d), (P,), dtype)``, laid
      out over the selected leaves in `param_paths` order, each row-major
      (see `projection_tangent`), so the same key gives the same R for every
      batch, call and input. Returns [n, O·D] (output-major)
      or [n, O, D].

    Inner products: ⟨φ(x), φ(x')⟩ of the flattened embeddings is the
    empirical NTK traced over outputs, Θ(x, x') = Σ_o J_o(x)·J_o(x')
    (exactly, or in expectation over R with relative error ~ sqrt(2/D));
    with ``flatten=False``, φ(x)[o]·φ(x')[o'] is the per-output NTK
    Θ_{oo'}(x, x').

    Args:
      apply_fn: ``apply_fn(params, x_b) -> [b, *out]`` (e.g. a linen
        ``module.apply``; ``nnx_apply(model)[0]`` for NNX). Examples must be
        independent (no batch statistics).
      params: the pytree `apply_fn` takes.
      x: [n, *example_shape] examples (or a pytree of arrays sharing n).
      wrt: which parameters (see `select_params`): None for everything under
        ``"params"`` (or every float leaf), path prefixes like
        ``["Dense_2"]``, or a predicate on the "/"-joined path.
      projection_dim: D for the random projection; None for the exact Jacobian.
      key: PRNG key for R; required with `projection_dim`.
      flatten: return 2-D [n, features] (the GP code's layout) or keep the
        output axis.
      input_shape: if given, the expected example shape (checked up front).
      batch_size: examples per compiled batch.
      direction_batch_size: projection directions vmapped together (memory
        grows with it; ``lax.map`` runs the chunks in sequence).
      progress: show a tqdm progress bar on stderr.

    Returns:
      The embeddings as described above, in the dtype of the outputs.

    Raises:
      ValueError: unknown `wrt` paths (listing the available ones), wrong or
        empty `x`, bad `projection_dim` / `key` / batch sizes.
    """
    if not callable(apply_fn):
        raise ValueError(f"`apply_fn` must be a function apply_fn(params, x); got {apply_fn!r}.")
    if not isinstance(flatten, bool):
        raise ValueError(f"`flatten` must be a bool; got {flatten!r}.")
    sel: ParamSelection = select_params(params, wrt)
    x, _ = check_inputs(x, input_shape)
    batch_size = check_int(batch_size, "batch_size")
    if projection_dim is not None:
        projection_dim = check_int(projection_dim, "projection_dim")
        key = check_key(key)
        direction_batch_size = check_int(direction_batch_size, "direction_batch_size")
    elif key is not None:
        raise ValueError("`key` is only used with `projection_dim` (the random projection).")
    out = probe(apply_fn, params, x)
    if not isinstance(out, jax.ShapeDtypeStruct) or len(out.shape) < 1 or out.shape[0] != 1:
        raise ValueError(
            f"`apply_fn` must return one array with a leading batch axis; on one example it "
            f"returned {jax.tree_util.tree_map(lambda s: s.shape, out)}."
        )
    if not jnp.issubdtype(out.dtype, jnp.inexact):
        raise ValueError(f"`apply_fn` must return floating outputs; got dtype {out.dtype}.")
    out_size = math.prod(out.shape[1:])
    if projection_dim is None:
        return map_batches(
            _ntk_exact_batch, (apply_fn, sel, out_size, flatten), params, x,
            batch_size=batch_size, progress=progress, desc="ntk",
        )
    static = (apply_fn, sel, out_size, projection_dim, min(direction_batch_size, projection_dim),
              flatten)
    return map_batches(
        _ntk_projected_batch, static, (params, key), x,
        batch_size=batch_size, progress=progress, desc="ntk",
    )
