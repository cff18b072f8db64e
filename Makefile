# learnprune: two commands on a fresh machine.
#   make demo   set up .venv (learnprune alone), fetch MNIST, train LeNet-300-100 with SCL
#   make test   add the test extras, fetch MNIST and Fashion-MNIST, run ruff and the tests
#   make test-wheel  build the wheel, install it in a fresh venv, use it outside the checkout
# `make demo DEMO_ARGS="--max-steps 50"` is the short demo (.ci/run uses it).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LEARNPRUNE := $(VENV)/bin/learnprune
PIP := $(PY) -m pip install -q --disable-pip-version-check
# torch 2.13.0 first: pip takes the CPU build that lies on this machine's disk; a bare
# `torch` would pull a CUDA build of several GB.
TORCH ?= torch==2.13.0
EXTRAS ?= test,plot,yaml,export,lightning,hf
DEMO_ARGS ?=
FASHION_MNIST_PACKAGE := dataset-fashion-mnist
APT_GET ?= apt-get
APT_INSTALL := DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -q $(FASHION_MNIST_PACKAGE)

.PHONY: demo test test-slow test-wheel install install-test data mnist fashion-mnist lint clean

demo: mnist
	$(LEARNPRUNE) train --recipe lenet300-scl $(DEMO_ARGS)

test: install-test data lint
	$(PY) -m pytest -q

test-slow: install-test data
	$(PY) -m pytest -q -m slow

# The built wheel in a fresh venv, used from outside the checkout (about two minutes).
test-wheel: install-test
	LEARNPRUNE_TEST_TORCH=$(TORCH) $(PY) -m pytest -q -m packaging

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH)
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[$(EXTRAS)]'
	touch $@

data: mnist fashion-mnist

mnist: install
	$(LEARNPRUNE) data fetch mnist

# Fashion-MNIST comes from the Debian package: installed here when we are root with apt-get,
# otherwise one line says what to run and the tests that need it are skipped.
fashion-mnist: install
	@if $(LEARNPRUNE) data fetch fashion-mnist >/dev/null 2>&1; then \
	    echo "fashion-mnist is ready"; \
	elif [ "$$(id -u)" = 0 ] && command -v $(APT_GET) >/dev/null && \
	    echo "installing the Debian package $(FASHION_MNIST_PACKAGE)" && \
	    { $(APT_INSTALL) >/dev/null 2>&1 || { $(APT_GET) update -q && $(APT_INSTALL); }; }; then \
	    $(LEARNPRUNE) data fetch fashion-mnist; \
	else \
	    echo "Fashion-MNIST is not installed, so its tests are skipped; to run them:" \
	         "sudo apt-get install $(FASHION_MNIST_PACKAGE) && make test"; \
	fi

lint: install-test
	$(VENV)/bin/ruff check learnprune tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
