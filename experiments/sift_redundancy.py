"""SIFT study, part 2 (issue 17): does SIFT beat nearest neighbours where the pool is redundant?

The SIFT paper credits its gain over nearest-neighbour (NN) retrieval to redundancy:
on a web-scale pool NN returns near-copies of one text, which add little after the
first, while SIFT's posterior variance refuses them. Our pools (`sift_study.py`:
stdlib code, BBC News) have little redundancy, so this study adds it, reproducibly,
and measures the paper's claim where it is made. Everything else (corpora, held-out
documents, SmolLM2-135M, bits per byte, k = 5, Adam 5e-5 with one step per example,
SIFT with K = 200 and λ = 0.01) is `sift_study.py`'s.

Redundancy levels (fixed before any result; `make_redundant`, seeded by `seed`):

- ``none``: the study's pools as they are.
- ``exact``: a fraction `dup_fraction` (0.5) of the pool's chunks, chosen by a hash
  of (seed, level, index, text), get 1 to `max_copies` (3) extra exact copies, so
  each chunk is present 1-4 times; all chunks are then put in a seeded order.
- ``near``: a fraction `near_fraction` (0.5) of the chunks get 1-3 near-copies,
  each made by a different small edit (the original stays). Code: re-wrapped long
  lines (split after a comma), a renamed identifier (every occurrence of one name
  used at least twice), or changed comments (comments dropped; a comment line
  added where there were none). News: a sentence dropped (one of at most a quarter
  of the chunk), two neighbouring sentences (or paragraphs) swapped, or both.
  A near-copy is never equal to its original.

Copies are only ever made of pool chunks, and the pools exclude the held-out
modules / test articles (and articles sharing a paragraph with them), so no test
document and no copy of one is in any pool (tests/test_sift_redundancy.py).
Exact copies reuse their original's embedding row (bitwise identical); near-copies
are embedded themselves.

Parts (`--parts`, all by default):

- ``grid``: base, in-context (NN chunks prepended), TTFT on NN and TTFT on SIFT,
  k = 5, at each level, on both corpora (`docs` documents each), MiniLM
  embeddings; paired 95% t-intervals over documents; and, per method, how many of
  its picks are copies of an earlier pick (exact: the same text; near: a
  different text made from the same pool chunk).
- ``long``: a longer run, k = `long_k` (20) steps, NN and SIFT, on one setting
  (`long_corpus`, `long_level`: news with exact duplicates, `long_docs`
  documents), the bpb after every step: the plot of bpb against steps.
- ``lambda``: SIFT with λ in `lambdas` (0.01, 0.1, 1; fixed in advance; 0.01 is
  the grid's) on `lambda_corpus` / `lambda_level` (news, exact), the first
  `lambda_docs` (6) of the grid's documents.
- ``smollm2``: the prompt (and pool) embedding from SmolLM2 itself (`SmolLM2.embed`:
  the mean final hidden state, unit-normed) instead of MiniLM, on
  `smollm2_corpus` / level none, `smollm2_docs` documents. A SmolLM2 forward pass
  costs ~0.6 s per 256-token chunk on 2 cores (~40 min per pool), so this variant
  (a) embeds only each chunk's first `smollm2_tokens` (64) tokens, and (b) selects
  from a shortlist: the union over its documents of each document's
  `smollm2_shortlist` (200) MiniLM nearest chunks. Both are restrictions, stated
  with its results; MiniLM's picks (full pool) are reported on the same documents.

Reuse (the budget): every TTFT result is kept by (document, the sequence of pick
texts) with its bpb after every step where recorded, so an identical pick list
(SIFT's picks at a redundancy level are often level none's) is never retrained,
and a prefix of a recorded list is read off its curve: training is one Adam step
per pick in order from the base model, so the first n steps of a k = 20 run are
the k = n run. The `long` part runs first, and the grid reads its k = 5 cells
for that setting off the k = 20 curves. The results (and this cache) are written
to <out>/ttft_cache.json, so an interrupted run resumes where it stopped.

Budget (2 quiet cores; `plan` prints it at the start of every run): a SmolLM2
training step costs ~2 s and a scoring ~1.25 s here (calibrated on the first
study's measured runs, `COSTS`), so the issue's full design (20 documents per
corpus at three levels, and 20 for the λ grid, the k = 20 run and the SmolLM2
embedding) would need 113-134 min.
The default therefore takes 10 documents per corpus for the grid, 3 for the
k = 20 run, 6 for the λ grid and 4 for the SmolLM2 embedding: estimated at
46-56 min (the low end if SIFT's pick lists at the exact level and at the other
λ repeat earlier ones, the high end if none do), measured at 57 min from fresh
caches (3 Dec 2026: 3419 s, 12.4 min of it MiniLM embeddings, which later runs
read from their cache). ``--docs 20`` is the issue's 20 documents per corpus
for the grid only (63-81 min). `--quick` (both
corpora, 2 documents, pools cut to 400 chunks by a hash, k = 2, long k = 4,
K = 50) is the smoke test, ~9 min.

    python -m experiments.sift_redundancy                 # the study
    python -m experiments.sift_redundancy --quick         # smoke test, minutes
    python -m experiments.sift_redundancy --parts grid --corpus news
    python -m experiments.sift_redundancy --replot        # tables and plots from results.json
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import keyword
import builtins
import re
import time
from pathlib import Path

import numpy as np

from experiments import sift_study
from experiments.common import (
    CACHE,
    OneLineParser,
    ci,
    read_config,
    save_figure,
    write_text,
)
from experiments.common import RESULTS as _RESULTS

RESULTS = _RESULTS / "sift_redundancy"
LEVELS = ("none", "exact", "near")
PARTS = ("grid", "long", "lambda", "smollm2")
CORPORA = sift_study.CORPORA


@dataclasses.dataclass(frozen=True)
class Config:
    docs: int = 10
    k: int = 5
    learning_rate: float = 5e-5
    prefilter: int = 200
    lambda_: float = 0.01
    seed: int = 17
    dup_fraction: float = 0.5
    near_fraction: float = 0.5
    max_copies: int = 3
    pool_limit: int = 0          # > 0: keep this many pool chunks (by hash; --quick only)
    long_k: int = 20
    long_corpus: str = "news"
    long_level: str = "exact"
    long_docs: int = 3
    lambdas: tuple = (0.01, 0.1, 1.0)
    lambda_corpus: str = "news"
    lambda_level: str = "exact"
    lambda_docs: int = 6
    smollm2_corpus: str = "news"
    smollm2_docs: int = 4
    smollm2_tokens: int = 64
    smollm2_shortlist: int = 200
    max_example_tokens: int = 256
    max_doc_tokens: int = 512
    batch: int = 4

    def study(self) -> sift_study.Config:
        """The corpus settings of `sift_study` (its defaults, with our docs and k)."""
        docs = max(self.docs, self.long_docs, self.lambda_docs, self.smollm2_docs)
        return sift_study.Config(docs=docs, k=self.k, learning_rate=self.learning_rate,
                                 prefilter=self.prefilter, lambda_=self.lambda_,
                                 max_example_tokens=self.max_example_tokens,
                                 max_doc_tokens=self.max_doc_tokens)


QUICK = dict(docs=2, k=2, pool_limit=400, long_k=4, long_docs=2, lambdas=(0.01, 1.0),
             lambda_docs=2, smollm2_docs=2, smollm2_tokens=32, smollm2_shortlist=20,
             prefilter=50, batch=2)


# ----------------------------------------------------------------------------- redundancy


def _u(*parts) -> int:
    """A fixed pseudo-random integer from `parts` (sha256; no process or platform state)."""
    return int(hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:16], 16)


@dataclasses.dataclass(frozen=True)
class Pool:
    """A pool at one redundancy level: texts, the level-none chunk each came from, and
    what it is ("original", "exact", or "near:<edit>")."""

    texts: list
    origin: np.ndarray
    kind: list

    def __len__(self):
        return len(self.texts)


_PY_WORDS = set(keyword.kwlist) | set(dir(builtins)) | {"self", "cls"}
_IDENT = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")
_SUFFIX = ("_new", "_val", "_obj", "_ref", "_tmp", "_x")


def _rewrap(text: str, r: int):
    lines = text.splitlines(keepends=True)
    long = [i for i, ln in enumerate(lines) if len(ln.strip()) >= 50 and ", " in ln.strip()]
    if not long:
        return None
    picked = sorted({long[(r + j * 7) % len(long)] for j in range(min(2, len(long)))})
    for i in reversed(picked):
        ln = lines[i]
        body = ln.rstrip("\n")
        cuts = [m.start() for m in re.finditer(", ", body)]
        cut = min(cuts, key=lambda c: abs(c - len(body) // 2))
        indent = len(body) - len(body.lstrip())
        nl = "\n" if ln.endswith("\n") else ""
        lines[i:i + 1] = [body[:cut + 1] + "\n", " " * (indent + 4) + body[cut + 2:] + nl]
    return "".join(lines)


def _rename(text: str, r: int):
    counts: dict = {}
    for m in _IDENT.finditer(text):
        w = m.group()
        if len(w) >= 3 and w not in _PY_WORDS and not w.startswith("__"):
            counts[w] = counts.get(w, 0) + 1
    names = sorted(w for w, c in counts.items() if c >= 2)
    if not names:
        return None
    old = names[r % len(names)]
    new = old + _SUFFIX[(r // 7) % len(_SUFFIX)]
    return re.sub(rf"\b{re.escape(old)}\b", new, text)


def _comments(text: str, r: int):
    """At most two comments dropped (whole-line or trailing), or, with none, one added."""
    lines = text.splitlines(keepends=True)
    found = []
    for i, ln in enumerate(lines):
        if ln.lstrip().startswith("#"):
            found.append((i, None))
        else:
            m = re.search(r"\s+#\s.*$", ln.rstrip("\n"))
            if m and ln.count("'") % 2 == 0 and ln.count('"') % 2 == 0:
                found.append((i, m.start()))
    if found:
        picked = sorted({found[(r + 3 * j) % len(found)] for j in range(min(2, len(found)))})
        for i, cut in reversed(picked):
            if cut is None:
                del lines[i]
            else:
                lines[i] = lines[i][:cut] + ("\n" if lines[i].endswith("\n") else "")
        return "".join(lines) if "".join(lines).strip() else None
    code = [i for i, ln in enumerate(lines) if ln.strip()]
    if not code:
        return None
    i = code[r % len(code)]
    indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())]
    note = ("# see below", "# helper", "# NOTE: kept for compatibility", "# handle the rest")
    return "".join(lines[:i] + [indent + note[(r // 5) % len(note)] + "\n"] + lines[i:])


_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def _sentences(text: str):
    """[(line index, [sentences])] for the non-blank lines (paragraphs) of `text`."""
    return [(i, _SENT.split(ln.strip())) for i, ln in enumerate(text.split("\n")) if ln.strip()]


def _join(text: str, paras) -> str:
    lines = text.split("\n")
    for i, sents in paras:
        lines[i] = " ".join(sents)
    return "\n".join(lines)


def _drop(text: str, r: int):
    paras = _sentences(text)
    cands = [(p, s) for p, (_, sents) in enumerate(paras) for s, x in enumerate(sents)
             if len(sents) >= 2 and len(x) <= len(text) // 4]
    if not cands:
        return None
    p, s = cands[r % len(cands)]
    paras[p] = (paras[p][0], paras[p][1][:s] + paras[p][1][s + 1:])
    return _join(text, paras)


def _reorder(text: str, r: int):
    paras = _sentences(text)
    cands = [(p, s) for p, (_, sents) in enumerate(paras) for s in range(len(sents) - 1)]
    if cands:
        p, s = cands[r % len(cands)]
        sents = list(paras[p][1])
        sents[s], sents[s + 1] = sents[s + 1], sents[s]
        paras[p] = (paras[p][0], sents)
        out = _join(text, paras)
        if out != text:
            return out
    lines = text.split("\n")
    full = [i for i, ln in enumerate(lines) if ln.strip()]
    if len(full) < 2:
        return None
    j = r % (len(full) - 1)
    a, b = full[j], full[j + 1]
    lines[a], lines[b] = lines[b], lines[a]
    return "\n".join(lines)


def _drop_reorder(text: str, r: int):
    t = _drop(text, r)
    return None if t is None else _reorder(t, r // 3)


EDITS = {"code": (("rewrap", _rewrap), ("rename", _rename), ("comments", _comments)),
         "news": (("drop", _drop), ("reorder", _reorder), ("drop+reorder", _drop_reorder))}


#: A near-copy keeps at least this character 5-gram overlap (Jaccard) with its original.
NEAR_MIN_OVERLAP = 0.7


def near_copy(text: str, corpus: str, r: int, first: int = 0) -> tuple[str, str]:
    """A near-copy of `text` (never equal to it; 5-gram overlap >= NEAR_MIN_OVERLAP)
    and the name of its edit: edit number `first` of the corpus's three, or the next
    that applies and stays that near."""
    edits = EDITS[corpus]
    base = shingles(text)
    for j in range(len(edits)):
        name, fn = edits[(first + j) % len(edits)]
        out = fn(text, r)
        if out is None or out == text or not out.strip():
            continue
        sh = shingles(out)
        if len(sh & base) >= NEAR_MIN_OVERLAP * len(sh | base):
            return out, name
    # nothing applies (a very short or uniform chunk): a changed last line
    return text.rstrip("\n") + (" #" if corpus == "code" else " .") + "\n", "tail"


def make_redundant(pool: list, level: str, corpus: str, *, seed: int,
                   fraction: float = 0.5, max_copies: int = 3) -> Pool:
    """The pool at a redundancy level (see the module docstring). Deterministic: only
    `pool`, `level`, `corpus` and the numbers given decide it."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}; got {level!r}")
    n = len(pool)
    if level == "none":
        return Pool(list(pool), np.arange(n), ["original"] * n)
    ranked = sorted(range(n), key=lambda i: (_u(seed, level, "pick", i, pool[i]), i))
    chosen = sorted(ranked[:int(round(fraction * n))])
    items = [(i, pool[i], "original") for i in range(n)]
    for i in chosen:
        count = 1 + _u(seed, level, "count", i) % max_copies
        if level == "exact":
            items += [(i, pool[i], "exact")] * count
        else:
            first = _u(seed, level, "edit", i) % 3
            for j in range(count):
                text, name = near_copy(pool[i], corpus, _u(seed, level, "r", i, j), first + j)
                items.append((i, text, f"near:{name}"))
    order = sorted(range(len(items)), key=lambda t: (_u(seed, level, "order", t), t))
    items = [items[t] for t in order]
    return Pool([t for _, t, _ in items], np.array([o for o, _, _ in items]),
                [kd for _, _, kd in items])


