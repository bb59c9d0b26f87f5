# vispos: two commands set up everything on a fresh machine.
#   make demo   create .venv, install vispos with its extras, run the demos (results/ ..., replacing earlier ones)
#   make test   create .venv, install vispos[dev], run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.vispos-installed

.PHONY: demo test test-slow install bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet torch torchvision
	$(PIP) install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vispos demo all --out results --overwrite

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/vispos bench --out results/bench

lint: $(STAMP)
	$(VENV)/bin/ruff check vispos tests

clean:
	rm -rf $(VENV) results .pytest_cache
