"""A Llama-family decoder as pure functions over a params pytree (float32).

The forward pass follows Hugging Face's `LlamaForCausalLM` numerically: pre-norm
blocks with RMSNorm, rotate-half RoPE, grouped-query attention with a causal mask
combined with a padding mask, a SwiGLU FFN, and a tied or separate lm_head. The
per-layer weights are stacked along a leading [L] axis and the layers run under
`jax.lax.scan`, so compile time does not grow with depth.

Params (HF names without the `model.` prefix, torch `[out, in]` layout):

    {"embed_tokens": [V, D],
     "layers": {"input_layernorm": [L, D], "q_proj": [L, Hq*hd, D],
                "k_proj": [L, Hkv*hd, D], "v_proj": [L, Hkv*hd, D], "o_proj": [L, D, Hq*hd],
                "post_attention_layernorm": [L, D], "gate_proj": [L, F, D],
                "up_proj": [L, F, D], "down_proj": [L, D, F]},
     "norm": [D],
     "lm_head": [V, D]}          # absent when the embeddings are tied

`tokens` are int [B, T] and `mask` is int/bool [B, T] (1 for real tokens). Positions
count real tokens (cumsum(mask) - 1), so right padding (what this package uses) gives
positions 0..T-1 exactly as HF does, and left padding also works.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "LlamaConfig",
    "all_hidden_states",
    "config_from_hf",
    "describe",
    "hidden_states",
    "load_hf_llama",
    "logits",
    "loss",
    "nll",
    "params_from_hf",
    "target_mask",
]

# Rows of the flattened [B*T, D] hidden states turned into logits at a time in `nll`:
# bounds the [rows, V] logits buffer (512 x 49152 floats = 100 MB for SmolLM2).
_NLL_CHUNK_ROWS = 512
# Sequences longer than this attend in blocks of `_ATTN_BLOCK` queries, each against
# the keys up to its end: the [Hq, T, T] score matrix (8192 tokens: 2.4 GB) is never
# materialised, and the masked upper triangle is mostly skipped.
_ATTN_CHUNK_ABOVE = 1024
_ATTN_BLOCK = 512

# Stacked layer key -> HF name inside `model.layers.{i}.` (without `.weight`).
_HF_LAYER_NAMES = {"input_layernorm": "input_layernorm",
                   "post_attention_layernorm": "post_attention_layernorm",
                   "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
                   "v_proj": "self_attn.v_proj", "o_proj": "self_attn.o_proj",
                   "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
                   "down_proj": "mlp.down_proj"}
_LAYER_KEYS = ("input_layernorm", "q_proj", "k_proj", "v_proj", "o_proj",
               "post_attention_layernorm", "gate_proj", "up_proj", "down_proj")


class LlamaConfig(NamedTuple):
    """Architecture of a Llama-family decoder. Hashable, so it is static under jit."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float
    rms_norm_eps: float
    context_length: int
    tie_word_embeddings: bool


# --------------------------------------------------------------------------- forward


def _rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return weight.reshape((1,) * (x.ndim - 1) + (-1,)) * (x * jax.lax.rsqrt(var + eps))


def _linear(x: jax.Array, w: jax.Array) -> jax.Array:
    """x @ w.T for a torch-layout [out, in] weight."""
    return jnp.einsum("...i,oi->...o", x, w)


