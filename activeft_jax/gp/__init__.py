"""GP posterior state over pool embeddings and its rank-1 Cholesky step."""

from activeft_jax.gp.posterior import KernelSpace as KernelSpace
from activeft_jax.gp.posterior import Posterior as Posterior
from activeft_jax.gp.posterior import WeightSpace as WeightSpace
from activeft_jax.gp.posterior import choose_space as choose_space
from activeft_jax.gp.posterior import compress_targets as compress_targets
from activeft_jax.gp.posterior import condition as condition
from activeft_jax.gp.posterior import conditioned_precision_factor as conditioned_precision_factor
from activeft_jax.gp.posterior import init_kernel_space as init_kernel_space
from activeft_jax.gp.posterior import init_weight_space as init_weight_space
from activeft_jax.gp.posterior import observation_precision as observation_precision
from activeft_jax.gp.posterior import precision_factor as precision_factor
from activeft_jax.gp.posterior import precision_factor_rows as precision_factor_rows
from activeft_jax.gp.posterior import rowwise_sq_norm as rowwise_sq_norm
from activeft_jax.gp.posterior import target_observation_rows as target_observation_rows

__all__ = [
    "KernelSpace",
    "Posterior",
    "WeightSpace",
    "choose_space",
    "compress_targets",
    "condition",
    "conditioned_precision_factor",
    "init_kernel_space",
    "init_weight_space",
    "observation_precision",
    "precision_factor",
    "precision_factor_rows",
    "rowwise_sq_norm",
    "target_observation_rows",
]
