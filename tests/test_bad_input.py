"""Every bad input raises a ValueError naming the argument and shape, before tracing;
the CLI turns each into one line on stderr and exit status 2."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import activeft_jax as aft
from activeft_jax import cli
from helpers import count_traces

POOL = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
TARGET = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
KEY = jax.random.key(0)


def _with_nan(x, i=2, j=1, value=np.nan):
    x = x.copy()
    x[i, j] = value
    return x


BAD = [
    # (description, call, regex the message must match)
    ("pool rank 1", lambda: aft.select("vtl", POOL[0], TARGET, k=2), r"`pool` must have shape \[n, d\].*\(4,\)"),
    ("pool rank 3", lambda: aft.select("vtl", POOL[None], TARGET, k=2), r"`pool`.*\(1, 20, 4\)"),
    ("target rank 1", lambda: aft.select("vtl", POOL, TARGET[0], k=2), r"`target`.*\(4,\)"),
    ("d mismatch", lambda: aft.select("itl", POOL, TARGET[:, :3], k=2), r"`target` has embedding dimension 3 \(shape \(3, 3\)\).*`pool` has 4"),
    ("k > N", lambda: aft.select("ctl", POOL, TARGET, k=21), r"1 <= k <= N=20.*k=21"),
    ("k < 1", lambda: aft.select("mmitl", POOL, TARGET, k=0), r"1 <= k <= N=20.*k=0"),
    ("k float", lambda: aft.select("vtl", POOL, TARGET, k=2.0), r"`k` must be a Python int"),
    ("k array", lambda: aft.select("vtl", POOL, TARGET, k=jnp.asarray(2)), r"`k` must be a Python int"),
    ("NaN pool", lambda: aft.select("vtl", _with_nan(POOL), TARGET, k=2), r"`pool` \(shape \(20, 4\)\) contains NaN or inf, first at index \(2, 1\)"),
    ("inf pool", lambda: aft.select("undirected_itl", _with_nan(POOL, value=np.inf), k=2), r"`pool`.*NaN or inf"),
    ("NaN target", lambda: aft.select("itl", POOL, _with_nan(TARGET, 0, 0), k=2), r"`target` \(shape \(3, 4\)\) contains NaN"),
    ("noise 0", lambda: aft.select("vtl", POOL, TARGET, k=2, noise_std=0.0), r"`noise_std` must be finite and > 0; got 0.0"),
    ("noise < 0", lambda: aft.select("itl", POOL, TARGET, k=2, noise_std=-1.0), r"`noise_std`.*> 0"),
    ("noise NaN", lambda: aft.select("ctl", POOL, TARGET, k=2, noise_std=float("nan")), r"`noise_std`"),
    ("noise vector", lambda: aft.select("vtl", POOL, TARGET, k=2, noise_std=np.ones(3)), r"`noise_std` must be a scalar; got shape \(3,\)"),
    ("empty target", lambda: aft.select("vtl", POOL, TARGET[:0], k=2), r"`target` is empty \(shape \(0, 4\)\)"),
    ("missing target", lambda: aft.select("itl", POOL, None, k=2), r"needs a `target`"),
    ("missing target cosine", lambda: aft.select("cosine", POOL, k=2), r"needs a `target`"),
    ("missing pool", lambda: aft.select("vtl", None, TARGET, k=2), r"needs a `pool`"),
    ("string pool", lambda: aft.select("vtl", np.array([["a", "b"]]), TARGET, k=1), r"`pool` must hold real numbers"),
    ("complex pool", lambda: aft.select("vtl", POOL.astype(complex), TARGET, k=1), r"`pool` must hold real numbers"),
    ("empty pool", lambda: aft.select("undirected_itl", np.zeros((0, 4)), k=1), r"`pool` must have at least one row"),
    ("unknown strategy", lambda: aft.select("nope", POOL, TARGET, k=2), r"unknown strategy 'nope'"),
    ("unknown option", lambda: aft.select("vtl", POOL, TARGET, k=2, foo=1), r"does not take option\(s\) \['foo'\]"),
    ("missing key", lambda: aft.select("random", POOL, k=2), r"needs `key`"),
    ("missing key maxdist", lambda: aft.select("maxdist", POOL, k=2), r"needs `key`"),
    ("missing probs", lambda: aft.select("max_entropy", POOL, k=2), r"needs `probs`"),
    ("probs rows", lambda: aft.select("information_density", POOL, TARGET, probs=np.full((5, 2), 0.5), k=2), r"`probs` must have one row per pool point.*\(5, 2\)"),
    ("probs negative", lambda: aft.select("max_entropy", probs=np.array([[1.5, -0.5]]), k=1), r"negative entries"),
    ("probs logits", lambda: aft.select("max_entropy", probs=np.array([[2.0, 3.0]]), k=1), r"must sum to 1"),
    ("rbf weight space", lambda: aft.select("vtl", POOL, TARGET, k=2, kernel="rbf", space="weight"), r"feature map"),
    ("rbf prior_cov", lambda: aft.select("vtl", POOL, TARGET, k=2, kernel="rbf", prior_cov=np.eye(POOL.shape[1])), r"feature map"),
    ("unknown kernel", lambda: aft.select("vtl", POOL, TARGET, k=2, kernel="poly"), r"unknown kernel"),
    ("bad formulation", lambda: aft.select("itl", POOL, TARGET, k=2, formulation="x"), r"`formulation`"),
    ("bad space", lambda: aft.select("vtl", POOL, TARGET, k=2, space="x"), r"`space`"),
]


@pytest.mark.parametrize("desc,call,pattern", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_value_error_before_tracing(desc, call, pattern):
    with count_traces("_greedy_full") as traced, pytest.raises(ValueError, match=pattern):
        call()
    assert traced.count == 0  # nothing was traced


def test_shape_errors_also_raise_under_jit_and_vmap():
    with pytest.raises(ValueError, match="embedding dimension"):
        jax.jit(lambda P, T: aft.select("vtl", P, T, k=2))(POOL, TARGET[:, :2])
    with pytest.raises(ValueError, match="1 <= k <= N=20"):
        jax.vmap(lambda s: aft.select("vtl", POOL, TARGET, k=30, noise_std=s))(jnp.ones(2))


def test_select_under_jit_with_a_closed_over_pool():
    """Concrete arrays closed over under jit are still checked, and a clean one works."""
    pool, target = jnp.asarray(POOL), jnp.asarray(TARGET)
    grid = jnp.asarray([0.5, 1.0])
    got = jax.jit(jax.vmap(lambda s: aft.select("vtl", pool, target, k=3, noise_std=s).indices))(grid)
    want = [aft.select("vtl", POOL, TARGET, k=3, noise_std=float(s)).indices for s in grid]
    np.testing.assert_array_equal(np.asarray(got), np.stack([np.asarray(w) for w in want]))
    bad = pool.at[2, 1].set(jnp.nan)
    with pytest.raises(ValueError, match=r"contains NaN or inf, first at index \(2, 1\)"):
        jax.jit(lambda s: aft.select("vtl", bad, target, k=3, noise_std=s).indices)(1.0)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture()
def files(tmp_path):
    np.save(tmp_path / "pool.npy", POOL)
    np.save(tmp_path / "target.npy", TARGET)
    np.savez(tmp_path / "both.npz", pool=POOL, target=TARGET)
    np.save(tmp_path / "nan.npy", _with_nan(POOL))
    np.save(tmp_path / "vec.npy", POOL[0])
    np.save(tmp_path / "text.npy", np.array([["a", "b"]]))
    (tmp_path / "pool.csv").write_text("1,2\n")
    np.save(tmp_path / "init2.npy", np.array([0, 1]))
    return tmp_path


CLI_BAD = [
    ("no target", "--strategy vtl --pool {d}/pool.npy --k 2", "needs --target"),
    ("no pool", "--strategy vtl --target {d}/target.npy --k 2", "--pool is required"),
    ("missing file", "--strategy vtl --pool {d}/none.npy --target {d}/target.npy --k 2", "no such file"),
    ("npz lacks array", "--strategy vtl --pool {d}/both.npz --target {d}/pool.npy --k 2 --probs {d}/both.npz", "has no array named 'probs'"),
    ("bad extension", "--strategy vtl --pool {d}/pool.csv --target {d}/target.npy --k 2", "expected a .npy or .npz"),
    ("k too big", "--strategy vtl --pool {d}/pool.npy --target {d}/target.npy --k 99", "1 <= k <= N=20"),
    ("k zero", "--strategy itl --pool {d}/both.npz --target {d}/both.npz --k 0", "1 <= k <= N=20"),
    ("k not int", "--strategy itl --pool {d}/both.npz --target {d}/both.npz --k two", "invalid int value"),
    ("nan", "--strategy vtl --pool {d}/nan.npy --target {d}/target.npy --k 2", "contains NaN or inf"),
    ("rank", "--strategy vtl --pool {d}/vec.npy --target {d}/target.npy --k 2", "must have shape"),
    ("dim", "--strategy vtl --pool {d}/pool.npy --target {d}/vec.npy --k 2", "`target` must have shape"),
    ("noise", "--strategy vtl --pool {d}/pool.npy --target {d}/target.npy --k 2 --noise-std 0", "noise_std"),
    ("strings", "--strategy vtl --pool {d}/text.npy --target {d}/target.npy --k 2", "expected real numbers"),
    ("strategy", "--strategy nope --pool {d}/pool.npy --k 2", "invalid choice"),
    ("no k", "--strategy vtl --pool {d}/pool.npy --target {d}/target.npy", "required: --k"),
    ("bad out", "--strategy vtl --pool {d}/pool.npy --target {d}/target.npy --k 2 --out /nonexistent/x.json", "cannot write"),
    ("activeft B > N", "--strategy activeft --pool {d}/pool.npy --k 21", "1 <= k <= N=20"),
    ("activeft tau", "--strategy activeft --pool {d}/pool.npy --k 3 --temperature 0", "`temperature` must be finite and > 0"),
    ("activeft nan", "--strategy activeft --pool {d}/nan.npy --k 3", "contains NaN or inf"),
    ("activeft init shape", "--strategy activeft --pool {d}/pool.npy --k 3 --init-indices {d}/init2.npy", "`init_indices` must have shape [3]"),
    ("activeft init file", "--strategy activeft --pool {d}/pool.npy --k 3 --init-indices {d}/none.json", "no such file"),
    ("activeft init floats", "--strategy activeft --pool {d}/pool.npy --k 3 --init-indices {d}/pool.npy", "expected a list of integer indices"),
    ("activeft batch", "--strategy activeft --pool {d}/pool.npy --k 3 --batch-size 50", "`batch_size` must be an int in [1, N=20]"),
    ("probcover delta", "--strategy probcover --pool {d}/pool.npy --k 3 --delta -1", "`delta` must be finite and > 0"),
    ("kmeans iters", "--strategy kmeans --pool {d}/pool.npy --k 3 --iters -2", "`iters` must be"),
]


@pytest.mark.parametrize("desc,args,message", CLI_BAD, ids=[c[0] for c in CLI_BAD])
def test_cli_bad_input_is_one_line_and_exit_2(files, capsys, desc, args, message):
    code = cli.main(["select"] + args.format(d=files).split())
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_as_a_subprocess_one_line_no_traceback(files):
    """The installed entry point: a targeted rule without --target exits 2, one line."""
    proc = subprocess.run(
        [sys.executable, "-m", "activeft_jax.cli", "select", "--strategy", "itl",
         "--pool", str(files / "pool.npy"), "--k", "3"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "needs --target" in proc.stderr


def test_cli_writes_the_library_selection(files, capsys):
    out = files / "sel.json"
    code = cli.main(["select", "--strategy", "vtl", "--pool", str(files / "both.npz"),
                     "--target", str(files / "both.npz"), "--k", "5", "--noise-std", "0.7",
                     "--allow-repeats", "--out", str(out)])
    assert code == 0
    got = json.loads(out.read_text())
    assert set(got) == {"indices", "values"}
    ref = aft.select("vtl", POOL, TARGET, k=5, noise_std=0.7, allow_repeats=True)
    assert got["indices"] == [int(i) for i in ref.indices]
    np.testing.assert_allclose(got["values"], np.asarray(ref.values), rtol=1e-6)


def test_cli_activeft_and_baselines(files, capsys):
    init = np.array([3, 7, 11, 0])
    np.save(files / "init.npy", init)
    out = files / "aft.json"
    assert cli.main(["select", "--strategy", "activeft", "--pool", str(files / "both.npz"), "--k", "4",
                     "--init-indices", str(files / "init.npy"), "--steps", "12", "--temperature", "0.1",
                     "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    ref = aft.selection.fit_activeft(POOL, k=4, init_indices=init, steps=12, temperature=0.1)
    assert got["indices"] == [int(i) for i in ref.selection.indices]
    assert got["init_indices"] == init.tolist()
    np.testing.assert_allclose(got["losses"], np.asarray(ref.losses), rtol=1e-6)
    (files / "init.json").write_text(json.dumps(init.tolist()))
    assert cli.main(["select", "--strategy", "activeft", "--pool", str(files / "pool.npy"), "--k", "4",
                     "--init-indices", str(files / "init.json"), "--steps", "12", "--temperature", "0.1"]) == 0
    assert json.loads(capsys.readouterr().out)["indices"] == got["indices"]
    for name, extra, kwargs in [("kmeans", ["--iters", "7"], dict(key=jax.random.key(2), iters=7)),
                                ("kmeans_pp", [], dict(key=jax.random.key(2))),
                                ("typiclust", [], dict(key=jax.random.key(2))),
                                ("probcover", ["--delta", "0.9"], dict(delta=0.9))]:
        assert cli.main(["select", "--strategy", name, "--pool", str(files / "pool.npy"), "--k", "3",
                         "--seed", "2"] + extra) == 0
        got = json.loads(capsys.readouterr().out)
        assert got["indices"] == [int(i) for i in aft.select(name, POOL, k=3, **kwargs).indices], name


def test_cli_x64_normalize_seed_and_stdout(files, capsys):
    assert cli.main(["select", "--strategy", "maxdist", "--pool", str(files / "pool.npy"),
                     "--k", "4", "--seed", "3", "--normalize", "--x64"]) == 0
    got = json.loads(capsys.readouterr().out)
    with jax.enable_x64(True):
        ref = aft.select("maxdist", POOL.astype(np.float64), k=4, key=jax.random.key(3), normalize=True)
    assert got["indices"] == [int(i) for i in ref.indices]
    assert got["values"][0] is None  # +inf (distance to no center) is written as null
    np.testing.assert_allclose(got["values"][1:], np.asarray(ref.values[1:]), rtol=1e-12)
