"""SIFT study: test-time fine-tuning of SmolLM2 on data selected per prompt, on two corpora.

Two corpora, the same pipeline and settings for both (`--corpus code|news|all`):

code — the pool is the top-level ``*.py`` modules of this interpreter's standard
library (``sysconfig.get_paths()["stdlib"]``) minus the held-out modules, cut into
chunks of about `chunk_chars` characters on line boundaries (lines are appended
until the chunk reaches `chunk_chars`; a single longer line is its own chunk;
chunks with fewer than `min_chunk_chars` non-blank characters are dropped). A
module is held out when ``sha256(name) % holdout_mod == 0`` (deterministic,
independent of the pool); those with enough text give one test document each
(`docs_per_module` consecutive ones in the large configuration), the first `docs`
in order of their hash. The document is a run of whole lines starting
at the first line boundary at or after a third of the file, of at least
`doc_min_chars` and at most `doc_max_chars` characters (lines are appended while
the result stays <= doc_max_chars; shorter documents are skipped). The whole
held-out module is absent from the pool.

news — BBC News (Greene & Cunningham 2006, from the offline `bbc_news` data set;
`activeft_jax.data`). Test documents come from its `test` split (431 articles,
held out by a hash of the article id), the first `docs` in order of
``sha256(id)`` that give a document: the article from its title on, whole lines
(paragraphs) while the result stays <= doc_max_chars, at least doc_min_chars. The
pool is the `train` split's 1794 articles cut into chunks like the code, minus
every article that shares a paragraph of >= `dup_chars` characters
(whitespace-normalized) with a test article: the corpus has exact and near
duplicates (>= 5% of articles), which would put the test text itself in the pool.

Prompt: the MiniLM (all-MiniLM-L6-v2, unit-norm) embedding of the document's first
`prompt_chars` characters. Evaluation: bits per byte of the WHOLE document (its
tokens 2..T, T <= max_doc_tokens) under SmolLM2-135M(-Instruct, dequantized Q4_1
GGUF):

1. base: the model as is;
2. in_context: the k nearest-neighbour chunks (cosine), best first, each cut to
   max_example_tokens, joined with "\\n\\n" and prepended to the document (only the
   document's tokens are scored);
3. ttft_nn: Adam, one step per chunk, on the k nearest neighbours (best first);
4. ttft_sift: the same on SIFT's k picks (prefilter K=200, λ=0.01, repeats allowed),
   in SIFT's selection order;
5. adaptive SIFT: SIFT's picks, but each prompt stops at the first step n where
   its posterior variance σ²_n(prompt) <= `adaptive_threshold` (0.5: half the
   prior variance ‖q‖² = 1), at most k. Its picks are SIFT's first n, so its bpb
   is read off the SIFT curve after n steps (no extra training); the plots also
   sweep the threshold.

k, the learning rate and the threshold were fixed before any result was seen:
k = 5, Adam lr 5e-5 (the SIFT paper's setting for GPT-2-class models, one step
per example), threshold 0.5. The default (both corpora, 20 documents each) took
29 min 34 s on this 2-core machine from cold caches (data, embeddings).

A larger configuration for a GPU/TPU (not run here: no accelerator was available)
is the `--large` preset: 100 documents per corpus (code: a quarter of the modules
held out, up to 4 consecutive documents from each), k = 20, documents up to 4000 characters and 1024 tokens,
examples up to 512 tokens, 25 documents per compiled call; every other setting as
above. (Documents from one module are not independent; the t-intervals treat them
as if they were.) The selection is the same code; only test-time fine-tuning grows
(P x k optimizer steps of SmolLM2-135M).

    python -m experiments.sift_study                  # both corpora, 20 documents each
    python -m experiments.sift_study --corpus news --docs 10
    python -m experiments.sift_study --large          # accelerator configuration
    python -m experiments.sift_study --replot         # tables and plots from results.json
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sysconfig
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from experiments.common import (RESULTS as _RESULTS, OneLineParser, check_fields, ci, output_dirs,
                                read_config, save_figure, write_text)

RESULTS = _RESULTS / "sift_study"
CORPORA = ("code", "news")


@dataclasses.dataclass(frozen=True)
class Config:
    docs: int = 20
    k: int = 5
    learning_rate: float = 5e-5
    prefilter: int = 200
    lambda_: float = 0.01
    adaptive_threshold: float = 0.5
    holdout_mod: int = 8
    docs_per_module: int = 1  # code: consecutive documents taken from one held-out module
    chunk_chars: int = 1000
    min_chunk_chars: int = 200
    doc_min_chars: int = 1000
    doc_max_chars: int = 1500
    dup_chars: int = 50
    prompt_chars: int = 500
    max_example_tokens: int = 256
    max_doc_tokens: int = 512
    batch: int = 5           # documents per ttft_evaluate call (same shapes: one compile)


#: The accelerator configuration (`--large`); not run on this 2-core machine.
LARGE = dict(docs=100, k=20, max_doc_tokens=1024, max_example_tokens=512, doc_max_chars=4000,
             holdout_mod=4, docs_per_module=4, batch=25)


class Corpus(NamedTuple):
    pool: list          # chunk texts
    pool_src: list      # per chunk: the module name / article id it came from
    held: list          # held-out module names / test article ids considered
    docs: list          # [(name, document text)]
    info: dict          # what to record about how it was built


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


def _documents(text: str, lo: int, hi: int, start_frac: float = 1 / 3, count: int = 1):
    """Up to `count` consecutive, non-overlapping documents of whole lines from `text`.

    The first starts at the first line boundary at or after `start_frac` of the text;
    each takes lines while it stays <= `hi` characters and the next starts where it
    ended. Stops at the first candidate shorter than `lo` (or blank)."""
    lines = text.splitlines(keepends=True)
    start, pos = 0, 0
    for i, line in enumerate(lines):
        if pos >= int(len(text) * start_frac):
            start = i
            break
        pos += len(line)
    out = []
    while len(out) < count:
        doc, end = "", start
        for line in lines[start:]:
            if len(doc) + len(line) > hi:
                break
            doc += line
            end += 1
        if len(doc) < lo or not doc.strip():
            break
        out.append(doc)
        start = end
    return out


def _add_chunks(cfg: Config, text: str, src: str, pool: list, pool_src: list):
    for c in _chunks(text, cfg.chunk_chars):
        if len("".join(c.split())) >= cfg.min_chunk_chars:
            pool.append(c)
            pool_src.append(src)


def build_code(cfg: Config) -> Corpus:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    pool, pool_src, held, docs = [], [], [], []
    for p in sorted(stdlib.glob("*.py")):
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if _hash(p.stem) % cfg.holdout_mod == 0:
            held.append((p.stem, text))
        else:
            _add_chunks(cfg, text, p.stem, pool, pool_src)
    held.sort(key=lambda x: _hash(x[0]))
    for name, text in held:
        found = _documents(text, cfg.doc_min_chars, cfg.doc_max_chars,
                           count=cfg.docs_per_module)
        docs += [(name if j == 0 else f"{name}#{j}", d) for j, d in enumerate(found)]
        if len(docs) >= cfg.docs:
            del docs[cfg.docs:]
            break
    return Corpus(pool, pool_src, [h[0] for h in held], docs, {"source": str(stdlib)})


def _paragraphs(text: str, min_chars: int) -> set:
    paras = (" ".join(p.split()) for p in text.splitlines())
    return {p for p in paras if len(p) >= min_chars}


def build_news(cfg: Config) -> Corpus:
    from activeft_jax import data
    train, test = data.load("bbc_news", "train"), data.load("bbc_news", "test")
    order = sorted(range(len(test.ids)), key=lambda i: _hash(str(test.ids[i])))
    docs, shared = [], set()
    for i in order:
        d = _documents(str(test.text[i]), cfg.doc_min_chars, cfg.doc_max_chars, start_frac=0.0)
        if d:
            docs.append((str(test.ids[i]), d[0]))
            shared |= _paragraphs(str(test.text[i]), cfg.dup_chars)
        if len(docs) == cfg.docs:
            break
    pool, pool_src, dropped = [], [], []
    for text, aid in zip(train.text, train.ids):
        if _paragraphs(str(text), cfg.dup_chars) & shared:
            dropped.append(str(aid))     # shares a paragraph with a test article
            continue
        _add_chunks(cfg, str(text), str(aid), pool, pool_src)
    info = {"source": "bbc_news (activeft_jax.data): test split -> documents, train -> pool",
            "pool_articles": len(train.ids) - len(dropped), "dropped_duplicates": dropped}
    return Corpus(pool, pool_src, [str(t) for t in test.ids], docs, info)


BUILD = {"code": build_code, "news": build_news}


def adaptive_steps(post_var: np.ndarray, threshold: float) -> np.ndarray:
    """Adaptive SIFT's steps for any threshold from the recorded posterior variances
    (post_var [P, k + 1]: σ²_0..σ²_k), by the library's rule."""
    from activeft_jax.selection import adaptive_steps as steps
    return np.asarray(steps(post_var[:, 0], -post_var[:, 1:], threshold))


