"""`TrainState` and the choice of which parameters are fine-tuned.

The parameters are split into two pytrees of the *same structure*: the
trainable leaves (frozen positions hold ``None``) and the frozen leaves
(trainable positions hold ``None``). ``None`` is an empty subtree in JAX, so
the optimizer state, the gradients and the updates exist for the trainable
leaves only, while the tree keeps its names (an ``optax.masked`` mask or a
checkpoint still sees ``params/Dense_2/kernel``).

Which leaves are trainable (`trainable=`):

* ``"head"``: the last layer (same as ``("last_layers", 1)``);
* ``("last_layers", n)``: the last n layers in module order;
* ``"all"``: every parameter (under a top-level ``"params"`` collection if
  there is one, so a linen ``batch_stats`` collection stays frozen);
* a path prefix, a list of path prefixes, or a predicate ``f(path) -> bool``
  on the "/"-joined path (the rules of `activeft_jax.embeddings.select_params`).

A *layer* is the module that owns a leaf: its path without the leaf's own name
(``params/Block_1/Dense_0`` for ``params/Block_1/Dense_0/kernel``; a trailing
``value`` of an NNX ``State`` path is dropped first). Module order is the order
in which the layers first appear in `params` walked as given. ``module.init``
returns its variables in the order the modules were first called, which is the
order of the forward pass. (A dict rebuilt by ``jax.tree.map`` or a restore is
sorted by key, which puts ``Dense_10`` before ``Dense_2``: pass the variables as
``init`` returned them, or name the layers explicitly.)
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp
import optax

from activeft_jax.embeddings import ParamSelection, path_str, select_params

__all__ = [
    "TrainState",
    "Trainable",
    "combine",
    "create_train_state",
    "layer_names",
    "partition",
    "resolve_trainable",
]

# "head" | "all" | ("last_layers", n) | prefix | [prefixes] | predicate(path) -> bool
Trainable = Union[str, tuple, Sequence[str], Callable[[str], bool]]


class TrainState(NamedTuple):
    """Fine-tuning state: a pytree, so it goes through `jax.jit` (and is donated).

    Attributes:
      step: [] int32, number of optimizer steps taken.
      params: the trainable parameters: the structure of the full parameters
        with ``None`` at every frozen leaf.
      opt_state: ``tx.init(params)``: optimizer state of the trainable leaves only.
      frozen: the frozen parameters: the full structure with ``None`` at every
        trainable leaf. Carried unchanged through `train_step`.
    """

    step: jax.Array
    params: Any
    opt_state: optax.OptState
    frozen: Any

    def full_params(self) -> Any:
        """The complete parameters (trainable and frozen leaves merged)."""
        return combine(self.params, self.frozen)


def _is_none(x: Any) -> bool:
    return x is None


def partition(params: Any, selection: ParamSelection) -> tuple[Any, Any]:
    """Splits `params` into (trainable, frozen) trees of the same structure.

    Args:
      params: the full parameter pytree.
      selection: the trainable leaves (`select_params` / `resolve_trainable`).

    Returns:
      ``(trainable, frozen)``; each holds ``None`` where the other holds a leaf.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    chosen = set(selection.indices)
    trainable = [leaf if i in chosen else None for i, leaf in enumerate(leaves)]
    frozen = [None if i in chosen else leaf for i, leaf in enumerate(leaves)]
    unflatten = jax.tree_util.tree_unflatten
    return unflatten(treedef, trainable), unflatten(treedef, frozen)


def combine(trainable: Any, frozen: Any) -> Any:
    """Inverse of `partition`: the leaf of whichever tree holds one."""
    return jax.tree_util.tree_map(
        lambda a, b: b if a is None else a, trainable, frozen, is_leaf=_is_none
    )


def _strip_value(path: str) -> list[str]:
    comps = path.split("/")
    if len(comps) > 1 and comps[-1] == "value":  # nnx State: head/kernel/value
        comps = comps[:-1]
    return comps


def _layer_of(path: str) -> str:
    comps = _strip_value(path)
    return "/".join(comps[:-1]) if len(comps) > 1 else comps[0]


def _walk(tree: Any, prefix: tuple[str, ...], out: list[tuple[str, Any]]) -> None:
    """Leaves of `tree` with their paths, mappings in their own (insertion) order."""
    if tree is None:
        return
    if isinstance(tree, Mapping) or (hasattr(tree, "items") and hasattr(tree, "keys")):
        for key, value in tree.items():
            _walk(value, prefix + (str(key),), out)
    elif isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        for i, value in enumerate(tree):
            _walk(value, prefix + (str(i),), out)
    else:
        # Anything else (an array, a NamedTuple, an nnx Variable): flatten with JAX.
        flat, _ = jax.tree_util.tree_flatten_with_path(tree)
        if len(flat) == 1 and not flat[0][0]:
            out.append(("/".join(prefix), flat[0][1]))
            return
        for path, leaf in flat:
            out.append(("/".join(prefix + tuple(path_str(path).split("/"))), leaf))


