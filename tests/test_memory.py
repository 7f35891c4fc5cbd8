"""The pool on the device once (read in chunks, never whole on the host) and an up-front,
one-line refusal of a request that cannot fit in memory."""

import json

import numpy as np
import pytest

import activeft_jax as aft
from activeft_jax import cli, memory as _memory

RNG = np.random.default_rng(0)
POOL = RNG.standard_normal((1000, 8))  # float64 on disk
TARGET = RNG.standard_normal((3, 8)).astype(np.float32)


def test_streamed_and_chunked_copies_equal_the_file(tmp_path):
    np.save(tmp_path / "p.npy", POOL)
    np.savez(tmp_path / "p.npz", pool=POOL)
    np.savez_compressed(tmp_path / "c.npz", pool=POOL)
    want = POOL.astype(np.float32)
    with open(tmp_path / "p.npy", "rb") as f:  # 17 chunks of 60 rows
        header = _memory.read_npy_header(f)
        assert header == (POOL.shape, np.dtype(np.float64), False)
        np.testing.assert_array_equal(_memory.stream_npy(f, header, np.float32, chunk_bytes=960), want)
    import zipfile

    for name in ("p.npz", "c.npz"):
        with zipfile.ZipFile(tmp_path / name) as z, z.open("pool.npy") as f:
            header = _memory.read_npy_header(f)
            got = _memory.stream_npy(f, header, np.float32, chunk_bytes=960)
        np.testing.assert_array_equal(got, want)
    mapped = np.load(tmp_path / "p.npy", mmap_mode="r")
    np.testing.assert_array_equal(_memory.to_device(mapped, np.float32, chunk_bytes=960), want)
    np.testing.assert_array_equal(_memory.to_device(mapped[100:], np.float32, chunk_bytes=960),
                                  want[100:])

    truncated = tmp_path / "t.npy"
    truncated.write_bytes((tmp_path / "p.npy").read_bytes()[:-100])
    with open(truncated, "rb") as f, pytest.raises(ValueError, match="ends early"):
        _memory.stream_npy(f, _memory.read_npy_header(f), np.float32, chunk_bytes=960)


def test_the_cli_reads_pools_in_chunks_and_selects_as_the_library(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(_memory, "CHUNK_BYTES", 960)
    writes = []
    fill = _memory._fill
    monkeypatch.setattr(_memory, "_fill", lambda shape, dtype, chunks: fill(
        shape, dtype, (writes.append(start) or (start, c) for start, c in chunks)))
    np.save(tmp_path / "p.npy", POOL)
    np.save(tmp_path / "pf.npy", np.asfortranarray(POOL))
    np.savez(tmp_path / "p.npz", pool=POOL)
    np.save(tmp_path / "t.npy", TARGET)
    ref = aft.select("vtl", POOL.astype(np.float32), TARGET, k=5, noise_std=0.5)
    writes.clear()
    code = cli.main(["select", "--strategy", "vtl", "--pool", str(tmp_path / "p.npy"), "--x64",
                     "--target", str(tmp_path / "t.npy"), "--k", "5", "--noise-std", "0.5"])
    assert code == 0, capsys.readouterr().err  # float64 chunks, int64 indices
    assert len(capsys.readouterr().out) > 0 and len(writes) == 67
    writes.clear()
    for pool in ("p.npy", "pf.npy", "p.npz"):
        code = cli.main(["select", "--strategy", "vtl", "--pool", str(tmp_path / pool),
                         "--target", str(tmp_path / "t.npy"), "--k", "5", "--noise-std", "0.5"])
        assert code == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out)["indices"] == ref.indices.tolist(), pool
        assert writes[:2] == [0, 15] and len(writes) == 67, pool  # 960 B: 15 float64 rows
        writes.clear()

    # a file whose content is not what its name says: one line, exit 2
    (tmp_path / "z.npy").write_bytes((tmp_path / "p.npz").read_bytes())
    code = cli.main(["select", "--strategy", "vtl", "--pool", str(tmp_path / "z.npy"),
                     "--target", str(tmp_path / "t.npy"), "--k", "5"])
    err = capsys.readouterr().err
    assert code == 2 and "is an .npz archive" in err and err.count("\n") == 1


def test_select_estimate():
    pool, state = _memory.select_estimate("vtl", 10**6, 384, 10, 20, 4)
    assert pool == 1_536_000_000 and state == 10**6 * (10 + 4) * 4
    _, itl = _memory.select_estimate("itl", 10**6, 384, 1000, 20, 4)
    assert itl == 2 * 10**6 * (384 + 4) * 4  # two posteriors, targets compressed to d
    _, rbf = _memory.select_estimate("vtl", 10**6, 384, 10, 20, 4, kernel_space=True)
    assert rbf == 10**6 * (10 + 4 + 20) * 4  # kernel space keeps k rows
    assert _memory.available_bytes() is None or _memory.available_bytes() > 0


