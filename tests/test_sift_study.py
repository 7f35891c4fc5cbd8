"""experiments/sift_study.py: what its corpora keep out of the pool, and its bad flags.

The study itself (SmolLM2 test-time fine-tuning, ~30 min) is not run here; these
tests check the part a wrong result would hide: that no test document (or a
duplicate of it) is in the pool it retrieves from; and its bad flags.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from activeft_jax import data
from experiments import sift_study


@pytest.fixture(scope="module")
def study():
    return sift_study


@pytest.fixture(scope="module")
def bbc_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds_bbc")
    data.prepare("bbc_news", root)
    return root


def _norm_lines(text, min_chars):
    """The whitespace-normalized lines of `text` with at least `min_chars` characters."""
    lines = (" ".join(line.split()) for line in text.splitlines())
    return {line for line in lines if len(line) >= min_chars}


def test_news_pool_holds_no_test_text(study, bbc_dir, monkeypatch):
    monkeypatch.setenv("ACTIVEFT_JAX_DATA", str(bbc_dir))
    cfg = study.Config(docs=20)
    corpus = study.build_news(cfg)
    train = data.load("bbc_news", "train", data_dir=bbc_dir)
    test = data.load("bbc_news", "test", data_dir=bbc_dir)
    by_id = {str(i): str(t) for i, t in zip(test.ids, test.text)}
    names = [n for n, _ in corpus.docs]
    assert len(names) == 20 == len(set(names))
    for name, doc in corpus.docs:
        article = by_id[name]
        assert article.startswith(doc) and cfg.doc_min_chars <= len(doc) <= cfg.doc_max_chars
    # the documents come in order of sha256(id), as the docstring says
    order = sorted(by_id, key=lambda i: int(hashlib.sha256(i.encode()).hexdigest(), 16))
    assert names == [i for i in order if i in set(names)]
    # the pool comes from the train split only, and no chunk repeats a test paragraph
    assert set(corpus.pool_src) <= {str(i) for i in train.ids}
    test_paras = set().union(*(_norm_lines(by_id[n], cfg.dup_chars) for n in names))
    for chunk in corpus.pool:
        assert not _norm_lines(chunk, cfg.dup_chars) & test_paras
    # an exact duplicate of a test article in train (there is one among these 20) is dropped
    train_by_text = {}
    for i, t in zip(train.ids, train.text):
        train_by_text.setdefault(" ".join(str(t).split()), []).append(str(i))
    dups = [i for n in names for i in train_by_text.get(" ".join(by_id[n].split()), [])]
    assert dups and set(dups) <= set(corpus.info["dropped_duplicates"])
    assert not set(dups) & set(corpus.pool_src)


def test_code_pool_holds_no_held_out_module(study):
    cfg = study.Config(docs=20)
    corpus = study.build_code(cfg)
    names = [n for n, _ in corpus.docs]
    assert len(names) == 20
    assert not set(corpus.held) & set(corpus.pool_src)
    stdlib = Path(corpus.info["source"])
    for name, doc in corpus.docs:
        assert int(hashlib.sha256(name.encode()).hexdigest(), 16) % cfg.holdout_mod == 0
        assert doc in (stdlib / f"{name}.py").read_text(encoding="utf-8")
        assert cfg.doc_min_chars <= len(doc) <= cfg.doc_max_chars
    # every chunk is a run of lines of a pool module
    src = {}
    for chunk, name in zip(corpus.pool[::97], corpus.pool_src[::97]):
        text = src.setdefault(name, (stdlib / f"{name}.py").read_text(encoding="utf-8"))
        assert chunk in text


@pytest.mark.parametrize("options, message", [
    (["--corpus", "poems"], "invalid choice: 'poems'"),
    (["--docs", "1"], "docs=1"),
    (["--k", "0"], "k=0"),
])
def test_sift_study_bad_flags_fail_before_any_work(tmp_path, capsys, options, message):
    with pytest.raises(SystemExit) as e:
        sift_study.main([*options, "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("fields, message", [
    ({"k": True}, "k=True"),
    ({"k": "5"}, "k='5'"),
    ({"batch": 2.0}, "batch=2.0"),
    ({"learning_rate": float("inf")}, "learning_rate=inf"),
    ({"learning_rate": float("nan")}, "learning_rate=nan"),
    ({"lambda_": -0.01}, "lambda_=-0.01"),
    ({"adaptive_threshold": None}, "adaptive_threshold=None"),
])
def test_sift_study_config_checked_by_type_before_any_work(tmp_path, capsys, fields, message):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(__import__("json").dumps(fields))
    with pytest.raises(SystemExit) as e:
        sift_study.main(["--config", str(cfg), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_sift_study_unknown_config_field(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"k": 3, "steps": 9}')
    with pytest.raises(SystemExit) as e:
        sift_study.main(["--config", str(cfg), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown fields ['steps']" in err and not (tmp_path / "o").exists()


def test_large_configuration_finds_its_documents(study, bbc_dir, monkeypatch):
    """`--large` asks for 100 documents per corpus: both corpora must have them."""
    monkeypatch.setenv("ACTIVEFT_JAX_DATA", str(bbc_dir))
    cfg = study.Config(**study.LARGE)
    code, news = study.build_code(cfg), study.build_news(cfg)
    assert len(code.docs) == len(news.docs) == cfg.docs == 100
    modules = [n.split("#")[0] for n, _ in code.docs]
    assert not set(modules) & set(code.pool_src)
    stdlib = Path(code.info["source"])
    for (name, doc), module in zip(code.docs, modules):
        assert doc in (stdlib / f"{module}.py").read_text(encoding="utf-8")
        assert cfg.doc_min_chars <= len(doc) <= cfg.doc_max_chars
    # documents of one module do not overlap: each starts after the previous ended
    for module in set(modules):
        text = (stdlib / f"{module}.py").read_text(encoding="utf-8")
        starts = [text.index(d) for n, d in code.docs if n.split("#")[0] == module]
        ends = [s + len(d) for s, (n, d) in zip(starts, [x for x in code.docs
                                                         if x[0].split("#")[0] == module])]
        assert all(e <= s for e, s in zip(ends, starts[1:]))
