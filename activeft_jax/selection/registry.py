"""One record per strategy: what `select`, the command line and the training loop all read.

    rec = aft.selection.REGISTRY["vtl"]
    rec.needs_target, rec.key            # True, 'none'
    [(o.name, o.default) for o in rec.options]
    # [('noise_std', 0.1), ('kernel', None), ('normalize', False), ...]

A record's options are the keyword arguments of its function, read from the
function's signature (so a default lives in one place: the function); what an
option means on the command line (its type, choices, help) is described once,
by name, in `OPTION_HELP`, and shared by every strategy that takes it. Adding a
strategy is one `Strategy(...)` line below.
"""

from __future__ import annotations

import inspect
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple, Optional

from activeft_jax.selection import (
    classification,
    clustering,
    diversity,
    prototypes,
    sift,
    similarity,
    transductive,
    undirected,
)

__all__ = ["COMMON_OPTIONS", "OPTION_HELP", "Option", "OptionHelp", "REGISTRY", "STRATEGIES",
           "Strategy", "TARGETED", "get_strategy"]

#: Options that `select` takes as its own keywords and hands to each strategy that
#: takes them (the others ignore them: the reference ignores the noise of uncertainty
#: sampling, for example). Every other option is passed only to strategies that take it.
COMMON_OPTIONS = ("noise_std", "allow_repeats", "normalize", "kernel", "progress", "observed",
                  "candidates")


class OptionHelp(NamedTuple):
    """How an option is described and parsed on the command line.

    Attributes:
      help: one line of help.
      type: `float`, `int`, `str` or `bool` for a flag; None: API only (no flag).
      choices: allowed values of a `str` option, or None.
      flag: the flag's name if not ``--`` + the name with dashes.
    """

    help: str
    type: Optional[type] = None
    choices: Optional[tuple] = None
    flag: Optional[str] = None


