# `make run` and `make test` are all a fresh machine needs (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test bench bench-activeft ref-venv clean

install: $(STAMP)

# Re-runs only when the pins change; safe to rerun.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

run: install
	$(PY) experiments/digits_demo.py

test: install
	$(PY) -m pytest tests

# The PyTorch reference in its own throw-away venv (never a dependency of ours).
REF_VENV ?= .ref-venv
ref-venv: $(REF_VENV)/.installed
$(REF_VENV)/.installed:
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/pip install --quiet --upgrade pip
	$(REF_VENV)/bin/pip install --quiet torch==2.13.0
	$(REF_VENV)/bin/pip install --quiet activeft==0.1.1 faiss-cpu==1.15.1 numpy==2.4.6
	touch $@

bench: install ref-venv
	$(PY) experiments/benchmarks/compare_reference.py --ref-python $(REF_VENV)/bin/python

# ActiveFT against the official code: needs a checkout of github.com/yichen928/ActiveFT
# (see experiments/benchmarks/official/README.md); never committed here.
OFFICIAL_REPO ?= ../ActiveFT_official
bench-activeft: install ref-venv
	$(PY) experiments/benchmarks/compare_activeft.py --ref-python $(REF_VENV)/bin/python \
		--official-repo $(OFFICIAL_REPO)

clean:
	rm -rf $(VENV) build *.egg-info
