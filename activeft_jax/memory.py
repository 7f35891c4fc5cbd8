"""Memory: put a host pool on the device once, in chunks, and refuse what cannot fit.

`to_device` copies a host array (a NumPy array or a memory-mapped ``.npy``) to
the default device in row chunks written into one preallocated device buffer,
so the copy never needs a second pool-sized staging buffer (``jnp.asarray`` of
a NumPy array briefly holds two); `stream_npy` does the same straight from a
``.npy`` file or a ``.npz`` member without ever holding the array on the host.
`select_estimate` is what `select` with a GP rule holds at its peak (the pool
once plus the N x (m' + rows) state), and `check_fits` refuses, in one line,
a request whose estimate exceeds the memory available (`available_bytes`:
``MemAvailable`` of /proc/meminfo on CPU, the allocator's limit on an
accelerator) instead of letting the kernel kill the process.
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO, NamedTuple, Optional

import numpy as np

__all__ = [
    "InsufficientMemoryError",
    "NpyHeader",
    "available_bytes",
    "check_fits",
    "gb",
    "host_to_device",
    "normalize_rows_in_place",
    "read_npy_header",
    "select_estimate",
    "stream_npy",
    "to_device",
]

CHUNK_BYTES = 64 << 20
RUNTIME_BYTES = 10**9  # the JAX runtime, compiled programs and small temporaries
# The GP rules: how many posteriors each keeps (ITL: one without and one with y(A)).
_GP_POSTERIORS = {"itl": 2, "undirected_itl": 2, "vtl": 1, "ctl": 1, "mmitl": 1,
                  "undirected_vtl": 1, "uncertainty": 1}
_UNDIRECTED = ("undirected_itl", "undirected_vtl", "uncertainty")


class InsufficientMemoryError(MemoryError, ValueError):
    """The request needs more memory than the machine has available (bad input: exit 2)."""


def gb(n: float) -> str:
    """Bytes as '1.54 GB'."""
    return f"{n / 1e9:.2f} GB"


def available_bytes(device: Any = None) -> Optional[int]:
    """Memory a new allocation can use: host MemAvailable for CPU, else the device's free memory.

    None when unknown (then nothing is refused).
    """
    if device is None:
        import jax

        device = jax.devices()[0]
    if getattr(device, "platform", "cpu") != "cpu":
        stats = None
        try:
            stats = device.memory_stats()
        except Exception:
            pass
        if stats and "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def select_estimate(strategy: str, n: int, d: int, m: int, k: int, itemsize: int, *,
                    kernel_space: bool = False) -> tuple[int, int]:
    """(pool bytes, state bytes) of `select(strategy, ...)` on an [n, d] pool with m targets.

    The GP rules keep per posterior an [N, m'] covariance (m' = min(m, d) targets
    after compression; the pool itself, compressed to d, for the undirected
    rules), the [N] variances and a few [N] score vectors, and in kernel space
    also [r, N] rows (r = k). The other strategies are counted with a few [N]
    vectors only, so for them the estimate is a lower bound.
    """
    pool = n * d * itemsize
    if strategy in _GP_POSTERIORS:
        targets = d if strategy in _UNDIRECTED else min(m, d)
        if kernel_space:
            targets = n if strategy in _UNDIRECTED else m
        columns = targets + 4 + (k if kernel_space else 0)
        state = _GP_POSTERIORS[strategy] * n * columns * itemsize
    else:
        state = 4 * n * itemsize
    return pool, state


def check_fits(what: str, pool: int, state: int = 0, *, runtime: int = RUNTIME_BYTES,
               device: Any = None, available: Optional[int] = None) -> None:
    """Raises InsufficientMemoryError (one line) if pool + state + runtime exceeds what is available."""
    available = available_bytes(device) if available is None else available
    need = pool + state + runtime
    if available is not None and need > available:
        on_cpu = device is None or getattr(device, "platform", "cpu") == "cpu"
        where = "memory available (MemAvailable)" if on_cpu else f"memory free on {device}"
        parts = f"pool {gb(pool)}" + (f" + state {gb(state)}" if state else "") + (
            f" + runtime {gb(runtime)}" if runtime else "")
        raise InsufficientMemoryError(
            f"{what} needs about {gb(need)} ({parts}) but this machine has {gb(available)} of "
            f"{where}; use a smaller pool or a machine with more memory")


def host_to_device(x: np.ndarray, name: str, dtype: Any = None) -> Any:
    """A host array on the default device (as `dtype`, else its default float dtype), in
    chunks; refused up front, in one line, if the device copy cannot fit."""
    import jax

    dtype = jax.dtypes.canonicalize_dtype(x.dtype if dtype is None else dtype)
    check_fits(f"`{name}` ({x.dtype}{list(x.shape)}) on the device", x.size * dtype.itemsize,
               runtime=0)
    return to_device(x, dtype)


# ----------------------------------------------------------------------------------------------
# host -> device in chunks


def _writer():
    import jax
    import jax.numpy as jnp
    from jax import lax

    def write(buf, chunk, start):
        zero = jnp.zeros((), start.dtype)  # one index type, with or without x64
        return lax.dynamic_update_slice(buf, chunk, (start,) + (zero,) * (buf.ndim - 1))

    return jax.jit(write, donate_argnums=0)


_WRITE = None


def _chunk_rows(row_bytes: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // max(row_bytes, 1))


def _fill(shape: tuple, dtype: Any, chunks) -> Any:
    """A device array of `shape` / `dtype` filled in place from (start row, host chunk) pairs."""
    global _WRITE
    import jax
    import jax.numpy as jnp

    if _WRITE is None:
        _WRITE = _writer()
    dtype = jax.dtypes.canonicalize_dtype(dtype)  # float64 is float32 unless x64 is on
    buf = jnp.zeros(shape, dtype)
    for start, chunk in chunks:
        buf = _WRITE(buf, np.ascontiguousarray(chunk, dtype=dtype), np.int32(start))
        # The copy may read the host chunk asynchronously (on CPU without copying it first):
        # wait before the chunk's memory is reused or released.
        buf.block_until_ready()
    return buf


def to_device(x: np.ndarray, dtype: Any = None, chunk_bytes: Optional[int] = None) -> Any:
    """`x` on the default device as `dtype`, copied in row chunks (see the module docstring).

    A memory-mapped `x` has each chunk's pages released after the copy, so its
    file is never resident as a whole either.
    """
    import jax

    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    dtype = np.dtype(x.dtype if dtype is None else dtype)
    if x.ndim == 0 or x.size * max(x.itemsize, dtype.itemsize) <= 2 * chunk_bytes:
        return jax.device_put(np.asarray(x, dtype=dtype))
    row_bytes = int(np.prod(x.shape[1:])) * x.itemsize
    step = _chunk_rows(int(np.prod(x.shape[1:])) * max(x.itemsize, dtype.itemsize), chunk_bytes)
    release = _releaser(x, row_bytes)

    def chunks():
        for start in range(0, x.shape[0], step):
            yield start, x[start:start + step]
            release(start, min(start + step, x.shape[0]))

    return _fill(x.shape, dtype, chunks())


def normalize_rows_in_place(x: Any, chunk_bytes: Optional[int] = None) -> Any:
    """`kernels.l2_normalize(x)` for a 2-D device array, written over `x` (donated: do not
    use `x` afterwards), one row chunk at a time, so no second pool-sized buffer exists.

    Each row is normalized exactly once, by the same formula the rules apply for
    ``normalize=True``.
    """
    global _NORMALIZE
    import jax

    if _NORMALIZE is None:
        _NORMALIZE = jax.jit(_normalize_chunks, static_argnames="rows", donate_argnums=0)
    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    rows = min(x.shape[0], _chunk_rows(x.shape[1] * x.dtype.itemsize, chunk_bytes))
    return _NORMALIZE(x, rows=max(rows, 1))


_NORMALIZE = None


def _normalize_chunks(x, *, rows: int):
    from jax import lax

    from activeft_jax.kernels import l2_normalize

    n = x.shape[0]
    full = n // rows

    def body(i, x):
        start = i * rows
        blk = lax.dynamic_slice_in_dim(x, start, rows)
        return lax.dynamic_update_slice_in_dim(x, l2_normalize(blk), start, 0)

    x = lax.fori_loop(0, full, body, x)
    if full * rows < n:  # the tail (static), never a row twice
        x = x.at[full * rows:].set(l2_normalize(x[full * rows:]))
    return x


def _releaser(x: np.ndarray, row_bytes: int):
    """release(start, stop): drops the resident pages of rows [start, stop) of a memory-mapped `x`.

    A no-op for an array that is not a C-contiguous view of a memory map.
    """
    import mmap

    mm = getattr(x, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not x.flags.c_contiguous:
        return lambda start, stop: None
    try:
        rel = x.ctypes.data - np.frombuffer(mm, np.uint8).ctypes.data  # x's offset in the map
    except (TypeError, ValueError):
        return lambda start, stop: None
    page = mmap.PAGESIZE

    def release(start: int, stop: int) -> None:
        lo = (rel + start * row_bytes) // page * page
        hi = (rel + stop * row_bytes) // page * page
        if hi > lo:
            try:
                mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError):
                pass

    return release


# ----------------------------------------------------------------------------------------------
# .npy / .npz headers and streaming


class NpyHeader(NamedTuple):
    """What a ``.npy`` header says: the array's shape, dtype and memory order."""

    shape: tuple
    dtype: np.dtype
    fortran_order: bool


