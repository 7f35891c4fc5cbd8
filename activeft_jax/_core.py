"""The internal core every sub-package may import: exact matmuls, safe division, row chunking.

`retrieval`, `selection`, `gp`, `kernels` and `embeddings` share these helpers;
this module imports nothing else of the library, so it can never be part of an
import cycle.

Row chunking: passes over a large [N, d] array with static shapes and no padding copy.

A pass over N rows in chunks of C rows runs ceil(N / C) chunks; the last one
starts at N − C (it overlaps the one before), so every chunk has the same
static shape and the array is never padded or copied. `lo[i]` is the first
row of chunk i that no earlier chunk covered: rows below it are masked where a
result is accumulated, and dropped where per-row results are reassembled.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "Chunks",
    "MissingExtraError",
    "default_chunk_rows",
    "is_traced",
    "map_rows",
    "matmul",
    "plan",
    "require",
    "safe_divide",
    "scan_rows",
]

# GP conditioning subtracts nearly equal quantities; on GPU/TPU the default
# float32 matmul precision (TF32 / bf16 passes) would make every pick noisy.
_HIGHEST = lax.Precision.HIGHEST


class MissingExtraError(ImportError):
    """A part of the library needs an optional extra that is not installed."""


def require(part: str, extra: str, *modules: str) -> None:
    """Raises `MissingExtraError` naming the pip extra if any of `modules` is not installed.

    Checked with `importlib.util.find_spec`, so nothing is imported.
    """
    import importlib.util

    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    if missing:
        raise MissingExtraError(
            f"{part} needs {', '.join(missing)}, from the optional extra [{extra}]: "
            f"pip install 'activeft-jax[{extra}]'")


def is_traced(x) -> bool:
    """True if `x` is a JAX tracer (inside jit / vmap / grad)."""
    return isinstance(x, jax.core.Tracer)


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """`a @ b` at full float32 (or float64) precision on every backend."""
    return jnp.matmul(a, b, precision=_HIGHEST)


def safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den where den > 0, else 0 (a zero-variance point is uninformative).

    The double `where` keeps gradients finite at den == 0.
    """
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), 0)



class Chunks(NamedTuple):
    """Static chunking of N rows (NumPy arrays: constants, not traced)."""

    n: int
    rows: int            # C, rows per chunk (<= n)
    starts: np.ndarray   # [num] int32 first row of each chunk
    lo: np.ndarray       # [num] int32 first row of each chunk not covered before


def plan(n: int, rows: int) -> Chunks:
    rows = max(1, min(int(rows), n))
    num = -(-n // rows)
    intended = np.arange(num, dtype=np.int64) * rows
    starts = np.minimum(intended, n - rows)
    return Chunks(n, rows, starts.astype(np.int32), (intended - starts).astype(np.int32))


def default_chunk_rows(n: int, width: int, budget: int = 1 << 22) -> int:
    """Rows per chunk so that a [rows, width] block holds about `budget` elements."""
    return max(256, min(n, budget // max(width, 1)))


def map_rows(fn: Callable, chunks: Chunks, *arrays: jax.Array):
    """Applies `fn(*row_blocks)` to every chunk; returns its per-row outputs reassembled to [N, ...].

    `fn` maps blocks with leading dimension C to a pytree of arrays with leading
    dimension C.
    """
    if chunks.rows == chunks.n:
        return fn(*arrays)

    def body(start):
        return fn(*(lax.dynamic_slice_in_dim(a, start, chunks.rows) for a in arrays))

    out = lax.map(body, jnp.asarray(chunks.starts))
    drop = int(chunks.lo[-1])

    def join(y):  # [num, C, ...] -> [N, ...]
        head = y[:-1].reshape((-1,) + y.shape[2:])
        return jnp.concatenate([head, y[-1, drop:]], axis=0)

    return jax.tree_util.tree_map(join, out)


def scan_rows(fn: Callable, init, chunks: Chunks, *arrays: jax.Array):
    """Accumulates `carry = fn(carry, valid, *row_blocks)` over the chunks.

    `valid` is a [C] bool mask: False for rows an earlier chunk already covered.
    """
    if chunks.rows == chunks.n:
        return fn(init, jnp.ones((chunks.n,), bool), *arrays)
    local = jnp.arange(chunks.rows)

    def body(carry, inp):
        start, lo = inp
        blocks = (lax.dynamic_slice_in_dim(a, start, chunks.rows) for a in arrays)
        return fn(carry, local >= lo, *blocks), None

    carry, _ = lax.scan(body, init, (jnp.asarray(chunks.starts), jnp.asarray(chunks.lo)))
    return carry
