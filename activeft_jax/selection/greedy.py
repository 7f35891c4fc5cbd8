"""The greedy driver shared by every sequential rule: score, masked argmax, condition.

A sequential rule is a *spec*: a frozen dataclass of its static options (hashable,
compared by value, so equal options reuse one compiled program) with a method
``build(inputs, k, shards) -> GreedyRule``. `RuleInputs` is the typed pytree of traced
arrays every rule reads (pool, targets, kernel, noise variance, key, the observed and
the candidate masks). The whole selection is one `lax.scan` of k steps inside one
compiled call; with a progress bar it runs as a few compiled chunks of that same scan
instead, with the carry donated between them, and gives identical picks.

A pool split over several devices (`activeft_jax._core.layout_of`) runs the scan
under `shard_map`: every device holds its block of the pool and of every per-point
state, and a step moves only the picked row (d floats) and one (value, index) pair
per device (`activeft_jax._core.Shards`).

    spec = transductive.VTLRule(space="weight", normalize=False)
    sel = greedy(spec, RuleInputs(pool, target, Linear(), noise_var), k=10)

Picks: the best candidate that is available: a candidate (`candidates`), not
observed (`observed`) and, unless `allow_repeats`, not picked yet. A NaN or -inf
score ranks below every finite one but above every unavailable point, so an
unavailable point is never picked while an available one is left; when none is
left (possible only with traced masks), the pick is -1 with value -inf and the
state is left as it was.
"""

from __future__ import annotations

import functools
import math
import sys
import warnings
from typing import Any, Callable, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from activeft_jax._core import PLAIN, Layout, Shards, is_traced, layout_of, on_shards
from activeft_jax.kernels import Kernel
from activeft_jax.selection.result import Selection

__all__ = ["INPUT_SPECS", "GreedyRule", "RuleInputs", "RuleSpec", "available_mask", "greedy",
           "masked_top_k", "nonsequential", "run_local", "top_k"]


class RuleInputs(NamedTuple):
    """The traced inputs of a sequential rule (a pytree; absent fields are None).

    Attributes:
      pool: [N, d] pool embeddings (the candidates).
      target: [m, d] target embeddings, or None for an undirected rule.
      kernel: the kernel (a pytree: its type is static, its hyperparameters traced).
      noise_var: [] observation noise variance ρ² (a variance, never a std).
      key: PRNG key of a randomized rule, or None.
      observed: [N] bool, the points already labelled: conditioned on (GP rules),
        existing centres (maxdist), never picked; or None.
      candidates: [N] bool, the points that may be picked; or None for all.
      observed_index: [c] int32 observed pool indices padded with -1 (a static
        capacity c), where a rule must store a row per observation (kernel
        space); None otherwise.
      prior_precision: [d, d] precision of observations made elsewhere (of
        points outside `pool`, e.g. SIFT's observed points outside a prompt's
        candidates), added to the prior in weight space; or None.
    """

    pool: jax.Array
    target: Optional[jax.Array] = None
    kernel: Optional[Kernel] = None
    noise_var: Optional[jax.Array] = None
    key: Optional[jax.Array] = None
    observed: Optional[jax.Array] = None
    candidates: Optional[jax.Array] = None
    observed_index: Optional[jax.Array] = None
    prior_precision: Optional[jax.Array] = None


#: Which fields of `RuleInputs` have the pool's N as their leading axis (`on_shards` markers).
INPUT_SPECS = RuleInputs(pool="pool", target=None, kernel=None, noise_var=None, key=None,
                    observed="pool", candidates="pool", observed_index=None,
                    prior_precision=None)


