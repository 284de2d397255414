# The two commands a fresh machine needs: `make demo` and `make test`. Only python3 (3.11+) is assumed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: demo test lint typecheck bench schemas clean

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

# The whole suite, after the lint and the type check. `pytest -m "not fleet and not e2e"` is the
# inner loop (tests/conftest.py says what the markers mean).
test: lint typecheck
	$(PY) -m pytest

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check .

# mypy needs the installed layout (gwc.runtime is runtime/, gwc.compiler is compiler/): a view of
# symlinks under build/ gives it that without installing anything.
typecheck: $(VENV)/.installed-dev
	@mkdir -p build/typecheck/gwc
	@ln -sfn ../../../runtime build/typecheck/gwc/runtime
	@ln -sfn ../../../compiler build/typecheck/gwc/compiler
	cd build/typecheck && MYPYPATH=. ../../$(PY) -m mypy --config-file ../../pyproject.toml -p gwc

bench: $(VENV)/.installed
	$(PY) bench/compile.py

schemas: $(VENV)/.installed
	$(VENV)/bin/gwc schema

clean:
	rm -rf $(VENV) .demo .pytest_cache build