def shingles(text: str, n: int = 5) -> set:
    """Character n-grams of the whitespace-normalized text."""
    t = " ".join(text.split())
    return {t[i:i + n] for i in range(max(1, len(t) - n + 1))}


def overlap(a: str, b: str, n: int = 5) -> float:
    """Jaccard similarity of the character n-gram sets of `a` and `b`."""
    sa, sb = shingles(a, n), shingles(b, n)
    return len(sa & sb) / max(1, len(sa | sb))


def copy_counts(picks, pool: Pool) -> np.ndarray:
    """[P, 2]: per pick list, how many picks are an exact copy (the same text) or a
    near-copy (another text from the same level-none chunk) of an earlier pick."""
    out = []
    for row in np.asarray(picks):
        texts, origins, exact, near = set(), set(), 0, 0
        for i in row:
            t, o = pool.texts[int(i)], int(pool.origin[int(i)])
            if t in texts:
                exact += 1
            elif o in origins:
                near += 1
            texts.add(t)
            origins.add(o)
        out.append((exact, near))
    return np.array(out, np.int64).reshape(-1, 2)


def limit_pool(corpus: sift_study.Corpus, limit: int) -> sift_study.Corpus:
    """The first `limit` chunks in order of a hash of their text (for --quick)."""
    if not limit or limit >= len(corpus.pool):
        return corpus
    keep = sorted(sorted(range(len(corpus.pool)), key=lambda i: (_u("limit", corpus.pool[i]), i))
                  [:limit])
    return corpus._replace(pool=[corpus.pool[i] for i in keep],
                           pool_src=[corpus.pool_src[i] for i in keep])


