# learnprune: two commands on a fresh machine.
#   make demo   set up .venv, fetch MNIST, train LeNet-300-100 with SCL (learned masks)
#   make test   set up .venv, fetch the data, run ruff and the tests (under 15 minutes, 2 cores)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LEARNPRUNE := $(VENV)/bin/learnprune
# torch 2.13.0 first: pip takes the CPU build that lies on this machine's disk; a bare
# `torch` would pull a CUDA build of several GB.
TORCH ?= torch==2.13.0

.PHONY: demo test test-slow install data lint bench clean

demo: data
	$(LEARNPRUNE) train --recipe recipes/lenet300-scl.toml

test: data lint
	$(PY) -m pytest -q

test-slow: data
	$(PY) -m pytest -q -m slow

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,plot,yaml,export,lightning,hf]'
	touch $@

data: install
	$(LEARNPRUNE) data fetch mnist
	$(LEARNPRUNE) data fetch fashion-mnist

lint: install
	$(VENV)/bin/ruff check learnprune tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
