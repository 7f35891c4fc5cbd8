"""experiments/sift_redundancy.py: the redundant pools, the TTFT cache and the report.

The study itself (SmolLM2 test-time fine-tuning, tens of minutes) is not run here.
These tests check what a wrong result would hide: that no test document, and no
copy of one, is in any pool at any redundancy level; that the construction is
deterministic and has the stated fractions; that near-copies are near and not
equal; and the bookkeeping (copies of earlier picks, the cache, the tables) on
small made-up inputs.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from activeft_jax import data
from experiments import sift_redundancy as R
from experiments import sift_study

CFG = sift_study.Config(docs=20)


@pytest.fixture(scope="module")
def bbc_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds_bbc_redundancy")
    data.prepare("bbc_news", root)
    return root


@pytest.fixture(scope="module")
def code():
    corpus = sift_study.build_code(CFG)
    return corpus, {lv: R.make_redundant(corpus.pool, lv, "code", seed=17) for lv in R.LEVELS}


@pytest.fixture(scope="module")
def news(bbc_dir):
    mp = pytest.MonkeyPatch()
    mp.setenv("ACTIVEFT_JAX_DATA", str(bbc_dir))
    try:
        corpus = sift_study.build_news(CFG)
    finally:
        mp.undo()
    return corpus, {lv: R.make_redundant(corpus.pool, lv, "news", seed=17) for lv in R.LEVELS}


def _originals(pool):
    """level-none index -> its position in `pool`."""
    return {int(o): i for i, (o, kd) in enumerate(zip(pool.origin, pool.kind)) if kd == "original"}


@pytest.mark.parametrize("name", ["code", "news"])
def test_levels_are_built_from_the_pool_with_the_stated_fractions(name, request):
    corpus, pools = request.getfixturevalue(name)
    n = len(corpus.pool)
    assert pools["none"].texts == corpus.pool
    for lv in ("exact", "near"):
        pool = pools[lv]
        first = _originals(pool)
        assert sorted(first) == list(range(n))           # every chunk once as itself
        copies = [i for i, kd in enumerate(pool.kind) if kd != "original"]
        with_copies = Counter(int(pool.origin[i]) for i in copies)
        assert len(with_copies) == round(0.5 * n)          # the stated fraction, exactly
        assert set(with_copies.values()) == {1, 2, 3}       # each chunk present 1-4 times
        assert len(pool) == n + len(copies)
        for i in copies:
            orig = corpus.pool[int(pool.origin[i])]
            if lv == "exact":
                assert pool.kind[i] == "exact" and pool.texts[i] == orig
            else:
                assert pool.kind[i].startswith("near:") and pool.texts[i] != orig
        # copies are spread through the pool, not appended at its end
        assert min(copies) < n // 10
    kinds = Counter(kd for kd in pools["near"].kind if kd != "original")
    edits = {"code": {"near:rewrap", "near:rename", "near:comments"},
             "news": {"near:drop", "near:reorder", "near:drop+reorder"}}[name]
    assert all(kinds[e] > 0.25 * sum(kinds.values()) for e in edits)   # all three edits used


@pytest.mark.parametrize("name", ["code", "news"])
def test_near_copies_are_near_and_different(name, request):
    corpus, pools = request.getfixturevalue(name)
    pool = pools["near"]
    near = [i for i, kd in enumerate(pool.kind) if kd != "original"]
    sims = []
    for i in near[::7]:
        orig = corpus.pool[int(pool.origin[i])]
        sims.append(R.overlap(pool.texts[i], orig))
        assert pool.texts[i] != orig
        assert abs(len(pool.texts[i]) - len(orig)) <= 0.3 * len(orig)
    sims = np.array(sims)
    assert sims.min() >= R.NEAR_MIN_OVERLAP and np.median(sims) > 0.85
    # and nearer to their own original than to an unrelated chunk
    other = [R.overlap(pool.texts[i], corpus.pool[(int(pool.origin[i]) + 977) % len(corpus.pool)])
             for i in near[:200:7]]
    assert max(other) < R.NEAR_MIN_OVERLAP


def test_construction_is_deterministic_and_seeded(code):
    corpus, _ = code
    sub = corpus.pool[:300]
    for lv in ("exact", "near"):
        a = R.make_redundant(sub, lv, "code", seed=17)
        b = R.make_redundant(list(sub), lv, "code", seed=17)
        assert a.texts == b.texts and a.kind == b.kind and np.array_equal(a.origin, b.origin)
        c = R.make_redundant(sub, lv, "code", seed=18)
        assert c.texts != a.texts
    # a chunk given copies in both a pool and a longer one gets the same copies
    bigger = R.make_redundant(sub + corpus.pool[300:400], "near", "code", seed=17)
    small = R.make_redundant(sub, "near", "code", seed=17)
    both = set(small.origin[[kd != "original" for kd in small.kind]]) & set(
        bigger.origin[[kd != "original" for kd in bigger.kind]])
    assert len(both) > 100
    for i in both:
        assert (Counter(t for t, o in zip(small.texts, small.origin) if o == i)
                == Counter(t for t, o in zip(bigger.texts, bigger.origin) if o == i))


def _norm_lines(text, min_chars):
    lines = (" ".join(line.split()) for line in text.splitlines())
    return {line for line in lines if len(line) >= min_chars}


def test_no_test_text_in_any_news_pool(news, bbc_dir):
    corpus, pools = news
    test = data.load("bbc_news", "test", data_dir=bbc_dir)
    by_id = {str(i): str(t) for i, t in zip(test.ids, test.text)}
    paras = set().union(*(_norm_lines(by_id[n], CFG.dup_chars) for n, _ in corpus.docs))
    docs30 = set().union(*(R.shingles(d, 30) for _, d in corpus.docs))
    for lv, pool in pools.items():
        news_texts = set(pool.texts) if lv == "none" else {
            t for t, kd in zip(pool.texts, pool.kind) if kd != "original"}
        for t in news_texts:
            assert not _norm_lines(t, CFG.dup_chars) & paras
            sh = R.shingles(t, 30)
            assert len(sh & docs30) < 0.2 * len(sh)


def test_no_held_out_code_in_any_pool(code):
    corpus, pools = code
    held = set(corpus.held)
    docs30 = set().union(*(R.shingles(d, 30) for _, d in corpus.docs))
    for lv, pool in pools.items():
        assert not {corpus.pool_src[int(o)] for o in pool.origin} & held
        texts = set(pool.texts) if lv == "none" else {
            t for t, kd in zip(pool.texts, pool.kind) if kd != "original"}
        for t in texts:
            sh = R.shingles(t, 30)
            assert len(sh & docs30) < 0.2 * len(sh)        # no test document nor a near-copy


def test_edits_on_small_texts():
    code = ("def total(alpha, beta, gamma):\n    # add them up, in the order given\n"
            "    result = alpha + beta + gamma  # the sum\n    return result\n")
    renamed, name = R.near_copy(code, "code", r=0, first=1)
    assert name == "rename" and renamed == code.replace("alpha", "alpha_new")
    assert R._comments(code, 0).count("#") == code.count("#") - 2     # at most two dropped
    assert "# " in R._comments("x = 1\ny = 2\n", 0)                  # none: one added
    wrapped = R._rewrap("call(first_argument, second_argument, third_argument_here)\n", 0)
    assert wrapped.splitlines()[1].startswith("    ") and wrapped.replace("\n    ", " ") == (
        "call(first_argument, second_argument, third_argument_here)\n")
    news = ("Title here\n\nThe first sentence is here. The second one follows. "
            "A third closes the paragraph.\n")
    out, name = R.near_copy(news, "news", r=1, first=1)
    assert name == "reorder" and sorted(out.split()) == sorted(news.split()) and out != news
    out = R._drop(news, 0)
    assert out == news.replace(" The second one follows.", "")   # <= a quarter of the text
    # nothing applies: a changed tail, still never the original
    out, name = R.near_copy("x\n", "code", r=0)
    assert out != "x\n"


def test_copy_counts():
    pool = R.Pool(texts=["a", "a", "b", "b'", "c"], origin=np.array([0, 0, 1, 1, 2]),
                  kind=["original", "exact", "original", "near:x", "original"])
    got = R.copy_counts([[0, 1, 2, 3, 4], [2, 4, 0, 0, 3], [4, 2, 0, 3, 1]], pool)
    assert got.tolist() == [[1, 1], [1, 1], [1, 1]]
    assert R.copy_counts([[4, 2, 0]], pool).tolist() == [[0, 0]]


def test_ttft_cache_reads_prefixes_and_checks_settings(tmp_path):
    path = tmp_path / "c.json"
    c = R.TTFTCache(path, {"lr": 1})
    c.put("d1", ["x", "y", "z"], {0: 1.0, 1: 0.9, 2: 0.8, 3: 0.7})
    c.put("d1", ["x", "w"], {0: 1.0, 2: 0.85})          # no curve: only its end
    c.save()
    c2 = R.TTFTCache(path, {"lr": 1})
    assert c2.get("d1", ["x", "y"]) == {0: 1.0, 1: 0.9, 2: 0.8}
    assert c2.get("d1", ["x", "w"]) == {0: 1.0, 2: 0.85}
    assert c2.get("d1", ["x"]) == {0: 1.0, 1: 0.9}       # off the curve
    assert c2.get("d1", ["y"]) is None and c2.get("d2", ["x"]) is None
    assert R.TTFTCache(path, {"lr": 2}).get("d1", ["x"]) is None   # other settings


def _fake_results(rng, docs=4):
    def v(m):
        return (m + 0.01 * rng.standard_normal(docs)).tolist()

    def cp():
        return rng.integers(0, 3, (docs, 2)).tolist()

    cfg = R._cfg_json(R.Config(docs=docs, long_k=4, long_docs=docs, lambdas=(0.01, 1.0)))
    grid = {"documents": [f"d{i}" for i in range(docs)]}
    for lv in R.LEVELS:
        grid[lv] = {"bpb_base": v(1.0), "bpb_in_context": v(0.9), "bpb_nn": v(0.95),
                    "bpb_sift": v(0.96), "copies_nn": cp(), "copies_sift": cp(),
                    "nn_indices": [[0] * 5] * docs, "sift_indices": [[1] * 5] * docs,
                    "in_context_n": [5] * docs}
    curve = (1.0 - 0.01 * np.arange(5)[None] + 0.001 * rng.standard_normal((docs, 5))).tolist()
    lev = {"none": {"size": 10, "copies": 0}, "exact": {"size": 20, "copies": 10},
           "near": {"size": 19, "copies": 9, "cosine_median": 0.97, "cosine_p05": 0.9,
                    "overlap_median": 0.93, "overlap_min": 0.75, "edits": {}}, "originals": 10}
    return {"config": cfg, "corpora": ["news"], "levels": {"news": lev}, "grid": {"news": grid},
            "long": {"corpus": "news", "level": "exact", "k": 4, "documents": grid["documents"],
                     "curve_nn": curve, "curve_sift": curve, "copies_nn": cp(),
                     "copies_sift": cp()},
            "lambda": {"corpus": "news", "level": "exact", "documents": grid["documents"],
                       "bpb_base": v(1.0), "bpb_nn": v(0.95), "copies_nn": cp(),
                       "lambdas": {"0.01": {"bpb_sift": v(0.96), "copies_sift": cp(),
                                            "sift_indices": [[1, 2, 3, 4, 5]] * docs},
                                   "1.0": {"bpb_sift": v(0.97), "copies_sift": cp(),
                                           "sift_indices": [[1, 1, 2, 3, 4]] * docs}}},
            "smollm2": {"corpus": "news", "documents": grid["documents"], "shortlist": 30,
                        "tokens": 64, "bpb_base": v(1.0), "bpb_minilm_nn": v(0.95),
                        "bpb_minilm_sift": v(0.96), "bpb_smollm2_nn": v(0.97),
                        "bpb_smollm2_sift": v(0.97), "overlap_nn": 2.0, "overlap_sift": 1.5},
            "timing": {"total_s": 10.0, "ttft_s": 5.0, "ttft_steps": 40, "ttft_evals": 30,
                       "cache_hits": 3, "in_context_s": 1.0, "in_context_docs": 12,
                       "minilm_s": 1.0, "minilm_texts": 100, "smollm2_embed_s": 1.0,
                       "smollm2_embed_tokens": 640}}


def test_report_and_plots_from_fake_results(tmp_path, capsys):
    res = _fake_results(np.random.default_rng(0))
    R.write(res, tmp_path)
    table = (tmp_path / "table.md").read_text()
    for needle in ("| none |", "| exact |", "| near |", "SIFT − NN", "**λ grid**",
                   "| 1 |", "**Longer run**", "| smollm2 |", "| minilm |", "Runtime 10 s"):
        assert needle in table
    # copies columns: the means of the fake counts
    exact = np.asarray(res["grid"]["news"]["exact"]["copies_nn"]).mean(0)
    assert f"{exact[0]:.2f} / {exact[1]:.2f}" in table
    assert (tmp_path / "long_bpb_vs_steps.png").stat().st_size > 0
    assert (tmp_path / "redundancy.png").stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["corpora"] == ["news"]
    # --replot rewrites them from results.json
    (tmp_path / "table.md").unlink()
    R.main(["--replot", "--out", str(tmp_path)])
    assert (tmp_path / "table.md").read_text() == table


@pytest.mark.parametrize("options, message", [
    (["--parts", "grid,poems"], "--parts"),
    (["--docs", "1"], "docs=1"),
    (["--corpus", "poems"], "invalid choice: 'poems'"),
])
def test_bad_flags_fail_before_any_work(tmp_path, capsys, options, message):
    with pytest.raises(SystemExit) as e:
        R.main([*options, "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not any(tmp_path.iterdir())


def test_docstring_states_the_plans_estimates():
    """The module docstring's minutes are what `plan` computes for those configurations."""
    doc = " ".join(R.__doc__.split())

    def span(**over):
        p = R.plan(R.Config(**over), R.CORPORA, R.PARTS)
        return f"{p['low_s'] / 60:.0f}-{p['high_s'] / 60:.0f} min"

    assert f"at {span()}" in doc
    assert f"grid only ({span(docs=20)})" in doc
    assert f"need {span(docs=20, long_docs=20, lambda_docs=20, smollm2_docs=20)}" in doc
    assert f"~{R.plan(R.Config(**R.QUICK), R.CORPORA, R.PARTS)['high_s'] / 60:.0f} min" in doc
