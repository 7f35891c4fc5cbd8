"""Runs the reference SIFT (`activeft.sift.Retriever`, activeft 0.1.1) on an .npz
with `pool` [N, d] and `prompts` [P, d]; writes indices, values and wall time.

    .ref-venv/bin/python run_sift_ref.py --npz in.npz --out ref.npz --k 10 --K 200 --llambda 0.01

Only the public API is called: `Retriever(faiss.IndexFlatIP(d), llambda=...)`
and `batch_search(prompts[:, None, :], N=k, K=K, threads=1)`. One harness
change, to ordering only: 0.1.1 collects per-prompt results with
`concurrent.futures.as_completed`, i.e. in completion order, not prompt order
(reference notes §6.7); here `as_completed` yields in submission order so that
row i belongs to prompt i. With threads=1 the computation is unchanged.
"""

import argparse
import concurrent.futures
import sys
import time
import types

if "wandb" not in sys.modules:  # activeft 0.1.1's MMITL imports wandb at module level
    stub = types.ModuleType("wandb")
    stub.run = None
    stub.log = lambda *a, **k: None
    sys.modules["wandb"] = stub

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from activeft.sift import Retriever  # noqa: E402

concurrent.futures.as_completed = lambda fs, timeout=None: iter(list(fs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npz", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--K", type=int, default=200)
    ap.add_argument("--llambda", type=float, default=0.01)
    ap.add_argument("--torch-threads", type=int, default=None)
    a = ap.parse_args()
    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    z = np.load(a.npz)
    pool = np.ascontiguousarray(z["pool"], dtype=np.float32)
    prompts = np.ascontiguousarray(z["prompts"], dtype=np.float32)
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(pool.shape[1])
    index.add(pool)
    t_index = time.perf_counter() - t0
    retriever = Retriever(index, llambda=a.llambda, device=torch.device("cpu"))
    t0 = time.perf_counter()
    values, indices, _, rt = retriever.batch_search(prompts[:, None, :], N=a.k, K=a.K, threads=1)
    wall = time.perf_counter() - t0
    np.savez(a.out, indices=np.asarray(indices, dtype=np.int64), values=np.asarray(values, dtype=np.float64),
             wall_s=wall, index_s=t_index, faiss_s=rt.faiss, sift_s=rt.sift)


if __name__ == "__main__":
    main()