def _has_params_collection(params: Any) -> bool:
    try:
        return "params" in params.keys()
    except Exception:  # not a mapping
        return False


def layer_names(params: Any) -> list[str]:
    """The layers of `params` (paths of the modules that own leaves), in module order.

    Only floating-point leaves count, and only those under a top-level
    ``"params"`` collection if `params` has one.

    Example:
      >>> layer_names(mlp.init(key, x))
      ['params/Dense_0', 'params/Dense_1', 'params/Dense_2']
    """
    walked: list[tuple[str, Any]] = []
    _walk(params, (), walked)
    restrict = _has_params_collection(params)
    names: dict[str, None] = {}
    for path, leaf in walked:
        if restrict and path.split("/")[0] != "params":
            continue
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            continue
        names.setdefault(_layer_of(path), None)
    return list(names)


def resolve_trainable(params: Any, trainable: Trainable = "head") -> ParamSelection:
    """Resolves a `trainable` specification to the leaves that are fine-tuned.

    Args:
      params: the full parameter pytree (as ``module.init`` returned it).
      trainable: ``"head"``, ``"all"``, ``("last_layers", n)``, a path prefix,
        a list of path prefixes, a predicate on the "/"-joined path, or an
        already resolved `ParamSelection` (returned as is).

    Returns:
      A `ParamSelection` (its ``paths`` name the trainable leaves).

    Raises:
      ValueError: an unknown specification, n outside [1, number of layers],
        or a prefix / predicate that selects nothing (the message lists the
        layers or paths).
    """
    if isinstance(trainable, ParamSelection):
        return trainable
    if isinstance(trainable, str) and trainable == "all":
        return select_params(params, None)
    n_last = None
    if isinstance(trainable, str) and trainable == "head":
        n_last = 1
    elif isinstance(trainable, str) and trainable == "last_layers":
        raise ValueError(
            "`trainable`='last_layers' needs a number of layers: pass ('last_layers', n)."
        )
    elif isinstance(trainable, tuple) and len(trainable) == 2 and trainable[0] == "last_layers":
        n_last = trainable[1]
        if isinstance(n_last, bool) or not isinstance(n_last, int) or n_last < 1:
            raise ValueError(
                f"`trainable`=('last_layers', n) needs an int n >= 1; got n={n_last!r}."
            )
    if n_last is not None:
        layers = layer_names(params)
        if not layers:
            raise ValueError("`params` has no floating-point parameters to fine-tune.")
        if n_last > len(layers):
            raise ValueError(
                f"`trainable`={trainable!r} asks for the last {n_last} layers, but `params` has "
                f"{len(layers)}: {layers}."
            )
        chosen = set(layers[-n_last:])
        restrict = _has_params_collection(params)

        def predicate(path: str) -> bool:
            if restrict and path.split("/")[0] != "params":
                return False
            return _layer_of(path) in chosen

        return select_params(params, predicate)
    prefixes = isinstance(trainable, (list, tuple)) and bool(trainable) and all(
        isinstance(p, str) for p in trainable
    )
    if isinstance(trainable, str) or callable(trainable) or prefixes:
        return select_params(params, trainable)
    raise ValueError(
        f"`trainable` must be 'head', 'all', ('last_layers', n), a path prefix, a list of path "
        f"prefixes or a predicate on the path; got {trainable!r}."
    )


def _copy(leaf: Any) -> Any:
    return None if leaf is None else jnp.array(leaf, copy=True)


def create_train_state(params: Any, tx: optax.GradientTransformation,
                       trainable: Trainable = "head") -> TrainState:
    """A fresh `TrainState` that fine-tunes the `trainable` part of `params` with `tx`.

    The leaves are copied, so the caller's `params` survive `train_step`'s
    buffer donation.

    Args:
      params: the full parameter pytree (e.g. linen variables ``{"params": ...}``).
      tx: any optax transformation; it sees only the trainable leaves.
      trainable: which leaves are fine-tuned (see `resolve_trainable`).

    Returns:
      ``TrainState(step=0, params=trainable, opt_state=tx.init(trainable), frozen=rest)``.
    """
    selection = resolve_trainable(params, trainable)
    params = jax.tree_util.tree_map(_copy, params)
    train, frozen = partition(params, selection)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=train, opt_state=tx.init(train), frozen=frozen
    )
