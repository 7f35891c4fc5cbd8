"""Select from raw inputs with a model: embed pool and target, then `select`, in one call.

The JAX counterpart of the reference's
``ActiveDataLoader.initialize(data, target, batch_size).next(model)``:

    sel = aft.select_with_model(module, variables, pool_x, target_x, k=50)   # VTL, noise_std 0.1
    loader = aft.ActiveDataLoader(pool_x, target_x, k=50)
    sel = loader.next(module, variables)      # picks 50; the next call never re-picks them

Both only compose the public pieces: an embedding of `activeft_jax.embeddings`
(``last_layer``, ``loss_gradient`` or ``ntk``; each runs in fixed-size jitted
batches) applied to the pool and to the target, then `activeft_jax.select`.
The result is exactly that of calling them by hand.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np

from activeft_jax import embeddings as _emb
from activeft_jax.selection import Selection, get_strategy, select

__all__ = ["EMBEDDINGS", "ActiveDataLoader", "select_with_model"]

#: The embedding kinds `select_with_model` accepts, and the function each calls.
EMBEDDINGS: Mapping[str, Callable[..., jax.Array]] = {
    "last_layer": _emb.last_layer,
    "loss_gradient": _emb.loss_gradient,
    "ntk": _emb.ntk,
}

# arguments the convenience fills in itself (never through `embedding_options`)
_OWN = frozenset({"model", "apply_fn", "params", "x", "batch_size"})


def _check_embedding(embedding: Any, options: Optional[Mapping[str, Any]]) -> dict:
    """The embedding name and its options, checked; returns the options as a dict."""
    if not isinstance(embedding, str) or embedding not in EMBEDDINGS:
        raise ValueError(f"`embedding` must be one of {sorted(EMBEDDINGS)}; got {embedding!r}.")
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(f"`embedding_options` must be a dict; got {type(options).__name__}.")
    options = dict(options)
    params = inspect.signature(EMBEDDINGS[embedding]).parameters
    allowed = {p for p in params if p not in _OWN} | {"method"}  # method: NNX only
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"embedding {embedding!r} does not take option(s) {unknown}; it takes "
                         f"{sorted(allowed)} (batch_size is an argument of its own).")
    if "labels" in options or options.get("mode") == "labels":
        raise ValueError("loss_gradient with true labels cannot embed an unlabelled pool and "
                         "target alike; use mode='argmax' (BADGE, the default) or "
                         "mode='expected'.")
    return options


def _shape(a: Any) -> tuple:
    return tuple(getattr(a, "shape", np.shape(a)))


def _examples(x: Any, name: str):
    """(tree structure, per-leaf example shapes, n) of a batch of inputs."""
    if x is None:
        raise ValueError(f"`{name}` is required; got None.")
    leaves, treedef = jax.tree_util.tree_flatten(x)
    if not leaves:
        raise ValueError(f"`{name}` holds no arrays.")
    shapes = [_shape(leaf) for leaf in leaves]
    if any(len(s) < 1 for s in shapes):
        raise ValueError(f"`{name}` must be an array [n, *example_shape] (or a pytree of them); "
                         f"got shape(s) {shapes if len(shapes) > 1 else shapes[0]}.")
    return treedef, [s[1:] for s in shapes], shapes[0][0]


def _check_target_like_pool(pool_inputs: Any, target_inputs: Any) -> None:
    """Target inputs must be a non-empty batch of examples shaped like the pool's."""
    pool_def, pool_ex, _ = _examples(pool_inputs, "pool_inputs")
    try:
        target_def, target_ex, m = _examples(target_inputs, "target_inputs")
    except ValueError:
        target_def, target_ex, m = None, None, None
    if target_def != pool_def or target_ex != pool_ex:
        want = tuple(pool_ex[0]) if len(pool_ex) == 1 else [tuple(e) for e in pool_ex]
        raise ValueError(
            f"`target_inputs` must be a batch of examples shaped like the pool's ({want} each, "
            f"i.e. [m, *{want}]); got shape {jax.tree_util.tree_map(_shape, target_inputs)} "
            f"(pool_inputs: {jax.tree_util.tree_map(_shape, pool_inputs)}).")
    if m == 0:
        raise ValueError(f"`target_inputs` is empty (shape "
                         f"{jax.tree_util.tree_map(_shape, target_inputs)}); give at least one.")


