# `make demo` and `make test` set up .venv on a fresh machine, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
PYTEST_ARGS ?=
# Two pytest workers (pytest-xdist): the suite is compile-bound and XLA compiles on one thread, so two workers keep
# both cores busy (measured faster on the 2-core CPU). PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 2

.PHONY: demo test install peers clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

# The test extra adds pytest, hypothesis and the peer libraries the tests compare against.
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(STAMP)

# Peer watermark for experiments/qrmark_robustness.py: invisible-watermark's dwtDct (see experiments/peers.py).
# --no-deps: the package also declares torch and onnxruntime, for a method (RivaGAN) the experiments do not run;
# the "peers" extra adds only what dwtDct imports. Tests never need it (they skip without it).
peers: $(STAMP)
	$(BIN)/pip install --quiet -e ".[peers]"
	$(BIN)/pip install --quiet --no-deps invisible-watermark==0.2.0

demo: $(STAMP)
	$(BIN)/qrjax demo

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
