"""Runs every ```python block of README.md and docs/*.md as written, and checks its comments.

The blocks use names that the prose around them defines (`pool`, `target`, `module`, ...).
Each block here gets a small setup that defines them (random data, a tiny Flax model), runs
unchanged after it, and is followed by asserts of what its comments say: shapes, "bit for
bit", "never picked", "the same picks on every process". The blocks that join several
processes with `jax.distributed.initialize` run as two local processes (the bare call
finds them through SLURM's variables, set here as a launcher would), and their picks are
compared across the processes and with a one-process run.

    .venv/bin/python experiments/check_docs.py          # or: make check-docs (~5 minutes)
    .venv/bin/python experiments/check_docs.py --only loop.md

A block without an entry here (a new block, or one whose first line changed) fails: add its
setup. Nothing is downloaded: the models load from the installed weight packages and the
digits data set is built offline into a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# ---- setups: the names the prose defines ----------------------------------------------

POOL = """
import numpy as np, jax, jax.numpy as jnp
rng = np.random.default_rng(0)
pool = rng.standard_normal((2000, 32)).astype(np.float32)
target = rng.standard_normal((20, 32)).astype(np.float32)
"""

MLP = """
import numpy as np, jax, jax.numpy as jnp, optax
from flax import linen as nn

class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(16)(x))
        x = nn.tanh(nn.Dense(16)(x))
        return nn.Dense(4)(x)

rng = np.random.default_rng(0)
N, D = 200, 8
pool_x = rng.standard_normal((N, D)).astype(np.float32)
pool_y = (pool_x[:, 0] > 0).astype(np.int32) + 2 * (pool_x[:, 1] > 0).astype(np.int32)
target_x = rng.standard_normal((40, D)).astype(np.float32)
target_y = (target_x[:, 0] > 0).astype(np.int32) + 2 * (target_x[:, 1] > 0).astype(np.int32)
module = MLP()
variables = module.init(jax.random.key(0), pool_x[:1])
key = jax.random.key(1)
"""

DIGITS_CNN = """
import numpy as np, jax, jax.numpy as jnp
from flax import linen as nn

class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x, jnp.float32) / 16.0
        x = nn.relu(nn.Conv(8, (3, 3))(x)).reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(10)(x)

module = CNN()
variables = module.init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.uint8))
"""

# Two processes of four CPU devices each; the pool's rows are split between them.
PROCESSES = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
import numpy as np
_rng = np.random.default_rng(0)
_POOL = _rng.standard_normal((2000, 32)).astype(np.float32)
target = _rng.standard_normal((20, 32)).astype(np.float32)
def load_my_rows(i):
    return _POOL[i * 1000:(i + 1) * 1000]
"""

# What each process prints: its picks, compared across processes and with one process.
PICKS_OUT = """
import json as _json
print("PICKS", _json.dumps(np.asarray(sel.indices.addressable_data(0)).tolist()))
jax.distributed.shutdown()
"""

ONE_PROCESS_VTL = """
import json, numpy as np, activeft_jax as aft
rng = np.random.default_rng(0)
pool = rng.standard_normal((2000, 32)).astype(np.float32)
target = rng.standard_normal((20, 32)).astype(np.float32)
print("PICKS", json.dumps(np.asarray(aft.select("vtl", pool, target, k=100).indices).tolist()))
"""

SELECT_CHECKS = """
assert sel.indices.dtype == jnp.int32 and sel.indices.shape == (50,)
assert sel.values.shape == (50,) and len(set(np.asarray(sel.indices).tolist())) == 50
assert sweep.indices.shape == (len(noise_grid), 50)
"""

