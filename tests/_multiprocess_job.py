"""One of two processes (4 CPU devices each) joined by `jax.distributed` on 127.0.0.1.

    python tests/_multiprocess_job.py PROCESS_ID PORT OUT.json

The pool is built from each process's own rows with `jax.make_array_from_process_local_data`
on an 8-device mesh spanning both processes; every strategy's picks (replicated on the
mesh) and the errors of bad input are written to OUT.json for the test to compare.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split()
     if "xla_force_host_platform_device_count" not in f]
    + ["--xla_force_host_platform_device_count=4"])
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from multiprocess_problem import RULES, problem, select  # noqa: E402


def main() -> None:
    pid, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=pid, local_device_ids=list(range(4)))
    import activeft_jax as aft

    assert jax.device_count() == 8 and jax.local_device_count() == 4
    mesh = jax.make_mesh((8,), ("data",))
    pool_np, target, observed_np = problem()
    half = pool_np.shape[0] // 2
    rows = slice(pid * half, (pid + 1) * half)

    def global_array(local):
        spec = PartitionSpec("data", *([None] * (local.ndim - 1)))
        return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), local)

    pool = global_array(pool_np[rows])
    observed = global_array(observed_np[rows])
    result = {"picks": {}, "replicated": {}, "errors": {}}
    for rule in RULES:
        sel = select(aft, rule, pool, target, observed)
        idx = sel.indices
        result["replicated"][rule] = bool(idx.sharding.is_fully_replicated
                                          and len(idx.sharding.device_set) == 8)
        result["picks"][rule] = np.asarray(idx.addressable_data(0)).tolist()
    sift = aft.sift(pool, target, k=4, prefilter=40, lambda_=0.05, observed=observed)
    result["picks"]["sift"] = np.asarray(sift.indices.addressable_data(0)).tolist()

    # Bad input: the same one-line ValueError on every process, no fetch of remote rows.
    bad = pool_np[rows].copy()
    if pid == 1:
        bad[3, 2] = np.nan   # global row half + 3
    cases = {
        "nan": lambda: aft.select("vtl", global_array(bad), target, k=3),
        "observed": lambda: aft.select("vtl", pool, target, k=3,
                                       observed=np.array([0, pool_np.shape[0]])),
        "candidates": lambda: aft.select("vtl", pool, target, k=5,
                                         candidates=global_array(np.arange(half) < 1)),
    }
    for name, call in cases.items():
        try:
            call()
            result["errors"][name] = None
        except ValueError as e:
            result["errors"][name] = str(e)
    with open(out, "w") as f:
        json.dump(result, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
