"""Test-time fine-tuning (TTFT) of a causal LM on the examples selected for a prompt.

For each prompt: start from the base parameters, take one optimizer step per selected
example (in the given order; an example selected twice gets two steps), then measure
the negative log-likelihood and bits per byte of the prompt's own document. Everything
is a pure function of the params pytree, so "resetting" to the base model is free.

    from activeft_jax.models import load_smollm2
    from activeft_jax.training.ttft import ttft_inputs, ttft_evaluate

    lm = load_smollm2()
    inp = ttft_inputs(lm, selected_texts, documents, max_example_tokens=512)
    out = ttft_evaluate(lm.nll, lm.loss, lm.params, 1e-4, inp.examples_tokens,
                        inp.examples_mask, inp.doc_tokens, inp.doc_mask,
                        doc_bytes=inp.doc_bytes, curve=True)
    out["bpb_before"], out["bpb_after"], out["bpb_curve"]     # [P], [P], [P, k + 1]

The model is any causal LM given as two pure functions:

- ``loss_fn(params, tokens [B, L], mask [B, L]) -> scalar``: the mean NLL to minimise
  (e.g. `activeft_jax.models.llama.loss` with its config bound, or `SmolLM2.loss`);
- ``nll_fn(params, tokens [B, T], mask [B, T]) -> [B, T-1]``: entry t is the NLL in
  nats of ``tokens[:, t+1]`` given ``tokens[:, :t+1]`` (`llama.nll`, `SmolLM2.nll`).

Which tokens are scored: by default the document's tokens 2..T (the first token has
no prefix, since no BOS is added: exactly what `SmolLM2.score` scores), i.e. the
entries of ``nll_fn`` where both the target and its previous token are real
(``mask[1:] & mask[:-1]``). Bits per byte = summed NLL / (ln 2 * bytes), where the
bytes are those of the whole (possibly truncated) document text, first token
included, as `SmolLM2.score` counts them, so an untruncated document's "before"
bpb equals ``lm.score([doc])[0]["bpb"]``.

Padding rows: an example row with fewer than two real tokens (nothing to predict, e.g.
the all-zero-mask rows that pad a prompt with fewer than k examples) takes no step:
params and optimizer state pass through unchanged (Adam's momentum would otherwise
keep moving the params on a zero gradient).

The optimizer: any optax ``GradientTransformation``, or a float, meaning
``optax.adam(lr)``. With a float the learning rate is a traced argument of the one
compiled computation, so sweeping it does not recompile. The optimizer state is
freshly initialised for every prompt.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "InContextInputs",
    "TTFTInputs",
    "in_context_evaluate",
    "in_context_inputs",
    "sequence_nll",
    "test_time_finetune",
    "ttft_evaluate",
    "ttft_inputs",
]

LossFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
NllFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
Optimizer = Union[optax.GradientTransformation, float]

_LN2 = math.log(2.0)


# --------------------------------------------------------------------------- checks


def _is_tx(tx: Any) -> bool:
    return hasattr(tx, "init") and hasattr(tx, "update") and callable(tx.update)


def _check_tx(tx: Any) -> None:
    if _is_tx(tx):
        return
    if isinstance(tx, bool) or not isinstance(tx, (int, float, np.floating, np.integer)):
        raise ValueError("`tx` must be an optax GradientTransformation or a float learning "
                         f"rate (for optax.adam); got {type(tx).__name__}.")
    if not (math.isfinite(float(tx)) and float(tx) > 0):
        raise ValueError(f"`tx` as a learning rate must be finite and > 0; got {tx!r}.")


def _as_tx(tx: Any) -> optax.GradientTransformation:
    return tx if _is_tx(tx) else optax.adam(tx)


def _check_tokens(tokens: Any, mask: Any, names: tuple[str, str], ndim: int,
                  axes: str) -> tuple[jax.Array, jax.Array]:
    """Shape checks that work on tracers too; a ValueError naming the argument."""
    tn, mn = names
    if not hasattr(tokens, "shape"):
        tokens = np.asarray(tokens)
    if not hasattr(mask, "shape"):
        mask = np.asarray(mask)
    if len(tokens.shape) != ndim:
        raise ValueError(f"`{tn}` must have shape {axes}; got shape {tuple(tokens.shape)}.")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"`{tn}` must hold integer token ids; got dtype {tokens.dtype}.")
    if tuple(mask.shape) != tuple(tokens.shape):
        raise ValueError(f"`{mn}` must have the shape of `{tn}` {tuple(tokens.shape)}; got "
                         f"{tuple(mask.shape)}.")
    if any(int(d) == 0 for d in tokens.shape):
        raise ValueError(f"`{tn}` has an empty axis (shape {tuple(tokens.shape)} for "
                         f"{axes}): give at least one example of at least one token.")
    return tokens, mask


def _targets(mask: jax.Array) -> jax.Array:
    """[..., T] mask -> [..., T-1] bool: entries of nll that predict a real token from one."""
    m = jnp.asarray(mask).astype(bool)
    return m[..., 1:] & m[..., :-1]


# --------------------------------------------------------------------------- core


def _finetune(loss_fn: LossFn, params: Any, tokens: jax.Array, mask: jax.Array,
              tx: optax.GradientTransformation, eval_fn: Optional[Callable]):
    """The scan: returns (params', train losses [k], evals [k + 1] or None)."""
    loss_dtype = jax.eval_shape(loss_fn, params, tokens[:1], mask[:1]).dtype

    def step(carry, xs):
        t, m = xs

        def take(c):
            p, s = c
            loss, g = jax.value_and_grad(loss_fn)(p, t[None], m[None])
            updates, s = tx.update(g, s, p)
            return (optax.apply_updates(p, updates), s), loss.astype(loss_dtype)

        def skip(c):
            return c, jnp.zeros((), loss_dtype)

        carry, loss = jax.lax.cond(jnp.any(_targets(m)), take, skip, carry)
        ev = None if eval_fn is None else eval_fn(carry[0])
        return carry, (loss, ev)

    (new_params, _), (losses, evals) = jax.lax.scan(step, (params, tx.init(params)),
                                                     (tokens, mask))
    if eval_fn is not None:
        first = eval_fn(params)
        evals = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b], axis=0), first, evals)
    return new_params, losses, evals


