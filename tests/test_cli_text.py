"""`activeft-jax embed` / `score`: bad input is one line and exit status 2, before any model loads."""

import json

import numpy as np
import pytest

from activeft_jax import cli


def _write(path, content: bytes):
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize("desc,content,message", [
    ("empty file", b"", "has no lines"),
    ("empty line", b'{"text": "a"}\n\n{"text": "b"}\n', "line 2 of .* is empty"),
    ("blank line", b'{"text": "a"}\n   \n', "line 2 of .* is empty"),
    ("invalid json", b'{"text": "a"}\n{"text": "b"\n', "line 2 of .* is not valid JSON"),
    ("not an object", b'["a"]\n', "line 1 .* got list"),
    ("no text", b'{"txt": "a"}\n', "line 1 .* got no 'text'"),
    ("text not str", b'{"text": 3}\n', "'text' of type int"),
    ("not utf-8", b'{"text": "\xff"}\n', "is not UTF-8"),
    ("deeply nested", b'{"text": "a", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b'}\n',
     "line 1 of .* is nested too deeply"),
    ("lone surrogate", b'{"text": "a"}\n{"text": "ab\\ud800c"}\n',
     "line 2 of .*: 'text' holds a lone surrogate \\(U\\+D800 at character 2\\)"),
    ("lone low surrogate", b'{"text": "\\udfff"}\n', "lone surrogate"),
])
@pytest.mark.parametrize("command", ["embed", "score"])
def test_bad_jsonl_is_one_line_exit_2(tmp_path, capsys, command, desc, content, message):
    path = _write(tmp_path / "in.jsonl", content)
    out = str(tmp_path / ("e.npy" if command == "embed" else "s.json"))
    code = cli.main([command, "--input", path, "--out", out])
    err = capsys.readouterr().err
    assert code == 2, desc
    assert err.count("\n") == 1 and err.startswith("activeft-jax: error: --input:"), err
    import re
    assert re.search(message, err), err


