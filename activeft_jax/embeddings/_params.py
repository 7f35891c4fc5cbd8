"""Choosing a subset of a parameter pytree by path, and putting it back.

A leaf's *path* is its keys joined by "/", e.g. ``params/Dense_2/kernel`` for a
linen variables dict or ``head/kernel/value`` for an nnx ``State``. The
selected leaves are always taken in `jax.tree_util.tree_flatten_with_path`
order (the order `param_paths` lists them), which fixes the layout of every
flattened gradient / Jacobian this package returns.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ParamSelection", "Wrt", "param_paths", "path_str", "ravel_leaves", "select_params"]

# None (default subset), one prefix, several prefixes, or a predicate on the path.
Wrt = Union[None, str, Sequence[str], Callable[[str], bool]]

_MAX_LISTED = 40


def _key_str(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(path: tuple) -> str:
    """A pytree key path as one "/"-joined string, e.g. ``"params/Dense_0/kernel"``."""
    return "/".join(_key_str(k) for k in path)


def param_paths(params: Any) -> list[str]:
    """The "/"-joined path of every leaf of `params`, in flattening order.

    Args:
      params: any pytree (a linen variables dict, an nnx ``State``, ...).

    Returns:
      One string per leaf, e.g. ``["params/Dense_0/bias", "params/Dense_0/kernel", ...]``.
    """
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


class ParamSelection(NamedTuple):
    """Which leaves of a pytree are differentiated (static, hashable).

    Attributes:
      treedef: structure of the whole pytree.
      indices: positions (in flattening order) of the selected leaves.
      paths: the selected leaves' paths.
      sizes: number of entries of each selected leaf.
    """

    treedef: Any
    indices: tuple[int, ...]
    paths: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def num_params(self) -> int:
        """P, the total number of selected parameters."""
        return int(sum(self.sizes))

    def take(self, params: Any) -> list:
        """The selected leaves of `params`, in order."""
        leaves = jax.tree_util.tree_leaves(params)
        return [leaves[i] for i in self.indices]

    def merge(self, params: Any, selected: Sequence[Any]) -> Any:
        """`params` with its selected leaves replaced by `selected`."""
        leaves = list(jax.tree_util.tree_leaves(params))
        for i, leaf in zip(self.indices, selected):
            leaves[i] = leaf
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def _listing(paths: Sequence[str]) -> str:
    shown = ", ".join(repr(p) for p in paths[:_MAX_LISTED])
    more = len(paths) - _MAX_LISTED
    return shown + (f", ... ({more} more)" if more > 0 else "")


def _matches(path: str, prefix: str) -> bool:
    comps, pre = path.split("/"), [c for c in prefix.strip("/").split("/") if c]
    if not pre:
        return False
    if comps[: len(pre)] == pre:
        return True
    return comps[0] == "params" and comps[1 : 1 + len(pre)] == pre


def _is_float(leaf: Any) -> bool:
    dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
    return jnp.issubdtype(dtype, jnp.inexact)


def select_params(params: Any, wrt: Wrt = None) -> ParamSelection:
    """Resolves `wrt` to a set of floating-point leaves of `params`.

    Args:
      params: the pytree passed as the first argument of ``apply_fn(params, x)``.
      wrt: which parameters to differentiate.

        * ``None``: everything under a top-level ``"params"`` key if `params` is a
          mapping that has one (so a linen ``batch_stats`` collection is left
          out), otherwise every floating-point leaf.
        * a string or a sequence of strings: path prefixes. A prefix matches a
          leaf whose path starts with it, either from the root or just below a
          top-level ``params`` key, whole components only: ``"Dense_2"`` selects
          ``params/Dense_2/kernel`` and ``params/Dense_2/bias`` but not
          ``params/Dense_20/...``. Every prefix must match at least one leaf.
        * a callable ``predicate(path: str) -> bool`` on the "/"-joined path.

    Returns:
      A hashable `ParamSelection`.

    Raises:
      ValueError: if a prefix matches nothing, or nothing floating is selected;
        the message lists the available paths.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    if not flat:
        raise ValueError("`params` has no leaves; nothing to differentiate.")
    paths = [path_str(p) for p, _ in flat]
    leaves = [leaf for _, leaf in flat]
    if wrt is None:
        try:
            has_params = "params" in params.keys()
        except Exception:  # not a mapping
            has_params = False
        chosen = [
            i for i, p in enumerate(paths) if not has_params or p.split("/")[0] == "params"
        ]
    elif callable(wrt):
        chosen = [i for i, p in enumerate(paths) if bool(wrt(p))]
    else:
        prefixes = [wrt] if isinstance(wrt, str) else list(wrt)
        if not prefixes or not all(isinstance(p, str) for p in prefixes):
            raise ValueError(
                f"`wrt` must be None, a path prefix, a list of path prefixes or a predicate "
                f"on the path; got {wrt!r}."
            )
        unknown = [pre for pre in prefixes if not any(_matches(p, pre) for p in paths)]
        if unknown:
            raise ValueError(
                f"`wrt` names {unknown!r}, which match no parameter path; "
                f"available paths: {_listing(paths)}."
            )
        chosen = [i for i, p in enumerate(paths) if any(_matches(p, pre) for pre in prefixes)]
    chosen = [i for i in chosen if _is_float(leaves[i])]
    if not chosen:
        raise ValueError(
            f"`wrt`={wrt!r} selects no floating-point parameter; "
            f"available paths: {_listing(paths)}."
        )
    return ParamSelection(
        treedef=treedef,
        indices=tuple(chosen),
        paths=tuple(paths[i] for i in chosen),
        sizes=tuple(int(np.prod(np.shape(leaves[i]), dtype=np.int64)) for i in chosen),
    )


def ravel_leaves(leaves: Sequence[jax.Array], lead: int = 0) -> jax.Array:
    """Concatenates leaves into one array, keeping their first `lead` axes.

    ``lead=0``: [P]; ``lead=1``: each leaf [a, *shape] -> [a, P].
    """
    if lead == 0:
        return jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])
    head = leaves[0].shape[:lead]
    return jnp.concatenate([jnp.reshape(leaf, head + (-1,)) for leaf in leaves], axis=lead)