# ----------------------------------------------------------------------------- TTFT cache


class TTFTCache:
    """TTFT results by (document, sequence of pick texts): the bpb after every
    recorded step. A prefix of a recorded sequence is read off its curve."""

    def __init__(self, path: Path | None = None, settings: dict | None = None):
        self.path, self.entries, self.hits = path, {}, 0
        self.settings = settings or {}
        saved = json.loads(path.read_text()) if path is not None and path.exists() else None
        if saved is not None and saved.get("settings") == self.settings:
            for e in saved["entries"]:
                self.entries.setdefault(e["doc"], []).append(
                    (tuple(e["picks"]), {int(s): v for s, v in e["bpb"].items()}))

    @staticmethod
    def _h(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def get(self, doc: str, picks):
        """{steps: bpb} for this pick list (0..len(picks) where known) or None."""
        want = tuple(self._h(t) for t in picks)
        m = len(want)
        for have, bpb in self.entries.get(doc, ()):
            if have[:m] == want and m in bpb:
                return {s: v for s, v in bpb.items() if s <= m}
        return None

    def put(self, doc: str, picks, bpb: dict):
        self.entries.setdefault(doc, []).append((tuple(self._h(t) for t in picks), bpb))

    def save(self):
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"doc": d, "picks": list(p), "bpb": {str(s): v for s, v in b.items()}}
                for d, es in self.entries.items() for p, b in es]
        write_text(self.path, json.dumps({"settings": self.settings, "entries": rows}))


# ----------------------------------------------------------------------------- running


