"""all-MiniLM-L6-v2 in JAX against sentence-transformers' outputs (no torch needed here).

tests/data/minilm_golden.{npz,json}: ids, token-level intermediates and embeddings of 8
sentences (copied from the shared fixtures). tests/data/minilm_unseen.npz: embeddings of
17 stdlib texts, 8 of them truncated at 256 tokens, written by
experiments/benchmarks/make_model_fixtures_minilm.py with sentence-transformers 6.2.0.
"""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from activeft_jax.models.minilm import MiniLM, embed, encoder_layer, forward, load_minilm, mean_pool

DATA = Path(__file__).parent / "data"
ATOL = 1e-5


@pytest.fixture(scope="module")
def model() -> MiniLM:
    return load_minilm()


@pytest.fixture(scope="module")
def golden():
    with open(DATA / "minilm_golden.json") as f:
        meta = json.load(f)
    return meta, dict(np.load(DATA / "minilm_golden.npz"))


@pytest.fixture(scope="module")
def unseen():
    data = np.load(DATA / "minilm_unseen.npz")
    return data["texts"].tolist(), data["embeddings"], data["num_tokens"]


@pytest.fixture(autouse=True)
def highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def test_attributes(model, golden):
    meta, _ = golden
    assert model.name == "all-MiniLM-L6-v2"
    assert (model.dim, model.max_seq_length) == (384, 256)
    assert model.fingerprint == "sha256:" + meta["model_safetensors_sha256"][:16]
    assert model.config.num_layers == 6 and model.config.num_heads == 12


def test_tokenize_matches_golden(model, golden):
    meta, g = golden
    ids, mask = model.tokenize(meta["sentences"])
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    np.testing.assert_array_equal(ids, g["input_ids"])
    np.testing.assert_array_equal(mask, g["attention_mask"])


def test_tokenize_truncates_at_256_not_128(model, unseen):
    texts, _, num_tokens = unseen
    ids, mask = model.tokenize(texts)
    assert ids.shape == (len(texts), 256)  # padded to the longest, which is truncated
    np.testing.assert_array_equal(mask.sum(axis=1), num_tokens)
    assert ids[0, 255] == 102  # [SEP] closes a truncated text


def test_token_level_intermediates(model, golden):
    meta, g = golden
    ids, mask = g["input_ids"], g["attention_mask"]
    n0 = int(mask[0].sum())
    h0 = embed(model.params, ids, model.config)
    np.testing.assert_allclose(h0[0, :n0], g["token_embeddings_layer0_first_sentence"],
                               atol=ATOL, rtol=0)
    h1 = encoder_layer(model.params["layers"][0], h0, mask, model.config)
    np.testing.assert_allclose(h1[0, :n0], g["hidden_states_layer1_first_sentence"],
                               atol=ATOL, rtol=0)
    hidden = jax.jit(forward, static_argnames="config")(model.params, ids, mask, model.config)
    np.testing.assert_allclose(hidden[0, :n0], g["token_embeddings_last_layer_first_sentence"],
                               atol=ATOL, rtol=0)
    np.testing.assert_allclose(mean_pool(hidden, mask, normalize=False),
                               g["mean_pooled_unnormalized"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(mean_pool(hidden, mask), g["sentence_embeddings"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("batch_size", [3, 32])
def test_encode_golden(model, golden, batch_size):
    meta, g = golden
    emb = model.encode(meta["sentences"], batch_size=batch_size)
    assert emb.shape == (8, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, g["sentence_embeddings"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)


def test_encode_unnormalized(model, golden):
    meta, g = golden
    emb = model.encode(meta["sentences"], normalize=False)
    np.testing.assert_allclose(emb, g["mean_pooled_unnormalized"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("batch_size", [3, 32])
def test_encode_unseen_texts(model, unseen, batch_size):
    """Texts the golden set lacks: > 256 tokens, non-ASCII scripts, code, one word."""
    texts, expected, _ = unseen
    emb = model.encode(texts, batch_size=batch_size)
    diff = np.abs(emb - expected).max(axis=1)
    assert diff.max() <= ATOL, f"max abs diff per text: {diff}"


def test_encode_keeps_input_order_and_single_text(model, golden):
    meta, g = golden
    order = [7, 0, 4]  # "" first: the shortest text leads
    emb = model.encode([meta["sentences"][i] for i in order], batch_size=3)
    np.testing.assert_allclose(emb, g["sentence_embeddings"][order], atol=ATOL, rtol=0)
    one = model.encode([meta["sentences"][7]], batch_size=3)
    np.testing.assert_allclose(one, g["sentence_embeddings"][7:8], atol=ATOL, rtol=0)


def test_progress_bar_goes_to_stderr(model, capsys):
    model.encode(["progress", "bar"], batch_size=3, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "MiniLM" in err


@pytest.mark.parametrize("texts, match", [
    ([], "`texts` must be a non-empty list of str; got an empty list"),
    ("a sentence", "got a single str"),
    (["ok", 3], r"`texts\[1\]` must be a str; got int"),
    (["ok", None], r"`texts\[1\]` must be a str; got NoneType"),
    (None, "got NoneType"),
])
def test_bad_texts(model, texts, match):
    with pytest.raises(ValueError, match=match):
        model.encode(texts)
    with pytest.raises(ValueError, match=match):
        model.tokenize(texts)


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True])
def test_bad_batch_size(model, batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        model.encode(["x"], batch_size=batch_size)


def test_bad_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_minilm(tmp_path)


def test_forward_is_differentiable(model, golden):
    """The pure forward composes with jax.grad (e.g. for gradient embeddings)."""
    _, g = golden
    ids, mask = g["input_ids"][:2], g["attention_mask"][:2]

    def loss(params):
        return mean_pool(forward(params, ids, mask, model.config), mask)[0, 0]

    grads = jax.jit(jax.grad(loss))(model.params)
    qkv = np.asarray(grads["layers"][0]["qkv_kernel"])
    assert qkv.shape == (384, 1152) and np.all(np.isfinite(qkv)) and np.abs(qkv).max() > 0
