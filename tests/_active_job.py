"""A tiny active fine-tuning job, run as a subprocess by tests/test_training.py.

    python tests/_active_job.py WORKDIR OUT.json

runs `active_finetune` (VTL, 3 rounds of 8 picks, a small MLP on 2-D Gaussian
blobs) in WORKDIR and writes the result to OUT.json. The environment variable
AFT_JOB_KILL makes the run die at a chosen point, to test resumption:

* ``wait-embed:N``: on the N-th embedding call of this process, print
  ``EMBED N`` and sleep, so that the test can SIGKILL it mid-round;
* ``finalize:S``: SIGKILL itself while orbax writes checkpoint step S, after
  every file of the step is in its temporary directory but before the step
  is committed (renamed);
* ``metrics:L``: SIGKILL itself after the checkpoint of round L-1 is
  committed, just before metrics.jsonl is rewritten with L lines.

`problem()` is also imported by the in-process tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time

import jax
import numpy as np
import optax
from flax import linen as nn

CENTERS = np.array([[2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]], np.float32)


class MLP(nn.Module):
    hidden: int = 16
    classes: int = 4

    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(self.hidden)(x))
        x = nn.tanh(nn.Dense(self.hidden)(x))
        return nn.Dense(self.classes)(x)


def blobs(rng: np.random.Generator, n: int):
    y = rng.integers(0, len(CENTERS), n).astype(np.int32)
    x = CENTERS[y] + 0.9 * rng.standard_normal((n, 2)).astype(np.float32)
    return x.astype(np.float32), y


def problem(seed: int = 0, n_pool: int = 300, n_target: int = 80):
    """(model, variables, pool_x, pool_y, target_x, target_y)."""
    rng = np.random.default_rng(seed)
    pool_x, pool_y = blobs(rng, n_pool)
    target_x, target_y = blobs(rng, n_target)
    model = MLP()
    variables = model.init(jax.random.key(seed), pool_x[:1])
    return model, variables, pool_x, pool_y, target_x, target_y


JOB = dict(strategy="vtl", rounds=3, k=8, epochs=20, batch_size=16, seed=3,
           trainable="all", select_kwargs={"noise_std": 0.5})

_KILL = os.environ.get("AFT_JOB_KILL", "")
_EMBED_CALLS = 0
_MODEL = None


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def embed_fn(params, x):
    """Last-layer features, with the `wait-embed` hook."""
    global _EMBED_CALLS
    from activeft_jax.embeddings import last_layer

    _EMBED_CALLS += 1
    if _KILL == f"wait-embed:{_EMBED_CALLS}":
        print(f"EMBED {_EMBED_CALLS}", flush=True)
        time.sleep(120)  # the test kills us here
    return last_layer(_MODEL, params, x)


def _install_hooks() -> None:
    if _KILL.startswith("finalize:"):
        from orbax.checkpoint._src.path import atomicity

        step = _KILL.split(":")[1]
        original = atomicity.AtomicRenameTemporaryPath.finalize

        async def finalize(self, *args, **kwargs):
            if self.get_final().name == step:
                _die()
            return await original(self, *args, **kwargs)

        atomicity.AtomicRenameTemporaryPath.finalize = finalize
    elif _KILL.startswith("metrics:"):
        from activeft_jax.training import active

        lines = int(_KILL.split(":")[1])
        original = active._write_metrics_file

        def write(path, metrics):
            if len(metrics) == lines:
                _die()
            return original(path, metrics)

        active._write_metrics_file = write


def main(workdir: str, out: str) -> None:
    global _MODEL
    from activeft_jax.training import active_finetune

    _install_hooks()
    model, variables, pool_x, pool_y, target_x, target_y = problem()
    _MODEL = model
    result = active_finetune(model, variables, optax.adam(1e-2), pool_x, pool_y, target_x,
                             target_y, workdir=workdir, embed=embed_fn, **JOB)
    leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(result.params)]
    digest = hashlib.sha256(b"".join(a.tobytes() for a in leaves)).hexdigest()
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"indices": result.indices.tolist(), "metrics": result.metrics,
                   "initial": result.initial_metrics, "params_sha256": digest}, f)
    print("DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
