"""Per-device memory and collective traffic of selection on a pool split over 8 devices.

For VTL, ITL and ActiveFT at N = 10⁶, d = 128 (float32) the compiled program of one
device (`jax.jit(f).lower(...).compile().memory_analysis()`) is compared between the
pool on 1 device and the pool split over 8 host devices (a mesh from `jax.make_mesh`,
Explicit axes), and the collectives of the compiled program are listed with the bytes
each moves per execution (inside the greedy / optimizer loop: per step). Nothing is
allocated: the programs are compiled for abstract inputs with the given shardings.

    .venv/bin/python -m experiments.benchmarks.sharded_memory [--n 1000000] [--d 128]

Writes experiments/results/sharded_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

import activeft_jax as aft  # noqa: E402
from experiments.common import RESULTS  # noqa: E402

_BYTES = {"f32": 4, "f64": 8, "s32": 4, "u32": 4, "pred": 1, "s64": 8, "u8": 1, "bf16": 2}
_COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")


def _collectives(text: str) -> list[dict]:
    """Every collective of a compiled HLO module with the bytes of its result."""
    out = []
    for line in text.splitlines():
        for op in _COLLECTIVES:
            if re.search(rf"\b{op}(-start)?\(", line):
                shapes = re.findall(r"(\w+)\[([\d,]*)\]", line.split("=", 1)[1].split(op)[0])
                nbytes = sum(_BYTES.get(t, 4) * int(np.prod([int(v) for v in dims.split(",") if v]
                                                            or [1])) for t, dims in shapes)
                out.append({"op": op, "bytes": nbytes, "shape": " ".join(f"{t}[{d}]" for t, d in
                                                                          shapes)})
    return out


def _programs(n: int, d: int, k: int, b: int):
    rng = np.random.default_rng(0)
    target = jnp.asarray(rng.standard_normal((100, d)), jnp.float32)
    key = jax.random.key(0)
    return {
        "vtl": lambda pool: aft.select("vtl", pool, target, k=k, noise_std=1.0),
        "itl": lambda pool: aft.select("itl", pool, target, k=k, noise_std=1.0),
        "activeft": lambda pool: aft.selection.fit_activeft(pool, k=b, key=key, steps=5,
                                                            prune=False).selection,
    }


def measure(n: int, d: int, k: int, b: int) -> dict:
    results = {}
    for devices in (1, 8):
        mesh = jax.make_mesh((devices,), ("data",), devices=jax.devices()[:devices])
        spec = jax.ShapeDtypeStruct((n, d), jnp.float32,
                                    sharding=NamedSharding(mesh, PartitionSpec("data", None)))
        for name, fn in _programs(n, d, k, b).items():
            t0 = time.perf_counter()
            with jax.set_mesh(mesh):
                compiled = jax.jit(fn).lower(spec).compile()
            mem = compiled.memory_analysis()
            coll = _collectives(compiled.as_text())
            results.setdefault(name, {})[devices] = {
                "argument_mb": mem.argument_size_in_bytes / 2**20,
                "temp_mb": mem.temp_size_in_bytes / 2**20,
                "output_mb": mem.output_size_in_bytes / 2**20,
                "peak_mb": (mem.argument_size_in_bytes + mem.temp_size_in_bytes
                            + mem.output_size_in_bytes) / 2**20,
                "collectives": coll,
                "largest_all_gather_bytes": max([c["bytes"] for c in coll
                                                 if c["op"] == "all-gather"] or [0]),
                "compile_s": time.perf_counter() - t0,
            }
    return results


def report(results: dict, n: int, d: int, k: int, b: int) -> str:
    lines = [f"Per device, pool N = {n:,} × d = {d} float32 ({n * d * 4 / 2**20:.0f} MB), "
             f"from the compiled programs' memory_analysis() (CPU, 8 host devices):", "",
             "| program | 1 device: args + temp | 8 devices: args + temp (per device) | ratio | "
             "collectives per step (8 devices) | largest all-gather |",
             "|---|---:|---:|---:|---|---:|"]
    for name, r in results.items():
        one, eight = r[1], r[8]
        per_step = {}
        for c in eight["collectives"]:
            per_step[c["op"]] = per_step.get(c["op"], 0) + c["bytes"]
        coll = ", ".join(f"{op} {v / 1024:.1f} KB" for op, v in sorted(per_step.items())) or "none"
        lines.append(f"| {name} | {one['argument_mb'] + one['temp_mb']:.0f} MB | "
                     f"{eight['argument_mb'] + eight['temp_mb']:.0f} MB | "
                     f"{(one['argument_mb'] + one['temp_mb']) / (eight['argument_mb'] + eight['temp_mb']):.1f}× | "
                     f"{coll} | {eight['largest_all_gather_bytes']} B |")
    lines += ["", f"VTL / ITL: k = {k} picks, m = 100 targets; ActiveFT: B = {b} prototypes, "
              "5 dense steps. Collective bytes are those of the ops in the compiled program "
              "(each runs once per greedy step or optimizer step, or once at the start)."]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--b", type=int, default=1000)
    args = p.parse_args(argv)
    results = measure(args.n, args.d, args.k, args.b)
    md = report(results, args.n, args.d, args.k, args.b)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sharded_memory.json").write_text(json.dumps(results, indent=1))
    (RESULTS / "sharded_memory.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
