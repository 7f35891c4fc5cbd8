"""Checks run in Python before anything is traced.

Shape, rank, dtype and `k` checks use only static information, so they also
work when a caller wraps our functions in `jax.jit` or `jax.vmap`. Value
checks (NaN/inf, noise_std > 0) run when the value is concrete and are skipped
for tracers, where nothing can be known before the computation runs.
Every error is a `ValueError` that names the argument and its shape.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from activeft_jax._core import as_concrete_array, concrete, is_traced

__all__ = [
    "as_float_matrix",
    "check_candidates",
    "check_finite",
    "check_k",
    "check_key",
    "check_magnitude",
    "check_noise_variance",
    "check_available",
    "check_noise_std",
    "check_number",
    "check_options",
    "check_observed",
    "check_positive",
    "check_target",
    "count_true",
    "is_traced",
    "NUMERIC_OPTIONS",
    "NumberRange",
    "max_sq_norm_allowed",
]


def _shape(x: Any) -> tuple:
    return tuple(getattr(x, "shape", np.shape(x)))


def as_float_matrix(x: Any, name: str) -> jax.Array:
    """Converts `x` to a floating [n, d] array with n, d >= 1, or raises ValueError.

    Integer and boolean input is cast to the default float dtype; float16 and
    bfloat16 are upcast to float32 (their range, 6.5e4 for float16, overflows
    at the squared norms every score is built from); complex, string and
    object input is rejected.
    """
    if x is None:
        raise ValueError(f"`{name}` is required; got None.")
    if not hasattr(x, "dtype"):
        try:
            x = np.asarray(x)
        except Exception as e:  # ragged lists and the like
            raise ValueError(f"`{name}` must be an array of shape [n, d]; got {type(x).__name__}.") from e
    dtype = np.dtype(x.dtype) if not is_traced(x) else x.dtype
    upcast = None
    if jnp.issubdtype(dtype, jnp.floating):
        if jnp.finfo(dtype).bits < 32:  # float16 / bfloat16: computed in float32
            upcast = jnp.float32
            if not isinstance(x, np.ndarray):
                x = as_concrete_array(x, upcast)
    elif jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.bool_):
        x = as_concrete_array(x, jnp.result_type(float))
    else:
        raise ValueError(f"`{name}` must hold real numbers; got dtype {dtype}.")
    shape = _shape(x)
    if len(shape) != 2:
        raise ValueError(f"`{name}` must have shape [n, d] (rank 2); got shape {shape}.")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"`{name}` must have at least one row and one column; got shape {shape}.")
    if isinstance(x, np.ndarray):  # on the device once, in chunks; refused if it cannot fit
        from activeft_jax.memory import host_to_device

        with jax.ensure_compile_time_eval():  # concrete even inside a user's jit
            return host_to_device(x, name, upcast)
    return as_concrete_array(x)


@jax.jit
def _first_non_finite(x: jax.Array) -> jax.Array:
    """(row, column) of the first NaN/inf of a 2-D array, or (-1, -1).

    Reductions only (no reshape or indexing of a possibly split axis), so the
    result is the same, replicated, on every device and every process.
    """
    if x.ndim == 1:
        x = x[:, None]
    bad = ~jnp.isfinite(x)
    rows = jnp.arange(x.shape[0], dtype=jnp.int32)
    first_col = jnp.argmax(bad, axis=1).astype(jnp.int32)
    row = jnp.min(jnp.where(jnp.any(bad, axis=1), rows, x.shape[0]))
    col = jnp.sum(jnp.where(rows == row, first_col, 0))
    found = row < x.shape[0]
    return jnp.where(found, row, -1), jnp.where(found, col, -1)


def _on_host(x: jax.Array) -> np.ndarray:
    """A replicated concrete array on the host, on every process (never a non-addressable
    fetch), also inside someone's trace (where indexing it would give tracers)."""
    if hasattr(x, "addressable_data") and not getattr(x, "is_fully_addressable", True):
        x = x.addressable_data(0)
    return np.asarray(x)


def _scalar_float(x: jax.Array) -> float:
    """A replicated scalar as a float, on every process."""
    return float(np.asarray(_on_host(x), np.float64))


def _scalar(x: jax.Array) -> int:
    """A replicated scalar as an int, on every process."""
    return int(_on_host(x))


def _ints(x: jax.Array) -> list:
    """A small replicated array as Python ints, on every process."""
    return [int(v) for v in _on_host(x).reshape(-1)]