def test_time_finetune(loss_fn: LossFn, params: Any, examples_tokens: Any, examples_mask: Any,
                       tx: Optimizer, *, eval_fn: Optional[Callable[[Any], Any]] = None,
                       return_losses: bool = False):
    """Fine-tunes `params` with one optimizer step per example, in order.

    A `lax.scan` over the k rows of `examples_tokens` [k, L] (right-padded, mask
    `examples_mask` [k, L]); step i minimises ``loss_fn(params, tokens[i:i+1],
    mask[i:i+1])``. Rows with fewer than two real tokens take no step. A row that
    appears twice (SIFT may select an example twice) gets two steps. Pure: `params`
    is not modified. Called eagerly it runs one cached, jitted computation per
    (loss_fn, tx, eval_fn) and shapes (pass the same function objects to reuse it).
    It also runs under your own jit, or `vmap` over prompts (tokens [P, k, L]), though a
    batch of fine-tuned params is big: `ttft_evaluate` fine-tunes and evaluates one
    prompt at a time and returns only the metrics.

    Args:
      loss_fn: ``loss_fn(params, tokens [1, L], mask [1, L]) -> scalar``.
      params: the base parameters (any pytree).
      examples_tokens, examples_mask: int [k, L], k >= 1.
      tx: an optax GradientTransformation (initialised fresh here), or a float: the
        learning rate of ``optax.adam``, passed traced (a new value does not
        recompile; a new ``optax.adam(...)`` object does).
      eval_fn: optional ``eval_fn(params) -> pytree``, evaluated before the first step
        and after every step.
      return_losses: also return the training loss of each example before its step
        (0 for skipped rows).

    Returns:
      params', or ``(params', evals)`` with `eval_fn` (each leaf stacked to [k + 1, ...],
      entry 0 on the base params), with the losses [k] appended when `return_losses`.
    """
    examples_tokens, examples_mask = _check_tokens(
        examples_tokens, examples_mask, ("examples_tokens", "examples_mask"), 2, "[k, L]")
    _check_tx(tx)
    tx_static = tx if _is_tx(tx) else None
    lr = jnp.asarray(0.0 if tx_static is not None else float(tx), jnp.float32)
    args = (params, lr, jnp.asarray(examples_tokens), jnp.asarray(examples_mask))
    try:
        hash((loss_fn, tx_static, eval_fn))
    except TypeError:   # unhashable functions: trace without the compilation cache
        new_params, losses, evals = _finetune_entry(loss_fn, tx_static, eval_fn, *args)
    else:
        new_params, losses, evals = _finetune_jit(loss_fn, tx_static, eval_fn, *args)
    out = (new_params,) + (() if eval_fn is None else (evals,)) + (
        (losses,) if return_losses else ())
    return out[0] if len(out) == 1 else out


