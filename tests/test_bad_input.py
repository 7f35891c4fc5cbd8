"""Every bad input raises a ValueError naming the argument and shape, before tracing;
the CLI turns each into one line on stderr and exit status 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
    # numeric options: validation.NUMERIC_OPTIONS, checked by select before the rule runs
    ("beta NaN", lambda: aft.select("information_density", POOL, TARGET, probs=np.full((20, 2), 0.5), k=2, beta=float("nan")), r"`beta` must be finite and >= 0; got nan"),
    ("beta inf", lambda: aft.select("information_density", POOL, TARGET, probs=np.full((20, 2), 0.5), k=2, beta=np.inf), r"`beta` must be finite"),
    ("target_fraction 2", lambda: aft.select("vtl", POOL, TARGET, k=2, target_fraction=2.0), r"`target_fraction` must be finite and in \(0, 1\]"),
    ("iters huge", lambda: aft.select("kmeans", POOL, k=2, key=KEY, iters=2**40), r"`iters` must be an int >= 0 and <= 2\^31 - 1"),
    ("iters bool", lambda: aft.select("kmeans", POOL, k=2, key=KEY, iters=True), r"`iters` must be an int"),
    ("delta inf", lambda: aft.select("probcover", POOL, k=2, delta=np.inf), r"`delta` must be finite and > 0; got inf"),
    ("lengthscale 0", lambda: aft.select("vtl", POOL, TARGET, k=2, kernel=aft.kernels.get_kernel("rbf", 0.0)), r"`lengthscale`"),
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


def test_numpy_closed_over_under_jit_is_checked_and_works():
    """NumPy arrays (and concrete index arrays) closed over by a user's jit are checked as
    concrete input is, and give the picks they give outside jit. (JAX 0.10 turns such an
    array into a tracer as soon as an operation touches it inside the trace.)"""
    n = POOL.shape[0]

    def same(**kw):
        want = aft.select("vtl", POOL, TARGET, k=3, **kw).indices
        got = jax.jit(lambda: aft.select("vtl", POOL, TARGET, k=3, **kw).indices)()
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    mask = np.zeros(n, bool)
    mask[[1, 4]] = True
    same()
    same(observed=jnp.array([1, 4]))                 # indices: their range is checked
    same(observed=mask, kernel="rbf")                # a kernel-space mask: its count is read
    same(candidates=~mask)
    with pytest.raises(ValueError, match=r"contains NaN or inf, first at index \(2, 1\)"):
        jax.jit(lambda: aft.select("vtl", _with_nan(POOL), TARGET, k=3).indices)()
    with pytest.raises(ValueError, match=r"must lie in \[0, N=20\); got values from 1 to 20"):
        jax.jit(lambda: aft.select("vtl", POOL, TARGET, k=3, observed=np.array([1, n])).indices)()
    with pytest.raises(ValueError, match=r"leave 2 pool point\(s\) that may be picked"):
        jax.jit(lambda: aft.select("vtl", POOL, TARGET, k=3, candidates=mask).indices)()
    with pytest.raises(ValueError, match=r"symmetric"):
        asym = np.eye(4, dtype=np.float32)
        asym[0, 1] = 0.5
        jax.jit(lambda: aft.select("vtl", POOL, TARGET, k=3, prior_cov=asym).indices)()
    prompts = np.stack([TARGET, TARGET])             # [P, m, d]: several embeddings a prompt
    prompts[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"`prompts`.*NaN or inf"):
        jax.jit(lambda: aft.sift(POOL, prompts, k=2, prefilter=10).indices)()


@pytest.mark.parametrize("space", ["weight", "kernel"])
def test_gp_condition_on_a_numpy_pool_at_a_traced_index(space):
    """`gp.condition` on a pool held as NumPy arrays, at an index traced by jit or vmap."""
    from activeft_jax import gp, kernels

    def states(pool, target):
        if space == "weight":
            return gp.WeightSpace(pool), [gp.init_weight_space(pool, target, num_rows=3)]
        kernel = kernels.RBF(2.0)
        return gp.KernelSpace(kernel, pool), [gp.init_kernel_space(kernel, pool, target, num_rows=3)]

    def var_after(pool, target, i):
        sp, st = states(pool, target)
        return gp.condition(sp, st, i, 0.1)[0]

    want = var_after(jnp.asarray(POOL), jnp.asarray(TARGET), jnp.int32(7))
    got = jax.jit(lambda i: var_after(POOL, TARGET, i))(jnp.int32(7))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    batched = jax.vmap(lambda i: var_after(POOL, TARGET, i))(jnp.array([7, 3]))
    for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a)[0], np.asarray(b), rtol=1e-5, atol=1e-6)


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
    with open(tmp_path / "archive.npy", "wb") as f:  # an .npz under a .npy name
        np.savez(f, pool=POOL)
    np.save(tmp_path / "single.npy", POOL)
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")  # a .npy under an .npz name
    probs = np.random.default_rng(2).random((20, 3))
    np.save(tmp_path / "probs.npy", probs / probs.sum(1, keepdims=True))
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
    ("npz named .npy", "--strategy vtl --pool {d}/archive.npy --target {d}/target.npy --k 2", "is an .npz archive; name a .npy file .npy"),
    ("npz named .npy target", "--strategy vtl --pool {d}/pool.npy --target {d}/archive.npy --k 2", "--target: "),
    ("npy named .npz", "--strategy vtl --pool {d}/single.npz --target {d}/target.npy --k 2", "is not an .npz archive; name a .npy file .npy"),
    ("seed 2**70", "--strategy random --pool {d}/pool.npy --k 2 --seed 1180591620717411303424", "--seed must be an int >= -2^63 and <= 2^63 - 1"),
    ("seed -2**70", "--strategy maxdist --pool {d}/pool.npy --k 2 --seed -1180591620717411303424", "--seed must be an int"),
    ("lengthscale 0", "--strategy vtl --kernel rbf --lengthscale 0 --pool {d}/pool.npy --target {d}/target.npy --k 2", "--lengthscale must be finite and > 0; got 0.0"),
    ("lengthscale < 0", "--strategy maxdist --kernel rbf --lengthscale -1 --pool {d}/pool.npy --k 2", "--lengthscale must be finite and > 0"),
    ("lengthscale NaN", "--strategy itl --kernel rbf --lengthscale nan --pool {d}/pool.npy --target {d}/target.npy --k 2", "--lengthscale must be finite and > 0; got nan"),
    ("lengthscale inf", "--strategy ctl --kernel rbf --lengthscale inf --pool {d}/pool.npy --target {d}/target.npy --k 2", "--lengthscale must be finite and > 0; got inf"),
    ("beta NaN", "--strategy information_density --beta nan --pool {d}/pool.npy --target {d}/target.npy --probs {d}/probs.npy --k 2", "`beta` must be finite and >= 0; got nan"),
    ("beta inf", "--strategy information_density --beta inf --pool {d}/pool.npy --target {d}/target.npy --probs {d}/probs.npy --k 2", "`beta` must be finite"),
    ("beta < 0", "--strategy information_density --beta -1 --pool {d}/pool.npy --target {d}/target.npy --probs {d}/probs.npy --k 2", "`beta` must be finite and >= 0"),
    ("noise inf", "--strategy vtl --pool {d}/pool.npy --target {d}/target.npy --k 2 --noise-std inf", "`noise_std` must be finite and > 0; got inf"),
    ("steps huge", "--strategy activeft --pool {d}/pool.npy --k 3 --steps 99999999999", "`steps` must be an int >= 0 and <= 2^31 - 1"),
    ("refresh > 1", "--strategy activeft --pool {d}/pool.npy --k 3 --refresh 2", "`refresh` must be finite and in [0, 1]"),
    ("target fraction", "--strategy vtl --pool {d}/pool.npy --target {d}/target.npy --k 2 --target-fraction 0", "`target_fraction` must be finite and in (0, 1]"),
    ("out is a directory", "--strategy vtl --pool {d}/pool.npy --target {d}/target.npy --k 2 --out {d}", "it is a directory"),
    ("out is the pool", "--strategy vtl --pool {d}/pool.npy --target {d}/target.npy --k 2 --out {d}/pool.npy", "is also the input --pool"),
    ("out is the target", "--strategy vtl --pool {d}/pool.npy --target {d}/target.npy --k 2 --out {d}/./target.npy", "is also the input --target"),
    ("out is the init file", "--strategy activeft --pool {d}/pool.npy --k 2 --init-indices {d}/init2.npy --out {d}/init2.npy", "is also the input --init-indices"),
]


@pytest.mark.parametrize("desc,args,message", CLI_BAD, ids=[c[0] for c in CLI_BAD])
def test_cli_bad_input_is_one_line_and_exit_2(files, capsys, desc, args, message):
    code = cli.main(["select"] + args.format(d=files).split())
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def _listing(d):
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in d.iterdir())


@pytest.mark.parametrize("argv,message", [
    ("select --strategy vtl --pool {d}/archive.npy --target {d}/target.npy --k 2", "--pool: "),
    ("sift --pool {d}/archive.npy --prompts {d}/target.npy --k 2", "is an .npz archive"),
    ("sift --pool {d}/pool.npy --prompts {d}/single.npz --k 2", "--prompts: "),
    ("sift --pool {d}/pool.npy --prompts {d}/target.npy --k 2 --lambda nan", "--lambda must be finite and > 0; got nan"),
    ("sift --pool {d}/pool.npy --prompts {d}/target.npy --k 2 --prefilter 0", "--prefilter must be an int >= 1"),
    ("sift --pool {d}/pool.npy --prompts {d}/target.npy --k 2 --adaptive inf", "--adaptive must be finite and > 0"),
    ("sift --pool {d}/pool.npy --prompts {d}/target.npy --k 2 --out {d}/pool.npy", "is also the input --pool"),
    ("sift --pool {d}/pool.npy --prompts {d}/target.npy --k 2 --out {d}/target.npy", "is also the input --prompts"),
])
def test_cli_select_and_sift_refuse_and_write_nothing(files, capsys, argv, message):
    """Bad input: one line, exit 2, and the folder (inputs included) exactly as before."""
    before = _listing(files)
    code = cli.main(argv.format(d=files).split())
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert _listing(files) == before


def test_cli_output_written_atomically_and_nothing_left_on_a_full_disk(files, capsys, monkeypatch):
    """ENOSPC while writing: one line, exit 2, no output file and no temporary file; an old
    output is left as it was."""
    import errno
    import os

    argv = ["select", "--strategy", "vtl", "--pool", str(files / "pool.npy"), "--target",
            str(files / "target.npy"), "--k", "2", "--out", str(files / "sel.json")]
    before = _listing(files)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out: cannot write" in err and "No space left" in err, err
    assert _listing(files) == before
    monkeypatch.undo()
    assert cli.main(argv) == 0  # and a good run writes it, with no temporary file beside it
    assert json.loads((files / "sel.json").read_text())["indices"]
    assert sorted(p.name for p in files.iterdir()) == sorted([b[0] for b in before] + ["sel.json"])
    old = (files / "sel.json").read_bytes()
    monkeypatch.setattr(os, "fsync", full)
    assert cli.main(argv[:-4] + ["--k", "3", "--out", str(files / "sel.json")]) == 2
    assert (files / "sel.json").read_bytes() == old


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_cli_out_on_a_full_device_is_one_line(files, capsys):
    code = cli.main(["select", "--strategy", "vtl", "--pool", str(files / "pool.npy"), "--target",
                     str(files / "target.npy"), "--k", "2", "--out", "/dev/full"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "No space left" in err, err


def _read_only_dir(tmp_path):
    """A directory this process cannot create files in: chmod 0o500, or /proc for root."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    probe = d / "probe"
    try:
        probe.write_text("x")
    except OSError:
        return d
    probe.unlink()
    return Path("/proc") if Path("/proc/self").exists() else pytest.skip("no read-only directory")