# (file, the first line(s) of the block) -> (setup, checks, mode); mode "one" runs the block in
# one process, "slurm" and "argv" in two (SLURM variables, or the process id as argv[1]).
BLOCKS = {
    ("README.md", "import jax, activeft_jax as aft"): (
        POOL + """
noise_grid = jnp.array([0.1, 0.5, 1.0], jnp.float32)
prompts = rng.standard_normal((5, 32)).astype(np.float32)
features = rng.standard_normal((2000, 32)).astype(np.float32)
""",
        SELECT_CHECKS + """
assert sift.indices.shape == (5, 10)
assert fit.selection.indices.shape == (1000,) and fit.losses.shape == (300,)
assert grid.selection.indices.shape == (3, 4, 1000) and grid.losses.shape == (3, 4, 300)
""", "one"),
    ("README.md", "labelled = jnp.zeros((N,), bool)"): (
        MLP + """
import activeft_jax as aft
pool, target = pool_x, target_x
""",
        """
assert sel.indices.shape == (10,) and out.picks.shape == (10,)
assert bool(state.labelled[out.picks].all()) and int(state.labelled.sum()) == 10
""", "one"),
    ("README.md", "jax.distributed.initialize()"): (
        PROCESSES + """
import activeft_jax as aft
from jax.sharding import NamedSharding, PartitionSpec as P
local_rows = load_my_rows(int(os.environ["SLURM_PROCID"]))
""", PICKS_OUT, "slurm"),
    ("activeft.md", "fit = aft.selection.fit_activeft(features, k=1000, key=jax.random.key(0))"): (
        """
import numpy as np, jax, jax.numpy as jnp, optax
import activeft_jax as aft
from activeft_jax.selection import fit_activeft
rng = np.random.default_rng(0)
features = rng.standard_normal((100_000, 4)).astype(np.float32)  # batch_size=100_000 <= N
B = 20
key = jax.random.key(0)
init = np.arange(0, 2000, 2)[:1000]
labelled = np.arange(10)
mask = np.zeros(100_000, bool)
mask[:50_000] = True
params = rng.standard_normal((B, 4)).astype(np.float32)
unit_features = features / np.linalg.norm(features, axis=1, keepdims=True)
""",
        """
ref = fit_activeft(features, k=B, key=key)
assert fit.selection.indices.shape == (B,) and fit.losses.shape == (300,)
assert fit.prototypes.shape == (B, 4) and fit.init_indices.shape == (B,)
assert float(jnp.abs(jnp.linalg.norm(fit.prototypes, axis=1) - 1).max()) < 1e-5
assert fit.recomputed.shape == (300,)
assert sweep.selection.indices.shape == (8, 4, B) and sweep.losses.shape == (8, 4, 300)
for a, b in zip(jax.tree.leaves(fit), jax.tree.leaves(ref)):   # "bit for bit"
    assert bool((jnp.asarray(a) == jnp.asarray(b)).all())
picked = np.asarray(fit_activeft(features, k=B, key=key, observed=labelled,
                                 candidates=mask).selection.indices)
assert not set(picked.tolist()) & set(labelled.tolist()) and mask[picked].all()
g = jax.grad(aft.selection.activeft_loss)(params, unit_features)
assert g.shape == params.shape and bool(jnp.isfinite(g).all())
""", "one"),
    ("embeddings.md", "from activeft_jax.models import load_minilm, load_smollm2"): (
        """
import jax
texts = ["The cat sat on the mat.", "JAX is a library for array computing.", "Hello world"]
""",
        """
import numpy as np
assert emb.dtype == np.float32 and emb.shape == (3, 384)
assert np.allclose(np.linalg.norm(np.asarray(emb), axis=1), 1, atol=1e-5)
scores = lm.score(texts)
assert len(scores) == 3 and all({"tokens", "nll", "bpb"} <= set(s) for s in scores)
e = lm.embed(texts)
assert e.dtype == np.float32 and e.shape == (3, 576)
assert jax.tree.structure(grads) == jax.tree.structure(lm.params)
""", "one"),
    ("embeddings.md", "import activeft_jax as aft"): (
        """
import numpy as np, jax
from flax import linen as nn

class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(3, (3, 3))(x))
        return nn.relu(nn.Conv(4, (3, 3), strides=(2, 2))(x))

class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = Block()(x).reshape(x.shape[0], -1)
        x = nn.tanh(nn.Dense(16)(x))
        x = nn.tanh(nn.Dense(6)(x))   # H = 6
        return nn.Dense(3)(x)         # C = 3 outputs

module = Net()
x = np.random.default_rng(0).standard_normal((7, 8, 8, 1)).astype(np.float32)
variables = module.init(jax.random.key(0), x[:1])
key = jax.random.key(1)
""",
        """
n, H, C = 7, 6, 3
assert aft.embeddings.last_layer(module, variables, x).shape == (n, H)
assert aft.embeddings.last_layer(module, variables, x, layer="Block_0/Conv_1").shape == (n, 64)
assert aft.embeddings.loss_gradient(module, variables, x).shape == (n, (H + 1) * C)
assert aft.embeddings.loss_gradient(module, variables, x, mode="expected").shape == (
    n, C * (H + 1) * C)
assert aft.embeddings.ntk(module.apply, variables, x, wrt=["Dense_2"]).shape == (
    n, C * (H + 1) * C)
assert phi.shape == (n, C * 512)
""", "one"),
    ("loop.md", "import activeft_jax as aft"): (
        MLP + """
def train(variables, x, y):
    def loss(v):
        return optax.softmax_cross_entropy_with_integer_labels(module.apply(v, x), y).mean()
    return jax.tree.map(lambda p, g: p - 0.1 * g, variables, jax.grad(loss)(variables))
""",
        """
observed = np.asarray(loader.observed)
assert observed.shape == (80,) and len(set(observed.tolist())) == 80
""", "one"),
    ("loop.md", "import jax, optax"): (
        MLP,
        """
assert out.picks.shape == (10,) and outs.picks.shape == (5, 10)
assert int(state.labelled.sum()) == 100   # 5 rounds, then 5 more in one program
""", "one"),
    ("loop.md", "import optax"): (
        DIGITS_CNN,
        """
assert result.indices.shape == (50,) and len(set(result.indices.tolist())) == 50
assert len(result.metrics) == 5 and result.metrics[-1]["labeled"] == 50
""", "one"),
    ("rules.md", "import jax, activeft_jax as aft"): (
        POOL + "noise_grid = jnp.array([0.1, 0.5, 1.0], jnp.float32)\n",
        SELECT_CHECKS, "one"),
    ("scaling.md", "import jax"): (
        """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
""" + POOL,
        """
assert jax.device_count() == 8 and sel.indices.shape == (100,)
assert sel.indices.sharding.is_fully_replicated
assert (np.asarray(sel.indices) == np.asarray(
    aft.select("vtl", np.asarray(pool), target, k=100, noise_std=1.0).indices)).all()
""", "one"),
    ("scaling.md", "import jax\nimport numpy as np"): (
        PROCESSES, PICKS_OUT, "slurm"),
    ("scaling.md", 'jax.config.update("jax_cpu_collectives_implementation", "gloo")'): (
        PROCESSES,
        """
import activeft_jax as aft
from jax.sharding import NamedSharding, PartitionSpec as P
mesh = jax.make_mesh((jax.device_count(),), ("data",))
pool = jax.make_array_from_process_local_data(
    NamedSharding(mesh, P("data", None)), load_my_rows(jax.process_index()))
sel = aft.select("vtl", pool, target, k=100)
""" + PICKS_OUT, "argv"),
    ("scaling.md", "labelled = jnp.zeros((N,), bool)"): (
        POOL + """
import activeft_jax as aft
N, k, rounds = 2000, 10, 4
""",
        """
assert int(labelled.sum()) == rounds * k
""", "one"),
    ("sift.md", "sel = aft.sift(pool, prompts, k=10, prefilter=200, lambda_=0.01)"): (
        """
import numpy as np
import activeft_jax as aft
rng = np.random.default_rng(0)
pool = rng.standard_normal((3000, 32)).astype(np.float32)
prompts = rng.standard_normal((4, 32)).astype(np.float32)
""",
        """
assert sel.indices.shape == sel.values.shape == (4, 10)
assert ada.indices.shape == (4, 10) and ada.steps.shape == (4,)
assert top.indices.shape == top.values.shape == (4, 200)
""", "one"),
}


