"""Shared by the benchmarks: seeded inputs, and the PyTorch reference `activeft` 0.1.1
run through its harness (reference/run_ref.py).

The reference lives in its own venv (`make ref-venv`); this module only starts
that interpreter as a subprocess, so activeft_jax never imports torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
HARNESS = os.path.join(HERE, "reference", "run_ref.py")
DEFAULT_REF_PYTHON = os.path.join(ROOT, ".ref-venv", "bin", "python")



def gaussian(seed: int, n: int, d: int, m: int, normalize: bool = False):
    """Standard normal float32 pool [n, d] and target [m, d]; unit rows with `normalize`."""
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal((n, d)).astype(np.float32)
    target = rng.standard_normal((m, d)).astype(np.float32)
    if normalize:
        pool /= np.linalg.norm(pool, axis=1, keepdims=True)
        target /= np.linalg.norm(target, axis=1, keepdims=True)
    return pool, target


# our strategy name -> the harness's
REFERENCE_NAME = {
    "itl": "ITL", "vtl": "VTL", "ctl": "CTL", "mmitl": "MMITL",
    "undirected_itl": "UndirectedITL", "undirected_vtl": "UndirectedVTL",
    "uncertainty": "UncertaintySampling", "cosine": "CosineSimilarity",
    "information_density": "InformationDensity", "max_entropy": "MaxEntropy",
    "maxdist": "MaxDist", "random": "Random",
}


def run_reference(ref_python: str, npz: str, strategy: str, k: int, noise_std: float, *,
                  mini_batch_size: str = "exact", seed: int = 0, threads: int | None = None,
                  check: bool = True) -> dict:
    """One harness run; returns its JSON record (indices, values, wall_time_s, error, ...).

    `strategy` is the harness's name (see REFERENCE_NAME). With `check`, a
    library error raises RuntimeError; otherwise it is returned in 'error'.
    """
    if not os.path.exists(ref_python):
        raise SystemExit(f"reference interpreter not found: {ref_python} (run `make ref-venv`)")
    cmd = [ref_python, HARNESS, "--npz", npz, "--strategy", strategy, "--k", str(k),
           "--noise-std", str(noise_std), "--mini-batch-size", str(mini_batch_size),
           "--seed", str(seed)]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = out.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{strategy}: the harness printed nothing; stderr: {out.stderr[-2000:]}")
    res = json.loads(lines[-1])
    if check and res["error"]:
        raise RuntimeError(f"{strategy}: {res['error']}")
    return res


OFFICIAL_HARNESS = os.path.join(HERE, "official", "run_official.py")
DEFAULT_OFFICIAL_REPO = os.environ.get("OFFICIAL_REPO", os.path.join(ROOT, "..", "ActiveFT_official"))


def run_official(ref_python: str, repo: str, npz: str, budget: int, *, seed: int = 0,
                 init_indices=None, anomaly: bool = True, threads: int | None = None,
                 extra: tuple = (), env: dict | None = None) -> dict:
    """One run of the official ActiveFT code through its harness; returns its JSON record.

    `init_indices` (a sequence of B pool indices) replaces the official random
    init; the record always carries `init_indices` and the per-iteration `losses`.
    `env` adds variables to the run's environment (e.g. MKL_CBWR).
    """
    if not os.path.exists(ref_python):
        raise SystemExit(f"interpreter not found: {ref_python} (run `make ref-venv`)")
    if not os.path.isdir(os.path.join(repo, "data_selection")):
        raise SystemExit(f"no ActiveFT checkout at {repo}: pass --official-repo (see "
                         "experiments/benchmarks/official/README.md)")
    cmd = [ref_python, OFFICIAL_HARNESS, "--repo", repo, "--features", npz, "--budget", str(budget),
           "--seed", str(seed), "--emit-init", "--emit-losses", *extra]
    if not anomaly:
        cmd.append("--no-anomaly")
    if threads:
        cmd += ["--threads", str(threads)]
    with tempfile.TemporaryDirectory() as tmp:
        if init_indices is not None:
            path = os.path.join(tmp, "init.json")
            with open(path, "w") as f:
                json.dump([int(i) for i in init_indices], f)
            cmd += ["--init-indices", path]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                             env=None if env is None else {**os.environ, **env})
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"official ActiveFT failed (exit {out.returncode}): {out.stderr[-2000:]}")
    return json.loads(lines[-1])


def run_worker(script: str, spec: dict) -> dict:
    """Runs `script --worker SPEC.json` in a fresh process of this interpreter; its last line's JSON."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        out = subprocess.run([sys.executable, os.path.abspath(script), "--worker", f.name],
                             capture_output=True, text=True, check=False)
    finally:
        os.remove(f.name)
    if out.returncode:
        raise RuntimeError(f"our worker failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def serve_worker(spec_path: str, fn) -> None:
    """The `--worker SPEC.json` side of `run_worker`: prints `fn(spec)` as one JSON line."""
    with open(spec_path) as f:
        print(json.dumps(fn(json.load(f))))


def write_report(out: str, results: dict, md: str) -> None:
    """Writes `out`.json (the raw results) and `out`.md (the tables), and prints the tables."""
    with open(out + ".json", "w") as f:
        json.dump(results, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(md)
    print("\n" + md)
    print(f"wrote {out}.json and .md")
