"""Study B: pick a labeling budget from an unlabeled pool (ActiveFT's setting, Xie et al. 2023).

No target and no labels: each strategy picks about 1%, 2% and 5% of the pool once, from
pretrained features; the picks' labels are revealed; a linear head is trained from
scratch on the picked features; reported is its accuracy on the test split (all
classes), mean and 95% t-interval over seeds (seed s: selection key `key(s)`, head
init and batch order from `fold_in(key(s), ·)`). Settings:

* ``bbc``: BBC News, frozen all-MiniLM-L6-v2 sentence embeddings (the cache Study A
  writes, experiments/results/cache/bbc_news_minilm.npz; with ``--out X``,
  X/cache/, or ``--cache-dir``), 5 classes.
* ``digits``: sklearn digits, the 64-d penultimate features of Study A's CNN, which was
  trained *with labels* on the train-split images of classes 0-4 only (a backbone from
  a related task, not a self-supervised one), 10 classes.
* ``digits_pixels`` (not in the default run): the same digits, raw pixels / 16.

ProbCover runs twice: with its default δ = 0.6 (``probcover``) and with δ from the
ProbCover paper's purity heuristic (``probcover_purity``: the largest δ for which 95%
of the δ-balls are pure w.r.t. k-means pseudo-labels with K = number of classes).

    python -m experiments.study_b                         # bbc and digits, 5 seeds
    python -m experiments.study_b --setting digits --seeds 10 --strategies activeft,random
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from experiments.common import (CACHE, RESULTS as _RESULTS, OneLineParser, check_fields, ci,
                                output_dirs, read_config, save_figure, write_text)

RESULTS = _RESULTS / "study_b"

STRATEGIES = ("activeft", "random", "kmeans", "kmeans_pp", "maxdist", "typiclust",
              "probcover", "probcover_purity")
DEFAULT_SETTINGS = ("bbc", "digits")
# Adam's step size for the linear head (Study A's choices for the same features).
DEFAULT_LR = {"bbc": 1e-1, "digits": 1e-2, "digits_pixels": 1e-2}


@dataclasses.dataclass(frozen=True)
class Config:
    setting: str = "digits"
    strategies: tuple = STRATEGIES
    seeds: int = 5
    budgets: tuple = (0.01, 0.02, 0.05)   # fractions of the pool
    steps: int = 200                      # full-batch Adam steps on the picked examples
    learning_rate: float = 0.0            # 0: the setting's default (DEFAULT_LR)
    delta: float = 0.6                    # probcover's default radius
    purity: float = 0.95                  # probcover_purity's target purity
    full_steps: int = 1000                # the all-labels reference also gets this many steps


# ----------------------------------------------------------------------------------------------
# settings: pool features x [N, d], labels y, test features xt, yt


def setting_bbc(cache_dir: Optional[Path] = None) -> dict:
    """Frozen MiniLM embeddings of BBC News, computed and cached exactly as Study A does."""
    from activeft_jax.data import load
    from activeft_jax.embeddings import cached_embeddings
    from activeft_jax.models import load_minilm

    train, test = load("bbc_news", "train"), load("bbc_news", "test")
    texts = [str(t) for t in train.text] + [str(t) for t in test.text]
    encoder = load_minilm()
    cache_dir = CACHE if cache_dir is None else Path(cache_dir)
    emb = cached_embeddings(cache_dir / "bbc_news_minilm.npz",
                            lambda: encoder.encode(texts, progress=True), inputs=texts,
                            model=encoder.name, fingerprint=encoder.fingerprint,
                            options={"normalize": True}, verbose=True)
    n = len(train.text)
    return dict(x=np.asarray(emb[:n]), y=np.asarray(train.y), xt=np.asarray(emb[n:]),
                yt=np.asarray(test.y), names=list(train.class_names),
                what="BBC News, frozen all-MiniLM-L6-v2 embeddings (384-d, unit norm)")


def setting_digits(cache_dir: Optional[Path] = None) -> dict:
    """Penultimate features of Study A's CNN (pretrained with labels on classes 0-4)."""
    from experiments.study_a import Config as ConfigA
    from experiments.study_a import DEFAULT_CLASSES
    from experiments.study_a import setting_digits as study_a_digits

    from activeft_jax.embeddings import last_layer

    pre, tgt = DEFAULT_CLASSES["digits"]
    st = study_a_digits(ConfigA(setting="digits", pretrain_classes=pre, target_classes=tgt))
    x = np.asarray(last_layer(st["model"], st["params"], st["x"]))
    xt = np.asarray(last_layer(st["model"], st["params"], st["xt"]))
    return dict(x=x, y=np.asarray(st["y"]), xt=xt, yt=np.asarray(st["yt"]), names=st["names"],
                what=(f"sklearn digits, 64-d penultimate features of Study A's CNN, trained with "
                      f"labels on the train-split images of classes {list(pre)} only"))


