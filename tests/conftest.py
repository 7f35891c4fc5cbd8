"""Test configuration: 8 CPU devices (for the sharding tests), quick XLA:CPU code generation,
and strict rank promotion."""

import os
import subprocess
import sys

# The XLA_FLAGS the suite was started with, before the additions below (xdist workers and
# processes the tests start inherit the environment, so the first conftest records them).
os.environ.setdefault("ACTIVEFT_TESTS_USER_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
_USER_FLAGS = os.environ["ACTIVEFT_TESTS_USER_XLA_FLAGS"]
#: ACTIVEFT_TESTS_FULL_OPT=1 runs every test with XLA:CPU's default code generation.
_FULL_OPT = os.environ.get("ACTIVEFT_TESTS_FULL_OPT", "") in ("1", "true", "yes")

# Most tests are bound by compilation, not by running. Two flags make XLA:CPU compile
# faster; XLA's own HLO passes (fusion, layout, algebraic simplification) still run,
# so the HLO programs are the ones users get, with plainer machine code:
# - LLVM's optimisation level 0 (~20-25% faster on tests/test_rules.py and
#   tests/test_activeft.py with the default emitters);
# - XLA:CPU's loop emitters instead of its newer fusion emitters
#   (`--xla_cpu_use_fusion_emitters=false`): with level 0, tests/test_gp_posterior.py
#   and tests/test_kernels_surface.py take 58-60 s instead of 90 s (58 s of CPU
#   instead of 103 s); `make test` (2 workers, 2 cores) ran in 9:55 and, on a fresh
#   clone, 11:00, instead of 17-20 minutes (4 Dec 2026).
# Both are chosen only where the caller set neither (and the emitter flag only where
# this jaxlib knows it: XLA aborts on a flag it does not know).
# Tests marked `default_codegen` assert that two different programs agree bit for bit
# (a pruned ActiveFT fit and the dense one): that holds with XLA's default code
# generation, which users run, but not with these flags (with the loop emitters at level 0
# the two programs' gradients differ by an ulp from the second step, their losses from
# the third on; the same picks; which programs differ shifts with any change to their
# code). Those tests run in a process of their own with the caller's flags
# (`pytest_pyfunc_call` below); other tests that compare two programs' runs use
# `helpers.assert_same_run` (bit for bit there, within a few ulps under these flags).
# ACTIVEFT_TESTS_FULL_OPT=1 runs the whole suite with the default code generation instead.
if "ACTIVEFT_TESTS_FAST_FLAGS" not in os.environ:  # decided once, by the first conftest
    _fast = []
    if not _FULL_OPT and "xla_backend_optimization_level" not in _USER_FLAGS:
        _fast.append("--xla_backend_optimization_level=0")
    if not _FULL_OPT and "xla_cpu_use_fusion_emitters" not in _USER_FLAGS:
        _probe = subprocess.run(
            [sys.executable, "-c", "import jax; jax.devices()"], capture_output=True,
            env={**os.environ, "XLA_FLAGS": "--xla_cpu_use_fusion_emitters=false"})
        if _probe.returncode == 0:
            _fast.append("--xla_cpu_use_fusion_emitters=false")
    os.environ["ACTIVEFT_TESTS_FAST_FLAGS"] = " ".join(_fast)
_FAST_FLAGS = os.environ["ACTIVEFT_TESTS_FAST_FLAGS"].split()

# Must happen before jax is imported anywhere: the sharding tests split the
# pool over 8 host devices; every other test runs on device 0 as usual.
_flags = _USER_FLAGS
if "xla_force_host_platform_device_count" not in _flags:
    _flags = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ["XLA_FLAGS"] = " ".join([_flags, *_FAST_FLAGS]).strip()

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


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "default_codegen: asserts bit-for-bit agreement between two programs; runs "
        "in a process of its own with XLA's default code generation (tests/conftest.py)")


def pytest_pyfunc_call(pyfuncitem):
    """Runs a `default_codegen` test in a new pytest process without the suite's quick flags."""
    if not (pyfuncitem.get_closest_marker("default_codegen") and _FAST_FLAGS):
        return None
    env = {k: v for k, v in os.environ.items() if k != "ACTIVEFT_TESTS_FAST_FLAGS"}
    env.update(XLA_FLAGS=_USER_FLAGS, ACTIVEFT_TESTS_FULL_OPT="1")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q",
         pyfuncitem.nodeid], cwd=pyfuncitem.config.rootpath, env=env, capture_output=True,
        text=True)
    if out.returncode != 0:
        pytest.fail(f"{pyfuncitem.nodeid} with XLA's default code generation (rc "
                    f"{out.returncode}):\n{(out.stdout + out.stderr)[-6000:]}", pytrace=False)
    return True


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops every compiled program after each test module.

    Each XLA:CPU executable keeps memory mappings for its JIT-compiled code; the
    whole suite compiles thousands of programs, and past the kernel's
    vm.max_map_count (65530 by default) the next compilation segfaults.
    """
    yield
    jax.clear_caches()
