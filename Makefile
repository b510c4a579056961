# The two commands a newcomer needs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo playground test test-fast lint bench bench-peer serve clean

# The wheel holds only the product; the .pth puts this checkout on the venv's path, so the
# `concierge demo` plugin (demo/), sandbox/, bench/ and tests/ import from here.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "concierge-checkout.pth").write_text(str(pathlib.Path.cwd()) + "\n")'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/concierge demo

# The product against the sandbox in your browser (http://127.0.0.1:8321/); ANTHROPIC_API_KEY = real Claude.
playground: $(STAMP)
	$(BIN)/concierge playground

# pytest-xdist workers: three per core, as most tests wait on paced audio rather than the CPU.
# One test at a time per worker (`--maxschedchunk 1`), in the order tests/conftest.py gives (the
# longest first), so no long test is queued behind another.
WORKERS ?= $(shell echo $$((3 * $$(nproc))))
PYTEST_PARALLEL = -n $(WORKERS) --dist load --maxschedchunk 1

# The whole suite in parallel.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

# Everything but the slow end-to-end, reliability and subprocess tests (`-m slow`).
test-fast: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python -m bench.latency

# Pipecat for `python -m bench.compare`, in its own venv so its pins never touch ours.
bench-peer: .venv-peer/.installed

.venv-peer/.installed: bench/peers/requirements.txt
	$(PY) -m venv .venv-peer
	.venv-peer/bin/python -m pip install --quiet --upgrade pip
	.venv-peer/bin/python -m pip install --quiet -r bench/peers/requirements.txt
	touch $@

serve: $(STAMP)
	$(BIN)/concierge serve

clean:
	rm -rf $(VENV) build *.egg-info concierge.db*
