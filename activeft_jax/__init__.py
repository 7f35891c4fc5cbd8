"""activeft_jax: select the right data to fine-tune large models, in JAX.

    import activeft_jax as aft
    sel = aft.select("vtl", pool, target, k=50, noise_std=1.0)
    sel.indices, sel.values
"""

from activeft_jax import embeddings as embeddings
from activeft_jax import gp as gp
from activeft_jax import kernels as kernels
from activeft_jax import selection as selection
from activeft_jax.loader import ActiveDataLoader as ActiveDataLoader
from activeft_jax.loader import select_with_model as select_with_model
from activeft_jax.selection import STRATEGIES as STRATEGIES
from activeft_jax.selection import Selection as Selection
from activeft_jax.selection import select as select
from activeft_jax.selection import sift as sift

__version__ = "0.1.0"

# Heavier subpackages load on first use: `aft.training` (orbax), `aft.data`
# (tensorflow-datasets), `aft.models` (tokenizers, gguf).
_LAZY = ("data", "models", "training")


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"activeft_jax.{name}")
    raise AttributeError(f"module 'activeft_jax' has no attribute {name!r}")

__all__ = ["STRATEGIES", "ActiveDataLoader", "Selection", "data", "embeddings", "gp", "kernels",
           "models", "select", "select_with_model", "selection", "sift", "training", "__version__"]