def check_finite(x: jax.Array, name: str) -> None:
    """Raises if a concrete `x` holds NaN or inf (skipped for tracers).

    The check is a jitted reduction, so a pool split over devices or processes
    is never fetched: every process raises the same error.
    """
    if is_traced(x):
        return
    # A concrete array closed over by a function under jit: evaluate now, not staged.
    shape = _shape(x)
    if len(shape) > 2:
        x = concrete(lambda a: jnp.reshape(a, (-1, shape[-1])), x)
    row, col = (_scalar(v) for v in concrete(_first_non_finite, x))
    if row >= 0:
        flat = row * (shape[-1] if len(shape) >= 2 else 1) + (col if len(shape) >= 2 else 0)
        bad = np.unravel_index(flat, shape)
        raise ValueError(
            f"`{name}` (shape {shape}) contains NaN or inf, first at index {tuple(int(i) for i in bad)}."
        )


@jax.jit
def _magnitude(x: jax.Array) -> jax.Array:
    """(max |x|, max_i ‖x_i / max |x|‖²) over the rows (last axis) of x.

    The largest squared row norm is their product, formed on the host (it may
    overflow x's dtype)."""
    scale = jnp.max(jnp.abs(x))
    unit = x / jnp.where(scale > 0, scale, 1)
    return scale, jnp.max(jnp.sum(unit * unit, axis=-1))


def max_sq_norm_allowed(dtype) -> float:
    """The largest squared row norm an input may have in `dtype`: sqrt(finfo.max).

    Scores multiply two squared norms (Cov², σ²·σ², a squared distance over a
    variance), so each must stay below the square root of the largest float:
    rows of norm up to ~4e9 in float32, ~1e77 in float64.
    """
    return float(np.sqrt(float(jnp.finfo(dtype).max)))


def check_magnitude(x: jax.Array, name: str) -> None:
    """Raises if a concrete, finite `x` has a row whose squared norm would overflow its dtype.

    The limit is `max_sq_norm_allowed`; the check is a jitted reduction (never
    fetches a split pool). Skipped for tracers.
    """
    if is_traced(x) or len(_shape(x)) < 2:
        return
    scale, unit = (float(_scalar_float(v)) for v in concrete(_magnitude, x))
    sq = scale * scale * unit
    limit = max_sq_norm_allowed(x.dtype)
    if sq > limit:
        raise ValueError(
            f"`{name}` (shape {_shape(x)}) has a row of squared norm {sq:.3g}, too large for "
            f"{jnp.dtype(x.dtype).name} (the scores multiply squared norms: each must stay below "
            f"{limit:.3g}); rescale the embeddings or use float64.")


def check_k(k: Any, n: int, name: str = "pool") -> int:
    """`k` must be a Python/NumPy integer (static) with 1 <= k <= n."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(
            f"`k` must be a Python int (it fixes the output shape and is static under jit); got {k!r}."
        )
    k = int(k)
    if not 1 <= k <= n:
        raise ValueError(f"`k` must satisfy 1 <= k <= N={n} (the number of rows of `{name}`); got k={k}.")
    return k


def check_target(target: Any, d: int) -> jax.Array:
    """A non-empty [m, d] target set with the pool's embedding dimension."""
    if target is None:
        raise ValueError("this strategy needs a `target` of shape [m, d]; got None.")
    shape = _shape(target)
    if len(shape) == 2 and shape[0] == 0:
        raise ValueError(f"`target` is empty (shape {shape}); give at least one target.")
    target = as_float_matrix(target, "target")
    if target.shape[1] != d:
        raise ValueError(
            f"`target` has embedding dimension {target.shape[1]} (shape {target.shape}) "
            f"but `pool` has {d}."
        )
    return target


def check_noise_std(noise_std: Any) -> None:
    """A concrete `noise_std` must be a finite scalar > 0 (only the rank is checked for tracers)."""
    check_number(noise_std, "noise_std")


def check_noise_variance(noise_std: Any, dtype) -> None:
    """A concrete `noise_std` whose square ρ² is a normal, finite number of `dtype`.

    ρ² below `finfo.tiny` flushes to 0 on CPU (the scores divide by σ² + ρ²) and
    above `finfo.max` it is inf. Skipped for tracers (and None: `check_noise_std`).
    """
    if noise_std is None or is_traced(noise_std):
        return
    info = jnp.finfo(dtype)
    var = float(np.asarray(noise_std, np.float64)) ** 2
    if not float(info.tiny) <= var <= float(info.max):
        raise ValueError(
            f"`noise_std`={float(np.asarray(noise_std)):g} squares to {var:.3g}, outside the "
            f"normal range of {jnp.dtype(dtype).name} [{float(info.tiny):.3g}, "
            f"{float(info.max):.3g}]; rescale the embeddings and noise_std together, or use "
            f"float64.")


def check_positive(value: Any, name: str) -> None:
    """A concrete `value` must be a finite real scalar > 0 (only the rank is checked for tracers)."""
    check_number(value, name, _POSITIVE)


def check_key(key: Optional[Any], strategy: str) -> jax.Array:
    """A PRNG key is required by randomized strategies."""
    if key is None:
        raise ValueError(
            f"strategy {strategy!r} is randomized and needs `key` (e.g. key=jax.random.key(0))."
        )
    return key