# Its name starts with "test": keep pytest from collecting it where it is imported.
test_time_finetune.__test__ = False  # type: ignore[attr-defined]


def _finetune_entry(loss_fn, tx_static, eval_fn, params, lr, tokens, mask):
    tx = tx_static if tx_static is not None else optax.adam(lr)
    return _finetune(loss_fn, params, tokens, mask, tx, eval_fn)


# Jitted (compiled once per functions and shapes; inlined under an outer jit or vmap).
_finetune_jit = jax.jit(_finetune_entry, static_argnums=(0, 1, 2))


def sequence_nll(nll_fn: NllFn, params: Any, tokens: Any, mask: Any,
                 score_mask: Any = None) -> jax.Array:
    """Summed NLL in nats per row, [B]: ``sum(nll_fn(params, tokens, mask) * score_mask)``.

    `score_mask` [B, T-1] picks the scored entries (entry t predicts token t+1); the
    default, ``mask[:, 1:] & mask[:, :-1]``, scores every real token after the first.
    """
    tokens, mask = _check_tokens(tokens, mask, ("tokens", "mask"), 2, "[B, T]")
    sm = _targets(mask) if score_mask is None else jnp.asarray(score_mask).astype(bool)
    want = (tokens.shape[0], tokens.shape[1] - 1)
    if tuple(sm.shape) != want:
        raise ValueError(f"`score_mask` must have shape [B, T-1] = {want}; got {tuple(sm.shape)}.")
    out = nll_fn(params, tokens, mask)
    return jnp.sum(jnp.where(sm, out, jnp.zeros((), out.dtype)), axis=1)


def _evaluate_core(nll_fn, loss_fn, tx_static, curve, params, lr, et, em, dt, dm, sm):
    tx = tx_static if tx_static is not None else optax.adam(lr)

    def one(args):
        t, m, d, dmask, smask = args

        def ev(p):
            return sequence_nll(nll_fn, p, d[None], dmask[None], smask[None])[0]

        new_params, losses, evals = _finetune(loss_fn, params, t, m, tx, ev if curve else None)
        if curve:
            before, after = evals[0], evals[-1]
        else:
            before, after, evals = ev(params), ev(new_params), jnp.zeros((0,), losses.dtype)
        return before, after, losses, evals

    return jax.lax.map(one, (et, em, dt, dm, sm))


_evaluate_jit = jax.jit(_evaluate_core, static_argnums=(0, 1, 2, 3))


