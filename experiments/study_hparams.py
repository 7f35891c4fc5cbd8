"""Hyperparameter study: ActiveFT's temperature τ and ITL/VTL's noise_std, one vmap-ed call each.

Study A's digits setting: the CNN pretrained on classes 0-4; pool = the penultimate
(last-layer) embeddings of the train split (all ten classes), target = those of the
test examples of classes 5, 7 and 9. One-shot selection of k = 50 (Study A's final
budget) per grid point:

* ActiveFT: `activeft_jax.selection.activeft_sweep` over τ = 0.07 · 2^j (j = -3..4) ×
  the seeds' keys `key(s)`: one compiled call for the whole grid.
* ITL and VTL: ``jax.jit(jax.vmap(lambda s: select(rule, pool, target, k=k,
  noise_std=s).indices))(grid)`` over noise_std = 10^(-1 .. 3, step 1/2): one
  compiled call per rule (the picks are deterministic; only training varies by seed).
* random (per seed) as the reference.

Each grid point's picks are labeled and the CNN's head is fine-tuned on them as in
Study A (Adam, Study A's step size, epochs and batch size; training key from the seed);
reported are the accuracy on the target examples, the test accuracy on all classes and
the share of picks from the target classes, mean and 95% t-interval over seeds.

    python -m experiments.study_hparams            # 5 seeds
    python -m experiments.study_hparams --seeds 10 --k 30
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from experiments.common import RESULTS as _RESULTS, ci
from experiments.study_a import DEFAULT_CLASSES, DEFAULT_LR, Config, setting_digits

RESULTS = _RESULTS / "hparams"

TEMPERATURES = tuple(0.07 * 2.0 ** np.arange(-3, 5))        # 0.00875 .. 1.12, holds 0.07
NOISE_STDS = tuple(10.0 ** np.arange(-1.0, 3.01, 0.5))       # 0.1 .. 1000, holds 1.0


def _timed(fn):
    import jax

    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t


def run(seeds: int = 5, k: int = 50, progress: bool = True) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    import activeft_jax as aft
    from activeft_jax.training import (create_train_state, evaluate, fit, make_eval_step,
                                       make_train_step)

    t0 = time.perf_counter()
    pre, tgt = DEFAULT_CLASSES["digits"]
    cfg = Config(setting="digits", pretrain_classes=pre, target_classes=tgt)
    st = setting_digits(cfg)
    model, params, x, y, xt, yt = (st[n] for n in ("model", "params", "x", "y", "xt", "yt"))
    in_target_test = np.isin(yt, tgt)
    pool = aft.embeddings.last_layer(model, params, x)
    target = aft.embeddings.last_layer(model, params, xt[in_target_test])
    t_setup = time.perf_counter() - t0
    print(f"setup (pretraining, embeddings {pool.shape}, target {target.shape}): "
          f"{t_setup:.1f} s", file=sys.stderr)

    # ---- selection: one compiled call per grid ----
    keys = jax.vmap(jax.random.key)(jnp.arange(seeds))
    sweep, t_aft = _timed(lambda: aft.selection.activeft_sweep(
        pool, k=k, temperatures=jnp.asarray(TEMPERATURES, jnp.float32), keys=keys))
    aft_idx = np.asarray(sweep.selection.indices)                      # [T, S, k]
    aft_loss = np.asarray(sweep.losses)                                # [T, S, steps]
    # the sweep at the default τ against one plain select() call with the same key
    j0 = int(np.argmin(np.abs(np.asarray(TEMPERATURES) - 0.07)))
    single = np.asarray(aft.select("activeft", pool, k=k, key=jax.random.key(0)).indices)
    same_as_select = bool(np.array_equal(single, aft_idx[j0, 0]))

    noise = jnp.asarray(NOISE_STDS, jnp.float32)
    gp_idx, t_gp = {}, {}
    for rule in ("itl", "vtl"):
        # pool and target enter as arguments: closed over as constants, select()'s NaN check
        # would run on concrete arrays inside the jit trace and raise TracerBoolConversionError.
        f = jax.jit(jax.vmap(lambda s, p, t, rule=rule: aft.select(rule, p, t, k=k,
                                                                    noise_std=s).indices,
                             in_axes=(0, None, None)))
        out, t_gp[rule] = _timed(lambda f=f: f(noise, pool, target))
        gp_idx[rule] = np.asarray(out)                                # [G, k]
    rnd_idx = np.stack([np.asarray(aft.select("random", pool, k=k, key=jax.random.key(s)).indices)
                        for s in range(seeds)])
    print(f"selection: activeft sweep {len(TEMPERATURES)}x{seeds} in {t_aft:.1f} s (same picks "
          f"as select() at tau=0.07, seed 0: {same_as_select}); itl {len(NOISE_STDS)} noise levels "
          f"in {t_gp['itl']:.1f} s, vtl in {t_gp['vtl']:.1f} s", file=sys.stderr)

    # ---- downstream: fine-tune the head on each grid point's picks (as Study A) ----
    tx = optax.adam(cfg.learning_rate or DEFAULT_LR["digits"])
    train_step, eval_step = make_train_step(model.apply, tx), make_eval_step(model.apply)
    in_target_pool = np.isin(y, tgt)

    def downstream(idx: np.ndarray, seed: int) -> tuple:
        state = create_train_state(params, tx, trainable="head")
        state, _ = fit(train_step, state, x[idx], y[idx], epochs=cfg.epochs,
                       batch_size=cfg.batch_size, key=jax.random.fold_in(jax.random.key(seed), 1))
        p = state.full_params()
        return (float(evaluate(eval_step, p, xt[in_target_test], yt[in_target_test])["accuracy"]),
                float(evaluate(eval_step, p, xt, yt)["accuracy"]),
                float(in_target_pool[idx].mean()), float(len(np.unique(y[idx]))))

    t1 = time.perf_counter()
    metrics = ("target_accuracy", "test_accuracy", "target_share", "classes_covered")
    res = {"activeft": np.zeros((len(TEMPERATURES), seeds, 4)),
           "itl": np.zeros((len(NOISE_STDS), seeds, 4)),
           "vtl": np.zeros((len(NOISE_STDS), seeds, 4)),
           "random": np.zeros((seeds, 4))}
    for s in range(seeds):
        res["random"][s] = downstream(rnd_idx[s], s)
        for j in range(len(TEMPERATURES)):
            res["activeft"][j, s] = downstream(aft_idx[j, s], s)
        for rule in ("itl", "vtl"):
            for j in range(len(NOISE_STDS)):
                res[rule][j, s] = downstream(gp_idx[rule][j], s)
        if progress:
            print(f"seed {s}: trained {len(TEMPERATURES) + 2 * len(NOISE_STDS) + 1} heads "
                  f"({time.perf_counter() - t1:.1f} s)", file=sys.stderr)
    t_train = time.perf_counter() - t1

    def unpack(a):  # [..., seeds, 4] -> {metric: [..., seeds]}
        return {m: a[..., i].tolist() for i, m in enumerate(metrics)}

    return {
        "setting": "study A digits: CNN pretrained on classes 0-4, last-layer embeddings",
        "k": k, "seeds": seeds, "pretrain_classes": list(pre), "target_classes": list(tgt),
        "study_a_config": {"epochs": cfg.epochs, "batch_size": cfg.batch_size,
                           "learning_rate": cfg.learning_rate or DEFAULT_LR["digits"]},
        "target_share_in_pool": float(in_target_pool.mean()),
        "temperatures": list(TEMPERATURES), "noise_stds": list(NOISE_STDS),
        "activeft": {**unpack(res["activeft"]), "indices": aft_idx.tolist(),
                     "final_loss": aft_loss[:, :, -1].tolist(),
                     "sweep_equals_select_at_default": same_as_select},
        "itl": {**unpack(res["itl"]), "indices": gp_idx["itl"].tolist()},
        "vtl": {**unpack(res["vtl"]), "indices": gp_idx["vtl"].tolist()},
        "random": {**unpack(res["random"]), "indices": rnd_idx.tolist()},
        "seconds": {"setup": t_setup, "activeft_sweep": t_aft, "itl_sweep": t_gp["itl"],
                    "vtl_sweep": t_gp["vtl"], "training": t_train,
                    "total": time.perf_counter() - t0},
    }


def _cell(a) -> str:
    m, h = ci(np.asarray(a)[:, None])
    return f"{m[0]:.3f} ± {h[0]:.3f}"


def table(r: dict) -> str:
    rnd = r["random"]
    lines = ["ActiveFT, temperature τ (selection and training seed vary):", "",
             "| τ | target acc | test acc (all classes) | share from target classes "
             "| classes covered | final loss |",
             "|---:|---:|---:|---:|---:|---:|"]
    for j, t in enumerate(r["temperatures"]):
        a = r["activeft"]
        mark = " (default)" if abs(t - 0.07) < 1e-9 else ""
        lines.append(f"| {t:.4g}{mark} | {_cell(a['target_accuracy'][j])} | "
                     f"{_cell(a['test_accuracy'][j])} | {_cell(a['target_share'][j])} | "
                     f"{np.mean(a['classes_covered'][j]):.1f} | "
                     f"{np.mean(a['final_loss'][j]):.3f} |")
    lines.append(f"| random | {_cell(rnd['target_accuracy'])} | {_cell(rnd['test_accuracy'])} | "
                 f"{_cell(rnd['target_share'])} | {np.mean(rnd['classes_covered']):.1f} | |")
    lines += ["", "ITL and VTL, noise_std (deterministic picks: only the training seed varies):",
              "",
              "| noise_std | ITL target acc | ITL share | VTL target acc | VTL share |",
              "|---:|---:|---:|---:|---:|"]
    for j, s in enumerate(r["noise_stds"]):
        i, v = r["itl"], r["vtl"]
        mark = " (Study A)" if abs(s - 1.0) < 1e-9 else ""
        lines.append(f"| {s:.3g}{mark} | {_cell(i['target_accuracy'][j])} | "
                     f"{np.mean(i['target_share'][j]):.2f} | {_cell(v['target_accuracy'][j])} | "
                     f"{np.mean(v['target_share'][j]):.2f} |")
    lines.append(f"| random | {_cell(rnd['target_accuracy'])} | {np.mean(rnd['target_share']):.2f} "
                 f"| | |")
    c = r["study_a_config"]
    sec = r["seconds"]
    lines += ["", (
        f"Study A's digits setting, one-shot selection of k = {r['k']} from the train split "
        f"(N = 1423, all ten classes; {r['target_share_in_pool']:.0%} in the target classes "
        f"{r['target_classes']}), then the pretrained CNN's head fine-tuned on the picks (Adam "
        f"{c['learning_rate']:g}, {c['epochs']} epochs, batch {c['batch_size']}). target acc: on "
        f"the "
        f"test examples of the target classes; test acc: on the whole test split. Mean ± 95% "
        f"t-interval over {r['seeds']} seeds. Selection in one compiled call per grid: ActiveFT "
        f"{len(r['temperatures'])} τ × {r['seeds']} seeds {sec['activeft_sweep']:.1f} s, ITL "
        f"{len(r['noise_stds'])} noise levels {sec['itl_sweep']:.1f} s, VTL "
        f"{sec['vtl_sweep']:.1f} s (with compilation).")]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))

    def band(ax, xs, a, label, **kw):
        m, h = ci(np.asarray(a).T)   # [grid, seeds] -> over seeds
        line, = ax.plot(xs, m, marker="o", ms=3, label=label, **kw)
        ax.fill_between(xs, m - h, m + h, color=line.get_color(), alpha=0.15)

    def random_band(ax, a, label, color="gray"):
        m, h = ci(np.asarray(a)[:, None])
        ax.axhspan(m[0] - h[0], m[0] + h[0], color=color, alpha=0.1)
        ax.axhline(m[0], color=color, ls="--", lw=1, label=label)

    t, s = r["temperatures"], r["noise_stds"]
    band(axes[0], t, r["activeft"]["target_accuracy"], "target acc")
    band(axes[0], t, r["activeft"]["test_accuracy"], "test acc (all classes)")
    random_band(axes[0], r["random"]["target_accuracy"], "random: target acc", "C0")
    random_band(axes[0], r["random"]["test_accuracy"], "random: test acc", "C1")
    axes[0].axvline(0.07, color="k", ls=":", lw=1)
    axes[0].set_xlabel("ActiveFT temperature τ (dotted: default 0.07)")
    axes[0].set_ylabel("accuracy")
    for rule in ("itl", "vtl"):
        band(axes[1], s, r[rule]["target_accuracy"], rule.upper())
        band(axes[2], s, r[rule]["target_share"], rule.upper())
    random_band(axes[1], r["random"]["target_accuracy"], "random")
    axes[1].set_ylabel("accuracy on the target examples")
    axes[2].axhline(r["target_share_in_pool"], color="gray", ls=":", lw=1,
                    label="share in the pool")
    axes[2].set_ylabel("share of picks from the target classes")
    for ax in axes[1:]:
        ax.axvline(1.0, color="k", ls=":", lw=1)
        ax.set_xlabel("noise_std (dotted: Study A's 1.0)")
    for ax in axes:
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Hyperparameters, Study A's digits setting, k = {r['k']} one-shot (mean, 95% CI "
                 f"over {r['seeds']} seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run(args.seeds, args.k)
    (out / "hparams.json").write_text(json.dumps(result, indent=1))
    md = table(result)
    (out / "hparams.md").write_text(md + "\n")
    plot(result, out / "hparams.png")
    print(md)
    print(f"\nwrote {out / 'hparams.md'}, {out / 'hparams.png'} "
          f"({result['seconds']['total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
