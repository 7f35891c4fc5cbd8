"""The studies' command lines (experiments/): bad configurations fail before any work; Study A runs."""

from __future__ import annotations

import json

import pytest

from experiments import study_a, study_b


@pytest.mark.parametrize("options,message", [
    (["--strategies", "itl,nope"], "unknown strategies ['nope']"),
    (["--rounds", "200", "--k", "10"], "exceeds the pool (1423"),
    (["--seeds", "0"], "seeds must be an int >= 1; got 0"),
    (["--config", "{d}/missing.json"], "--config: cannot read"),
    (["--config", "{d}/bad.json"], "unknown fields ['sedes']"),
])
def test_study_bad_configuration_fails_at_start(tmp_path, capsys, options, message):
    (tmp_path / "bad.json").write_text(json.dumps({"sedes": 3}))
    options = [o.format(d=tmp_path) for o in options]
    code = study_a.main([*options, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()  # nothing ran


@pytest.mark.parametrize("options,message", [
    (["--strategies", "activeft,nope"], "unknown strategies ['nope']"),
    (["--budgets", "0.01,2"], "budgets must be finite and in (0, 1]"),
    (["--setting", "cifar"], "unknown setting(s) ['cifar']"),
    (["--config", "{d}/bad.json"], "unknown fields ['sedes']"),
])
def test_study_b_bad_configuration_fails_at_start(tmp_path, capsys, options, message):
    (tmp_path / "bad.json").write_text(json.dumps({"sedes": 3}))
    options = [o.format(d=tmp_path) for o in options]
    with pytest.raises(SystemExit) as exit_:
        study_b.main([*options, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


NAN = float("nan")


@pytest.mark.parametrize("fields,message", [
    ({"seeds": "3"}, "seeds must be an int >= 1; got '3'"),
    ({"seeds": 2.0}, "seeds must be an int >= 1; got 2.0"),
    ({"seeds": None}, "seeds must be an int >= 1; got None"),
    ({"seeds": True}, "seeds must be an int"),
    ({"seeds": [0, 1]}, "seeds must be an int >= 1"),
    ({"setting": ["digits"]}, "setting must be a string"),
    ({"setting": 3}, "setting must be a string"),
    ({"strategies": "itl"}, "strategies must be a non-empty list of strings"),
    ({"strategies": [1]}, "strategies must be a non-empty list of strings"),
    ({"rounds": 2.5}, "rounds must be an int >= 1"),
    ({"k": -1}, "k must be an int >= 1; got -1"),
    ({"learning_rate": -0.1}, "learning_rate must be finite and >= 0; got -0.1"),
    ({"learning_rate": NAN}, "learning_rate must be finite and >= 0; got nan"),
    ({"learning_rate": "fast"}, "learning_rate must be a number"),
    ({"noise_std": 0}, "noise_std must be finite and > 0; got 0.0"),
    ({"noise_std": float("inf")}, "noise_std must be finite and > 0; got inf"),
    ({"target_classes": 5}, "target_classes must be a non-empty list of numbers"),
    ({"target_classes": [5, 12]}, "target_classes must be an int >= 0 and <= 9; got 12"),
    ({"target_classes": [0, 5]}, "overlap"),
    ({"epochs": 0}, "epochs must be an int >= 1; got 0"),
])
def test_study_a_config_checked_by_type_before_any_work(tmp_path, capsys, fields, message):
    (tmp_path / "cfg.json").write_text(json.dumps(fields))
    code = study_a.main(["--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fields,message", [
    ({"seeds": "3"}, "seeds must be an int >= 1; got '3'"),
    ({"seeds": 1.5}, "seeds must be an int >= 1"),
    ({"seeds": None}, "seeds must be an int >= 1; got None"),
    ({"setting": 3}, "setting must be a string or a list of strings"),
    ({"setting": [["digits"]]}, "setting must be a string or a list of strings"),
    ({"budgets": 0.5}, "budgets must be a non-empty list of numbers"),
    ({"budgets": []}, "budgets must be a non-empty list of numbers"),
    ({"budgets": ["a"]}, "budgets must be a list of numbers"),
    ({"budgets": [NAN]}, "budgets must be finite and in (0, 1]; got nan"),
    ({"learning_rate": -1}, "learning_rate must be finite and >= 0; got -1.0"),
    ({"learning_rate": NAN}, "learning_rate must be finite and >= 0; got nan"),
    ({"delta": 0}, "delta must be finite and > 0; got 0.0"),
    ({"purity": 1.5}, "purity must be finite and in (0, 1]; got 1.5"),
    ({"steps": None}, "steps must be an int >= 1"),
    ({"strategies": "random"}, "strategies must be a non-empty list of strings"),
])
def test_study_b_config_checked_by_type_before_any_work(tmp_path, capsys, fields, message):
    (tmp_path / "cfg.json").write_text(json.dumps(fields))
    with pytest.raises(SystemExit) as exit_:
        study_b.main(["--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def _unwritable(tmp_path):
    from test_bad_input import _read_only_dir

    return _read_only_dir(tmp_path) / "out"


def test_studies_refuse_an_unwritable_out_before_any_work(tmp_path, capsys):
    out = _unwritable(tmp_path)
    assert study_a.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("study A: error: --out: cannot create"), err
    with pytest.raises(SystemExit) as exit_:
        study_b.main(["--out", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "--out: cannot create" in err, err
    with pytest.raises(SystemExit) as exit_:
        study_b.main(["--out", str(tmp_path / "ok"), "--cache-dir", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--cache-dir: cannot create" in err, err


class _Stop(Exception):
    pass


@pytest.mark.parametrize("extra,where", [([], "{out}/cache"), (["--cache-dir", "{d}/c"], "{d}/c")])
def test_study_a_bbc_cache_goes_under_out_not_into_the_checkout(tmp_path, monkeypatch, extra, where):
    """`study A --setting bbc --out X` caches its embeddings in X/cache (or --cache-dir)."""
    import activeft_jax.data
    import activeft_jax.embeddings
    import activeft_jax.models

    class Split:
        text, y, class_names = ["a", "b"], [0, 1], ["x", "y"]

    seen = []

    def cached(path, *a, **k):
        seen.append(path)
        raise _Stop

    monkeypatch.setattr(activeft_jax.data, "load", lambda *a, **k: Split)
    monkeypatch.setattr(activeft_jax.models, "load_minilm",
                        lambda: type("E", (), {"name": "e", "fingerprint": "0"})())
    monkeypatch.setattr(activeft_jax.embeddings, "cached_embeddings", cached)
    out = tmp_path / "out"
    argv = ["--setting", "bbc", "--out", str(out)] + [e.format(d=tmp_path) for e in extra]
    with pytest.raises(_Stop):
        study_a.main(argv)
    assert [p.parent for p in map(__import__("pathlib").Path, seen)] == [
        __import__("pathlib").Path(where.format(out=out, d=tmp_path))]


def test_study_a_runs_from_the_command_line(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"strategies": ["itl", "random"], "seeds": 2, "rounds": 2}))
    assert study_a.main(["--config", str(cfg), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "digits" / "study_a.json").read_text())
    assert result["budgets"] == [10, 20]
    import numpy as np

    # the runs' own metrics files agree with the study's table
    for strategy in ("itl", "random"):
        acc = np.asarray(result["runs"][strategy]["accuracy"])
        assert acc.shape == (2, 2)
        for seed in range(2):
            lines = (tmp_path / "digits" / "runs" / f"{strategy}_s{seed}" /
                     "metrics.jsonl").read_text().splitlines()
            assert [json.loads(line)["target_accuracy"] for line in lines] == list(acc[seed])
    assert (tmp_path / "digits" / "study_a.png").stat().st_size > 10_000
    assert "| itl |" in capsys.readouterr().out