def ttft_evaluate(nll_fn: NllFn, loss_fn: LossFn, params: Any, tx: Optimizer,
                  examples_tokens: Any, examples_mask: Any, doc_tokens: Any, doc_mask: Any, *,
                  doc_bytes: Any = None, score_mask: Any = None, curve: bool = False,
                  jit: bool = True) -> dict[str, jax.Array]:
    """Test-time fine-tunes on each prompt's examples and scores its document.

    One compiled computation: `lax.map` over the P prompts (one copy of the params and
    optimizer state at a time); for each, `test_time_finetune` on its k examples from
    the base `params`, and the summed NLL of its document before and after (and, with
    `curve`, after every step).

    Args:
      nll_fn: ``nll_fn(params, tokens [1, T], mask [1, T]) -> [1, T-1]`` per-token NLL.
      loss_fn: ``loss_fn(params, tokens [1, L], mask [1, L]) -> scalar`` mean NLL.
      params: base parameters.
      tx: an optax GradientTransformation or a float (``optax.adam`` learning rate,
        passed traced: a new value does not recompile).
      examples_tokens, examples_mask: int [P, k, L]: the selected examples per prompt
        in step order (rows with < 2 real tokens are padding and take no step).
      doc_tokens, doc_mask: int [P, T], right-padded documents.
      doc_bytes: optional [P] UTF-8 byte counts of the documents, for bits per byte.
      score_mask: optional bool [P, T-1] of scored nll entries (default: the document's
        tokens 2..T, see the module docstring).
      curve: also return the NLL after each step, [P, k + 1] (entry 0 = the base model).
      jit: run jitted (compiled once per (nll_fn, loss_fn, tx, curve) and shapes; pass
        the same function objects to reuse it).

    Returns:
      dict of arrays: ``nll_before``, ``nll_after`` [P] (summed nats over the scored
      tokens), ``tokens`` [P] (the number scored), ``train_loss`` [P, k] (each example's
      loss before its step), with `curve` ``nll_curve`` [P, k + 1], and with
      `doc_bytes` ``bpb_before``, ``bpb_after`` (and ``bpb_curve``).
    """
    et, em = _check_tokens(examples_tokens, examples_mask, ("examples_tokens", "examples_mask"),
                           3, "[P, k, L]")
    dt, dm = _check_tokens(doc_tokens, doc_mask, ("doc_tokens", "doc_mask"), 2, "[P, T]")
    p = et.shape[0]
    if dt.shape[0] != p:
        raise ValueError(f"`doc_tokens` has {dt.shape[0]} rows but `examples_tokens` has {p} "
                         "prompts; they must match.")
    if dt.shape[1] < 2:
        raise ValueError(f"`doc_tokens` must have T >= 2 (nothing is scored otherwise); got "
                         f"shape {tuple(dt.shape)}.")
    sm = _targets(dm) if score_mask is None else jnp.asarray(score_mask).astype(bool)
    if tuple(sm.shape) != (p, dt.shape[1] - 1):
        raise ValueError(f"`score_mask` must have shape [P, T-1] = {(p, dt.shape[1] - 1)}; got "
                         f"{tuple(sm.shape)}.")
    if doc_bytes is not None:
        doc_bytes = np.asarray(doc_bytes)
        if doc_bytes.shape != (p,) or not np.all(doc_bytes > 0):
            raise ValueError(f"`doc_bytes` must be [P] = [{p}] positive byte counts; got "
                             f"{doc_bytes!r:.80}.")
    _check_tx(tx)
    tx_static = tx if _is_tx(tx) else None
    lr = jnp.asarray(0.0 if tx_static is not None else float(tx), jnp.float32)
    fn = _evaluate_jit if jit else _evaluate_core
    before, after, losses, evals = fn(nll_fn, loss_fn, tx_static, bool(curve), params, lr,
                                      jnp.asarray(et), jnp.asarray(em), jnp.asarray(dt),
                                      jnp.asarray(dm), sm)
    out = {"nll_before": before, "nll_after": after, "tokens": jnp.sum(sm, axis=1),
           "train_loss": losses}
    if curve:
        out["nll_curve"] = evals
    if doc_bytes is not None:
        denom = _LN2 * jnp.asarray(doc_bytes, before.dtype)
        out["bpb_before"] = before / denom
        out["bpb_after"] = after / denom
        if curve:
            out["bpb_curve"] = evals / denom[:, None]
    return out


