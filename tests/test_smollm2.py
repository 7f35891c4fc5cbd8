"""SmolLM2 (GGUF) and the Llama decoder against transformers' float32 outputs.

Fixtures (all made with torch/transformers, which this package never imports):
- data/smollm2_golden.{npz,json}: the shared golden values (see shared/fixtures/README.md);
- data/smollm2_unseen.npz: texts from the Python standard library, by
  experiments/benchmarks/make_model_fixtures_smollm2.py;
- data/tiny_llama/: a random Llama checkpoint in Hugging Face format and its logits, by
  experiments/benchmarks/make_model_fixtures_llama.py.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from activeft_jax.models import llama
from activeft_jax.models.smollm2 import _batches, _bucket, _windows, load_smollm2
from helpers import default_codegen_options

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module", autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def lm():
    return load_smollm2()


@pytest.fixture(scope="module")
def golden():
    with open(DATA / "smollm2_golden.json") as f:
        meta = json.load(f)
    return dict(np.load(DATA / "smollm2_golden.npz")), meta


@pytest.fixture(scope="module")
def unseen():
    u = np.load(DATA / "smollm2_unseen.npz")
    texts = [str(t) for t in u["texts"]]
    ids = [u["ids"][a:b] for a, b in zip(u["ids_offsets"][:-1], u["ids_offsets"][1:])]
    nll = [u["nll"][a:b] for a, b in zip(u["nll_offsets"][:-1], u["nll_offsets"][1:])]
    return texts, ids, nll, u["top20_indices"], u["top20_values"]


@pytest.fixture(scope="module")
def golden_single_logits(lm, golden):
    """All-position logits of each golden prompt, run alone (as the fixture was)."""
    g, _ = golden
    out = []
    for row, n in zip(g["input_ids"], g["lengths"]):
        tokens = row[None, :n]
        out.append(np.asarray(lm.logits(lm.params, tokens, np.ones_like(tokens))[0]))
    return out


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


# --------------------------------------------------------------------- loading, tokenizer


def test_config_name_and_fingerprint(lm, golden):
    _, meta = golden
    c = lm.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim,
            c.intermediate_size, c.vocab_size) == (30, 576, 9, 3, 64, 1536, 49152)
    assert c.rope_theta == 100000.0 and abs(c.rms_norm_eps - 1e-5) < 1e-10
    assert c.tie_word_embeddings and "lm_head" not in lm.params
    assert lm.name == "SmolLM2-135M-Instruct-Q4_1"
    assert (lm.dim, lm.context_length, lm.pad_id) == (576, 8192, 2)
    assert lm.fingerprint == "sha256:" + meta["gguf_sha256"][:16]


def test_token_ids_match_golden_and_unseen(lm, golden, unseen):
    _, meta = golden
    for prompt, ids in zip(meta["prompts"], meta["input_ids_per_prompt"]):
        assert lm.tokenize(prompt) == ids
    texts, ids, *_ = unseen
    assert lm.tokenize_batch(texts) == [x.tolist() for x in ids]
    assert lm.tokenize("<|im_start|>user")[0] == 1   # special tokens are matched verbatim


# --------------------------------------------------------------------- golden values


def test_logits_last_and_argmax(golden, golden_single_logits):
    g, _ = golden
    last = np.stack([z[-1] for z in golden_single_logits])
    assert np.max(np.abs(last - g["logits_last"])) < 1e-3
    np.testing.assert_array_equal(last.argmax(-1), g["argmax_last"])


def test_all_position_logits_first_prompt(golden, golden_single_logits):
    g, _ = golden
    z = golden_single_logits[0]
    assert np.max(np.abs(z - g["logits_all_first_prompt"].astype(np.float32))) < 2.5e-2
    idx = g["logits_all_first_prompt_top50_indices"]
    np.testing.assert_array_equal(np.argsort(-z, axis=-1, kind="stable")[:, :50], idx)
    top = np.take_along_axis(z, idx, -1)
    assert np.max(np.abs(top - g["logits_all_first_prompt_top50_values"])) < 1e-3


def test_right_padded_batch_equals_single_runs(lm, golden, golden_single_logits):
    g, _ = golden
    batch = np.asarray(lm.logits(lm.params, g["input_ids"], g["attention_mask"]))
    for b, (z, n) in enumerate(zip(golden_single_logits, g["lengths"])):
        # Relative to the logits' size (~24): a batch reduces in another order than one row,
        # and XLA's CPU thread split depends on the load (1.3e-4 seen on a busy machine).
        assert np.max(np.abs(batch[b, :n] - z)) < 2e-5 * np.max(np.abs(z))
        assert np.max(np.abs(batch[b, n - 1] - g["logits_last"][b])) < 1e-3


def test_nll_per_token_first_prompt(lm, golden):
    g, _ = golden
    tokens = g["input_ids"][:1]
    nll = np.asarray(lm.nll(lm.params, tokens, np.ones_like(tokens)))[0]
    assert nll.shape == (16,)
    assert np.max(np.abs(nll - g["nll_per_token_first_prompt"])) < 1e-4


def test_hidden_states_by_index(lm, golden):
    g, _ = golden
    tokens = g["input_ids"][:1]
    hs = np.asarray(jax.jit(llama.all_hidden_states, static_argnames="config")(
        lm.params, tokens, np.ones_like(tokens), config=lm.config))
    assert hs.shape == (31, 1, 17, 576)
    for ref, i in zip(g["hidden_states_first_prompt"], g["hidden_states_index"]):
        assert np.max(np.abs(hs[i, 0] - ref)) <= 1e-5 * np.max(np.abs(ref)), f"index {i}"
    final = np.asarray(lm.hidden_states(lm.params, tokens, np.ones_like(tokens)))
    np.testing.assert_allclose(final, hs[-1], atol=1e-5 * np.max(np.abs(hs[-1])))


def test_score_first_prompt(lm, golden):
    g, meta = golden
    prompt = meta["prompts"][0]
    (r,) = lm.score([prompt])
    want = float(np.sum(g["nll_per_token_first_prompt"].astype(np.float64)))
    assert r["tokens"] == 17
    assert abs(r["nll"] - want) < 1e-3
    n_bytes = len(prompt.encode("utf-8"))
    assert math.isclose(r["bpb"], r["nll"] / (math.log(2) * n_bytes), rel_tol=1e-12)


def test_embed_is_mean_of_final_hidden_states(lm, golden):
    g, meta = golden
    emb = lm.embed(meta["prompts"], batch_size=2)
    assert emb.shape == (3, 576) and emb.dtype == np.float32
    ref = g["hidden_states_first_prompt"][-1].mean(0)        # index 30: after the final norm
    assert np.max(np.abs(emb[0] - ref)) < 1e-5 * np.max(np.abs(g["hidden_states_first_prompt"][-1]))
    # Order is kept, and a text's embedding does not depend on its batch-mates.
    # Batch-mates change the summation order: a tolerance relative to the values' size.
    np.testing.assert_allclose(lm.embed(meta["prompts"][2:]), emb[2:],
                               atol=2e-5 * max(1.0, float(np.abs(emb[2:]).max())))


# --------------------------------------------------------------------- unseen texts


# (bound by running the model over long texts: compiled with XLA's default code generation,
# 20 s instead of 30 s with the suite's quicker flags)
@functools.partial(jax.jit, static_argnames="config", compiler_options=default_codegen_options())
def _nll_and_last_logits(params, tokens, mask, last, config):
    """Per-token NLL by log-softmax of the full logits (independent of llama.nll)."""
    z = llama.logits(params, tokens, mask, config)
    logp = jax.nn.log_softmax(z[:, :-1], axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return nll, z[jnp.arange(z.shape[0]), last]


def test_unseen_texts_nll_and_top20(lm, unseen):
    texts, ids, nll_ref, top_i, top_v = unseen
    # Long texts alone, short ones in one right-padded batch: three compiled shapes.
    groups = [[i] for i, x in enumerate(ids) if len(x) > 400]
    groups.append([i for i, x in enumerate(ids) if len(x) <= 400])
    worst_nll = worst_top = scale = 0.0
    for group in groups:
        t = max(len(ids[i]) for i in group)
        tokens = np.full((len(group), t), 2, np.int32)
        mask = np.zeros_like(tokens)
        for r, i in enumerate(group):
            tokens[r, :len(ids[i])], mask[r, :len(ids[i])] = ids[i], 1
        last = np.array([len(ids[i]) - 1 for i in group])
        out = _nll_and_last_logits(lm.params, tokens, mask, last, config=lm.config)
        nll, z_last = map(np.asarray, out)
        for r, i in enumerate(group):
            n = len(ids[i])
            worst_nll = max(worst_nll, np.max(np.abs(nll[r, :n - 1] - nll_ref[i])))
            order = np.argsort(-z_last[r], kind="stable")[:20]
            np.testing.assert_array_equal(order, top_i[i], err_msg=f"text {i}")
            worst_top = max(worst_top, np.max(np.abs(z_last[r, top_i[i]] - top_v[i])))
            scale = max(scale, np.max(np.abs(z_last[r])))
    # A token's NLL errs like the logits it comes from: relative to their size (2.0e-4 was
    # seen on a busy machine with logits of ~20).
    assert worst_nll < 2e-5 * scale, (worst_nll, scale)
    assert worst_top < 1e-3, worst_top


def test_unseen_score_totals(lm, unseen):
    texts, ids, nll_ref, *_ = unseen
    short = [i for i, x in enumerate(ids) if len(x) <= 400]
    res = lm.score([texts[i] for i in short], batch_size=4)
    for r, i in zip(res, short):
        want = float(np.sum(nll_ref[i].astype(np.float64)))
        assert r["tokens"] == len(ids[i])
        # Per token the sums differ by ~1e-5 on average: transformers' float32 NLL runs
        # 5e-6 to 1e-5 per token below a float64 run of the same weights, ours within 2e-6.
        assert abs(r["nll"] - want) / (len(ids[i]) - 1) < 2e-5, (i, r["nll"], want)
        assert math.isclose(r["bpb"], r["nll"] / (math.log(2) * len(texts[i].encode("utf-8"))),
                            rel_tol=1e-12)


def test_sliding_window_score_equals_brute_force(lm, unseen):
    texts, ids, *_ = unseen
    i = min((i for i, x in enumerate(ids) if len(x) > 100), key=lambda i: len(ids[i]))
    text, x, window = texts[i], ids[i].tolist(), 8
    n = len(x)
    # Brute force: windows [s, s+8) for s = 0, 4, 8, ... run as separate sequences; each
    # token is scored by the first window that holds it together with some context.
    starts = list(range(0, max(n - window, 0) + window // 2, window // 2))
    tokens = np.full((len(starts), window), 2, np.int32)
    mask = np.zeros_like(tokens)
    for r, s in enumerate(starts):
        seg = x[s:s + window]
        tokens[r, :len(seg)], mask[r, :len(seg)] = seg, 1
    per_window = np.asarray(lm.nll(lm.params, tokens, mask), np.float64)   # [windows, 7]
    scored = np.zeros(n, int)
    total = 0.0
    for r, s in enumerate(starts):
        for t in range(s + 1, min(s + window, n)):
            if not scored[t]:
                scored[t] += 1
                total += per_window[r, t - s - 1]
    assert scored[0] == 0 and np.all(scored[1:] == 1)
    (res,) = lm.score([text], window=window, batch_size=16)
    assert res["tokens"] == n
    assert abs(res["nll"] - total) < 1e-6 * abs(total) + 1e-4
    (full,) = lm.score([text], window=n)     # one window: the whole text
    assert full["nll"] < res["nll"]           # more context, better prediction


def test_window_plan_covers_every_token_once():
    for n in [0, 1, 2, 3, 7, 8, 9, 16, 17, 100, 1000]:
        for window in [2, 3, 8, 9, 64, 8192]:
            count = np.zeros(n, int)
            for s, e, f in _windows(n, window):
                assert e - s <= window and s < f <= e
                assert f - s >= min(window // 2, f) or s == 0     # context of the first new token
                count[f:e] += 1
            assert np.all(count[1:] == 1) and (n == 0 or count[0] == 0)


def test_batches_share_a_bucket_and_bound_tokens():
    lengths = [3, 300, 17, 17, 8000, 290, 16, 1, 200, 5000]
    batches = _batches(list(range(len(lengths))), lambda i: lengths[i], 4, 8192)
    seen = sorted(i for b, _ in batches for i in b)
    assert seen == list(range(len(lengths)))
    for items, (rows, length) in batches:
        assert len(items) == rows <= 4 and rows * length <= max(8192, length)
        assert all(_bucket(lengths[i], 8192) == length for i in items)
    assert ([_bucket(n, 10_000) for n in [1, 16, 17, 100, 129, 257, 300, 5000, 8000, 8192]]
            == [16, 16, 32, 112, 144, 288, 320, 5120, 8192, 8192])
    for n in range(1, 9000, 7):
        assert n <= _bucket(n, 10_000) <= max(1.125 * n, n + 15)
    assert _bucket(300, 290) == 300 and _bucket(280, 290) == 288 and _bucket(289, 290) == 290


def test_one_token_text_scores_zero(lm):
    (r,) = lm.score(["Hello"])
    assert r["tokens"] == 1 and r["nll"] == 0.0 and r["bpb"] == 0.0


# --------------------------------------------------------------------- fine-tuning


def test_loss_gradient_is_finite_and_sgd_step_lowers_loss(lm, golden):
    _, meta = golden
    tokens, mask = lm.encode_batch([meta["prompts"][0]])
    value_and_grad = jax.jit(jax.value_and_grad(lm.loss))
    loss0, grads = value_and_grad(lm.params, tokens, mask)
    assert jax.tree.structure(grads) == jax.tree.structure(lm.params)

    @jax.jit
    def after_step(params, grads):
        # one compiled program: op by op, the norm and the update of ~270 arrays took ~7 s
        leaves = jax.tree.leaves(grads)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in leaves]))
        norm = jnp.sqrt(sum(jnp.sum(g * g) for g in leaves))
        new = jax.tree.map(lambda p, g: p - (0.05 / norm) * g, params, grads)
        return finite, norm, lm.loss(new, tokens, mask)

    finite, norm, loss1 = after_step(lm.params, grads)
    assert bool(finite) and float(norm) > 0
    assert float(loss1) < float(loss0) - 1e-3, (float(loss0), float(loss1))
    # The mean matches the per-token NLL.
    nll = np.asarray(lm.nll(lm.params, tokens, mask))
    assert abs(float(loss0) - nll.mean()) < 1e-5


# --------------------------------------------------------------------- bad input


@pytest.mark.parametrize("texts, match", [
    ([], r"`texts` must be a non-empty list of str; got an empty list"),
    ("a string", r"`texts` must be a non-empty list of str; got a single str"),
    (["ok", 3], r"`texts\[1\]` must be a str"),
    (["ok", ""], r"`texts\[1\]` is an empty string"),
    (None, r"`texts` must be a non-empty list of str; got NoneType"),
])
def test_bad_texts_raise(lm, texts, match):
    with pytest.raises(ValueError, match=match):
        lm.score(texts)
    with pytest.raises(ValueError, match=match):
        lm.embed(texts)


@pytest.mark.parametrize("kwargs, match", [
    ({"window": 1}, r"`window` must satisfy 2 <= window <= 8192"),
    ({"window": 9000}, r"`window`"),
    ({"window": 8.0}, r"`window` must be an int"),
    ({"batch_size": 0}, r"`batch_size`"),
])
def test_bad_score_options_raise(lm, kwargs, match):
    with pytest.raises(ValueError, match=match):
        lm.score(["some text"], **kwargs)


# --------------------------------------------------------------------- HF-format Llama


@pytest.fixture(scope="module")
def tiny():
    params, config = llama.load_hf_llama(DATA / "tiny_llama")
    return params, config, dict(np.load(DATA / "tiny_llama" / "expected.npz"))


def test_tiny_hf_llama_matches_transformers(tiny):
    params, config, e = tiny
    assert config == llama.LlamaConfig(256, 64, 2, 4, 2, 16, 128, 10000.0, 1e-5, 128, False)
    assert "lm_head" in params and params["layers"]["k_proj"].shape == (2, 32, 64)
    z = np.asarray(llama.logits(params, e["input_ids"], e["attention_mask"], config))
    real = e["attention_mask"].astype(bool)
    assert np.max(np.abs(z - e["logits"])[real]) < 1e-5 * max(1.0, np.abs(e["logits"]).max())


def test_tiny_llama_nll_and_chunked_paths(tiny, monkeypatch):
    """Long inputs take the chunked attention and chunked NLL paths; both must agree
    with the plain computation."""
    params, config, _ = tiny
    rng = np.random.default_rng(0)
    t = 1300   # > 1024: attention runs in (padded) blocks of 512 queries
    tokens = rng.integers(0, 256, (2, t)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[1, 1100:] = 0
    # Fresh lambdas, so that nothing traced before the monkeypatch is reused.
    z = jax.jit(lambda p, t, m: llama.logits(p, t, m, config))(params, tokens, mask)
    nll = jax.jit(lambda p, t, m: llama.nll(p, t, m, config))(params, tokens, mask)
    monkeypatch.setattr(llama, "_ATTN_CHUNK_ABOVE", 10**9)
    z_plain = jax.jit(lambda p, t, m: llama.logits(p, t, m, config))(params, tokens, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(z)[real], np.asarray(z_plain)[real],
                               atol=1e-5 * max(1.0, float(np.abs(np.asarray(z_plain)).max())))
    logp = jax.nn.log_softmax(np.asarray(z_plain, np.float64)[:, :-1], axis=-1)
    ref = -np.take_along_axis(np.asarray(logp), tokens[:, 1:, None], -1)[..., 0]
    ref = ref * (mask[:, 1:] * mask[:, :-1])
    np.testing.assert_allclose(np.asarray(nll), ref, atol=1e-5 * max(1.0, float(np.abs(ref).max())))
