# Two commands on a fresh machine: `make run` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vclib-installed
ARGS ?=
# JupyterLab setting of this environment (overrides.d holds one file per package): notebooks are saved with their
# widget state, so a reopened notebook shows each widget's last view, not "Error displaying widget: model not found"
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.d/vclib.json
ENV := $(STAMP) $(LAB_SETTINGS)

.PHONY: run test test-fast test-browser test-models lab venv clean-venv benchmarks

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# pip byte-compiles every installed file one by one (~35 of ~50 s); compileall does the same on every core
	$(BIN)/python -m pip install --quiet --no-compile -e ".[dev]"
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null
	$(BIN)/python -m ipykernel install --sys-prefix --name vclib --display-name "Python (vclib)" >/dev/null
	touch $(STAMP)

$(LAB_SETTINGS): jupyter-config/lab-settings.json $(STAMP)
	mkdir -p $(dir $@)
	cp jupyter-config/lab-settings.json $@

venv: $(ENV)

## make run: execute all notebooks on the embedded simulator into results/<run>/ (extra options: ARGS="...")
run: $(ENV)
	$(BIN)/vclib run $(ARGS)

## make test: the whole test suite, notebooks included, on every core (the browser tests: make test-browser)
test: $(ENV)
	$(BIN)/python -m pytest -n auto --dist worksteal -m "not browser and not slow" $(ARGS)

## make test-fast: everything but the notebook runs and the browser
test-fast: $(ENV)
	$(BIN)/python -m pytest -m "not notebooks and not browser and not slow" $(ARGS)

## make test-models: the published models in their own environments (builds scGen's from PyPI on first use)
test-models: $(ENV)
	$(BIN)/python -m pytest -m slow $(ARGS)

## make test-browser: the notebooks in JupyterLab and a run's report, in Debian's chromium (fails without it)
test-browser: $(ENV)
	VCLIB_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -m browser -n auto --dist worksteal $(ARGS)

## make lab: JupyterLab on notebooks/ with the vclib kernel
lab: $(ENV)
	$(BIN)/jupyter lab notebooks/

benchmarks: $(ENV)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean-venv:
	rm -rf $(VENV)
