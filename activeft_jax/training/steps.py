"""Jitted train / eval steps and a deterministic `fit` on a small labeled set.

A batch is a dict ``{"x": inputs [B, ...] (or a pytree of them), "y": labels
[B, ...], "mask": [B] (optional)}``; masked-out rows (padding) contribute
nothing to the loss, the gradient or the metrics. Every batch `fit` and
`evaluate` build has the same shape, so each step compiles once.

Losses: ``"cross_entropy"`` (integer labels, logits [B, C]), ``"mse"``, or a
function ``loss(outputs, y) -> [B]`` of per-example losses. Accuracy is
reported whenever the labels are integers and the outputs carry one more
(class) axis.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any, Callable, Mapping, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from activeft_jax.training.state import TrainState, combine

__all__ = [
    "ApplyFn",
    "Loss",
    "evaluate",
    "fit",
    "make_eval_step",
    "make_train_step",
    "predict",
    "resolve_loss",
]

ApplyFn = Callable[[Any, Any], jax.Array]
Loss = Union[str, Callable[[jax.Array, jax.Array], jax.Array]]


def _cross_entropy(outputs: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(outputs, y)


def _mse(outputs: jax.Array, y: jax.Array) -> jax.Array:
    diff = (outputs - y.astype(outputs.dtype)).reshape(outputs.shape[0], -1)
    return jnp.mean(diff**2, axis=1)


_LOSSES = {"cross_entropy": _cross_entropy, "mse": _mse}


def resolve_loss(loss: Loss) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``"cross_entropy"`` | ``"mse"`` | a callable -> per-example ``loss(outputs, y) -> [B]``."""
    if callable(loss):
        return loss
    if isinstance(loss, str) and loss in _LOSSES:
        return _LOSSES[loss]
    raise ValueError(f"`loss` must be one of {sorted(_LOSSES)} or a function; got {loss!r}.")


def _batch_metrics(loss_fn, outputs, y, mask):
    """Masked sums: loss, correct predictions (if classification) and count."""
    per_example = loss_fn(outputs, y)
    mask = mask.astype(per_example.dtype)
    out = {"loss_sum": jnp.sum(per_example * mask), "count": jnp.sum(mask)}
    if jnp.issubdtype(y.dtype, jnp.integer) and outputs.ndim == y.ndim + 1:
        hit = (jnp.argmax(outputs, axis=-1) == y).reshape(y.shape[0], -1).all(axis=1)
        out["correct"] = jnp.sum(hit.astype(mask.dtype) * mask)
    return out


def _mask_of(batch: Mapping[str, Any]) -> jax.Array:
    if "mask" in batch and batch["mask"] is not None:
        return jnp.asarray(batch["mask"])
    n = jax.tree_util.tree_leaves(batch["y"])[0].shape[0]
    return jnp.ones((n,), jnp.float32)


def _means(sums: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    count = sums["count"]
    denom = jnp.maximum(count, 1)
    out = {"loss": sums["loss_sum"] / denom}
    if "correct" in sums:
        out["accuracy"] = sums["correct"] / denom
    out["count"] = count
    return out


def make_train_step(
    apply_fn: ApplyFn, tx: optax.GradientTransformation, *, loss: Loss = "cross_entropy"
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """A jitted ``train_step(state, batch) -> (state, metrics)``: one optimizer step.

    The state is donated (its buffers are reused for the new state): do not
    use the `state` passed in afterwards. One XLA computation per call:
    forward, backward (trainable leaves only), `tx.update`, apply.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs`` on the full parameters
        (e.g. a linen ``module.apply``).
      tx: the optax transformation the state was created with.
      loss: ``"cross_entropy"``, ``"mse"`` or ``loss(outputs, y) -> [B]``.

    Returns:
      ``train_step(state, batch)``; metrics are the masked mean ``loss``,
      ``accuracy`` (classification) and ``count`` of the batch, before the update.
    """
    loss_fn = resolve_loss(loss)

    def objective(trainable, frozen, x, y, mask):
        outputs = apply_fn(combine(trainable, frozen), x)
        sums = _batch_metrics(loss_fn, outputs, y, mask)
        return sums["loss_sum"] / jnp.maximum(sums["count"], 1), sums

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state: TrainState, batch: Mapping[str, Any]) -> tuple[TrainState, dict]:
        mask = _mask_of(batch)
        (_, sums), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params, state.frozen, batch["x"], batch["y"], mask
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, opt_state, state.frozen), _means(sums)

    return train_step


def _eval_sums(apply_fn, loss_fn, params, batch):
    outputs = apply_fn(params, batch["x"])
    return _batch_metrics(loss_fn, outputs, batch["y"], _mask_of(batch))


def make_eval_step(
    apply_fn: ApplyFn, *, loss: Loss = "cross_entropy"
) -> Callable[[Any, Any], dict]:
    """A jitted ``eval_step(params, batch) -> metrics`` on the full parameters.

    Metrics: masked mean ``loss``, ``accuracy`` (classification) and ``count``.
    Use `evaluate` for a whole data set.
    """
    loss_fn = resolve_loss(loss)

    @jax.jit
    def eval_step(params: Any, batch: Mapping[str, Any]) -> dict:
        return _means(_eval_sums(apply_fn, loss_fn, params, batch))

    # The masked sums, which `evaluate` adds up exactly over a data set.
    eval_step.sums = jax.jit(functools.partial(_eval_sums, apply_fn, loss_fn))  # type: ignore
    return eval_step


def _num_examples(x: Any) -> int:
    leaves = jax.tree_util.tree_leaves(x)
    if not leaves:
        raise ValueError("`x` holds no arrays.")
    return int(np.shape(leaves[0])[0])


