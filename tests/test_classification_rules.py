"""min_margin, least_confidence and eig: parity with the reference and with a dense EIG.

tests/data/reference_classification.{npz,json} were written by
experiments/benchmarks/make_classification_fixtures.py with activeft 0.1.1:
MinMargin and LeastConfidence through its ActiveDataLoader (exact mode), and
EIG's `compute` with its two bugs patched (see that script), in float64.
"""

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import activeft_jax as aft
from activeft_jax import cli
from activeft_jax.selection import classification

DATA = os.path.join(os.path.dirname(__file__), "data", "reference_classification")
with open(DATA + ".json") as f:
    META = json.load(f)
ARRAYS = np.load(DATA + ".npz")

OURS = {"MinMargin": "min_margin", "LeastConfidence": "least_confidence"}
MARGIN_CASES = [(p, s) for p in META["margin"] for s in OURS]


def _true_scores(strategy, logits):
    """float64 scores, to tell float32 ties from disagreements."""
    with jax.enable_x64(True):
        p = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float64), axis=1))
    top = -np.sort(-p, axis=1)
    return top[:, 1] - top[:, 0] if strategy == "MinMargin" else -top[:, 0]


@pytest.mark.parametrize("problem,strategy", MARGIN_CASES,
                         ids=[f"{p}-{s}" for p, s in MARGIN_CASES])
def test_margin_rules_pick_what_the_reference_picks(problem, strategy):
    spec = META["margin"][problem]
    ref = spec["picks"][strategy]
    logits = ARRAYS[f"{problem}/logits"]
    probs = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=1)  # the reference's softmax
    sel = aft.select(OURS[strategy], probs=probs, k=spec["k"])
    ours = [int(i) for i in sel.indices]
    if ours != ref["indices"]:  # a swap only where the float64 scores tie at float32 resolution
        true = _true_scores(strategy, logits)
        for a, b in zip(ours, ref["indices"]):
            assert abs(true[a] - true[b]) <= 4 * np.finfo(np.float32).eps * max(abs(true[b]), 1e-3), (a, b)
    np.testing.assert_allclose(np.asarray(sel.values), ref["values"], rtol=0, atol=2e-6)


def test_the_tie_problem_has_ties_and_two_classes_rank_alike():
    spec = META["margin"]["c2_n150_ties"]
    true = _true_scores("MinMargin", ARRAYS["c2_n150_ties/logits"])
    assert len(np.unique(true[spec["picks"]["MinMargin"]["indices"]])) < spec["k"]
    a = spec["picks"]["MinMargin"]["values"]
    b = spec["picks"]["LeastConfidence"]["values"]
    np.testing.assert_allclose(a, 2 * np.asarray(b) + 1, atol=1e-6)  # margin = 2 max p - 1


def _eig_values(problem, dtype, **kw):
    """Our EIG of every pool point (k = N), in pool order."""
    n = ARRAYS[f"{problem}/pool"].shape[0]
    args = {name: jnp.asarray(ARRAYS[f"{problem}/{name}"], dtype)
            for name in ("pool", "target", "weights", "bias")}
    sel = aft.select("eig", args["pool"], args["target"], k=n, weights=args["weights"],
                     bias=args["bias"], **kw)
    values = np.empty(n)
    values[np.asarray(sel.indices)] = np.asarray(sel.values)
    return sel, values


@pytest.mark.parametrize("problem", list(META["eig"]))
def test_eig_matches_the_patched_reference(problem):
    spec = META["eig"][problem]
    ref = ARRAYS[f"{problem}/values_f64"]
    assert spec["select_error"].startswith("TypeError")  # the released EIG cannot run
    sel, values = _eig_values(problem, jnp.float32, step_size=spec["step_size"])
    np.testing.assert_allclose(values, ref, rtol=1e-4)
    assert [int(i) for i in sel.indices[: spec["k"]]] == spec["indices"]
    if spec["step_size"] == 0.01:  # the reference's step (float64 here is also in the dense test)
        with jax.enable_x64(True):
            _, values64 = _eig_values(problem, jnp.float64, step_size=spec["step_size"])
        # the reference's float64 subtracts two entropy sums: its own error is ~1e-10 relative
        np.testing.assert_allclose(values64, ref, rtol=1e-8)
    # the released loop (steps accumulating over the labels) gives other values
    assert not np.allclose(ARRAYS[f"{problem}/values_unpatched"], ref, rtol=1e-2)


