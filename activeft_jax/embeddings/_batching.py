"""Input checks and the batched, jitted driver shared by every embedding.

`map_batches` pads the examples to a multiple of the batch size by repeating
the last example, runs a per-batch function under `jax.lax.map` inside one
`jax.jit` (so every batch has the same shape and compiles once), and drops the
padding. With ``progress=True`` it feeds the same compiled function a few
equally sized chunks of batches and shows a tqdm bar on stderr.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any, Callable, Hashable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from activeft_jax.validation import is_traced

__all__ = [
    "EmbeddingInputError",
    "check_inputs",
    "check_int",
    "check_key",
    "map_batches",
    "probe",
]


class EmbeddingInputError(ValueError):
    """A deliberate, already well-worded ValueError raised while tracing a model.

    `probe` lets it through unchanged instead of blaming the shape of `x`.
    """


def _shape(a: Any) -> tuple:
    return tuple(getattr(a, "shape", np.shape(a)))


def _describe(x: Any) -> str:
    if hasattr(x, "shape"):
        return f"shape {_shape(x)}"
    shapes = jax.tree_util.tree_map(_shape, x)
    return f"leaf shapes {shapes}"


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """`value` must be a Python/NumPy integer >= `minimum` (it is static)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"`{name}` must be a Python int >= {minimum}; got {value!r}.")
    if int(value) < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; got {int(value)}.")
    return int(value)


def check_key(key: Any, name: str = "key") -> Any:
    """A PRNG key: a typed key array (`jax.random.key`) or a raw uint32 [2] key."""
    if key is None:
        raise ValueError(f"`{name}` is required (e.g. {name}=jax.random.key(0)).")
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if _shape(key) != ():
            raise ValueError(f"`{name}` must be a single PRNG key; got shape {_shape(key)}.")
        return key
    if dtype is not None and dtype == jnp.uint32 and _shape(key) == (2,):
        return key
    raise ValueError(
        f"`{name}` must be a PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)); "
        f"got {type(key).__name__} with {_describe(key) if dtype is not None else 'no shape'}."
    )


def _as_array(a: Any, name: str) -> Any:
    if hasattr(a, "shape") and hasattr(a, "dtype"):
        arr = a
    else:
        try:
            arr = np.asarray(a)
        except Exception as e:  # ragged lists and the like
            raise ValueError(f"`{name}` must be an array [n, ...]; got {type(a).__name__}.") from e
    dtype = arr.dtype
    if not (
        jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)
    ) or jnp.issubdtype(dtype, jnp.complexfloating):
        raise ValueError(f"`{name}` must hold real numbers; got dtype {dtype}.")
    return arr


def check_inputs(x: Any, input_shape: Optional[Sequence[int]] = None, name: str = "x"):
    """Checks a batch of examples; returns (x with array leaves, n).

    Args:
      x: an array [n, *example_shape], or a pytree of such arrays sharing n
        (e.g. token ids and an attention mask).
      input_shape: if given (array `x` only), the expected example shape;
        ``x.shape[1:]`` must equal it.
      name: the argument's name in messages.

    Raises:
      ValueError: naming `name` and the offending shapes.
    """
    if x is None:
        raise ValueError(f"`{name}` is required; got None.")
    x = jax.tree_util.tree_map(lambda a: _as_array(a, name), x)
    leaves = jax.tree_util.tree_leaves(x)
    if not leaves:
        raise ValueError(f"`{name}` holds no arrays.")
    for leaf in leaves:
        if len(_shape(leaf)) < 1:
            raise ValueError(
                f"`{name}` must have a leading example axis [n, ...]; got shape {_shape(leaf)}."
            )
    ns = {_shape(leaf)[0] for leaf in leaves}
    if len(ns) != 1:
        raise ValueError(
            f"every array in `{name}` must have the same number of examples (leading axis); "
            f"got {_describe(x)}."
        )
    n = ns.pop()
    if n == 0:
        raise ValueError(f"`{name}` is empty ({_describe(x)}); give at least one example.")
    if input_shape is not None:
        if not hasattr(x, "shape"):
            raise ValueError(f"`input_shape` applies to an array `{name}`; got {_describe(x)}.")
        try:
            want = tuple(int(d) for d in input_shape)
        except TypeError as e:
            raise ValueError(f"`input_shape` must be a tuple of ints; got {input_shape!r}.") from e
        got = _shape(x)[1:]
        if got != want:
            raise ValueError(
                f"`{name}` has examples of shape {got} ({name}.shape = {_shape(x)}), but the "
                f"model expects examples of shape input_shape={want}, i.e. `{name}` of shape "
                f"{(n,) + want}."
            )
    return x, int(n)


