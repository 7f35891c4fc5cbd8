"""Embeddings of Flax models for data selection: last layer, loss gradients, NTK.

Every function takes a model in the neural-tangents form ``f(params, x)`` (a
linen ``module.apply``, ``nnx_apply(model)[0]`` for NNX, or any pure
function), runs it over the examples in fixed-size jitted batches and returns
a 2-D [n, features] array, ready for `activeft_jax.select`:

    phi = last_layer(module, variables, x)                 # [n, H] penultimate features
    phi = loss_gradient(module, variables, x)              # [n, (H+1) C] BADGE embeddings
    phi = ntk(module.apply, variables, x, wrt=["Dense_2"]) # [n, O P] NTK features

`cached_embeddings` stores any of them (or a text encoder's output) once and
reloads it while the inputs, model and options stay the same.
"""

from activeft_jax.embeddings._flax import LinenFeatures as LinenFeatures
from activeft_jax.embeddings._flax import is_linen_module as is_linen_module
from activeft_jax.embeddings._flax import is_nnx_module as is_nnx_module
from activeft_jax.embeddings._flax import linen_features as linen_features
from activeft_jax.embeddings._flax import nnx_apply as nnx_apply
from activeft_jax.embeddings._last_layer import last_layer as last_layer
from activeft_jax.embeddings._loss_gradient import loss_gradient as loss_gradient
from activeft_jax.embeddings._loss_gradient import per_example_gradient as per_example_gradient
from activeft_jax.embeddings._ntk import ntk as ntk
from activeft_jax.embeddings._ntk import projection_tangent as projection_tangent
from activeft_jax.embeddings._params import ParamSelection as ParamSelection
from activeft_jax.embeddings._params import param_paths as param_paths
from activeft_jax.embeddings._params import path_str as path_str
from activeft_jax.embeddings._params import select_params as select_params
from activeft_jax.embeddings.cache import StaleCacheError as StaleCacheError
from activeft_jax.embeddings.cache import cache_status as cache_status
from activeft_jax.embeddings.cache import cached_embeddings as cached_embeddings

__all__ = [
    "LinenFeatures",
    "ParamSelection",
    "StaleCacheError",
    "cache_status",
    "cached_embeddings",
    "is_linen_module",
    "is_nnx_module",
    "last_layer",
    "linen_features",
    "loss_gradient",
    "nnx_apply",
    "ntk",
    "param_paths",
    "path_str",
    "per_example_gradient",
    "projection_tangent",
    "select_params",
]