def _rope_tables(positions: jax.Array, config: LlamaConfig) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape [B, T, hd] for rotate-half RoPE (HF's default rope type)."""
    hd = config.head_dim
    # float32 throughout, as HF computes it: theta ** (2i / hd), then its reciprocal.
    exponent = np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd)
    inv_freq = (np.float32(1.0) / (np.float32(config.rope_theta) ** exponent)).astype(np.float32)
    # [B, T, hd/2]
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def _apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [B, T, H, hd]; cos/sin: [B, T, hd]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array,
            q_pos: jax.Array) -> jax.Array:
    """Softmax attention of a block of queries against all keys.

    q: [B, Tq, Hkv, G, hd]; k, v: [B, T, Hkv, hd]; key_mask: [B, T] bool;
    q_pos: [Tq] row indices of the queries (for the causal mask). Returns [B, Tq, Hkv, G, hd].
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k) * scale
    causal = q_pos[:, None] >= jnp.arange(k.shape[1])[None, :]               # [Tq, T]
    allowed = causal[None] & key_mask[:, None, :]                             # [B, Tq, T]
    # A finite fill keeps fully masked rows (padding queries) free of NaN.
    scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bkgqs,bskd->bqkgd", probs, v)


def _attention(x: jax.Array, lp: Mapping[str, jax.Array], cos: jax.Array, sin: jax.Array,
               key_mask: jax.Array, config: LlamaConfig) -> jax.Array:
    b, t, _ = x.shape
    hkv, hd = config.num_kv_heads, config.head_dim
    g = config.num_heads // hkv
    q = _apply_rope(_linear(x, lp["q_proj"]).reshape(b, t, hkv * g, hd), cos, sin)
    k = _apply_rope(_linear(x, lp["k_proj"]).reshape(b, t, hkv, hd), cos, sin)
    v = _linear(x, lp["v_proj"]).reshape(b, t, hkv, hd)
    # Query head h uses kv head h // g (HF's repeat_kv): consecutive groups of g.
    q = q.reshape(b, t, hkv, g, hd)
    if t > _ATTN_CHUNK_ABOVE:
        # Causal blocks: queries [s, e) only need keys [0, e), which halves the work.
        parts = []
        for s in range(0, t, _ATTN_BLOCK):
            e = min(s + _ATTN_BLOCK, t)
            parts.append(_attend(q[:, s:e], k[:, :e], v[:, :e], key_mask[:, :e], jnp.arange(s, e)))
        out = jnp.concatenate(parts, axis=1)
    else:
        out = _attend(q, k, v, key_mask, jnp.arange(t))
    return _linear(out.reshape(b, t, hkv * g * hd), lp["o_proj"])


def _mlp(x: jax.Array, lp: Mapping[str, jax.Array]) -> jax.Array:
    return _linear(jax.nn.silu(_linear(x, lp["gate_proj"])) * _linear(x, lp["up_proj"]),
                   lp["down_proj"])


def _decoder(params, tokens, mask, config: LlamaConfig, collect: bool):
    """Embeddings -> all layers (scan). Returns (token embeddings [B, T, D], residual
    stream after the last layer [B, T, D], per-layer outputs [L, B, T, D] or None)."""
    tokens = jnp.asarray(tokens)
    mask = jnp.asarray(mask).astype(bool)
    if tokens.ndim != 2 or mask.shape != tokens.shape:
        raise ValueError(f"`tokens` and `mask` must both have shape [B, T]; got "
                         f"{tokens.shape} and {mask.shape}.")
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    cos, sin = _rope_tables(positions, config)
    emb = jnp.take(params["embed_tokens"], tokens, axis=0)
    eps = config.rms_norm_eps

    def layer(x, lp):
        x = x + _attention(_rms_norm(x, lp["input_layernorm"], eps), lp, cos, sin, mask, config)
        x = x + _mlp(_rms_norm(x, lp["post_attention_layernorm"], eps), lp)
        return x, (x if collect else None)

    out, per_layer = jax.lax.scan(layer, emb, params["layers"])
    return emb, out, per_layer


def _head(params) -> jax.Array:
    return params["lm_head"] if "lm_head" in params else params["embed_tokens"]


def hidden_states(params, tokens, mask, config: LlamaConfig) -> jax.Array:
    """Final hidden states after the last RMSNorm, [B, T, D] (what the lm_head reads)."""
    _, out, _ = _decoder(params, tokens, mask, config, collect=False)
    return _rms_norm(out, params["norm"], config.rms_norm_eps)


def all_hidden_states(params, tokens, mask, config: LlamaConfig) -> jax.Array:
    """[L + 1, B, T, D] in HF's `output_hidden_states` convention: index 0 is the token
    embeddings, index i (1..L-1) the output of layer i-1, and index L the output of the
    last layer after the final RMSNorm."""
    emb, out, per_layer = _decoder(params, tokens, mask, config, collect=True)
    final = _rms_norm(out, params["norm"], config.rms_norm_eps)
    return jnp.concatenate([emb[None], per_layer[:-1], final[None]], axis=0)


def logits(params, tokens, mask, config: LlamaConfig) -> jax.Array:
    """Next-token logits [B, T, V] at every position."""
    return _linear(hidden_states(params, tokens, mask, config), _head(params))


def _token_nll(h: jax.Array, head: jax.Array, targets: jax.Array) -> jax.Array:
    """h: [N, D], targets: [N] -> cross-entropy [N], a bounded number of rows at a time."""
    def chunk(args):
        hc, tc = args
        z = _linear(hc, head)
        picked = jnp.take_along_axis(z, tc[:, None], axis=-1)[:, 0]
        return jax.nn.logsumexp(z, axis=-1) - picked

    n = h.shape[0]
    if n <= _NLL_CHUNK_ROWS:
        return chunk((h, targets))
    c = _NLL_CHUNK_ROWS
    pad = (-n) % c
    hp = jnp.pad(h, ((0, pad), (0, 0))).reshape(-1, c, h.shape[-1])
    tp = jnp.pad(targets, (0, pad)).reshape(-1, c)
    # Recompute each chunk's logits in the backward pass instead of storing them all.
    return jax.lax.map(jax.checkpoint(chunk), (hp, tp)).reshape(-1)[:n]


def nll(params, tokens, mask, config: LlamaConfig) -> jax.Array:
    """Per-token negative log-likelihood [B, T-1] in nats: entry t is -log p(tokens[t+1] |
    tokens[:t+1]). Entries whose target or prefix token is padding are 0."""
    h = hidden_states(params, tokens, mask, config)[:, :-1]
    tokens = jnp.asarray(tokens)
    b, t1, d = h.shape
    out = _token_nll(h.reshape(b * t1, d), _head(params), tokens[:, 1:].reshape(-1))
    return out.reshape(b, t1) * target_mask(mask).astype(out.dtype)


def target_mask(mask) -> jax.Array:
    """[B, T-1] bool: which entries of `nll` are predictions of a real token from a real one."""
    mask = jnp.asarray(mask).astype(bool)
    return mask[:, 1:] & mask[:, :-1]


def loss(params, tokens, mask, config: LlamaConfig) -> jax.Array:
    """Mean NLL over the predicted (unmasked) positions: a scalar, differentiable in params."""
    m = target_mask(mask)
    return jnp.sum(nll(params, tokens, mask, config)) / jnp.maximum(jnp.sum(m), 1)


# --------------------------------------------------------------------------- loading


def params_from_hf(tensors: Mapping[str, np.ndarray], config: LlamaConfig) -> dict:
    """HF-named float tensors (`model.layers.{i}.self_attn.q_proj.weight`, ...) -> the
    stacked float32 params pytree (as NumPy arrays; `jax.device_put` it)."""
    def get(name):
        if name not in tensors:
            raise KeyError(f"checkpoint has no tensor {name!r}")
        return np.asarray(tensors[name], dtype=np.float32)

    sub = _HF_LAYER_NAMES
    layers = {}
    for key in _LAYER_KEYS:
        first = get(f"model.layers.0.{sub[key]}.weight")
        stacked = np.empty((config.num_layers,) + first.shape, np.float32)
        for i in range(config.num_layers):
            stacked[i] = first if i == 0 else get(f"model.layers.{i}.{sub[key]}.weight")
        layers[key] = stacked
    return _with_globals(layers, get, config)


def _with_globals(layers: dict, get, config: LlamaConfig) -> dict:
    """The params pytree from the stacked `layers` and `get(hf_name)` for the tensors
    outside the layers; shapes checked against `config`."""
    params = {"embed_tokens": get("model.embed_tokens.weight"), "layers": layers,
              "norm": get("model.norm.weight")}
    if not config.tie_word_embeddings:
        params["lm_head"] = get("lm_head.weight")
    _check_shapes(params, config)
    return params


def _check_shapes(params, config: LlamaConfig) -> None:
    c = config
    d, f = c.hidden_size, c.intermediate_size
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    want = {"input_layernorm": (d,), "post_attention_layernorm": (d,), "q_proj": (q, d),
            "k_proj": (kv, d), "v_proj": (kv, d), "o_proj": (d, q), "gate_proj": (f, d),
            "up_proj": (f, d), "down_proj": (d, f)}
    for key, shape in want.items():
        got = params["layers"][key].shape
        if got != (c.num_layers,) + shape:
            raise ValueError(f"layer weight {key!r} has shape {got[1:]}; "
                             f"the config implies {shape}")
    if params["embed_tokens"].shape != (c.vocab_size, d):
        raise ValueError(f"embed_tokens has shape {params['embed_tokens'].shape}; "
                         f"the config implies {(c.vocab_size, d)}")
    if "lm_head" in params and params["lm_head"].shape != (c.vocab_size, d):
        raise ValueError(f"lm_head has shape {params['lm_head'].shape}; "
                         f"the config implies {(c.vocab_size, d)}")


def config_from_hf(cfg: Mapping[str, Any]) -> LlamaConfig:
    """A Hugging Face `config.json` dict (LlamaConfig fields) -> LlamaConfig."""
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise NotImplementedError(f"hidden_act {act!r} is not supported (only silu)")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise NotImplementedError("attention or MLP biases are not supported")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise NotImplementedError(f"rope type {rope_type!r} is not supported (only default)")
    theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
    heads = int(cfg["num_attention_heads"])
    return LlamaConfig(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
        intermediate_size=int(cfg["intermediate_size"]),
        rope_theta=float(theta),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        context_length=int(cfg.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def _index_files(index: Path) -> list:
    """The weight files a `model.safetensors.index.json` names: plain file names beside it.

    An absolute path, a `..`, a subfolder or anything but a string is refused (ValueError),
    so an index cannot make us read files outside the checkpoint directory.
    """
    try:
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError(f"weight_map is a {type(weight_map).__name__}")
        files = set(weight_map.values())
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise ValueError(f"{index}: not a safetensors index (a JSON object with a 'weight_map' "
                         f"object of file names): {type(e).__name__}: {e}") from e
    for name in files:
        if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name
                or "\\" in name or "\0" in name or Path(name).is_absolute()
                or Path(name).name != name):
            raise ValueError(f"{index}: weight file {name!r} is not a plain file name beside the "
                             f"index (no folders, no absolute paths, no '..')")
    return sorted(files)


def load_hf_llama(path: Union[str, Path]) -> tuple[dict, LlamaConfig]:
    """Loads a Hugging Face Llama-family checkpoint directory (config.json plus
    model.safetensors, or sharded safetensors with model.safetensors.index.json).

    Returns (params, config); params are float32 jax arrays whatever the stored dtype.
    A checkpoint without `lm_head.weight` is treated as tied. The index may only name
    files in the same directory (ValueError otherwise).
    """
    from safetensors import safe_open

    path = Path(path)
    with open(path / "config.json") as f:
        cfg = json.load(f)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = _index_files(index)
    else:
        files = ["model.safetensors"]
    tensors = {}
    for name in files:
        # The flax framework reads bfloat16 too (NumPy has no bfloat16).
        with safe_open(path / name, framework="flax") as f:
            for key in f.keys():
                tensors[key] = np.asarray(f.get_tensor(key), dtype=np.float32)
    config = config_from_hf(cfg)
    if "lm_head.weight" not in tensors and not config.tie_word_embeddings:
        config = config._replace(tie_word_embeddings=True)
    params = params_from_hf(tensors, config)
    return jax.device_put(params), config


def describe(config: LlamaConfig, params: Optional[Mapping] = None) -> str:
    """One line: layers, width, heads and parameter count."""
    n = "" if params is None else (
        f", {sum(x.size for x in jax.tree.leaves(params)) / 1e6:.1f}M params")
    return (f"llama: {config.num_layers} layers, hidden {config.hidden_size}, "
            f"{config.num_heads}/{config.num_kv_heads} heads x {config.head_dim}, "
            f"ffn {config.intermediate_size}, vocab {config.vocab_size}{n}")
