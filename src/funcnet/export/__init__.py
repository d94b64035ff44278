"""Deploying pruned models: GGUF files for llama.cpp (``deci`` architecture, per-layer shapes),
native Hugging Face folders (:func:`funcnet.core.pruned.save_pruned` with ``format="native"``) and a
DeciLM / Nemotron-NAS folder for vLLM. See docs/deploy.md."""
from funcnet.export.decilm import decilm_config, write_decilm
from funcnet.export.gguf_file import (
    ARCH,
    GGUF_MODEL_TYPES,
    OUTTYPES,
    QUANT_TYPES,
    check_gguf_shapes,
    gguf_shapes,
    gguf_tensors,
    llama_cpp_available,
    permute_qk,
    quantize_gguf,
    source_gguf,
    unpermute_qk,
    write_gguf,
)

__all__ = [
    "ARCH",
    "GGUF_MODEL_TYPES",
    "OUTTYPES",
    "QUANT_TYPES",
    "check_gguf_shapes",
    "decilm_config",
    "gguf_shapes",
    "gguf_tensors",
    "llama_cpp_available",
    "permute_qk",
    "quantize_gguf",
    "source_gguf",
    "unpermute_qk",
    "write_decilm",
    "write_gguf",
]