# --------------------------------------------------------------------------- texts


class TTFTInputs(NamedTuple):
    """Arrays for `ttft_evaluate`, built from texts by `ttft_inputs`."""

    examples_tokens: np.ndarray   # int32 [P, k, L], right-padded with the pad id
    examples_mask: np.ndarray     # int32 [P, k, L]; all-zero rows pad prompts with < k examples
    doc_tokens: np.ndarray        # int32 [P, T]
    doc_mask: np.ndarray          # int32 [P, T]
    doc_bytes: np.ndarray         # int64 [P]: UTF-8 bytes of the (kept part of the) document
    doc_length: np.ndarray        # int64 [P]: document tokens kept (tokens 2..n are scored)
    doc_truncated: np.ndarray     # bool [P]: whether the document was cut to max_doc_tokens
    n_examples: np.ndarray        # int64 [P]: real example rows per prompt


class InContextInputs(NamedTuple):
    """Arrays for `in_context_evaluate`, built by `in_context_inputs`."""

    tokens: np.ndarray            # int32 [P, T]: examples + separators, then the document
    mask: np.ndarray              # int32 [P, T]
    score_mask: np.ndarray        # bool [P, T-1]: only the document's tokens 2..n
    doc_bytes: np.ndarray         # int64 [P]
    doc_length: np.ndarray        # int64 [P]
    doc_truncated: np.ndarray     # bool [P]
    n_context: np.ndarray         # int64 [P]: examples that fit in the window (a prefix)
    context_tokens: np.ndarray    # int64 [P]: tokens before the document


def _check_int(value: Any, name: str, lo: int, hi: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"`{name}` must be an int; got {value!r}.")
    if value < lo or (hi is not None and value > hi):
        bound = f"{lo} <= {name}" + (f" <= {hi}" if hi is not None else "")
        raise ValueError(f"`{name}` must satisfy {bound}; got {value}.")
    return int(value)


def _texts(texts: Any, name: str, allow_empty_list: bool = False) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise ValueError(f"`{name}` must be a list of str; got a single "
                         f"{type(texts).__name__} (wrap it in a list).")
    try:
        texts = list(texts)
    except TypeError:
        raise ValueError(f"`{name}` must be a list of str; got {type(texts).__name__}.") from None
    if not texts and not allow_empty_list:
        raise ValueError(f"`{name}` is empty; give at least one text.")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"`{name}[{i}]` must be a str; got {type(t).__name__}.")
        if not t:
            raise ValueError(f"`{name}[{i}]` is an empty string (no tokens).")
    return texts


def _encode(lm: Any, texts: list[str]):
    return lm.tokenizer.encode_batch(texts, add_special_tokens=False)


def _documents(lm: Any, documents: Any, max_doc_tokens: int):
    """Tokenized documents cut to max_doc_tokens: (ids, bytes, truncated) per document.

    A longer document keeps its first `max_doc_tokens` tokens, and its byte count is
    that of the characters those tokens cover (``text[:offsets[n-1][1]]``; a token
    that ends inside a multi-byte character counts the whole character)."""
    documents = _texts(documents, "documents")
    out = []
    for i, (text, enc) in enumerate(zip(documents, _encode(lm, documents))):
        ids = list(enc.ids)
        truncated = len(ids) > max_doc_tokens
        if truncated:
            ids = ids[:max_doc_tokens]
            text = text[:enc.offsets[max_doc_tokens - 1][1]]
        if len(ids) < 2:
            raise ValueError(f"`documents[{i}]` has {len(ids)} token(s); at least 2 are needed "
                             "(the first token is never scored).")
        out.append((ids, len(text.encode("utf-8")), truncated))
    return out


