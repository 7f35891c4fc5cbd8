"""The greedy driver shared by every sequential rule: score, masked argmax, condition.

A rule is a `GreedyRule(num_points, init, score, update)` built by a
module-level `build(args, k=..., **options)` function from a pytree of arrays
`args` (traced: pool, targets, noise, key) and hashable static options. The
whole selection is one `lax.scan` of k steps inside one compiled call; with a
progress bar it runs as a few compiled chunks of that same scan instead, with
the carry donated between them, and gives identical picks.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from activeft_jax.selection.result import Selection
from activeft_jax.validation import is_traced

__all__ = ["GreedyRule", "greedy", "top_k"]


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


@functools.partial(jax.jit, static_argnames=("build", "k", "allow_repeats", "options"))
def _greedy_full(build, args, *, k, allow_repeats, options):
    rule = build(args, k=k, **dict(options))
    _, (indices, values) = _scan(rule, _init_carry(rule), k, allow_repeats)
    return Selection(indices, values)


@functools.partial(jax.jit, static_argnames=("build", "k", "options"))
def _greedy_init(build, args, *, k, options):
    return _init_carry(build(args, k=k, **dict(options)))


@functools.partial(
    jax.jit,
    static_argnames=("build", "k", "allow_repeats", "options", "num_steps"),
    donate_argnames=("carry",),
)
def _greedy_chunk(build, args, carry, *, k, allow_repeats, options, num_steps):
    rule = build(args, k=k, **dict(options))
    return _scan(rule, carry, num_steps, allow_repeats)


def _any_traced(tree) -> bool:
    return any(is_traced(leaf) for leaf in jax.tree_util.tree_leaves(tree))


def greedy(build: Callable[..., GreedyRule], args: Any, *, k: int, allow_repeats: bool,
           options: tuple = (), progress: bool = False, desc: str = "select") -> Selection:
    """Runs k greedy steps of the rule `build(args, k=k, **dict(options))`.

    Args:
      build: a module-level function (hashable, static) returning a `GreedyRule`.
      args: pytree of arrays the rule reads (traced).
      k: number of picks (static).
      allow_repeats: if False (default everywhere), a picked candidate is
        masked out; if True it stays a candidate (the reference's semantics).
      options: static options as a tuple of (name, value) pairs.
      progress: show a progress bar on stderr (only outside of jit/vmap).
      desc: label of the progress bar.

    Returns:
      `Selection` with [k] int32 indices in pick order and the acquisition
      value of each pick at the time it was picked.
    """
    if not progress or _any_traced(args):
        return _greedy_full(build, args, k=k, allow_repeats=allow_repeats, options=options)

    from tqdm.auto import tqdm

    chunk = max(1, math.ceil(k / 50))
    carry = _greedy_init(build, args, k=k, options=options)
    indices, values = [], []
    with tqdm(total=k, desc=desc, unit="pick", file=sys.stderr, leave=False) as bar:
        done = 0
        while done < k:
            n = min(chunk, k - done)
            carry, (idx, val) = _greedy_chunk(
                build, args, carry, k=k, allow_repeats=allow_repeats, options=options, num_steps=n
            )
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
