"""Llama-family GGUF files -> config, float32 weights in HF layout, and a BPE tokenizer.

Reads the GGUF container itself (header, metadata, tensor directory; the tensors
memory-mapped) and dequantizes F32, F16, BF16, Q4_1 and Q8_0 blocks with whole-array
NumPy operations, bit for bit what gguf-py's `gguf.quants.dequantize` gives; any other
block type goes to gguf-py. (gguf-py's own `GGUFReader` takes seconds to parse
SmolLM2's 49 152-token vocabulary one memory-mapped slice at a time.) Three things
differ from a Hugging Face checkpoint, and this module undoes them:

- names: `blk.{i}.attn_q.weight` is HF's `model.layers.{i}.self_attn.q_proj.weight`;
- layout: a GGUF tensor listed as [in, out] dequantizes to a row-major [out, in]
  array, which is already torch's Linear layout;
- RoPE: the llama converter reorders the rows of `attn_q` / `attn_k` inside each
  head (GGUF row 2i+j holds HF row j*hd/2 + i) so that llama.cpp can rotate
  adjacent pairs; `unpermute_qk` restores HF's rotate-half order.

Nothing is cached on disk.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np

from activeft_jax.models.llama import _HF_LAYER_NAMES, _LAYER_KEYS, LlamaConfig, _with_globals

__all__ = [
    "GGUFFile",
    "GGUFLlama",
    "GGUFTensor",
    "config_from_gguf",
    "dequantize",
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


class GGUFTensor(NamedTuple):
    name: str
    shape: tuple           # NumPy order: ggml's dims reversed (the row length last)
    tensor_type: int       # ggml type id (0 F32, 1 F16, 3 Q4_1, 8 Q8_0, 30 BF16, ...)
    data: np.ndarray       # its raw bytes, uint8, memory-mapped


class GGUFFile(NamedTuple):
    version: int
    fields: dict           # key -> value: int, float, bool, str, or a list of them
    field_types: dict      # key -> GGUF value type id (9 for arrays)
    tensors: list          # GGUFTensor, in file order


# GGUF metadata value types -> struct format (8 string, 9 array handled apart).
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
           10: "<Q", 11: "<q", 12: "<d"}
_ARRAY_DTYPE = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4",
                7: "<?", 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9
# ggml type id -> (elements per block, bytes per block) for the types read here.
_BLOCKS = {0: (1, 4), 1: (1, 2), 3: (32, 20), 8: (32, 34), 30: (1, 2)}


def open_gguf(path: Union[str, Path]) -> GGUFFile:
    """Parses a GGUF file's header, metadata and tensor directory; the tensor data stay
    memory-mapped (nothing is read until dequantized)."""
    path = Path(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    buf = memoryview(raw)
    pos = 0

    def take(fmt):
        nonlocal pos
        out = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return out[0] if len(out) == 1 else out

    def string():
        nonlocal pos
        n = take("<Q")
        out = bytes(buf[pos:pos + n]).decode("utf-8")
        pos += n
        return out

    def value(kind):
        nonlocal pos
        if kind == _STRING:
            return string()
        if kind == _ARRAY:
            sub, count = take("<IQ")
            if sub == _STRING:
                return [string() for _ in range(count)]
            if sub == _ARRAY:
                return [value(take("<I")) for _ in range(count)]
            if sub not in _ARRAY_DTYPE:
                raise ValueError(f"{path}: unknown GGUF array element type {sub}")
            dt = np.dtype(_ARRAY_DTYPE[sub])
            out = np.frombuffer(buf, dt, count, pos).tolist()
            pos += count * dt.itemsize
            return out
        if kind not in _SCALAR:
            raise ValueError(f"{path}: unknown GGUF value type {kind}")
        return take(_SCALAR[kind])

    try:
        if bytes(buf[:4]) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (no GGUF magic)")
        pos = 4
        version, n_tensors, n_kv = take("<IQQ")
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} is not supported (2 or 3)")
        fields, types = {}, {}
        for _ in range(n_kv):
            key = string()
            kind = take("<I")
            types[key], fields[key] = kind, value(kind)
        infos = []
        for _ in range(n_tensors):
            name = string()
            n_dims = take("<I")
            dims = [take("<Q") for _ in range(n_dims)]
            kind, offset = take("<IQ")
            infos.append((name, tuple(reversed(dims)), kind, offset))
    except struct.error as e:
        raise ValueError(f"{path}: truncated GGUF header ({e})") from None
    align = int(fields.get("general.alignment", 32))
    if align <= 0 or align & (align - 1):
        raise ValueError(f"{path}: GGUF alignment {align} is not a power of two")
    start = -(-pos // align) * align
    tensors = []
    for name, shape, kind, offset in infos:
        n = int(np.prod(shape, dtype=np.int64))
        if kind in _BLOCKS:
            per, size = _BLOCKS[kind]
        else:
            from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

            try:
                per, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            except ValueError:
                raise ValueError(f"{path}: tensor {name!r} has unknown ggml type {kind}") from None
        if shape and shape[-1] % per:
            raise ValueError(f"{path}: tensor {name!r} rows of {shape[-1]} are not whole blocks")
        nbytes = n // per * size
        begin = start + offset
        if begin + nbytes > raw.shape[0]:
            raise ValueError(f"{path}: tensor {name!r} runs past the end of the file")
        data = np.asarray(raw[begin:begin + nbytes])
        tensors.append(GGUFTensor(name, shape, kind, data))
    return GGUFFile(version, fields, types, tensors)


def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """[n, 1] float32 from the little-endian float16 at byte `at` of each block."""
    return np.ascontiguousarray(blocks[:, at:at + 2]).view("<f2").astype(np.float32)


def dequantize(t: GGUFTensor, out: np.ndarray | None = None) -> np.ndarray:
    """A tensor as float32 in its NumPy shape, written into `out` when given.

    F32, F16, BF16, Q4_1 and Q8_0 are dequantized here (Q4_1: each block of 32 holds
    float16 d and m, then 16 bytes whose low nibbles are weights 0-15 and high nibbles
    16-31, w = d*q + m; Q8_0: float16 d then 32 int8 q, w = q*d), in chunks so that
    no temporary is larger than a few MB; other types by `gguf.quants.dequantize`."""
    shape = tuple(t.shape)
    if out is None:
        out = np.empty(shape, np.float32)
    if out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}")
    flat = out.reshape(-1)
    kind = t.tensor_type
    if kind == 0:
        flat[:] = t.data.view("<f4")
    elif kind == 1:
        flat[:] = t.data.view("<f2")
    elif kind == 30:
        flat.view(np.uint32)[:] = t.data.view("<u2").astype(np.uint32) << 16
    elif kind in (3, 8):
        per, size = _BLOCKS[kind]
        blocks = t.data.reshape(-1, size)
        w = flat.reshape(-1, per)
        step = 1 << 15   # blocks per chunk: 4 MB of float32 weights
        for a in range(0, blocks.shape[0], step):
            b = blocks[a:a + step]
            d = _f16(b, 0)
            if kind == 3:
                qs = b[:, 4:]
                q = np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=1)
                np.multiply(d, q.astype(np.float32), out=w[a:a + step])
                w[a:a + step] += _f16(b, 2)
            else:
                np.multiply(b[:, 2:].view(np.int8).astype(np.float32), d, out=w[a:a + step])
    else:
        from gguf.quants import dequantize as _gguf_dequantize

        rows = t.data.reshape(-1, t.data.size // max(1, int(np.prod(shape[:-1], dtype=np.int64))))
        flat[:] = np.asarray(_gguf_dequantize(rows, kind), np.float32).reshape(-1)
    return out


def _field(reader: GGUFFile, key: str, default: Any = KeyError) -> Any:
    if key not in reader.fields:
        if default is KeyError:
            raise KeyError(f"GGUF metadata has no key {key!r}")
        return default
    return reader.fields[key]


def metadata(reader: GGUFFile) -> dict:
    """The scalar and string key/values of the file (array values are skipped)."""
    return {k: v for k, v in reader.fields.items() if reader.field_types[k] != _ARRAY}


def config_from_gguf(reader: GGUFFile) -> LlamaConfig:
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
        vocab = len(reader.fields["tokenizer.ggml.tokens"])
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


def _block_of(t: GGUFTensor) -> tuple[int, str] | None:
    """(layer, GGUF kind) of a per-block tensor, None for one of `_GLOBAL_NAMES`;
    NotImplementedError for any other tensor."""
    m = _BLOCK_RE.match(t.name)
    if m is not None and m.group(2) in _BLOCK_NAMES:
        return int(m.group(1)), m.group(2)
    if m is None and t.name in _GLOBAL_NAMES:
        return None
    if t.name == "rope_freqs.weight":
        raise NotImplementedError("GGUF files with rope_freqs (scaled RoPE) are not supported")
    raise NotImplementedError(f"unexpected GGUF tensor {t.name!r}")


def _dequantize_hf(t: GGUFTensor, kind: str, config: LlamaConfig) -> np.ndarray:
    """A block tensor in HF's layout (attn_q / attn_k rows un-permuted)."""
    w = dequantize(t)
    if kind == "attn_q":
        return unpermute_qk(w, config.num_heads)
    if kind == "attn_k":
        return unpermute_qk(w, config.num_kv_heads)
    return w


