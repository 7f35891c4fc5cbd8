r"""Loss-gradient embeddings: per-example gradients of a loss w.r.t. parameters.

`loss_gradient` is the closed form for the usual case (BADGE; the ITL/VTL
paper's "loss gradient" embeddings): a final linear layer ``z = h W + b``
(flax layout, ``W`` [H, C]) trained with softmax cross-entropy, whose
gradient for label y is

.. math::  \nabla_{(b, W)} \ell_y(x) = \tilde h \otimes (p - e_y),
           \qquad \tilde h = [1, h],\ p = \mathrm{softmax}(z).

`per_example_gradient` is the general version: ``vmap(grad)`` of any user loss
with respect to a chosen subset of the parameters. Both flatten gradients in
the same order (the selected leaves in pytree order; a flax Dense's ``bias``
comes before its ``kernel``), so the closed form equals
``per_example_gradient(ce_loss, variables, x, labels, wrt=[head_name])``
entry for entry.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from activeft_jax._core import matmul
from activeft_jax.embeddings._batching import (
    EmbeddingInputError,
    check_inputs,
    check_int,
    map_batches,
    probe,
)
from activeft_jax.embeddings._flax import LinenFeatures, is_linen_module, is_nnx_module
from activeft_jax.embeddings._params import Wrt, ravel_leaves, select_params
from activeft_jax.validation import is_traced

__all__ = ["MODES", "loss_gradient", "per_example_gradient"]

MODES = ("argmax", "expected", "labels")

Head = Tuple[Any, Optional[Any]]  # (kernel [H, C], bias [C] or None)


def _closed_form(h, z, use_bias: bool, mode: str, y, flatten: bool) -> jax.Array:
    """[B, H] features, [B, C] logits -> the gradient embeddings of one batch."""
    dtype = jnp.result_type(h.dtype, z.dtype, jnp.float32)
    h, z = h.astype(dtype), z.astype(dtype)
    b, c = z.shape
    p = jax.nn.softmax(z, axis=-1)  # [B, C]
    if use_bias:
        h = jnp.concatenate([jnp.ones((b, 1), dtype), h], axis=1)  # [B, H~] = [1, h]
    if mode == "expected":
        # Row y: sqrt(p_y) (p - e_y), so that sum_y row_y row_y^T = diag(p) - p p^T.
        r = jnp.sqrt(p)[:, :, None] * (p[:, None, :] - jnp.eye(c, dtype=dtype)[None])  # [B, C, C]
        g = r[:, :, None, :] * h[:, None, :, None]  # [B, C (label), H~, C]
        g = jnp.reshape(g, (b, c, -1))  # [B, C, H~ C]
        return jnp.reshape(g, (b, -1)) if flatten else g
    if mode == "argmax":
        y = jnp.argmax(z, axis=-1)
    r = p - jax.nn.one_hot(y, c, dtype=dtype)  # [B, C]
    return jnp.reshape(h[:, :, None] * r[:, None, :], (b, -1))  # [B, H~ C]


def _head_call(static, dyn, xb):
    """-> (h [B, H], z [B, C], use_bias) for one batch."""
    kind, fn = static[:2]
    params, head = dyn
    if kind == "linen":
        call = fn.last_dense(params, xb)
        return call.inputs, call.output, call.use_bias
    kernel, bias = head
    h = fn(params, xb)
    z = matmul(h, kernel)
    if bias is not None:
        z = z + bias[None, :]
    return h, z, bias is not None


def _loss_gradient_batch(static, dyn, batch):
    _, _, mode, flatten = static
    xb, yb = batch
    h, z, use_bias = _head_call(static, dyn, xb)
    return _closed_form(h, z, use_bias, mode, yb, flatten)


def _check_labels(labels: Any, n: int, num_classes: int) -> jax.Array:
    labels, m = check_inputs(labels, name="labels")
    if not hasattr(labels, "shape") or labels.ndim != 1 or m != n:
        raise ValueError(
            f"`labels` must be integer class indices of shape [n] = ({n},); "
            f"got shape {getattr(labels, 'shape', None)}."
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"`labels` must hold integer class indices; got dtype {labels.dtype}.")
    if not is_traced(labels):
        arr = np.asarray(labels)
        if arr.min() < 0 or arr.max() >= num_classes:
            raise ValueError(
                f"`labels` (shape {arr.shape}) must lie in [0, {num_classes}) (the number of "
                f"classes); got values in [{arr.min()}, {arr.max()}]."
            )
    return jnp.asarray(labels, jnp.int32)


def loss_gradient(
    model: Any,
    params: Any,
    x: Any,
    *,
    mode: Optional[str] = None,
    labels: Optional[Any] = None,
    head: Optional[Head] = None,
    flatten: bool = True,
    apply_kwargs: Optional[Mapping[str, Any]] = None,
    input_shape: Optional[Sequence[int]] = None,
    batch_size: int = 256,
    progress: bool = False,
) -> jax.Array:
    r"""Gradient embeddings of a softmax-cross-entropy linear head, in closed form.

    For the final layer ``z = h W + b`` (``W`` [H, C], ``b`` [C]) and
    ``p = softmax(z)``, the gradient of ``ℓ_y = -log p_y`` for label y is

    .. math::  g_y(x) = \nabla_{(b, W)} \ell_y(x) = \tilde h \otimes (p - e_y),
               \qquad \tilde h = [1, h] \in \mathbb R^{H+1},

    flattened row-major from the [H+1, C] outer product: first the C bias
    entries, then ``W`` row by row (the order of ``jax.grad`` on a flax
    ``{"bias", "kernel"}`` dict). Without a bias, ``h̃ = h`` ([H, C]).

    Modes:

    * ``"argmax"`` (BADGE): y = argmax_c z_c, the label the model would
      predict (hallucinated). Returns [n, (H+1) C].
    * ``"labels"``: y = the given `labels` (true labels). [n, (H+1) C].
    * ``"expected"``: E_y[g_y] = 0 under y ~ p (the score has mean zero),
      so instead the embedding is the square-root factor of the expected
      gradient outer product (the Fisher information of the head,
      equivalently its generalized Gauss-Newton matrix):

      .. math::  \phi(x) = \big[\sqrt{p_y}\, g_y(x)\big]_{y=1..C}
                 \in \mathbb R^{C \times (H+1) C},
                 \qquad \phi(x)^\top \phi(x) = \mathbb E_{y\sim p}[g_y g_y^\top]
                 = \tilde h \tilde h^\top \otimes (\mathrm{diag}\,p - p p^\top) .

      Hence ⟨φ(x), φ(x)⟩ = E_y ‖g_y(x)‖² = (1 − ‖p‖²) ‖h̃‖², and
      ⟨φ(x), φ(x')⟩ = Σ_y sqrt(p_y(x) p_y(x')) ⟨g_y(x), g_y(x')⟩ pairs equal
      hallucinated labels. A weight-space GP that observes the C rows of φ(x)
      gains exactly the head's expected Fisher information at x. Returns
      [n, C (H+1) C] (label-major), or [n, C, (H+1) C] with
      ``flatten=False``. Its size grows as C², so it suits a modest C.

    Args:
      model: a `flax.linen.Module` (then `params` are its variables; h is the
        input and z the output of the last `nn.Dense` called, whose kernel /
        bias are the head), or a function ``features_fn(params, x) -> [b, H]``
        together with `head`.
      params: what `model` takes.
      x: [n, *example_shape] examples (or a pytree of arrays sharing n).
      mode: "argmax", "expected" or "labels"; default "labels" when `labels`
        is given, else "argmax".
      labels: [n] integer labels in [0, C) for mode "labels".
      head: ``(kernel [H, C], bias [C] or None)`` of the final linear layer;
        required with a `features_fn`, not allowed with a linen module.
      flatten: for "expected", return [n, C (H+1) C] (True) or [n, C, (H+1) C].
      apply_kwargs: linen only: keyword arguments of ``module.apply``.
      input_shape: if given, the expected example shape (checked up front).
      batch_size: examples per compiled batch.
      progress: show a tqdm progress bar on stderr.

    Returns:
      The gradient embeddings (see the modes), in the model's float dtype
      (at least float32).

    Raises:
      ValueError: bad `mode`, missing / mis-shaped `labels` or `head`, wrong
        `x` shape or empty `x`, a model without a Dense head.
    """
    if mode is None:
        mode = "labels" if labels is not None else "argmax"
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}.")
    if (mode == "labels") != (labels is not None):
        raise ValueError(
            "`labels` must be given exactly when mode='labels' "
            f"(got mode={mode!r} and labels={'None' if labels is None else 'an array'})."
        )
    if not isinstance(flatten, bool):
        raise ValueError(f"`flatten` must be a bool; got {flatten!r}.")
    x, n = check_inputs(x, input_shape)
    batch_size = check_int(batch_size, "batch_size")

    if is_linen_module(model):
        if head is not None:
            raise ValueError(
                "`head` is found automatically for a linen module (its last nn.Dense); "
                "pass a features_fn to give the head explicitly."
            )
        fn = LinenFeatures(model, None, tuple(sorted(dict(apply_kwargs or {}).items())))
        static = ("linen", fn, mode, flatten)
        dyn = (params, None)
    else:
        if is_nnx_module(model) or not callable(model):
            raise ValueError(
                "`model` must be a flax.linen.Module or a function features_fn(params, x) "
                f"(for NNX use nnx_apply(model, method=...)); got {type(model).__name__}."
            )
        if apply_kwargs:
            raise ValueError("`apply_kwargs` applies only to a flax.linen.Module `model`.")
        if head is None or not isinstance(head, (tuple, list)) or len(head) != 2:
            raise ValueError(
                "with a features_fn, `head` must be (kernel [H, C], bias [C] or None) of the "
                f"final linear layer; got {head!r}."
            )
        kernel, bias = jnp.asarray(head[0]), None if head[1] is None else jnp.asarray(head[1])
        if kernel.ndim != 2 or (bias is not None and bias.shape != (kernel.shape[1],)):
            raise ValueError(
                f"`head` must be (kernel [H, C], bias [C]); got kernel shape {kernel.shape} "
                f"and bias shape {None if bias is None else bias.shape}."
            )
        static = ("fn", model, mode, flatten)
        dyn = (params, (kernel, bias))

    if static[0] == "linen":
        def head_shapes(variables, xb):
            call = fn.last_dense(variables, xb)
            return call.inputs, call.output

        h, z = probe(head_shapes, params, x)
    else:
        h = probe(model, params, x)
        if not isinstance(h, jax.ShapeDtypeStruct):
            raise ValueError(
                f"`model` (a features_fn) must return one array [b, H]; on one example it "
                f"returned {jax.tree_util.tree_map(lambda s: s.shape, h)}."
            )
        if len(h.shape) == 2 and h.shape[1] != kernel.shape[0]:
            raise ValueError(
                f"`head` kernel has shape {kernel.shape} but the features have H={h.shape[1]} "
                f"(features of one example: shape {h.shape[1:]})."
            )
        z = jax.ShapeDtypeStruct((h.shape[0], kernel.shape[1]), h.dtype)
    if len(h.shape) != 2 or len(z.shape) != 2:
        raise ValueError(
            f"the closed form needs features [b, H] and logits [b, C]; on one example of `x` the "
            f"head sees features of shape {h.shape} and gives logits of shape {z.shape} "
            f"(use per_example_gradient for other heads)."
        )
    y = _check_labels(labels, n, z.shape[1]) if mode == "labels" else None
    return map_batches(
        _loss_gradient_batch, static, dyn, (x, y),
        batch_size=batch_size, progress=progress, desc="loss_gradient",
    )


def _unsqueeze(tree):
    return jax.tree_util.tree_map(lambda a: a[None], tree)


def _per_example_gradient_batch(static, params, batch):
    loss_fn, sel, has_labels = static
    xb, yb = batch
    leaves = sel.take(params)

    def one(xe, ye):
        def loss(selected):
            full = sel.merge(params, selected)
            if has_labels:
                return loss_fn(full, _unsqueeze(xe), _unsqueeze(ye))
            return loss_fn(full, _unsqueeze(xe))

        return ravel_leaves(jax.grad(loss)(leaves))  # [P]

    if has_labels:
        return jax.vmap(one)(xb, yb)
    return jax.vmap(lambda xe: one(xe, None))(xb)


def per_example_gradient(
    loss_fn: Union[Callable[[Any, Any], jax.Array], Callable[[Any, Any, Any], jax.Array]],
    params: Any,
    x: Any,
    labels: Optional[Any] = None,
    *,
    wrt: Wrt = None,
    input_shape: Optional[Sequence[int]] = None,
    batch_size: int = 64,
    progress: bool = False,
) -> jax.Array:
    """Per-example gradients of any loss w.r.t. a subset of the parameters.

    Computes ``vmap(grad)``: for each example i, the gradient of
    ``loss_fn(params, x[i:i+1], labels[i:i+1])`` (a batch of one) with respect
    to the parameters selected by `wrt`, flattened.

    For hallucinated labels compute them first, e.g.
    ``labels = jnp.argmax(last_layer(apply_fn, params, x), -1)`` (the
    model's own predictions, batched).

    Args:
      loss_fn: ``loss_fn(params, x_b, y_b) -> []`` (or ``loss_fn(params, x_b)``
        when `labels` is None), called on a batch of one example; must return
        a scalar.
      params: the parameter pytree.
      x: [n, *example_shape] examples (or a pytree of arrays sharing n).
      labels: optional [n, ...] labels (or pytree sharing n).
      wrt: which parameters (see `select_params`): None for everything under
        ``"params"`` (or every float leaf), path prefixes like ``["Dense_2"]``,
        or a predicate on the "/"-joined path.
      input_shape: if given, the expected example shape (checked up front).
      batch_size: examples per compiled batch.
      progress: show a tqdm progress bar on stderr.

    Returns:
      [n, P] gradients; columns are the selected leaves in
      `param_paths` order, each flattened row-major.

    Raises:
      ValueError: unknown `wrt` paths (listing the available ones), empty or
        mis-shaped `x`, `labels` with a different n, a non-scalar loss.
    """
    if not callable(loss_fn):
        raise ValueError(f"`loss_fn` must be callable; got {type(loss_fn).__name__}.")
    sel = select_params(params, wrt)
    x, n = check_inputs(x, input_shape)
    batch_size = check_int(batch_size, "batch_size")
    has_labels = labels is not None
    if has_labels:
        labels, m = check_inputs(labels, name="labels")
        if m != n:
            raise ValueError(f"`labels` has {m} examples but `x` has {n}.")
        out = probe(loss_fn, params, x, labels)
    else:
        out = probe(loss_fn, params, x)
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != ():
        raise EmbeddingInputError(
            f"`loss_fn` must return a scalar; on one example it returned "
            f"{jax.tree_util.tree_map(lambda s: s.shape, out)}."
        )
    return map_batches(
        _per_example_gradient_batch, (loss_fn, sel, has_labels), params, (x, labels),
        batch_size=batch_size, progress=progress, desc="per_example_gradient",
    )
