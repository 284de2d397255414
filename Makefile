# The two commands a fresh machine needs: `make demo` and `make test`. Only python3 (3.11+) is assumed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: demo test bench schemas clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[demo,fast]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,demo,fast]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) demo/run.py

test: $(VENV)/.installed-dev
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) bench/compile.py

schemas: $(VENV)/.installed
	$(VENV)/bin/gwc schema

clean:
	rm -rf $(VENV) .demo .pytest_cache
