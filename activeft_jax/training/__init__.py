"""Fine-tuning with optax, orbax checkpoints and the active fine-tuning loop.

    state = create_train_state(variables, optax.adam(1e-3), trainable="head")
    train_step = make_train_step(module.apply, tx)          # jitted, donates the state
    state, history = fit(train_step, state, x, y, epochs=10, batch_size=32, key=key)
    evaluate(make_eval_step(module.apply), state.full_params(), x_test, y_test)

    result = active_finetune(module, variables, tx, pool_x, pool_y, target_x, target_y,
                             strategy="vtl", rounds=5, k=20, workdir="runs/vtl")

    # the round it is made of, pure: jit it or lax.scan it with your own model
    round_fn = make_round(module.apply, tx, strategy="vtl", k=20, embed=linen_features(module))
    state, out = jax.jit(round_fn)(init_round_state(variables, tx, num_pool=N), key,
                                   pool_x, pool_y, target_x, target_y)

    # test-time fine-tuning: one step per selected example, then the document's bpb
    out = ttft_evaluate(lm.nll, lm.loss, lm.params, 1e-4, ex_tokens, ex_mask, doc, doc_mask)

`active_finetune` is checkpointed every round and resumes bit for bit after
any crash (see `activeft_jax.training.active`).
"""

from activeft_jax.training.active import ActiveResult as ActiveResult
from activeft_jax.training.active import active_finetune as active_finetune
from activeft_jax.training.checkpoint import CheckpointError as CheckpointError
from activeft_jax.training.checkpoint import Checkpointer as Checkpointer
from activeft_jax.training.rounds import RoundOutput as RoundOutput
from activeft_jax.training.rounds import RoundState as RoundState
from activeft_jax.training.rounds import init_round_state as init_round_state
from activeft_jax.training.rounds import make_round as make_round
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
from activeft_jax.training.ttft import InContextInputs as InContextInputs
from activeft_jax.training.ttft import TTFTInputs as TTFTInputs
from activeft_jax.training.ttft import in_context_evaluate as in_context_evaluate
from activeft_jax.training.ttft import in_context_inputs as in_context_inputs
from activeft_jax.training.ttft import sequence_nll as sequence_nll
from activeft_jax.training.ttft import test_time_finetune as test_time_finetune
from activeft_jax.training.ttft import ttft_evaluate as ttft_evaluate
from activeft_jax.training.ttft import ttft_inputs as ttft_inputs

__all__ = [
    "ActiveResult",
    "CheckpointError",
    "Checkpointer",
    "RoundOutput",
    "RoundState",
    "InContextInputs",
    "TTFTInputs",
    "TrainState",
    "active_finetune",
    "combine",
    "create_train_state",
    "evaluate",
    "fit",
    "in_context_evaluate",
    "in_context_inputs",
    "init_round_state",
    "layer_names",
    "make_eval_step",
    "make_round",
    "make_train_step",
    "partition",
    "predict",
    "resolve_trainable",
    "sequence_nll",
    "test_time_finetune",
    "ttft_evaluate",
    "ttft_inputs",
]
