"""One round of active fine-tuning as a pure function: select → reveal → train → evaluate.

    round_fn = make_round(module.apply, optax.adam(1e-2), strategy="vtl", k=10,
                          embed=linen_features(module), epochs=20, batch_size=16)
    state = init_round_state(variables, optax.adam(1e-2), num_pool=N, trainable="head")
    state, out = jax.jit(round_fn)(state, key, pool_x, pool_y, target_x, target_y)

    # or every round in one compiled program
    state, outs = jax.lax.scan(lambda s, key: round_fn(s, key, pool_x, pool_y, target_x),
                               state, jax.random.split(key, 5))

Shapes never change between rounds: the pool stays whole and the labelled
points are a [N] bool mask in the state, passed to the strategy as `observed`
(the GP rules condition on them, every rule skips them), so the GP of round
r + 1 continues the greedy run of round r and the round compiles once.
Training visits the labelled points in fixed-size batches: each epoch a random
order of the labelled points (drawn from the round's key), ceil(count /
batch_size) steps with the last batch masked; the number of steps follows the
traced count inside a `lax.while_loop`, so no shape depends on it. A model with
dropout passes `objective(params, x, y, rng) -> [b]` per-example losses: every
step gets its own rng.

`activeft_jax.training.active_finetune` drives this round with a workdir,
orbax checkpoints and a metrics file.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax

from activeft_jax.selection import get_strategy, select
from activeft_jax.training.state import TrainState, combine, create_train_state
from activeft_jax.training.steps import Loss, resolve_loss

__all__ = ["RoundOutput", "RoundState", "init_round_state", "make_round"]

Objective = Callable[[Any, Any, jax.Array, jax.Array], jax.Array]


class RoundState(NamedTuple):
    """What a round reads and writes (a pytree: it goes through jit, scan and orbax).

    Attributes:
      train: the `TrainState` (trainable parameters, optimizer state, frozen ones).
      labelled: [N] bool, the pool points revealed so far.
      round: [] int32, rounds done.
    """

    train: TrainState
    labelled: jax.Array
    round: jax.Array


class RoundOutput(NamedTuple):
    """What a round reports (scalars are means; NaN where there is nothing to report).

    Attributes:
      picks: [k] int32 pool indices picked this round (-1 if none was left).
      values: [k] their acquisition values.
      labelled: [] int32, labelled points after the round.
      train_loss: [] mean loss over the last epoch's examples.
      train_accuracy: [] accuracy over the last epoch's examples (classification).
      target_loss: [] loss on the target examples (if their labels are given).
      target_accuracy: [] accuracy on them.
    """

    picks: jax.Array
    values: jax.Array
    labelled: jax.Array
    train_loss: jax.Array
    train_accuracy: jax.Array
    target_loss: jax.Array
    target_accuracy: jax.Array


def init_round_state(params: Any, tx: optax.GradientTransformation, *, num_pool: int,
                     trainable: Any = "head", labelled: Any = None) -> RoundState:
    """The state before round 0: `create_train_state` and no (or the given) labelled points."""
    train = create_train_state(params, tx, trainable)
    mask = jnp.zeros((num_pool,), bool) if labelled is None else jnp.asarray(labelled, bool)
    if mask.shape != (num_pool,):
        raise ValueError(f"`labelled` must be a bool mask of shape [{num_pool}]; got {mask.shape}.")
    return RoundState(train, mask, jnp.zeros((), jnp.int32))


def _batched(fn: Callable, params: Any, x: Any, batch_size: int) -> Any:
    """`fn(params, x)` over fixed-size batches of the leading axis (padded, then cut)."""
    n = jax.tree_util.tree_leaves(x)[0].shape[0]
    b = min(batch_size, n)
    num = -(-n // b)
    pad = num * b - n

    def split(a):
        a = jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]) if pad else a
        return a.reshape((num, b) + a.shape[1:])

    out = lax.map(lambda xb: fn(params, xb), jax.tree_util.tree_map(split, x))
    return jax.tree_util.tree_map(lambda o: o.reshape((num * b,) + o.shape[2:])[:n], out)


def _flat(x: Any) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(x)
    n = leaves[0].shape[0]
    out = jnp.concatenate([jnp.reshape(a, (n, -1)) for a in leaves], axis=1)
    return out if jnp.issubdtype(out.dtype, jnp.floating) else out.astype(jnp.result_type(float))


def _take(tree: Any, idx: jax.Array) -> Any:
    return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), tree)


def _metrics(outputs, y, per_example, mask):
    """Masked sums (loss, correct, count)."""
    mask = mask.astype(per_example.dtype)
    loss = jnp.sum(per_example * mask)
    if jnp.issubdtype(y.dtype, jnp.integer) and outputs.ndim == y.ndim + 1:
        hit = (jnp.argmax(outputs, axis=-1) == y).reshape(y.shape[0], -1).all(axis=1)
        correct = jnp.sum(hit.astype(mask.dtype) * mask)
    else:
        correct = jnp.full((), jnp.nan, mask.dtype)
    return jnp.stack([loss, correct, jnp.sum(mask)])


def make_round(apply_fn: Callable[[Any, Any], Any], tx: optax.GradientTransformation, *,
               strategy: str, k: int, embed: Optional[Callable[[Any, Any], Any]] = None,
               loss: Loss = "cross_entropy", objective: Optional[Objective] = None,
               epochs: int = 10, batch_size: int = 32, eval_batch_size: int = 256,
               select_kwargs: Optional[Mapping[str, Any]] = None,
               warm_start: bool = True, initial: Optional[TrainState] = None) -> Callable:
    """The pure round ``round_fn(state, key, pool_x, pool_y, target_x=None, target_y=None,
    *, features=None) -> (state, RoundOutput)``.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs`` on the full parameters (evaluation,
        class probabilities, and training unless `objective` is given).
      tx: the optax transformation of the `TrainState`.
      strategy: a name in `activeft_jax.selection.REGISTRY` (not sift).
      k: picks per round (static).
      embed: ``embed(params, x) -> [n, d]``, pure (e.g.
        `activeft_jax.embeddings.linen_features(module)`), applied in batches of
        `eval_batch_size`; None: the flattened inputs. Ignored when `features`
        are passed to the round.
      loss: ``"cross_entropy"``, ``"mse"`` or ``loss(outputs, y) -> [b]``.
      objective: optional ``objective(params, x, y, rng) -> [b]`` per-example
        training losses (e.g. with dropout); default: `loss` of ``apply_fn``.
      epochs: passes over the labelled points per round.
      batch_size: examples per step (fixed shape; the last batch is masked).
      eval_batch_size: examples per batch when embedding and evaluating.
      select_kwargs: further options of `activeft_jax.select` (noise_std,
        kernel, ...; `max_observed` for a GP rule in kernel space).
      warm_start: continue from the round's state (default), or restart
        training from `initial` every round.
      initial: the `TrainState` to restart from when `warm_start` is False.

    Returns:
      ``round_fn``: jit it, scan it, vmap it; it compiles once per shapes.
      A round's key is split into selection, training and objective keys.
    """
    rec = get_strategy(strategy)
    if rec.batched:
        raise ValueError("make_round runs one selection per round; sift selects per prompt.")
    if not warm_start and initial is None:
        raise ValueError("`warm_start=False` needs `initial`, the TrainState to restart from.")
    select_kwargs = dict(select_kwargs or {})
    loss_fn = resolve_loss(loss)

    def embedding(params, x):
        if embed is None:
            return _flat(x)
        out = _batched(embed, params, x, eval_batch_size)
        return out.reshape(out.shape[0], -1)

    def train(train_state: TrainState, labelled, pool_x, pool_y, key):
        n = labelled.shape[0]
        count = jnp.sum(labelled, dtype=jnp.int32)
        num_batches = (count + batch_size - 1) // batch_size
        positions = jnp.arange(batch_size, dtype=jnp.int32)

        def step(carry, b, order, epoch_key):
            ts, sums = carry
            idx = lax.dynamic_slice_in_dim(order, b * batch_size, batch_size)
            mask = (b * batch_size + positions) < count
            x, y = _take(pool_x, idx), _take(pool_y, idx)
            rng = jax.random.fold_in(epoch_key, b)

            def objective_of(trainable):
                params = combine(trainable, ts.frozen)
                if objective is not None:
                    pe, outputs = objective(params, x, y, rng), None
                else:
                    outputs = apply_fn(params, x)
                    pe = loss_fn(outputs, y)
                m = mask.astype(pe.dtype)
                return jnp.sum(pe * m) / jnp.maximum(jnp.sum(m), 1), (pe, outputs)

            (_, (pe, outputs)), grads = jax.value_and_grad(objective_of, has_aux=True)(ts.params)
            updates, opt_state = tx.update(grads, ts.opt_state, ts.params)
            params = optax.apply_updates(ts.params, updates)
            if outputs is not None:  # metrics before the update, as `fit` reports them
                metric = _metrics(outputs, y, pe, mask)
            else:
                m = mask.astype(pe.dtype)
                metric = jnp.stack([jnp.sum(pe * m), jnp.full((), jnp.nan, pe.dtype), jnp.sum(m)])
            return TrainState(ts.step + 1, params, opt_state, ts.frozen), sums + metric

        def epoch(e, carry):
            ts, _ = carry
            epoch_key = jax.random.fold_in(key, e)
            # A random order of the labelled points first, the others after (never used).
            noise = jax.random.uniform(jax.random.fold_in(epoch_key, 1 << 30), (n,))
            order = jnp.argsort(jnp.where(labelled, noise, 2.0)).astype(jnp.int32)
            order = jnp.concatenate([order, jnp.zeros((batch_size,), jnp.int32)])
            sums = jnp.zeros((3,), jnp.result_type(float))
            return lax.fori_loop(0, num_batches,
                                 lambda b, c: step(c, b, order, epoch_key), (ts, sums))

        sums = jnp.zeros((3,), jnp.result_type(float))
        train_state, sums = lax.fori_loop(0, epochs, epoch, (train_state, sums))
        denom = jnp.maximum(sums[2], 1)
        return train_state, sums[0] / denom, sums[1] / denom

    def evaluate(params, x, y):
        if x is None or y is None:
            nan = jnp.full((), jnp.nan, jnp.result_type(float))
            return nan, nan
        n = jax.tree_util.tree_leaves(x)[0].shape[0]
        b = min(eval_batch_size, n)
        num = -(-n // b)
        valid = (jnp.arange(num * b) < n).reshape(num, b)

        def batches(a):
            a = jnp.concatenate([a, jnp.repeat(a[:1], num * b - n, axis=0)]) if num * b > n else a
            return a.reshape((num, b) + a.shape[1:])

        def fn(batch):
            xb, yb, mb = batch
            out = apply_fn(params, xb)
            return _metrics(out, yb, loss_fn(out, yb), mb)

        xs = jax.tree_util.tree_map(batches, x)
        totals = jnp.sum(lax.map(fn, (xs, batches(y), valid)), axis=0)
        return totals[0] / n, totals[1] / n

    def round_fn(state: RoundState, key: jax.Array, pool_x: Any, pool_y: Any,
                 target_x: Any = None, target_y: Any = None, *, features: Any = None):
        key_select, key_train = jax.random.split(key)
        params = combine(state.train.params, state.train.frozen)
        if features is not None:
            pool_phi, target_phi = features
        else:
            pool_phi = embedding(params, pool_x)
            target_phi = None if target_x is None or not rec.needs_target else embedding(
                params, target_x)
        kwargs = dict(select_kwargs)
        if rec.needs_probs:
            logits = _batched(apply_fn, params, pool_x, eval_batch_size)
            kwargs["probs"] = jax.nn.softmax(logits.astype(jnp.result_type(float)), axis=-1)
        if rec.key != "none":
            kwargs["key"] = key_select
        sel = select(strategy, pool_phi, target_phi if rec.needs_target else None, k=k,
                     observed=state.labelled, **kwargs)
        picks = sel.indices
        n = state.labelled.shape[0]
        labelled = state.labelled.at[jnp.where(picks >= 0, picks, n)].set(True, mode="drop")
        train_state = state.train if warm_start else initial
        train_state, train_loss, train_acc = train(train_state, labelled, pool_x, pool_y,
                                                   key_train)
        full = combine(train_state.params, train_state.frozen)
        target_loss, target_acc = evaluate(full, target_x, target_y)
        out = RoundOutput(picks, sel.values, jnp.sum(labelled, dtype=jnp.int32), train_loss,
                          train_acc, target_loss, target_acc)
        return RoundState(train_state, labelled, state.round + 1), out

    return round_fn

