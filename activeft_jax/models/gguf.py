"""Llama-family GGUF files -> config, float32 weights in HF layout, and a BPE tokenizer.

Uses gguf-py (`gguf.GGUFReader`, `gguf.quants.dequantize`) for the file format and
the quantized blocks (Q4_1, Q8_0, F16, F32, ...). Three things differ from a Hugging
Face checkpoint, and this module undoes them:

- names: `blk.{i}.attn_q.weight` is HF's `model.layers.{i}.self_attn.q_proj.weight`;
- layout: a GGUF tensor listed as [in, out] dequantizes to a row-major [out, in]
  array, which is already torch's Linear layout;
- RoPE: the llama converter reorders the rows of `attn_q` / `attn_k` inside each
  head (GGUF row 2i+j holds HF row j*hd/2 + i) so that llama.cpp can rotate
  adjacent pairs; `unpermute_qk` restores HF's rotate-half order.

Nothing is cached on disk: dequantizing SmolLM2-135M takes about a second.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np

from activeft_jax.models.llama import LlamaConfig, params_from_hf

__all__ = [
    "GGUFLlama",
    "config_from_gguf",
    "dequantize_tensors",
    "metadata",
    "open_gguf",
    "read_llama_gguf",
    "tokenizer_from_gguf",
    "unpermute_qk",
]

# GGUF llama tensor name (per block) -> HF name inside `model.layers.{i}.`.
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.weight$")

# llama.cpp token types (gguf.TokenType): 1 normal, 3 control, 4 user-defined.
_CONTROL, _USER_DEFINED = 3, 4


class GGUFLlama(NamedTuple):
    params: dict               # stacked float32 NumPy params (see llama.py)
    config: LlamaConfig
    tokenizer: Any             # tokenizers.Tokenizer
    metadata: dict             # scalar GGUF key/values (arrays such as the vocab left out)


def open_gguf(path: Union[str, Path]):
    """A memory-mapped `gguf.GGUFReader` (the tensors are not read yet)."""
    import gguf

    return gguf.GGUFReader(str(path))


def _field(reader, key: str, default: Any = KeyError) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is KeyError:
            raise KeyError(f"GGUF metadata has no key {key!r}")
        return default
    return field.contents()


def metadata(reader) -> dict:
    """The scalar and string key/values of the file (array values are skipped)."""
    import gguf

    out = {}
    for key, field in reader.fields.items():
        if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
            continue
        out[key] = field.contents()
    return out


def config_from_gguf(reader) -> LlamaConfig:
    """The architecture from the `{arch}.*` metadata (only `llama` is supported)."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise NotImplementedError(f"GGUF architecture {arch!r} is not supported (only llama)")
    p = f"{arch}."
    hidden = int(_field(reader, p + "embedding_length"))
    heads = int(_field(reader, p + "attention.head_count"))
    head_dim = int(_field(reader, p + "attention.key_length", hidden // heads))
    rope_dim = int(_field(reader, p + "rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise NotImplementedError(f"partial RoPE ({rope_dim} of {head_dim} dims) is not supported")
    scaling = _field(reader, p + "rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise NotImplementedError(f"RoPE scaling {scaling!r} is not supported")
    vocab = _field(reader, p + "vocab_size", None)
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    names = {t.name for t in reader.tensors}
    return LlamaConfig(
        vocab_size=int(vocab),
        hidden_size=hidden,
        num_layers=int(_field(reader, p + "block_count")),
        num_heads=heads,
        num_kv_heads=int(_field(reader, p + "attention.head_count_kv", heads)),
        head_dim=head_dim,
        intermediate_size=int(_field(reader, p + "feed_forward_length")),
        rope_theta=float(_field(reader, p + "rope.freq_base", 10000.0)),
        rms_norm_eps=float(_field(reader, p + "attention.layer_norm_rms_epsilon")),
        context_length=int(_field(reader, p + "context_length")),
        tie_word_embeddings="output.weight" not in names,
    )


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undoes the llama converter's per-head row order of attn_q / attn_k.

    Within each head of hd rows, GGUF row 2i+j holds HF row j*hd/2 + i; w is [out, in].
    """
    out, inp = w.shape
    hd = out // n_heads
    return w.reshape(n_heads, hd // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def dequantize_tensors(reader, config: LlamaConfig) -> dict[str, np.ndarray]:
    """All tensors as float32 NumPy arrays under their HF names, [out, in], Q/K un-permuted."""
    from gguf.quants import dequantize

    tensors = {}
    for t in reader.tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        m = _BLOCK_RE.match(t.name)
        if m is not None:
            i, kind = int(m.group(1)), m.group(2)
            if kind not in _BLOCK_NAMES:
                raise NotImplementedError(f"unexpected GGUF tensor {t.name!r}")
            if kind == "attn_q":
                w = unpermute_qk(w, config.num_heads)
            elif kind == "attn_k":
                w = unpermute_qk(w, config.num_kv_heads)
            tensors[f"model.layers.{i}.{_BLOCK_NAMES[kind]}.weight"] = w
        elif t.name in _GLOBAL_NAMES:
            tensors[_GLOBAL_NAMES[t.name]] = w
        elif t.name == "rope_freqs.weight":
            raise NotImplementedError("GGUF files with rope_freqs (scaled RoPE) are not supported")
        else:
            raise NotImplementedError(f"unexpected GGUF tensor {t.name!r}")
    return tensors


def tokenizer_from_gguf(reader):
    """A `tokenizers.Tokenizer` rebuilt from the `tokenizer.ggml.*` metadata.

    Byte-level BPE (`tokenizer.ggml.model == "gpt2"`): the vocab in id order, the
    merges, a ByteLevel pre-tokenizer without a prefix space and with the GPT-2 split
    regex, no normalizer and no post-processor (so no BOS/EOS is added; SmolLM2's
    `add_bos_token` is false). Control tokens become special added tokens, which are
    matched verbatim in the input text.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise NotImplementedError(f"GGUF tokenizer model {kind!r} is not supported (only gpt2 BPE)")
    if _field(reader, "tokenizer.ggml.add_bos_token", False) or _field(
            reader, "tokenizer.ggml.add_eos_token", False):
        raise NotImplementedError("GGUF tokenizers that add BOS/EOS are not supported")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = []
    for m in _field(reader, "tokenizer.ggml.merges"):
        parts = m.split(" ")
        if len(parts) != 2:
            raise ValueError(f"malformed BPE merge {m!r} in the GGUF metadata")
        merges.append((parts[0], parts[1]))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("the GGUF vocabulary has duplicate tokens")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                               fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(tokens[i], special=True, normalized=False)
               for i, ty in enumerate(types) if ty == _CONTROL]
    user = [AddedToken(tokens[i], special=False, normalized=False)
            for i, ty in enumerate(types) if ty == _USER_DEFINED]
    tok.add_special_tokens(special)
    if user:
        tok.add_tokens(user)
    return tok


def read_llama_gguf(path: Union[str, Path]) -> GGUFLlama:
    """Reads a llama GGUF file: config, stacked float32 params (NumPy), tokenizer, metadata."""
    reader = open_gguf(path)
    config = config_from_gguf(reader)
    params = params_from_hf(dequantize_tensors(reader, config), config)
    return GGUFLlama(params, config, tokenizer_from_gguf(reader), metadata(reader))