def setting_digits_pixels(cache_dir: Optional[Path] = None) -> dict:
    """Raw pixels / 16 (no pretraining at all)."""
    from activeft_jax.data import load

    train, test = load("digits", "train"), load("digits", "test")
    flat = lambda a: np.asarray(a, np.float32).reshape(len(a), -1) / 16.0  # noqa: E731
    return dict(x=flat(train.x), y=np.asarray(train.y), xt=flat(test.x), yt=np.asarray(test.y),
                names=list(train.class_names), what="sklearn digits, raw pixels / 16 (64-d)")


SETTINGS = {"bbc": setting_bbc, "digits": setting_digits, "digits_pixels": setting_digits_pixels}


# ----------------------------------------------------------------------------------------------
# ProbCover's δ by purity (Yehuda et al. 2022, §4.2)


def purity_delta(x: np.ndarray, n_clusters: int, purity: float = 0.95, seed: int = 0) -> tuple:
    """The largest δ whose balls are `purity`-pure w.r.t. k-means pseudo-labels.

    On L2-normalized features (as probcover's default): pseudo-labels from k-means with
    K = `n_clusters`; the ball ‖x − y‖ < δ around x is pure iff no point with another
    pseudo-label lies in it, i.e. iff δ ≤ d_x, the distance from x to its nearest
    point of another cluster. Purity(δ) = share of points with d_x ≥ δ, so the
    answer is the order statistic of d_x at rank ⌊(1 − purity)·N⌋.

    Returns:
      (δ, the purity reached at δ).
    """
    from sklearn.cluster import KMeans

    f = x / np.linalg.norm(x, axis=1, keepdims=True)
    labels = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(f)
    d = np.sqrt(np.maximum(2.0 - 2.0 * (f @ f.T), 0.0))
    other = np.where(labels[:, None] != labels[None, :], d, np.inf).min(axis=1)
    s = np.sort(other)
    delta = float(s[int(math.floor((1.0 - purity) * len(s)))])
    return delta, float(np.mean(other >= delta))


# ----------------------------------------------------------------------------------------------
# one run


def _select(strategy: str, x, k: int, seed: int, delta: float):
    """(indices, values) of one selection; the strategies' defaults except probcover's δ."""
    import jax

    import activeft_jax as aft

    name, opts = strategy, {}
    if strategy in ("probcover", "probcover_purity"):
        name, opts = "probcover", {"delta": delta}
    sel = aft.select(name, x, k=k, key=jax.random.key(seed), **opts)
    return np.asarray(sel.indices), np.asarray(sel.values)


class _Head:
    """A linear head nn.Dense(C) trained from scratch: full-batch Adam, fixed steps."""

    def __init__(self, num_classes: int, lr: float, steps: int, batch_size: int):
        import flax.linen as nn
        import optax

        from activeft_jax.training import make_eval_step, make_train_step

        self.model = nn.Dense(num_classes)
        self.tx = optax.adam(lr)
        self.train_step = make_train_step(self.model.apply, self.tx)
        self.eval_step = make_eval_step(self.model.apply)
        self.steps, self.batch_size = steps, batch_size

    def accuracy(self, x, y, xt, yt, seed: int) -> float:
        """Test accuracy of a head trained on (x, y); deterministic given `seed`."""
        import jax

        from activeft_jax.training import create_train_state, evaluate, fit

        key = jax.random.key(seed)
        params = self.model.init(jax.random.fold_in(key, 2), x[:1])
        state = create_train_state(params, self.tx, trainable="all")
        # batch_size >= len(x): each epoch is one (padded) full batch, so epochs = steps.
        state, _ = fit(self.train_step, state, x, y, epochs=self.steps,
                       batch_size=max(self.batch_size, len(x)), key=jax.random.fold_in(key, 1))
        return float(evaluate(self.eval_step, state.full_params(), xt, yt)["accuracy"])