def dequantize_tensors(reader: GGUFFile, config: LlamaConfig) -> dict[str, np.ndarray]:
    """All tensors as float32 NumPy arrays under their HF names, [out, in], Q/K un-permuted."""
    tensors = {}
    for t in reader.tensors:
        block = _block_of(t)
        if block is None:
            tensors[_GLOBAL_NAMES[t.name]] = dequantize(t)
        else:
            i, kind = block
            tensors[f"model.layers.{i}.{_BLOCK_NAMES[kind]}.weight"] = _dequantize_hf(t, kind, config)
    return tensors


def tokenizer_from_gguf(reader: GGUFFile):
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


# GGUF block tensor kind -> key of the stacked params (llama.py's layout).
_STACKED_KEYS = {kind: key for kind, hf in _BLOCK_NAMES.items()
                 for key, hf_key in _HF_LAYER_NAMES.items() if hf == hf_key}


def _stacked_params(reader: GGUFFile, config: LlamaConfig) -> dict:
    """The params of `params_from_hf(dequantize_tensors(reader, config), config)`, each
    tensor dequantized straight into its layer's slot of the stacked arrays (one copy
    of the weights in memory, not two)."""
    by_name = {t.name: t for t in reader.tensors}
    layers, seen = {}, set()
    for t in reader.tensors:
        block = _block_of(t)
        if block is None:
            continue
        i, kind = block
        if not 0 <= i < config.num_layers:
            raise ValueError(f"GGUF tensor {t.name!r} is past block_count {config.num_layers}")
        key = _STACKED_KEYS[kind]
        if key not in layers:
            layers[key] = np.empty((config.num_layers,) + tuple(t.shape), np.float32)
        if tuple(t.shape) != layers[key].shape[1:]:
            raise ValueError(f"GGUF tensor {t.name!r} has shape {tuple(t.shape)}; "
                             f"layer 0's is {layers[key].shape[1:]}")
        if kind in ("attn_q", "attn_k"):
            layers[key][i] = _dequantize_hf(t, kind, config)
        else:
            dequantize(t, out=layers[key][i])
        seen.add((key, i))
    for key in _LAYER_KEYS:
        missing = [i for i in range(config.num_layers) if (key, i) not in seen]
        if missing:
            raise KeyError(f"checkpoint has no tensor "
                           f"'model.layers.{missing[0]}.{_HF_LAYER_NAMES[key]}.weight'")

    gguf_name = {hf: name for name, hf in _GLOBAL_NAMES.items()}

    def get(hf_name):
        if gguf_name[hf_name] not in by_name:
            raise KeyError(f"checkpoint has no tensor {hf_name!r}")
        return dequantize(by_name[gguf_name[hf_name]])

    return _with_globals(layers, get, config)


def read_llama_gguf(path: Union[str, Path]) -> GGUFLlama:
    """Reads a llama GGUF file: config, stacked float32 params (NumPy), tokenizer, metadata."""
    reader = open_gguf(path)
    config = config_from_gguf(reader)
    params = _stacked_params(reader, config)
    return GGUFLlama(params, config, tokenizer_from_gguf(reader), metadata(reader))
