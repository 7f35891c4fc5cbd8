"""The greedy driver shared by every sequential rule: score, masked argmax, condition.

A sequential rule is a *spec*: a frozen dataclass of its static options (hashable,
compared by value, so equal options reuse one compiled program) with a method
``build(inputs, k) -> GreedyRule``. `RuleInputs` is the typed pytree of traced
arrays every rule reads (pool, targets, kernel, noise variance, key). The whole
selection is one `lax.scan` of k steps inside one compiled call; with a progress
bar it runs as a few compiled chunks of that same scan instead, with the carry
donated between them, and gives identical picks.

    spec = transductive.VTLRule(space="weight", normalize=False)
    sel = greedy(spec, RuleInputs(pool, target, Linear(), noise_var), k=10)
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any, Callable, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp
from jax import lax

from activeft_jax._core import is_traced
from activeft_jax.kernels import Kernel
from activeft_jax.selection.result import Selection

__all__ = ["GreedyRule", "RuleInputs", "RuleSpec", "greedy", "top_k"]


class RuleInputs(NamedTuple):
    """The traced inputs of a sequential rule (a pytree; absent fields are None).

    Attributes:
      pool: [N, d] pool embeddings (the candidates).
      target: [m, d] target embeddings, or None for an undirected rule.
      kernel: the kernel (a pytree: its type is static, its hyperparameters traced).
      noise_var: [] observation noise variance ρ² (a variance, never a std).
      key: PRNG key of a randomized rule, or None.
    """

    pool: jax.Array
    target: Optional[jax.Array] = None
    kernel: Optional[Kernel] = None
    noise_var: Optional[jax.Array] = None
    key: Optional[jax.Array] = None


class GreedyRule(NamedTuple):
    """A sequential acquisition rule over `num_points` candidates.

    Attributes:
      num_points: N (static).
      init: () -> state, the prior.
      score: state -> [N] acquisition values (larger is better).
      update: (state, index) -> state after observing candidate `index`.
    """

    num_points: int
    init: Callable[[], Any]
    score: Callable[[Any], jax.Array]
    update: Callable[[Any, jax.Array], Any]


class RuleSpec(Protocol):
    """The static description of a sequential rule (a frozen dataclass in practice)."""

    def build(self, inputs: RuleInputs, k: int) -> GreedyRule:
        """The rule on these inputs, with state buffers for k picks."""


def _scan(rule: GreedyRule, carry, num_steps: int, allow_repeats: bool):
    # The carry holds the current scores, computed right after each update:
    # reading the state for the score and updating it in the same iteration
    # lets XLA update the [N, m'] state in place (scoring at the top of the
    # next iteration made it copy the whole state every step).
    def body(carry, _):
        state, available, scores = carry
        scores = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
        if not allow_repeats:
            scores = jnp.where(available, scores, -jnp.inf)
        index = jnp.argmax(scores).astype(jnp.int32)
        value = scores[index]
        state = rule.update(state, index)
        if not allow_repeats:
            available = available.at[index].set(False)
        return (state, available, rule.score(state)), (index, value)

    return lax.scan(body, carry, length=num_steps)


def _init_carry(rule: GreedyRule):
    state = rule.init()
    return state, jnp.ones((rule.num_points,), bool), rule.score(state)


@functools.partial(jax.jit, static_argnames=("spec", "k", "allow_repeats"))
def _greedy_full(spec, inputs, *, k, allow_repeats):
    rule = spec.build(inputs, k)
    _, (indices, values) = _scan(rule, _init_carry(rule), k, allow_repeats)
    return Selection(indices, values)


@functools.partial(jax.jit, static_argnames=("spec", "k"))
def _greedy_init(spec, inputs, *, k):
    return _init_carry(spec.build(inputs, k))


@functools.partial(
    jax.jit,
    static_argnames=("spec", "k", "allow_repeats", "num_steps"),
    donate_argnames=("carry",),
)
def _greedy_chunk(spec, inputs, carry, *, k, allow_repeats, num_steps):
    return _scan(spec.build(inputs, k), carry, num_steps, allow_repeats)


def _any_traced(tree) -> bool:
    return any(is_traced(leaf) for leaf in jax.tree_util.tree_leaves(tree))


def greedy(spec: RuleSpec, inputs: RuleInputs, *, k: int, allow_repeats: bool = False,
           progress: bool = False, desc: str = "select") -> Selection:
    """Runs k greedy steps of the rule `spec.build(inputs, k)`.

    Args:
      spec: a hashable rule spec (static: equal specs share one compiled program).
      inputs: `RuleInputs`, the arrays the rule reads (traced).
      k: number of picks (static).
      allow_repeats: if False (default everywhere), a picked candidate is
        masked out; if True it stays a candidate (the reference's semantics).
      progress: show a progress bar on stderr (only outside of jit/vmap).
      desc: label of the progress bar.

    Returns:
      `Selection` with [k] int32 indices in pick order and the acquisition
      value of each pick at the time it was picked.
    """
    if not progress or _any_traced(inputs):
        return _greedy_full(spec, inputs, k=k, allow_repeats=allow_repeats)

    from tqdm.auto import tqdm

    chunk = max(1, math.ceil(k / 50))
    carry = _greedy_init(spec, inputs, k=k)
    indices, values = [], []
    with tqdm(total=k, desc=desc, unit="pick", file=sys.stderr, leave=False) as bar:
        done = 0
        while done < k:
            n = min(chunk, k - done)
            carry, (idx, val) = _greedy_chunk(spec, inputs, carry, k=k,
                                              allow_repeats=allow_repeats, num_steps=n)
            jax.block_until_ready(idx)
            indices.append(idx)
            values.append(val)
            done += n
            bar.update(n)
    return Selection(jnp.concatenate(indices), jnp.concatenate(values))


def top_k(scores: jax.Array, k: int) -> Selection:
    """Non-sequential selection: the k largest scores (NaN counts as -inf), best first."""
    scores = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
    values, indices = lax.top_k(scores, k)
    return Selection(indices.astype(jnp.int32), values)
