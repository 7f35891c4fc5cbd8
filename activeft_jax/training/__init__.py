"""Fine-tuning with optax, orbax checkpoints and the active fine-tuning loop.

    state = create_train_state(variables, optax.adam(1e-3), trainable="head")
    train_step = make_train_step(module.apply, tx)          # jitted, donates the state
    state, history = fit(train_step, state, x, y, epochs=10, batch_size=32, key=key)
    evaluate(make_eval_step(module.apply), state.full_params(), x_test, y_test)

    result = active_finetune(module, variables, tx, pool_x, pool_y, target_x, target_y,
                             strategy="vtl", rounds=5, k_per_round=20, workdir="runs/vtl")

`active_finetune` is checkpointed every round and resumes bit for bit after
any crash (see `activeft_jax.training.active`).
"""

from activeft_jax.training.active import ActiveResult as ActiveResult
from activeft_jax.training.active import active_finetune as active_finetune
from activeft_jax.training.checkpoint import Checkpointer as Checkpointer
from activeft_jax.training.state import TrainState as TrainState
from activeft_jax.training.state import combine as combine
from activeft_jax.training.state import create_train_state as create_train_state
from activeft_jax.training.state import layer_names as layer_names
from activeft_jax.training.state import partition as partition
from activeft_jax.training.state import resolve_trainable as resolve_trainable
from activeft_jax.training.steps import evaluate as evaluate
from activeft_jax.training.steps import fit as fit
from activeft_jax.training.steps import make_eval_step as make_eval_step
from activeft_jax.training.steps import make_train_step as make_train_step
from activeft_jax.training.steps import predict as predict

__all__ = [
    "ActiveResult",
    "Checkpointer",
    "TrainState",
    "active_finetune",
    "combine",
    "create_train_state",
    "evaluate",
    "fit",
    "layer_names",
    "make_eval_step",
    "make_train_step",
    "partition",
    "predict",
    "resolve_trainable",
]
