"""The active fine-tuning driver: the pure round (`training.rounds`) plus workdir, checkpoints
and metrics.

Every round is `make_round`'s pure function, jitted once: the pool stays whole
and the labelled points are a mask that the strategy receives as `observed`,
so the GP of round r + 1 is conditioned on the points of rounds 0..r and the
selection compiles once. This module adds what a run on disk needs.

Resumability (the loop's contract): kill the process at any point (SIGKILL
included) and run it again with the same arguments and `workdir`; it resumes
after the last finished round and ends with exactly the result of an
uninterrupted run (the same picks, the same metrics, bit for bit). How:

* Every round's randomness comes from ``fold_in(key(seed), round)``, never from
  state that a crash loses.
* A round is finished when its checkpoint is committed. The checkpoint holds
  everything the next round reads: the round state (parameters, optimizer
  state, the labelled mask, the round) and the picks so far (pool indices),
  with every round's metrics as its metadata.
  Orbax writes a step into a temporary directory and renames it when
  complete; unfinished ones are ignored and deleted on restart.
* A committed checkpoint damaged afterwards (a metadata file truncated, emptied,
  overwritten or deleted, a data file missing) is skipped: the run resumes from
  the newest one that restores cleanly and passes the consistency checks (one
  warning line names the damaged step, which is deleted and redone), and fails
  with one line (`CheckpointError`, a ValueError) only when none does.
* ``metrics.jsonl`` is derived data: after every checkpoint, and at every
  start, it is rewritten (atomically: write a temporary file, then rename)
  from the checkpointed metrics, so it always holds exactly one line per
  finished round.
* The metrics hold nothing that varies between runs (no timings).
* ``config.json`` records a fingerprint of the arguments (data hashes,
  parameter hashes, the strategy and every option, the optimizer's
  hyperparameters); a different configuration in the same `workdir` is refused.
  A lock file keeps a second process out of a workdir in use (the OS releases
  it when the holder dies).

Exactness assumes that the computations themselves are deterministic, as XLA's
CPU backend is; on GPU run with ``XLA_FLAGS=--xla_gpu_deterministic_ops=true``.
The guarantee covers a killed *process*; surviving a power cut also needs the
file system to have flushed the committed checkpoint. With ``workdir=None``
nothing is written and nothing can be resumed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from activeft_jax.atomic import atomic_file
from activeft_jax.embeddings import ParamSelection, is_linen_module, last_layer
from activeft_jax.selection import COMMON_OPTIONS, STRATEGIES, TARGETED, get_strategy
from activeft_jax.training._fingerprint import config_hash, fingerprint, tree_digest
from activeft_jax.training.checkpoint import CheckpointError, Checkpointer
from activeft_jax.training.rounds import init_round_state, make_round
from activeft_jax.training.state import (
    Trainable,
    TrainState,
    combine,
    create_train_state,
    resolve_trainable,
)
from activeft_jax.training.steps import Loss, evaluate, make_eval_step, resolve_loss

__all__ = ["ActiveResult", "active_finetune"]

_log = logging.getLogger(__name__)

_FORMAT = 2
_CONFIG_FILE = "config.json"
_METRICS_FILE = "metrics.jsonl"
_CKPT_DIR = "checkpoints"
# select() arguments that active_finetune supplies itself.
_RESERVED = ("name", "pool", "target", "k", "key", "probs", "observed")

EmbedFn = Callable[[Any, Any], Any]
_EMBED_ERROR = "`embed` must be 'last_layer', a function embed(params, x) or None; got {!r}."


class ActiveResult(NamedTuple):
    """What `active_finetune` returns (the same after any number of restarts).

    Attributes:
      indices: [rounds * k] int32 pool indices, in pick order (round by round).
      metrics: one dict per round, as written to ``workdir/metrics.jsonl``.
      params: the final full parameters.
      state: the final `TrainState` (trainable parameters, optimizer state).
      initial_metrics: the initial model evaluated on the target (and test) set.
    """

    indices: np.ndarray
    metrics: list
    params: Any
    state: TrainState
    initial_metrics: dict


# ----------------------------------------------------------------------------------------------
# argument checks


def _leading(tree: Any, name: str) -> int:
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError(f"`{name}` holds no arrays.")
    sizes = set()
    for leaf in leaves:
        shape = np.shape(leaf)
        if len(shape) < 1:
            raise ValueError(
                f"`{name}` must have a leading example axis [n, ...]; got shape {shape}."
            )
        sizes.add(shape[0])
    if len(sizes) != 1:
        raise ValueError(
            f"every array in `{name}` must have the same number of examples; got {sorted(sizes)}."
        )
    return int(sizes.pop())


def _example_shapes(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda a: tuple(np.shape(a)[1:]), tree)


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"`{name}` must be an int >= {minimum}; got {value!r}.")
    if int(value) < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; got {int(value)}.")
    return int(value)


def _check_labels(y: Any, n: int, name: str, x_name: str) -> None:
    if y is None:
        return
    ny = _leading(y, name)
    if ny != n:
        raise ValueError(
            f"`{name}` has {ny} labels but `{x_name}` has {n} examples; they must match "
            f"({name}.shape = {np.shape(jax.tree_util.tree_leaves(y)[0])})."
        )


def _check_select_kwargs(strategy: str, select_kwargs: Optional[Mapping[str, Any]]) -> dict:
    kwargs = dict(select_kwargs or {})
    reserved = sorted(set(kwargs) & set(_RESERVED))
    if reserved:
        raise ValueError(
            f"`select_kwargs` must not set {reserved}: active_finetune supplies the pool, "
            f"targets, k, key (from seed and round), probs and observed (the labelled "
            f"points) itself."
        )
    accepted = set(COMMON_OPTIONS) | get_strategy(strategy).option_names
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"strategy {strategy!r} does not take option(s) {unknown} in `select_kwargs`; "
            f"it accepts {sorted(accepted)}."
        )
    if kwargs.get("allow_repeats"):
        raise ValueError(
            "`select_kwargs` sets allow_repeats=True, but active_finetune reveals each pool "
            "point once (a round picks k new points); drop allow_repeats."
        )
    return kwargs


# ----------------------------------------------------------------------------------------------
# files


def _atomic_write(path: str, text: str) -> None:
    """Writes `text` to `path` so that a reader sees the old or the new file, never a mix.

    A killed write's temporary file is removed by the next write of `path`.
    """
    with atomic_file(path, "w", encoding="utf-8") as f:
        f.write(text)


def _write_metrics_file(path: str, metrics: Sequence[Mapping[str, Any]]) -> None:
    _atomic_write(path, "".join(json.dumps(m) + "\n" for m in metrics))


def _json_float(x: Any) -> Optional[float]:
    x = float(x)
    return x if np.isfinite(x) else None


def _config_mismatch(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    def short(v: Any) -> str:
        s = json.dumps(v, sort_keys=True)
        return s if len(s) <= 80 else s[:77] + "..."

    keys = sorted(set(old) | set(new))
    diffs = [k for k in keys if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {short(old.get(k))} there, {short(new.get(k))} now" for k in diffs)


# ----------------------------------------------------------------------------------------------
# the loop


def _to_host(tree: Any) -> Any:
    return jax.tree_util.tree_map(np.asarray, tree)


def _as_embedding(out: Any, n: int, what: str) -> jax.Array:
    arr = jnp.asarray(out)
    if arr.ndim < 1 or arr.shape[0] != n:
        raise ValueError(f"`embed` returned shape {arr.shape} for {what} with {n} examples; "
                         f"it must return [n, d].")
    arr = arr.reshape(n, -1)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    return arr


def active_finetune(
    model: Any,
    init_params: Any,
    tx: optax.GradientTransformation,
    pool_x: Any,
    pool_y: Any,
    target_x: Any,
    target_y: Any = None,
    *,
    strategy: str,
    rounds: int,
    k: int,
    workdir: Union[str, os.PathLike, None] = None,
    seed: int = 0,
    trainable: Trainable = "head",
    epochs: int = 10,
    batch_size: int = 32,
    loss: Loss = "cross_entropy",
    objective: Optional[Callable[[Any, Any, Any, Any], Any]] = None,
    embed: Union[str, EmbedFn, None] = "last_layer",
    embed_every_round: bool = True,
    warm_start: bool = True,
    select_kwargs: Optional[Mapping[str, Any]] = None,
    test: Optional[tuple[Any, Any]] = None,
    eval_batch_size: int = 256,
    max_to_keep: int = 2,
    progress: bool = False,
) -> ActiveResult:
    """Rounds of active fine-tuning, checkpointed and resumable bit for bit.

    Each round r = 0 .. rounds-1 (key ``fold_in(key(seed), r)``):

    1. embed the pool (and the targets) with the current model (every round,
       or once from `init_params` if ``embed_every_round=False``);
    2. the pure round (`activeft_jax.training.make_round`, jitted once):
       pick k new pool points with ``activeft_jax.select(strategy, ...,
       observed=labelled)`` (the GP rules condition on every point labelled
       in earlier rounds); transductive strategies (itl, vtl, ctl, mmitl,
       cosine, information_density) aim at the target embeddings, the others
       ignore them; information_density and max_entropy get the model's
       softmax; reveal the picks' labels (`pool_y`); fine-tune on every
       labelled point (`epochs` shuffled passes in fixed-size batches),
       continuing from the previous round (``warm_start=True``) or from
       `init_params` with a fresh optimizer; evaluate on (target_x, target_y);
    3. evaluate on `test`;
    4. with a `workdir`: checkpoint everything and rewrite ``workdir/metrics.jsonl``.

    Killed at any point and rerun with the same arguments, it resumes after
    the last committed round and returns exactly what an uninterrupted run
    returns (see the module docstring). Rerunning a finished workdir returns
    the stored result without training.

    Args:
      model: a `flax.linen.Module` (its ``apply`` is used) or a function
        ``apply_fn(params, x) -> outputs`` (logits [b, C] for classification).
      init_params: the initial parameters (linen: the variables
        ``module.init`` returned; their order defines "last layers").
      tx: optax transformation for the trainable parameters.
      pool_x: [N, ...] pool inputs; pool_y: [N] labels, revealed as picked.
      target_x: [m, ...] target inputs (the directed strategies' targets and
        the evaluation set); may be None for an undirected strategy.
      target_y: [m] target labels for evaluation (None: no target metrics).
      strategy: a name in `activeft_jax.STRATEGIES`.
      rounds: number of rounds (>= 1).
      k: picks per round (>= 1); rounds * k <= N.
      workdir: directory for ``config.json``, ``metrics.jsonl`` and
        ``checkpoints/`` (created if missing); None: run in memory, no files.
      seed: base seed of every random choice.
      trainable: ``"head"``, ``"all"``, ``("last_layers", n)``, path prefixes or
        a predicate on the path (`resolve_trainable`).
      epochs, batch_size: per-round fine-tuning (fixed batch shape: one compile).
      loss: ``"cross_entropy"`` (integer labels), ``"mse"`` or ``loss(outputs, y) -> [b]``.
      objective: optional ``objective(params, x, y, rng) -> [b]`` per-example
        training losses (a model with dropout); every step gets its own rng.
      embed: ``"last_layer"`` (the input of the linen model's last Dense,
        `activeft_jax.embeddings.last_layer`), a function
        ``embed(params, x) -> [n, d]``, or None (the flattened inputs themselves).
      embed_every_round: recompute the embeddings from the current model every
        round (default), or embed once with `init_params`.
      warm_start: continue fine-tuning across rounds (default) or restart
        from `init_params` every round.
      select_kwargs: further options of `activeft_jax.select` (``noise_std``,
        ``kernel``, ...); not k, key, target or probs.
      test: optional ``(test_x, test_y)`` evaluated every round.
      eval_batch_size: batch size of the embedding / evaluation passes.
      max_to_keep: checkpoints kept in ``workdir/checkpoints``.
      progress: a progress bar over the rounds on stderr.

    Returns:
      `ActiveResult(indices, metrics, params, state, initial_metrics)`.

    Raises:
      ValueError: at the start, before any work: an unknown strategy (the
        message lists them), rounds < 1, k < 1, a budget rounds * k larger
        than the pool, an empty pool, mismatched shapes, bad options, or a
        `workdir` created with other arguments.
    """
    # ---- checks (all before any work) ----
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.")
    rounds = _check_int(rounds, "rounds", 1)
    k = _check_int(k, "k", 1)
    epochs = _check_int(epochs, "epochs", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
    eval_batch_size = _check_int(eval_batch_size, "eval_batch_size", 1)
    seed = _check_int(seed, "seed", 0)
    select_kwargs = _check_select_kwargs(strategy, select_kwargs)
    if pool_x is None or pool_y is None:
        raise ValueError("`pool_x` and `pool_y` are required.")
    pool_x, pool_y = _to_host(pool_x), _to_host(pool_y)
    n_pool = _leading(pool_x, "pool_x")
    if n_pool == 0:
        shape = np.shape(jax.tree_util.tree_leaves(pool_x)[0])
        raise ValueError(f"the pool is empty (pool_x.shape = {shape}).")
    _check_labels(pool_y, n_pool, "pool_y", "pool_x")
    budget = rounds * k
    if budget > n_pool:
        raise ValueError(
            f"the budget rounds * k = {rounds} * {k} = {budget} exceeds the pool size N = {n_pool}."
        )
    targeted = strategy in TARGETED
    if target_x is None:
        if targeted:
            raise ValueError(f"strategy {strategy!r} needs `target_x` (its targets); got None.")
        if target_y is not None:
            raise ValueError("`target_y` is given but `target_x` is None.")
    else:
        target_x = _to_host(target_x)
        n_target = _leading(target_x, "target_x")
        if n_target == 0:
            raise ValueError("`target_x` is empty; give at least one target example.")
        if _example_shapes(target_x) != _example_shapes(pool_x):
            raise ValueError(
                f"`target_x` examples have shape {_example_shapes(target_x)} but `pool_x` examples "
                f"have {_example_shapes(pool_x)}; they must match."
            )
        if target_y is not None:
            target_y = _to_host(target_y)
            _check_labels(target_y, n_target, "target_y", "target_x")
    if test is not None:
        if not isinstance(test, (tuple, list)) or len(test) != 2:
            raise ValueError("`test` must be a pair (test_x, test_y).")
        test_x, test_y = _to_host(test[0]), _to_host(test[1])
        n_test = _leading(test_x, "test_x")
        if n_test == 0:
            raise ValueError("`test_x` is empty.")
        if _example_shapes(test_x) != _example_shapes(pool_x):
            raise ValueError(
                f"`test_x` examples have shape {_example_shapes(test_x)} but `pool_x` examples "
                f"have {_example_shapes(pool_x)}; they must match."
            )
        _check_labels(test_y, n_test, "test_y", "test_x")
        test = (test_x, test_y)

    if objective is not None and not callable(objective):
        raise ValueError(f"`objective` must be a function objective(params, x, y, rng) -> [b]; "
                         f"got {type(objective).__name__}.")
    if is_linen_module(model):
        apply_fn = model.apply
    elif callable(model):
        apply_fn = model
    else:
        raise ValueError(
            f"`model` must be a flax.linen.Module or a function apply_fn(params, x); "
            f"got {type(model).__name__}."
        )
    if isinstance(embed, str):
        if embed != "last_layer":
            raise ValueError(_EMBED_ERROR.format(embed))
        if not is_linen_module(model):
            raise ValueError(
                "`embed`='last_layer' needs a flax.linen.Module `model`; for a plain apply "
                "function pass embed=features_fn(params, x) (or embed=None for the raw inputs)."
            )
    elif embed is not None and not callable(embed):
        raise ValueError(_EMBED_ERROR.format(embed))
    resolve_loss(loss)  # checks `loss`
    selection: ParamSelection = resolve_trainable(init_params, trainable)

    # The model must run on one example, and classification labels must fit its outputs.
    one = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct((1,) + a.shape[1:], a.dtype), pool_x
    )
    try:
        out = jax.eval_shape(apply_fn, init_params, one)
    except Exception as e:
        raise ValueError(
            f"the model cannot be applied to `pool_x` examples of shape {_example_shapes(pool_x)}: "
            f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
        ) from e
    if isinstance(loss, str) and loss == "cross_entropy":
        if not isinstance(out, jax.ShapeDtypeStruct) or len(out.shape) != 2:
            raise ValueError(
                f"loss='cross_entropy' needs a model that returns logits [b, C]; on one example "
                f"it returns {jax.tree_util.tree_map(lambda a: a.shape, out)}."
            )
        labels = [("pool_y", pool_y), ("target_y", target_y)]
        labels += [("test_y", test[1])] if test is not None else []
        n_classes = out.shape[-1]
        for name, y in labels:
            if y is None:
                continue
            if not np.issubdtype(y.dtype, np.integer):
                raise ValueError(
                    f"loss='cross_entropy' needs integer labels; `{name}` has dtype {y.dtype}."
                )
            if y.size and (y.min() < 0 or y.max() >= n_classes):
                raise ValueError(
                    f"`{name}` holds labels in [{y.min()}, {y.max()}] but the model has "
                    f"{n_classes} outputs."
                )

    # ---- the workdir and its configuration ----
    config = {
        "format": _FORMAT,
        "strategy": strategy,
        "rounds": rounds,
        "k": k,
        "seed": seed,
        "trainable": list(selection.paths),
        "epochs": epochs,
        "batch_size": batch_size,
        "loss": fingerprint(loss),
        "objective": fingerprint(objective),
        "embed": fingerprint(embed),
        "embed_every_round": bool(embed_every_round),
        "warm_start": bool(warm_start),
        "select_kwargs": fingerprint(select_kwargs),
        "eval_batch_size": eval_batch_size,
        "x64": bool(jnp.result_type(float) == jnp.float64),
        "model": fingerprint(model),
        "tx": fingerprint(tx),
        "init_params": tree_digest(init_params),
        "pool_x": tree_digest(pool_x),
        "pool_y": tree_digest(pool_y),
        "target_x": tree_digest(target_x),
        "target_y": tree_digest(target_y),
        "test": None if test is None else [tree_digest(test[0]), tree_digest(test[1])],
    }
    run = dict(apply_fn=apply_fn, model=model, init_params=init_params, tx=tx,
               selection=selection, loss=loss, objective=objective, pool_x=pool_x,
               pool_y=pool_y, target_x=target_x, target_y=target_y, test=test,
               strategy=strategy, rounds=rounds, k=k, seed=seed, epochs=epochs,
               batch_size=batch_size, embed=embed, embed_every_round=embed_every_round,
               warm_start=warm_start, select_kwargs=select_kwargs,
               eval_batch_size=eval_batch_size, progress=progress)
    if workdir is None:
        return _run(store=None, **run)
    digest = config_hash(config)
    workdir = os.path.abspath(os.fspath(workdir))
    os.makedirs(workdir, exist_ok=True)
    config_path = os.path.join(workdir, _CONFIG_FILE)
    metrics_path = os.path.join(workdir, _METRICS_FILE)
    lock = _lock(workdir)
    try:
        if os.path.exists(config_path):
            try:
                with open(config_path, encoding="utf-8") as f:
                    stored = json.load(f)
            except (OSError, ValueError) as e:
                raise ValueError(f"{config_path} is unreadable ({e}); use another workdir.") from e
            if stored.get("hash") != digest:
                raise ValueError(
                    f"workdir {workdir} was created by active_finetune with other arguments "
                    f"({_config_mismatch(stored.get('config', {}), config)}); use another "
                    f"workdir or delete this one."
                )
        ckpt = Checkpointer(os.path.join(workdir, _CKPT_DIR), max_to_keep=max_to_keep)
    except BaseException:
        lock.close()
        raise
    try:
        store = _Store(ckpt, config, digest, config_path, metrics_path)
        return _run(store=store, **run)
    finally:
        ckpt.close()
        lock.close()


class _Store(NamedTuple):
    """Where a run with a workdir keeps its checkpoints, configuration and metrics."""

    ckpt: Checkpointer
    config: dict
    digest: str
    config_path: str
    metrics_path: str


def _lock(workdir: str):
    """An exclusive lock on `workdir` for this process (the OS drops it if the process dies)."""
    f = open(os.path.join(workdir, ".lock"), "a")
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return f
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.close()
        raise RuntimeError(f"another active_finetune is running in {workdir}.") from e
    return f


def _run(*, store: Optional[_Store], apply_fn, model, init_params, tx, selection, loss,
         objective, pool_x, pool_y, target_x, target_y, test, strategy, rounds, k, seed, epochs,
         batch_size, embed, embed_every_round, warm_start, select_kwargs, eval_batch_size,
         progress) -> ActiveResult:
    n_pool = _leading(pool_x, "pool_x")
    budget = rounds * k
    base_key = jax.random.key(seed)
    rec = get_strategy(strategy)
    eval_step = make_eval_step(apply_fn, loss=resolve_loss(loss))
    kwargs = dict(select_kwargs)
    if "max_observed" in rec.option_names and "max_observed" not in kwargs:
        kwargs["max_observed"] = budget  # room for every labelled point, if in kernel space

    def evaluation(params, sets) -> dict:
        out = {}
        for name, x, y in sets:
            if x is None or y is None:
                continue
            m = evaluate(eval_step, params, x, y, batch_size=eval_batch_size)
            out[f"{name}_loss"] = _json_float(m["loss"])
            if "accuracy" in m:
                out[f"{name}_accuracy"] = _json_float(m["accuracy"])
        return out

    def embeddings(params) -> tuple[jax.Array, Optional[jax.Array]]:
        sets = [("pool_x", pool_x)] + ([("target_x", target_x)] if rec.needs_target else [])
        out = []
        for what, x in sets:
            n = _leading(x, what)
            if embed is None:
                leaves = jax.tree_util.tree_leaves(x)
                phi = np.concatenate([np.reshape(a, (n, -1)) for a in leaves], axis=1)
            elif isinstance(embed, str):
                phi = last_layer(model, params, x, batch_size=min(eval_batch_size, n))
            else:
                phi = embed(params, x)
            out.append(_as_embedding(phi, n, what))
        return out[0], (out[1] if len(out) > 1 else None)

    initial_train = create_train_state(init_params, tx, selection)
    round_fn = jax.jit(make_round(
        apply_fn, tx, strategy=strategy, k=k, loss=loss, objective=objective, epochs=epochs,
        batch_size=batch_size, eval_batch_size=eval_batch_size, select_kwargs=kwargs,
        warm_start=warm_start, initial=initial_train))
    state = init_round_state(init_params, tx, num_pool=n_pool, trainable=selection)
    device_pool = jax.tree_util.tree_map(jnp.asarray, (pool_x, pool_y))
    device_target = jax.tree_util.tree_map(jnp.asarray, (target_x, target_y))

    # ---- resume ----
    start, picked, metrics = 0, np.zeros((0,), np.int32), []
    if store is not None:
        template = {
            "state": jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                            state),
            "selected": jax.ShapeDtypeStruct((budget,), jnp.int32),
        }
        def check(step: int, restored: Any, meta: dict) -> None:
            if step > rounds:
                raise ValueError(f"it holds round {step} of a run with more rounds")
            if meta.get("config_hash") != store.digest:
                raise ValueError("it was written by active_finetune with other arguments")
            selected = np.asarray(restored["selected"])[: step * k]
            if (int(restored["state"].round) != step or not isinstance(meta.get("metrics"), list)
                    or len(meta["metrics"]) != step
                    or selected.tolist() != list(meta.get("indices") or [])):
                raise ValueError("its state, picks and metrics are inconsistent")

        # The newest checkpoint that restores cleanly: a damaged newer one is deleted
        # (with a warning), and none at all that restores is an error (CheckpointError).
        try:
            newest = store.ckpt.restore_newest(target=template, check=check)
        except CheckpointError as e:
            raise CheckpointError(f"{e}; use another workdir or delete this one.") from e
        if newest is not None:
            start, restored, meta = newest
            state = restored["state"]
            picked = np.asarray(restored["selected"])[: start * k].astype(np.int32)
            metrics = list(meta["metrics"])
            _log.info("active_finetune: resuming %s after round %d of %d",
                      store.ckpt.directory, start, rounds)
        # config.json after the checks above: a refused workdir is left untouched.
        _atomic_write(store.config_path, json.dumps({"hash": store.digest, "config": store.config},
                                                    indent=1, sort_keys=True) + "\n")
        _write_metrics_file(store.metrics_path, metrics)

    sets = [("target", target_x, target_y)] + ([("test", *test)] if test is not None else [])
    initial_metrics = evaluation(init_params, sets)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=rounds, initial=start, desc="active_finetune", unit="round",
                   file=sys.stderr)
        if start == rounds:
            bar.write("all rounds are done", file=sys.stderr)
        elif start:
            bar.write(f"resuming after round {start}/{rounds}", file=sys.stderr)
    try:
        fixed = embeddings(init_params) if not embed_every_round else None
        for r in range(start, rounds):
            params = combine(state.train.params, state.train.frozen)
            features = fixed if fixed is not None else embeddings(params)
            state, out = round_fn(state, jax.random.fold_in(base_key, r), *device_pool,
                                  *device_target, features=features)
            picks = np.asarray(out.picks).astype(np.int32)
            if picks.shape != (k,) or np.any(picks < 0) or len(set(picks.tolist())) != k \
                    or np.isin(picks, picked).any():
                raise RuntimeError(f"strategy {strategy!r} returned picks {picks.tolist()} in "
                                   f"round {r} (labelled before: {picked.tolist()}).")
            picked = np.concatenate([picked, picks])
            row = {
                "round": r,
                "labeled": int(out.labelled),
                "step": int(state.train.step),
                "picks": picks.tolist(),
                "values": [_json_float(v) for v in np.asarray(out.values).tolist()],
                "train_loss": _json_float(out.train_loss),
            }
            if np.isfinite(float(out.train_accuracy)):
                row["train_accuracy"] = _json_float(out.train_accuracy)
            if target_y is not None:
                row["target_loss"] = _json_float(out.target_loss)
                if np.isfinite(float(out.target_accuracy)):
                    row["target_accuracy"] = _json_float(out.target_accuracy)
            if test is not None:
                row.update(evaluation(combine(state.train.params, state.train.frozen),
                                      [("test", *test)]))
            metrics.append(row)
            if store is not None:
                selected = np.full((budget,), -1, np.int32)
                selected[: picked.shape[0]] = picked
                store.ckpt.save(
                    r + 1, {"state": state, "selected": selected},
                    {"format": _FORMAT, "config_hash": store.digest, "round": r + 1,
                     "indices": picked.tolist(), "metrics": metrics},
                )
                _write_metrics_file(store.metrics_path, metrics)
            if bar is not None:
                bar.update(1)
                shown = {name: round(v, 4) for name, v in row.items()
                         if name.endswith("accuracy") and v is not None}
                bar.set_postfix(shown)
    finally:
        if bar is not None:
            bar.close()
    return ActiveResult(
        indices=picked,
        metrics=metrics,
        params=combine(state.train.params, state.train.frozen),
        state=state.train,
        initial_metrics=initial_metrics,
    )