class Runner:
    """Holds the models, the corpora and the TTFT cache; runs TTFT and in-context."""

    def __init__(self, cfg: Config, out: Path, corpora, log=print):
        from activeft_jax.models import load_minilm, load_smollm2
        self.cfg, self.out, self.log = cfg, out, log
        self.enc, self.lm = load_minilm(), load_smollm2()
        self.cache = TTFTCache(out / "ttft_cache.json", {
            "model": self.lm.fingerprint, "learning_rate": cfg.learning_rate,
            "max_example_tokens": cfg.max_example_tokens, "max_doc_tokens": cfg.max_doc_tokens})
        self.corpora, self.pools, self.emb, self.docs = {}, {}, {}, {}
        self.t0 = time.time()
        self.timing = {"ttft_s": 0.0, "ttft_steps": 0, "ttft_evals": 0, "in_context_s": 0.0,
                       "in_context_docs": 0, "minilm_s": 0.0, "minilm_texts": 0,
                       "smollm2_embed_s": 0.0, "smollm2_embed_tokens": 0}
        for c in corpora:
            self._load(c)

    def _encode(self, texts):
        t = time.time()
        e = self.enc.encode(texts)
        self.timing["minilm_s"] += time.time() - t
        self.timing["minilm_texts"] += len(texts)
        return e

    def _load(self, c):
        from activeft_jax.embeddings import cached_embeddings
        cfg = self.cfg
        corpus = limit_pool(sift_study.BUILD[c](cfg.study()), cfg.pool_limit)
        names = [d[0] for d in corpus.docs]
        assert not {n.split("#")[0] for n in names} & set(corpus.pool_src)
        texts = [d[1] for d in corpus.docs]
        # cut documents to max_doc_tokens, as sift_study does
        cut = []
        for t, e in zip(texts, self.lm.tokenizer.encode_batch(texts, add_special_tokens=False)):
            cut.append(t if len(e.ids) <= cfg.max_doc_tokens
                       else t[:e.offsets[cfg.max_doc_tokens - 1][1]])
        self.docs[c] = (names, cut, [t[:500] for t in texts])
        self.corpora[c] = corpus
        prefix = {"code": "stdlib", "news": "bbc_news"}[c]
        CACHE.mkdir(parents=True, exist_ok=True)
        tag = f"_limit{cfg.pool_limit}" if cfg.pool_limit else ""
        base = np.asarray(cached_embeddings(
            CACHE / f"{prefix}_pool{tag}_minilm.npz", lambda: self._encode(corpus.pool),
            inputs=corpus.pool, model=self.enc.name, fingerprint=self.enc.fingerprint,
            options={"normalize": True, "chunk_chars": 1000}, verbose=True), np.float32)
        prompts = self.docs[c][2]
        q = np.asarray(cached_embeddings(
            CACHE / f"{prefix}_prompts{len(prompts)}_minilm.npz", lambda: self._encode(prompts),
            inputs=prompts, model=self.enc.name, fingerprint=self.enc.fingerprint,
            options={"normalize": True}, verbose=True), np.float32)
        self.emb[(c, "prompts")] = q
        for level in LEVELS:
            frac = cfg.dup_fraction if level == "exact" else cfg.near_fraction
            pool = make_redundant(corpus.pool, level, c, seed=cfg.seed, fraction=frac,
                                  max_copies=cfg.max_copies)
            emb = base[pool.origin]          # originals and exact copies: the same rows
            near = [i for i, kd in enumerate(pool.kind) if kd.startswith("near")]
            if near:
                ntexts = [pool.texts[i] for i in near]
                emb = emb.copy()
                emb[near] = np.asarray(cached_embeddings(
                    CACHE / f"{prefix}_near{cfg.seed}{tag}_minilm.npz",
                    lambda: self._encode(ntexts), inputs=ntexts, model=self.enc.name,
                    fingerprint=self.enc.fingerprint, options={"normalize": True},
                    verbose=True), np.float32)
            self.pools[(c, level)] = pool
            self.emb[(c, level)] = emb
        self.log(f"[{c}] pool {len(corpus.pool)} chunks; levels "
                 + ", ".join(f"{lv} {len(self.pools[(c, lv)])}" for lv in LEVELS)
                 + f"; {len(names)} documents ({time.time() - self.t0:.0f}s)")

    # -- selection
    def select(self, c, level, docs, k, lambda_=None, emb=None, q=None):
        """(NN indices, SIFT indices) [P, k] for the first `docs` documents."""
        from activeft_jax import sift
        from activeft_jax.retrieval import top_k
        emb = self.emb[(c, level)] if emb is None else emb
        q = self.emb[(c, "prompts")][:docs] if q is None else q
        nn = np.asarray(top_k(q, emb, k=k, metric="ip").indices)
        sel = np.asarray(sift(emb, q, k=k, prefilter=min(self.cfg.prefilter, len(emb)),
                              lambda_=self.cfg.lambda_ if lambda_ is None else lambda_).indices)
        return nn, sel

    # -- TTFT with the cache
    def ttft(self, c, jobs, k, curve):
        """TTFT of each job (document index, its k pick texts), from the cache where
        it can be read: a {step: bpb} dict per job (0 and k; every step with `curve`).
        New jobs are run in batches of `batch` (the last padded: one compile)."""
        from activeft_jax.training import ttft_evaluate, ttft_inputs
        names, texts, _ = self.docs[c]
        names = [f"{nm}:{TTFTCache._h(t)[:12]}" for nm, t in zip(names, texts)]
        todo, seen = [], set()
        for d, p in jobs:
            key = (d, tuple(p))
            if self.cache.get(names[d], p) is None and key not in seen:
                seen.add(key)
                todo.append((d, list(p)))
        self.cache.hits += len(jobs) - len(todo)
        b = self.cfg.batch
        pad_doc = self._pad_doc(c)
        for s in range(0, len(todo), b):
            part = todo[s:s + b]
            full = part + [part[-1]] * (b - len(part))       # fixed shapes: one compile
            t = time.time()
            inp = ttft_inputs(self.lm, [p for _, p in full], [texts[d] for d, _ in full],
                              max_example_tokens=self.cfg.max_example_tokens,
                              max_doc_tokens=self.cfg.max_doc_tokens, k=k,
                              pad_examples_to=self.cfg.max_example_tokens, pad_doc_to=pad_doc)
            out = ttft_evaluate(self.lm.nll, self.lm.loss, self.lm.params,
                                self.cfg.learning_rate, inp.examples_tokens, inp.examples_mask,
                                inp.doc_tokens, inp.doc_mask, doc_bytes=inp.doc_bytes,
                                curve=curve)
            if curve:
                cur = np.asarray(out["bpb_curve"], np.float64)
            else:
                cur = np.stack([np.asarray(out["bpb_before"], np.float64),
                                np.asarray(out["bpb_after"], np.float64)], 1)
            self.timing["ttft_s"] += time.time() - t
            self.timing["ttft_steps"] += b * k
            self.timing["ttft_evals"] += b * (k + 1 if curve else 2)
            for r, (d, p) in enumerate(part):
                bpb = ({n: float(cur[r, n]) for n in range(k + 1)} if curve
                       else {0: float(cur[r, 0]), k: float(cur[r, 1])})
                self.cache.put(names[d], p, bpb)
            self.cache.save()
            self.log(f"[{c}] ttft k={k}: {s + len(part)}/{len(todo)} new "
                     f"({time.time() - self.t0:.0f}s)")
        return [self.cache.get(names[d], p) for d, p in jobs]

    def _pad_doc(self, c):
        _, texts, _ = self.docs[c]
        longest = max(len(e.ids) for e in self.lm.tokenizer.encode_batch(
            texts, add_special_tokens=False))
        return min(self.cfg.max_doc_tokens, -(-longest // 64) * 64)

    def in_context(self, c, pick_texts):
        from activeft_jax.training import in_context_evaluate, in_context_inputs
        names, texts, _ = self.docs[c]
        t = time.time()
        window = min(2048, int(self.lm.context_length))
        n = len(pick_texts)
        k = max(len(p) for p in pick_texts)
        pad = min(window, -(-(k * (self.cfg.max_example_tokens + 4) + self._pad_doc(c)) // 64) * 64)
        inp = in_context_inputs(self.lm, pick_texts, texts[:n], window=window,
                                max_example_tokens=self.cfg.max_example_tokens, pad_to=pad)
        out = in_context_evaluate(self.lm.nll, self.lm.params, inp)
        self.timing["in_context_s"] += time.time() - t
        self.timing["in_context_docs"] += n
        return np.asarray(out["bpb"], np.float64).tolist(), inp.n_context.tolist()


def _texts(pool: Pool, idx) -> list:
    return [[pool.texts[int(i)] for i in row] for row in np.asarray(idx)]


def _jobs(pool: Pool, idx) -> list:
    """(document index, pick texts) for each row of `idx`."""
    return list(enumerate(_texts(pool, idx)))


def _level_sims(run: Runner, c: str) -> dict:
    """How near the near-copies are: MiniLM cosine and 5-gram overlap with their original."""
    pool = run.pools[(c, "near")]
    emb = run.emb[(c, "near")]
    first = {}
    for i, kd in enumerate(pool.kind):
        if kd == "original":
            first[int(pool.origin[i])] = i
    near = [i for i, kd in enumerate(pool.kind) if kd.startswith("near")]
    cos = np.array([float(emb[i] @ emb[first[int(pool.origin[i])]]) for i in near])
    sample = near[::max(1, len(near) // 300)]
    ov = np.array([overlap(pool.texts[i], pool.texts[first[int(pool.origin[i])]])
                   for i in sample])
    kinds = {}
    for i in near:
        kinds[pool.kind[i]] = kinds.get(pool.kind[i], 0) + 1
    return {"cosine_min": float(cos.min()), "cosine_median": float(np.median(cos)),
            "cosine_p05": float(np.quantile(cos, 0.05)),
            "overlap_min": float(ov.min()), "overlap_median": float(np.median(ov)),
            "edits": kinds}


def run_all(cfg: Config, corpora, parts, out: Path, log=print) -> dict:
    run = Runner(cfg, out, corpora, log)
    res: dict = {"config": _cfg_json(cfg), "corpora": list(corpora), "parts": list(parts),
                 "levels": {}, "grid": {}, "long": None, "lambda": None, "smollm2": None}
    for c in corpora:
        res["levels"][c] = {lv: {"size": len(run.pools[(c, lv)]),
                                 "copies": int(sum(kd != "original"
                                                   for kd in run.pools[(c, lv)].kind))}
                            for lv in LEVELS}
        res["levels"][c]["near"].update(_level_sims(run, c))
        res["levels"][c]["originals"] = len(run.corpora[c].pool)
    if "long" in parts and cfg.long_corpus in corpora:
        c, lv, n = cfg.long_corpus, cfg.long_level, cfg.long_docs
        nn, sel = run.select(c, lv, n, cfg.long_k)
        pool = run.pools[(c, lv)]
        r = {"corpus": c, "level": lv, "k": cfg.long_k, "documents": run.docs[c][0][:n]}
        got2 = run.ttft(c, _jobs(pool, nn) + _jobs(pool, sel), cfg.long_k, curve=True)
        for m, idx, got in (("nn", nn, got2[:n]), ("sift", sel, got2[n:])):
            r[f"curve_{m}"] = [[g[s] for s in range(cfg.long_k + 1)] for g in got]
            r[f"copies_{m}"] = copy_counts(idx, pool).tolist()
        res["long"] = r
        log(f"long run done ({time.time() - run.t0:.0f}s)")
    if "grid" in parts:
        for c in corpora:
            n = cfg.docs
            res["grid"][c] = {"documents": run.docs[c][0][:n]}
            picks = {lv: run.select(c, lv, n, cfg.k) for lv in LEVELS}
            jobs = [j for lv in LEVELS for idx in picks[lv] for j in _jobs(run.pools[(c, lv)], idx)]
            got = run.ttft(c, jobs, cfg.k, curve=False)          # all levels in one go
            for j, lv in enumerate(LEVELS):
                pool, (nn, sel) = run.pools[(c, lv)], picks[lv]
                g_nn, g_sift = got[2 * j * n:(2 * j + 1) * n], got[(2 * j + 1) * n:(2 * j + 2) * n]
                cell = {"nn_indices": nn.tolist(), "sift_indices": sel.tolist(),
                        "copies_nn": copy_counts(nn, pool).tolist(),
                        "copies_sift": copy_counts(sel, pool).tolist(),
                        "bpb_base": [g[0] for g in g_nn],
                        "bpb_nn": [g[cfg.k] for g in g_nn],
                        "bpb_sift": [g[cfg.k] for g in g_sift]}
                cell["bpb_in_context"], cell["in_context_n"] = run.in_context(c, _texts(pool, nn))
                res["grid"][c][lv] = cell
                log(f"[{c}] grid level {lv} done ({time.time() - run.t0:.0f}s)")
    if "lambda" in parts and cfg.lambda_corpus in corpora:
        c, lv, n = cfg.lambda_corpus, cfg.lambda_level, cfg.lambda_docs
        pool = run.pools[(c, lv)]
        nn, _ = run.select(c, lv, n, cfg.k)
        sels = [run.select(c, lv, n, cfg.k, lambda_=lam)[1] for lam in cfg.lambdas]
        got = run.ttft(c, _jobs(pool, nn) + [j for sel in sels for j in _jobs(pool, sel)],
                       cfg.k, curve=False)
        r = {"corpus": c, "level": lv, "documents": run.docs[c][0][:n],
             "bpb_base": [g[0] for g in got[:n]], "bpb_nn": [g[cfg.k] for g in got[:n]],
             "copies_nn": copy_counts(nn, pool).tolist(), "lambdas": {}}
        for j, (lam, sel) in enumerate(zip(cfg.lambdas, sels)):
            g = got[(j + 1) * n:(j + 2) * n]
            r["lambdas"][repr(float(lam))] = {"bpb_sift": [x[cfg.k] for x in g],
                                              "copies_sift": copy_counts(sel, pool).tolist(),
                                              "sift_indices": sel.tolist()}
        res["lambda"] = r
        log(f"lambda grid done ({time.time() - run.t0:.0f}s)")
    if "smollm2" in parts and cfg.smollm2_corpus in corpora:
        res["smollm2"] = _smollm2_part(run, cfg, log)
    res["timing"] = dict(run.timing, total_s=time.time() - run.t0, cache_hits=run.cache.hits)
    res["plan"] = plan(cfg, corpora, parts)
    return res


def _smollm2_part(run: Runner, cfg: Config, log) -> dict:
    from activeft_jax.embeddings import cached_embeddings
    c, n = cfg.smollm2_corpus, cfg.smollm2_docs
    pool = run.pools[(c, "none")]
    lm = run.lm
    q_mini = run.emb[(c, "prompts")][:n]
    short_k = min(cfg.smollm2_shortlist, len(pool))
    from activeft_jax.retrieval import top_k
    short = np.unique(np.asarray(top_k(q_mini, run.emb[(c, "none")], k=short_k,
                                       metric="ip").indices))
    # each chunk's first smollm2_tokens tokens
    cut = []
    for i, e in zip(short, lm.tokenizer.encode_batch([pool.texts[i] for i in short],
                                                     add_special_tokens=False)):
        t = pool.texts[i]
        cut.append(t if len(e.ids) <= cfg.smollm2_tokens else t[:e.offsets[cfg.smollm2_tokens - 1][1]])
    prompts = run.docs[c][2][:n]

    def embed(texts):
        t = time.time()
        e = lm.embed(texts, batch_size=16)
        run.timing["smollm2_embed_s"] += time.time() - t
        run.timing["smollm2_embed_tokens"] += sum(len(x) for x in lm.tokenize_batch(texts))
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    prefix = {"code": "stdlib", "news": "bbc_news"}[c]
    emb = np.asarray(cached_embeddings(
        CACHE / f"{prefix}_shortlist_smollm2.npz", lambda: embed(cut), inputs=cut,
        model=lm.name, fingerprint=lm.fingerprint,
        options={"mean_hidden": True, "normalize": True, "tokens": cfg.smollm2_tokens},
        verbose=True), np.float32)
    q = np.asarray(cached_embeddings(
        CACHE / f"{prefix}_prompts{n}_smollm2.npz", lambda: embed(prompts), inputs=prompts,
        model=lm.name, fingerprint=lm.fingerprint,
        options={"mean_hidden": True, "normalize": True}, verbose=True), np.float32)
    log(f"[{c}] SmolLM2 embeddings of {len(short)} shortlisted chunks ({time.time() - run.t0:.0f}s)")
    nn_s, sel_s = run.select(c, "none", n, cfg.k, emb=emb, q=q)
    nn_s, sel_s = short[nn_s], short[sel_s]            # back to pool indices
    nn_m, sel_m = run.select(c, "none", n, cfg.k)
    r = {"corpus": c, "level": "none", "documents": run.docs[c][0][:n],
         "shortlist": int(len(short)), "tokens": cfg.smollm2_tokens}
    named = (("minilm_nn", nn_m), ("minilm_sift", sel_m), ("smollm2_nn", nn_s),
             ("smollm2_sift", sel_s))
    got = run.ttft(c, [j for _, idx in named for j in _jobs(pool, idx)], cfg.k, curve=False)
    for j, (name, idx) in enumerate(named):
        g = got[j * n:(j + 1) * n]
        r[f"bpb_{name}"] = [x[cfg.k] for x in g]
        r["bpb_base"] = [x[0] for x in g]
        r[f"indices_{name}"] = np.asarray(idx).tolist()
    r["overlap_nn"] = float(np.mean([len(set(a) & set(b)) for a, b in zip(nn_m, nn_s)]))
    r["overlap_sift"] = float(np.mean([len(set(a) & set(b)) for a, b in zip(sel_m, sel_s)]))
    log(f"[{c}] SmolLM2-embedding variant done ({time.time() - run.t0:.0f}s)")
    return r


def _cfg_json(cfg: Config) -> dict:
    d = dataclasses.asdict(cfg)
    d["lambdas"] = list(cfg.lambdas)
    return d


def _cfg_from(d: dict) -> Config:
    d = dict(d)
    d["lambdas"] = tuple(d.get("lambdas", Config.lambdas))
    return Config(**d)


# ----------------------------------------------------------------------------- budget

#: Seconds on 2 quiet cores of this machine, from the first SIFT study's measured runs
#: (k = 5: 29.5 min for 2 x 20 documents; k = 20 on code: 2806 s, i.e. ~66 s per
#: document and method for 20 steps and 21 scorings), split between a training step
#: (256 tokens, forward and backward) and a scoring (<= 512 tokens, forward) in the
#: ratio of their FLOPs (3 x 256 : 512). MiniLM per text: 0.03 s fits the first
#: study's news run, ~0.05 s its code run and the --quick run (with its compiles).
#: The first full run of this study (3 Dec 2026, fresh caches: 3419 s, of it MiniLM
#: 745 s for 14 223 texts, TTFT 2215 s for 800 steps and 424 scorings, i.e. 2.10 s per
#: step-equivalent) set MiniLM at 0.052 s per text, in-context at 0.1 s per document
#: (its scorings share the TTFT batches) and the fixed part (loading, building the
#: pools, compiling, selecting) at 380 s for its 7108 chunks: 220 s plus 0.0225 s a
#: chunk, which puts the --quick run (800 chunks) at the ~9 min it took; the plan then
#: says 46-56 min.
COSTS = {"step": 2.0, "eval": 1.25, "in_context_doc": 0.1, "minilm_text": 0.052,
         "smollm2_token": 0.0035, "fixed": 220.0, "fixed_chunk": 0.0225}


def plan(cfg: Config, corpora, parts) -> dict:
    """What a run trains and embeds, at best (every SIFT list at another level or λ
    repeats an earlier one) and at worst (none does), and its estimated seconds on
    2 quiet cores (`COSTS`). Sizes of the pools are the full study's (3881 code
    chunks, 3227 news chunks) unless `pool_limit` cuts them."""
    pool = {"code": 3881, "news": 3227}
    if cfg.pool_limit:
        pool = {c: min(n, cfg.pool_limit) for c, n in pool.items()}
    run = lambda k, curve: k * COSTS["step"] + (k + 1 if curve else 2) * COSTS["eval"]
    lo = hi = COSTS["fixed"] + COSTS["fixed_chunk"] * sum(pool[c] for c in corpora)
    lines = []
    texts = sum(pool[c] * (1 + cfg.near_fraction * (1 + cfg.max_copies) / 2) for c in corpora)
    lo += texts * COSTS["minilm_text"]
    hi += texts * COSTS["minilm_text"]
    lines.append(f"MiniLM: {texts:.0f} texts")
    long_on = "long" in parts and cfg.long_corpus in corpora
    if long_on:
        t = 2 * cfg.long_docs * run(cfg.long_k, True)
        lo, hi = lo + t, hi + t
        lines.append(f"long: {2 * cfg.long_docs} runs of {cfg.long_k} steps ({t:.0f} s)")
    if "grid" in parts:
        for c in corpora:
            free = cfg.long_docs if long_on and c == cfg.long_corpus else 0
            nn = 3 * cfg.docs - free
            s_lo, s_hi = cfg.docs - (free if cfg.long_level == "none" else 0), 3 * cfg.docs - free
            lo += (nn + s_lo) * run(cfg.k, False) + 3 * cfg.docs * COSTS["in_context_doc"]
            hi += (nn + s_hi) * run(cfg.k, False) + 3 * cfg.docs * COSTS["in_context_doc"]
            lines.append(f"grid {c}: {nn + s_lo}-{nn + s_hi} runs of {cfg.k} steps, "
                         f"{3 * cfg.docs} in-context scorings")
    if "lambda" in parts and cfg.lambda_corpus in corpora:
        extra = sum(1 for x in cfg.lambdas if x != cfg.lambda_) * cfg.lambda_docs
        hi += extra * run(cfg.k, False)
        lines.append(f"lambda: 0-{extra} runs of {cfg.k} steps")
    if "smollm2" in parts and cfg.smollm2_corpus in corpora:
        chunks = min(pool[cfg.smollm2_corpus], cfg.smollm2_docs * cfg.smollm2_shortlist)
        t = (chunks * cfg.smollm2_tokens + cfg.smollm2_docs * 130) * COSTS["smollm2_token"]
        t += 2 * cfg.smollm2_docs * run(cfg.k, False)
        lo, hi = lo + t, hi + t
        lines.append(f"smollm2: <= {chunks} chunks x {cfg.smollm2_tokens} tokens, "
                     f"{2 * cfg.smollm2_docs} runs")
    return {"low_s": lo, "high_s": hi, "lines": lines}


# ----------------------------------------------------------------------------- reporting


def _pm(v) -> str:
    m, h = ci(np.asarray(v, np.float64))
    return f"{m:.4f} ± {h:.4f}"


def _diff(a, b) -> str:
    m, h = ci(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return f"{m:+.4f} ± {h:.4f}"


def _copies(c) -> str:
    c = np.asarray(c).reshape(-1, 2)
    return f"{c[:, 0].mean():.2f} / {c[:, 1].mean():.2f}"


def report(res: dict) -> str:
    """The tables, as markdown."""
    cfg = _cfg_from(res["config"])
    lines = []
    if res.get("levels"):
        lines += ["Pools (chunks) at each redundancy level; near-copies: MiniLM cosine to their "
                  "original (median, 5th percentile) and character 5-gram overlap (median, min).",
                  "", "| corpus | none | exact | near | near: cosine | near: 5-gram overlap |",
                  "|---|---|---|---|---|---|"]
        for c, lv in res["levels"].items():
            nr = lv["near"]
            lines.append(f"| {c} | {lv['none']['size']} | {lv['exact']['size']} "
                         f"({lv['exact']['copies']} copies) | {nr['size']} ({nr['copies']} "
                         f"near-copies) | {nr['cosine_median']:.3f} ({nr['cosine_p05']:.3f}) | "
                         f"{nr['overlap_median']:.3f} ({nr['overlap_min']:.3f}) |")
        lines.append("")
    for c, g in res.get("grid", {}).items():
        n = len(g["documents"])
        lines += [f"**{c}**: SmolLM2-135M bits per byte on {n} documents, k = {cfg.k}, "
                  f"Adam {cfg.learning_rate:g}, λ = {cfg.lambda_:g}; mean ± 95% t-interval, "
                  "Δ paired; copies = picks that copy an earlier pick (exact / near, mean per "
                  "document).", "",
                  "| level | base | in-context Δ | TTFT-NN Δ | TTFT-SIFT Δ | SIFT − NN | "
                  "copies NN | copies SIFT |", "|---|---|---|---|---|---|---|---|"]
        for lv in LEVELS:
            if lv not in g:
                continue
            x = g[lv]
            b = x["bpb_base"]
            lines.append(f"| {lv} | {_pm(b)} | {_diff(x['bpb_in_context'], b)} | "
                         f"{_diff(x['bpb_nn'], b)} | {_diff(x['bpb_sift'], b)} | "
                         f"{_diff(x['bpb_sift'], x['bpb_nn'])} | {_copies(x['copies_nn'])} | "
                         f"{_copies(x['copies_sift'])} |")
        lines.append("")
    lam = res.get("lambda")
    if lam:
        lines += [f"**λ grid** ({lam['corpus']}, level {lam['level']}, "
                  f"{len(lam['documents'])} documents, k = {cfg.k}): TTFT on SIFT's picks.", "",
                  "| λ | TTFT-SIFT Δ to base | SIFT − NN | copies SIFT (exact / near) | "
                  "distinct picks |", "|---|---|---|---|---|"]
        for key, v in lam["lambdas"].items():
            distinct = np.mean([len(set(r)) for r in v["sift_indices"]])
            lines.append(f"| {float(key):g} | {_diff(v['bpb_sift'], lam['bpb_base'])} | "
                         f"{_diff(v['bpb_sift'], lam['bpb_nn'])} | {_copies(v['copies_sift'])} "
                         f"| {distinct:.2f} |")
        lines.append(f"| (NN) | {_diff(lam['bpb_nn'], lam['bpb_base'])} | — | "
                     f"{_copies(lam['copies_nn'])} | |")
        lines.append("")
    lg = res.get("long")
    if lg:
        cn, cs = np.asarray(lg["curve_nn"]), np.asarray(lg["curve_sift"])
        steps = sorted({1, 2, 5, 10, lg["k"]} & set(range(1, lg["k"] + 1)))
        lines += [f"**Longer run** ({lg['corpus']}, level {lg['level']}, "
                  f"{len(lg['documents'])} documents, k = {lg['k']}): SIFT − NN after n steps "
                  f"(paired); copies among the {lg['k']} picks: NN {_copies(lg['copies_nn'])}, "
                  f"SIFT {_copies(lg['copies_sift'])} (exact / near).", "",
                  "| steps | " + " | ".join(str(s) for s in steps) + " |",
                  "|---|" + "---|" * len(steps),
                  "| NN Δ to base | " + " | ".join(_diff(cn[:, s], cn[:, 0]) for s in steps) + " |",
                  "| SIFT Δ to base | " + " | ".join(_diff(cs[:, s], cs[:, 0]) for s in steps)
                  + " |",
                  "| SIFT − NN | " + " | ".join(_diff(cs[:, s], cn[:, s]) for s in steps) + " |",
                  ""]
    sm = res.get("smollm2")
    if sm:
        b = sm["bpb_base"]
        lines += [f"**Prompt embedding** ({sm['corpus']}, level none, {len(sm['documents'])} "
                  f"documents, k = {cfg.k}): MiniLM over the whole pool vs SmolLM2's mean "
                  f"hidden state of each chunk's first {sm['tokens']} tokens, within the union "
                  f"of the documents' MiniLM nearest chunks ({sm['shortlist']} chunks). "
                  f"Picks shared with MiniLM's: NN {sm['overlap_nn']:.2f}, SIFT "
                  f"{sm['overlap_sift']:.2f} of {cfg.k}.", "",
                  "| embedding | TTFT-NN Δ | TTFT-SIFT Δ | SIFT − NN |", "|---|---|---|---|"]
        for e in ("minilm", "smollm2"):
            lines.append(f"| {e} | {_diff(sm[f'bpb_{e}_nn'], b)} | {_diff(sm[f'bpb_{e}_sift'], b)}"
                         f" | {_diff(sm[f'bpb_{e}_sift'], sm[f'bpb_{e}_nn'])} |")
        lines.append("")
    t = res.get("timing")
    if t:
        lines.append(estimate_text(t, cfg))
    return "\n".join(lines)


def estimate_text(t: dict, cfg: Config) -> str:
    step = t["ttft_s"] / max(1, t["ttft_steps"] + 0.6 * t["ttft_evals"])
    return (f"Runtime {t['total_s']:.0f} s: TTFT {t['ttft_s']:.0f} s for {t['ttft_steps']} "
            f"steps and {t['ttft_evals']} evaluations ({t['cache_hits']} pick lists from the "
            f"cache), in-context {t['in_context_s']:.0f} s ({t['in_context_docs']} documents), "
            f"MiniLM {t['minilm_s']:.0f} s ({t['minilm_texts']} texts), SmolLM2 embeddings "
            f"{t['smollm2_embed_s']:.0f} s ({t['smollm2_embed_tokens']} tokens); "
            f"{step:.2f} s per step-equivalent.")


def plot(res: dict, out: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    lg = res.get("long")
    if lg:
        cn, cs = np.asarray(lg["curve_nn"]), np.asarray(lg["curve_sift"])
        steps = np.arange(lg["k"] + 1)
        fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 4))
        for cur, label, col in ((cn, "TTFT, nearest neighbours", "C0"),
                                (cs, "TTFT, SIFT", "C1")):
            a1.plot(steps, cur.mean(0), "o-", ms=3, color=col, label=label)
            m, h = ci(cur - cur[:, :1])
            a2.plot(steps, m, "o-", ms=3, color=col, label=label)
            a2.fill_between(steps, m - h, m + h, color=col, alpha=0.15)
        a2.axhline(0, color="k", lw=0.5)
        m, h = ci(cs - cn)
        a3.plot(steps, m, "o-", ms=3, color="C3", label="SIFT − NN (below 0: SIFT better)")
        a3.fill_between(steps, m - h, m + h, color="C3", alpha=0.15)
        a3.axhline(0, color="k", lw=0.5)
        a1.set_ylabel("bits per byte (mean over documents)")
        a2.set_ylabel("bpb − base (paired, mean ± 95% t-int.)")
        a3.set_ylabel("bpb, SIFT − NN (paired, mean ± 95% t-int.)")
        from matplotlib.ticker import MaxNLocator
        for a in (a1, a2, a3):
            a.set_xlabel("test-time steps (picks)")
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
            a.legend()
        fig.suptitle(f"{lg['corpus']}, pool with {lg['level']} copies: "
                     f"{len(lg['documents'])} documents, k = {lg['k']}")
        fig.tight_layout()
        save_figure(fig, out / "long_bpb_vs_steps.png", dpi=110)
        plt.close(fig)
    grid = res.get("grid") or {}
    if grid:
        fig, axes = plt.subplots(1, len(grid), figsize=(5.5 * len(grid), 4), squeeze=False)
        for ax, (c, g) in zip(axes[0], grid.items()):
            lv = [x for x in LEVELS if x in g]
            xs = np.arange(len(lv))
            for j, (key, label, col) in enumerate((("bpb_in_context", "in-context", "C2"),
                                                   ("bpb_nn", "TTFT-NN", "C0"),
                                                   ("bpb_sift", "TTFT-SIFT", "C1"))):
                ms, hs = zip(*(ci(np.asarray(g[x][key]) - np.asarray(g[x]["bpb_base"]))
                               for x in lv))
                ax.errorbar(xs + (j - 1) * 0.12, ms, yerr=hs, fmt="o", color=col, label=label,
                            capsize=3)
            ax.axhline(0, color="k", lw=0.5)
            ax.set_xticks(xs, lv)
            ax.set_xlabel("redundancy level")
            ax.set_ylabel("bpb − base (paired, 95% t-int.)")
            ax.set_title(f"{c}: {len(g['documents'])} documents")
            ax.legend()
        fig.tight_layout()
        save_figure(fig, out / "redundancy.png", dpi=110)
        plt.close(fig)


def write(res: dict, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.json", json.dumps(res, indent=1))
    text = report(res)
    write_text(out / "table.md", text + "\n")
    plot(res, out)
    print(text, flush=True)


def main(argv=None):
    ap = OneLineParser(prog="sift redundancy", description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", choices=(*CORPORA, "all"), default="all")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--docs", type=int, default=None, help="grid documents per corpus")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    ap.add_argument("--config", help="JSON object of Config fields (applied after --quick)")
    ap.add_argument("--out", type=Path, default=None, help="results folder")
    ap.add_argument("--replot", action="store_true", help="tables and plots from results.json")
    args = ap.parse_args(argv)
    out = args.out or (RESULTS / ("quick" if args.quick else "full"))
    if args.replot:
        f = out / "results.json"
        if not f.exists():
            ap.error(f"--replot: no {f}")
        return write(json.loads(f.read_text()), out)
    parts = [p for p in args.parts.split(",") if p]
    if not parts or set(parts) - set(PARTS):
        ap.error(f"--parts: {args.parts!r}; choose from {', '.join(PARTS)}")
    over = dict(QUICK) if args.quick else {}
    try:
        over.update(read_config(args.config, Config))
    except ValueError as e:
        ap.error(str(e))
    if args.docs is not None:
        over["docs"] = args.docs
    if "lambdas" in over:
        over["lambdas"] = tuple(over["lambdas"])
    cfg = Config(**over)
    bad = [f"{n}={getattr(cfg, n)!r}" for n in ("docs", "lambda_docs", "long_docs", "smollm2_docs")
           if not (isinstance(getattr(cfg, n), int) and getattr(cfg, n) >= 2)]
    bad += [f"{n}={getattr(cfg, n)!r}" for n in ("k", "long_k", "max_copies", "batch",
                                                 "smollm2_tokens", "smollm2_shortlist")
            if not (isinstance(getattr(cfg, n), int) and getattr(cfg, n) >= 1)]
    bad += [f"{n}={getattr(cfg, n)!r}" for n in ("dup_fraction", "near_fraction")
            if not (isinstance(getattr(cfg, n), (int, float)) and 0 < getattr(cfg, n) <= 1)]
    bad += [f"{n}={getattr(cfg, n)!r}" for n in ("long_level", "lambda_level")
            if getattr(cfg, n) not in LEVELS]
    bad += [f"{n}={getattr(cfg, n)!r}" for n in ("long_corpus", "lambda_corpus", "smollm2_corpus")
            if getattr(cfg, n) not in CORPORA]
    if not cfg.lambdas or not all(isinstance(x, (int, float)) and x > 0 for x in cfg.lambdas):
        bad.append(f"lambdas={cfg.lambdas!r}")
    if cfg.prefilter < max(cfg.k, cfg.long_k):
        bad.append(f"prefilter={cfg.prefilter} < k")
    if bad:
        ap.error("bad configuration: " + ", ".join(bad) + " (documents >= 2, counts >= 1, "
                 "fractions in (0, 1], levels none|exact|near, corpora code|news, λ > 0)")
    corpora = CORPORA if args.corpus == "all" else (args.corpus,)
    p = plan(cfg, corpora, parts)
    print(f"plan: {'; '.join(p['lines'])}; estimated {p['low_s'] / 60:.0f}-"
          f"{p['high_s'] / 60:.0f} min on 2 quiet cores", flush=True)
    res = run_all(cfg, corpora, parts, out, log=lambda s: print(s, flush=True))
    write(res, out)


if __name__ == "__main__":
    main()