#: Every option any strategy takes, described once (see `Strategy.options`).
OPTION_HELP: Mapping[str, OptionHelp] = MappingProxyType({
    "noise_std": OptionHelp("observation noise std of the GP rules, > 0 (0.1: the reference's "
                            "automatic noise variance 0.01)", float),
    "kernel": OptionHelp("kernel of the GP rules and maxdist (rbf: lengthscale --lengthscale, "
                         "default the median distance between pool points)", str,
                         ("linear", "cosine", "rbf")),
    "prior_cov": OptionHelp("GP rules: prior covariance [p, p] of the feature weights "
                            "(.npy, or .npz array 'prior_cov')", "matrix"),
    "nonsequential": OptionHelp("GP rules: rank the first scores (top k), no conditioning "
                                "between picks", bool),
    "drop_observed_targets": OptionHelp("itl_noiseless: targets that coincide with an observed "
                                        "point leave the conditioning set", bool),
    "target_fraction": OptionHelp("targeted GP rules: use a random fraction of the targets "
                                  "(drawn with --seed)", float),
    "max_target_size": OptionHelp("targeted GP rules: use at most this many targets (drawn "
                                  "with --seed)", int),
    "normalize": OptionHelp("L2-normalize the embeddings first", bool),
    "allow_repeats": OptionHelp("keep picked points as candidates (the reference's behaviour)",
                                bool),
    "space": OptionHelp("GP rules: weight or kernel space (auto: by cost)", str,
                        ("auto", "weight", "kernel")),
    "progress": OptionHelp("progress bar on stderr"),
    "observed": OptionHelp("the labelled pool points: int indices or a bool mask [N] (.npy, .npz "
                           "array 'observed', or a JSON list); conditioned on, never picked",
                           "array"),
    "candidates": OptionHelp("bool mask [N] of the points that may be picked (.npy or .npz array "
                             "'candidates')", "array"),
    "max_observed": OptionHelp("GP rules in kernel space: room for this many observed points "
                               "when `observed` is a traced mask"),
    "formulation": OptionHelp("itl: the reference's I(f(x); y(A)) or the paper code's form", str,
                              ("reference", "paper")),
    "beta": OptionHelp("information_density: exponent of the similarity", float),
    "weights": OptionHelp("eig: [H, C] kernel of the classifier's final layer (logits = pool @ "
                          "weights + bias)"),
    "bias": OptionHelp("eig: [C] bias of the final layer (default zero)"),
    "step_size": OptionHelp("eig: step size of the hallucinated SGD step on the final layer",
                            float),
    "iters": OptionHelp("Lloyd steps of the clustering", int),
    "max_clusters": OptionHelp("typiclust: most clusters", int),
    "min_cluster_size": OptionHelp("typiclust: clusters this small or smaller are dropped", int),
    "num_neighbors": OptionHelp("typiclust: neighbours in the typicality", int),
    "delta": OptionHelp("probcover: ball radius", float),
    "init_indices": OptionHelp("activeft: B initial prototype indices (.npy, .npz or .json); "
                               "default: B random features drawn from --seed", "indices"),
    "init": OptionHelp("activeft: random features or farthest-point sampling", str,
                       ("random", "fps")),
    "temperature": OptionHelp("activeft: temperature tau", float),
    "steps": OptionHelp("activeft: optimizer steps", int),
    "learning_rate": OptionHelp("activeft: Adam's learning rate", float),
    "balance": OptionHelp("activeft: weight of the diversity term", float),
    "optimizer": OptionHelp("activeft: an optax GradientTransformation instead of Adam"),
    "batch_size": OptionHelp("activeft: random features per step (the official ImageNet mode; "
                             "default: all)", int),
    "chunk_rows": OptionHelp("rows of a similarity block computed at once", int),
    "prune": OptionHelp("activeft: exact pruned assignment (default: on CPU without --batch-size)",
                        bool),
    "bounds": OptionHelp("activeft with prune: one bound per feature and prototype ('pairs') or "
                         "per feature ('rows'); 'auto': pairs while N*B <= 2^27", str,
                         ("auto", "pairs", "rows")),
    "refresh": OptionHelp("activeft with prune: recompute all when more than this fraction fails",
                          float),
    "num_fast": OptionHelp("activeft with prune: prototypes scored exactly every step", int),
    "prefilter": OptionHelp("sift: prefilter size K (the candidates of each prompt)", int),
    "mean_pooling": OptionHelp("sift: the mean of a prompt's embeddings is its only target",
                               bool),
    "query_opposite": OptionHelp("sift: prefilter by |<x, q>| (default) instead of <x, q>", bool),
    "return_embeddings": OptionHelp("sift: also return the picked rows"),
    "lambda_": OptionHelp("sift: noise variance lambda > 0", float, flag="--lambda"),
    "adaptive": OptionHelp("sift: also give per prompt the number of picks until its posterior "
                           "variance is <= this threshold", float),
    "approx": OptionHelp("sift: lax.approx_max_k in the prefilter", bool),
})


class Option(NamedTuple):
    """One keyword option of a strategy.

    Attributes:
      name: the keyword (as `select` and the function take it).
      default: the function's default.
      help: `OptionHelp` (command-line type, choices, help line).
    """

    name: str
    default: Any
    help: OptionHelp

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. ``--noise-std``."""
        return self.help.flag or "--" + self.name.replace("_", "-")


#: Arguments a strategy takes that are not options: the data, the budget, the key.
_NOT_OPTIONS = frozenset({"pool", "features", "target", "prompts", "probs", "k", "key"})


def _options(fn: Callable) -> tuple[Option, ...]:
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind is not p.KEYWORD_ONLY or p.name in _NOT_OPTIONS:
            continue
        if p.name not in OPTION_HELP:
            raise KeyError(f"option {p.name!r} of {fn.__name__} is not described in OPTION_HELP")
        out.append(Option(p.name, p.default, OPTION_HELP[p.name]))
    return tuple(out)


class Strategy(NamedTuple):
    """The record of one strategy.

    Attributes:
      name: its name in `select` and on the command line.
      fn: the function (``fn(*data, k=..., [key=...], **options) -> Selection``).
      summary: one line for help texts.
      data: the positional arrays it takes, in order: some of 'pool', 'target',
        'probs' ('prompts' for sift).
      key: 'required' (a randomized rule), 'optional' (taken if given) or 'none'.
      options: its keyword options with their defaults (from the signature).
      batched: returns [P, k] per prompt instead of [k] (sift); not in `STRATEGIES`.
    """

    name: str
    fn: Callable[..., Any]
    summary: str
    data: tuple[str, ...]
    key: str
    options: tuple[Option, ...]
    batched: bool = False

    @property
    def needs_target(self) -> bool:
        """Whether it aims at target embeddings."""
        return "target" in self.data or "prompts" in self.data

    @property
    def needs_probs(self) -> bool:
        """Whether it needs the pool's class probabilities."""
        return "probs" in self.data

    @property
    def option_names(self) -> frozenset[str]:
        """The names of its options."""
        return frozenset(o.name for o in self.options)

    def defaults(self) -> dict[str, Any]:
        """{option: default}."""
        return {o.name: o.default for o in self.options}


