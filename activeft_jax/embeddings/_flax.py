"""Flax adapters: linen intermediate features and NNX modules as ``f(params, x)``.

* `linen_features(module, layer=...)` returns a hashable
  ``features_fn(variables, x)``. It runs ``module.apply`` under
  `flax.linen.intercept_methods`, records the input and output of every
  submodule's ``__call__``, and returns the output of the submodule named
  `layer` or, by default, the *input* of the last `nn.Dense` called (the
  penultimate features).
* `nnx_apply(model)` splits an NNX module into ``(apply_fn, params)`` with
  ``apply_fn(params, x)`` pure (``nnx.split`` / ``nnx.merge``), which is the
  form `ntk` and `per_example_gradient` take.

Flax is imported lazily, so importing `activeft_jax.embeddings` stays cheap.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from activeft_jax.embeddings._batching import EmbeddingInputError

__all__ = ["LinenFeatures", "is_linen_module", "is_nnx_module", "linen_features", "nnx_apply"]


def is_linen_module(obj: Any) -> bool:
    """True for a `flax.linen.Module` instance (without importing flax)."""
    nn = sys.modules.get("flax.linen")
    return nn is not None and isinstance(obj, nn.Module)


def is_nnx_module(obj: Any) -> bool:
    """True for a `flax.nnx.Module` instance (without importing flax)."""
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(obj, nnx.Module)


class _Call(NamedTuple):
    name: str  # "/"-joined submodule path, e.g. "Block_0/Dense_1"
    is_dense: bool
    use_bias: bool
    inputs: Any  # first positional argument of __call__
    output: Any


def _trace_calls(module, variables, x, apply_kwargs) -> tuple[Any, list[_Call]]:
    """Runs ``module.apply(variables, x)`` recording every submodule ``__call__``.

    Calls are listed in the order they *return* (a block after its layers).
    """
    from flax import linen as nn

    calls: list[_Call] = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        mod = context.module
        # submodules, and the root when it is itself a Dense (a linear probe: its
        # penultimate features are its inputs); the root has the empty name
        if context.method_name == "__call__" and (mod.path or isinstance(mod, nn.Dense)):
            first = args[0] if args else next(iter(kwargs.values()), None)
            dense = isinstance(mod, nn.Dense)
            calls.append(
                _Call("/".join(str(p) for p in mod.path), dense,
                      bool(getattr(mod, "use_bias", False)), first, out)
            )
        return out

    with nn.intercept_methods(interceptor):
        out = module.apply(variables, x, **dict(apply_kwargs))
    return out, calls


def _names(calls: list[_Call]) -> list[str]:
    seen: dict[str, None] = {}
    for c in calls:
        if c.name:
            seen.setdefault(c.name, None)
    return list(seen)


def _as_features(a: Any, what: str) -> jax.Array:
    if not isinstance(a, jax.Array) or a.ndim < 1:
        raise EmbeddingInputError(
            f"{what} is not an array with a leading batch axis (got {type(a).__name__}); "
            f"choose another `layer`."
        )
    return jnp.reshape(a, (a.shape[0], -1))


@dataclasses.dataclass(frozen=True)
class LinenFeatures:
    """``features_fn(variables, x) -> [b, h]`` for a linen module (hashable).

    Attributes:
      module: the `flax.linen.Module`.
      layer: "/"-joined path of a submodule whose output is returned, flattened
        to [b, h] (a submodule called several times gives its last call); None
        for the input of the last `nn.Dense` called.
      apply_kwargs: extra keyword arguments of ``module.apply`` as sorted
        (name, value) pairs, e.g. ``(("train", False),)``.
    """

    module: Any
    layer: Optional[str] = None
    apply_kwargs: tuple = ()

    def calls(self, variables: Any, x: Any) -> tuple[Any, list[_Call]]:
        """The model output and the recorded submodule calls."""
        return _trace_calls(self.module, variables, x, self.apply_kwargs)

    def last_dense(self, variables: Any, x: Any) -> _Call:
        """The last `nn.Dense` call (its input are the penultimate features)."""
        _, calls = self.calls(variables, x)
        dense = [c for c in calls if c.is_dense]
        if not dense:
            raise EmbeddingInputError(
                f"{type(self.module).__name__} calls no flax.linen.Dense layer, so there are no "
                f"default penultimate features; pass `layer=` one of {_names(calls)}."
            )
        return dense[-1]

    def __call__(self, variables: Any, x: Any) -> jax.Array:
        if self.layer is None:
            return _as_features(self.last_dense(variables, x).inputs, "the last Dense's input")
        _, calls = self.calls(variables, x)
        hits = [c for c in calls if c.name == self.layer]
        if not hits:
            raise EmbeddingInputError(
                f"`layer`={self.layer!r} is not a submodule of {type(self.module).__name__} that "
                f"is called; available layers: {_names(calls)}."
            )
        return _as_features(hits[-1].output, f"the output of layer {self.layer!r}")


def linen_features(
    module: Any, *, layer: Optional[str] = None, **apply_kwargs: Any
) -> LinenFeatures:
    """A linen module's intermediate features as a pure ``features_fn(variables, x)``.

    Args:
      module: a `flax.linen.Module`; its ``apply(variables, x, **apply_kwargs)``
        is the forward pass.
      layer: "/"-joined name of a submodule (e.g. ``"Dense_1"``,
        ``"Block_0/Conv_1"``) whose output to return; None (default) for the
        input of the last `nn.Dense` called, i.e. the penultimate features.
      **apply_kwargs: passed to ``module.apply`` (e.g. ``train=False``); must be
        hashable.

    Returns:
      A hashable callable ``(variables, x [b, ...]) -> [b, h]`` (features
      flattened per example), usable as the `features_fn` of `last_layer` /
      `loss_gradient`. An unknown `layer` raises ValueError (listing the
      available names) when it is first traced.
    """
    if not is_linen_module(module):
        raise ValueError(f"`module` must be a flax.linen.Module; got {type(module).__name__}.")
    if layer is not None and not isinstance(layer, str):
        raise ValueError(f"`layer` must be a submodule name (str) or None; got {layer!r}.")
    return LinenFeatures(module, layer, tuple(sorted(apply_kwargs.items())))


def nnx_apply(model: Any, *, method: Optional[str] = None) -> tuple[Callable[[Any, Any], Any], Any]:
    """Splits an NNX module into a pure ``apply_fn(params, x)`` and its ``params``.

    The `nnx.Param` variables become the differentiable `params` (an
    ``nnx.State``; paths look like ``"head/kernel/value"``); every other
    variable (batch statistics, RNG counters, ...) is frozen into `apply_fn`
    as a constant. Mutations made by the call (e.g. an RNG counter) are
    discarded, so put the model in evaluation mode first (``model.eval()``).

    Args:
      model: a `flax.nnx.Module`.
      method: name of the method to call instead of ``__call__``, e.g.
        ``"features"`` for a model that exposes its penultimate features; the
        result is a `features_fn` for `last_layer` / `loss_gradient`.

    Returns:
      ``(apply_fn, params)``. Call `nnx_apply` once and reuse `apply_fn`: the
      compiled embedding functions are cached per `apply_fn` object.

    Example:
      >>> apply_fn, params = nnx_apply(model)
      >>> phi = ntk(apply_fn, params, x, wrt=["head"])
      >>> feats = last_layer(nnx_apply(model, method="features")[0], params, x)
    """
    if not is_nnx_module(model):
        raise ValueError(f"`model` must be a flax.nnx.Module; got {type(model).__name__}.")
    from flax import nnx

    if method is not None and not callable(getattr(model, method, None)):
        raise ValueError(f"`method`={method!r} is not a method of {type(model).__name__}.")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def apply_fn(params, x):
        merged = nnx.merge(graphdef, params, rest)
        return (merged if method is None else getattr(merged, method))(x)

    return apply_fn, params