def test_a_request_that_cannot_fit_is_refused_up_front_in_one_line(tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "p.npy", POOL)
    np.save(tmp_path / "t.npy", TARGET)
    out = tmp_path / "sel.json"
    monkeypatch.setattr(_memory, "available_bytes", lambda device=None: 500 * 10**6)
    read = []
    monkeypatch.setattr(_memory, "stream_npy", lambda *a, **k: read.append(1))
    code = cli.main(["select", "--strategy", "vtl", "--pool", str(tmp_path / "p.npy"),
                     "--target", str(tmp_path / "t.npy"), "--k", "5", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "vtl on a 1000 x 8 pool needs about 1.00 GB (pool 0.00 GB + state 0.00 GB + " \
           "runtime 1.00 GB) but this machine has 0.50 GB of memory available (MemAvailable)" in err
    assert not read and not out.exists()  # refused before reading the pool

    # through the library: a host pool whose device copy cannot fit
    monkeypatch.setattr(_memory, "available_bytes", lambda device=None: 1000)
    with pytest.raises(_memory.InsufficientMemoryError,
                       match=r"`pool` \(float64\[1000, 8\]\) on the device needs about") as e:
        aft.select("vtl", POOL, TARGET, k=5)
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)


def test_sift_x64_reads_the_pool_in_float64(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(_memory, "CHUNK_BYTES", 960)
    np.save(tmp_path / "p.npy", POOL)
    np.save(tmp_path / "q.npy", TARGET.astype(np.float64))
    seen = []
    import activeft_jax.selection as selection

    sift = selection.sift
    monkeypatch.setattr(selection, "sift", lambda pool, *a, **k: seen.append(pool.dtype) or sift(
        pool, *a, **k))
    assert cli.main(["sift", "--pool", str(tmp_path / "p.npy"), "--prompts",
                     str(tmp_path / "q.npy"), "--k", "3", "--x64"]) == 0, capsys.readouterr().err
    assert seen == [np.dtype(np.float64)]


def test_normalize_rows_in_place_is_l2_normalize_without_a_second_pool():
    import jax
    import jax.numpy as jnp

    from activeft_jax.kernels import l2_normalize

    x = np.random.default_rng(3).standard_normal((1003, 37)).astype(np.float32)
    x[5], x[7], x[1002] = 0, x[7] * 1e-20, x[1002] * 1e20
    want = np.asarray(jax.jit(l2_normalize)(jnp.asarray(x)))
    a = jnp.asarray(x)
    got = _memory.normalize_rows_in_place(a, chunk_bytes=100 * 37 * 4)  # 10 chunks and a tail
    assert a.is_deleted()  # the buffer was donated: written over, not copied
    # The same formula in another fusion: equal up to the last bit or two of a unit row.
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=4 * np.finfo(np.float32).eps)
    np.testing.assert_array_equal(np.asarray(got)[5], 0)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(got)[[7, 1002]], axis=1), 1, rtol=1e-6)


@pytest.mark.parametrize("strategy", ["vtl", "itl", "sift"])
def test_cli_normalize_gives_the_api_picks(tmp_path, capsys, strategy):
    """`--normalize` normalizes the pool in place (no second pool); the picks are the API's
    with normalize=True and the values agree to float32 round-off."""
    import jax

    pool = (POOL * np.random.default_rng(4).uniform(0.1, 10, (len(POOL), 1))).astype(np.float32)
    np.save(tmp_path / "pool.npy", pool)
    np.save(tmp_path / "t.npy", TARGET * 3)
    if strategy == "sift":
        args = ["sift", "--prompts", str(tmp_path / "t.npy"), "--k", "6", "--lambda", "0.1"]
        ref = aft.selection.sift(pool, TARGET * 3, k=6, lambda_=0.1, normalize=True)
    else:
        args = ["select", "--strategy", strategy, "--target", str(tmp_path / "t.npy"), "--k", "6",
                "--noise-std", "0.3"]
        ref = aft.select(strategy, pool, TARGET * 3, k=6, noise_std=0.3, normalize=True,
                         key=jax.random.key(0))
    assert cli.main(args + ["--pool", str(tmp_path / "pool.npy"), "--normalize"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["indices"] == np.asarray(ref.indices).tolist()
    np.testing.assert_allclose(np.asarray(got["values"], float), np.asarray(ref.values), rtol=1e-4,
                               atol=1e-5 * float(np.max(np.abs(np.asarray(ref.values)))))


def test_cli_normalize_refuses_what_the_api_refuses(tmp_path, capsys):
    pool = POOL.astype(np.float32)
    pool[3] *= 1e30  # squared norm overflows float32, although its unit row would not
    np.save(tmp_path / "pool.npy", pool)
    np.save(tmp_path / "t.npy", TARGET)
    assert cli.main(["select", "--strategy", "vtl", "--pool", str(tmp_path / "pool.npy"),
                     "--target", str(tmp_path / "t.npy"), "--k", "3", "--normalize"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pool" in err, err
    with pytest.raises(ValueError, match="pool"):
        aft.select("vtl", pool, TARGET, k=3, normalize=True)
