"""The pure round (select → reveal → train → evaluate) and the loop built on it: a fixed pool,
the labelled points as `observed`, one compilation, rounds that continue one greedy run."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from flax import linen as nn

import activeft_jax as aft
from _active_job import problem
from activeft_jax.embeddings import last_layer, linen_features
from activeft_jax.training import RoundState, active_finetune, init_round_state, make_round
from helpers import count_traces


def _round(strategy="vtl", k=6, **over):
    model, variables, pool_x, pool_y, target_x, target_y = problem()
    kw = dict(strategy=strategy, k=k, embed=linen_features(model), epochs=3, batch_size=8,
              select_kwargs={"noise_std": 0.5} if strategy in ("vtl", "itl") else None)
    kw.update(over)
    fn = make_round(model.apply, optax.adam(1e-2), **kw)
    state = init_round_state(variables, optax.adam(1e-2), num_pool=pool_x.shape[0],
                             trainable="head")
    return fn, state, (pool_x, pool_y, target_x, target_y), model, variables


def test_a_jitted_round_compiles_once_and_keeps_the_pool_whole():
    fn, state, data, _, _ = _round()
    step = jax.jit(fn)
    picks = []
    with count_traces("round_fn") as traced:
        for r in range(3):
            state, out = step(state, jax.random.key(r), *data)
            picks.extend(np.asarray(out.picks).tolist())
            assert int(out.labelled) == 6 * (r + 1)
    assert traced.count == 1
    assert len(set(picks)) == 18
    labelled = np.asarray(state.labelled)
    assert labelled.sum() == 18 and set(np.nonzero(labelled)[0].tolist()) == set(picks)
    assert int(state.round) == 3 and int(state.train.step) > 0
    assert np.isfinite(float(out.target_accuracy)) and np.isfinite(float(out.train_loss))


def test_rounds_scan_in_one_program_and_equal_the_python_loop():
    fn, state0, data, _, _ = _round(strategy="maxdist", k=4)
    keys = jax.random.split(jax.random.key(7), 3)
    scanned, outs = jax.jit(lambda s: jax.lax.scan(lambda c, key: fn(c, key, *data), s, keys))(
        state0)
    state, picks = state0, []
    for key in keys:
        state, out = jax.jit(fn)(state, key, *data)
        picks.append(np.asarray(out.picks))
    np.testing.assert_array_equal(outs.picks, np.stack(picks))
    np.testing.assert_array_equal(scanned.labelled, state.labelled)


def test_round_two_is_conditioned_on_round_one():
    """With fixed embeddings, three rounds of VTL are the greedy run of select(k=18)."""
    model, variables, pool_x, pool_y, target_x, target_y = problem()
    phi = last_layer(model, variables, pool_x)
    phi_t = last_layer(model, variables, target_x)
    fn, state, data, _, _ = _round(k=6)
    step = jax.jit(fn)
    picks = []
    for r in range(3):
        state, out = step(state, jax.random.key(r), *data, features=(phi, phi_t))
        picks.extend(np.asarray(out.picks).tolist())
    ref = aft.select("vtl", phi, phi_t, k=18, noise_std=0.5)
    assert picks == np.asarray(ref.indices).tolist()


def test_active_finetune_continues_the_greedy_run_across_rounds():
    model, variables, pool_x, pool_y, target_x, target_y = problem()
    res = active_finetune(model, variables, optax.adam(1e-2), pool_x, pool_y, target_x, target_y,
                          strategy="itl", rounds=3, k=5, embed_every_round=False, epochs=2,
                          batch_size=8, select_kwargs={"noise_std": 0.5})
    phi = last_layer(model, variables, pool_x)
    phi_t = last_layer(model, variables, target_x)
    ref = aft.select("itl", phi, phi_t, k=15, noise_std=0.5)
    assert res.indices.tolist() == np.asarray(ref.indices).tolist()


class DropoutMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.tanh(nn.Dense(16)(x))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(4)(x)


def test_a_loss_with_an_rng_trains_with_dropout_and_workdir_none_writes_nothing(tmp_path,
                                                                                monkeypatch):
    _, _, pool_x, pool_y, target_x, target_y = problem()
    model = DropoutMLP()
    variables = model.init(jax.random.key(0), pool_x[:1])
    seen = []

    def objective(params, x, y, rng):
        seen.append(rng)
        logits = model.apply(params, x, train=True, rngs={"dropout": rng})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y)

    monkeypatch.chdir(tmp_path)
    res = active_finetune(model, variables, optax.adam(1e-2), pool_x, pool_y, target_x, target_y,
                          strategy="random", rounds=2, k=10, trainable="all", objective=objective,
                          epochs=3, batch_size=8)
    assert seen and len(res.metrics) == 2 and list(tmp_path.iterdir()) == []
    # dropout is on in training: with another seed the same picks train differently
    again = active_finetune(model, variables, optax.adam(1e-2), pool_x, pool_y, target_x,
                            target_y, strategy="random", rounds=2, k=10, trainable="all",
                            objective=objective, epochs=3, batch_size=8)
    assert again.metrics == res.metrics  # deterministic given the seed
    assert res.metrics[-1]["target_accuracy"] > res.initial_metrics["target_accuracy"]


@pytest.mark.parametrize("strategy", ["kmeans", "typiclust", "probcover", "activeft",
                                      "information_density", "undirected_vtl"])
def test_every_kind_of_strategy_runs_in_a_jitted_round(strategy):
    over = {"select_kwargs": {"steps": 10}} if strategy == "activeft" else {}
    if strategy == "typiclust":
        over = {"select_kwargs": {"max_clusters": 20, "iters": 10}}
    fn, state, data, _, _ = _round(strategy=strategy, k=5, **over)
    step = jax.jit(fn)
    picks = []
    for r in range(2):
        state, out = step(state, jax.random.key(r), *data)
        picks.extend(np.asarray(out.picks).tolist())
    assert len(set(picks)) == 10 and min(picks) >= 0


def test_round_state_goes_through_checkpoints(tmp_path):
    fn, state, data, _, _ = _round(k=3)
    state, _ = jax.jit(fn)(state, jax.random.key(0), *data)
    ckpt = aft.training.Checkpointer(tmp_path / "c")
    ckpt.save(1, {"state": state})
    like = {"state": jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                            state)}
    back, _ = ckpt.restore(1, target=like)
    assert isinstance(back["state"], RoundState)
    np.testing.assert_array_equal(back["state"].labelled, state.labelled)
    ckpt.close()


def test_make_round_refuses_bad_configurations():
    model, variables, *_ = problem()
    with pytest.raises(ValueError, match="sift selects per prompt"):
        make_round(model.apply, optax.adam(1e-2), strategy="sift", k=3)
    with pytest.raises(ValueError, match="unknown strategy"):
        make_round(model.apply, optax.adam(1e-2), strategy="nope", k=3)
    with pytest.raises(ValueError, match="needs `initial`"):
        make_round(model.apply, optax.adam(1e-2), strategy="vtl", k=3, warm_start=False)
    with pytest.raises(ValueError, match=r"shape \[300\]"):
        init_round_state(variables, optax.adam(1e-2), num_pool=300, labelled=np.zeros(3, bool))