def _take(tree: Any, idx: np.ndarray) -> Any:
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


def _as_host(tree: Any) -> Any:
    return jax.tree_util.tree_map(np.asarray, tree)


def _padded_batches(n: int, batch_size: int, order: np.ndarray):
    """Yields (indices [B], mask [B]) covering `order` in fixed-size batches."""
    num = max(1, math.ceil(n / batch_size))
    pad = num * batch_size - n
    idx = np.concatenate([order, np.full((pad,), order[0] if n else 0, order.dtype)])
    mask = np.concatenate([np.ones((n,), np.float32), np.zeros((pad,), np.float32)])
    for b in range(num):
        sl = slice(b * batch_size, (b + 1) * batch_size)
        yield idx[sl], mask[sl]


def _permutation(key: Any, n: int) -> np.ndarray:
    """A permutation of range(n) that depends only on `key` (and n)."""
    bits = np.asarray(jax.random.bits(key, (4,), jnp.uint32))
    return np.random.default_rng([int(b) for b in bits]).permutation(n)


def _check_xy(x: Any, y: Any) -> int:
    n = _num_examples(x)
    ny = _num_examples(y)
    if n != ny:
        raise ValueError(f"`x` has {n} examples but `y` has {ny}; they must match.")
    if n == 0:
        raise ValueError("`x` is empty; give at least one labeled example.")
    return n


def fit(train_step: Callable, state: TrainState, x: Any, y: Any, *, epochs: int,
        batch_size: int, key: Any, progress: bool = False) -> tuple[TrainState, dict]:
    """Fine-tunes on (x, y) for `epochs` passes of fixed-size, shuffled batches.

    Every epoch visits the examples in a permutation drawn from
    ``fold_in(key, epoch)``; the last batch is padded (mask 0), and with fewer
    examples than `batch_size` the single batch is padded, so every step has
    the shape [batch_size, ...] and `train_step` compiles once. The result is
    a deterministic function of (state, x, y, epochs, batch_size, key).

    Args:
      train_step: from `make_train_step`.
      state: the initial `TrainState` (donated: do not reuse it).
      x: [n, ...] inputs (or a pytree of them); y: [n, ...] labels.
      epochs: passes over the data (>= 1).
      batch_size: B, the fixed batch size (>= 1).
      key: PRNG key for the shuffling.
      progress: a tqdm bar over the epochs on stderr.

    Returns:
      ``(state, history)``; history holds per-epoch lists of the mean
      ``loss`` (and ``accuracy``) over the epoch's examples.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` must be an int >= 1; got {value!r}.")
    x, y = _as_host(x), _as_host(y)
    n = _check_xy(x, y)
    epoch_sums = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc="fit", unit="epoch", file=sys.stderr, leave=False)
    try:
        for epoch in range(int(epochs)):
            order = _permutation(jax.random.fold_in(key, epoch), n)
            step_metrics = []
            for idx, mask in _padded_batches(n, int(batch_size), order):
                state, m = train_step(state, {"x": _take(x, idx), "y": _take(y, idx), "mask": mask})
                step_metrics.append(m)
            epoch_sums.append(step_metrics)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    history: dict[str, list[float]] = {}
    for step_metrics in jax.device_get(epoch_sums):
        count = sum(float(m["count"]) for m in step_metrics)
        for name in ("loss", "accuracy"):
            if name in step_metrics[0]:
                total = sum(float(m[name]) * float(m["count"]) for m in step_metrics)
                history.setdefault(name, []).append(total / count)
    return state, history


def evaluate(eval_step: Callable, params: Any, x: Any, y: Any, *, batch_size: int = 256) -> dict:
    """Mean loss (and accuracy) of `params` over a whole data set.

    Args:
      eval_step: from `make_eval_step`.
      params: the full parameters.
      x, y: [n, ...] inputs and labels.
      batch_size: fixed batch size (the last batch is padded and masked).

    Returns:
      ``{"loss": float, "accuracy": float (classification), "count": n}``.
    """
    x, y = _as_host(x), _as_host(y)
    n = _check_xy(x, y)
    sums_fn = getattr(eval_step, "sums", None)
    totals: dict[str, float] = {}
    parts = []
    for idx, mask in _padded_batches(n, int(batch_size), np.arange(n)):
        batch = {"x": _take(x, idx), "y": _take(y, idx), "mask": mask}
        if sums_fn is not None:
            parts.append(sums_fn(params, batch))
        else:  # a user eval_step returning means
            m = eval_step(params, batch)
            parts.append({
                "loss_sum": m["loss"] * m["count"],
                "count": m["count"],
                **({"correct": m["accuracy"] * m["count"]} if "accuracy" in m else {}),
            })
    for part in jax.device_get(parts):
        for name, value in part.items():
            totals[name] = totals.get(name, 0.0) + float(value)
    out = {"loss": totals["loss_sum"] / n}
    if "correct" in totals:
        out["accuracy"] = totals["correct"] / n
    out["count"] = n
    return out


@functools.partial(jax.jit, static_argnums=0)
def _apply_jit(apply_fn, params, x):
    return apply_fn(params, x)


def predict(apply_fn: ApplyFn, params: Any, x: Any, *, batch_size: int = 256) -> np.ndarray:
    """``apply_fn(params, x)`` over fixed-size padded batches (one compile); host array."""
    x = _as_host(x)
    n = _num_examples(x)
    outs = []
    for idx, mask in _padded_batches(n, int(batch_size), np.arange(n)):
        outs.append(_apply_jit(apply_fn, params, _take(x, idx)))
    out = np.concatenate([np.asarray(o) for o in jax.device_get(outs)], axis=0)
    return out[:n]
