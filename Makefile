# Two commands on a fresh machine:  `make demo`  and  `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and pinned; which build (CPU or CUDA) depends on the index:
# on this project's machines the configured index serves the CPU build; elsewhere
# choose it with TORCH_PIP_ARGS (README, "Two commands on a fresh machine").
TORCH ?= torch==2.13.0
# e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" for the CPU build
TORCH_PIP_ARGS ?=

.PHONY: setup demo test test-slow bench clean

$(BIN)/exvo: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(BIN)/exvo

setup: $(BIN)/exvo

demo: setup
	$(BIN)/exvo demo

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-slow: setup
	$(BIN)/python -m pytest -q -m slow tests

# What `make demo` made: the venv, the demo corpus, its runs (the report is runs/report)
# and its caches (cache/demo_data/, task CNNs included). Caches of other corpora under
# cache/ are kept: they may hold hours of extraction.
clean:
	rm -rf $(VENV) runs demo_data cache/demo_data