class GreedyRule(NamedTuple):
    """A sequential acquisition rule over the (local block of the) pool.

    Attributes:
      num_points: rows of the local block (N on one device).
      init: () -> state, the prior (conditioned on the observed points).
      score: state -> [num_points] acquisition values (larger is better).
      update: (state, index, valid) -> state after observing the pool point
        `index` (global); with `valid` False it must leave the state as it is.
      roundoff: optional (state, index) -> [] the relative round-off of the
        scores near the pool point `index` (global), e.g. ε·σ_0(x)/σ_n(x) for
        a GP rule; the driver flags a step whose top two scores are closer
        than that (see `greedy`'s `warn_ties`). None: exact ties only.
    """

    num_points: int
    init: Callable[[], Any]
    score: Callable[[Any], jax.Array]
    update: Callable[[Any, jax.Array, jax.Array], Any]
    roundoff: Optional[Callable[[Any, jax.Array], jax.Array]] = None


class RuleSpec(Protocol):
    """The static description of a sequential rule (a frozen dataclass in practice)."""

    def build(self, inputs: RuleInputs, k: int, shards: Shards) -> GreedyRule:
        """The rule on these (local) inputs, with state buffers for k picks."""


def available_mask(n: int, observed: Optional[jax.Array],
                   candidates: Optional[jax.Array]) -> jax.Array:
    """[n] bool: a candidate and not observed."""
    mask = jnp.ones((n,), bool)
    if observed is not None:
        mask = mask & ~observed
    if candidates is not None:
        mask = mask & candidates
    return mask


def _rank(scores: jax.Array, available: jax.Array) -> jax.Array:
    """The pick order: NaN and -inf just below every finite score, unavailable points below all."""
    lowest = jnp.finfo(scores.dtype).min
    clean = jnp.where(jnp.isnan(scores) | (scores == -jnp.inf), lowest, scores)
    return jnp.where(available, clean, -jnp.inf)


#: `_unresolved`: scores within this many units of round-off (ε) count as tied.
TIE_ULPS = 16


def _unresolved(rule: GreedyRule, state, scores: jax.Array, available: jax.Array,
                index: jax.Array, best: jax.Array, step: jax.Array, shards: Shards) -> jax.Array:
    """[] bool: the pick `index` (score `best`) was not resolved by the precision.

    Either, after the first pick, every available finite score equals `best`
    within TIE_ULPS·ε of its magnitude (all tied; at the first pick such a tie
    is the prior's own, e.g. unit-norm embeddings under undirected ITL), or the
    rule's relative round-off at the pick exceeds √ε (half the digits are gone)
    and the runner-up is within that round-off.
    """
    ok = available & jnp.isfinite(scores)
    lo = -shards.max(jnp.where(ok, -scores, -jnp.inf))
    count = shards.sum(ok.astype(jnp.int32))
    eps = jnp.finfo(scores.dtype).eps
    scale = jnp.maximum(jnp.abs(best), jnp.abs(lo))
    flat = (step > 0) & (count >= 2) & (best - lo <= TIE_ULPS * eps * scale)
    if rule.roundoff is None:
        return flat
    rel = rule.roundoff(state, index)
    second = shards.max(jnp.where(shards.mark(ok, index, False), scores, -jnp.inf))
    close = (rel > jnp.sqrt(eps)) & (best - second <= rel * jnp.abs(best))
    return flat | ((count >= 2) & close)


def _scan(rule: GreedyRule, carry, num_steps: int, allow_repeats: bool, shards: Shards,
          start: Any = 0):
    # The carry holds the current scores, computed right after each update:
    # reading the state for the score and updating it in the same iteration
    # lets XLA update the [N, m'] state in place (scoring at the top of the
    # next iteration made it copy the whole state every step).
    def body(carry, step):
        state, available, scores = carry
        rank = _rank(scores, available)
        index = shards.argmax(rank)
        shown = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
        best, value = shards.values_at(index, rank, shown)
        valid = best > -jnp.inf
        tied = _unresolved(rule, state, scores, available, index, value, step, shards)
        state = rule.update(state, index, valid)
        if not allow_repeats:
            available = shards.mark(available, index, False)
        out = (jnp.where(valid, index, -1), jnp.where(valid, value, -jnp.inf), tied & valid)
        return (state, available, rule.score(state)), out

    return lax.scan(body, carry, start + jnp.arange(num_steps, dtype=jnp.int32))