def _embedder(model: Any, variables: Any, embedding: str, options: dict):
    """-> ``embed(x, batch_size)``: the chosen embedding of `model` applied to inputs `x`."""
    options = dict(options)
    method = options.pop("method", None)
    if _emb.is_nnx_module(model):
        if variables is not None:
            raise ValueError("an NNX `model` carries its own parameters: pass variables=None.")
        if embedding != "ntk" and method is None:
            head = " (and head=(kernel, bias) of the final layer)" * (embedding == "loss_gradient")
            raise ValueError(
                f"embedding {embedding!r} of an NNX model needs embedding_options={{'method': "
                f"'features'}}: the name of a method returning the penultimate features{head}.")
        fn, params = _emb.nnx_apply(model, method=method)
    else:
        if method is not None:
            raise ValueError("embedding option `method` applies only to a flax.nnx.Module `model`.")
        if _emb.is_linen_module(model):
            if variables is None:
                raise ValueError("a linen `model` needs its `variables` (e.g. {'params': ...}); "
                                 "got None.")
            fn = model.apply if embedding == "ntk" else model
        elif callable(model):
            fn = model
        else:
            raise ValueError(f"`model` must be a flax.linen.Module, a flax.nnx.Module or a "
                             f"function f(params, x); got {type(model).__name__}.")
        params = variables
    embed_fn = EMBEDDINGS[embedding]

    def embed(x, batch_size):
        kwargs = dict(options) if batch_size is None else dict(options, batch_size=batch_size)
        return embed_fn(fn, params, x, **kwargs)

    return embed


def select_with_model(model: Any, variables: Any, pool_inputs: Any, target_inputs: Any = None, *,
                      k: int, strategy: Optional[str] = None, embedding: str = "last_layer",
                      embedding_options: Optional[Mapping[str, Any]] = None,
                      batch_size: Optional[int] = None, noise_std: Any = 0.1, key: Any = None,
                      **select_options: Any) -> Selection:
    """Embeds pool and target inputs with a model and selects k pool points, in one call.

    Equivalent to ``select(strategy, E(pool_inputs), E(target_inputs), k=k,
    noise_std=noise_std, key=key, **select_options)`` with ``E`` the chosen
    embedding of `activeft_jax.embeddings` (each runs in fixed-size jitted
    batches): the same `Selection`, bit for bit. The defaults mirror the
    reference's ``ActiveDataLoader.initialize(...).next(model)``: VTL with
    noise_std 0.1 (its "automatic" noise, a fixed variance 0.01) when a target
    is given, undirected VTL otherwise; unlike the reference the selection is
    one exact greedy pass over the whole pool (no shuffled mini batches).

    Args:
      model: a `flax.linen.Module` (with its `variables`), a `flax.nnx.Module`
        (``variables=None``; last_layer / loss_gradient need
        ``embedding_options={"method": "features"}``, a method returning the
        penultimate features), or a pure function ``f(params, x)``: the
        features function of last_layer / loss_gradient, the ``apply_fn`` of
        ntk.
      variables: what `model` takes (``{"params": ...}`` for linen); None for NNX.
      pool_inputs: [N, *example_shape] raw model inputs (or a pytree of arrays
        sharing N, e.g. token ids and a mask).
      target_inputs: [m, *example_shape] inputs of the target, shaped like the
        pool's; None for an undirected strategy.
      k: number of picks.
      strategy: a name of `activeft_jax.STRATEGIES` (or "sift"); default "vtl"
        with a target, "undirected_vtl" without. A strategy that takes no
        target ignores `target_inputs` (they are then not embedded).
      embedding: "last_layer" (penultimate features; the reference's
        ``model.embed``), "loss_gradient" (BADGE's last-layer gradients,
        mode "argmax" or "expected") or "ntk" (per-example Jacobian rows, or
        their random projection with ``projection_dim`` and ``key``).
      embedding_options: keyword arguments of that embedding function, e.g.
        ``{"layer": "Dense_1"}``, ``{"mode": "expected"}``,
        ``{"wrt": ["Dense_2"]}``, ``{"projection_dim": 256, "key": key}``.
      batch_size: examples per compiled embedding batch; None for the
        embedding's default (256; 32 for ntk).
      noise_std: observation noise of the GP rules (in embedding units).
      key: PRNG key of a randomized strategy (random, maxdist, ...).
      **select_options: any other keyword of `activeft_jax.select`
        (``observed``, ``candidates``, ``allow_repeats``, ``normalize``,
        ``probs``, strategy options, ...).

    Returns:
      `Selection(indices [k], values [k])` in pick order.

    Raises:
      ValueError: unknown `embedding`, strategy or option; target inputs not
        shaped like the pool's; a strategy that needs a target without one;
        and whatever the embedding or `select` refuses (wrong example shape
        for the model, k out of range, ...), before anything heavy runs.
    """
    if strategy is None:
        strategy = "undirected_vtl" if target_inputs is None else "vtl"
    rec = get_strategy(strategy)
    options = _check_embedding(embedding, embedding_options)
    _examples(pool_inputs, "pool_inputs")
    use_target = rec.needs_target and target_inputs is not None
    if rec.needs_target and target_inputs is None:
        raise ValueError(f"strategy {strategy!r} needs `target_inputs` [m, *example_shape]; "
                         f"got None.")
    if use_target:
        _check_target_like_pool(pool_inputs, target_inputs)
    embed = _embedder(model, variables, embedding, options)
    pool = embed(pool_inputs, batch_size)
    target = embed(target_inputs, batch_size) if use_target else None
    return select(strategy, pool, target, k=k, noise_std=noise_std, key=key, **select_options)


