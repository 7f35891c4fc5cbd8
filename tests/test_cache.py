"""The embedding cache: reuse when nothing changed, recompute when anything did."""

import json

import numpy as np
import pytest

from activeft_jax.embeddings.cache import (StaleCacheError, cache_status, cached_embeddings,
                                           hash_inputs, load_embeddings)

TEXTS = ["first text", "second text", ""]


class Counter:
    def __init__(self, scale=1.0):
        self.calls = 0
        self.scale = scale

    def __call__(self, texts=TEXTS):
        self.calls += 1
        return self.scale * np.arange(len(texts) * 4, dtype=np.float32).reshape(len(texts), 4)


def _run(path, fn, texts=TEXTS, model="m", fingerprint="w1", options=None, **kw):
    return cached_embeddings(path, lambda: fn(texts), inputs=texts, model=model,
                             fingerprint=fingerprint, options=options or {"normalize": True}, **kw)


def test_hit_returns_saved_array_without_recomputing(tmp_path):
    path, fn = tmp_path / "c.npz", Counter()
    first = _run(path, fn)
    again = _run(path, Counter(scale=2.0))  # would give other values if it ran
    assert fn.calls == 1
    np.testing.assert_array_equal(again, first)
    assert again.dtype == np.float32
    assert cache_status(path, TEXTS, model="m", fingerprint="w1", options={"normalize": True}) is None


@pytest.mark.parametrize("change", [
    {"texts": ["first text", "second text", "third"]},
    {"texts": ["first tex", "tsecond text", ""]},      # same characters, other split
    {"model": "other"},
    {"fingerprint": "w2"},
    {"options": {"normalize": False}},
])
def test_any_change_makes_it_stale(tmp_path, change):
    path = tmp_path / "c.npz"
    _run(path, Counter())
    fn2 = Counter(scale=3.0)
    kw = dict(texts=TEXTS, model="m", fingerprint="w1", options={"normalize": True})
    kw.update(change)
    reason = cache_status(path, kw["texts"], model=kw["model"], fingerprint=kw["fingerprint"],
                          options=kw["options"])
    assert reason is not None
    with pytest.raises(StaleCacheError, match="stale"):
        _run(path, fn2, on_stale="error", **kw)
    out = _run(path, fn2, **kw)
    assert fn2.calls == 1
    np.testing.assert_array_equal(out, fn2(kw["texts"]))
    # rewritten: the new settings now hit
    _run(path, fn2, **kw)
    assert fn2.calls == 2  # (the direct call above) + the one recompute


def test_damaged_file_is_recomputed(tmp_path):
    path = tmp_path / "c.npz"
    path.write_bytes(b"not an npz")
    fn = Counter()
    assert "cannot read" in cache_status(path, TEXTS, model="m", fingerprint="w1",
                                         options={"normalize": True})
    _run(path, fn)
    assert fn.calls == 1
    emb, meta = load_embeddings(path)
    assert meta["shape"] == [3, 4] and meta["model"] == "m"
    np.testing.assert_array_equal(emb, Counter()(TEXTS))


def test_failed_compute_keeps_the_old_cache(tmp_path):
    path = tmp_path / "c.npz"
    _run(path, Counter())
    before = path.read_bytes()

    def boom(texts):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(path, boom, model="other")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary left behind


def test_hash_inputs():
    assert hash_inputs(["ab", "c"]) != hash_inputs(["a", "bc"])
    a = np.zeros((2, 3), np.float32)
    assert hash_inputs(a) != hash_inputs(a.astype(np.float64))
    assert hash_inputs(a) != hash_inputs(a.reshape(3, 2))
    assert hash_inputs(a) == hash_inputs(a.copy())
    with pytest.raises(ValueError, match="single str"):
        hash_inputs("text")


def test_no_path_just_computes(tmp_path):
    fn = Counter()
    out = cached_embeddings(None, lambda: fn(TEXTS), inputs=TEXTS, model="m")
    assert fn.calls == 1 and out.shape == (3, 4)
    with pytest.raises(ValueError, match="on_stale"):
        cached_embeddings(tmp_path / "c.npz", fn, inputs=TEXTS, model="m", on_stale="ignore")
    with pytest.raises(ValueError, match=".npz"):
        cached_embeddings(tmp_path / "c.npy", fn, inputs=TEXTS, model="m")
    assert fn.calls == 1  # checked before computing anything


def test_meta_is_plain_json(tmp_path):
    path = tmp_path / "c.npz"
    _run(path, Counter(), options={"layer": "Dense_1", "normalize": False})
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    assert meta["options"] == {"layer": "Dense_1", "normalize": False}
    assert meta["inputs_sha256"] == hash_inputs(TEXTS)


_KILLED_WRITE = """
import importlib.util, os, signal, sys
spec = importlib.util.spec_from_file_location("atomic", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
with mod.atomic_file(sys.argv[2], "wb") as f:
    f.write(b"half of an npz")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of the write
"""


def test_a_killed_writes_temporary_file_is_removed_by_the_next_run(tmp_path):
    import os
    import subprocess
    import sys
    import time

    import activeft_jax.atomic as tmpfiles

    path = tmp_path / "c.npz"
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITE, tmpfiles.__file__, str(path)])
    assert proc.returncode == -9
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith("c.npz.tmp-") and not path.exists()

    # not ours, or not stale: kept
    live = tmpfiles.tmp_name(path)  # this process is writing it
    other_host = f"{path}.tmp-elsewhere-1-0123abcd"  # maybe alive on another machine
    young_legacy = tmp_path / "c.npz.ab12cd_e.tmp"  # the old mkstemp name, written a moment ago
    keep = [live, other_host, young_legacy, tmp_path / "c.npz.backup", tmp_path / "d.npz.tmp-1",
            tmp_path / "c.npz.tmp-x-1-0123abcd-more"]
    for p in keep:
        open(p, "wb").close()
    old_legacy = tmp_path / "c.npz.zz99yy_x.tmp"  # the old name, a day old: removed
    old_legacy.write_bytes(b"")
    os.utime(old_legacy, (time.time() - 86400,) * 2)

    emb = _run(path, Counter())
    np.testing.assert_array_equal(emb, Counter()())
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["c.npz"] + [os.path.basename(p) for p in keep])