class _Net(nn.Module):
    hidden: int
    classes: int

    def setup(self):
        self.body = nn.Dense(self.hidden)
        self.head = nn.Dense(self.classes)

    def features(self, x):
        return jnp.tanh(self.body(x))

    def __call__(self, x):
        return self.head(self.features(x))


@functools.partial(jax.jit, static_argnums=0)
def _dense_eig(model, params, x_pool, x_target, step_size):
    """EIG by brute force: per (x, c) one optax SGD step on the head kernel, then target entropies."""
    def target_entropy(p):
        probs = jax.nn.softmax(model.apply({"params": p}, x_target), axis=-1)
        return jnp.sum(jax.scipy.special.entr(probs))

    def with_kernel(kernel):
        return {**params, "head": {**params["head"], "kernel": kernel}}

    def loss(kernel, x, c):
        logits = model.apply({"params": with_kernel(kernel)}, x[None])[0]
        return -jax.nn.log_softmax(logits)[c]

    sgd = optax.sgd(step_size)
    kernel = params["head"]["kernel"]

    def posterior_entropy(x, c):
        grads = jax.grad(loss)(kernel, x, c)
        updates, _ = sgd.update(grads, sgd.init(kernel))
        return target_entropy(with_kernel(optax.apply_updates(kernel, updates)))

    classes = jnp.arange(kernel.shape[1])
    posterior = jax.vmap(jax.vmap(posterior_entropy, (None, 0)), (0, None))(x_pool, classes)
    p = jax.nn.softmax(model.apply({"params": params}, x_pool), axis=-1)
    return target_entropy(params) - jnp.sum(p * posterior, axis=1)


STEPS = (0.01, 0.3)


def _dense_problem(n=60, m=10, d=5, hidden=16, classes=5):  # eig_c5_n60's shapes: compiled
    """{step size: (dense values, our values in float64, our values and picks in float32)}."""
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        x_pool = jnp.asarray(rng.standard_normal((n, d)))
        x_target = jnp.asarray(rng.standard_normal((m, d)))
        model = _Net(hidden, classes)
        params = jax.jit(model.init)(jax.random.key(0), x_pool[:1])["params"]
        params = jax.tree_util.tree_map(lambda a: 2 * a.astype(jnp.float64), params)  # sharper
        features = jax.jit(functools.partial(model.apply, method=_Net.features))
        layer = {"pool": features({"params": params}, x_pool),
                 "target": features({"params": params}, x_target),
                 "weights": params["head"]["kernel"], "bias": params["head"]["bias"]}
        layer = {name: np.asarray(a) for name, a in layer.items()}
    out = {}
    for step in STEPS:
        with jax.enable_x64(True):
            dense = np.asarray(_dense_eig(model, params, x_pool, x_target, jnp.asarray(step)))
        runs = []
        for dtype in (jnp.float64, jnp.float32):
            with jax.enable_x64(dtype == jnp.float64):
                a = {name: jnp.asarray(v, dtype) for name, v in layer.items()}
                # a traced step size: one program for both
                sel = aft.select("eig", a["pool"], a["target"], k=n, weights=a["weights"],
                                 bias=a["bias"], step_size=jnp.asarray(step, dtype))
                values = np.empty(n)
                values[np.asarray(sel.indices)] = np.asarray(sel.values)
                runs.append((values, np.asarray(sel.indices)))
        out[step] = dense, runs[0][0], runs[1][0], runs[1][1]
    return out