class ActiveDataLoader:
    """The reference's ``ActiveDataLoader``: picks the next k pool points for a model.

    ``loader.next(model, variables)`` is `select_with_model` on the stored
    pool / target inputs with ``observed=`` every point picked by earlier
    calls, so successive calls never re-pick a point and the GP rules
    condition on what was already picked (their greedy run continues: two
    calls of k picks with one fixed model are the 2k picks of one call). The
    only state is `observed`, the picked pool indices in pick order (a NumPy
    int32 array; set it to start from an already-labelled set, or to
    ``[]`` to forget). Everything else is the pure `select_with_model`.

    Differences to the reference: its ``next`` neither remembers nor excludes
    earlier picks, and it selects in shuffled mini batches of 1000 (a
    tournament whose result depends on the shuffle) where this is one exact
    greedy pass.

    Example:
      >>> loader = ActiveDataLoader(pool_x, target_x, k=16)
      >>> for r in range(5):
      ...     sel = loader.next(module, variables)      # 16 new pool indices
      ...     variables = train(variables, pool_x[sel.indices], pool_y[sel.indices])
    """

    def __init__(self, pool_inputs: Any, target_inputs: Any = None, *, k: int,
                 strategy: Optional[str] = None, embedding: str = "last_layer",
                 embedding_options: Optional[Mapping[str, Any]] = None,
                 batch_size: Optional[int] = None, noise_std: Any = 0.1,
                 observed: Any = None, **select_options: Any):
        """Stores and checks the inputs and options (see `select_with_model`).

        Args:
          pool_inputs: [N, *example_shape] inputs to select from.
          target_inputs: [m, *example_shape] target inputs, or None.
          k: picks per `next` call (a Python int >= 1).
          strategy, embedding, embedding_options, batch_size, noise_std,
            **select_options: as in `select_with_model` (``observed`` is
            managed here, so it is not a select option).
          observed: pool indices already labelled (never picked); default none.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"`k` must be a Python int >= 1; got {k!r}.")
        if "key" in select_options:
            raise ValueError("give the PRNG `key` of a randomized strategy to `next(...)`, once "
                             "per call.")
        self.strategy = ("undirected_vtl" if target_inputs is None else "vtl") \
            if strategy is None else strategy
        rec = get_strategy(self.strategy)
        self.embedding_options = _check_embedding(embedding, embedding_options)
        _, _, self._n = _examples(pool_inputs, "pool_inputs")
        if rec.needs_target and target_inputs is None:
            raise ValueError(f"strategy {self.strategy!r} needs `target_inputs`; got None.")
        if target_inputs is not None:
            _check_target_like_pool(pool_inputs, target_inputs)
        self.pool_inputs, self.target_inputs = pool_inputs, target_inputs
        self.k, self.embedding = int(k), embedding
        self.batch_size, self.noise_std = batch_size, noise_std
        self.select_options = select_options
        self.observed = self._indices([] if observed is None else observed)

    def _indices(self, observed: Any) -> np.ndarray:
        idx = np.asarray(observed)
        if idx.dtype == np.bool_ and idx.shape == (self._n,):
            idx = np.flatnonzero(idx)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(f"`observed` must be [n] int pool indices or a [{self._n}] bool mask; "
                             f"got shape {idx.shape} and dtype {idx.dtype}.")
        if idx.size and (idx.min() < 0 or idx.max() >= self._n):
            raise ValueError(f"`observed` indices must lie in [0, N={self._n}); got values from "
                             f"{idx.min()} to {idx.max()}.")
        return idx.astype(np.int32)

    def with_target(self, target_inputs: Any) -> ActiveDataLoader:
        """Sets new target inputs (shaped like the pool's); returns the loader, as the reference."""
        _check_target_like_pool(self.pool_inputs, target_inputs)
        self.target_inputs = target_inputs
        return self

    def next(self, model: Any, variables: Any = None, key: Any = None) -> Selection:
        """The next k picks for the current `model`, never one of `observed`; records them.

        Args:
          model: as in `select_with_model` (a linen module, an NNX module or
            a function ``f(params, x)``).
          variables: its variables / params; None for an NNX module.
          key: PRNG key, for a randomized strategy.

        Returns:
          `Selection(indices [k], values [k])`; the indices are appended to
          `observed`.
        """
        observed = None
        if self.observed.size:  # a [N] mask: one shape for every later round (one compilation)
            observed = np.zeros((self._n,), bool)
            observed[self.observed] = True
        sel = select_with_model(
            model, variables, self.pool_inputs, self.target_inputs, k=self.k,
            strategy=self.strategy, embedding=self.embedding,
            embedding_options=self.embedding_options, batch_size=self.batch_size,
            noise_std=self.noise_std, key=key, observed=observed, **self.select_options)
        self.observed = np.concatenate([self.observed, np.asarray(sel.indices).reshape(-1)]
                                       ).astype(np.int32)
        return sel
