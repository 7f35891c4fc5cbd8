"""Peak resident memory of `select` against the pool's size (issue 16, "Memory").

Writes an [N, d] float32 pool (unit rows) and m targets as .npy files, then runs
each case in its own process and reads that process's peak RSS (``ru_maxrss``
from ``os.wait4``):

* ``cli``: ``activeft-jax select --strategy vtl --pool pool.npy --target ...``;
* ``cli-normalize``: the same with ``--normalize`` (the pool normalized in place);
* ``api-mmap``: ``aft.select("vtl", np.load(pool, mmap_mode="r"), target, ...)``;
* ``api-array``: the same with the pool read into a NumPy array first (the caller's
  copy stays alive, so the floor is two pools);

and compares it with the bound pool + state + 1 GB (state: N x (min(m, d) + 4)
floats, `activeft_jax.memory.select_estimate`).

    .venv/bin/python -m experiments.benchmarks.select_memory [--n 1000000] [--d 384]
        [--m 10] [--k 20] [--cases cli,cli-normalize,api-mmap,api-array] [--dir /tmp/x] [--code OLD_CHECKOUT]

Measured on the 24 GB, 2-core development machine (N = 10⁶, d = 384, m = 10,
k = 20: a 1.54 GB pool; bound pool + state + 1 GB = 2.59 GB), peak RSS:

    case        before (bc595b3, --code)   after
    cli         4.86 GB (3.16x)            2.20 GB (1.43x)
    api-mmap    3.72 GB (2.42x)            2.19 GB (1.42x)
    api-array   4.86 GB (3.17x)            3.72 GB (2.42x: the caller's array + the device copy)
    cli-normalize                          2.22 GB (1.44x; 3.48 GB, 2.26x, while the rule
                                           normalized a copy of the pool, before 3 Dec 2026)

Before, `np.load` held the pool on the host and `jnp.asarray` staged a second and a
third copy; now the pool is streamed from its file into one preallocated device
buffer in 64 MB chunks. A pool whose estimate exceeds MemAvailable is refused in
one line before anything is read (N = 5·10⁷: "needs about 80.60 GB ... but this
machine has 19.80 GB of memory available").

Writes experiments/results/select_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

_API = """
import sys, numpy as np
import activeft_jax as aft
pool = np.load(sys.argv[1], mmap_mode="r" if sys.argv[3] == "mmap" else None)
sel = aft.select("vtl", pool, np.load(sys.argv[2]), k=int(sys.argv[4]), noise_std=1.0)
print(np.asarray(sel.indices)[:3])
"""


def _write_problem(directory: str, n: int, d: int, m: int) -> tuple[str, str]:
    pool_path, target_path = os.path.join(directory, "pool.npy"), os.path.join(directory, "target.npy")
    rng = np.random.default_rng(0)
    pool = np.lib.format.open_memmap(pool_path, mode="w+", dtype=np.float32, shape=(n, d))
    for start in range(0, n, 100_000):
        x = rng.standard_normal((min(100_000, n - start), d), dtype=np.float32)
        pool[start:start + x.shape[0]] = x / np.linalg.norm(x, axis=1, keepdims=True)
    pool.flush()
    del pool
    t = rng.standard_normal((m, d), dtype=np.float32)
    np.save(target_path, t / np.linalg.norm(t, axis=1, keepdims=True))
    return pool_path, target_path


def _peak_rss(cmd: list[str], env: dict, cwd: str) -> tuple[int, float]:
    """(exit status, peak RSS in bytes) of `cmd` in its own process."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        print(err[-2000:], file=sys.stderr)
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB
    return proc.returncode, float(usage.ru_maxrss * scale)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--m", type=int, default=10)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--cases", default="cli,api-mmap,api-array")
    ap.add_argument("--dir", default=None, help="where to write the pool (default: a temporary dir)")
    ap.add_argument("--code", default=None,
                    help="PYTHONPATH of the measured processes (e.g. an older checkout's root, "
                    "for the 'before' numbers); default: this one")
    a = ap.parse_args()
    env = dict(os.environ)  # the measured code: --code, else this checkout
    env["PYTHONPATH"] = a.code or str(Path(__file__).resolve().parents[2])

    from activeft_jax.memory import RUNTIME_BYTES, select_estimate

    pool_bytes, state_bytes = select_estimate("vtl", a.n, a.d, a.m, a.k, 4)
    bound = pool_bytes + state_bytes + RUNTIME_BYTES
    rows = []
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        pool_path, target_path = _write_problem(tmp, a.n, a.d, a.m)
        for case in a.cases.split(","):
            if case.startswith("cli"):
                cmd = [sys.executable, "-m", "activeft_jax.cli", "select", "--strategy", "vtl",
                       "--pool", pool_path, "--target", target_path, "--k", str(a.k),
                       "--noise-std", "1.0", "--out", os.path.join(tmp, "sel.json")]
                cmd += ["--normalize"] if case == "cli-normalize" else []
            else:
                cmd = [sys.executable, "-c", _API, pool_path, target_path, case.split("-")[1],
                       str(a.k)]
            code, peak = _peak_rss(cmd, env, tmp)  # not run from a checkout
            rows.append({"case": case, "exit": code, "peak_rss_gb": round(peak / 1e9, 3),
                         "peak_over_pool": round(peak / pool_bytes, 2)})
            print(f"{case:10s} exit {code}  peak RSS {peak / 1e9:.2f} GB  "
                  f"({peak / pool_bytes:.2f}x the {pool_bytes / 1e9:.2f} GB pool; "
                  f"bound pool + state + 1 GB = {bound / 1e9:.2f} GB)", flush=True)
    from experiments.common import RESULTS

    os.makedirs(RESULTS, exist_ok=True)
    out = os.path.join(RESULTS, "select_memory.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"n": a.n, "d": a.d, "m": a.m, "k": a.k, "pool_gb": pool_bytes / 1e9,
                   "state_gb": state_bytes / 1e9, "bound_gb": bound / 1e9, "cases": rows}, f,
                  indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