def blocks(path: Path) -> list[str]:
    """The ```python blocks of a Markdown file, in order."""
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def entry(name: str, block: str):
    """The setup of a block: the entry of its file whose first line(s) begin it (the longest)."""
    found = [(len(first), value) for (file, first), value in BLOCKS.items()
             if file == name and block.startswith(first)]
    return max(found, key=lambda f: f[0])[1] if found else None


def run(script: str, workdir: Path, env: dict, args=()) -> subprocess.Popen:
    path = workdir / f"block_{abs(hash(script)) % 10**8}.py"
    path.write_text(script)
    return subprocess.Popen([sys.executable, str(path), *args], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def picks_of(output: str):
    found = [json.loads(line[6:]) for line in output.splitlines() if line.startswith("PICKS ")]
    return found[-1] if found else None


_ONE_PROCESS: dict = {}


def one_process_picks(workdir: Path, env: dict, timeout: float):
    """The picks the multi-process blocks' call gives in one process (run once)."""
    if workdir not in _ONE_PROCESS:
        single = subprocess.run([sys.executable, "-c", ONE_PROCESS_VTL], env=env, cwd=workdir,
                                capture_output=True, text=True, timeout=timeout)
        _ONE_PROCESS[workdir] = picks_of(single.stdout)
    return _ONE_PROCESS[workdir]


def check(name: str, block: str, workdir: Path, env: dict, timeout: float):
    """Runs one block; returns (ok, seconds, what went wrong)."""
    found = entry(name, block)
    if found is None:
        return False, 0.0, "no setup in experiments/check_docs.py for this block: add one"
    setup, checks, mode = found
    script = setup + "\n# ---- the block, as written ----\n" + block + "\n# ---- checks ----\n" + checks
    start = time.perf_counter()
    if mode == "one":
        procs = [run(script, workdir, env)]
    else:
        procs = []
        for pid in range(2):
            penv = dict(env)
            if mode == "slurm":  # what a SLURM launcher sets; jax.distributed reads it
                penv.update(SLURM_JOB_ID="1", SLURM_STEP_NODELIST="127.0.0.1",
                            SLURM_NTASKS="2", SLURM_PROCID=str(pid), SLURM_LOCALID=str(pid),
                            JAX_LOCAL_DEVICE_IDS="0,1,2,3")
            procs.append(run(script, workdir, penv, args=[str(pid)]))
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            return False, time.perf_counter() - start, f"timed out after {timeout:.0f} s"
        outputs.append(out)
        if proc.returncode != 0:
            for p in procs:
                p.kill()
            tail = "\n".join(out.strip().splitlines()[-6:])
            return False, time.perf_counter() - start, f"exit {proc.returncode}:\n{tail}"
    if mode != "one":
        picks = [picks_of(out) for out in outputs]
        expected = one_process_picks(workdir, env, timeout)
        if picks[0] is None or picks[0] != picks[1] or picks[0] != expected:
            return False, time.perf_counter() - start, (
                f"picks differ: process 0 {str(picks[0])[:60]}, process 1 "
                f"{str(picks[1])[:60]}, one process {str(expected)[:60]}")
    return True, time.perf_counter() - start, ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="check only the files whose name contains this")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per block")
    a = ap.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory(prefix="check_docs_") as tmp:
        workdir = Path(tmp)
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "ACTIVEFT_JAX_DATA": str(workdir / "tfds"),
               "PYTHONPATH": str(ROOT)}
        env.pop("XLA_FLAGS", None)
        for path in DOCS:
            if a.only and a.only not in path.name:
                continue
            for i, block in enumerate(blocks(path), 1):
                ok, seconds, why = check(path.name, block, workdir, env, a.timeout)
                failures += not ok
                first = block.splitlines()[0][:60]
                print(f"{'ok  ' if ok else 'FAIL'} {path.name} block {i} ({seconds:5.1f} s): {first}",
                      flush=True)
                if why:
                    print("     " + why.replace("\n", "\n     "), flush=True)
    print(f"{failures} block(s) failed" if failures else "every block ran and its checks held")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