def _record(name: str, fn: Callable, summary: str, data: tuple[str, ...], *, key: str = "none",
            batched: bool = False, signature: Optional[Callable] = None) -> Strategy:
    return Strategy(name, fn, summary, data, key, _options(signature or fn), batched)


_RECORDS = (
    _record("itl", transductive.itl, "information about the targets (ITL)", ("pool", "target"),
            key="optional"),
    _record("vtl", transductive.vtl, "least posterior variance left at the targets (VTL)",
            ("pool", "target"), key="optional"),
    _record("itl_noiseless", transductive.itl_noiseless,
            "ITL that never re-picks; optionally drops observed targets", ("pool", "target"),
            key="optional"),
    _record("ctl", transductive.ctl, "posterior correlation with the targets (CTL)",
            ("pool", "target"), key="optional"),
    _record("mmitl", transductive.mmitl, "mean marginal information about each target",
            ("pool", "target"), key="optional"),
    _record("undirected_itl", undirected.undirected_itl, "largest posterior variance, conditioned",
            ("pool",)),
    _record("undirected_vtl", undirected.undirected_vtl, "VTL with the pool as the targets",
            ("pool",)),
    _record("uncertainty", undirected.uncertainty, "largest prior variance (MaxVar), top-k",
            ("pool",)),
    _record("cosine", similarity.cosine, "nearest neighbours: mean cosine similarity to the targets",
            ("pool", "target")),
    _record("maxdist", diversity.maxdist, "k-center greedy (coreset)", ("pool",), key="required"),
    _record("random", diversity.random, "uniform at random", ("pool",), key="required"),
    _record("kmeans", clustering.kmeans, "nearest point to each k-means centroid", ("pool",),
            key="required"),
    _record("kmeans_pp", clustering.kmeans_pp, "k-means++ seeding (BADGE on gradient embeddings)",
            ("pool",), key="required"),
    _record("typiclust", clustering.typiclust, "most typical point of the largest clusters",
            ("pool",), key="required"),
    _record("probcover", diversity.probcover, "greedy maximum coverage of delta-balls", ("pool",)),
    _record("information_density", similarity.information_density,
            "predictive entropy times similarity to the targets", ("pool", "target", "probs")),
    _record("max_entropy", similarity.max_entropy, "largest predictive entropy", ("probs",)),
    _record("min_margin", similarity.min_margin, "smallest margin between the top two classes",
            ("probs",)),
    _record("least_confidence", similarity.least_confidence,
            "smallest probability of the predicted class", ("probs",)),
    _record("eig", classification.eig,
            "expected information gain about the targets' predictions (final layer)",
            ("pool", "target")),
    _record("activeft", prototypes.activeft, "ActiveFT prototypes matched to the pool",
            ("pool",), key="optional", signature=prototypes.fit_activeft),
    _record("sift", sift.sift, "SIFT per prompt: |<x, q>| prefilter, then VTL with repeats",
            ("pool", "prompts"), batched=True),
)

#: name -> `Strategy`, for every strategy (sift included).
REGISTRY: Mapping[str, Strategy] = MappingProxyType({r.name: r for r in _RECORDS})
#: The strategies whose result is one [k] selection (all but sift), in the order above.
STRATEGIES: tuple[str, ...] = tuple(r.name for r in _RECORDS if not r.batched)
#: The strategies of `STRATEGIES` that aim at targets.
TARGETED: frozenset[str] = frozenset(n for n in STRATEGIES if REGISTRY[n].needs_target)


def get_strategy(name: str) -> Strategy:
    """The record of `name`, or a ValueError that lists the strategies."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(REGISTRY)}.")
    return REGISTRY[name]
