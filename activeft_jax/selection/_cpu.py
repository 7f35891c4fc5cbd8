"""CPU kernels for the passes of ActiveFT's step, built on first use (XLA FFI).

On CPU a pruned ActiveFT step reads its [N, B] bounds once and the features
at least once whatever it recomputes. XLA:CPU runs the loss's scatter-add of
the features into their prototypes at ~2 GFLOP/s, each feature's similarity to
its own prototype (a gathered dot product) at about half the speed of reading
the features, and checks the float16 bounds at about half the speed of reading
them. The kernels in `_cpu_kernels.cc` do these passes
(`tests/test_cpu_kernels.py`): `open_rows` gives the XLA form's booleans
exactly; `own_sims_kernel` sums each row's d products by
`prototypes._tree_reduce`'s halving tree, each product and sum rounded on its
own; `grad_rows` computes the loss's weights and adds the weighted rows in index
order, each product and sum rounded on its own, a serial float32 sum.
`own_sims_grad` does the last two in one pass, reading each feature once, for
the assignment a pruned step starts from, and `fix_grad` then sums again only
the gradient rows whose features changed prototype: the bits of `grad_rows`.
(XLA:CPU contracts a multiply and an add into a fused multiply-add in some
fusions and not in others, so its bits depend on how a program is fused, by an
ulp; the kernels' do not.) `refresh_pairs` replaces the blocks of matmuls that
rescore the features whose bounds failed: it scores, feature by feature, only
the pairs near opening (the feature's vector, in the L1 cache, with up to 8 of
its prototypes at a time), and leaves near ties to the matmul, so that the run
still equals the dense one bit for bit.

They are compiled once per (source, jaxlib, compiler, CPU) with the host's C++
compiler (`$CXX`, else `c++`/`g++`) against the FFI headers that jaxlib ships,
into `$ACTIVEFT_JAX_CACHE` (default `~/.cache/activeft_jax`), and registered
for the CPU platform. Without a compiler, or with `ACTIVEFT_JAX_CPU_KERNELS=0`,
the XLA forms run instead (a warning says why, once; none when switched off).
The two agree up to that ulp of round-off in the gradient, which on features
with near ties can, rarely, change a pick, as any other summation order would.
Accelerators always run the XLA forms: `lax.platform_dependent` chooses per
platform when the program is lowered.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["available", "usable", "on_cpu", "own_sims_kernel", "own_sims_grad", "grad_rows",
           "fix_grad", "open_rows", "refresh_pairs", "wide_rows", "amx_usable"]

_SOURCE = Path(__file__).with_name("_cpu_kernels.cc")
_TARGETS = {"afj_own_sims": "AfjOwnSims", "afj_own_sims_grad": "AfjOwnSimsGrad",
            "afj_grad_rows": "AfjGradRows", "afj_fix_grad": "AfjFixGrad",
            "afj_open_rows": "AfjOpenRows",
            "afj_refresh_pairs": "AfjRefreshPairs"}
_FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-std=c++17",
          "-shared", "-fPIC"]
_lock = threading.Lock()
_state: dict = {}


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and (path := shutil.which(name)):
            return path
    return None


def _cpu_fingerprint() -> str:
    # -march=native code must not run on another CPU (a cache on a shared home).
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))][:2]
        return "\n".join(lines)
    except OSError:
        return platform.processor() + platform.machine()


def _jaxlib_version() -> str:
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return ""


def _cache_dir() -> Path:
    root = os.environ.get("ACTIVEFT_JAX_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "activeft_jax"


def _build() -> Path:
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    include = jax.ffi.include_dir()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                             check=False).stdout.splitlines()[:1]
    key = hashlib.sha256("\0".join([
        _SOURCE.read_text(), jax.__version__, _jaxlib_version(), include,
        cxx, *version, *_FLAGS, _cpu_fingerprint(), sys.platform]).encode()).hexdigest()[:16]
    out = _cache_dir() / f"cpu_kernels_{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent processes (pytest workers) each
    # build their own file, and the rename is atomic.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        res = subprocess.run([cxx, *_FLAGS, f"-I{include}", str(_SOURCE), "-o", tmp],
                             capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"{cxx} failed:\n{res.stderr[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def available() -> bool:
    """Whether the CPU kernels are built and registered (building them on first call)."""
    with _lock:
        if "ok" in _state:
            return _state["ok"]
        ok, why = False, ""
        if os.environ.get("ACTIVEFT_JAX_CPU_KERNELS", "1").strip().lower() in ("0", "false",
                                                                             "no", "off"):
            why = None
        elif platform.machine().lower() not in ("x86_64", "amd64"):
            why = f"they are written for x86-64 (this is {platform.machine()})"
        else:
            try:
                lib = ctypes.cdll.LoadLibrary(str(_build()))
                for target, symbol in _TARGETS.items():
                    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                                platform="cpu")
                _state["lib"] = lib
                ok = True
            except Exception as e:  # noqa: BLE001 (any failure: the XLA forms run)
                why = f"{type(e).__name__}: {e}"
        if why:
            warnings.warn("activeft_jax: ActiveFT's CPU kernels are unavailable, so its passes "
                          f"over the features run as XLA programs (slower): {why}",
                          RuntimeWarning, stacklevel=3)
        _state["ok"] = ok
        return ok


def amx_usable() -> bool:
    """Whether `refresh_pairs` can send wide rows to the CPU's matrix unit: the kernels
    are built for a CPU with AMX (bfloat16 tiles) and the OS grants its use."""
    return available() and bool(_state["lib"].afj_amx_usable())


def usable(*arrays) -> bool:
    """Whether the kernels can take these arrays: built, and every array float32."""
    return all(x.dtype == jnp.float32 for x in arrays) and available()


def on_cpu(kernel, fallback, *args):
    """`kernel(*args)` when the program runs on CPU, `fallback(*args)` on other platforms.

    The caller checks `usable` first: `kernel` may call the kernels' FFI targets.
    """
    return lax.platform_dependent(*args, cpu=kernel, default=fallback)


def _call(target, out, *args, aliases=None, **attrs):
    # `aliases`: {input index: output index} updated in place; `attrs`: the kernel's attributes.
    return jax.ffi.ffi_call(target, out, vmap_method="sequential",
                            input_output_aliases=aliases)(*args, **attrs)


def own_sims_kernel(x, protos, c):
    """[M, d], [B, d], [M] -> [M]: x_i · protos_{c_i}, the d products summed by the halving
    tree of `prototypes._tree_reduce`, each product and sum rounded on its own (XLA
    contracts some of them into fused multiply-adds, by shape and fusion). Only on CPU,
    after `usable`."""
    return _call("afj_own_sims", jax.ShapeDtypeStruct(x.shape[:1], jnp.float32), x, protos,
                 c.astype(jnp.int32))


def _grad_out(x, b):
    m, d = x.shape
    return (jax.ShapeDtypeStruct((m,), jnp.float32), jax.ShapeDtypeStruct((b, d), jnp.float32))


def grad_rows(x, s, c, a, tau):
    """The loss's weights and gradient rows of an assignment: [M, d], [M], [M], [B], [] ->
    ([M], [B, d]).

    w_i = 1 / (1 + exp(−(a_{c_i} − s_i / τ))) (each operation rounded on its own) and
    g_k = Σ_{i: c_i = k} −(w_i / τ) x_i, rows added in index order as
    a serial float32 scatter (`zeros.at[c].add(...)` where XLA does not contract them) adds
    them. A row with c_i outside [0, B) adds nothing (its w_i
    takes the clamped index). Only on CPU, after `usable`.
    """
    return _call("afj_grad_rows", _grad_out(x, a.shape[0]), x, s, c.astype(jnp.int32), a,
                 jnp.asarray(tau, jnp.float32))


def own_sims_grad(x, protos, c, a, tau):
    """[M, d], [B, d], [M], [B], [] -> (s [M], w [M], g [B, d]): `own_sims_kernel` and then
    `grad_rows` of its s, in one pass over the features (each row is read once for
    both). Only on CPU, after `usable`."""
    m = x.shape[0]
    return _call("afj_own_sims_grad", (jax.ShapeDtypeStruct((m,), jnp.float32),
                                       *_grad_out(x, protos.shape[0])),
                 x, protos, c.astype(jnp.int32), a, jnp.asarray(tau, jnp.float32))


def fix_grad(x, s, c, a, tau, s0, c0, w0, g0):
    """`grad_rows(x, s, c, a, tau)`, given `own_sims_grad`'s (s0, w0, g0) of an earlier
    assignment c0 of the same rows (the same prototypes, a and τ): a row of g0 is kept
    when none of its rows changed prototype or similarity (bit for bit), the others
    are summed again. Same bits as `grad_rows`. g0 is updated in place. Only on CPU,
    after `usable`."""
    return _call("afj_fix_grad", _grad_out(x, a.shape[0]), x, s, c.astype(jnp.int32), a,
                 jnp.asarray(tau, jnp.float32), s0, c0.astype(jnp.int32), w0, g0,
                 aliases={8: 1})


def open_rows(gap, travel, limit, rowmin, turned, fallback):
    """[M, B] f16, [B], [M], [M], [] -> ([M] bool, [M]): whether any gap_ik − travel_k <= limit_i,
    and the rows' new `rowmin` (`prototypes._PairBounds`).

    On CPU the kernel: a row whose rowmin_i − turned clears limit_i (by a slack for
    round-off) has no open pair and is not read; a row read and not open gets
    rowmin_i = min_k(gap_ik − travel_k) + turned, an open one −inf. Elsewhere (or for
    other dtypes) `fallback(gap, travel, limit)`, which returns both.
    """
    if (gap.dtype != jnp.float16 or gap.ndim != 2
            or not usable(travel, limit, rowmin, turned)):
        return fallback(gap, travel, limit)
    n = gap.shape[0]
    return on_cpu(lambda g, t, l, r, p: _call(
        "afj_open_rows", (jax.ShapeDtypeStruct((n,), jnp.bool_),
                          jax.ShapeDtypeStruct((n,), jnp.float32)), g, t, l, r, p),
        lambda g, t, l, r, p: fallback(g, t, l), gap, travel, limit, rowmin, turned)


def wide_rows(b: int) -> int:
    """`refresh_pairs`' `amx_min` for B prototypes: a failing row with at least this many
    pairs to score goes to the CPU's matrix unit where it has one (Intel AMX), which
    scores all B of its pairs in about the time of B / 16 dot products
    (`ACTIVEFT_JAX_AMX=0`: never). Read when a fit is set up (`prototypes._Config`)."""
    if os.environ.get("ACTIVEFT_JAX_AMX", "1") == "0":
        return 0
    return max(8, b // 16)


def refresh_pairs(feats, protos, gap, travel, limit, own, assign, fail, *, horizon, margin,
                  acos_err, pad, amx_min=0):
    """The pair refresh of ActiveFT's failing rows (`afj_refresh_pairs`); CPU only, after `usable`.

    [N, d], [B, d], [N, B] f16, [B], [N], [N], [N] int32, [N] bool ->
    (gap [N, B] f16, updated in place; assign [N] int32; touched [N + pad] int32;
    ties [N + pad] int32; counts [2] int32; similarities computed [] float32). See the
    kernel. With `amx_min` > 0, on a CPU with a matrix unit (AMX) a failing row with at
    least that many pairs to score has all its B similarities approximated there and
    its bounds refreshed from them (the same decisions; see the kernel).
    """
    n, b = gap.shape
    out = (jax.ShapeDtypeStruct((n, b), jnp.float16), jax.ShapeDtypeStruct((n,), jnp.int32),
           jax.ShapeDtypeStruct((n + pad,), jnp.int32), jax.ShapeDtypeStruct((n + pad,), jnp.int32),
           jax.ShapeDtypeStruct((2,), jnp.int32), jax.ShapeDtypeStruct((), jnp.float32))
    return _call("afj_refresh_pairs", out, feats, protos, gap, travel, limit, own,
                 assign.astype(jnp.int32), fail, aliases={2: 0}, horizon=np.float32(horizon),
                 margin=np.float32(margin), acos_err=np.float32(acos_err),
                 amx_min=np.int64(amx_min))
