# Two commands for a newcomer: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PLUGINS := plugins/storage_mem plugins/storage_sql plugins/storage_redis plugins/auth plugins/permissions plugins/todo
INSTALLED := $(VENV)/.installed

.PHONY: install run test lint bench bench-backends bench-quick wrk clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(INSTALLED): $(BIN)/python setup.cfg $(wildcard plugins/*/pyproject.toml)
	$(BIN)/pip install --quiet -e . $(foreach p,$(wildcard $(PLUGINS)),-e $(p))
	touch $@

## install: create .venv and install the kernel and every plugin (editable)
install: $(INSTALLED)

## run: start the server on http://localhost:9000 with ./bastion.ini (`bastion serve`)
run: install
	$(BIN)/bastion serve

$(VENV)/.test-tools: $(INSTALLED)
	$(BIN)/pip install --quiet -e '.[test]' tox ruff
	touch $@

## test: check (as root on Debian: install) the servers and browser the tests need, install the test tools,
## and run every test of the kernel and of every plugin; with CI=true a missing browser or server fails, never skips
test:
	@PYTHON=$(PYTHON) VENV=$(VENV) sh tools/test-needs
	@$(MAKE) --no-print-directory $(VENV)/.test-tools
	$(BIN)/python -m pytest tests plugins

## lint: ruff over everything, then mypy over the kernel and every plugin's package (the files and settings
## are pyproject.toml's [tool.mypy])
lint: $(VENV)/.test-tools
	$(BIN)/ruff check kernel plugins tests bench
	$(BIN)/mypy

## bench: the signed call against the bare ceiling and the peers, every case in passes interleaved with its ceiling
## (about 10 minutes; `python -m bench.interleaved --help`); bench-backends: every storage configuration, the scaling
## curve and the in-process profile (under 15 minutes); bench-quick: its short run (under 2 minutes). They install
## the `bench` extra (the Django and FastAPI peers in bench/peers/) and, as root on Debian, wrk.
$(VENV)/.bench-tools: $(VENV)/.test-tools setup.cfg
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

wrk:
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get -o DPkg::Lock::Timeout=300 install -y -q wrk >/dev/null; } \
		|| { echo "bench: wrk is needed (apt-get install wrk)"; exit 1; }

bench: $(VENV)/.bench-tools wrk
	$(BIN)/python -m bench.interleaved

bench-backends: $(VENV)/.bench-tools wrk
	$(BIN)/python -m bench

bench-quick: $(VENV)/.bench-tools wrk
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .tox .pytest_cache build dist *.egg-info plugins/*/*.egg-info