def test_eig_matches_a_dense_flax_sgd_step():
    for dense, ours64, ours32, picks32 in _dense_problem().values():
        np.testing.assert_allclose(ours64, dense, rtol=1e-7)
        # float32 keeps the digits (the gains are second order in the step: a plain difference
        # of the entropy sums, as the dense code and the reference take it, loses most of them)
        np.testing.assert_allclose(ours32, dense, rtol=2e-4, atol=1e-6 * np.max(np.abs(dense)))
        np.testing.assert_array_equal(picks32[:10], np.argsort(-dense, kind="stable")[:10])


def test_eig_blocks_give_the_one_block_values(monkeypatch):
    rng = np.random.default_rng(3)
    pool, target = rng.standard_normal((23, 6)), rng.standard_normal((11, 6))
    weights, bias = rng.standard_normal((6, 3)), rng.standard_normal(3)
    args = [jnp.asarray(a, jnp.float32) for a in (pool, target, weights, bias)]
    step = jnp.asarray(0.2, jnp.float32)
    whole = jax.jit(lambda *a: classification._eig_score(*a))(*args, step)
    monkeypatch.setattr(classification, "_BLOCK", 3 * 3 * 4)  # 4 target rows, 1 pool row per block
    blocked = jax.jit(lambda *a: classification._eig_score(*a))(*args, step)
    np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-7)


def test_eig_and_min_margin_skip_observed_points_and_eig_takes_a_traced_step():
    full, _ = _eig_values("eig_c5_n60", jnp.float32, step_size=0.01)  # shapes compiled above
    n = full.indices.shape[0]
    args = {name: jnp.asarray(ARRAYS[f"eig_c5_n60/{name}"], jnp.float32)
            for name in ("pool", "target", "weights")}
    rest = aft.select("eig", args["pool"], args["target"], k=n - 1, weights=args["weights"],
                      bias=ARRAYS["eig_c5_n60/bias"], observed=full.indices[:1])
    np.testing.assert_array_equal(rest.indices, full.indices[1:])
    traced = jax.jit(lambda s: aft.select("eig", args["pool"], args["target"], k=n,
                                          weights=args["weights"], bias=ARRAYS["eig_c5_n60/bias"],
                                          step_size=s).indices)(0.01)
    np.testing.assert_array_equal(traced, full.indices)
    probs = jax.nn.softmax(jnp.asarray(ARRAYS["c10_n300/logits"]), axis=1)  # compiled above
    first = aft.select("min_margin", probs=probs, k=25)
    mask = np.zeros(probs.shape[0], bool)
    mask[int(first.indices[0])] = True
    np.testing.assert_array_equal(
        aft.select("min_margin", probs=probs, k=25, observed=mask).indices[:24], first.indices[1:])


def test_bad_weights_shape_is_a_value_error():
    pool, target = np.ones((6, 4)), np.ones((2, 4))
    with pytest.raises(ValueError, match=r"`weights` must be the final layer's kernel \[H, C\] "
                                         r"with H = 4.*got shape \(3, 4\)"):
        aft.select("eig", pool, target, k=2, weights=np.ones((3, 4)))


def test_logits_for_probs_are_a_value_error():
    with pytest.raises(ValueError, match=r"`probs` .* negative entries"):
        aft.select("min_margin", probs=np.array([[2.0, -1.0, 0.5]]), k=1)


def test_the_command_line_runs_min_margin_and_refuses_eig_in_one_line(tmp_path, capsys):
    probs = np.asarray(jax.nn.softmax(jnp.asarray(np.random.default_rng(0).standard_normal(
        (20, 3))), axis=1))
    np.save(tmp_path / "probs.npy", probs)
    out = tmp_path / "sel.json"
    assert cli.main(["select", "--strategy", "min_margin", "--probs", str(tmp_path / "probs.npy"),
                     "--k", "3", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["indices"] == [
        int(i) for i in aft.select("min_margin", probs=probs, k=3).indices]
    np.save(tmp_path / "h.npy", np.ones((20, 4), np.float32))
    code = cli.main(["select", "--strategy", "eig", "--pool", str(tmp_path / "h.npy"),
                     "--target", str(tmp_path / "h.npy"), "--k", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "`weights` is required" in err and err.count("\n") == 1