def _pad_rows(seqs: Sequence[Sequence[int]], length: int, pad_id: int):
    tokens = np.full((len(seqs), length), pad_id, np.int32)
    mask = np.zeros((len(seqs), length), np.int32)
    for r, s in enumerate(seqs):
        tokens[r, :len(s)] = s
        mask[r, :len(s)] = 1
    return tokens, mask


def ttft_inputs(lm: Any, examples: Sequence[Sequence[str]], documents: Sequence[str], *,
                max_example_tokens: Optional[int] = None, max_doc_tokens: Optional[int] = None,
                k: Optional[int] = None, pad_examples_to: Optional[int] = None,
                pad_doc_to: Optional[int] = None) -> TTFTInputs:
    """Tokenizes the selected examples and documents of P prompts for `ttft_evaluate`.

    Args:
      lm: a `SmolLM2` (anything with ``tokenizer`` (a `tokenizers.Tokenizer`),
        ``pad_id`` and ``context_length``).
      examples: per prompt, its selected example texts in step order (repeats allowed:
        a text given twice is two steps); each list non-empty.
      documents: per prompt, the text to score.
      max_example_tokens: examples keep their first this many tokens (default: 512, or
        the context length if shorter).
      max_doc_tokens: documents keep their first this many tokens (default: the
        context length); bytes are counted over the kept part (see `_documents`).
      k: example rows per prompt (default: the most any prompt has); prompts with
        fewer get all-padding rows, which take no step.
      pad_examples_to, pad_doc_to: fixed L and T (default: the longest), so that
        batches of different texts reuse one compilation.
    """
    ctx = int(lm.context_length)
    max_example_tokens = min(512, ctx) if max_example_tokens is None else _check_int(
        max_example_tokens, "max_example_tokens", 2, ctx)
    max_doc_tokens = ctx if max_doc_tokens is None else _check_int(
        max_doc_tokens, "max_doc_tokens", 2, ctx)
    docs = _documents(lm, documents, max_doc_tokens)
    examples = _per_prompt(examples, len(docs))
    rows = []
    for i, ex in enumerate(examples):
        ex = _texts(ex, f"examples[{i}]")
        rows.append([list(e.ids)[:max_example_tokens] for e in _encode(lm, ex)])
    most = max(len(r) for r in rows)
    k = most if k is None else _check_int(k, "k", most)
    longest = max(len(s) for r in rows for s in r)
    length = longest if pad_examples_to is None else _check_int(
        pad_examples_to, "pad_examples_to", longest)
    et = np.full((len(rows), k, length), lm.pad_id, np.int32)
    em = np.zeros((len(rows), k, length), np.int32)
    for p, r in enumerate(rows):
        et[p, :len(r)], em[p, :len(r)] = _pad_rows(r, length, lm.pad_id)
    longest_doc = max(len(d[0]) for d in docs)
    t = longest_doc if pad_doc_to is None else _check_int(pad_doc_to, "pad_doc_to", longest_doc)
    dt, dm = _pad_rows([d[0] for d in docs], t, lm.pad_id)
    return TTFTInputs(et, em, dt, dm, np.array([d[1] for d in docs], np.int64),
                      np.array([len(d[0]) for d in docs], np.int64),
                      np.array([d[2] for d in docs], bool),
                      np.array([len(r) for r in rows], np.int64))


def _per_prompt(examples: Any, n_docs: int) -> list:
    """`examples` as a list with one entry (a list of texts) per document."""
    if isinstance(examples, (str, bytes)):
        raise ValueError("`examples` must be a list (one per prompt) of lists of str.")
    examples = list(examples)
    if len(examples) != n_docs:
        raise ValueError(f"`examples` has {len(examples)} prompts but `documents` has "
                         f"{n_docs}; they must match.")
    return examples


