"""Writes tests/data/tiny_llama/: a small random Llama checkpoint in Hugging Face format
and the logits transformers computes for it.

Needs torch and transformers (the `make st-venv` environment), never a dependency of
the package:

    .st-venv/bin/python experiments/benchmarks/make_model_fixtures_llama.py

The model is `transformers.LlamaForCausalLM` (hidden 64, 2 layers, 4 query heads,
2 KV heads, vocab 256, FFN 128, rope_theta 1e4, untied lm_head) with a fixed torch
seed. Its weights are drawn wider than the default init and the norm weights are
randomised, so that a wrong RoPE pairing, KV-head grouping or norm shows up clearly
in the logits. They are rounded to float16 and saved as float16 safetensors (to stay
small); the expected logits come from the float32 model holding those same rounded
values, with right padding and an attention mask.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SEED = 20240611
LENGTHS = [12, 7, 3, 10]   # right-padded to 12


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "tiny_llama"))
    a = p.parse_args()
    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, rope_theta=10000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False, max_position_embeddings=128, initializer_range=0.15,
        attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, w in model.named_parameters():
            if name.endswith("norm.weight"):
                w.copy_(1.0 + 0.3 * torch.randn_like(w))
            w.copy_(w.half().float())   # exactly representable in the float16 file

    g = torch.Generator().manual_seed(SEED + 1)
    t = max(LENGTHS)
    ids = torch.randint(3, config.vocab_size, (len(LENGTHS), t), generator=g)
    mask = torch.zeros_like(ids)
    for r, n in enumerate(LENGTHS):
        mask[r, :n] = 1
    ids = torch.where(mask.bool(), ids, torch.zeros_like(ids))   # pad id 0
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float().numpy()
        single = np.stack([
            np.pad(model(input_ids=ids[r:r + 1, :n]).logits[0].float().numpy(),
                   ((0, t - n), (0, 0)))
            for r, n in enumerate(LENGTHS)])
    real = mask.numpy().astype(bool)
    diff = float(np.abs(logits - single)[real].max())

    os.makedirs(a.out, exist_ok=True)
    model.half().save_pretrained(a.out, safe_serialization=True)
    np.savez_compressed(os.path.join(a.out, "expected.npz"),
                        input_ids=ids.numpy().astype(np.int32),
                        attention_mask=mask.numpy().astype(np.int32),
                        logits=logits.astype(np.float32))
    meta = {"made_by": "experiments/benchmarks/make_model_fixtures_llama.py",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "seed": SEED, "lengths": LENGTHS, "pad_id": 0,
            "weights": "float16 safetensors; logits from the float32 model with the same values",
            "attn_implementation": "sdpa",
            "batched_vs_single_max_abs_diff_real_positions": diff}
    with open(os.path.join(a.out, "expected.json"), "w") as f:
        json.dump(meta, f, indent=1)
    sizes = {n: os.path.getsize(os.path.join(a.out, n)) for n in sorted(os.listdir(a.out))}
    print(json.dumps({"sizes": sizes, "total": sum(sizes.values()), **meta}, indent=1))


if __name__ == "__main__":
    main()
