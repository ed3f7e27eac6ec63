# fljax: two commands on a fresh machine.
#   make demo   FedAvg on breast cancer over 8 hospitals, prints a per-hospital table
#               (installs the runtime dependencies only)
#   make test   ruff + the whole test suite (installs the dev extra, TensorFlow included, and,
#               as root with apt, Debian's Chromium for the HTML report's browser test)
# Each creates .venv (Python >= 3.11) and installs what it needs on first use.
#   make run ARGS="algorithm=fedprox rounds=20"   fljax-run with overrides
#   make notebooks                                 Jupyter Lab on notebooks/ (notebooks extra)
#   make docs                                      the documentation site into site/

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-dev
RUNTIME = $(VENV)/.installed-run
ARGS   ?=

.PHONY: demo run notebooks test lint docs bench peers clean chromium

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "fljax needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUNTIME)

$(STAMP): pyproject.toml $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP) $(RUNTIME)

demo: $(RUNTIME)
	$(BIN)/fljax-run

run: $(RUNTIME)
	$(BIN)/fljax-run $(ARGS)

notebooks: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[notebooks]"
	$(BIN)/jupyter lab notebooks/

lint: $(STAMP)
	$(BIN)/ruff check .

docs: $(STAMP)  # the documentation site into site/ (strict: any warning fails; no network)
	$(BIN)/python tools/api_docs.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

chromium:  # Debian's package; without root or apt the browser test skips and says why
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  --no-install-recommends chromium >/dev/null; } \
	  || echo "Chromium not installed: the HTML report's browser test will be skipped"

test: $(STAMP) chromium
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist worksteal  # two workers; idle one steals queued tests

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/scale.py

peers: $(STAMP)  # installs the bench extra (Flower, PyTorch CPU) into .venv first
	$(BIN)/python -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/peers.py

clean:
	rm -rf $(VENV) outputs multirun .jax_cache