def _init_carry(rule: GreedyRule, inputs: RuleInputs):
    state = rule.init()
    available = available_mask(rule.num_points, inputs.observed, inputs.candidates)
    return state, available, rule.score(state)


def run_local(spec: RuleSpec, inputs: RuleInputs, k: int, allow_repeats: bool,
              shards: Shards) -> Selection:
    """The greedy scan on this device's block, for code already inside `on_shards`."""
    return _run_flagged(spec, inputs, k, allow_repeats, shards)[0]


def _run_flagged(spec, inputs, k, allow_repeats, shards):
    """`run_local` and, per step, whether the pick was unresolved ([k] bool, `_unresolved`)."""
    rule = spec.build(inputs, k, shards)
    _, (indices, values, tied) = _scan(rule, _init_carry(rule, inputs), k, allow_repeats, shards)
    return Selection(indices, values), tied


@functools.partial(jax.jit, static_argnames=("spec", "k", "allow_repeats", "layout"))
def _greedy_full(spec, inputs, *, k, allow_repeats, layout):
    def local(inputs):
        return _run_flagged(spec, inputs, k, allow_repeats, Shards(layout, inputs.pool.shape[0]))

    return on_shards(layout, local, (INPUT_SPECS,), inputs)


def _warn_unresolved(tied, dtype, desc: str) -> None:
    """One warning per call when a low-precision run had unresolved picks (`_unresolved`)."""
    if jnp.finfo(dtype).bits >= 64:
        return  # float64: a tie is the data's (e.g. identical points), not the precision's
    if hasattr(tied, "addressable_data") and not getattr(tied, "is_fully_addressable", True):
        tied = tied.addressable_data(0)  # replicated: every process holds the whole flag
    tied = np.asarray(tied)
    if not tied.any():
        return
    first = int(np.argmax(tied))
    warnings.warn(
        f"{desc}: {jnp.dtype(dtype).name} could not resolve the best score from the next "
        f"(equal within round-off) at {int(tied.sum())} of {tied.size} picks (first at pick "
        f"{first}), so those picks may differ from an exact greedy; use float64 inputs "
        f"(jax_enable_x64) or a larger noise_std.", RuntimeWarning, stacklevel=3)


@functools.partial(jax.jit, static_argnames=("spec", "k"))
def _greedy_init(spec, inputs, *, k):
    return _init_carry(spec.build(inputs, k, Shards(PLAIN, inputs.pool.shape[0])), inputs)


@functools.partial(
    jax.jit,
    static_argnames=("spec", "k", "allow_repeats", "num_steps"),
    donate_argnames=("carry",),
)
def _greedy_chunk(spec, inputs, carry, start, *, k, allow_repeats, num_steps):
    shards = Shards(PLAIN, inputs.pool.shape[0])
    return _scan(spec.build(inputs, k, shards), carry, num_steps, allow_repeats, shards, start)


def _any_traced(tree) -> bool:
    return any(is_traced(leaf) for leaf in jax.tree_util.tree_leaves(tree))


