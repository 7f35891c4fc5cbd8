"""Test configuration: 8 CPU devices (for the sharding tests) and strict rank promotion."""

import os

# Must happen before jax is imported anywhere: the sharding tests split the
# pool over 8 host devices; every other test runs on device 0 as usual.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags = (_flags + " --xla_force_host_platform_device_count=8").strip()
# Most tests are bound by compilation, not by running: LLVM's optimisation level 0
# makes XLA:CPU compile ~20-25% faster (measured on tests/test_rules.py and
# tests/test_activeft.py). XLA's own HLO passes (fusion, layout, algebraic
# simplification) still run, so the programs are the ones users get, with plainer
# machine code. ACTIVEFT_TESTS_FULL_OPT=1 (or an explicit level in XLA_FLAGS) runs
# the suite at the default level instead.
if "xla_backend_optimization_level" not in _flags and os.environ.get(
    "ACTIVEFT_TESTS_FULL_OPT", ""
) not in ("1", "true", "yes"):
    _flags = (_flags + " --xla_backend_optimization_level=0").strip()
os.environ["XLA_FLAGS"] = _flags

# One persistent compilation cache for this session, fresh each run: the tests that
# start processes (jobs killed and resumed, CLI calls, several hosts) compile the same
# programs in each, and tests that build identical programs anew (or after the
# per-module cache clearing below) load them instead of compiling again. Removed at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _cache_dir = tempfile.mkdtemp(prefix="activeft-jax-tests-xla-cache-")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """Runs a test under float32 and under float64 (x64 switched on only inside it)."""
    with jax.enable_x64(request.param == "float64"):
        yield request.param


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops every compiled program after each test module.

    Each XLA:CPU executable keeps memory mappings for its JIT-compiled code; the
    whole suite compiles thousands of programs, and past the kernel's
    vm.max_map_count (65530 by default) the next compilation segfaults.
    """
    yield
    jax.clear_caches()
