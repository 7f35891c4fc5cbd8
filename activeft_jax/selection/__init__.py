"""Selection rules: each a pure function of embeddings returning a `Selection`."""

from activeft_jax.selection.prototypes import ActiveFTFit as ActiveFTFit
from activeft_jax.selection.prototypes import activeft as activeft
from activeft_jax.selection.prototypes import activeft_loss as activeft_loss
from activeft_jax.selection.prototypes import activeft_sweep as activeft_sweep
from activeft_jax.selection.prototypes import fit_activeft as fit_activeft
from activeft_jax.selection.clustering import KMeansFit as KMeansFit
from activeft_jax.selection.clustering import fit_kmeans as fit_kmeans
from activeft_jax.selection.clustering import kmeans as kmeans
from activeft_jax.selection.clustering import kmeans_pp as kmeans_pp
from activeft_jax.selection.clustering import typiclust as typiclust
from activeft_jax.selection.diversity import maxdist as maxdist
from activeft_jax.selection.diversity import probcover as probcover
from activeft_jax.selection.diversity import random as random
from activeft_jax.selection.dispatch import STRATEGIES as STRATEGIES
from activeft_jax.selection.dispatch import TARGETED as TARGETED
from activeft_jax.selection.dispatch import select as select
from activeft_jax.selection.result import Selection as Selection
from activeft_jax.selection.sift import AdaptiveSelection as AdaptiveSelection
from activeft_jax.selection.sift import sift as sift
from activeft_jax.selection.similarity import cosine as cosine
from activeft_jax.selection.similarity import information_density as information_density
from activeft_jax.selection.similarity import max_entropy as max_entropy
from activeft_jax.selection.transductive import ctl as ctl
from activeft_jax.selection.transductive import itl as itl
from activeft_jax.selection.transductive import mmitl as mmitl
from activeft_jax.selection.transductive import vtl as vtl
from activeft_jax.selection.undirected import uncertainty as uncertainty
from activeft_jax.selection.undirected import undirected_itl as undirected_itl
from activeft_jax.selection.undirected import undirected_vtl as undirected_vtl

__all__ = [
    "ActiveFTFit",
    "AdaptiveSelection",
    "KMeansFit",
    "STRATEGIES",
    "TARGETED",
    "Selection",
    "activeft",
    "activeft_loss",
    "activeft_sweep",
    "cosine",
    "ctl",
    "fit_activeft",
    "fit_kmeans",
    "information_density",
    "itl",
    "kmeans",
    "kmeans_pp",
    "max_entropy",
    "maxdist",
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