def test_cli_out_in_a_read_only_directory_is_one_line(files, tmp_path, capsys):
    ro = _read_only_dir(tmp_path)
    code = cli.main(["select", "--strategy", "vtl", "--pool", str(files / "pool.npy"), "--target",
                     str(files / "target.npy"), "--k", "2", "--out", str(ro / "sel.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--out: cannot write" in err, err
    assert not (ro / "sel.json").exists()


def test_numeric_options_are_checked_in_one_place():
    """Every numeric option of every strategy has a range in validation.NUMERIC_OPTIONS."""
    from activeft_jax.selection import OPTION_HELP
    from activeft_jax.validation import NUMERIC_OPTIONS

    numeric = {n for n, h in OPTION_HELP.items() if h.type in (int, float)}
    assert numeric <= set(NUMERIC_OPTIONS), numeric - set(NUMERIC_OPTIONS)


@pytest.mark.parametrize("weight_file", ["/etc/passwd", "../model.safetensors", "sub/model.safetensors",
                                         "..", "", 3, "a\\b.safetensors"])
def test_load_hf_llama_reads_only_files_beside_the_index(tmp_path, weight_file):
    import shutil

    from activeft_jax.models import llama

    src = Path(__file__).parent / "data" / "tiny_llama"
    ckpt = tmp_path / "ckpt"
    shutil.copytree(src, ckpt)
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.embed_tokens.weight": weight_file}}))
    with pytest.raises(ValueError, match="not a plain file name beside the index"):
        llama.load_hf_llama(ckpt)
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": [1]}))
    with pytest.raises(ValueError, match="not a safetensors index"):
        llama.load_hf_llama(ckpt)


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


def test_stale_temporary_outputs_of_killed_writes_are_removed(files, capsys):
    """A write killed mid-way leaves `<name>.tmp-<host>-<pid>-<hex>`; the next write to the
    same output removes it once its process is gone, and leaves a live writer's and other
    files."""
    import subprocess
    import sys

    from activeft_jax.atomic import _host

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = files / f"sel.json.tmp-{_host()}-{dead_pid}-0badc0de"
    live = files / f"sel.json.tmp-{_host()}-{os.getpid()}-00c0ffee"
    other = files / "sel.json.notours.tmp"
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    code = cli.main(["select", "--strategy", "vtl", "--pool", str(files / "pool.npy"), "--target",
                     str(files / "target.npy"), "--k", "2", "--out", str(files / "sel.json")])
    assert code == 0, capsys.readouterr().err
    assert not stale.exists()
    assert live.exists() and other.exists()
    assert json.loads((files / "sel.json").read_text())["indices"]
