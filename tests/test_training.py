"""activeft_jax.training: train/eval steps, fit, checkpoints, the resumable active loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from _active_job import MLP, problem
from helpers import count_traces
from activeft_jax.training import (
    CheckpointError,
    Checkpointer,
    TrainState,
    active_finetune,
    create_train_state,
    evaluate,
    fit,
    layer_names,
    make_eval_step,
    make_train_step,
    resolve_trainable,
)

JOB_SCRIPT = os.path.join(os.path.dirname(__file__), "_active_job.py")


def _leaves_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb)
    )


# ------------------------------------------------------------------------------------------------
# train_step / eval_step / fit


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(x)


def _linear_problem():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    y = rng.integers(0, 3, 8).astype(np.int32)
    model = Linear()
    return model, model.init(jax.random.key(1), x[:1]), x, y


def _handwritten_loss(p, x, y):
    logits = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None, :]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0])


def test_train_step_matches_a_handwritten_optax_update():
    model, variables, x, y = _linear_problem()
    tx = optax.sgd(0.1, momentum=0.9)
    state = create_train_state(variables, tx, trainable="all")
    train_step = make_train_step(model.apply, tx)

    p = variables["params"]
    opt = tx.init(p)
    velocity = jax.tree_util.tree_map(jnp.zeros_like, p)
    for i in range(3):
        xb, yb = x[i:i + 5], y[i:i + 5]
        state, metrics = train_step(state, {"x": xb, "y": yb})
        loss, grads = jax.value_and_grad(_handwritten_loss)(p, xb, yb)
        # momentum SGD written out: v <- g + 0.9 v; p <- p - 0.1 v
        velocity = jax.tree_util.tree_map(lambda g, v: g + 0.9 * v, grads, velocity)
        expected = jax.tree_util.tree_map(lambda w, v: w - 0.1 * v, p, velocity)
        updates, opt = tx.update(grads, opt, p)
        p = optax.apply_updates(p, updates)
        np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-6)
        assert float(metrics["count"]) == 5
        leaves = jax.tree_util.tree_leaves
        for got, want, formula in zip(leaves(state.params["params"]), leaves(p), leaves(expected)):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(got, formula, rtol=1e-6, atol=1e-7)
    assert int(state.step) == 3
    assert int(state.opt_state[0].trace["params"]["Dense_0"]["kernel"].shape[0]) == 4


def test_masked_rows_change_nothing_and_eval_step_agrees():
    model, variables, x, y = _linear_problem()
    tx = optax.adam(1e-2)
    train_step = make_train_step(model.apply, tx)
    garbage_x = np.concatenate([x[:5], 100 * np.ones((3, 4), np.float32)])
    garbage_y = np.concatenate([y[:5], np.zeros(3, np.int32)])
    mask = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
    s1, m1 = train_step(create_train_state(variables, tx, "all"),
                        {"x": garbage_x, "y": garbage_y, "mask": mask})
    s2, m2 = train_step(create_train_state(variables, tx, "all"), {"x": x[:5], "y": y[:5]})
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s2.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    eval_step = make_eval_step(model.apply)
    m = eval_step(variables, {"x": x[:5], "y": y[:5]})
    want = float(_handwritten_loss(variables["params"], x[:5], y[:5]))
    np.testing.assert_allclose(float(m["loss"]), want, rtol=1e-6)
    full = evaluate(eval_step, variables, x, y, batch_size=3)  # 3 batches, the last one padded
    want = float(_handwritten_loss(variables["params"], x, y))
    np.testing.assert_allclose(full["loss"], want, rtol=1e-6)
    logits = np.asarray(model.apply(variables, x))
    assert full["accuracy"] == np.mean(logits.argmax(1) == y) and full["count"] == 8


def test_head_only_leaves_the_other_parameters_bit_identical():
    model, variables, pool_x, pool_y, _, _ = problem()
    assert layer_names(variables) == ["params/Dense_0", "params/Dense_1", "params/Dense_2"]
    tx = optax.adam(1e-2)
    state = create_train_state(variables, tx, trainable="head")
    assert len(jax.tree_util.tree_leaves(state.params)) == 2  # Dense_2 kernel and bias
    assert len(jax.tree_util.tree_leaves(state.opt_state)) == 1 + 2 * 2  # count, mu, nu
    state, _ = fit(make_train_step(model.apply, tx), state, pool_x[:50], pool_y[:50],
                   epochs=3, batch_size=16, key=jax.random.key(0))
    after = state.full_params()["params"]
    before = variables["params"]
    for name in ("Dense_0", "Dense_1"):
        assert _leaves_equal(after[name], before[name])
    assert not np.array_equal(after["Dense_2"]["kernel"], before["Dense_2"]["kernel"])
    assert not np.array_equal(after["Dense_2"]["bias"], before["Dense_2"]["bias"])


def test_trainable_specifications():
    class Deep(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(11):
                x = nn.tanh(nn.Dense(2)(x))
            return nn.Dense(3)(x)

    variables = Deep().init(jax.random.key(0), jnp.ones((1, 2)))
    layers = layer_names(variables)
    assert layers[-3:] == ["params/Dense_9", "params/Dense_10", "params/Dense_11"]  # module order
    sel = resolve_trainable(variables, ("last_layers", 2))
    assert set(sel.paths) == {f"params/Dense_{i}/{w}" for i in (10, 11) for w in ("bias", "kernel")}
    head = {"params/Dense_11/bias", "params/Dense_11/kernel"}
    assert set(resolve_trainable(variables, "head").paths) == head
    assert len(resolve_trainable(variables, "all").paths) == 24
    chosen = resolve_trainable(variables, lambda p: p.endswith("Dense_3/bias"))
    assert chosen.paths == ("params/Dense_3/bias",)
    with pytest.raises(ValueError, match="last 13 layers, but `params` has 12"):
        resolve_trainable(variables, ("last_layers", 13))
    with pytest.raises(ValueError, match="needs a number of layers"):
        resolve_trainable(variables, "last_layers")
    with pytest.raises(ValueError, match="match no parameter path"):
        resolve_trainable(variables, "Conv_0")


def test_fit_is_deterministic_given_the_key():
    model, variables, pool_x, pool_y, _, _ = problem()
    tx = optax.adam(1e-2)
    train_step = make_train_step(model.apply, tx)

    def run(seed):
        state = create_train_state(variables, tx, trainable="all")
        return fit(train_step, state, pool_x[:37], pool_y[:37], epochs=4, batch_size=16,
                   key=jax.random.key(seed))

    with count_traces("train_step") as traced:
        (s1, h1), (s2, h2), (s3, _) = run(0), run(0), run(1)
    assert _leaves_equal(s1, s2) and h1 == h2
    assert int(s1.step) == 4 * 3 and len(h1["loss"]) == 4
    assert not _leaves_equal(s1.params, s3.params)
    assert traced.count == 1  # fixed batch shape: one compile


# ------------------------------------------------------------------------------------------------
# Checkpointer


def test_checkpointer_round_trip(tmp_path):
    model, variables, *_ = problem()
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    state = create_train_state(variables, tx, trainable=("last_layers", 2))
    tree = {"state": state, "selected": np.arange(5, dtype=np.int32),
            "key": jax.random.key_data(jax.random.key(7))}
    ckpt = Checkpointer(tmp_path / "ck", max_to_keep=2)
    assert ckpt.latest_step() is None
    for step in (1, 2, 3):
        ckpt.save(step, tree, {"round": step, "metrics": [{"loss": 0.1 * step}]})
    assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
    with pytest.raises(ValueError, match="already exists"):
        ckpt.save(3, tree)
    restored, meta = ckpt.restore(3, target=tree)
    assert meta == {"round": 3, "metrics": [{"loss": 0.1 * 3}]}
    assert isinstance(restored["state"], TrainState)
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(tree)
    assert _leaves_equal(restored, tree)
    ckpt.close()

    # A step killed while being written stays a temporary directory: never listed, never
    # restored, and removed when the directory is opened again.
    tmp = tmp_path / "ck" / "4.orbax-checkpoint-tmp-1234"
    tmp.mkdir()
    (tmp / "junk").write_text("partial")
    with Checkpointer(tmp_path / "ck") as again:
        assert again.latest_step() == 3
        assert not tmp.exists()
        with pytest.raises(FileNotFoundError):
            again.restore(4, target=tree)
        plain, _ = again.restore()
        assert np.array_equal(plain["selected"], tree["selected"])


def _damage(step_dir, case):
    """Damages one committed step the way a bad disk or a stray command would."""
    what, how = case.split(":")
    if what == "chunk":  # one data file of the array store
        chunks = sorted((step_dir / "pytree" / "d").iterdir())
        chunks[0].unlink()
        return
    path = step_dir / ("pytree/_METADATA" if what == "_METADATA" else "metadata/metadata")
    data = path.read_bytes()
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "emptied":
        path.write_bytes(b"")
    elif how == "flipped":
        flipped = bytearray(data)
        flipped[len(data) // 3] ^= 0xFF
        path.write_bytes(bytes(flipped))


DAMAGE = [f"{f}:{h}" for f in ("_METADATA", "metadata")
          for h in ("truncated", "emptied", "flipped", "deleted")] + ["chunk:deleted"]


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_step_is_one_line_and_restore_newest_falls_back(tmp_path, case, caplog):
    tree = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "n": np.arange(3, dtype=np.int32)}
    ckpt = Checkpointer(tmp_path / "ck", max_to_keep=3)
    for step in (1, 2):
        ckpt.save(step, jax.tree_util.tree_map(lambda a: a + step, tree), {"round": step})
    _damage(tmp_path / "ck" / "2", case)

    with pytest.raises(CheckpointError, match=r"checkpoint step 2 in .* cannot be restored: ") as e:
        ckpt.restore(2, target=tree)
    assert "\n" not in str(e.value)

    with caplog.at_level("WARNING", logger="activeft_jax.training.checkpoint"):
        step, restored, meta = ckpt.restore_newest(target=tree)
    assert step == 1 and meta == {"round": 1}
    assert _leaves_equal(restored, jax.tree_util.tree_map(lambda a: a + 1, tree))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "step 2 in" in warnings[0] and "resuming from step 1" in warnings[0]
    # the damaged step is gone, so that the run can write it again
    assert ckpt.all_steps() == [1]
    ckpt.save(2, tree, {"round": 2})
    assert ckpt.restore(2, target=tree)[1] == {"round": 2}

    # every step damaged: one line, and nothing is deleted
    _damage(tmp_path / "ck" / "1", case)
    _damage(tmp_path / "ck" / "2", case)
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* restores cleanly \(step 2: "
                       r".*; step 1: ") as e:
        ckpt.restore_newest(target=tree)
    assert "\n" not in str(e.value) and ckpt.all_steps() == [1, 2]
    ckpt.close()


def test_restore_newest_of_an_empty_directory_is_none(tmp_path):
    with Checkpointer(tmp_path / "ck") as ckpt:
        assert ckpt.restore_newest() is None


# ------------------------------------------------------------------------------------------------
# active_finetune


def _job(workdir, **over):
    model, variables, pool_x, pool_y, target_x, target_y = problem()
    kw = dict(strategy="itl", rounds=3, k=8, workdir=workdir, seed=0, trainable="head",
              epochs=20, batch_size=16, select_kwargs={"noise_std": 0.5})
    kw.update(over)
    args = [kw.pop("model", model), kw.pop("init_params", variables),
            kw.pop("tx", optax.adam(1e-2)), kw.pop("pool_x", pool_x), kw.pop("pool_y", pool_y),
            kw.pop("target_x", target_x), kw.pop("target_y", target_y)]
    return active_finetune(*args, **kw)


def test_active_finetune_improves_and_reruns_identically(tmp_path, caplog):
    wd = tmp_path / "run"
    res = _job(wd)
    picks = res.indices.tolist()
    assert len(picks) == 24 and len(set(picks)) == 24 and all(0 <= i < 300 for i in picks)
    assert [m["round"] for m in res.metrics] == [0, 1, 2]
    assert [m["labeled"] for m in res.metrics] == [8, 16, 24]
    assert sum((m["picks"] for m in res.metrics), []) == picks
    lines = (wd / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == res.metrics
    initial, final = res.initial_metrics["target_accuracy"], res.metrics[-1]["target_accuracy"]
    assert final >= initial + 0.3 and final >= 0.85, (initial, final)
    # only the head moved
    for name in ("Dense_0", "Dense_1"):
        assert _leaves_equal(res.params["params"][name], problem()[1]["params"][name])

    # temporary files of writes killed before their rename (this version's and the old names)
    from activeft_jax.atomic import tmp_name

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    stale = [tmp_name(wd / "metrics.jsonl").replace(f"-{os.getpid()}-", f"-{dead}-"),
             f"{wd / 'config.json'}.tmp-{dead}"]
    for p in stale:
        open(p, "w").close()
    again = _job(wd)  # finished workdir: the stored result, no training
    assert not any(os.path.exists(p) for p in stale)
    assert again.indices.tolist() == picks and again.metrics == res.metrics
    assert _leaves_equal(again.params, res.params)
    assert (wd / "metrics.jsonl").read_text().splitlines() == lines

    import fcntl

    with open(wd / ".lock", "a") as held:  # another process in this workdir
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="another active_finetune is running"):
            _job(wd)
    with pytest.raises(ValueError, match=r"other arguments \(strategy: \"itl\" there, \"vtl\" now"):
        _job(wd, strategy="vtl")
    with pytest.raises(ValueError, match="other arguments.*tx:"):
        _job(wd, tx=optax.adam(1e-3))
    with pytest.raises(ValueError, match="other arguments.*pool_y:"):
        _job(wd, pool_y=np.roll(problem()[3], 1))

    # A damaged latest checkpoint: the run falls back to the one before, with a warning,
    # and redoes the last round bit for bit.
    _damage(wd / "checkpoints" / "3", "_METADATA:truncated")
    with caplog.at_level("WARNING", logger="activeft_jax.training.checkpoint"):
        again = _job(wd)
    assert any("step 3 in" in r.getMessage() and "resuming from step 2" in r.getMessage()
               for r in caplog.records)
    assert again.indices.tolist() == picks and again.metrics == res.metrics
    assert _leaves_equal(again.params, res.params)
    assert (wd / "metrics.jsonl").read_text().splitlines() == lines
    # No checkpoint restores: one line, nothing deleted.
    for step in (2, 3):
        _damage(wd / "checkpoints" / str(step), "metadata:emptied")
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* restores cleanly \(step 3: "
                       r"JSONDecodeError: .*; step 2: .*\); use another workdir") as e:
        _job(wd)
    assert "\n" not in str(e.value)
    assert sorted(n for n in os.listdir(wd / "checkpoints") if n.isdigit()) == ["2", "3"]


def test_apply_function_raw_inputs_cold_start_and_a_test_set(tmp_path):
    model, variables, pool_x, pool_y, target_x, target_y = problem()
    res = _job(tmp_path / "run", model=model.apply, target_x=None, target_y=None,
               strategy="max_entropy", embed=None, warm_start=False, rounds=2, epochs=5,
               batch_size=8, select_kwargs=None, test=(target_x, target_y))
    assert [m["step"] for m in res.metrics] == [5, 10]  # a fresh optimizer every round
    assert all("test_accuracy" in m and "target_accuracy" not in m for m in res.metrics)
    assert set(res.initial_metrics) == {"test_loss", "test_accuracy"}
    assert len(set(res.indices.tolist())) == 16


@pytest.mark.parametrize("over, message", [
    ({"strategy": "nope"}, r"unknown strategy 'nope'; choose one of itl, vtl, "),
    ({"rounds": 0}, r"`rounds` must be >= 1"),
    ({"k": 0}, r"`k` must be >= 1"),
    ({"rounds": 40}, r"budget rounds \* k = 40 \* 8 = 320 exceeds the pool size N = 300"),
    ({"pool_x": np.zeros((0, 2), np.float32), "pool_y": np.zeros((0,), np.int32)}, "pool is empty"),
    ({"pool_y": np.zeros((299,), np.int32)}, r"`pool_y` has 299 labels but `pool_x` has 300"),
    ({"target_x": np.zeros((80, 3), np.float32)}, r"`target_x` examples have shape \(3,\)"),
    ({"target_y": np.zeros((79,), np.int32)}, r"`target_y` has 79 labels but `target_x` has 80"),
    ({"pool_y": np.full((300,), 4, np.int32)}, r"labels in \[4, 4\] but the model has 4 outputs"),
    ({"target_x": None}, r"strategy 'itl' needs `target_x`"),
    ({"select_kwargs": {"k": 3}}, r"must not set \['k'\]"),
    ({"select_kwargs": {"allow_repeats": True}}, "reveals each pool point once"),
    ({"select_kwargs": {"beta": 1.0}}, r"does not take option\(s\) \['beta'\]"),
    ({"model": MLP().apply}, "'last_layer' needs a flax.linen.Module"),
    ({"trainable": ("last_layers", 9)}, "last 9 layers"),
    ({"epochs": 0}, r"`epochs` must be >= 1"),
])
def test_bad_configurations_fail_at_start(tmp_path, over, message):
    wd = tmp_path / "bad"
    with pytest.raises(ValueError, match=message):
        _job(wd, **over)
    assert not wd.exists()  # nothing was written


# ------------------------------------------------------------------------------------------------
# SIGKILL at any point, then resume: the same result, bit for bit


def _run_job(workdir, out, kill=""):
    env = dict(os.environ, AFT_JOB_KILL=kill)
    return subprocess.run([sys.executable, JOB_SCRIPT, str(workdir), str(out)], env=env,
                           capture_output=True, text=True, timeout=120)


def _kill_at_marker(workdir, out, tmp_path, *, embed_call):
    """Starts the job, waits until it reports its `embed_call`-th embedding, SIGKILLs it."""
    err_path = tmp_path / f"stderr-{embed_call}.txt"
    with open(err_path, "w") as err:
        p = subprocess.Popen([sys.executable, JOB_SCRIPT, str(workdir), str(out)], text=True,
                             env=dict(os.environ, AFT_JOB_KILL=f"wait-embed:{embed_call}"),
                             stdout=subprocess.PIPE, stderr=err)
        watchdog = threading.Timer(120, p.kill)
        watchdog.start()
        try:
            line = p.stdout.readline()
            assert line.strip() == f"EMBED {embed_call}", (line, err_path.read_text()[-3000:])
            p.send_signal(signal.SIGKILL)
            assert p.wait() == -signal.SIGKILL
        finally:
            watchdog.cancel()
            p.stdout.close()


def _committed(workdir):
    names = os.listdir(workdir / "checkpoints")
    return sorted(int(n) for n in names if n.isdigit()), [n for n in names if "tmp" in n]


def _lines(workdir):
    return (workdir / "metrics.jsonl").read_text().splitlines()


def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_result(tmp_path):
    ref_dir, ref_out = tmp_path / "ref", tmp_path / "ref.json"
    proc = _run_job(ref_dir, ref_out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = json.loads(ref_out.read_text())
    assert len(_lines(ref_dir)) == 3

    wd, out = tmp_path / "killed", tmp_path / "killed.json"

    # 0. SIGKILL from outside during round 0 (before any checkpoint): a fresh start next time.
    _kill_at_marker(wd, out, tmp_path, embed_call=1)
    assert _committed(wd) == ([], [])
    assert _lines(wd) == []

    # 1. SIGKILL from outside in the middle of round 1 (while it embeds the pool with the
    #    model fine-tuned in round 0): round 0 is committed, round 1 is lost.
    _kill_at_marker(wd, out, tmp_path, embed_call=3)
    assert _committed(wd) == ([1], [])
    assert len(_lines(wd)) == 1

    # 2. resumed, then killed while orbax writes round 1's checkpoint: the step stays a
    #    temporary directory and round 1 is lost again.
    proc = _run_job(wd, out, kill="finalize:2")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    steps, tmps = _committed(wd)
    assert steps == [1] and len(tmps) == 1 and tmps[0].startswith("2.")
    assert len(_lines(wd)) == 1

    # 3. resumed, then killed after round 2's checkpoint is committed but before
    #    metrics.jsonl is rewritten: the file lags the checkpoint by one round.
    proc = _run_job(wd, out, kill="metrics:3")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert _committed(wd) == ([2, 3], [])
    assert len(_lines(wd)) == 2

    # 4. resumed: every round is done; the metrics file is rebuilt from the checkpoint.
    proc = _run_job(wd, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["indices"] == reference["indices"]
    assert result["metrics"] == reference["metrics"]
    assert result["params_sha256"] == reference["params_sha256"]
    assert result["initial"] == reference["initial"]
    assert (wd / "metrics.jsonl").read_bytes() == (ref_dir / "metrics.jsonl").read_bytes()
    assert len(set(result["indices"])) == 24
