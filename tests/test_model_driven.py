"""`select_with_model` and `ActiveDataLoader`: embed-then-select in one call.

The convenience must give exactly (bit for bit) the `Selection` of calling the
embedding function and `select` by hand, for every embedding kind, with and
without a target; `ActiveDataLoader.next` must never re-pick and must equal
`select(..., observed=earlier picks)`. The model is a small random linen MLP
classifier on synthetic inputs.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from flax import linen as nn

import activeft_jax as aft
from activeft_jax import embeddings as emb

N, M, D, K = 48, 4, 6, 5


class Classifier(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(13)(x))
        x = nn.relu(nn.Dense(12)(x))
        return nn.Dense(3)(x)


@functools.cache
def _problem():
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((N, D)).astype(np.float32)
    target = rng.standard_normal((M, D)).astype(np.float32)
    module = Classifier()
    variables = module.init(jax.random.key(0), pool[:1])
    return module, variables, pool, target


# Embedding dimensions: last_layer 12; loss_gradient (12 + 1) * 3 = 39; ntk 3 outputs * 13 biases
# = 39 (the same shapes reuse one compiled selection, which keeps the file fast).
OPTIONS = {"last_layer": {}, "loss_gradient": {"mode": "argmax"}, "ntk": {"wrt": ["Dense_0/bias"]}}


def _by_hand(embedding, module, variables, x):
    if embedding == "last_layer":
        return emb.last_layer(module, variables, x)
    if embedding == "loss_gradient":
        return emb.loss_gradient(module, variables, x, mode="argmax")
    return emb.ntk(module.apply, variables, x, wrt=["Dense_0/bias"])


def _same(a, b):
    np.testing.assert_array_equal(np.asarray(a.indices), np.asarray(b.indices))
    np.testing.assert_array_equal(np.asarray(a.values), np.asarray(b.values))


@pytest.mark.parametrize("with_target", [True, False], ids=["vtl", "undirected_vtl"])
@pytest.mark.parametrize("embedding", list(OPTIONS))
def test_equals_embedding_then_select_by_hand(embedding, with_target):
    module, variables, pool, target = _problem()
    got = aft.select_with_model(module, variables, pool, target if with_target else None, k=K,
                                embedding=embedding, embedding_options=OPTIONS[embedding])
    phi_pool = _by_hand(embedding, module, variables, pool)
    if with_target:  # the reference's defaults: VTL with noise variance 0.01
        want = aft.select("vtl", phi_pool, _by_hand(embedding, module, variables, target),
                          k=K, noise_std=0.1)
    else:
        want = aft.select("undirected_vtl", phi_pool, k=K, noise_std=0.1)
    _same(got, want)
    assert got.indices.shape == (K,)


def _mask(indices):
    return np.isin(np.arange(N), np.asarray(indices))


def test_strategy_and_select_options_reach_select():
    module, variables, pool, target = _problem()
    even = np.arange(N) % 2 == 0
    got = aft.select_with_model(module, variables, pool, target, k=K, strategy="cosine",
                                observed=_mask([0, 2]), candidates=even)
    want = aft.select("cosine", emb.last_layer(module, variables, pool),
                      emb.last_layer(module, variables, target), k=K, observed=_mask([0, 2]),
                      candidates=even)
    _same(got, want)
    assert set(np.asarray(got.indices) % 2) == {0} and not {0, 2} & set(got.indices.tolist())


def test_a_plain_features_function_is_a_model():
    module, variables, pool, target = _problem()
    features = emb.linen_features(module, layer="Dense_1")  # [n, 12]
    got = aft.select_with_model(features, variables, pool, target, k=K)
    want = aft.select("vtl", emb.last_layer(features, variables, pool),
                      emb.last_layer(features, variables, target), k=K)
    _same(got, want)


@pytest.mark.parametrize("with_target", [True, False], ids=["vtl", "undirected_vtl"])
def test_loader_never_repicks_and_continues_the_greedy_run(with_target):
    module, variables, pool, target = _problem()
    target = target if with_target else None
    loader = aft.ActiveDataLoader(pool, target, k=K)
    first = loader.next(module, variables)
    np.testing.assert_array_equal(loader.observed, np.asarray(first.indices))
    second = loader.next(module, variables)
    picks = np.concatenate([np.asarray(first.indices), np.asarray(second.indices)])
    assert len(set(picks.tolist())) == 2 * K
    np.testing.assert_array_equal(loader.observed, picks)
    # the first call is select_with_model; the second is it with observed = the first picks
    # (as a [N] mask, which the loader passes so that every later round has one shape)
    _same(first, aft.select_with_model(module, variables, pool, target, k=K))
    _same(second, aft.select_with_model(module, variables, pool, target, k=K,
                                        observed=_mask(first.indices)))


def test_loader_starts_from_a_labelled_set_and_takes_a_new_target():
    module, variables, pool, target = _problem()
    loader = aft.ActiveDataLoader(pool, target, k=K, observed=[0, 1, 2])
    sel = loader.with_target(target[::-1]).next(module, variables)
    _same(sel, aft.select_with_model(module, variables, pool, target[::-1], k=K,
                                     observed=_mask([0, 1, 2])))
    assert loader.observed[:3].tolist() == [0, 1, 2] and len(loader.observed) == 3 + K


def test_an_nnx_model():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(D, 12, rngs=rngs)  # 12 features, as the linen MLP
            self.head = nnx.Linear(12, 3, rngs=rngs)

        def features(self, x):
            return nnx.tanh(self.hidden(x))

        def __call__(self, x):
            return self.head(self.features(x))

    _, _, pool, target = _problem()
    net = Net(nnx.Rngs(0))
    got = aft.select_with_model(net, None, pool, target, k=K, embedding="last_layer",
                                embedding_options={"method": "features"})
    fn, params = emb.nnx_apply(net, method="features")
    want = aft.select("vtl", emb.last_layer(fn, params, pool), emb.last_layer(fn, params, target),
                      k=K)
    _same(got, want)
    with pytest.raises(ValueError, match="method"):
        aft.select_with_model(net, None, pool, target, k=K, embedding="last_layer")
    with pytest.raises(ValueError, match="variables=None"):
        aft.select_with_model(net, {"params": 1}, pool, target, k=K, embedding="ntk")


def test_bad_input_raises_value_errors():
    module, variables, pool, target = _problem()
    call = functools.partial(aft.select_with_model, module, variables, pool, k=K)
    with pytest.raises(ValueError, match="`embedding` must be one of"):
        call(target, embedding="penultimate")
    with pytest.raises(ValueError, match="target_inputs"):
        call(target[:, :-1])                          # examples of the wrong shape
    with pytest.raises(ValueError, match="target_inputs"):
        call(target[0])                               # one example without its batch axis
    with pytest.raises(ValueError, match="target_inputs` is empty"):
        call(target[:0])
    with pytest.raises(ValueError, match="needs `target_inputs`"):
        call(None, strategy="vtl")
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['wrt'\]"):
        call(target, embedding="last_layer", embedding_options={"wrt": ["Dense_2"]})
    with pytest.raises(ValueError, match="mode='argmax'"):
        call(target, embedding="loss_gradient", embedding_options={"mode": "labels"})
    with pytest.raises(ValueError, match="unknown strategy|strategy"):
        call(target, strategy="vtll")
    with pytest.raises(ValueError, match="needs its `variables`"):
        aft.select_with_model(module, None, pool, target, k=K)
    with pytest.raises(ValueError, match="target_inputs"):
        aft.ActiveDataLoader(pool, target[:, :2], k=K)
    with pytest.raises(ValueError, match="`k`"):
        aft.ActiveDataLoader(pool, target, k=0)
    with pytest.raises(ValueError, match="observed"):
        aft.ActiveDataLoader(pool, target, k=K, observed=[N])
    with pytest.raises(ValueError, match="next"):
        aft.ActiveDataLoader(pool, None, k=K, strategy="random", key=jax.random.key(0))
