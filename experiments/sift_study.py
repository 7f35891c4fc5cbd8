"""SIFT study on real code: test-time fine-tuning of SmolLM2 on Python-stdlib chunks.

Pool: the top-level ``*.py`` modules of this interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``), minus the held-out modules, cut into chunks of
about `chunk_chars` characters on line boundaries (lines are appended until the chunk
reaches `chunk_chars`; a single longer line is its own chunk; chunks with fewer than
`min_chunk_chars` non-blank characters are dropped).

Held-out modules: a module is held out when ``sha256(name) % holdout_mod == 0``
(deterministic, independent of the pool); those with enough text give one test
document each, the first `docs` in order of their hash. The document is a run of
whole lines starting at the first line boundary at or after a third of the file, of
at least `doc_min_chars` and at most `doc_max_chars` characters (lines are appended
while the result stays <= doc_max_chars; documents shorter than doc_min_chars are
skipped). The whole held-out module is absent from the pool.

Prompt: the MiniLM (all-MiniLM-L6-v2, unit-norm) embedding of the document's first
`prompt_chars` characters. Evaluation: bits per byte of the WHOLE document (its tokens
2..T, T <= max_doc_tokens) under SmolLM2-135M(-Instruct, dequantized Q4_1 GGUF):

1. base: the model as is;
2. in_context: the k nearest-neighbour chunks (cosine), best first, each cut to
   max_example_tokens, joined with "\\n\\n" and prepended to the document (only the
   document's tokens are scored);
3. ttft_nn: Adam, one step per chunk, on the k nearest neighbours (best first);
4. ttft_sift: the same on SIFT's k picks (candidates=200, λ=0.01, repeats allowed),
   in SIFT's selection order.

k and the learning rate were fixed before any result was seen: k = 5, Adam lr 5e-5
(the SIFT paper's setting for GPT-2-class models, one step per example).

    python experiments/sift_study.py                 # 20 documents
    python experiments/sift_study.py --docs 10
    python experiments/sift_study.py --replot        # table and plot from results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sysconfig
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results" / "sift_study"
CACHE = ROOT / "experiments" / "results" / "cache"


@dataclasses.dataclass(frozen=True)
class Config:
    docs: int = 20
    k: int = 5
    learning_rate: float = 5e-5
    candidates: int = 200
    lambda_: float = 0.01
    holdout_mod: int = 8
    chunk_chars: int = 1000
    min_chunk_chars: int = 200
    doc_min_chars: int = 1000
    doc_max_chars: int = 1500
    prompt_chars: int = 500
    max_example_tokens: int = 256
    max_doc_tokens: int = 512
    batch: int = 5           # documents per ttft_evaluate call (same shapes: one compile)


def _hash(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest(), 16)


def _chunks(text: str, size: int) -> list[str]:
    out, cur, n = [], [], 0
    for line in text.splitlines(keepends=True):
        cur.append(line)
        n += len(line)
        if n >= size:
            out.append("".join(cur))
            cur, n = [], 0
    if cur:
        out.append("".join(cur))
    return out


def _document(text: str, lo: int, hi: int):
    lines = text.splitlines(keepends=True)
    start, pos = 0, 0
    for i, line in enumerate(lines):
        if pos >= len(text) // 3:
            start = i
            break
        pos += len(line)
    doc = ""
    for line in lines[start:]:
        if len(doc) + len(line) > hi:
            break
        doc += line
    return doc if len(doc) >= lo and doc.strip() else None


def build_data(cfg: Config):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py"))
    pool, pool_src, held, docs = [], [], [], []
    for p in files:
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        name = p.stem
        if _hash(name) % cfg.holdout_mod == 0:
            held.append((name, text))
            continue
        for c in _chunks(text, cfg.chunk_chars):
            if len("".join(c.split())) >= cfg.min_chunk_chars:
                pool.append(c)
                pool_src.append(name)
    held.sort(key=lambda x: _hash(x[0]))
    for name, text in held:
        d = _document(text, cfg.doc_min_chars, cfg.doc_max_chars)
        if d is not None:
            docs.append((name, d))
        if len(docs) == cfg.docs:
            break
    return stdlib, pool, pool_src, [h[0] for h in held], docs


def _ci(a):
    a = np.asarray(a, np.float64)
    n = a.shape[0]
    from scipy import stats
    half = stats.t.ppf(0.975, n - 1) * a.std(axis=0, ddof=1) / math.sqrt(n)
    return a.mean(axis=0), half


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=Config.docs)
    ap.add_argument("--replot", action="store_true",
                    help="rewrite table and plot from results/sift_study/results.json")
    args = ap.parse_args(argv)
    if args.replot:
        res = json.loads((RESULTS / "results.json").read_text())
        return write(res, Config(**res["config"]))
    cfg = Config(docs=args.docs)
    t0 = time.time()
    import jax
    from activeft_jax import sift
    from activeft_jax.embeddings import cached_embeddings
    from activeft_jax.models import load_minilm, load_smollm2
    from activeft_jax.retrieval import top_k
    from activeft_jax.training import (in_context_evaluate, in_context_inputs, ttft_evaluate,
                                       ttft_inputs)

    stdlib, pool, pool_src, held_names, docs = build_data(cfg)
    names = [d[0] for d in docs]
    texts = [d[1] for d in docs]
    prompts = [t[:cfg.prompt_chars] for t in texts]
    print(f"stdlib {stdlib}: pool {len(pool)} chunks from {len(set(pool_src))} modules; "
          f"{len(held_names)} held-out modules, {len(docs)} documents", flush=True)
    assert not set(names) & set(pool_src)

    enc = load_minilm()
    CACHE.mkdir(parents=True, exist_ok=True)
    opts = {"normalize": True, "chunk_chars": cfg.chunk_chars}
    pool_emb = cached_embeddings(CACHE / "stdlib_pool_minilm.npz", lambda: enc.encode(pool),
                                 inputs=pool, model=enc.name, fingerprint=enc.fingerprint,
                                 options=opts, verbose=True)
    q_emb = cached_embeddings(CACHE / "stdlib_prompts_minilm.npz", lambda: enc.encode(prompts),
                              inputs=prompts, model=enc.name, fingerprint=enc.fingerprint,
                              options={"normalize": True}, verbose=True)
    pool_emb = np.asarray(pool_emb, np.float32)
    q_emb = np.asarray(q_emb, np.float32)
    print(f"embeddings ready ({time.time() - t0:.0f}s)", flush=True)

    nn = np.asarray(top_k(q_emb, pool_emb, k=cfg.k, metric="ip").indices)
    sel = np.asarray(sift(pool_emb, q_emb, k=cfg.k, candidates=cfg.candidates,
                          lambda_=cfg.lambda_).indices)
    nn_ex = [[pool[i] for i in row] for row in nn]
    sift_ex = [[pool[i] for i in row] for row in sel]

    lm = load_smollm2()
    window = min(2048, int(lm.context_length))
    res: dict = {"config": dataclasses.asdict(cfg), "stdlib": str(stdlib), "pool_size": len(pool),
                 "held_out_modules": held_names, "documents": names,
                 "nn_indices": nn.tolist(), "sift_indices": sel.tolist(),
                 "nn_sources": [[pool_src[i] for i in r] for r in nn],
                 "sift_sources": [[pool_src[i] for i in r] for r in sel],
                 "model": repr(lm.fingerprint), "window": window}

    # cut documents to max_doc_tokens up front, so every method scores the same text
    cut = []
    for t, e in zip(texts, lm.tokenizer.encode_batch(texts, add_special_tokens=False)):
        cut.append(t if len(e.ids) <= cfg.max_doc_tokens
                   else t[:e.offsets[cfg.max_doc_tokens - 1][1]])
    res["doc_truncated"] = [a != b for a, b in zip(texts, cut)]
    texts = cut
    ic = in_context_inputs(lm, nn_ex, texts, window=window,
                           max_example_tokens=cfg.max_example_tokens)
    # the document is cut to max_doc_tokens for every method: same scored tokens/bytes
    assert int(ic.doc_length.max()) <= cfg.max_doc_tokens, "document longer than max_doc_tokens"
    ic_out = in_context_evaluate(lm.nll, lm.params, ic)
    res["bpb_in_context"] = np.asarray(ic_out["bpb"]).tolist()
    res["in_context_n"] = ic.n_context.tolist()
    print(f"in-context done ({time.time() - t0:.0f}s); examples used {ic.n_context.tolist()}",
          flush=True)

    for method, ex in (("nn", nn_ex), ("sift", sift_ex)):
        curves, before, after, losses = [], [], [], []
        for s in range(0, len(texts), cfg.batch):
            inp = ttft_inputs(lm, ex[s:s + cfg.batch], texts[s:s + cfg.batch],
                              max_example_tokens=cfg.max_example_tokens,
                              max_doc_tokens=cfg.max_doc_tokens, k=cfg.k,
                              pad_examples_to=cfg.max_example_tokens,
                              pad_doc_to=cfg.max_doc_tokens)
            out = ttft_evaluate(lm.nll, lm.loss, lm.params, cfg.learning_rate,
                                inp.examples_tokens, inp.examples_mask, inp.doc_tokens,
                                inp.doc_mask, doc_bytes=inp.doc_bytes, curve=True)
            curves.append(np.asarray(out["bpb_curve"]))
            before.append(np.asarray(out["bpb_before"]))
            after.append(np.asarray(out["bpb_after"]))
            losses.append(np.asarray(out["train_loss"]))
            print(f"ttft {method}: {s + len(inp.doc_tokens)}/{len(texts)} docs "
                  f"({time.time() - t0:.0f}s)", flush=True)
        res[f"bpb_curve_{method}"] = np.concatenate(curves).tolist()
        res["bpb_base"] = np.concatenate(before).tolist()
        res[f"bpb_ttft_{method}"] = np.concatenate(after).tolist()
        res[f"train_loss_{method}"] = np.concatenate(losses).tolist()

    res["runtime_s"] = time.time() - t0
    res["jax_backend"] = jax.default_backend()
    write(res, cfg)


def write(res: dict, cfg: Config):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "results.json").write_text(json.dumps(res, indent=1))
    base = np.array(res["bpb_base"])
    methods = [("base", base), ("in-context (k NN prepended)", np.array(res["bpb_in_context"])),
               ("TTFT on k nearest neighbours", np.array(res["bpb_ttft_nn"])),
               ("TTFT on SIFT picks", np.array(res["bpb_ttft_sift"]))]
    n = len(base)
    lines = [f"SmolLM2-135M bits per byte on {n} held-out stdlib documents (tokens 2..T), "
             f"k = {cfg.k}, Adam lr {cfg.learning_rate:g}, one step per example; "
             f"mean ± 95% t-interval over documents.", "",
             "| method | bpb | paired diff. to base |", "|---|---|---|"]
    for name, v in methods:
        m, h = _ci(v)
        if name == "base":
            diff = "—"
        else:
            dm, dh = _ci(v - base)
            diff = f"{dm:+.4f} ± {dh:.4f}"
        lines.append(f"| {name} | {m:.4f} ± {h:.4f} | {diff} |")
    d, dh = _ci(np.array(res["bpb_ttft_sift"]) - np.array(res["bpb_ttft_nn"]))
    wins = int(np.sum(np.array(res["bpb_ttft_sift"]) < np.array(res["bpb_ttft_nn"])))
    sel = np.array(res["sift_indices"])
    nn = np.array(res["nn_indices"])
    distinct = np.mean([len(set(r)) for r in sel])
    overlap = np.mean([len(set(a) & set(b)) for a, b in zip(sel, nn)])
    lines += ["", f"SIFT − NN (TTFT): {d:+.4f} ± {dh:.4f} bpb; SIFT better on {wins}/{n} "
              f"documents. SIFT picks: {distinct:.2f} distinct of {cfg.k} on average; "
              f"{overlap:.2f} of them among the {cfg.k} nearest neighbours on average.",
              f"Pool: {res['pool_size']} chunks; runtime {res['runtime_s']:.0f} s "
              f"({res['jax_backend']})."]
    table = "\n".join(lines)
    (RESULTS / "table.md").write_text(table + "\n")
    print(table)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # left: mean bpb; right: paired change to the base model, with 95% t-intervals
    # (the between-document spread is far larger than the differences between methods)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    steps = np.arange(cfg.k + 1)
    base_col = np.array(res["bpb_base"])[:, None]
    for key, label, c in (("nn", "TTFT, nearest neighbours", "C0"), ("sift", "TTFT, SIFT", "C1")):
        curve = np.array(res[f"bpb_curve_{key}"])
        ax.plot(steps, curve.mean(0), "o-", color=c, label=label)
        m, h = _ci(curve - base_col)
        ax2.plot(steps, m, "o-", color=c, label=label)
        ax2.fill_between(steps, m - h, m + h, color=c, alpha=0.15)
    ic = np.array(res["bpb_in_context"])
    ax.axhline(float(ic.mean()), color="C2", ls="--", label="in-context (k NN)")
    m, h = _ci(ic - base_col[:, 0])
    ax2.axhline(float(m), color="C2", ls="--", label=f"in-context (k NN), ±{h:.3f}")
    ax2.axhline(0.0, color="k", lw=0.5)
    for a in (ax, ax2):
        a.set_xlabel("test-time steps (examples)")
        a.legend()
    ax.set_ylabel("bits per byte (mean over documents)")
    ax2.set_ylabel("bpb − base bpb (paired, mean ± 95% t-int.)")
    fig.suptitle(f"SmolLM2-135M on {n} held-out stdlib documents, k = {cfg.k}, "
                 f"Adam lr {cfg.learning_rate:g}")
    fig.tight_layout()
    fig.savefig(RESULTS / "bpb_vs_steps.png", dpi=120)


if __name__ == "__main__":
    main()