@pytest.mark.parametrize("argv,message", [
    (["embed", "--input", "{i}", "--out", "{d}/e.txt"], "--out: expected a .npy or .npz"),
    (["embed", "--input", "{i}", "--out", "{d}/e.npy", "--batch-size", "0"], "--batch-size must be an int >= 1; got 0"),
    (["embed", "--input", "{i}", "--out", "{d}/e.npy", "--cache", "{d}/c.npy"], "--cache: expected a .npz"),
    (["embed", "--input", "{d}/missing.jsonl", "--out", "{d}/e.npy"], "--input: cannot read"),
    (["embed", "--model", "gpt", "--input", "{i}", "--out", "{d}/e.npy"], "invalid choice: 'gpt'"),
    (["score", "--model", "minilm", "--input", "{i}"], "invalid choice: 'minilm'"),
    (["score", "--input", "{i}", "--window", "1"], "--window must be an int >= 2; got 1"),
    (["score", "--input", "{i}", "--batch-size", "99999999999"], "--batch-size must be an int >= 1 and <= 2^31 - 1"),
    (["embed", "--input", "{d}/texts.npy", "--out", "{d}/texts.npy"], "--out: {d}/texts.npy is also the input --input"),
    (["score", "--input", "{e}"], "line 2 has an empty text"),
    (["embed", "--input", "{d}/in.jsonl", "--out", "{d}/e.npz", "--cache", "{d}/e.npz"],
     "--out: {d}/e.npz is also --cache"),
    (["embed", "--input", "{d}/in.jsonl", "--out", "{d}/e.npy", "--cache", "{d}/dir.npz"],
     "--cache: cannot write {d}/dir.npz: it is a directory"),
    (["embed", "--input", "{d}/in.jsonl", "--out", "{d}/e.npy", "--cache", "{d}/no/c.npz"],
     "--cache: cannot write {d}/no/c.npz: no such directory"),
    (["embed", "--input", "{d}/in.jsonl", "--out", "{d}"], "--out: expected a .npy or .npz"),
    (["score", "--input", "{i}", "--out", "{i}"], "is also the input --input"),
    (["score", "--input", "{i}", "--out", "{d}"], "it is a directory"),
    (["score", "--input", "{i}", "--out", "{d}/none/s.json"], "no such directory"),
    (["score", "--input", "{i}", "--batch-size", "0"], "--batch-size must be an int >= 1; got 0"),
])
def test_bad_options_one_line_exit_2(tmp_path, capsys, argv, message):
    good = _write(tmp_path / "in.jsonl", b'{"text": "hello"}\n')
    empty_text = _write(tmp_path / "empty.jsonl", (json.dumps({"text": "a"}) + "\n"
                                                   + json.dumps({"text": ""}) + "\n").encode())
    (tmp_path / "dir.npz").mkdir()
    (tmp_path / "texts.npy").write_bytes(b'{"text": "hello"}\n')  # JSONL under a .npy name
    argv = [a.format(i=good, e=empty_text, d=tmp_path) for a in argv]
    message = message.format(d=tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


# ------------------------------------------------- embed and score with stand-in models (fast)


class _FakeEncoder:
    name, fingerprint, max_seq_length = "fake", "0", 8
    calls = 0

    def encode(self, texts, batch_size=32, normalize=True, progress=False):
        _FakeEncoder.calls += 1
        return np.arange(len(texts) * 3, dtype=np.float32).reshape(len(texts), 3)


@pytest.fixture()
def fake_minilm(monkeypatch):
    from activeft_jax.models import minilm

    _FakeEncoder.calls = 0
    monkeypatch.setattr(minilm, "load_minilm", lambda *a, **k: _FakeEncoder())
    return _FakeEncoder


def test_embed_out_written_atomically_nothing_left_on_a_full_disk(tmp_path, capsys, monkeypatch,
                                                                  fake_minilm):
    import errno
    import os

    inp = _write(tmp_path / "in.jsonl", b'{"text": "a"}\n{"text": "b"}\n')
    for name in ("e.npy", "e.npz"):
        with monkeypatch.context() as m:
            m.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(
                OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
            code = cli.main(["embed", "--input", inp, "--out", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "No space left on device" in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no partial file
        assert cli.main(["embed", "--input", inp, "--out", str(tmp_path / name)]) == 0
        got = np.load(tmp_path / name)
        got = got["pool"] if name.endswith(".npz") else got
        np.testing.assert_array_equal(got, np.arange(6, dtype=np.float32).reshape(2, 3))
        (tmp_path / name).unlink()


def test_embed_cache_in_a_read_only_directory_is_one_line(tmp_path, capsys, fake_minilm):
    from test_bad_input import _read_only_dir

    ro = _read_only_dir(tmp_path)
    inp = _write(tmp_path / "in.jsonl", b'{"text": "a"}\n')
    code = cli.main(["embed", "--input", inp, "--out", str(tmp_path / "e.npy"),
                     "--cache", str(ro / "c.npz")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("activeft-jax: error: --cache:"), err
    assert not (tmp_path / "e.npy").exists()
    # a cache beside the output works, and is reused
    cache = tmp_path / "c.npz"
    before = fake_minilm.calls
    for _ in range(2):
        assert cli.main(["embed", "--input", inp, "--out", str(tmp_path / "e.npy"),
                         "--cache", str(cache)]) == 0
    assert fake_minilm.calls == before + 1 and cache.exists()  # computed once, then read


class _FakeLM:
    context_length = 8192
    progress = None

    def score(self, texts, window=None, batch_size=8, progress=False):
        _FakeLM.progress = progress
        return [{"tokens": 2, "nll": 1.0, "bpb": 0.5} for _ in texts]


@pytest.mark.parametrize("texts,flags,shown", [
    (["short"], [], False),
    (["x" * 70_000], [], True),                # one long text: many windows
    (["x" * 20_000], ["--window", "2048"], True),
    (["x" * 70_000], ["--no-progress"], False),
    (["short"], ["--progress"], True),
    (["t"] * 40, [], True),
])
def test_score_shows_progress_on_long_runs(tmp_path, capsys, monkeypatch, texts, flags, shown):
    from activeft_jax.models import smollm2

    monkeypatch.setattr(smollm2, "load_smollm2", lambda *a, **k: _FakeLM())
    inp = _jsonl(tmp_path / "in.jsonl", texts)
    assert cli.main(["score", "--input", inp, "--out", str(tmp_path / "s.json")] + flags) == 0
    assert _FakeLM.progress is shown


def test_score_progress_lines_off_a_terminal(capsys, monkeypatch):
    """Off a terminal (a log file), progress is a line per batch of windows (rate-limited)."""
    from activeft_jax.models import smollm2

    batches = [([(0, 0, 4, 1)] * 2, (2, 16)), ([(0, 2, 6, 4)], (1, 16))]
    assert list(smollm2._progress(batches, True)) == batches
    err = capsys.readouterr().err.splitlines()
    assert err == ["SmolLM2: batch 2/2 (3/3 sequences, 0 s)"]  # the last one always
    assert list(smollm2._progress_lines(batches, every_s=0.0)) == batches
    assert len(capsys.readouterr().err.splitlines()) == 2
    assert list(smollm2._progress(batches, False)) == batches
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- real models, end to end

DATA = __import__("pathlib").Path(__file__).parent / "data"


def _jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return str(path)


def test_embed_minilm_matches_golden_and_uses_the_cache(tmp_path, capsys):
    import numpy as np

    golden = json.loads((DATA / "minilm_golden.json").read_text())
    with np.load(DATA / "minilm_golden.npz") as z:
        want = z["sentence_embeddings"]
    texts = golden["sentences"]
    inp = _jsonl(tmp_path / "in.jsonl", texts)
    out, cache = tmp_path / "e.npy", tmp_path / "cache.npz"
    assert cli.main(["embed", "--model", "minilm", "--input", inp, "--out", str(out),
                     "--batch-size", "3", "--cache", str(cache)]) == 0
    emb = np.load(out)
    assert emb.dtype == np.float32 and emb.shape == (len(texts), 384)
    np.testing.assert_allclose(emb, want, atol=1e-5, rtol=0)
    # the cache now holds exactly what was written; a second run reads it (same bytes)
    with np.load(cache) as z:
        np.testing.assert_array_equal(z["embeddings"], emb)
    out2 = tmp_path / "e2.npz"
    assert cli.main(["embed", "--input", inp, "--out", str(out2), "--cache", str(cache),
                     "--progress"]) == 0
    assert "cache hit" in capsys.readouterr().err
    with np.load(out2) as z:
        np.testing.assert_array_equal(z["pool"], emb)
    # other texts: stale, recomputed, rows follow the new lines
    inp2 = _jsonl(tmp_path / "in2.jsonl", texts[::-1])
    assert cli.main(["embed", "--input", inp2, "--out", str(out), "--cache", str(cache),
                     "--progress"]) == 0
    assert "inputs changed" in capsys.readouterr().err
    np.testing.assert_allclose(np.load(out), want[::-1], atol=1e-5, rtol=0)


def test_score_smollm2_matches_golden(tmp_path, capsys):
    import math

    import numpy as np

    golden = json.loads((DATA / "smollm2_golden.json").read_text())
    with np.load(DATA / "smollm2_golden.npz") as z:
        nll0 = z["nll_per_token_first_prompt"].astype(np.float64)
        lengths = z["lengths"]
    prompts = golden["prompts"]
    inp = _jsonl(tmp_path / "in.jsonl", prompts)
    out = tmp_path / "s.json"
    assert cli.main(["score", "--input", inp, "--out", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert [s["tokens"] for s in scores] == [int(n) for n in lengths]
    assert abs(scores[0]["nll"] - nll0.sum()) < 1e-3
    for s, p in zip(scores, prompts):
        assert s["bpb"] == pytest.approx(s["nll"] / (math.log(2) * len(p.encode("utf-8"))), rel=1e-9)
        assert s["nll"] > 0


def test_score_unseen_texts_through_the_cli(tmp_path):
    """Texts no fixture prompt saw (stdlib source): per-token NLL as HF gives, and --window."""
    import numpy as np

    from activeft_jax.models.smollm2 import load_smollm2

    with np.load(DATA / "smollm2_unseen.npz") as z:
        texts = [str(t) for t in z["texts"]]
        nll, off = z["nll"].astype(np.float64), z["nll_offsets"]
        ids_off = z["ids_offsets"]
    # test_smollm2 checks every one of these texts (up to 747 tokens) through the API, which
    # is what the CLI calls; here the CLI scores the two shortest (each length bucket is one
    # more compiled program, and the forward of a long text takes seconds)
    ntok = np.diff(ids_off)
    chosen = [int(i) for i in np.argsort(ntok, kind="stable")[:2]]
    assert ntok[chosen[1]] > 100, "the second text is long enough for a window of 64"
    inp = _jsonl(tmp_path / "in.jsonl", [texts[i] for i in chosen])
    out = tmp_path / "s.json"
    assert cli.main(["score", "--input", inp, "--out", str(out), "--no-progress"]) == 0
    scores = json.loads(out.read_text())
    assert len(scores) == len(chosen)
    for i, s in zip(chosen, scores):
        assert s["tokens"] == ids_off[i + 1] - ids_off[i]
        want = nll[off[i]:off[i + 1]]
        # transformers' float32 sum drifts ~1e-5 per token (see test_smollm2), so per token
        assert abs(s["nll"] - want.sum()) / len(want) < 2e-5, (i, s["nll"], want.sum())
        assert s["bpb"] == pytest.approx(s["nll"] / (np.log(2) * len(texts[i].encode())),
                                         rel=1e-12)
    # a window shorter than the text: sliding windows, every token once, the API's numbers
    win = tmp_path / "w.json"
    text = texts[chosen[1]]
    assert cli.main(["score", "--input", _jsonl(tmp_path / "long.jsonl", [text]),
                     "--out", str(win), "--window", "64"]) == 0
    (w,) = json.loads(win.read_text())
    (api,) = load_smollm2().score([text], window=64)
    assert w == {"tokens": api["tokens"], "nll": api["nll"], "bpb": api["bpb"]}
    assert w["tokens"] == scores[1]["tokens"] > 64
    assert w["nll"] != scores[1]["nll"]       # less context: a different score


def test_embed_unseen_long_texts_through_the_cli(tmp_path):
    """sentence-transformers' embeddings of texts nobody here wrote, some longer than 256 tokens."""
    import numpy as np

    with np.load(DATA / "minilm_unseen.npz") as z:
        texts = [str(t) for t in z["texts"]]
        want, ntok = z["embeddings"], z["num_tokens"]
    assert (ntok == 256).sum() >= 3  # counts after truncation: longer texts are cut at 256
    inp = _jsonl(tmp_path / "in.jsonl", texts)
    out = tmp_path / "e.npy"
    assert cli.main(["embed", "--input", inp, "--out", str(out), "--batch-size", "4"]) == 0
    np.testing.assert_allclose(np.load(out), want, atol=1e-5, rtol=0)


def test_embed_smollm2_is_the_mean_final_hidden_state(tmp_path):
    import numpy as np

    golden = json.loads((DATA / "smollm2_golden.json").read_text())
    with np.load(DATA / "smollm2_golden.npz") as z:
        idx = list(z["hidden_states_index"]).index(30)  # after the final RMSNorm
        want = z["hidden_states_first_prompt"][idx].mean(axis=0)
    inp = _jsonl(tmp_path / "in.jsonl", golden["prompts"][:1])
    out = tmp_path / "e.npy"
    assert cli.main(["embed", "--model", "smollm2", "--input", inp, "--out", str(out)]) == 0
    emb = np.load(out)
    assert emb.shape == (1, 576) and emb.dtype == np.float32
    np.testing.assert_allclose(emb[0], want, atol=1e-4 * np.abs(want).max(), rtol=0)