def main(argv=None):
    ap = OneLineParser(prog="sift study", description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", choices=(*CORPORA, "all"), default="all")
    ap.add_argument("--docs", type=int, default=None, help="documents per corpus (default 20)")
    ap.add_argument("--k", type=int, default=None, help="test-time steps (default 5)")
    ap.add_argument("--large", action="store_true",
                    help="the accelerator configuration: " + ", ".join(
                        f"{k}={v}" for k, v in LARGE.items()))
    ap.add_argument("--config", help="JSON object of Config fields (applied after --large)")
    ap.add_argument("--out", type=Path, default=None, help=f"results folder (default {RESULTS})")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="embedding cache folder (default: <out>/cache with --out, else "
                    "experiments/results/cache)")
    ap.add_argument("--replot", action="store_true",
                    help="rewrite tables and plots from <out>/<corpus>/results.json")
    args = ap.parse_args(argv)
    out_given = args.out is not None
    args.out = args.out if out_given else RESULTS
    corpora = CORPORA if args.corpus == "all" else (args.corpus,)
    if args.replot:
        done = {}
        for c in corpora:
            f = args.out / c / "results.json"
            if f.exists():
                res = json.loads(f.read_text())
                write_corpus(res, Config(**res["config"]), args.out / c)
                done[c] = res
        if not done:
            ap.error(f"--replot: no results.json under {args.out}/{{{','.join(corpora)}}}")
        return write_summary(done, args.out)
    over = dict(LARGE) if args.large else {}
    try:
        over.update(read_config(args.config, Config))
    except ValueError as e:
        ap.error(str(e))
    for name in ("docs", "k"):
        if getattr(args, name) is not None:
            over[name] = getattr(args, name)
    cfg = Config(**over)
    from activeft_jax.validation import NumberRange

    rates = ("learning_rate", "lambda_", "adaptive_threshold")
    bad = []
    for f in dataclasses.fields(cfg):
        kind = (("float", NumberRange(low=0, low_open=True)) if f.name in rates
                else ("int", NumberRange(integer=True, low=1)))
        try:
            check_fields(cfg, {f.name: kind})
        except ValueError:
            bad.append(f"{f.name}={getattr(cfg, f.name)!r}")
    if bad:
        ap.error("bad configuration: " + ", ".join(bad) + " (counts are integers >= 1, "
                 "rates and thresholds finite and > 0)")
    if cfg.docs < 2:
        bad.append(f"docs={cfg.docs} (at least 2, for an interval)")
    if cfg.prefilter < cfg.k:
        bad.append(f"prefilter={cfg.prefilter} < k={cfg.k}")
    if bad:
        ap.error("bad configuration: " + ", ".join(bad) + " (counts are integers >= 1, "
                 "rates and thresholds > 0)")
    try:
        args.out, cache = output_dirs(args.out if out_given else None, args.cache_dir, RESULTS)
    except ValueError as e:
        ap.error(str(e))
    t0 = time.time()
    from activeft_jax.models import load_minilm, load_smollm2
    enc, lm = load_minilm(), load_smollm2()
    done = {}
    for c in corpora:
        done[c] = run_corpus(cfg, c, enc, lm, t0, cache)
        write_corpus(done[c], cfg, args.out / c)
    write_summary(done, args.out)
    print(f"total {time.time() - t0:.0f} s", flush=True)


