"""The lowest layer: architecture adapters, model loading and identity, the pruned-folder format,
physical shrinking, the one batched forward loop, progress bars and atomic file I/O."""
from funcnet.core.adapters import ArchAdapter, get_adapter, register_adapter, supported_families
from funcnet.core.forward import forward_batches, iter_batches, model_body, pad_batch
from funcnet.core.models import (DEFAULT_MODEL, LoadedModel, ModelOutline, ModelSpec, as_loaded, config_identity,
                                 count_parameters, input_device, load_model, model_identity, model_outline,
                                 model_summary)

__all__ = ["ArchAdapter", "get_adapter", "register_adapter", "supported_families", "DEFAULT_MODEL", "LoadedModel",
           "ModelOutline", "ModelSpec", "as_loaded", "config_identity", "count_parameters", "input_device",
           "load_model", "model_identity", "model_outline", "model_summary",
           "forward_batches", "iter_batches", "model_body", "pad_batch"]