def run(cfg: Config, progress: bool = True, cache_dir: Optional[Path] = None) -> dict:
    t0 = time.perf_counter()
    st = SETTINGS[cfg.setting](cache_dir=cache_dir)
    x, y, xt, yt = (st[k] for k in ("x", "y", "xt", "yt"))
    n, c = len(x), len(st["names"])
    budgets = [max(1, int(round(f * n))) for f in cfg.budgets]
    head = _Head(c, cfg.learning_rate or DEFAULT_LR[cfg.setting], cfg.steps,
                 batch_size=int(2 ** math.ceil(math.log2(max(budgets)))))
    t_setup = time.perf_counter() - t0
    print(f"{cfg.setting}: pool {x.shape}, test {xt.shape}, budgets {budgets} "
          f"({t_setup:.1f} s)", file=sys.stderr)

    deltas = {"probcover": (cfg.delta, None)}
    if "probcover_purity" in cfg.strategies:
        deltas["probcover_purity"] = purity_delta(x, c, cfg.purity)
        print(f"probcover_purity: delta = {deltas['probcover_purity'][0]:.4f} "
              f"(purity {deltas['probcover_purity'][1]:.3f})", file=sys.stderr)

    # the reference: every pool label revealed, same head and protocol
    tf = time.perf_counter()
    # (with all N examples `steps` full-batch steps may underfit; hence also `full_steps`)
    full = {str(steps): [_Head(c, cfg.learning_rate or DEFAULT_LR[cfg.setting], steps, n)
                         .accuracy(x, y, xt, yt, seed) for seed in range(cfg.seeds)]
            for steps in sorted({cfg.steps, cfg.full_steps})}
    t_full = time.perf_counter() - tf

    runs = {}
    total, done = len(cfg.strategies) * cfg.seeds, 0
    for strategy in cfg.strategies:
        delta = deltas.get(strategy, (None, None))[0]
        shape = (cfg.seeds, len(budgets))
        acc, covered = np.zeros(shape), np.zeros(shape)
        coverage = np.full(shape, np.nan)
        sel_s, train_s = np.zeros(shape), np.zeros(shape)
        picks = []
        for seed in range(cfg.seeds):
            picks.append([])
            for j, b in enumerate(budgets):
                ts = time.perf_counter()
                idx, val = _select(strategy, x, b, seed, delta)
                sel_s[seed, j] = time.perf_counter() - ts
                assert len(set(idx.tolist())) == b, (strategy, b, "repeated picks")
                if strategy.startswith("probcover"):  # values: points newly covered by each pick
                    coverage[seed, j] = float(val.sum()) / n
                covered[seed, j] = len(np.unique(y[idx]))
                tt = time.perf_counter()
                acc[seed, j] = head.accuracy(x[idx], y[idx], xt, yt, seed)
                train_s[seed, j] = time.perf_counter() - tt
                picks[-1].append(idx.tolist())
            done += 1
            if progress:
                print(f"[{done}/{total}] {strategy} seed {seed}: accuracy "
                      + ", ".join(f"{a:.3f}" for a in acc[seed])
                      + f" (select {sel_s[seed].sum():.1f} s, train {train_s[seed].sum():.1f} s)",
                      file=sys.stderr)
        runs[strategy] = {"accuracy": acc.tolist(), "classes_covered": covered.tolist(),
                          "select_seconds": sel_s.tolist(), "train_seconds": train_s.tolist(),
                          "indices": picks}
        if strategy.startswith("probcover"):
            runs[strategy]["delta"] = delta
            runs[strategy]["coverage"] = coverage.tolist()
            if deltas[strategy][1] is not None:
                runs[strategy]["purity"] = deltas[strategy][1]
    return {"config": dataclasses.asdict(cfg), "what": st["what"], "class_names": st["names"],
            "pool_size": n, "test_size": len(xt), "budgets": budgets,
            "full_pool_accuracy": full, "runs": runs,
            "seconds": time.perf_counter() - t0,
            "seconds_setup": t_setup, "seconds_full_pool": t_full}


