"""activeft_jax.embeddings against independent references.

References are built here from scratch: hand-written forward passes,
`capture_intermediates`, `jax.jacrev` of the full outputs, Python loops of
`jax.grad` of the cross-entropy, and the projection matrix R materialized
from the documented key derivation. Every model is tiny and randomly
initialized from fixed seeds. Tests run in float32 and float64 (the `dtype`
fixture of conftest.py, or an explicit `jax.enable_x64` context), with
per-dtype tolerances; the costlier checks use covering designs (each model
meets each precision once) to keep the file well under a minute on 2 cores.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from activeft_jax import embeddings as emb

TOL = {"float32": dict(rtol=2e-4, atol=2e-5), "float64": dict(rtol=1e-10, atol=1e-12)}
N = 7  # examples; batch_size=3 leaves a padded last batch


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(8)(x))
        x = nn.relu(nn.Dense(5)(x))
        return nn.Dense(3)(x)


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(3, (3, 3))(x))
        x = nn.tanh(nn.Conv(4, (3, 3), strides=(2, 2))(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.tanh(nn.Dense(6)(x))
        return nn.Dense(4)(x)


SHAPES = {"mlp": (6,), "cnn": (8, 8, 1)}


@functools.lru_cache(maxsize=None)
def _init(name: str):
    """Random weights from a fixed seed, as NumPy (no compilation: shapes via eval_shape).

    Weights are N(0, 2 / fan_in), a bit larger than the default init, so that the
    head's softmax is not uniform and the argmax labels differ between examples.
    """
    model = MLP() if name == "mlp" else CNN()
    rng = np.random.default_rng(0 if name == "mlp" else 1)
    x = rng.standard_normal((N,) + SHAPES[name]).astype(np.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x[:1])

    def draw(s):
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 4
        return (rng.standard_normal(s.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return model, jax.tree_util.tree_map(draw, shapes), x


def make(name: str, dtype: str):
    model, variables, x = _init(name)
    cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    return model, jax.tree_util.tree_map(cast, variables), cast(x)


def close(actual, desired, dtype):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(desired), **TOL[dtype])


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


# ---------------------------------------------------------------------------- references


def ref_penultimate(name, model, variables, x):
    if name == "mlp":  # by hand
        p = variables["params"]
        h = jnp.tanh(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None])
        return jax.nn.relu(h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"][None])
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    return jnp.tanh(state["intermediates"]["Dense_0"]["__call__"][0])


def with_sub(variables, head, sub):
    """variables with params[head] (or all params if head is None) replaced by sub."""
    params = dict(variables["params"])
    if head is None:
        params = sub
    else:
        params[head] = sub
    return {**variables, "params": params}


def sub_params(variables, head):
    return variables["params"] if head is None else variables["params"][head]


def ref_jacobian(model, variables, x, head):
    """[n, O, P] by jax.jacrev of the full outputs; P in tree_leaves order of the subset."""
    sub = sub_params(variables, head)
    jac = jax.jit(jax.jacrev(lambda s: model.apply(with_sub(variables, head, s), x)))(sub)
    n, o = jax.tree_util.tree_leaves(jac)[0].shape[:2]
    return jnp.concatenate([a.reshape(n, o, -1) for a in jax.tree_util.tree_leaves(jac)], axis=2)


@functools.partial(jax.jit, static_argnums=(0, 4))
def ce_grad(model, variables, xi, y, head):
    """Flattened gradient of -log softmax(f(x_i))_y w.r.t. params[head] (bias, kernel)."""
    def loss(s):
        logits = model.apply(with_sub(variables, head, s), xi[None])[0]
        return -jax.nn.log_softmax(logits)[y]

    g = jax.grad(loss)(sub_params(variables, head))
    return jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(g)])


HEAD = {"mlp": "Dense_2", "cnn": "Dense_1"}


# ---------------------------------------------------------------------------- last layer


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_last_layer_is_penultimate_activation(name, dtype):
    model, variables, x = make(name, dtype)
    out = emb.last_layer(model, variables, x, batch_size=3)
    close(out, ref_penultimate(name, model, variables, x), dtype)
    assert out.dtype == jnp.dtype(dtype)


def test_linear_probe_features_are_its_inputs():
    """A model that is one nn.Dense (a linear head on frozen embeddings): its inputs."""
    head = nn.Dense(3)
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    variables = head.init(jax.random.key(0), x[:1])
    np.testing.assert_array_equal(np.asarray(emb.last_layer(head, variables, x)), x)
    g = emb.loss_gradient(head, variables, x)
    p = jax.nn.softmax(head.apply(variables, x))
    e = np.eye(3)[np.asarray(p).argmax(1)]
    want = np.einsum("nh,nc->nhc", np.concatenate([np.ones((7, 1)), x], 1), np.asarray(p) - e)
    np.testing.assert_allclose(np.asarray(g), want.reshape(7, -1), atol=1e-6)


def test_named_layer_matches_capture_intermediates(dtype):
    model, variables, x = make("cnn", dtype)
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    for layer in ["Conv_1", "Dense_0"]:
        want = state["intermediates"][layer]["__call__"][0].reshape(N, -1)
        close(emb.last_layer(model, variables, x, layer=layer, batch_size=4), want, dtype)


def test_features_fn_and_batching_and_progress():
    model, variables, x = make("mlp", "float32")
    fn = lambda v, xb: model.apply(v, xb)  # noqa: E731 (a features_fn: here the logits)
    want = model.apply(variables, x)
    for kw in [dict(batch_size=3), dict(batch_size=N), dict(batch_size=100),
               dict(batch_size=2, progress=True)]:
        close(emb.last_layer(fn, variables, x, **kw), want, "float32")
    # pytree inputs, and numpy inputs on the host
    two = lambda v, xb: model.apply(v, xb["a"] + xb["b"])  # noqa: E731
    got = emb.last_layer(two, variables, {"a": np.asarray(x), "b": np.zeros_like(x)}, batch_size=3)
    close(got, want, "float32")


# ---------------------------------------------------------------------------- NTK


# Each model runs a subset and all parameters, one in each precision (a covering
# design: all eight combinations would double the compile time for little).
@pytest.mark.parametrize("name,head,dtype_", [
    ("mlp", "Dense_2", "float32"), ("mlp", None, "float64"),
    ("cnn", "Dense_0", "float64"), ("cnn", None, "float32"),
])
def test_ntk_exact_equals_jacrev_ntk(name, head, dtype_):
    with jax.enable_x64(dtype_ == "float64"):
        _check_ntk_exact(name, head, dtype_)


def _check_ntk_exact(name, head, dtype):
    model, variables, x = make(name, dtype)
    jac = ref_jacobian(model, variables, x, head)  # [n, O, P]
    n, o, p = jac.shape
    if head is None:  # per-output layout [n, O, P]
        per_out = emb.ntk(model.apply, variables, x, flatten=False, batch_size=3)
        assert per_out.dtype == jnp.dtype(dtype)
        close(jnp.einsum("iap,jbp->iajb", per_out, per_out),
              jnp.einsum("iap,jbp->iajb", jac, jac), dtype)
        close(per_out, jac, dtype)
    else:  # default flattened layout [n, O P]
        phi = emb.ntk(model.apply, variables, x, wrt=[head], batch_size=3)
        assert phi.shape == (n, o * p) and phi.dtype == jnp.dtype(dtype)
        close(phi @ phi.T, jnp.einsum("iop,jop->ij", jac, jac), dtype)  # traced NTK
        close(phi, jac.reshape(n, -1), dtype)  # the documented layout


def test_ntk_predicate_equals_prefix():
    model, variables, x = make("mlp", "float32")
    a = emb.ntk(model.apply, variables, x, wrt=["Dense_1", "Dense_2"])
    b = emb.ntk(model.apply, variables, x, wrt=lambda path: path.split("/")[1] in
                ("Dense_1", "Dense_2"))
    jac = jnp.concatenate([ref_jacobian(model, variables, x, h) for h in ["Dense_1", "Dense_2"]],
                          axis=2)
    close(a @ a.T, jnp.einsum("iop,jop->ij", jac, jac), "float32")
    close(a, b, "float32")


def test_ntk_composes_with_jit_and_vmap():
    model, variables, x = make("mlp", "float32")
    stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, -0.5 * a]), variables)
    f = jax.jit(jax.vmap(lambda v: emb.ntk(model.apply, v, x, wrt="Dense_2", batch_size=3)))
    phis = f(stacked)  # traced params and a traced x inside: no progress bar, same result
    for i, scale in enumerate([1.0, -0.5]):
        v = jax.tree_util.tree_map(lambda a: scale * a, variables)
        close(phis[i], ref_jacobian(model, v, x, "Dense_2").reshape(N, -1), "float32")


@pytest.mark.parametrize("name,head,dtype_", [("mlp", "Dense_1", "float64"),
                                               ("cnn", None, "float32")])
def test_ntk_projection_equals_materialized_r(name, head, dtype_):
    with jax.enable_x64(dtype_ == "float64"):
        _check_projection(name, head, dtype_)


def _check_projection(name, head, dtype):
    model, variables, x = make(name, dtype)
    key, dim = jax.random.key(3), 11
    jac = ref_jacobian(model, variables, x, head)  # [n, O, P]
    # R column by column, from the documented derivation (P in param_paths order).
    p = jac.shape[2]
    r = jnp.stack([jax.random.normal(jax.random.fold_in(key, d), (p,), jnp.dtype(dtype))
                   for d in range(dim)], axis=1)  # [P, D]
    want = jnp.einsum("iop,pd->iod", jac, r) / np.sqrt(dim)
    if head is None:  # per-output layout [n, O, D], a typed key
        got = emb.ntk(model.apply, variables, x, projection_dim=dim, key=key,
                      flatten=False, batch_size=3, direction_batch_size=4)
        close(got, want, dtype)
    else:  # flattened [n, O D]; a raw uint32 key with the same bits gives the same R
        got = emb.ntk(model.apply, variables, x, wrt=head, projection_dim=dim,
                      key=jax.random.key_data(key), batch_size=5, direction_batch_size=4)
        close(got, want.reshape(N, -1), dtype)


def test_ntk_projection_converges_to_exact():
    model, variables, x = make("mlp", "float32")
    jac = ref_jacobian(model, variables, x, "Dense_1")
    exact = jnp.einsum("iop,jop->ij", jac, jac)
    dim = 4000
    phi = emb.ntk(model.apply, variables, x, wrt="Dense_1", projection_dim=dim,
                  key=jax.random.key(0), direction_batch_size=500)
    # Var[phi.phi'] = (Θ(x,x)Θ(x',x') + Θ(x,x')^2)/D summed over outputs <= 2 Θ(x,x)Θ(x',x')/D.
    d = np.sqrt(np.diag(exact))
    bound = 5 * np.sqrt(2.0 / dim) * np.outer(d, d)
    assert np.all(np.abs(np.asarray(phi @ phi.T - exact)) <= bound)


# ---------------------------------------------------------------------------- loss gradients


# Covering designs: each model meets each precision in one of the two mode tests.
@pytest.mark.parametrize("name,dtype_", [("mlp", "float32"), ("cnn", "float64")])
def test_loss_gradient_argmax_and_labels_equal_grad_loop(name, dtype_):
    with jax.enable_x64(dtype_ == "float64"):
        _check_argmax_and_labels(name, dtype_)


def _check_argmax_and_labels(name, dtype):
    model, variables, x = make(name, dtype)
    head = HEAD[name]
    logits = model.apply(variables, x)
    pred = jnp.argmax(logits, -1)
    want = jnp.stack([ce_grad(model, variables, x[i], pred[i], head) for i in range(N)])
    got = emb.loss_gradient(model, variables, x, mode="argmax", batch_size=3)
    assert got.dtype == jnp.dtype(dtype)
    close(got, want, dtype)
    labels = (pred + 1 + jnp.arange(N)) % logits.shape[1]
    want = jnp.stack([ce_grad(model, variables, x[i], labels[i], head) for i in range(N)])
    close(emb.loss_gradient(model, variables, x, labels=labels, batch_size=3), want, dtype)
    # General version (vmap(grad)) w.r.t. the head equals the closed form.
    ce = lambda v, xb, yb: -jax.nn.log_softmax(model.apply(v, xb))[0, yb[0]]  # noqa: E731
    close(emb.per_example_gradient(ce, variables, x, labels, wrt=[head], batch_size=3), want, dtype)


@pytest.mark.parametrize("name,dtype_", [("mlp", "float64"), ("cnn", "float32")])
def test_loss_gradient_expected_equals_sum_over_classes(name, dtype_):
    with jax.enable_x64(dtype_ == "float64"):
        _check_expected(name, dtype_)


def _check_expected(name, dtype):
    model, variables, x = make(name, dtype)
    head = HEAD[name]
    probs = jax.nn.softmax(model.apply(variables, x), -1)
    c = probs.shape[1]
    rows = [jnp.stack([jnp.sqrt(probs[i, y]) * ce_grad(model, variables, x[i], y, head)
                       for y in range(c)]) for i in range(N)]
    want = jnp.stack(rows)  # [n, C, P]
    got = emb.loss_gradient(model, variables, x, mode="expected", flatten=False, batch_size=3)
    close(got, want, dtype)
    flat = emb.loss_gradient(model, variables, x, mode="expected", batch_size=3)
    close(flat, want.reshape(N, -1), dtype)
    # <phi(x), phi(x)> = E_{y~p} ||grad l_y(x)||^2
    sq = [sum(float(probs[i, y]) * float(jnp.sum(ce_grad(model, variables, x[i], y, head) ** 2))
              for y in range(c)) for i in range(N)]
    close(jnp.sum(flat**2, axis=1), np.array(sq), dtype)


def test_loss_gradient_features_fn_with_explicit_head(dtype):
    model, variables, x = make("mlp", dtype)
    p = variables["params"]["Dense_2"]
    feats = lambda v, xb: ref_penultimate("mlp", model, v, xb)  # noqa: E731
    for mode in ["argmax", "expected"]:
        auto = emb.loss_gradient(model, variables, x, mode=mode)
        given = emb.loss_gradient(feats, variables, x, mode=mode, head=(p["kernel"], p["bias"]))
        close(given, auto, dtype)
    # Without a bias: only the kernel rows of the argmax gradient remain.
    nobias = emb.loss_gradient(feats, variables, x, head=(p["kernel"], None))
    h = ref_penultimate("mlp", model, variables, x)
    z = h @ p["kernel"]
    r = jax.nn.softmax(z, -1) - jax.nn.one_hot(jnp.argmax(z, -1), 3, dtype=z.dtype)
    close(nobias, jnp.einsum("ih,ic->ihc", h, r).reshape(N, -1), dtype)


def test_per_example_gradient_all_params_unlabeled():
    model, variables, x = make("mlp", "float32")
    loss = lambda v, xb: jnp.sum(model.apply(v, xb) ** 2)  # noqa: E731
    got = emb.per_example_gradient(loss, variables, x, batch_size=3)
    want = jnp.stack([jnp.concatenate([a.ravel() for a in jax.tree_util.tree_leaves(
        jax.grad(lambda v: loss(v, x[i:i + 1]))(variables))]) for i in range(N)])
    close(got, want, "float32")


# ---------------------------------------------------------------------------- NNX


def test_nnx_adapter_ntk_and_features():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.body = nnx.Linear(6, 5, rngs=rngs)
            self.head = nnx.Linear(5, 3, rngs=rngs)

        def features(self, x):
            return nnx.tanh(self.body(x))

        def __call__(self, x):
            return self.head(self.features(x))

    net = Net(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (N, 6))
    apply_fn, params = emb.nnx_apply(net)
    phi = emb.ntk(apply_fn, params, x, wrt=["head"], batch_size=3)
    h = jnp.tanh(x @ net.body.kernel[...] + net.body.bias[...][None])
    # The head's Jacobian row for output o is [e_o, h ⊗ e_o]: Θ = Σ_o (1 + h·h').
    want = (1.0 + h @ h.T) * 3
    close(phi @ phi.T, want, "float32")
    feats_fn, params = emb.nnx_apply(net, method="features")
    close(emb.last_layer(feats_fn, params, x), h, "float32")
    got = emb.loss_gradient(feats_fn, params, x, head=(net.head.kernel[...], net.head.bias[...]))
    ce = lambda v, xb, yb: -jax.nn.log_softmax(apply_fn(v, xb))[0, yb[0]]  # noqa: E731
    pred = jnp.argmax(apply_fn(params, x), -1)
    close(got, emb.per_example_gradient(ce, params, x, pred, wrt="head"), "float32")


# ---------------------------------------------------------------------------- bad input


def test_wrong_example_shape_names_x_and_both_shapes():
    model, variables, _ = make("cnn", "float32")
    images = jnp.ones((5, 28, 28))
    with pytest.raises(ValueError, match=r"`x`.*\(28, 28\).*\(8, 8, 1\)"):
        emb.last_layer(model, variables, images, input_shape=(8, 8, 1))
    for call in [
        lambda: emb.last_layer(model, variables, images),
        lambda: emb.ntk(model.apply, variables, images),
        lambda: emb.loss_gradient(model, variables, images),
    ]:
        with pytest.raises(ValueError, match=r"`x` \(shape \(5, 28, 28\)"):
            call()


@pytest.mark.parametrize("bad", [jnp.ones((0, 6)), jnp.ones(()), None, np.array(["a", "b"])])
def test_empty_or_malformed_x(bad):
    model, variables, _ = make("mlp", "float32")
    with pytest.raises(ValueError, match="`x`"):
        emb.last_layer(model, variables, bad)
    with pytest.raises(ValueError, match="`x`"):
        emb.ntk(model.apply, variables, bad)


def test_unknown_layer_and_path_list_the_available_names():
    model, variables, x = make("cnn", "float32")
    with pytest.raises(ValueError, match=r"`layer`='Dense_7'.*'Conv_0', 'Conv_1', 'Dense_0'"):
        emb.last_layer(model, variables, x, layer="Dense_7")
    with pytest.raises(ValueError, match=r"`wrt`.*Dense_7.*params/Conv_0/bias"):
        emb.ntk(model.apply, variables, x, wrt=["Dense_0", "Dense_7"])
    with pytest.raises(ValueError, match=r"`wrt`.*selects no"):
        emb.ntk(model.apply, variables, x, wrt=lambda path: False)
    with pytest.raises(ValueError, match=r"`wrt`"):  # a prefix is whole components only
        emb.per_example_gradient(lambda v, xb: 0.0, variables, x, wrt="Dense")


@pytest.mark.parametrize("kwargs,match", [
    (dict(projection_dim=0, key=jax.random.key(0)), "`projection_dim`"),
    (dict(projection_dim=2.5, key=jax.random.key(0)), "`projection_dim`"),
    (dict(projection_dim=4), "`key`"),
    (dict(projection_dim=4, key=7), "`key`"),
    (dict(key=jax.random.key(0)), "`key`"),
    (dict(batch_size=0), "`batch_size`"),
    (dict(projection_dim=4, key=jax.random.key(0), direction_batch_size=-1),
     "`direction_batch_size`"),
])
def test_bad_ntk_options(kwargs, match):
    model, variables, x = make("mlp", "float32")
    with pytest.raises(ValueError, match=match):
        emb.ntk(model.apply, variables, x, **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(mode="entropy"), "`mode`"),
    (dict(mode="labels"), "`labels`"),
    (dict(mode="argmax", labels=np.zeros(N, int)), "`labels`"),
    (dict(labels=np.zeros(N - 1, int)), "`labels`"),
    (dict(labels=np.full(N, 3)), r"`labels`.*\[0, 3\)"),
    (dict(labels=np.zeros(N)), "`labels`.*integer"),
    (dict(head=(jnp.ones((5, 3)), None)), "`head`"),
])
def test_bad_loss_gradient_options(kwargs, match):
    model, variables, x = make("mlp", "float32")
    with pytest.raises(ValueError, match=match):
        emb.loss_gradient(model, variables, x, **kwargs)


def test_features_fn_needs_head_and_scalar_loss():
    model, variables, x = make("mlp", "float32")
    with pytest.raises(ValueError, match="`head`"):
        emb.loss_gradient(lambda v, xb: xb, variables, x)
    with pytest.raises(ValueError, match="`head`.*H=6"):
        emb.loss_gradient(lambda v, xb: xb, variables, x, head=(jnp.ones((5, 3)), jnp.ones(3)))
    with pytest.raises(ValueError, match="`loss_fn` must return a scalar"):
        emb.per_example_gradient(lambda v, xb: model.apply(v, xb), variables, x)