def run_corpus(cfg: Config, corpus: str, enc, lm, t0: float, cache: Path) -> dict:
    import jax
    from activeft_jax import sift
    from activeft_jax.embeddings import cached_embeddings
    from activeft_jax.retrieval import top_k
    from activeft_jax.training import (in_context_evaluate, in_context_inputs, ttft_evaluate,
                                       ttft_inputs)

    t1 = time.time()
    data = BUILD[corpus](cfg)
    names = [d[0] for d in data.docs]
    texts = [d[1] for d in data.docs]
    prompts = [t[:cfg.prompt_chars] for t in texts]
    pool, pool_src = data.pool, data.pool_src
    print(f"[{corpus}] pool {len(pool)} chunks from {len(set(pool_src))} sources; "
          f"{len(data.held)} held out, {len(data.docs)} documents", flush=True)
    if len(data.docs) < cfg.docs:
        raise SystemExit(f"error: [{corpus}] only {len(data.docs)} documents qualify; "
                         f"asked for {cfg.docs}")
    assert not {n.split('#')[0] for n in names} & set(pool_src)

    cache.mkdir(parents=True, exist_ok=True)
    prefix = {"code": "stdlib", "news": "bbc_news"}[corpus]
    opts = {"normalize": True, "chunk_chars": cfg.chunk_chars}
    pool_emb = cached_embeddings(cache / f"{prefix}_pool_minilm.npz", lambda: enc.encode(pool),
                                 inputs=pool, model=enc.name, fingerprint=enc.fingerprint,
                                 options=opts, verbose=True)
    q_emb = cached_embeddings(cache / f"{prefix}_prompts_minilm.npz",
                              lambda: enc.encode(prompts), inputs=prompts, model=enc.name,
                              fingerprint=enc.fingerprint, options={"normalize": True},
                              verbose=True)
    pool_emb = np.asarray(pool_emb, np.float32)
    q_emb = np.asarray(q_emb, np.float32)
    print(f"[{corpus}] embeddings ready ({time.time() - t0:.0f}s)", flush=True)

    nn = top_k(q_emb, pool_emb, k=cfg.k, metric="ip")
    sel = sift(pool_emb, q_emb, k=cfg.k, prefilter=cfg.prefilter, lambda_=cfg.lambda_,
               adaptive=cfg.adaptive_threshold)
    nn_idx, sel_idx = np.asarray(nn.indices), np.asarray(sel.indices)
    # posterior variance of each prompt after n = 0..k picks (n = 0: the prior ‖q‖²)
    post_var = np.concatenate([np.sum(q_emb.astype(np.float64) ** 2, axis=1)[:, None],
                               -np.asarray(sel.values, np.float64)], axis=1)
    nn_ex = [[pool[i] for i in row] for row in nn_idx]
    sift_ex = [[pool[i] for i in row] for row in sel_idx]

    window = min(2048, int(lm.context_length))
    res: dict = {"corpus": corpus, "config": dataclasses.asdict(cfg), **data.info,
                 "pool_size": len(pool), "held_out": data.held, "documents": names,
                 "nn_indices": nn_idx.tolist(), "nn_cosine": np.asarray(nn.values).tolist(),
                 "sift_indices": sel_idx.tolist(), "sift_post_var": post_var.tolist(),
                 "adaptive_steps": np.asarray(sel.steps).tolist(),
                 "nn_sources": [[pool_src[i] for i in r] for r in nn_idx],
                 "sift_sources": [[pool_src[i] for i in r] for r in sel_idx],
                 "model": repr(lm.fingerprint), "window": window}

    # cut documents to max_doc_tokens up front, so every method scores the same text
    cut = []
    for t, e in zip(texts, lm.tokenizer.encode_batch(texts, add_special_tokens=False)):
        cut.append(t if len(e.ids) <= cfg.max_doc_tokens
                   else t[:e.offsets[cfg.max_doc_tokens - 1][1]])
    res["doc_truncated"] = [a != b for a, b in zip(texts, cut)]
    texts = cut
    # one shape for all of this corpus's calls (one compile), no longer than needed
    tok = lm.tokenizer

    def pad_to(strings, cap):
        longest = max(len(e.ids) for e in tok.encode_batch(strings, add_special_tokens=False))
        return min(cap, -(-longest // 64) * 64)

    pad_doc = pad_to(texts, cfg.max_doc_tokens)
    pad_ex = pad_to(sorted({t for row in nn_ex + sift_ex for t in row}), cfg.max_example_tokens)
    ic = in_context_inputs(lm, nn_ex, texts, window=window,
                           max_example_tokens=cfg.max_example_tokens)
    # the document is cut to max_doc_tokens for every method: same scored tokens/bytes
    assert int(ic.doc_length.max()) <= cfg.max_doc_tokens, "document longer than max_doc_tokens"
    ic_out = in_context_evaluate(lm.nll, lm.params, ic)
    res["bpb_in_context"] = np.asarray(ic_out["bpb"]).tolist()
    res["in_context_n"] = ic.n_context.tolist()
    print(f"[{corpus}] in-context done ({time.time() - t0:.0f}s); examples used "
          f"{ic.n_context.tolist()}", flush=True)

    for method, ex in (("nn", nn_ex), ("sift", sift_ex)):
        curves, before, after, losses = [], [], [], []
        for s in range(0, len(texts), cfg.batch):
            inp = ttft_inputs(lm, ex[s:s + cfg.batch], texts[s:s + cfg.batch],
                              max_example_tokens=cfg.max_example_tokens,
                              max_doc_tokens=cfg.max_doc_tokens, k=cfg.k,
                              pad_examples_to=pad_ex, pad_doc_to=pad_doc)
            out = ttft_evaluate(lm.nll, lm.loss, lm.params, cfg.learning_rate,
                                inp.examples_tokens, inp.examples_mask, inp.doc_tokens,
                                inp.doc_mask, doc_bytes=inp.doc_bytes, curve=True)
            curves.append(np.asarray(out["bpb_curve"]))
            before.append(np.asarray(out["bpb_before"]))
            after.append(np.asarray(out["bpb_after"]))
            losses.append(np.asarray(out["train_loss"]))
            print(f"[{corpus}] ttft {method}: {s + len(inp.doc_tokens)}/{len(texts)} docs "
                  f"({time.time() - t0:.0f}s)", flush=True)
        res[f"bpb_curve_{method}"] = np.concatenate(curves).tolist()
        res["bpb_base"] = np.concatenate(before).tolist()
        res[f"bpb_ttft_{method}"] = np.concatenate(after).tolist()
        res[f"train_loss_{method}"] = np.concatenate(losses).tolist()

    res["runtime_s"] = time.time() - t1
    res["jax_backend"] = jax.default_backend()
    return res


LABEL = {"code": "held-out stdlib code", "news": "held-out BBC News articles"}


def _adaptive_bpb(res: dict, threshold: float):
    curve = np.array(res["bpb_curve_sift"])
    steps = adaptive_steps(np.array(res["sift_post_var"]), threshold)
    return steps, curve[np.arange(len(steps)), steps]


def _rows(res: dict, cfg: Config):
    base = np.array(res["bpb_base"])
    steps, ada = _adaptive_bpb(res, cfg.adaptive_threshold)
    return [("base", base),
            (f"in-context (nearest chunks prepended: {np.mean(res['in_context_n']):.1f} fit)",
             np.array(res["bpb_in_context"])),
            ("TTFT on k nearest neighbours", np.array(res["bpb_ttft_nn"])),
            ("TTFT on SIFT picks", np.array(res["bpb_ttft_sift"])),
            (f"adaptive SIFT (σ² ≤ {cfg.adaptive_threshold:g}; {steps.mean():.2f} steps "
             "on average)", ada)]


def _cell(v, base):
    m, h = ci(v)
    if v is base:
        return f"{m:.4f} ± {h:.4f}", "—"
    dm, dh = ci(v - base)
    return f"{m:.4f} ± {h:.4f}", f"{dm:+.4f} ± {dh:.4f}"


def _facts(res: dict, cfg: Config) -> list[str]:
    n = len(res["bpb_base"])
    sift_b, nn_b = np.array(res["bpb_ttft_sift"]), np.array(res["bpb_ttft_nn"])
    d, dh = ci(sift_b - nn_b)
    sel, nn = np.array(res["sift_indices"]), np.array(res["nn_indices"])
    distinct = np.mean([len(set(r)) for r in sel])
    overlap = np.mean([len(set(a) & set(b)) for a, b in zip(sel, nn)])
    steps, ada = _adaptive_bpb(res, cfg.adaptive_threshold)
    curve = np.array(res["bpb_curve_sift"])
    fixed = {m: curve[:, m].mean() for m in sorted({int(np.floor(steps.mean())),
                                                    int(np.ceil(steps.mean()))})}
    base = np.array(res["bpb_base"])
    rho = _spearman(np.array(res["sift_post_var"])[:, -1], base - sift_b)
    worse = {name: int(np.sum(np.array(res[key]) > base)) for name, key in
             (("in-context", "bpb_in_context"), ("TTFT-NN", "bpb_ttft_nn"),
              ("TTFT-SIFT", "bpb_ttft_sift"))}
    out = [f"SIFT − NN (TTFT): {d:+.4f} ± {dh:.4f} bpb; SIFT better on "
           f"{int(np.sum(sift_b < nn_b))}/{n} documents. SIFT picks: {distinct:.2f} distinct of "
           f"{cfg.k} on average; {overlap:.2f} of them among the {cfg.k} nearest neighbours. "
           "Worse than the base model on: " + ", ".join(f"{k} {v}/{n}" for k, v in worse.items())
           + " documents.",
           f"Adaptive SIFT: steps {np.bincount(steps, minlength=cfg.k + 1).tolist()} documents "
           f"with 0..{cfg.k} steps; mean bpb {ada.mean():.4f} vs SIFT with the same number of "
           "steps for every document: " + ", ".join(f"{m} steps {v:.4f}" for m, v in fixed.items())
           + f". Spearman(σ²_k, gain after k steps) = {rho:+.2f}.",
           f"Pool: {res['pool_size']} chunks; runtime {res['runtime_s']:.0f} s "
           f"({res['jax_backend']})."]
    if res.get("dropped_duplicates") is not None:
        nd = len(res["dropped_duplicates"])
        out[-1] += (f" {nd} pool article{'s' * (nd != 1)} dropped for sharing a paragraph "
                    "with a test article.")
    return out


def _spearman(a, b) -> float:
    from scipy import stats
    return float(stats.spearmanr(a, b).statistic)


def write_corpus(res: dict, cfg: Config, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.json", json.dumps(res, indent=1))
    rows = _rows(res, cfg)
    base = rows[0][1]
    n = len(base)
    lines = [f"SmolLM2-135M bits per byte on {n} {LABEL[res['corpus']]} (tokens 2..T), "
             f"k = {cfg.k}, Adam lr {cfg.learning_rate:g}, one step per example; "
             f"mean ± 95% t-interval over documents.", "",
             "| method | bpb | paired diff. to base |", "|---|---|---|"]
    lines += [f"| {name} | " + " | ".join(_cell(v, base)) + " |" for name, v in rows]
    lines += [""] + _facts(res, cfg)
    table = "\n".join(lines)
    write_text(out / "table.md", table + "\n")
    print(table, flush=True)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    # left: mean bpb; right: paired change to the base model, with 95% t-intervals
    # (the between-document spread is far larger than the differences between methods)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    steps = np.arange(cfg.k + 1)
    base_col = base[:, None]
    for key, label, c in (("nn", "TTFT, nearest neighbours", "C0"), ("sift", "TTFT, SIFT", "C1")):
        curve = np.array(res[f"bpb_curve_{key}"])
        ax.plot(steps, curve.mean(0), "o-", color=c, label=label)
        m, h = ci(curve - base_col)
        ax2.plot(steps, m, "o-", color=c, label=label)
        ax2.fill_between(steps, m - h, m + h, color=c, alpha=0.15)
    ic = np.array(res["bpb_in_context"])
    ax.axhline(float(ic.mean()), color="C2", ls="--", label="in-context (NN that fit)")
    m, h = ci(ic - base)
    ax2.axhline(float(m), color="C2", ls="--", label=f"in-context (NN that fit), ±{h:.3f}")
    ax2.axhline(0.0, color="k", lw=0.5)
    for a in (ax, ax2):
        a.set_xlabel("test-time steps (examples)")
        a.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        a.legend()
    ax.set_ylabel("bits per byte (mean over documents)")
    ax2.set_ylabel("bpb − base bpb (paired, mean ± 95% t-int.)")
    fig.suptitle(f"SmolLM2-135M on {n} {LABEL[res['corpus']]}, k = {cfg.k}, "
                 f"Adam lr {cfg.learning_rate:g}")
    fig.tight_layout()
    save_figure(fig, out / "bpb_vs_steps.png", dpi=120)
    plt.close(fig)


def write_summary(done: dict, out: Path):
    """Both corpora in one table, and the adaptive-SIFT figure."""
    out.mkdir(parents=True, exist_ok=True)
    cols = list(done)
    cfgs = {c: Config(**done[c]["config"]) for c in cols}
    head = "| method | " + " | ".join(f"{c}: bpb | {c}: Δ to base" for c in cols) + " |"
    lines = [head, "|---|" + "---|---|" * len(cols)]
    table_rows = {c: _rows(done[c], cfgs[c]) for c in cols}
    for i in range(len(table_rows[cols[0]])):
        name = table_rows[cols[0]][i][0].split(":")[0].split(";")[0]
        name += ")" if name.count("(") > name.count(")") else ""
        cells = []
        for c in cols:
            rows = table_rows[c]
            cells += list(_cell(rows[i][1], rows[0][1]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for c in cols:
        lines += ["", f"**{c}** ({len(done[c]['bpb_base'])} documents): "
                  + " ".join(_facts(done[c], cfgs[c]))]
    write_text(out / "table.md", "\n".join(lines) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, axes = plt.subplots(len(cols), 3, figsize=(14, 3.8 * len(cols)), squeeze=False)
    rng = np.random.default_rng(0)
    for row, c in zip(axes, cols):
        res, cfg = done[c], cfgs[c]
        base = np.array(res["bpb_base"])
        post = np.array(res["sift_post_var"])
        curve_s, curve_n = np.array(res["bpb_curve_sift"]), np.array(res["bpb_curve_nn"])
        steps, ada = _adaptive_bpb(res, cfg.adaptive_threshold)
        gain = base - ada
        # (1) each document: the steps adaptive SIFT gave it and the bpb it gained
        ax = row[0]
        ax.scatter(steps + rng.uniform(-0.12, 0.12, steps.shape), gain, s=18, color="C1")
        for s in np.unique(steps):
            ax.plot([s - 0.3, s + 0.3], [gain[steps == s].mean()] * 2, color="k", lw=1.5)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlim(-0.5, cfg.k + 0.5)
        ax.set_xticks(np.arange(cfg.k + 1))
        ax.set_xlabel(f"steps earned (σ²_n ≤ {cfg.adaptive_threshold:g})")
        ax.set_ylabel("bpb gained (base − after)")
        ax.set_title(f"{c}: adaptive SIFT per document (bar: mean)")
        # (2) mean gain against mean steps: same steps for every document vs adaptive
        ax = row[1]
        fixed = np.arange(cfg.k + 1)
        ax.plot(fixed, (base[:, None] - curve_s).mean(0), "o-", color="C1",
                label="SIFT, n steps for every document")
        ax.plot(fixed, (base[:, None] - curve_n).mean(0), "s-", color="C0",
                label="NN, n steps for every document")
        taus = np.unique(np.concatenate([post.ravel(), [post.max() + 1]]))
        sweep = [(adaptive_steps(post, t), t) for t in taus]
        xs = [s.mean() for s, _ in sweep]
        ys = [(base - curve_s[np.arange(len(s)), s]).mean() for s, _ in sweep]
        ax.plot(xs, ys, "-", color="C3", lw=1, alpha=0.8, label="adaptive SIFT, threshold swept")
        ax.plot(steps.mean(), gain.mean(), "*", color="C3", ms=12,
                label=f"adaptive, σ² ≤ {cfg.adaptive_threshold:g}")
        ax.set_xlabel("test-time steps (mean over documents)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel("mean bpb gained")
        ax.legend(fontsize=8)
        ax.set_title(f"{c}: gain per step spent")
        # (3) does the final uncertainty tell which documents gain?
        ax = row[2]
        g_k = base - curve_s[:, -1]
        ax.scatter(post[:, -1], g_k, s=18, color="C1")
        ax.set_xlabel(f"posterior variance σ²_k after k = {cfg.k} SIFT picks")
        ax.set_ylabel(f"bpb gained after {cfg.k} steps")
        ax.set_title(f"{c}: Spearman ρ = {_spearman(post[:, -1], g_k):+.2f}")
    fig.tight_layout()
    save_figure(fig, out / "adaptive.png", dpi=110)
    plt.close(fig)
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