@jax.jit
def _range_and_count(idx: jax.Array) -> jax.Array:
    return jnp.stack([jnp.min(idx), jnp.max(idx)]).astype(jnp.int32)


def check_observed(observed: Any, n: int) -> Optional[jax.Array]:
    """`observed` as a [N] bool mask or [n] int pool indices (a set), or None.

    Raises a ValueError naming `observed` for another rank, length or dtype,
    and (when concrete) for indices outside [0, N). Returns the array as given
    (indices stay indices: their length is static, a mask's count is not).
    """
    if observed is None:
        return None
    shape = _shape(observed)
    dtype = np.dtype(observed.dtype) if hasattr(observed, "dtype") else np.asarray(observed).dtype
    if len(shape) != 1:
        raise ValueError(f"`observed` must be a [N] bool mask or [n] int pool indices; "
                         f"got shape {shape}.")
    if dtype == np.bool_:
        if shape[0] != n:
            raise ValueError(f"`observed` as a bool mask must have shape [{n}] (one entry per pool "
                             f"point); got shape {shape}.")
        return as_concrete_array(observed)
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(f"`observed` must be a bool mask or integer indices; got dtype {dtype}.")
    observed = as_concrete_array(observed, jnp.int32)
    if shape[0] and not is_traced(observed):
        lo, hi = _ints(concrete(_range_and_count, observed))
        if lo < 0 or hi >= n:
            raise ValueError(f"`observed` indices must lie in [0, N={n}); got values from {lo} "
                             f"to {hi}.")
    return observed


def check_candidates(candidates: Any, n: int, name: str = "candidates") -> Optional[jax.Array]:
    """`candidates` as a [N] bool mask of the points that may be picked, or None."""
    if candidates is None:
        return None
    shape = _shape(candidates)
    dtype = np.dtype(candidates.dtype) if hasattr(candidates, "dtype") else np.asarray(candidates).dtype
    if dtype != np.bool_ or shape != (n,):
        raise ValueError(f"`{name}` must be a bool mask of shape [{n}] (one entry per pool "
                         f"point); got shape {shape}, dtype {dtype}.")
    return as_concrete_array(candidates)


def check_available(k: int, n: int, observed: Optional[jax.Array],
                    candidates: Optional[jax.Array], allow_repeats: bool = False) -> None:
    """Concrete masks: enough pickable points (a candidate, not observed) for k picks.

    Without repeats k distinct points are needed; with repeats at least one.
    Traced masks cannot be checked: picks beyond the available points are -1.
    """
    if observed is None and candidates is None:
        return
    if any(x is not None and is_traced(x) for x in (observed, candidates)):
        return
    free = _scalar(concrete(functools.partial(_available_count, n), observed, candidates))
    need = 1 if allow_repeats else k
    if free < need:
        names = " and ".join(f"`{name}`" for name, x in (("observed", observed),
                                                         ("candidates", candidates))
                             if x is not None)
        raise ValueError(f"{names} leave {free} pool point(s) that may be picked (a candidate "
                         f"and not observed); k={k} picks need {need}.")


@functools.partial(jax.jit, static_argnums=0)
def _available_count(n, observed, candidates) -> jax.Array:
    mask = jnp.ones((n,), bool)
    if observed is not None:
        if observed.dtype == jnp.bool_:
            mask = mask & ~observed
        else:
            mask = mask.at[observed].set(False)
    if candidates is not None:
        mask = mask & candidates
    return jnp.sum(mask, dtype=jnp.int32)


@jax.jit
def _count_true(mask: jax.Array) -> jax.Array:
    return jnp.sum(mask, dtype=jnp.int32)


def count_true(mask: jax.Array) -> int:
    """The number of True entries of a concrete mask, on every process (a jitted reduction)."""
    return _scalar(concrete(_count_true, mask))


# ------------------------------------------------------------------ numeric options, in one place


_BIG = {2**31 - 1: "2^31 - 1", 2**63 - 1: "2^63 - 1", -(2**63): "-2^63"}


