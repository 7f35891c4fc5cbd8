"""Golden outputs of the reference's remaining surface (run with the reference's venv).

Writes tests/data/reference_surface.{npz,json}: the PyTorch `activeft` 0.1.1 in
exact mode (one greedy pass: mini batch > N) on seeded problems, for

* `force_nonsequential=True` of every BaCE rule;
* a model with its own kernel (`ModelWithKernel`): an RBF with a fixed
  lengthscale and a polynomial kernel;
* a model with a latent covariance (`ModelWithLatentCovariance`);
* `ITLNoiseless` with its index bug patched (0.1.1 raises a TypeError: it
  applies `~` to a float tensor of indices), with and without
  `target_is_nonobersavble`;
* target subsampling (`max_target_size`, `subsampled_target_frac`): the
  empirical law of the picks over many torch seeds (torch's generator cannot
  be matched, so tests compare laws).

    .ref-venv/bin/python experiments/benchmarks/reference/run_ref_surface.py
"""

from __future__ import annotations

import json
import os
import sys
import types
from collections import Counter

import numpy as np
import torch

sys.modules.setdefault("wandb", types.SimpleNamespace(log=lambda *a, **k: None, run=None))

from activeft import ActiveDataLoader  # noqa: E402
from activeft.acquisition_functions import (  # noqa: E402
    ctl,
    itl,
    itl_noiseless,
    mm_itl,
    undirected_itl,
    undirected_vtl,
    vtl,
)
from activeft.model import ModelWithKernel, ModelWithLatentCovariance  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
OUT = os.path.join(ROOT, "tests", "data", "reference_surface")


class Rows(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i]


class _Anchored(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self._anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)


class KernelModel(_Anchored, ModelWithKernel):
    def __init__(self, kind, ell=None):
        super().__init__()
        self.kind, self.ell = kind, ell

    def forward(self, x):
        return x

    def kernel(self, x1, x2):
        if self.kind == "rbf":
            return torch.exp(-torch.cdist(x1, x2) ** 2 / (2 * self.ell**2))
        d = x1.shape[1]
        return (x1 @ x2.T / d + 1.0) ** 2


class LatentModel(_Anchored, ModelWithLatentCovariance):
    def __init__(self, sigma):
        super().__init__()
        self.sigma = sigma

    def forward(self, x):
        return x

    def embed(self, x):
        return x

    def latent_covariance(self):
        return self.sigma


class PatchedITLNoiseless(itl_noiseless.ITLNoiseless):
    """0.1.1's ITLNoiseless.compute with the observed indices used as a long tensor / mask."""

    def compute(self, state):
        obs = state.observed_indices.long()
        variances = torch.diag(state.covariance_matrix[: state.n, : state.n])
        conditional = torch.empty_like(variances)
        seen = torch.zeros(state.n, dtype=torch.bool)
        seen[obs] = True
        unobserved = torch.arange(state.n)[~seen]
        target_indices = torch.arange(start=state.n, end=state.covariance_matrix.dim)
        if not self.target_is_nonobersavble and obs.size(0) > 0:
            samples = state.joint_data[obs]
            targets = state.joint_data[state.n:]
            near = torch.any(torch.cdist(targets, samples, p=2) < itl_noiseless.ABS_TOL, dim=1)
            target_indices = target_indices[~near]
        if unobserved.size(0) > 0:
            conditional[unobserved] = torch.diag(state.covariance_matrix.condition_on(
                indices=target_indices, target_indices=unobserved)[:, :])
        mi = 0.5 * torch.clamp(torch.log(variances / conditional), min=0)
        if obs.size(0) > 0:
            mi.index_fill_(dim=0, index=obs, value=-torch.inf)
        return mi


RULES = {"ITL": itl.ITL, "VTL": vtl.VTL, "CTL": ctl.CTL, "MMITL": mm_itl.MMITL,
         "UndirectedITL": undirected_itl.UndirectedITL, "UndirectedVTL": undirected_vtl.UndirectedVTL}
TARGETED = {"ITL", "VTL", "CTL", "MMITL"}


def run(rule, pool, target, k, noise_std, model=None, nonseq=False, **target_opts):
    n = pool.shape[0]
    kw = dict(noise_std=noise_std, mini_batch_size=n + 1, num_workers=0, subsample=False,
              force_nonsequential=nonseq)
    if rule in TARGETED:
        kw.update(target=torch.as_tensor(target), **target_opts)
    af = RULES[rule](**kw)
    loader = ActiveDataLoader(dataset=Rows(torch.as_tensor(pool)), batch_size=k,
                              acquisition_function=af)
    idx, val = loader.next(model)
    return [int(i) for i in torch.as_tensor(idx).tolist()], [float(v) for v in torch.as_tensor(val).tolist()]


