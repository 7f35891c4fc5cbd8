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
