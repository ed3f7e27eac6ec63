# fljax: two commands on a fresh machine.
#   make demo   FedAvg on breast cancer over 8 hospitals, prints a per-hospital table
#   make test   ruff + the whole test suite
# Each creates .venv (Python >= 3.11) and installs what it needs on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-dev

.PHONY: demo test lint bench peers clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "fljax needs Python >= 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fljax-run

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
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