class NumberRange:
    """The values a numeric option may take: an int or a finite real, within bounds.

    `low`/`high` are inclusive unless `low_open`/`high_open`; None: unbounded.
    Integers are also bounded by int32 (they size arrays and loop counts).
    """

    __slots__ = ("integer", "low", "high", "low_open", "high_open")

    def __init__(self, integer: bool = False, low: Optional[float] = None,
                 high: Optional[float] = None, low_open: bool = False, high_open: bool = False):
        self.integer, self.low, self.high = integer, low, high
        self.low_open, self.high_open = low_open, high_open
        if integer and high is None:
            self.high = 2**31 - 1

    def describe(self, cap: bool = False) -> str:
        """E.g. 'finite and > 0', 'finite and in (0, 1]', 'an int >= 1' (`cap`: with the int32 bound)."""
        if not self.integer and self.low is not None and self.high is not None:
            lo = "(" if self.low_open else "["
            hi = ")" if self.high_open else "]"
            return f"finite and in {lo}{self.low}, {self.high}{hi}"
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_BIG.get(self.low, self.low)}")
        if self.high is not None and not (self.integer and self.high == 2**31 - 1 and not cap):
            high = _BIG.get(self.high, str(self.high))
            parts.append(f"{'<' if self.high_open else '<='} {high}")
        if self.integer:
            return "an int " + " and ".join(parts) if parts else "an int"
        return "finite and " + " and ".join(parts) if parts else "finite"

    def contains(self, x) -> bool:
        if self.low is not None and (x < self.low or (self.low_open and x == self.low)):
            return False
        if self.high is not None and (x > self.high or (self.high_open and x == self.high)):
            return False
        return True


_POSITIVE = NumberRange(low=0, low_open=True)
_COUNT = NumberRange(integer=True, low=1)
_COUNT0 = NumberRange(integer=True, low=0)
_FRACTION = NumberRange(low=0, high=1, low_open=True)

#: Every numeric option of the strategies, the kernels and the command line, and its range.
#: `check_number` / `check_options` read this table: `select`, the command line and the
#: studies share it, so an option is checked the same way wherever it is given.
NUMERIC_OPTIONS: dict = {
    "noise_std": _POSITIVE,
    "lengthscale": _POSITIVE,
    "target_fraction": _FRACTION,
    "max_target_size": _COUNT,
    "beta": NumberRange(low=0),
    "step_size": _POSITIVE,
    "iters": _COUNT0,
    "max_clusters": _COUNT,
    "min_cluster_size": _COUNT0,
    "num_neighbors": _COUNT,
    "delta": _POSITIVE,
    "temperature": _POSITIVE,
    "steps": _COUNT0,
    "learning_rate": _POSITIVE,
    "balance": _POSITIVE,
    "batch_size": _COUNT,
    "chunk_rows": _COUNT,
    "refresh": NumberRange(low=0, high=1),
    "num_fast": _COUNT0,
    "prefilter": _COUNT,
    "lambda_": _POSITIVE,
    "adaptive": _POSITIVE,
    "max_observed": _COUNT0,
    "k": _COUNT,
    "seed": NumberRange(integer=True, low=-(2**63), high=2**63 - 1),
    "window": NumberRange(integer=True, low=2),
}


def check_number(value: Any, name: str, allowed: Optional[NumberRange] = None,
                 label: Optional[str] = None) -> Any:
    """A concrete scalar option must be a real number (an int if so declared) in its range.

    `allowed` defaults to `NUMERIC_OPTIONS[name]`; `label` is how the message names it
    (default: `name` in backticks). Tracers are left alone (only their rank is checked).
    Returns the value unchanged.
    """
    allowed = allowed if allowed is not None else NUMERIC_OPTIONS[name]
    label = label or f"`{name}`"
    if is_traced(value):
        if jnp.ndim(value) != 0:
            raise ValueError(f"{label} must be a scalar; got shape {_shape(value)} "
                             f"(use jax.vmap to sweep).")
        return value
    if value is None:
        raise ValueError(f"{label} must be {allowed.describe()}; got None.")
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{label} must be {allowed.describe()}; got {value!r}.")
    if allowed.integer:
        if isinstance(value, (int, np.integer)):
            x = int(value)
        elif (isinstance(value, (float, np.floating)) and math.isfinite(value)
              and float(value).is_integer()):
            raise ValueError(f"{label} must be {allowed.describe()}; got the float {value!r}.")
        else:
            raise ValueError(f"{label} must be {allowed.describe()}; got {value!r}.")
    else:
        arr = np.asarray(value) if not isinstance(value, (int, float)) else None
        if arr is not None:
            if arr.ndim != 0:
                raise ValueError(f"{label} must be a scalar; got shape {arr.shape} "
                                 f"(use jax.vmap to sweep).")
            if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
                raise ValueError(f"{label} must be {allowed.describe()}; got {value!r}.")
        try:
            x = float(value)
        except OverflowError:  # a Python int beyond float range
            x = math.inf
        if not math.isfinite(x):
            raise ValueError(f"{label} must be {allowed.describe()}; got {x}.")
    if not allowed.contains(x):
        cap = allowed.high is not None and x > allowed.high
        raise ValueError(f"{label} must be {allowed.describe(cap=cap)}; got {x}.")
    return value


def check_options(options: dict) -> None:
    """`check_number` for every option of `options` named in `NUMERIC_OPTIONS` (None: not given)."""
    for name, value in options.items():
        if name in NUMERIC_OPTIONS and value is not None:
            check_number(value, name)
