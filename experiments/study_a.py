"""Study A: fine-tune toward a target (the ITL paper's CIFAR-100 setting, in miniature).

A small Flax CNN is pretrained on the digits of classes 0-4 (train split). The target
is the test examples of a few other classes; the pool is the whole train split (all
ten classes, labels hidden until picked). Each strategy runs `active_finetune`:
rounds of select -> reveal labels -> fine-tune the head -> evaluate on the target,
checkpointed every round (rerun the same command after a crash: it resumes).
Reported: accuracy on the target examples and the share of picks from the target
classes, mean and 95% confidence interval over seeds, per round; a markdown table
and learning curves with bands.

    python -m experiments.study_a                      # default configuration
    python -m experiments.study_a --seeds 10 --rounds 8 --strategies itl,vtl,random

Writes under `--out` (default experiments/results/study_a/<setting>/); the bbc setting's
embedding cache goes to `--cache-dir` (default: experiments/results/cache/ without
`--out`, <out>/cache/ with it), nowhere else. Every field of the configuration is checked
by type and range before any work; a bad one is one line on stderr and exit status 2.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from experiments.common import (CACHE, RESULTS as _RESULTS, OneLineParser, check_fields, ci,
                                output_dirs, read_config, save_figure, write_text)

RESULTS = _RESULTS / "study_a"

STRATEGIES = ("itl", "vtl", "ctl", "cosine", "uncertainty", "maxdist", "kmeans_pp",
              "activeft", "random")
GP_RULES = ("itl", "vtl", "ctl", "mmitl", "undirected_itl", "undirected_vtl")


@dataclasses.dataclass(frozen=True)
class Config:
    setting: str = "digits"            # "digits" (CNN) or "bbc" (frozen MiniLM + linear head)
    strategies: tuple = STRATEGIES
    seeds: int = 5
    rounds: int = 5
    k: int = 10                          # picks per round
    pretrain_classes: tuple = (0, 1, 2, 3, 4)
    target_classes: tuple = (5, 7, 9)
    noise_std: float = 1.0
    epochs: int = 20
    batch_size: int = 16
    learning_rate: float = 0.0           # 0: the setting's default (digits 1e-2, bbc 1e-1)
    pretrain_epochs: int = 30


def _cnn():
    import flax.linen as nn

    class CNN(nn.Module):
        """Two 3x3 convolutions and two dense layers for 8x8 digits."""

        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(16, (3, 3))(x))
            x = nn.relu(nn.Conv(32, (3, 3))(x))
            x = x.reshape(x.shape[0], -1)
            x = nn.relu(nn.Dense(64)(x))
            return nn.Dense(10)(x)

    return CNN()


def _pretrain(cfg: Config, model, variables, x, y, lr: float):
    """`model` trained on the pretraining classes only (all layers), deterministic."""
    import jax
    import optax

    from activeft_jax.training import create_train_state, fit, make_train_step

    keep = np.isin(y, cfg.pretrain_classes)
    tx = optax.adam(lr)
    state = create_train_state(variables, tx, trainable="all")
    state, _ = fit(make_train_step(model.apply, tx), state, x[keep], y[keep],
                   epochs=cfg.pretrain_epochs, batch_size=32, key=jax.random.key(1))
    return state.full_params()


def setting_digits(cfg: Config, cache_dir: Optional[Path] = None) -> dict:
    """sklearn digits as 8x8x1 images in [0, 1]; a small CNN."""
    import jax

    from activeft_jax.data import load

    train, test = load("digits", "train"), load("digits", "test")
    x, xt = train.x.astype(np.float32) / 16.0, test.x.astype(np.float32) / 16.0
    model = _cnn()
    params = _pretrain(cfg, model, model.init(jax.random.key(0), x[:1]), x, train.y, 1e-3)
    return dict(model=model, params=params, x=x, y=train.y, xt=xt, yt=test.y,
                names=list(train.class_names), what="a digits CNN (2 conv + 2 dense layers)")


def setting_bbc(cfg: Config, cache_dir: Optional[Path] = None) -> dict:
    """BBC News articles embedded once by frozen all-MiniLM-L6-v2 (cached); a linear head."""
    import flax.linen as nn
    import jax

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
    x, xt = emb[:len(train.text)], emb[len(train.text):]
    model = nn.Dense(len(train.class_names))
    params = _pretrain(cfg, model, model.init(jax.random.key(0), x[:1]), x, train.y, 1e-2)
    return dict(model=model, params=params, x=x, y=train.y, xt=xt, yt=test.y,
                names=list(train.class_names), what="frozen MiniLM + a linear head")


SETTINGS = {"digits": setting_digits, "bbc": setting_bbc}
DEFAULT_CLASSES = {"digits": ((0, 1, 2, 3, 4), (5, 7, 9)), "bbc": ((0, 1), (2, 3, 4))}
# Classes of each setting.
NUM_CLASSES = {"digits": 10, "bbc": 5}
# Training examples (the pool) of each setting's train split (activeft_jax.data).
POOL_SIZE = {"digits": 1423, "bbc": 1794}
# Adam's step size for the head: MiniLM's unit-norm inputs need larger steps than the CNN's.
DEFAULT_LR = {"digits": 1e-2, "bbc": 1e-1}


def run(cfg: Config, out_dir: Path = RESULTS, progress: bool = True,
        cache_dir: Optional[Path] = None) -> dict:
    import optax

    from activeft_jax.training import active_finetune, evaluate, make_eval_step

    t0 = time.perf_counter()
    st = SETTINGS[cfg.setting](cfg, cache_dir=cache_dir)
    model, params, x, y, xt, yt = (st[k] for k in ("model", "params", "x", "y", "xt", "yt"))
    target = np.isin(yt, cfg.target_classes)
    held = np.isin(yt, cfg.pretrain_classes)
    ev = make_eval_step(model.apply)
    base = {
        "pretrain_classes_test_accuracy": float(evaluate(ev, params, xt[held], yt[held])["accuracy"]),
        "target_accuracy": float(evaluate(ev, params, xt[target], yt[target])["accuracy"]),
    }
    print(f"{cfg.setting}: pretrained on {[st['names'][c] for c in cfg.pretrain_classes]}: test "
          f"accuracy on them {base['pretrain_classes_test_accuracy']:.3f}, on the target classes "
          f"{base['target_accuracy']:.3f} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)

    in_target = np.isin(y, cfg.target_classes)
    runs = {}
    total = len(cfg.strategies) * cfg.seeds
    done = 0
    for strategy in cfg.strategies:
        acc = np.zeros((cfg.seeds, cfg.rounds))
        share = np.zeros((cfg.seeds, cfg.rounds))
        for seed in range(cfg.seeds):
            kwargs = {"noise_std": cfg.noise_std} if strategy in GP_RULES else {}
            res = active_finetune(
                model, params, optax.adam(cfg.learning_rate or DEFAULT_LR[cfg.setting]), x, y, xt[target], yt[target],
                strategy=strategy, rounds=cfg.rounds, k=cfg.k,
                workdir=out_dir / "runs" / f"{strategy}_s{seed}", seed=seed,
                trainable="head", epochs=cfg.epochs, batch_size=cfg.batch_size,
                select_kwargs=kwargs,
            )
            acc[seed] = [m["target_accuracy"] for m in res.metrics]
            picks = np.asarray(res.indices).reshape(cfg.rounds, cfg.k)
            share[seed] = np.cumsum(in_target[picks].sum(axis=1)) / (
                cfg.k * np.arange(1, cfg.rounds + 1))
            done += 1
            if progress:
                print(f"[{done}/{total}] {strategy} seed {seed}: target accuracy "
                      f"{acc[seed, -1]:.3f}, share from target classes {share[seed, -1]:.2f}",
                      file=sys.stderr)
        runs[strategy] = {"accuracy": acc.tolist(), "share": share.tolist()}
    return {"config": dataclasses.asdict(cfg), "what": st["what"], "class_names": st["names"],
            "base": base, "runs": runs,
            "budgets": [cfg.k * (r + 1) for r in range(cfg.rounds)],
            "target_share_in_pool": float(in_target.mean()),
            "seconds": time.perf_counter() - t0}


def table(result: dict) -> str:
    budgets = result["budgets"]
    show = sorted({0, len(budgets) // 2, len(budgets) - 1})
    head = ["strategy"] + [f"acc @ {budgets[i]}" for i in show] + [f"share @ {budgets[-1]}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(result["runs"], key=lambda s: -np.mean(np.asarray(result["runs"][s]["accuracy"])[:, -1]))
    for s in order:
        m, h = ci(result["runs"][s]["accuracy"])
        sm, sh = ci(result["runs"][s]["share"])
        cells = [f"{m[i]:.3f} ± {h[i]:.3f}" for i in show] + [f"{sm[-1]:.2f} ± {sh[-1]:.2f}"]
        lines.append("| " + " | ".join([s] + cells) + " |")
    cfg, names = result["config"], result["class_names"]
    lines.append("")
    lines.append(f"{result['what']}. Target: test examples of {[names[c] for c in cfg['target_classes']]} "
                 f"(pretrained on {[names[c] for c in cfg['pretrain_classes']]}; accuracy on the "
                 f"target before fine-tuning: {result['base']['target_accuracy']:.3f}). The "
                 f"{len(result['budgets'])} x {cfg['k']} picks come from all "
                 f"{len(names)} classes; "
                 f"{result['target_share_in_pool']:.0%} of the pool is in the target classes. "
                 f"Mean ± 95% CI over {cfg['seeds']} seeds; head-only fine-tuning.")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = np.asarray(result["budgets"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for s, r in result["runs"].items():
        for ax, key in zip(axes, ("accuracy", "share")):
            m, h = ci(r[key])
            line, = ax.plot(budgets, m, marker="o", ms=3, label=s)
            ax.fill_between(budgets, m - h, m + h, color=line.get_color(), alpha=0.15)
    axes[0].set_ylabel("accuracy on the target examples")
    axes[1].set_ylabel("share of picks from the target classes")
    axes[1].axhline(result["target_share_in_pool"], color="gray", ls=":", lw=1)
    for ax in axes:
        ax.set_xlabel("labels revealed (budget)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle(f"Study A ({result['config']['setting']}): fine-tuning {result['what']} toward "
                 f"new target classes (mean, 95% CI over {result['config']['seeds']} seeds)",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def _spec(setting: str) -> dict:
    from activeft_jax.validation import NumberRange

    count = ("int", NumberRange(integer=True, low=1))
    classes = ("ints", NumberRange(integer=True, low=0, high=NUM_CLASSES[setting] - 1))
    return {"setting": "str", "strategies": "strs", "seeds": count, "rounds": count, "k": count,
            "pretrain_classes": classes, "target_classes": classes,
            "noise_std": ("float", NumberRange(low=0, low_open=True)),
            "epochs": count, "batch_size": count,
            "learning_rate": ("float", NumberRange(low=0)),  # 0: the setting's default
            "pretrain_epochs": count}


def config_from_args(argv=None) -> tuple:
    """The configuration from flags and/or a JSON file; every check runs before any work."""
    p = OneLineParser(prog="study A", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="JSON file with Config fields (flags given explicitly win)")
    p.add_argument("--setting", choices=sorted(SETTINGS))
    p.add_argument("--strategies", help="comma-separated strategy names")
    p.add_argument("--seeds", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--k", type=int, help="picks per round")
    p.add_argument("--out", default=None, help=f"results folder (default {RESULTS})")
    p.add_argument("--cache-dir", default=None,
                   help="embedding cache folder (default: <out>/cache with --out, else "
                   "experiments/results/cache)")
    args = p.parse_args(argv)
    values = read_config(args.config, Config)
    for name in ("setting", "seeds", "rounds", "k"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.strategies is not None:
        values["strategies"] = [s for s in args.strategies.split(",") if s]
    setting = values.get("setting", Config.setting)
    if not isinstance(setting, str):
        raise ValueError(f"setting must be a string, one of {sorted(SETTINGS)}; got {setting!r}")
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {sorted(SETTINGS)}")
    pre, tgt = DEFAULT_CLASSES[setting]
    values.setdefault("pretrain_classes", pre)
    values.setdefault("target_classes", tgt)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    cfg = Config(**values)
    from activeft_jax.selection import STRATEGIES as KNOWN

    check_fields(cfg, _spec(setting))
    bad = [s for s in cfg.strategies if s not in KNOWN]
    if bad or not cfg.strategies:
        raise ValueError(f"unknown strategies {bad}; choose from {', '.join(KNOWN)}")
    if set(cfg.pretrain_classes) & set(cfg.target_classes):
        raise ValueError(f"pretrain_classes {list(cfg.pretrain_classes)} and target_classes "
                         f"{list(cfg.target_classes)} overlap")
    pool = POOL_SIZE[setting]
    if cfg.rounds * cfg.k > pool:
        raise ValueError(f"the budget rounds * k = {cfg.rounds * cfg.k} "
                         f"exceeds the pool ({pool} training examples of {setting})")
    return cfg, args


def main(argv=None) -> int:
    try:
        cfg, args = config_from_args(argv)
        out, cache = output_dirs(args.out, args.cache_dir, RESULTS)
        out = out / cfg.setting
        out.mkdir(exist_ok=True)
    except (ValueError, OSError) as e:
        print(f"study A: error: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return 2
    result = run(cfg, out, cache_dir=cache)
    write_text(out / "study_a.json", json.dumps(result, indent=1))
    md = table(result)
    write_text(out / "study_a.md", md + "\n")
    plot(result, out / "study_a.png")
    print(md)
    print(f"\nwrote {out / 'study_a.md'}, {out / 'study_a.png'} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
