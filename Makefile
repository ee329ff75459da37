# Two commands on a fresh machine:  `make demo`  and  `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and pinned to the CPU build that lies on local disk;
# an unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-slow bench clean

$(BIN)/exvo: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(BIN)/exvo

setup: $(BIN)/exvo

demo: setup
	$(BIN)/exvo demo

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-slow: setup
	$(BIN)/python -m pytest -q -m slow tests

clean:
	rm -rf $(VENV) runs demo_data report cache/*.h5
