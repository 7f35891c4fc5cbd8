"""ActiveFT's CPU kernels (XLA FFI) against their XLA forms and NumPy references.

The kernels replace four parts of a CPU step (`activeft_jax/selection/_cpu.py`):
the loss's weights and scatter-add of the features into their prototypes, each
feature's similarity to its own prototype (the pruned step does both in one
pass, and corrects the sums where features changed prototype), the check of the
[N, B] pair bounds, and the refresh of the failing rows' pairs. The check gives
the XLA form's exact booleans; the scatter the bits of a serial float32 sum in
row order; the own
similarities the bits of `_tree_reduce`'s halving tree with every product and
sum rounded; the refresh the dense argmax and sound, tight bounds. The pruned run
equals the dense one bit for bit with them and without them (test_activeft.py),
and a fit picks the same with and without them.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import activeft_jax as aft
from activeft_jax.selection import _cpu
from activeft_jax.selection.prototypes import (_ACOS_ERR, _HORIZON, _acos_lower, _acos_upper, _any,
                                               _margin, _round_down)

# Where no C++ compiler is found the kernels are not built and every step runs the
# XLA forms, which the rest of the suite tests; the fallback tests below run anywhere.
needs_kernels = pytest.mark.skipif(not _cpu.available(), reason="no C++ compiler here")


def _bits(x):
    x = np.asarray(x)
    return x.view(np.int32) if x.dtype == np.float32 else x


SHAPES = [(2000, 384, 400), (1000, 383, 37), (7, 1, 5), (513, 96, 150), (3, 2, 1), (100, 8, 1000)]


def _grad_problem(m, d, b, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, d)).astype(np.float32)
    p = rng.standard_normal((b, d)).astype(np.float32)
    c = rng.integers(0, b, m).astype(np.int32)
    c[: m // 5] = 0                       # one crowded prototype, some empty ones
    a = (rng.standard_normal(b) + 3).astype(np.float32)
    return x, p, c, a, np.float32(0.07)


def _weights(s, c, a, tau):
    # An independent form of the loss's weights: a - s / τ in float32 (as the kernels
    # and XLA round it), the sigmoid in float64.
    t = (a[np.clip(c, 0, a.size - 1)] - np.asarray(s, np.float32) / tau).astype(np.float64)
    return 1 / (1 + np.exp(-t))


@needs_kernels
@pytest.mark.parametrize("m,d,b", SHAPES)
def test_grad_rows_is_the_serial_scatter(m, d, b):
    x, _, c, a, tau = _grad_problem(m, d, b, m + d + b)
    c[1::11] = -1                         # rows outside [0, B) add nothing
    c[2::13] = b
    s = np.random.default_rng(m).uniform(-1, 1, m).astype(np.float32)
    w, got = jax.jit(_cpu.grad_rows)(x, s, c, a, tau)
    np.testing.assert_allclose(w, _weights(s, c, a, tau), rtol=4 * np.finfo(np.float32).eps)
    coef = -(np.asarray(w) / tau)

    def xla(x, coef, c):
        c = jnp.where((c >= 0) & (c < b), c, b)       # (.at would wrap a negative index)
        return jnp.zeros((b, d), jnp.float32).at[c].add(coef[:, None] * x, mode="drop")

    np.testing.assert_array_equal(_bits(got), _bits(jax.jit(xla)(x, coef, c)))
    # And against an independent serial sum in NumPy (row order, float32 each step).
    ref = np.zeros((b, d), np.float32)
    for i in range(m):
        if 0 <= c[i] < b:
            ref[c[i]] = ref[c[i]] + coef[i] * x[i]
    np.testing.assert_array_equal(_bits(got), _bits(ref))


@needs_kernels
@pytest.mark.parametrize("m,d,b", SHAPES)
def test_own_sims_grad_is_own_sims_then_grad_rows(m, d, b):
    x, p, c, a, tau = _grad_problem(m, d, b, m + d + b + 2)
    s, w, g = jax.jit(_cpu.own_sims_grad)(x, p, c, a, tau)
    np.testing.assert_array_equal(_bits(s), _bits(jax.jit(_cpu.own_sims_kernel)(x, p, c)))
    w2, g2 = jax.jit(_cpu.grad_rows)(x, s, c, a, tau)
    np.testing.assert_array_equal(_bits(w), _bits(w2))
    np.testing.assert_array_equal(_bits(g), _bits(g2))


@needs_kernels
@pytest.mark.parametrize("m,d,b", SHAPES)
def test_fix_grad_gives_grad_rows_of_the_new_assignment(m, d, b):
    x, p, c0, a, tau = _grad_problem(m, d, b, m + d + b + 3)
    rng = np.random.default_rng(m + 3)
    spec = jax.jit(_cpu.own_sims_grad)(x, p, c0, a, tau)
    fix = jax.jit(_cpu.fix_grad)
    own = jax.jit(_cpu.own_sims_kernel)
    for share in (0.0, 0.01, 0.2, 1.0):
        c = c0.copy()
        moved = rng.random(m) < share
        c[moved] = rng.integers(0, b, moved.sum())
        s = np.array(own(x, p, c))
        if share == 0.01 and m > 1:
            s[m // 2] = np.nextafter(s[m // 2], np.float32(2))   # a similarity alone changed
        w, g = fix(x, s, c, a, tau, spec[0], c0, spec[1], spec[2])
        w2, g2 = jax.jit(_cpu.grad_rows)(x, s, c, a, tau)
        np.testing.assert_array_equal(_bits(w), _bits(w2))
        np.testing.assert_array_equal(_bits(g), _bits(g2))
        if share == 0.0:
            np.testing.assert_array_equal(_bits(g), _bits(spec[2]))


def _numpy_tree(x, p, c):
    """An independent NumPy form of the own similarities: the d float32 products, then
    the first half plus the second, an odd last element carried, until one is left
    (float32 each step). Returns [m, 1]."""
    v = x * p[c]
    while v.shape[1] > 1:
        h = v.shape[1] // 2
        v = np.concatenate([v[:, :h] + v[:, h:2 * h], v[:, 2 * h:]], axis=1)
    return v


@needs_kernels
@pytest.mark.parametrize("m,d,b", SHAPES)
def test_own_sims_is_the_halving_tree(m, d, b):
    from activeft_jax.selection.prototypes import _own_similarities, _own_similarity

    rng = np.random.default_rng(m + d + b + 1)
    x = rng.standard_normal((m, d)).astype(np.float32)
    p = rng.standard_normal((b, d)).astype(np.float32)
    c = rng.integers(0, b, m).astype(np.int32)
    got = jax.jit(_cpu.own_sims_kernel)(x, p, c)
    v = _numpy_tree(x, p, c)
    np.testing.assert_array_equal(_bits(got), _bits(v[:, 0]))
    # The library's forms take it on CPU, whole or in blocks, chunked or not.
    for form in (lambda x, p, c: _own_similarity(x, p, c),
                 lambda x, p, c: _own_similarities(x, p, c, 64),
                 lambda x, p, c: _own_similarity(x[: m // 2], p, c[: m // 2])):
        out = np.asarray(jax.jit(form)(x, p, c))
        np.testing.assert_array_equal(_bits(out), _bits(v[: out.shape[0], 0]))
    # Within round-off of float64.
    exact = np.einsum("ij,ij->i", x.astype(np.float64), p[c].astype(np.float64))
    scale = np.abs(x).max() * np.abs(p).max() * d
    np.testing.assert_allclose(np.asarray(got), exact, rtol=0, atol=1e-6 * scale)


@needs_kernels
@pytest.mark.parametrize("d", [3, 63, 64, 65, 127, 128, 129, 130, 256, 512, 576, 768, 1000, 1024])
def test_own_sims_tree_at_every_width(d):
    # The kernel compiles the tree for some widths (every level in registers) and
    # runs the others by a loop down to 64 values; both give the tree's bits, in the
    # plain pass and in the fused one with the gradient.
    rng = np.random.default_rng(d)
    m, b = 300, 7
    x = rng.standard_normal((m, d)).astype(np.float32)
    p = rng.standard_normal((b, d)).astype(np.float32)
    c = rng.integers(0, b, m).astype(np.int32)
    want = _bits(_numpy_tree(x, p, c)[:, 0])
    np.testing.assert_array_equal(_bits(jax.jit(_cpu.own_sims_kernel)(x, p, c)), want)
    a = rng.standard_normal(b).astype(np.float32)
    s, _, _ = jax.jit(_cpu.own_sims_grad)(x, p, c, a, np.float32(0.07))
    np.testing.assert_array_equal(_bits(s), want)


@needs_kernels
@pytest.mark.parametrize("m,d,b", SHAPES)
def test_open_rows_is_the_xla_check(m, d, b):
    rng = np.random.default_rng(m * b)
    gap = (rng.random((m, b)) * 2).astype(np.float16)
    gap[rng.random((m, b)) < 0.1] = np.inf
    travel = (rng.random(b) * 0.5).astype(np.float32)
    limit = (rng.random(m) * 0.3 - 0.4).astype(np.float32)
    # Exact ties (gap - travel == limit, open) on some rows.
    i = rng.integers(0, m, max(1, m // 10))
    k = rng.integers(0, b, i.size)
    limit[i] = gap[i, k].astype(np.float32) - travel[k]

    def xla(g, t, l):
        return _any(g - t[None, :] <= l[:, None], axis=1), jnp.full(l.shape, -jnp.inf, l.dtype)

    psi = np.float32(0.25)
    unread = np.full(m, -np.inf, np.float32)  # every row read
    got, rowmin = jax.jit(lambda g, t, l, r, p: _cpu.open_rows(g, t, l, r, p, xla))(
        gap, travel, limit, unread, psi)
    got, rowmin = np.asarray(got), np.asarray(rowmin)
    want = np.asarray(jax.jit(xla)(gap, travel, limit)[0])
    np.testing.assert_array_equal(got, want)
    diff = gap.astype(np.float32) - travel[None, :]
    ref = np.any(diff <= limit[:, None], axis=1)
    np.testing.assert_array_equal(got, ref)
    assert 0 < got.sum() or m * b < 50   # both outcomes occur
    # The rows read and not open keep their smallest gap - travel, plus psi; open ones -inf.
    np.testing.assert_array_equal(rowmin, np.where(ref, -np.inf, diff.min(axis=1) + psi))


@needs_kernels
def test_open_rows_skips_only_rows_that_cannot_open():
    # After a step in which every prototype turned by at most the growth of psi, a row
    # whose bound was read before either is skipped (and cannot be open) or is read.
    rng = np.random.default_rng(11)
    m, b = 3000, 40
    gap = (rng.random((m, b)) * 2 + 1).astype(np.float16)
    travel0 = (rng.random(b) * 0.2).astype(np.float32)
    limit = (rng.random(m) * 1.2).astype(np.float32)
    xla = lambda g, t, l: (_any(g - t[None, :] <= l[:, None], axis=1),  # noqa: E731
                           jnp.full(l.shape, -jnp.inf, l.dtype))
    run = jax.jit(lambda g, t, l, r, p: _cpu.open_rows(g, t, l, r, p, xla))
    psi0 = np.float32(1.0)
    open0, rowmin = run(gap, travel0, limit, np.full(m, -np.inf, np.float32), psi0)
    turn = (rng.random(b) * 0.05).astype(np.float32)
    travel1 = travel0 + turn
    psi1 = np.nextafter(psi0 + turn.max() + travel1.max() * np.finfo(np.float32).eps, np.float32(np.inf))
    open1, rowmin1 = run(gap, travel1, limit, rowmin, psi1)
    open1, rowmin1, rowmin = np.asarray(open1), np.asarray(rowmin1), np.asarray(rowmin)
    diff = gap.astype(np.float32) - travel1[None, :]
    ref = np.any(diff <= limit[:, None], axis=1)
    np.testing.assert_array_equal(open1, ref)          # skipping changes no answer
    # The kernel's rule: skip when rowmin - psi - limit exceeds a slack for round-off.
    with np.errstate(invalid="ignore"):
        head = (rowmin - psi1) - limit
    slack = 1e-5 + 8 * np.finfo(np.float32).eps * (np.abs(rowmin) + psi1 + np.abs(limit))
    skipped = head > slack
    assert 0.2 < skipped.mean() < 0.95 and not ref[skipped].any()
    np.testing.assert_array_equal(rowmin1[skipped], rowmin[skipped])
    read = ~skipped
    np.testing.assert_array_equal(rowmin1[read],
                                  np.where(ref, -np.inf, diff.min(axis=1) + psi1)[read])


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _refresh_problem(m, d, b):
    rng = np.random.default_rng(m + 3 * d + 7 * b)
    x = _unit(rng.standard_normal((m, d))).astype(np.float32)
    p = _unit(rng.standard_normal((b, d))).astype(np.float32)
    if b > 2:
        p[1] = p[0]                      # two prototypes alike: near ties
    sims = x.astype(np.float64) @ p.astype(np.float64).T
    angle = np.arccos(np.clip(sims, -1, 1))
    rows = np.arange(m)
    c = np.argmax(sims, axis=1).astype(np.int32)         # mostly the best prototype already
    other = rng.random(m) < 0.2
    c[other] = rng.integers(0, b, other.sum())
    own = sims[rows, c].astype(np.float32)
    travel = (rng.random(b) * 0.05).astype(np.float32)
    # Sound bounds from an earlier step: the angle less a random slack, plus the travel.
    slack = rng.random((m, b)) * rng.choice([0.01, 0.1, 0.4], (m, 1))
    gap = np.array(_round_down(jnp.asarray(angle - slack + travel, jnp.float32), jnp.float16))
    gap[rows, c] = np.inf
    margin = _margin(jnp.float32)
    limit = np.asarray(_acos_upper(jnp.asarray(own) - margin))
    fail = np.any(gap.astype(np.float32) - travel[None, :] <= limit[:, None], axis=1)
    fail[::5] = False                    # rows the check passed are left alone
    return x, p, sims, angle, c, own, travel, gap, margin, limit, fail


def _refresh(x, p, gap, travel, limit, own, c, fail, margin, amx_min=0):
    out = jax.jit(lambda g: _cpu.refresh_pairs(
        x, p, g, travel, limit, own, c, fail, horizon=_HORIZON, margin=margin,
        acos_err=_ACOS_ERR, pad=16, amx_min=amx_min))(gap)
    return [np.asarray(v) for v in out]


@needs_kernels
@pytest.mark.parametrize("m,d,b", SHAPES)
def test_refresh_pairs_scores_the_pairs_near_opening_and_keeps_the_bounds_sound(m, d, b):
    x, p, sims, angle, c, own, travel, gap, margin, limit, fail = _refresh_problem(m, d, b)
    rows = np.arange(m)
    new_gap, new_c, touched, ties, counts, work = _refresh(x, p, gap, travel, limit, own, c,
                                                           fail, margin)

    # The pairs scored: every pair of a failing row within the horizon of opening.
    reach = (limit + np.float32(_HORIZON)).astype(np.float32)
    scored = (gap.astype(np.float32) - travel[None, :] <= reach[:, None]) & fail[:, None]
    scored[rows, c] = False
    tied = np.isin(rows, ties[:counts[1]])
    assert work == scored[~tied].sum()   # (near ties: the caller scores their whole rows)
    # The decision, from the exact similarities: the best scored pair against the own one.
    best = np.where(scored, sims, -np.inf).max(axis=1)
    second = np.sort(np.where(scored, sims, -np.inf), axis=1)[:, -2] if b > 1 else np.full(m, -np.inf)
    win = best > own
    runner = np.where(win, np.maximum(second, own), best)
    gap_ = np.maximum(best, own) - runner
    tie = fail & (runner > -np.inf) & (gap_ <= margin)
    clear = fail & ~((runner > -np.inf) & (np.abs(gap_ - margin) < 1e-6))  # away from the edge
    np.testing.assert_array_equal(np.isin(rows, ties[:counts[1]])[clear], tie[clear])
    moved = fail & ~tie & win
    want_touched = np.sort(np.nonzero((moved | tie) & clear)[0])
    got_touched = touched[:counts[0]]
    assert np.all(np.diff(got_touched) > 0) and np.all(touched[counts[0]:] == m)
    np.testing.assert_array_equal(np.intersect1d(got_touched, np.nonzero(clear)[0]), want_touched)
    assert np.all(ties[counts[1]:] == m)
    # Rows not failing, and near ties, are left as they were (ties: the caller rescores).
    still = ~fail | np.isin(rows, ties[:counts[1]])
    np.testing.assert_array_equal(new_gap[still], gap[still])
    np.testing.assert_array_equal(new_c[still], c[still])
    # Decided rows take the dense argmax (the sound bounds leave it among the scored pairs).
    done = fail & ~still
    np.testing.assert_array_equal(new_c[done], np.argmax(sims[done], axis=1))
    # Their scored pairs' bounds are sound and within a float16 step of the exact angle's;
    # a row that moved holds the own pair's bound and +inf at its new prototype.
    new = new_gap.astype(np.float64) - travel[None, :]
    ref = np.asarray(_round_down(_acos_lower(jnp.asarray(sims, jnp.float32) + margin)
                                 + travel[None, :], jnp.float16)).astype(np.float64) - travel
    refreshed = scored & done[:, None]
    refreshed[rows, new_c] = False
    was = np.zeros_like(refreshed)
    was[rows[done & (new_c != c)], c[done & (new_c != c)]] = True
    for mask in (refreshed, was):
        assert np.all(new[mask] <= angle[mask])
        ulp = np.spacing(np.abs(new_gap[mask]).astype(np.float16)).astype(np.float64)
        assert np.all(np.abs(new[mask] - ref[mask]) <= ulp + 1e-6)
    assert np.all(np.isinf(new_gap[rows[done], new_c[done]]))
    untouched = ~(refreshed | was)
    untouched[rows[done], new_c[done]] = False
    np.testing.assert_array_equal(new_gap[untouched], gap[untouched])
    if m * b > 1000:
        assert done.sum() > 0 and moved.sum() > 0 and refreshed.sum() < scored.size / 2


needs_amx = pytest.mark.skipif(not _cpu.amx_usable(),
                               reason="no matrix unit (AMX) on this CPU, or not granted")


@needs_amx
@pytest.mark.parametrize("m,d,b", SHAPES)
def test_refresh_pairs_on_the_matrix_unit_decides_alike_with_sound_tight_bounds(m, d, b):
    # amx_min=1: every failing row goes to the matrix unit (each has an open pair).
    x, p, sims, angle, c, own, travel, gap, margin, limit, fail = _refresh_problem(m, d, b)
    rows = np.arange(m)
    pairs = _refresh(x, p, gap, travel, limit, own, c, fail, margin)
    wide = _refresh(x, p, gap, travel, limit, own, c, fail, margin, amx_min=1)
    # The same decisions: assignments, moved and tied rows.
    for got, want in zip(wide[1:5], pairs[1:5]):
        np.testing.assert_array_equal(got, want)
    new_gap, new_c, touched, ties, counts, work = wide
    tied = np.isin(rows, ties[:counts[1]])
    done = fail & ~tied
    assert work == b * done.sum()        # every similarity of the decided rows, approximated
    # Rows not failing, and near ties, are left as they were.
    np.testing.assert_array_equal(new_gap[~done], gap[~done])
    # The decided rows: every bound sound (below the exact angle), never below the old
    # one, and within the approximation's error of the exact angle's bound; a row that
    # moved holds the own pair's bound (as the pairs give it) and +inf at its new prototype.
    moved = done & (new_c != c)
    new = new_gap[done].astype(np.float64) - travel[None, :]
    finite = np.isfinite(new)
    assert np.all(new[finite] <= angle[done][finite])
    kept = done[:, None] & np.ones((m, b), bool)
    kept[rows[moved], c[moved]] = False                # (+inf before: the own pair)
    assert np.all(new_gap[kept].astype(np.float64) >= gap[kept].astype(np.float64))
    loose = np.asarray(_round_down(_acos_lower(jnp.asarray(sims[done], jnp.float32)
                                               + margin + 0.016) + travel[None, :],
                                   jnp.float16)).astype(np.float64) - travel
    ulp = np.spacing(np.abs(new_gap[done][finite]).astype(np.float16)).astype(np.float64)
    assert np.all(new[finite] >= loose[finite] - ulp - 1e-6)
    assert np.all(np.isinf(new_gap[rows[done], new_c[done]]))
    np.testing.assert_array_equal(new_gap[rows[moved], c[moved]], pairs[0][rows[moved], c[moved]])
    if m * b > 1000:
        assert moved.sum() > 0 and (~finite).sum() == done.sum()


@needs_amx
def test_fits_pick_the_same_with_and_without_the_matrix_unit(monkeypatch):
    # Standard-normal features: many rows with many pairs near opening in the early steps.
    feats = np.random.default_rng(3).standard_normal((3000, 96)).astype(np.float32)
    fits = {}
    for amx in ("0", "1"):
        monkeypatch.setenv("ACTIVEFT_JAX_AMX", amx)      # (read when a fit is set up)
        fits[amx] = aft.selection.fit_activeft(feats, k=160, key=jax.random.key(0), steps=60,
                                              prune=True)
    a, b = fits["0"], fits["1"]
    np.testing.assert_array_equal(a.selection.indices, b.selection.indices)
    np.testing.assert_array_equal(_bits(a.losses), _bits(b.losses))
    np.testing.assert_array_equal(_bits(a.prototypes), _bits(b.prototypes))
    # The matrix unit ran: its rows count all B similarities as computed.
    assert float(b.recomputed.sum()) > float(a.recomputed.sum())
    dense = aft.selection.fit_activeft(feats, k=160, key=jax.random.key(0), steps=60,
                                       prune=False)
    np.testing.assert_array_equal(dense.selection.indices, b.selection.indices)
    np.testing.assert_array_equal(_bits(dense.prototypes), _bits(b.prototypes))


@needs_kernels
def test_a_step_calls_the_kernels_on_cpu():
    feats = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    solver = aft.selection.activeft_solver(feats, k=12, key=jax.random.key(0), prune=True)
    state = solver.init()
    hlo = jax.jit(lambda s: solver.step(s)).lower(state).compile().as_text()
    for target in ("afj_own_sims_grad", "afj_fix_grad", "afj_own_sims", "afj_open_rows",
                   "afj_refresh_pairs"):
        assert target in hlo, target
    assert "afj_grad_rows" not in hlo
    dense = aft.selection.activeft_solver(feats, k=12, key=jax.random.key(0), prune=False)
    hlo = jax.jit(lambda s: dense.step(s)).lower(dense.init()).compile().as_text()
    assert "afj_grad_rows" in hlo and "afj_own_sims_grad" not in hlo


@needs_kernels
@pytest.mark.parametrize("prune", [True, False])
def test_fits_pick_the_same_without_the_kernels(prune, monkeypatch):
    # Clustered features (near ties), the kernels against the XLA forms end to end.
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((6, 24))
    feats = (centers[rng.integers(0, 6, 1500)] + 0.4 * rng.standard_normal((1500, 24))
             ).astype(np.float32)
    init = rng.choice(1500, 40, replace=False)
    kw = dict(k=40, init_indices=init, steps=60, chunk_rows=256, prune=prune)
    with_kernels = aft.selection.fit_activeft(feats, **kw)
    jax.clear_caches()
    monkeypatch.setattr(_cpu, "available", lambda: False)
    try:
        without = aft.selection.fit_activeft(feats, **kw)
    finally:
        monkeypatch.undo()
        jax.clear_caches()
    np.testing.assert_array_equal(with_kernels.selection.indices, without.selection.indices)
    # The bits may differ by round-off: XLA:CPU contracts a multiply and an add into
    # one fused multiply-add in some fusions of its scatter and not in others, the
    # kernel never (so its bits do not depend on how XLA fuses a program).
    protos_k, protos_x = np.asarray(with_kernels.prototypes), np.asarray(without.prototypes)
    np.testing.assert_allclose(protos_k, protos_x, rtol=0, atol=1e-5 * np.abs(protos_x).max())
    losses_x = np.asarray(without.losses)
    np.testing.assert_allclose(with_kernels.losses, losses_x, rtol=0,
                               atol=1e-5 * np.abs(losses_x).max())


def test_without_a_compiler_the_xla_forms_run_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(_cpu, "_state", {})
    monkeypatch.setenv("ACTIVEFT_JAX_CACHE", str(tmp_path))
    monkeypatch.setattr(_cpu, "_compiler", lambda: None)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert _cpu.available() is False
    assert not list(tmp_path.iterdir())
    # Switched off by the environment: no warning.
    monkeypatch.setattr(_cpu, "_state", {})
    monkeypatch.setenv("ACTIVEFT_JAX_CPU_KERNELS", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _cpu.available() is False


def test_a_broken_build_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(_cpu, "_state", {})
    monkeypatch.setenv("ACTIVEFT_JAX_CACHE", str(tmp_path))
    bad = tmp_path / "bad.cc"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(_cpu, "_SOURCE", bad)
    with pytest.warns(RuntimeWarning, match="failed"):
        assert _cpu.available() is False
    assert not list(tmp_path.glob("*.so"))   # no half-written library left behind
