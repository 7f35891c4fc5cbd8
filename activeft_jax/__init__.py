"""activeft_jax: select the right data to fine-tune large models, in JAX.

    import activeft_jax as aft
    sel = aft.select("vtl", pool, target, k=50, noise_std=1.0)
    sel.indices, sel.values
"""

from activeft_jax import embeddings as embeddings
from activeft_jax import gp as gp
from activeft_jax import kernels as kernels
from activeft_jax import selection as selection
from activeft_jax.selection import STRATEGIES as STRATEGIES
from activeft_jax.selection import Selection as Selection
from activeft_jax.selection import select as select

__version__ = "0.1.0"

__all__ = ["STRATEGIES", "Selection", "embeddings", "gp", "kernels", "select", "selection", "__version__"]