def read_npy_header(f: BinaryIO) -> NpyHeader:
    """The header of the ``.npy`` stream `f` (left at the first data byte); ValueError if it is not one."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        shape, fortran, dtype = np.lib.format._read_array_header(f, version)  # 3.0
    return NpyHeader(tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran))


def stream_npy(f: BinaryIO, header: NpyHeader, dtype: Any,
               chunk_bytes: Optional[int] = None) -> Any:
    """Reads the C-ordered array after `header` from `f` in row chunks onto the device as `dtype`.

    Only one chunk is ever on the host. ValueError if the stream ends early.
    """
    import jax

    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    shape, src = header.shape, header.dtype
    dtype = np.dtype(dtype)
    row_items = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if len(shape) == 0 or shape[0] * row_items * max(src.itemsize, dtype.itemsize) <= 2 * chunk_bytes:
        count = int(np.prod(shape))
        data = f.read(count * src.itemsize)
        if len(data) != count * src.itemsize:
            raise ValueError(f"the file ends early ({len(data)} of {count * src.itemsize} data bytes)")
        return jax.device_put(np.frombuffer(data, src).reshape(shape).astype(dtype))
    step = _chunk_rows(row_items * max(src.itemsize, dtype.itemsize), chunk_bytes)
    host = np.empty((step, row_items), src)

    def chunks():
        for start in range(0, shape[0], step):
            rows = min(step, shape[0] - start)
            view = memoryview(host[:rows]).cast("B")
            got = 0
            while got < view.nbytes:
                n = f.readinto(view[got:])
                if not n:
                    raise ValueError(f"the file ends early (row {start + got // (row_items * src.itemsize)} "
                                     f"of {shape[0]})")
                got += n
            yield start, host[:rows].reshape((rows,) + shape[1:])

    return _fill(shape, dtype, chunks())