def in_context_inputs(lm: Any, examples: Sequence[Sequence[str]], documents: Sequence[str], *,
                      window: Optional[int] = None, max_example_tokens: Optional[int] = None,
                      separator: str = "\n\n", pad_to: Optional[int] = None) -> InContextInputs:
    """The in-context baseline: the retrieved texts prepended to each document.

    Each row is ``ex_1 sep ex_2 sep ... ex_m sep doc`` where every piece is tokenized
    on its own (so the document's tokens are exactly those `ttft_inputs` gives with
    ``max_doc_tokens=window``) and only the document's tokens 2..n are scored (the same
    tokens and bytes as the test-time fine-tuned score, so the two bpb compare
    directly). The document is first cut to `window` tokens (default: the context
    length) with `ttft_inputs`'s rule; then examples (each cut to
    `max_example_tokens`, default no cut) are taken in the given order as long as the
    next one plus its separator still fits in the window; the first that does not fit
    ends the context (``n_context`` says how many were used). A prompt may have no
    examples (the plain document score).
    """
    window = int(lm.context_length) if window is None else _check_int(
        window, "window", 2, int(lm.context_length))
    if max_example_tokens is not None:
        max_example_tokens = _check_int(max_example_tokens, "max_example_tokens", 1)
    if not isinstance(separator, str):
        raise ValueError(f"`separator` must be a str; got {type(separator).__name__}.")
    docs = _documents(lm, documents, window)
    examples = _per_prompt(examples, len(docs))
    sep = list(_encode(lm, [separator])[0].ids) if separator else []
    seqs, starts, used = [], [], []
    for i, (ex, (doc_ids, _, _)) in enumerate(zip(examples, docs)):
        ex = _texts(ex, f"examples[{i}]", allow_empty_list=True)
        context: list[int] = []
        n = 0
        for e in (_encode(lm, ex) if ex else []):
            ids = list(e.ids)[:max_example_tokens]
            if len(context) + len(ids) + len(sep) + len(doc_ids) > window:
                break
            context += ids + sep
            n += 1
        seqs.append(context + doc_ids)
        starts.append(len(context))
        used.append(n)
    longest = max(len(s) for s in seqs)
    t = longest if pad_to is None else _check_int(pad_to, "pad_to", longest)
    tokens, mask = _pad_rows(seqs, t, lm.pad_id)
    score = np.zeros((len(seqs), t - 1), bool)
    for r, (c, (doc_ids, _, _)) in enumerate(zip(starts, docs)):
        # nll entry j predicts token j + 1; document token i (i >= 1) sits at c + i.
        score[r, c:c + len(doc_ids) - 1] = True
    return InContextInputs(tokens, mask, score, np.array([d[1] for d in docs], np.int64),
                           np.array([len(d[0]) for d in docs], np.int64),
                           np.array([d[2] for d in docs], bool), np.array(used, np.int64),
                           np.array(starts, np.int64))


def _in_context_core(nll_fn, params, tokens, mask, score_mask):
    def one(args):
        t, m, s = args
        return sequence_nll(nll_fn, params, t[None], m[None], s[None])[0]

    return jax.lax.map(one, (tokens, mask, score_mask))


_in_context_jit = jax.jit(_in_context_core, static_argnums=0)


def in_context_evaluate(nll_fn: NllFn, params: Any, inputs: InContextInputs) -> dict:
    """Summed NLL (nats) and bits per byte of each document given its in-context
    examples: ``{"nll": [P], "bpb": [P], "tokens": [P]}``, one row at a time (jitted)."""
    if not isinstance(inputs, InContextInputs):
        raise ValueError(f"`inputs` must be an InContextInputs (from in_context_inputs); got "
                         f"{type(inputs).__name__}.")
    tokens, mask = _check_tokens(inputs.tokens, inputs.mask, ("inputs.tokens", "inputs.mask"),
                                 2, "[P, T]")
    total = _in_context_jit(nll_fn, params, jnp.asarray(tokens), jnp.asarray(mask),
                            jnp.asarray(inputs.score_mask))
    return {"nll": total, "bpb": total / (_LN2 * jnp.asarray(inputs.doc_bytes, total.dtype)),
            "tokens": jnp.asarray(inputs.score_mask.sum(axis=1))}