def gaussian(seed, n, d, m):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)).astype(np.float32),
            rng.standard_normal((m, d)).astype(np.float32))


def median_distance(x):
    d = np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0))
    return float(np.median(d[np.triu_indices(x.shape[0], 1)]))


def main():
    torch.manual_seed(0)
    arrays, meta = {}, {"library": "activeft 0.1.1, exact mode (mini_batch_size = N + 1)",
                        "script": "experiments/benchmarks/reference/run_ref_surface.py",
                        "cases": {}}

    # 1. force_nonsequential on every BaCE rule
    pool, target = gaussian(201, 200, 16, 5)
    arrays["nonseq/pool"], arrays["nonseq/target"] = pool, target
    for rule in ("ITL", "VTL", "CTL", "MMITL", "UndirectedITL"):
        idx, val = run(rule, pool, target, 12, 1.0, nonseq=True)
        meta["cases"][f"nonseq/{rule}"] = dict(problem="nonseq", rule=rule, k=12, noise_std=1.0,
                                               indices=idx, values=val)

    # 2. a model's own kernel: RBF (median-distance lengthscale) and a polynomial kernel
    pool, target = gaussian(202, 150, 8, 4)
    ell = median_distance(pool)
    arrays["kernel/pool"], arrays["kernel/target"] = pool, target
    meta["rbf_lengthscale"] = ell
    for kind, rules in (("rbf", ("ITL", "VTL", "CTL", "UndirectedITL", "UndirectedVTL")),
                        ("poly", ("VTL", "MMITL", "UndirectedVTL"))):
        model = KernelModel(kind, ell)
        for rule in rules:
            idx, val = run(rule, pool, target, 10, 0.1, model=model)
            meta["cases"][f"kernel_{kind}/{rule}"] = dict(problem="kernel", rule=rule, k=10,
                                                          noise_std=0.1, kernel=kind,
                                                          indices=idx, values=val)

    # 3. latent covariance Sigma (random PSD, rank-deficient in one direction)
    pool, target = gaussian(203, 180, 12, 6)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((12, 11)).astype(np.float32)
    sigma = (a @ a.T / 11).astype(np.float32)
    arrays["latent/pool"], arrays["latent/target"], arrays["latent/sigma"] = pool, target, sigma
    model = LatentModel(torch.as_tensor(sigma))
    for rule in ("ITL", "VTL", "UndirectedVTL"):
        idx, val = run(rule, pool, target, 10, 0.5, model=model)
        meta["cases"][f"latent/{rule}"] = dict(problem="latent", rule=rule, k=10, noise_std=0.5,
                                               indices=idx, values=val)

    # 4. ITLNoiseless (patched): 3 of the 6 targets are pool points
    pool, target = gaussian(205, 120, 10, 3)
    target = np.concatenate([target, pool[[5, 17, 40]]]).astype(np.float32)
    arrays["noiseless/pool"], arrays["noiseless/target"] = pool, target
    for observable in (True, False):
        af = PatchedITLNoiseless(target=torch.as_tensor(target), target_is_nonobersavble=observable,
                                 mini_batch_size=pool.shape[0] + 1, num_workers=0)
        loader = ActiveDataLoader(dataset=Rows(torch.as_tensor(pool)), batch_size=10,
                                  acquisition_function=af)
        idx, val = loader.next(None)
        name = "keep" if observable else "drop"
        meta["cases"][f"noiseless_{name}/ITLNoiseless"] = dict(
            problem="noiseless", rule="ITLNoiseless", k=10, noise_std=0.1,
            drop_observed_targets=not observable,
            indices=[int(i) for i in idx.tolist()], values=[float(v) for v in val.tolist()])

    # 5. target subsampling: the law of the picks over torch seeds
    pool, target = gaussian(204, 40, 6, 4)
    arrays["subsample/pool"], arrays["subsample/target"] = pool, target
    runs = 400
    for name, opts in (("max2", dict(max_target_size=2)),
                       ("frac", dict(subsampled_target_frac=0.5))):
        counts = Counter()
        for seed in range(runs):
            torch.manual_seed(seed)
            idx, _ = run("VTL", pool, target, 2, 0.3, **opts)
            counts[" ".join(map(str, idx))] += 1
        meta["cases"][f"subsample_{name}/VTL"] = dict(problem="subsample", rule="VTL", k=2,
                                                      noise_std=0.3, runs=runs, options=opts,
                                                      counts=dict(counts))
    np.savez(OUT + ".npz", **arrays)
    with open(OUT + ".json", "w") as f:
        json.dump(meta, f, indent=1)
    print("wrote", OUT + ".{npz,json}", len(meta["cases"]), "cases")


if __name__ == "__main__":
    main()
