"""Selection rules: each a pure function of embeddings returning a `Selection`."""

from activeft_jax.selection.prototypes import ActiveFTFit as ActiveFTFit
from activeft_jax.selection.prototypes import ActiveFTSolver as ActiveFTSolver
from activeft_jax.selection.prototypes import ActiveFTState as ActiveFTState
from activeft_jax.selection.prototypes import activeft as activeft
from activeft_jax.selection.prototypes import activeft_loss as activeft_loss
from activeft_jax.selection.prototypes import activeft_solver as activeft_solver
from activeft_jax.selection.prototypes import activeft_sweep as activeft_sweep
from activeft_jax.selection.prototypes import assign_to_prototypes as assign_to_prototypes
from activeft_jax.selection.prototypes import fit_activeft as fit_activeft
from activeft_jax.selection.classification import eig as eig
from activeft_jax.selection.clustering import KMeansFit as KMeansFit
from activeft_jax.selection.clustering import fit_kmeans as fit_kmeans
from activeft_jax.selection.clustering import kmeans as kmeans
from activeft_jax.selection.clustering import kmeans_pp as kmeans_pp
from activeft_jax.selection.clustering import typiclust as typiclust
from activeft_jax.selection.diversity import maxdist as maxdist
from activeft_jax.selection.diversity import probcover as probcover
from activeft_jax.selection.diversity import random as random
from activeft_jax.selection.dispatch import select as select
from activeft_jax.selection.greedy import GreedyRule as GreedyRule
from activeft_jax.selection.greedy import RuleInputs as RuleInputs
from activeft_jax.selection.registry import COMMON_OPTIONS as COMMON_OPTIONS
from activeft_jax.selection.registry import OPTION_HELP as OPTION_HELP
from activeft_jax.selection.registry import REGISTRY as REGISTRY
from activeft_jax.selection.registry import STRATEGIES as STRATEGIES
from activeft_jax.selection.registry import TARGETED as TARGETED
from activeft_jax.selection.registry import Option as Option
from activeft_jax.selection.registry import OptionHelp as OptionHelp
from activeft_jax.selection.registry import Strategy as Strategy
from activeft_jax.selection.registry import get_strategy as get_strategy
from activeft_jax.selection.result import Selection as Selection
from activeft_jax.selection.sift import AdaptiveSelection as AdaptiveSelection
from activeft_jax.selection.sift import adaptive_steps as adaptive_steps
from activeft_jax.selection.sift import sift as sift
from activeft_jax.selection.similarity import cosine as cosine
from activeft_jax.selection.similarity import information_density as information_density
from activeft_jax.selection.similarity import least_confidence as least_confidence
from activeft_jax.selection.similarity import max_entropy as max_entropy
from activeft_jax.selection.similarity import min_margin as min_margin
from activeft_jax.selection.transductive import ctl as ctl
from activeft_jax.selection.transductive import itl as itl
from activeft_jax.selection.transductive import mmitl as mmitl
from activeft_jax.selection.transductive import vtl as vtl
from activeft_jax.selection.undirected import uncertainty as uncertainty
from activeft_jax.selection.undirected import undirected_itl as undirected_itl
from activeft_jax.selection.undirected import undirected_vtl as undirected_vtl

__all__ = [
    "COMMON_OPTIONS",
    "ActiveFTFit",
    "ActiveFTSolver",
    "ActiveFTState",
    "AdaptiveSelection",
    "GreedyRule",
    "KMeansFit",
    "OPTION_HELP",
    "Option",
    "OptionHelp",
    "REGISTRY",
    "RuleInputs",
    "STRATEGIES",
    "Strategy",
    "TARGETED",
    "Selection",
    "activeft",
    "activeft_loss",
    "adaptive_steps",
    "activeft_solver",
    "activeft_sweep",
    "assign_to_prototypes",
    "cosine",
    "ctl",
    "eig",
    "fit_activeft",
    "fit_kmeans",
    "get_strategy",
    "information_density",
    "itl",
    "kmeans",
    "kmeans_pp",
    "least_confidence",
    "max_entropy",
    "maxdist",
    "min_margin",
    "mmitl",
    "probcover",
    "random",
    "select",
    "sift",
    "typiclust",
    "uncertainty",
    "undirected_itl",
    "undirected_vtl",
    "vtl",
]