def probe(fn: Callable, params: Any, x: Any, *extra: Any, name: str = "x") -> Any:
    """Abstractly evaluates ``fn(params, one_example_of_x, *extra)``; returns its shapes.

    Nothing is computed (``jax.eval_shape``). Any failure other than an
    `EmbeddingInputError` becomes a ValueError that names `name` and its shape,
    with the model's own error attached, instead of an error deep inside jit.
    `extra` are further per-example pytrees (leading axis n), also cut to one.
    """
    def one(a):
        return jax.ShapeDtypeStruct((1,) + tuple(a.shape[1:]), a.dtype)

    example = jax.tree_util.tree_map(one, x)
    extra1 = jax.tree_util.tree_map(one, extra)
    try:
        return jax.eval_shape(fn, params, example, *extra1)
    except EmbeddingInputError:
        raise
    except Exception as e:
        msg = " ".join(str(e).split())
        if len(msg) > 600:
            msg = msg[:600] + " ..."
        if hasattr(x, "shape"):
            example_shape = _shape(x)[1:]
        else:
            example_shape = jax.tree_util.tree_map(lambda a: _shape(a)[1:], x)
        raise ValueError(
            f"the model cannot be applied to `{name}` ({_describe(x)}, i.e. examples of shape "
            f"{example_shape}): {type(e).__name__}: {msg} -- check the example shape the model "
            f"expects (pass input_shape=... to have it checked up front)."
        ) from e


def _pad_rows(a: Any, rows: int) -> Any:
    """Appends `rows` copies of the last row (NumPy stays on the host)."""
    if rows == 0:
        return a
    if isinstance(a, np.ndarray):
        return np.concatenate([a, np.repeat(a[-1:], rows, axis=0)], axis=0)
    return jnp.concatenate([a, jnp.repeat(a[-1:], rows, axis=0)], axis=0)


@functools.partial(jax.jit, static_argnames=("batch_fn", "static", "batch_size"))
def _map_jit(batch_fn, static, batch_size, dyn, xs):
    n = jax.tree_util.tree_leaves(xs)[0].shape[0]
    num_batches = -(-n // batch_size)
    pad = num_batches * batch_size - n
    xs = jax.tree_util.tree_map(
        lambda a: jnp.reshape(_pad_rows(a, pad), (num_batches, batch_size) + a.shape[1:]), xs
    )
    out = lax.map(lambda xb: batch_fn(static, dyn, xb), xs)  # [num_batches, batch_size, ...]
    return jnp.reshape(out, (num_batches * batch_size,) + out.shape[2:])[:n]


def map_batches(
    batch_fn: Callable[[Hashable, Any, Any], jax.Array],
    static: Hashable,
    dyn: Any,
    xs: Any,
    *,
    batch_size: int,
    progress: bool = False,
    desc: str = "embed",
) -> jax.Array:
    """Applies ``batch_fn(static, dyn, batch)`` to fixed-size batches of `xs`.

    Args:
      batch_fn: a module-level function (static, hashable) mapping a batch
        (pytree, leaves [B, ...]) to an array [B, ...].
      static: hashable options (static under jit; may hold the user's model).
      dyn: pytree of arrays (traced: parameters, keys, ...).
      xs: pytree of arrays with a shared leading axis n >= 1.
      batch_size: B; capped at n. The last batch is padded by repeating the
        last example and its outputs are dropped.
      progress: show a tqdm bar on stderr (only when `xs` is concrete).
      desc: label of the bar.

    Returns:
      [n, ...]: the per-example outputs, in order.
    """
    leaves = jax.tree_util.tree_leaves(xs)
    n = leaves[0].shape[0]
    batch_size = min(batch_size, n)
    if not progress or any(is_traced(a) for a in leaves + jax.tree_util.tree_leaves(dyn)):
        return _map_jit(batch_fn, static, batch_size, dyn, xs)

    from tqdm.auto import tqdm

    num_batches = -(-n // batch_size)
    chunk = max(1, math.ceil(num_batches / 50)) * batch_size  # examples per compiled call
    outs = []
    with tqdm(total=n, desc=desc, unit="ex", file=sys.stderr, leave=False) as bar:
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            piece = jax.tree_util.tree_map(
                lambda a: _pad_rows(a[start:stop], chunk - (stop - start)), xs
            )
            out = _map_jit(batch_fn, static, batch_size, dyn, piece)
            jax.block_until_ready(out)
            outs.append(out[: stop - start])
            bar.update(stop - start)
    return jnp.concatenate(outs, axis=0)