# ----------------------------------------------------------------------------------------------
# report


def _order(result: dict) -> list:
    """Strategies, best first by the mean accuracy over all budgets."""
    return sorted(result["runs"], key=lambda s: -float(np.mean(result["runs"][s]["accuracy"])))


def table(result: dict) -> str:
    cfg, budgets, n = result["config"], result["budgets"], result["pool_size"]
    cols = [f"B = {b} ({f:.0%})" for b, f in zip(budgets, cfg["budgets"])]
    lines = ["| strategy | " + " | ".join(cols) + " | mean |", "|---|" + "---:|" * (len(cols) + 1)]
    for s in _order(result):
        m, h = ci(result["runs"][s]["accuracy"])
        cells = [f"{m[j]:.3f} ± {h[j]:.3f}" for j in range(len(budgets))]
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {float(np.mean(m)):.3f} |")
    full = ", ".join(f"{np.mean(a):.3f} ± {ci(np.asarray(a)[:, None])[1][0]:.3f} "
                     f"({steps} steps)" for steps, a in result["full_pool_accuracy"].items())
    lines += ["", (
        f"Test accuracy (n = {result['test_size']}, all {len(result['class_names'])} classes) of a "
        f"linear head trained from scratch on the B picked pool examples ({cfg['steps']} "
        f"full-batch Adam steps, lr {cfg['learning_rate'] or DEFAULT_LR[cfg['setting']]:g}). "
        f"Features: {result['what']}; pool N = {n}. Mean ± 95% t-interval over "
        f"{cfg['seeds']} seeds (selection and training seed both vary); best first by the "
        f"mean over the budgets. Same head on every pool label: {full}.")]
    if "random" in result["runs"]:
        lines += ["", "Δ accuracy against random, paired by seed (same head init, batch order):",
                  "", "| strategy | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        r = np.asarray(result["runs"]["random"]["accuracy"])
        for s in _order(result):
            if s == "random":
                continue
            m, h = ci(np.asarray(result["runs"][s]["accuracy"]) - r)
            lines.append(f"| {s} | " + " | ".join(f"{m[j]:+.3f} ± {h[j]:.3f}"
                                                  for j in range(len(budgets))) + " |")
    lines += ["", "Classes covered by the picks (mean over seeds), and selection time (mean s per "
              "call, first call of each budget compiles):", "",
              "| strategy | " + " | ".join(cols) + " | select s |",
              "|---|" + "---:|" * (len(cols) + 1)]
    for s in _order(result):
        r = result["runs"][s]
        cov = np.mean(r["classes_covered"], axis=0)
        lines.append(f"| {s} | " + " | ".join(f"{v:.1f}" for v in cov)
                     + f" | {float(np.mean(r['select_seconds'])):.2f} |")
    pc = [s for s in result["runs"] if s.startswith("probcover")]
    if pc:
        lines += ["", "ProbCover (deterministic: the same picks for every seed; only the head's "
                  "seed varies). Share of the pool covered by the picks' δ-balls:", "",
                  "| strategy | δ | " + " | ".join(cols) + " |",
                  "|---|---:|" + "---:|" * len(cols)]
        for s in pc:
            r = result["runs"][s]
            cov = np.nanmean(r["coverage"], axis=0)
            note = f" (purity {r['purity']:.3f})" if "purity" in r else ""
            lines.append(f"| {s} | {r['delta']:.3f}{note} | "
                         + " | ".join(f"{v:.1%}" for v in cov) + " |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = np.asarray(result["budgets"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in _order(result):
        r = result["runs"][s]
        for ax, key in zip(axes, ("accuracy", "classes_covered")):
            m, h = ci(r[key])
            line, = ax.plot(budgets, m, marker="o", ms=3, label=s,
                            lw=2.2 if s in ("activeft", "random") else 1.2)
            ax.fill_between(budgets, m - h, m + h, color=line.get_color(), alpha=0.15)
    steps, a = max(result["full_pool_accuracy"].items(), key=lambda kv: int(kv[0]))
    axes[0].axhline(float(np.mean(a)), color="gray", ls=":", lw=1,
                    label=f"all {result['pool_size']} labels ({steps} steps)")
    axes[0].set_ylabel("test accuracy (all classes)")
    axes[1].set_ylabel("classes covered by the picks")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(budgets)
        ax.set_xticklabels([f"{b}\n({f:.0%})"
                            for b, f in zip(budgets, result["config"]["budgets"])])
        ax.minorticks_off()
        ax.set_xlabel("labels revealed (budget B, share of the pool)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle(f"Study B ({result['config']['setting']}): one-shot selection without labels, "
                 f"linear head (mean, 95% CI over {result['config']['seeds']} seeds)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def _SPEC() -> dict:
    from activeft_jax.validation import NumberRange

    count = ("int", NumberRange(integer=True, low=1))
    return {"strategies": "strs", "seeds": count,
            "budgets": ("floats", NumberRange(low=0, high=1, low_open=True)),  # of the pool
            "steps": count, "learning_rate": ("float", NumberRange(low=0)),  # 0: the default
            "delta": ("float", NumberRange(low=0, low_open=True)),
            "purity": ("float", NumberRange(low=0, high=1, low_open=True)),
            "full_steps": count}


def main(argv=None) -> int:
    p = OneLineParser(prog="study B", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="JSON file with Config fields (setting may be a list); "
                   "flags given explicitly win")
    p.add_argument("--setting", help=f"comma-separated, of {sorted(SETTINGS)} "
                   f"(default: {','.join(DEFAULT_SETTINGS)})")
    p.add_argument("--strategies", help="comma-separated strategy names")
    p.add_argument("--seeds", type=int)
    p.add_argument("--budgets", help="fractions of the pool, comma-separated (default: "
                   + ",".join(str(b) for b in Config.budgets) + ")")
    p.add_argument("--steps", type=int)
    p.add_argument("--out", default=None, help=f"results folder (default {RESULTS})")
    p.add_argument("--cache-dir", default=None,
                   help="embedding cache folder (default: <out>/cache with --out, else "
                   "experiments/results/cache)")
    args = p.parse_args(argv)
    try:
        values = read_config(args.config, Config)
    except ValueError as e:
        p.error(str(e))
    settings = values.pop("setting", list(DEFAULT_SETTINGS))
    if isinstance(settings, str):
        settings = [settings]
    elif not isinstance(settings, list) or not all(isinstance(x, str) for x in settings):
        p.error(f"setting must be a string or a list of strings, of {sorted(SETTINGS)}; "
                f"got {settings!r}")
    if args.setting is not None:
        settings = [s for s in args.setting.split(",") if s]
    if args.strategies is not None:
        values["strategies"] = [s for s in args.strategies.split(",") if s]
    if args.budgets is not None:
        try:
            values["budgets"] = [float(b) for b in args.budgets.split(",") if b]
        except ValueError:
            p.error(f"--budgets must be comma-separated fractions; got {args.budgets!r}")
    for name in ("seeds", "steps"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    # every check before any work, one line each
    bad = [s for s in settings if s not in SETTINGS]
    if bad or not settings:
        p.error(f"unknown setting(s) {bad}; choose from {sorted(SETTINGS)}")
    from activeft_jax.selection import STRATEGIES as KNOWN

    base = Config(**values)
    try:
        check_fields(base, _SPEC())
    except ValueError as e:
        p.error(str(e))
    unknown = [s for s in base.strategies if s not in KNOWN and s != "probcover_purity"]
    if unknown or not base.strategies:
        p.error(f"unknown strategies {unknown}; choose from {', '.join(KNOWN)}, probcover_purity")
    try:
        out_root, cache = output_dirs(args.out, args.cache_dir, RESULTS)
    except ValueError as e:
        p.error(str(e))
    t0 = time.perf_counter()
    mds = []
    for setting in settings:
        cfg = dataclasses.replace(base, setting=setting)
        out = out_root / setting
        out.mkdir(parents=True, exist_ok=True)
        result = run(cfg, cache_dir=cache)
        write_text(out / "study_b.json", json.dumps(result, indent=1))
        md = table(result)
        write_text(out / "study_b.md", md + "\n")
        plot(result, out / "study_b.png")
        mds.append((setting, out, md, result["seconds"]))
    for setting, out, md, secs in mds:
        print(f"\n## {setting}\n\n{md}\n\nwrote {out / 'study_b.md'}, {out / 'study_b.png'} "
              f"({secs:.0f} s)")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
