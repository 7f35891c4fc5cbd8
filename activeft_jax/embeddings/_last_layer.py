"""Last-layer (penultimate) features of a model, batched and jitted."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax

from activeft_jax.embeddings._batching import check_inputs, check_int, map_batches, probe
from activeft_jax.embeddings._flax import is_linen_module, is_nnx_module, linen_features

__all__ = ["last_layer", "resolve_features_fn"]

FeaturesFn = Callable[[Any, Any], jax.Array]


def resolve_features_fn(
    model: Any, layer: Optional[str], apply_kwargs: Optional[Mapping[str, Any]]
) -> FeaturesFn:
    """A linen module (+ `layer`) or a user callable -> ``features_fn(params, x)``."""
    if is_linen_module(model):
        return linen_features(model, layer=layer, **dict(apply_kwargs or {}))
    if is_nnx_module(model):
        raise ValueError(
            "`model` is a flax.nnx.Module; pass a pure features function instead, e.g. "
            "`fn, params = nnx_apply(model, method='features')` (a method returning the "
            "penultimate features) and then call with (fn, params, x)."
        )
    if not callable(model):
        raise ValueError(
            f"`model` must be a flax.linen.Module or a function features_fn(params, x); "
            f"got {type(model).__name__}."
        )
    if layer is not None or apply_kwargs:
        raise ValueError(
            "`layer` and `apply_kwargs` apply only to a flax.linen.Module `model`; "
            "a features_fn already returns the features."
        )
    return model


def _features_batch(static, params, xb):
    (features_fn,) = static
    feats = features_fn(params, xb)
    return feats.reshape(feats.shape[0], -1)


def last_layer(
    model: Union[Any, FeaturesFn],
    params: Any,
    x: Any,
    *,
    layer: Optional[str] = None,
    apply_kwargs: Optional[Mapping[str, Any]] = None,
    input_shape: Optional[Sequence[int]] = None,
    batch_size: int = 256,
    progress: bool = False,
) -> jax.Array:
    """Penultimate (or any named layer's) features of every example.

    Args:
      model: one of

        * a `flax.linen.Module`; `params` are its variables
          (``{"params": ...}``). By default the features are the *input of
          the last* `nn.Dense` *called* (the penultimate features, what the
          classifier head sees); with `layer` they are the output of that
          submodule (``"Dense_1"``, ``"Block_0/Conv_1"``; the names are the
          module paths ``capture_intermediates`` uses).
        * a function ``features_fn(params, x [b, ...]) -> [b, ...]``, e.g. a
          model's ``features`` method, or ``nnx_apply(model,
          method="features")[0]`` for an NNX model.
      params: the parameters / variables `model` takes.
      x: [n, *example_shape] examples (or a pytree of arrays sharing n, e.g.
        token ids and a mask). Integer inputs stay integer.
      layer: linen only: the submodule whose output to return.
      apply_kwargs: linen only: keyword arguments of ``module.apply`` (e.g.
        ``{"train": False}``); values must be hashable.
      input_shape: if given (array `x`), the expected example shape, checked
        before anything runs.
      batch_size: examples per compiled batch (the last one is padded).
      progress: show a tqdm progress bar on stderr.

    Returns:
      [n, h] features (each example's features flattened), in the dtype the
      model computes in (float32 by default, float64 for float64 params
      under ``jax.enable_x64``).

    Raises:
      ValueError: empty `x`, a wrong example shape (naming `x` and the
        shapes), an unknown `layer` (listing the available ones), bad
        `batch_size`.
    """
    features_fn = resolve_features_fn(model, layer, apply_kwargs)
    x, _ = check_inputs(x, input_shape)
    batch_size = check_int(batch_size, "batch_size")
    out = probe(features_fn, params, x)
    if not isinstance(out, jax.ShapeDtypeStruct) or len(out.shape) < 1 or out.shape[0] != 1:
        raise ValueError(
            f"`model` must return one array with a leading batch axis; on one example it "
            f"returned {jax.tree_util.tree_map(lambda s: s.shape, out)}."
        )
    return map_batches(
        _features_batch, (features_fn,), params, x,
        batch_size=batch_size, progress=progress, desc="last_layer",
    )
