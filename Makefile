# Two commands do everything on a fresh machine: `make book` and `make test`.
# Both create the virtual environment (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cmpt-installed
PROFILE ?= default
LAB_PORT ?= 8888

.PHONY: book test lab venv clean bench

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name cmpt --display-name "Python (cmpt)" >/dev/null
	touch $(STAMP)

## the main job: execute every chapter on the embedded default profile, build _build/html
book: $(STAMP)
	$(VENV)/bin/cmpt book --profile $(PROFILE)

## the test suite (unit tests, every notebook on the smoke profile, a smoke book in a browser)
test: $(STAMP)
	$(PY) -m pytest -q -rs

## JupyterLab on 127.0.0.1 with the cmpt kernel
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --no-browser $(if $(filter 0,$(shell id -u)),--allow-root,) --port $(LAB_PORT)

clean:
	rm -rf _build
