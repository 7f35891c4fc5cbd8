"""The internal core every sub-package may import: exact matmuls, row chunking, sharded pools.

`retrieval`, `selection`, `gp`, `kernels` and `embeddings` share these helpers;
this module imports nothing else of the library, so it can never be part of an
import cycle.

Sharded pools: `layout_of(pool)` says over which devices a pool's N axis is
split; `on_shards` runs a rule's local code on each device's block under
`shard_map`, and `Shards` gives that code the few operations that cross devices
(a picked row, an argmax, a top-k, a sum), each moving only small results. On
one device they are the plain operations, so single-device results never change.

Row chunking: passes over a large [N, d] array with static shapes and no padding copy.

A pass over N rows in chunks of C rows runs ceil(N / C) chunks; the last one
starts at N − C (it overlaps the one before), so every chunk has the same
static shape and the array is never padded or copied. `lo[i]` is the first
row of chunk i that no earlier chunk covered: rows below it are masked where a
result is accumulated, and dropped where per-row results are reassembled.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "PLAIN",
    "Chunks",
    "Layout",
    "MissingExtraError",
    "Shards",
    "concrete",
    "default_chunk_rows",
    "is_traced",
    "layout_of",
    "mesh_context",
    "mesh_scope",
    "map_rows",
    "matmul",
    "on_shards",
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


def as_concrete_array(x: Any, dtype: Any = None, shape: Any = None) -> jax.Array:
    """`jnp.asarray(x, dtype)` (reshaped to `shape`), kept concrete inside someone's trace.

    Inside a user's jit, JAX turns a NumPy array or a concrete array closed over into a
    tracer as soon as an operation touches it, and the value checks (which skip tracers)
    would then never run on it. Converted here under `jax.ensure_compile_time_eval`, it
    stays concrete. A tracer is converted as usual.
    """
    with contextlib.nullcontext() if is_traced(x) else jax.ensure_compile_time_eval():
        x = jnp.asarray(x, dtype)
        return x if shape is None else jnp.reshape(x, shape)


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


# ----------------------------------------------------------------------------- sharded pools


class Layout(NamedTuple):
    """Where the N axis of a pool lives (static, hashable).

    Attributes:
      mesh: the device mesh (a `Mesh`, or an `AbstractMesh` while tracing), or
        None when the pool is on one device (or the same on every device).
      axes: the mesh axes the pool's N axis is split over, in order.
    """

    mesh: Any = None
    axes: tuple = ()

    @property
    def sharded(self) -> bool:
        """Whether the pool is split over more than one device."""
        return self.mesh is not None

    @property
    def num_shards(self) -> int:
        """D, the number of blocks of N (1 on one device)."""
        if self.mesh is None:
            return 1
        return int(np.prod([self.mesh.shape[a] for a in self.axes]))

    @property
    def explicit(self) -> bool:
        """Whether the mesh axes are Explicit (`jax.make_mesh`'s default)."""
        if self.mesh is None:
            return False
        types = dict(zip(self.mesh.axis_names, self.mesh.axis_types))
        return any(str(types[a]).endswith("Explicit") for a in self.axes)

    def spec(self) -> Any:
        """The PartitionSpec of an array whose leading axis is N (other axes whole)."""
        from jax.sharding import PartitionSpec

        return PartitionSpec(self.axes)


PLAIN = Layout()


def _spec_axes(entry) -> tuple:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def layout_of(pool: Any) -> Layout:
    """The `Layout` of a pool: split over some axes of its mesh, or `PLAIN`.

    A concrete array tells its sharding, a tracer its type: with Explicit mesh
    axes the split is in the type; with Auto axes a traced pool's type tells
    the mesh but not the split, and the pool is then taken as split over all of
    the mesh's axes (a pool split over fewer of them, or replicated, reaches
    that layout by slicing alone). A pool on one device, replicated on a
    concrete mesh, or whose N is not divisible by the number of blocks is
    `PLAIN`: computed as on one device.
    """
    if is_traced(pool):
        try:
            sharding = jax.typeof(pool).sharding
        except Exception:  # noqa: BLE001 - no sharding in the type
            return PLAIN
    else:
        sharding = getattr(pool, "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or not getattr(mesh, "axis_names", ()):
        return PLAIN
    spec = tuple(getattr(sharding, "spec", ()) or ())
    axes = _spec_axes(spec[0] if spec else None)
    types = dict(zip(mesh.axis_names, mesh.axis_types))
    if is_traced(pool) and not axes and not any(str(t).endswith("Explicit")
                                                 for t in types.values()):
        axes = tuple(mesh.axis_names)  # Auto axes: the split is not in the type
    if not axes:
        return PLAIN
    layout = Layout(mesh, axes)
    if pool.shape[0] % layout.num_shards:
        return PLAIN
    if layout.num_shards <= 1 and not layout.explicit:
        return PLAIN  # (with Explicit axes even one block runs under shard_map: its type is split)
    return layout


def concrete(fn: Callable, *args):
    """`fn(*args)` on concrete arrays, as concrete results even inside someone's trace.

    Called at top level, `fn` (a jitted reduction) just runs: this also works for
    arrays that span several processes. Inside a trace (concrete arrays closed
    over by a user's jit) it runs again under `jax.ensure_compile_time_eval`.
    """
    with mesh_context(*args):
        out = fn(*args)
        if any(is_traced(leaf) for leaf in jax.tree_util.tree_leaves(out)):
            with jax.ensure_compile_time_eval():
                out = fn(*args)
    return out


def mesh_context(*arrays: Any):
    """A context that sets the mesh of the first concrete array on an Explicit-axes mesh.

    Computations on such arrays that create new split arrays need the mesh in
    context (`jax.set_mesh`); with Auto axes, one device or tracers this is a no-op.
    """
    for x in arrays:
        if x is None or is_traced(x):
            continue
        mesh = getattr(getattr(x, "sharding", None), "mesh", None)
        types = getattr(mesh, "axis_types", ())
        if mesh is not None and any(str(t).endswith("Explicit") for t in types):
            try:
                return jax.set_mesh(mesh)
            except ValueError:  # inside someone's jit: set_mesh is not allowed there
                break
    return contextlib.nullcontext()


def mesh_scope(tree: Any):
    """While tracing: a context with the Explicit-axes mesh of the first array in `tree`.

    New arrays made inside (zeros, iota) then carry the same mesh as the inputs,
    which Explicit sharding requires of every operation that mixes them.
    """
    for x in jax.tree_util.tree_leaves(tree):
        try:
            mesh = jax.typeof(x).sharding.mesh
        except Exception:  # noqa: BLE001 - not an array
            continue
        types = getattr(mesh, "axis_types", ())
        if getattr(mesh, "axis_names", ()) and any(str(t).endswith("Explicit") for t in types):
            return jax.sharding.use_abstract_mesh(mesh)
    return contextlib.nullcontext()


def on_shards(layout: Layout, fn: Callable, in_specs: tuple, *args, out_specs: Any = None):
    """`fn(*args)` on one device, or under `shard_map` over the pool's devices.

    `in_specs` holds one entry per argument: a pytree prefix of markers, "pool"
    for arrays whose leading axis is the pool's N (split over the devices) and
    None for arrays that are the same everywhere. `fn` runs on the local blocks;
    its results are replicated unless `out_specs` (a prefix of markers for the
    result) marks some as "pool" (per-device blocks of an [N, ...] array, e.g. a
    state that stays split between calls). With Explicit mesh axes, arguments
    are first resharded to those layouts (a no-op for a pool already split that way).
    """
    if not layout.sharded:
        with mesh_scope(args):
            return fn(*args)
    from jax.sharding import NamedSharding, PartitionSpec

    def to_spec(marker):
        return layout.spec() if marker == "pool" else PartitionSpec()

    is_marker = lambda m: m is None or isinstance(m, str)  # noqa: E731
    specs = jax.tree_util.tree_map(to_spec, tuple(in_specs), is_leaf=is_marker)
    outs = PartitionSpec() if out_specs is None else jax.tree_util.tree_map(
        to_spec, out_specs, is_leaf=is_marker)
    if layout.explicit:
        def place(spec, sub):
            sharding = NamedSharding(layout.mesh, spec)
            return jax.tree_util.tree_map(lambda a: jax.sharding.reshard(a, sharding), sub)

        args = tuple(jax.tree_util.tree_map(place, sp, a,
                                            is_leaf=lambda x: isinstance(x, PartitionSpec))
                     for sp, a in zip(specs, args))
    mapped = jax.shard_map(fn, mesh=layout.mesh, in_specs=specs, out_specs=outs, check_vma=False)
    return mapped(*args)


class Shards:
    """Cross-shard operations on the pool's N axis, from inside `on_shards`.

    On one device (`PLAIN`) each is the plain operation (indexing, `argmax`,
    `top_k`), so single-device numerics never change. On D devices the local
    block holds rows [offset, offset + n_local) and only small results cross
    devices: a picked row (d floats), (value, index) pairs, [D·k] top-k lists.
    """

    def __init__(self, layout: Layout, n_local: int):
        self.layout = layout
        self.n_local = int(n_local)
        self.sharded = layout.sharded
        self.n = self.n_local * layout.num_shards
        if self.sharded:
            self.offset = (lax.axis_index(layout.axes) * self.n_local).astype(jnp.int32)
        else:
            self.offset = jnp.zeros((), jnp.int32)

    # -- global row ids and reductions ---------------------------------------------------------

    def ids(self) -> jax.Array:
        """[n_local] int32 global pool index of every local row."""
        return self.offset + jnp.arange(self.n_local, dtype=jnp.int32)

    def psum(self, x):
        """Sum over the shards (identity on one device)."""
        return lax.psum(x, self.layout.axes) if self.sharded else x

    def sum(self, x: jax.Array) -> jax.Array:
        """Σ over the pool axis (axis 0) of a local [n_local, ...] array."""
        return self.psum(jnp.sum(x, axis=0))

    def max(self, x: jax.Array) -> jax.Array:
        """max over the pool axis (axis 0)."""
        m = jnp.max(x, axis=0)
        return lax.pmax(m, self.layout.axes) if self.sharded else m

    def count(self, mask: jax.Array) -> jax.Array:
        """Number of True entries of a local [n_local] mask, over the pool."""
        return self.psum(jnp.sum(mask, dtype=jnp.int32))

    def exclusive_count(self, mask: jax.Array) -> jax.Array:
        """True entries of the shards before this one (0 on one device)."""
        if not self.sharded:
            return jnp.zeros((), jnp.int32)
        counts = lax.all_gather(jnp.sum(mask, dtype=jnp.int32), self.layout.axes, tiled=False)
        me = lax.axis_index(self.layout.axes)
        return jnp.sum(jnp.where(jnp.arange(counts.shape[0]) < me, counts, 0))

    # -- reading rows ---------------------------------------------------------------------------

    def concat(self, x: jax.Array, axis: int) -> jax.Array:
        """Every shard's `x` concatenated along `axis`, in device (= pool) order."""
        if not self.sharded:
            return x
        return lax.all_gather(x, self.layout.axes, axis=axis, tiled=True)

    def row(self, x: jax.Array, index: jax.Array) -> jax.Array:
        """x[index] of a local [n_local, ...] array, `index` global: [...]."""
        if not self.sharded:
            return jnp.asarray(x)[index]  # a NumPy x cannot take a traced index
        if x.dtype == jnp.bool_:
            return self.row(x.astype(jnp.int32), index) > 0
        local = index - self.offset
        ok = (local >= 0) & (local < self.n_local)
        part = jnp.where(ok, x[jnp.clip(local, 0, self.n_local - 1)], jnp.zeros((), x.dtype))
        return self.psum(part)

    def values_at(self, index: jax.Array, *arrays: jax.Array) -> tuple:
        """(a[index] for a in arrays) for local [n_local] arrays, in one exchange."""
        if not self.sharded:
            return tuple(jnp.asarray(a)[index] for a in arrays)
        got = self.row(jnp.stack(arrays, axis=-1), index)
        return tuple(got[j] for j in range(len(arrays)))

    def rows(self, x: jax.Array, index: jax.Array) -> jax.Array:
        """x[index] for a batch of global indices [b] (out-of-range ones give 0 rows)."""
        if not self.sharded:
            return jnp.asarray(x)[index]
        if x.dtype == jnp.bool_:
            return self.rows(x.astype(jnp.int32), index) > 0
        local = index - self.offset
        ok = (local >= 0) & (local < self.n_local)
        got = x[jnp.clip(local, 0, self.n_local - 1)]
        ok = ok.reshape(ok.shape + (1,) * (got.ndim - ok.ndim))
        return self.psum(jnp.where(ok, got, jnp.zeros((), x.dtype)))

    def col(self, x: jax.Array, index: jax.Array) -> jax.Array:
        """x[:, index] of a local [r, n_local] array: [r]."""
        if not self.sharded:
            return x[:, index]
        local = index - self.offset
        ok = (local >= 0) & (local < self.n_local)
        part = jnp.where(ok, x[:, jnp.clip(local, 0, self.n_local - 1)], jnp.zeros((), x.dtype))
        return self.psum(part)

    def full(self, x: jax.Array) -> jax.Array:
        """This shard's block of a replicated [N, ...] array (e.g. random draws of the pool)."""
        if not self.sharded:
            return x
        return lax.dynamic_slice_in_dim(x, self.offset, self.n_local, axis=0)

    def mark(self, mask: jax.Array, index: jax.Array, value=True) -> jax.Array:
        """mask[index] = value for global indices (a scalar or [b]); others left alone."""
        if not self.sharded:
            return mask.at[index].set(value)
        local = index - self.offset
        ok = (local >= 0) & (local < self.n_local)
        return mask.at[jnp.where(ok, local, self.n_local)].set(value, mode="drop")

    # -- marked points (a [n_local] bool mask over the pool) -----------------------------------

    def nth_marked(self, mask: jax.Array, j: jax.Array) -> jax.Array:
        """Global index of the j-th True entry (0-based, in pool order): [] (or [b] for [b] j)."""
        pos = jnp.cumsum(mask.astype(jnp.int32)) - 1 + self.exclusive_count(mask)
        match = mask[None, :] & (pos[None, :] == jnp.atleast_1d(j)[:, None])
        found = jnp.sum(jnp.where(match, self.ids()[None, :], 0), axis=1)
        found = self.psum(found)
        return found.reshape(jnp.shape(j))

    def fold_marked(self, mask: jax.Array, fn: Callable, init):
        """`carry = fn(carry, index)` for every True entry, in pool order (a while loop).

        Returns (carry, number of marked points).
        """
        count = self.count(mask)
        if not self.sharded:
            order = jnp.nonzero(mask, size=self.n_local, fill_value=0)[0].astype(jnp.int32)

            def index_of(j):
                return order[j]
        else:
            def index_of(j):
                return self.nth_marked(mask, j)

        def body(st):
            j, carry = st
            return j + 1, fn(carry, index_of(j))

        _, carry = lax.while_loop(lambda st: st[0] < count, body, (jnp.zeros((), jnp.int32), init))
        return carry, count

    def ring(self, fn: Callable, init, *blocks: jax.Array):
        """`carry = fn(carry, offset, *blocks_of_shard)` over every shard's blocks, this one first.

        For passes over pairs of pool points (x local, y anywhere): the blocks
        travel around the devices with `ppermute`, one shard's block at a time,
        so no device ever holds more than two blocks. `offset` is the global
        index of the visiting block's first row. On one device: one call.
        """
        if not self.sharded:
            return fn(init, jnp.zeros((), jnp.int32), *blocks)
        d = self.layout.num_shards
        me = lax.axis_index(self.layout.axes)
        perm = [(i, (i + 1) % d) for i in range(d)]

        def body(s, st):
            carry, blks = st
            src = (me - s) % d
            carry = fn(carry, (src * self.n_local).astype(jnp.int32), *blks)
            blks = tuple(lax.ppermute(b, self.layout.axes, perm) for b in blks)
            return carry, blks

        carry, _ = lax.fori_loop(0, d, body, (init, tuple(blocks)))
        return carry

    # -- picking ------------------------------------------------------------------------------

    def argmax(self, scores: jax.Array) -> jax.Array:
        """Global index of the largest local score (ties: the lowest index): [] int32."""
        if not self.sharded:
            return jnp.argmax(scores).astype(jnp.int32)
        i = jnp.argmax(scores).astype(jnp.int32)
        v = scores[i]
        best = lax.pmax(v, self.layout.axes)
        return lax.pmin(jnp.where(v == best, i + self.offset, self.n), self.layout.axes)

    def top_k(self, scores: jax.Array, k: int):
        """The k largest along the last (pool) axis: (values [..., k], global indices [..., k]).

        Best first; ties go to the lower pool index, as `lax.top_k` on one device.
        """
        if not self.sharded:
            v, i = lax.top_k(scores, k)
            return v, i.astype(jnp.int32)
        kk = min(k, self.n_local)
        v, i = lax.top_k(scores, kk)
        i = i.astype(jnp.int32) + self.offset
        # In device order = ascending pool rows: a final top_k keeps the lower index on ties.
        last = scores.ndim - 1
        v = lax.all_gather(v, self.layout.axes, axis=last, tiled=True)
        i = lax.all_gather(i, self.layout.axes, axis=last, tiled=True)
        vals, pos = lax.top_k(v, k)
        return vals, jnp.take_along_axis(i, pos, axis=last)
