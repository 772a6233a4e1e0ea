# Two commands do everything on a fresh machine: `make book` and `make test`.
# Both create the virtual environment (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cmpt-installed
RAY_STAMP := $(VENV)/.cmpt-ray-installed
PROFILE ?= default
LAB_PORT ?= 8888

.PHONY: book test lab venv clean bench

venv: $(STAMP)

## the install's seconds land in .venv/.cmpt-install-seconds (the performance chapter's build accounting)
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	date +%s > $(VENV)/.cmpt-install-start
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name cmpt --display-name "Python (cmpt)" >/dev/null
	echo $$(( $$(date +%s) - $$(cat $(VENV)/.cmpt-install-start) )) > $(VENV)/.cmpt-install-seconds
	touch $(STAMP)

## Ray, the optional cluster executor (cmpt sweep --executor ray): the tests need it, the book does not
$(RAY_STAMP): requirements-ray.txt $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-ray.txt
	touch $(RAY_STAMP)

## the main job: execute every chapter on the embedded default profile, build _build/html
book: $(STAMP)
	$(VENV)/bin/cmpt book --profile $(PROFILE)

## the test suite (unit tests, every notebook on the smoke profile, a smoke book in a browser)
test: $(STAMP) $(RAY_STAMP)
	$(PY) -m pytest -q -rs

## JupyterLab on 127.0.0.1, opened on book/, with the cmpt kernel the notebooks name; chapters run there
## share the book's results store (_build/results), so finished runs are read, not trained again
lab: $(STAMP)
	env -u MPLBACKEND -u CMPT_RECORDS $(VENV)/bin/jupyter lab --ip 127.0.0.1 --port $(LAB_PORT) --no-browser \
	    --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/book \
	    $(if $(filter 0,$(shell id -u)),--allow-root,)

## the speed figures (cmpt bench): cmpt's fast paths against straightforward references, one process
bench: $(STAMP)
	$(VENV)/bin/cmpt bench --profile $(PROFILE)

clean:
	rm -rf _build