def greedy(spec: RuleSpec, inputs: RuleInputs, *, k: int, allow_repeats: bool = False,
           progress: bool = False, desc: str = "select",
           layout: Optional[Layout] = None, warn_ties: bool = False) -> Selection:
    """Runs k greedy steps of the rule `spec.build(inputs, k, shards)`.

    Args:
      spec: a hashable rule spec (static: equal specs share one compiled program).
      inputs: `RuleInputs`, the arrays the rule reads (traced).
      k: number of picks (static).
      allow_repeats: if False (default everywhere), a picked candidate is
        masked out; if True it stays a candidate (the reference's semantics).
        Observed points are never picked either way.
      progress: show a progress bar on stderr (only outside of jit/vmap, on a
        pool that is not split over devices).
      desc: label of the progress bar.
      layout: where the pool lives; default `layout_of(inputs.pool)`.
      warn_ties: in float32 (or lower), warn (RuntimeWarning, once per call,
        outside of jit only) when some pick was not resolved by the precision:
        all available scores equal within round-off, or the runner-up within
        the rule's `GreedyRule.roundoff` once that exceeds √ε (the GP rules:
        their variances run out of digits at a small noise).

    Returns:
      `Selection` with [k] int32 indices in pick order and the acquisition
      value of each pick at the time it was picked (-1 and -inf for picks
      that found no available point: only with traced masks).
    """
    layout = layout_of(inputs.pool) if layout is None else layout
    if not progress or layout.sharded or _any_traced(inputs):
        sel, tied = _greedy_full(spec, inputs, k=k, allow_repeats=allow_repeats, layout=layout)
        if warn_ties and not is_traced(tied):
            _warn_unresolved(tied, inputs.pool.dtype, desc)
        return sel

    from tqdm.auto import tqdm

    chunk = max(1, math.ceil(k / 50))
    carry = _greedy_init(spec, inputs, k=k)
    indices, values, tied = [], [], []
    with tqdm(total=k, desc=desc, unit="pick", file=sys.stderr, leave=False) as bar:
        done = 0
        while done < k:
            n = min(chunk, k - done)
            carry, (idx, val, tie) = _greedy_chunk(spec, inputs, carry, jnp.int32(done), k=k,
                                                   allow_repeats=allow_repeats, num_steps=n)
            jax.block_until_ready(idx)
            indices.append(idx)
            values.append(val)
            tied.append(tie)
            done += n
            bar.update(n)
    if warn_ties:
        _warn_unresolved(jnp.concatenate(tied), inputs.pool.dtype, desc)
    return Selection(jnp.concatenate(indices), jnp.concatenate(values))


@functools.partial(jax.jit, static_argnames=("spec", "k", "layout"))
def _nonsequential(spec, inputs, *, k, layout):
    def local(inputs):
        shards = Shards(layout, inputs.pool.shape[0])
        rule = spec.build(inputs, 1, shards)
        available = None
        if inputs.observed is not None or inputs.candidates is not None:
            available = available_mask(rule.num_points, inputs.observed, inputs.candidates)
        return masked_top_k(rule.score(rule.init()), k, available, shards)

    return on_shards(layout, local, (INPUT_SPECS,), inputs)


def nonsequential(spec: RuleSpec, inputs: RuleInputs, *, k: int,
                  layout: Optional[Layout] = None) -> Selection:
    """The k best points by the rule's first score: no conditioning between picks.

    The reference's `force_nonsequential=True`: the scores under the prior
    (conditioned on the observed points only), top-k, best first, so no point
    is picked twice. Fast (one score), but the picks may be redundant.
    """
    layout = layout_of(inputs.pool) if layout is None else layout
    return _nonsequential(spec, inputs, k=k, layout=layout)


def top_k(scores: jax.Array, k: int) -> Selection:
    """Non-sequential selection: the k largest scores (NaN counts as -inf), best first."""
    scores = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
    values, indices = lax.top_k(scores, k)
    return Selection(indices.astype(jnp.int32), values)


def masked_top_k(scores: jax.Array, k: int, available: Optional[jax.Array],
                 shards: Shards) -> Selection:
    """The k largest available scores over the (local block of the) pool, best first.

    NaN scores count as -inf. Unavailable points rank below every available one;
    picks beyond the number of available points are -1 with value -inf.
    """
    shown = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
    if available is None:
        values, indices = shards.top_k(shown, k)
        return Selection(indices, values)
    rank, indices = shards.top_k(_rank(scores, available), k)
    value = shards.rows(shown, indices)
    valid = rank > -jnp.inf
    return Selection(jnp.where(valid, indices, -1), jnp.where(valid, value, -jnp.inf))
