"""Writes tests/data/reference_classification.{npz,json}: golden outputs of the reference's
classification rules (MinMargin, LeastConfidence, EIG of activeft 0.1.1).

Run it with the reference's own interpreter (torch + activeft 0.1.1, see reference/README.md):

    .ref-venv/bin/python experiments/benchmarks/make_classification_fixtures.py

MinMargin and LeastConfidence run through `ActiveDataLoader` in exact mode (one
mini batch of the whole pool). Their "model" returns stored logits row by row
(forward = identity), and the reference applies the softmax itself, so our rules
get probs = softmax(logits). The logits come from a random tanh MLP; one problem
repeats some rows to make exact ties.

EIG cannot run as released. Its `compute(model, data)` lacks the `device` argument
that `select` passes (TypeError), and its loop over the labels c does not restore the
final layer's weight between labels, so the hallucinated SGD steps accumulate over c.
This script calls `compute` directly and patches `torch.optim.SGD` so that each step
starts from the original weight (`RestoringSGD` below). It changes nothing else in the
library. It runs the model in float64 (the default dtype is float64 too, so the
reference's own buffers are float64): the stored values are the reference's math with
rounding errors far below float32 resolution. For information it also stores the
patched float32 run and the unpatched run (steps accumulating over c). Our inputs are
the penultimate features h = tanh(x A + a) and the final layer's weight (transposed to
the Flax [H, C] layout) and bias.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
from activeft import ActiveDataLoader
from activeft.acquisition_functions import eig as eig_module
from activeft.acquisition_functions.least_confidence import LeastConfidence
from activeft.acquisition_functions.min_margin import MinMargin
from torch.utils.data import Dataset as TorchDataset

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


class Rows(TorchDataset):
    def __init__(self, data: torch.Tensor):
        self.data = data

    def __len__(self) -> int:
        return self.data.size(0)

    def __getitem__(self, i):
        return self.data[i]


class Logits(torch.nn.Module):
    """forward(x) = x: the dataset rows are the logits."""

    def __init__(self):
        super().__init__()
        self._anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # for get_device

    def forward(self, x):
        return x


class Classifier(torch.nn.Module):
    """x -> tanh(Linear) -> final_layer (the attribute EIG steps on)."""

    def __init__(self, d: int, h: int, c: int):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.Tanh())
        self.final_layer = torch.nn.Linear(h, c)

    def forward(self, x):
        return self.final_layer(self.features(x))


def mlp_logits(seed: int, n: int, d: int, c: int, scale: float, repeats: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n - repeats, d))
    a, b = rng.standard_normal((d, 32)) / np.sqrt(d), rng.standard_normal((32, c)) / np.sqrt(32)
    logits = scale * np.tanh(x @ a) @ b
    if repeats:  # exact duplicates: tied scores
        logits = np.concatenate([logits, logits[rng.choice(n - repeats, repeats, replace=False)]])
    return logits.astype(np.float32)


# name -> (seed, N, d, C, logit scale, duplicated rows, k)
MARGIN_PROBLEMS = {
    "c10_n300": (201, 300, 8, 10, 3.0, 0, 25),
    "c3_n200_sharp": (202, 200, 6, 3, 8.0, 0, 20),
    "c2_n150_ties": (203, 150, 4, 2, 3.0, 12, 15),
    "c50_n250": (204, 250, 16, 50, 5.0, 0, 30),
}

# name -> (seed, N, m, d, H, C, learning rate, k)
EIG_PROBLEMS = {
    "eig_c5_n60": (301, 60, 10, 8, 16, 5, 0.01, 10),   # the reference's step size
    "eig_c3_n50_big_step": (302, 50, 6, 6, 12, 3, 0.5, 8),  # steps with |delta| > 1 too
}


def run_margin_rules(logits: np.ndarray, k: int) -> dict:
    out = {}
    n = logits.shape[0]
    for name, cls in (("MinMargin", MinMargin), ("LeastConfidence", LeastConfidence)):
        torch.manual_seed(0)
        af = cls(mini_batch_size=n + 1, num_workers=0, subsample=False)
        loader = ActiveDataLoader(dataset=Rows(torch.from_numpy(logits)), batch_size=k,
                                  acquisition_function=af)
        idx, values = loader.next(Logits())
        out[name] = {"indices": [int(i) for i in torch.as_tensor(idx).reshape(-1)],
                     "values": [float(v) for v in torch.as_tensor(values).reshape(-1)]}
    return out


class RestoringSGD(torch.optim.SGD):
    """SGD whose construction resets its parameter to `original` (EIG builds one per label)."""

    original: torch.Tensor | None = None
    lr: float | None = None  # overrides the reference's fixed 0.01 when set

    def __init__(self, params, lr):
        params = list(params)
        if RestoringSGD.original is not None:
            with torch.no_grad():
                params[0].copy_(RestoringSGD.original)
        super().__init__(params, lr=RestoringSGD.lr if RestoringSGD.lr is not None else lr)


def run_eig(model: Classifier, x_pool, x_target, lr: float, restore: bool) -> np.ndarray:
    af = eig_module.EIG(target=x_target, mini_batch_size=x_pool.shape[0] + 1)
    saved = torch.optim.SGD
    RestoringSGD.original = model.final_layer.weight.detach().clone() if restore else None
    RestoringSGD.lr = lr
    torch.optim.SGD = RestoringSGD
    try:
        values = af.compute(model, x_pool)
    finally:
        torch.optim.SGD = saved
    return values.detach().numpy().astype(np.float64)


def eig_problem(seed, n, m, d, h, c, lr):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_pool, x_target = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    arrays, runs = {}, {}
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(seed)
    model64 = Classifier(d, h, c)
    for dtype in (torch.float64, torch.float32):
        torch.set_default_dtype(dtype)
        model = Classifier(d, h, c)
        model.load_state_dict({key: v.to(dtype) for key, v in model64.state_dict().items()})
        xp, xt = torch.tensor(x_pool, dtype=dtype), torch.tensor(x_target, dtype=dtype)
        key = "f64" if dtype == torch.float64 else "f32"
        runs[key] = run_eig(model, xp, xt, lr, restore=True)
        if dtype == torch.float64:
            w0 = model.final_layer.weight.detach().clone()
            runs["unpatched"] = run_eig(model, xp, xt, lr, restore=False)
            assert torch.equal(model.final_layer.weight, w0)  # restored per x by the reference
            with torch.no_grad():
                arrays["pool"] = model.features(xp).numpy()
                arrays["target"] = model.features(xt).numpy()
            arrays["weights"] = model.final_layer.weight.detach().numpy().T.copy()
            arrays["bias"] = model.final_layer.bias.detach().numpy().copy()
            # the released select path fails
            try:
                af = eig_module.EIG(target=xt, mini_batch_size=n + 1)
                af.select(3, model, Rows(xp))
                runs["select_error"] = None
            except TypeError as e:
                runs["select_error"] = f"TypeError: {e}"
    torch.set_default_dtype(torch.float32)
    return arrays, runs


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "reference_classification"))
    a = p.parse_args()
    import activeft

    arrays, meta = {}, {
        "library": f"activeft {getattr(activeft, '__version__', '0.1.1')}, torch {torch.__version__}",
        "script": "experiments/benchmarks/make_classification_fixtures.py",
        "margin": {}, "eig": {}}
    for name, (seed, n, d, c, scale, repeats, k) in MARGIN_PROBLEMS.items():
        logits = mlp_logits(seed, n, d, c, scale, repeats)
        arrays[f"{name}/logits"] = logits
        picks = run_margin_rules(logits, k)
        meta["margin"][name] = {"k": k, "picks": picks}
        print(f"{name:22s} MinMargin {picks['MinMargin']['indices'][:6]}... "
              f"LeastConfidence {picks['LeastConfidence']['indices'][:6]}...", file=sys.stderr)
    for name, (seed, n, m, d, h, c, lr, k) in EIG_PROBLEMS.items():
        arr, runs = eig_problem(seed, n, m, d, h, c, lr)
        for key, value in arr.items():
            arrays[f"{name}/{key}"] = value
        for key in ("f64", "f32", "unpatched"):
            arrays[f"{name}/values_{key}"] = runs[key]
        order = np.argsort(-runs["f64"], kind="stable")[:k]
        meta["eig"][name] = {
            "k": k, "step_size": lr, "indices": [int(i) for i in order],
            "select_error": runs["select_error"],
            "f32_max_rel_err": float(np.max(np.abs(runs["f32"] - runs["f64"]))
                                     / np.max(np.abs(runs["f64"]))),
            "unpatched_max_rel_diff": float(np.max(np.abs(runs["unpatched"] - runs["f64"]))
                                            / np.max(np.abs(runs["f64"]))),
        }
        print(f"{name:22s} EIG {meta['eig'][name]}", file=sys.stderr)
    np.savez_compressed(a.out + ".npz", **arrays)
    with open(a.out + ".json", "w") as f:
        json.dump(meta, f, indent=1)
    print(f"wrote {a.out}.npz and .json", file=sys.stderr)


if __name__ == "__main__":
    main()
