"""The pruned-model folder format: save (weights, tokenizer, config with per-layer shapes, the
pruning report) and load, without running any code from the folder.

A pruned folder's ``config.json`` has ``model_type: "funcnet_pruned"``, the base architecture's
model type in ``funcnet_base_model_type`` and the per-layer shapes in ``funcnet_pruned``. funcnet's
own classes (:class:`FuncnetPrunedConfig`, :class:`FuncnetPrunedForCausalLM`) are registered with
transformers' ``AutoConfig`` / ``AutoModelForCausalLM`` when this module is imported, so after
``import funcnet`` a plain ``AutoModelForCausalLM.from_pretrained(folder)`` loads it with no remote
code. The folder also carries a self-contained ``modeling_funcnet_pruned.py`` (and ``auto_map``) for
people without funcnet, who may choose ``trust_remote_code=True``; funcnet itself never imports it.
Folders written by funcnet 0.1 (base ``model_type`` plus ``auto_map``) load the same way."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
import transformers
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from funcnet._defaults import SAVE_FORMATS
from funcnet._version import __version__
from funcnet.core import shrink
from funcnet.core._io import atomic_path, check_output, json_default as _json_default, mark_output
from funcnet.core.adapters import get_adapter
from funcnet.core.loaded import LoadedModel, _resolve_dtype, wrap_model
from funcnet.core.shrink import update_config
from funcnet.errors import FuncnetError


REPORT_NAME = "pruning_report.json"
MODELING_NAME = "modeling_funcnet_pruned.py"
#: ``model_type`` of a pruned folder's config.json
PRUNED_MODEL_TYPE = "funcnet_pruned"


_MODELING_TEMPLATE = '''"""Pruned model written by funcnet {version}: per-layer MLP widths / head counts differ from the
base architecture. Self-contained: needs only torch and transformers."""
from transformers import {cfg_cls} as _BaseConfig
from transformers import {lm_cls} as _BaseForCausalLM


class FuncnetPrunedConfig(_BaseConfig):
    pass


{apply_src}

class FuncnetPrunedForCausalLM(_BaseForCausalLM):
    config_class = FuncnetPrunedConfig

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        spec = getattr(config, "funcnet_pruned", None)
        if spec:
            funcnet_apply_spec(self, spec)
'''


def modeling_source(model) -> str:

    cfg_cls, lm_cls = type(model.config), type(model)
    for c in (cfg_cls, lm_cls):
        if getattr(transformers, c.__name__, None) is not c:
            raise FuncnetError(f"cannot save {c.__name__}: it is not a class of the transformers package")
    return _MODELING_TEMPLATE.format(
        version=__version__, cfg_cls=cfg_cls.__name__, lm_cls=lm_cls.__name__,
        apply_src=inspect.getsource(shrink.funcnet_apply_spec),
    )


class FuncnetPrunedConfig(PretrainedConfig):
    """The config of a funcnet-pruned model: the base architecture's config fields, its model type
    (``funcnet_base_model_type``) and the per-layer shapes (``funcnet_pruned``)."""

    model_type = PRUNED_MODEL_TYPE

    def base_config(self) -> PretrainedConfig:
        """The base architecture's config class, filled with these fields (and the shapes)."""
        base = getattr(self, "funcnet_base_model_type", None)
        if not base:
            raise FuncnetError("a funcnet_pruned config without funcnet_base_model_type")
        d = self.to_dict()
        d.pop("model_type", None)
        d.pop("auto_map", None)
        return _base_classes(base)[0].from_dict(d)


class FuncnetPrunedForCausalLM:
    """Entry point registered with ``AutoModelForCausalLM`` for ``funcnet_pruned`` configs: builds the
    base architecture reshaped to the saved per-layer widths (see :func:`pruned_model_class`)."""

    config_class = FuncnetPrunedConfig

    @classmethod
    def from_pretrained(cls, path, *args, config=None, **kwargs):
        if config is None or not isinstance(config, FuncnetPrunedConfig):
            config = FuncnetPrunedConfig.from_pretrained(path)
        base_cfg = config.base_config()
        kwargs.pop("trust_remote_code", None)
        return pruned_model_class(config.funcnet_base_model_type).from_pretrained(path, *args, config=base_cfg,
                                                                                    **kwargs)

    @classmethod
    def from_config(cls, config, **kwargs):
        base_cfg = config.base_config() if isinstance(config, FuncnetPrunedConfig) else config
        return pruned_model_class(base_cfg.model_type)(base_cfg, **kwargs)


def _base_classes(base_model_type: str) -> tuple[type, type]:
    """(config class, causal-LM class) of a transformers model type."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        cfg_cls = CONFIG_MAPPING[base_model_type]
        return cfg_cls, MODEL_FOR_CAUSAL_LM_MAPPING[cfg_cls]
    except (KeyError, ValueError) as e:
        raise FuncnetError(f"pruned model of an unknown base architecture '{base_model_type}'") from e


_PRUNED_CLASSES: dict[str, type] = {}


def pruned_model_class(base_model_type: str) -> type:
    """The base causal-LM class of ``base_model_type`` whose ``__init__`` reshapes the dense layers
    to the per-layer shapes of ``config.funcnet_pruned`` (created once per base type)."""
    if base_model_type not in _PRUNED_CLASSES:
        _, base_lm = _base_classes(base_model_type)

        def __init__(self, config, *args, **kwargs):
            base_lm.__init__(self, config, *args, **kwargs)
            spec = getattr(config, "funcnet_pruned", None)
            if spec:
                shrink.funcnet_apply_spec(self, spec)

        _PRUNED_CLASSES[base_model_type] = type(f"FuncnetPruned{base_lm.__name__}", (base_lm,),
                                                {"__init__": __init__, "__module__": __name__})
    return _PRUNED_CLASSES[base_model_type]


def register_auto_classes() -> None:
    """Register :class:`FuncnetPrunedConfig` / :class:`FuncnetPrunedForCausalLM` with transformers'
    auto classes (done at import; idempotent)."""
    from transformers import CONFIG_MAPPING

    if PRUNED_MODEL_TYPE in CONFIG_MAPPING:
        return
    AutoConfig.register(PRUNED_MODEL_TYPE, FuncnetPrunedConfig)
    AutoModelForCausalLM.register(FuncnetPrunedConfig, FuncnetPrunedForCausalLM)


register_auto_classes()


def is_pruned_folder(path) -> bool:
    """True when ``path`` is a folder whose config.json describes a funcnet-pruned model."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        d = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and ("funcnet_pruned" in d or d.get("model_type") == PRUNED_MODEL_TYPE)


#: ``save_pruned`` formats: ``funcnet`` (per-layer shapes, funcnet's classes), ``native`` (a plain folder
#: of the base architecture, when every layer has the same shapes), ``auto`` (native when possible)
#: config key of the MLP width, per base model type (default ``intermediate_size``)
_WIDTH_KEYS = {"gpt2": "n_inner", "opt": "ffn_dim"}
#: config flag that gives every MLP projection a bias (zero where funcnet added none), per base model type
_MLP_BIAS_KEYS = {"llama": "mlp_bias"}
#: config flag that gives q/k/v/o a bias (zero where funcnet added none), per base model type
_ATTN_BIAS_KEYS = {"llama": "attention_bias", "qwen3": "attention_bias"}


def save_pruned(model, tokenizer, out_dir, report: dict | None = None, *, overwrite: bool = False,
                format: str = "funcnet") -> Path:
    """Write a Hugging Face folder of the pruned model (see the module docstring): it loads with
    :func:`load_pruned`, with ``AutoModelForCausalLM.from_pretrained(dir)`` after ``import funcnet``,
    and without funcnet with ``trust_remote_code=True``. Atomic (temp folder + rename).

    ``format="native"`` writes instead a plain folder of the base architecture (its own
    ``model_type``, a smaller ``intermediate_size``, Llama's ``mlp_bias`` / ``attention_bias`` where
    compensation added biases) that loads with plain ``AutoModelForCausalLM.from_pretrained(dir)``
    without funcnet or remote code; possible only when every layer has the same MLP width and head
    counts (:func:`native_reason` says why not). ``"auto"`` writes a native folder when possible, else
    the funcnet format. The format written and why are recorded in the report (``saved_format``,
    ``saved_format_reason``)."""
    if format not in SAVE_FORMATS:
        raise FuncnetError(f"unknown pruned-folder format '{format}'; choose from {', '.join(SAVE_FORMATS)}")
    lm = wrap_model(model, tokenizer)
    out = Path(out_dir)
    check_output(out, overwrite=overwrite, what="output folder")
    if not hasattr(lm.model.config, "funcnet_pruned"):
        update_config(lm)
    rep = dict(report or lm.info.get("pruning_report") or {})
    if format != "funcnet":
        why = native_reason(lm)
        if why is None:
            rep.update(saved_format="native", saved_format_reason="every layer has the same shapes")
            _save_native(lm, out, rep)
            return out
        if format == "native":
            raise FuncnetError(f"cannot save a native {lm.model.config.model_type} folder: {why}")
        rep.update(saved_format="funcnet", saved_format_reason=why)
    cfg = lm.model.config
    src = modeling_source(lm.model)
    mod = MODELING_NAME[:-3]
    old_auto_map = getattr(cfg, "auto_map", None)
    old_arch = getattr(cfg, "architectures", None)
    cfg.auto_map = {"AutoConfig": f"{mod}.FuncnetPrunedConfig", "AutoModelForCausalLM": f"{mod}.FuncnetPrunedForCausalLM"}
    cfg.architectures = ["FuncnetPrunedForCausalLM"]
    try:
        with atomic_path(out, is_dir=True) as tmp:
            _save_weights(lm.model, tmp)
            _mark_config(tmp / "config.json")
            if lm.tokenizer is not None:
                lm.tokenizer.save_pretrained(tmp)
            (tmp / MODELING_NAME).write_text(src)
            (tmp / REPORT_NAME).write_text(json.dumps(rep, indent=2, default=_json_default))
            mark_output(tmp, "pruned-model", [e.name for e in tmp.iterdir()])
    finally:
        cfg.auto_map = old_auto_map
        if old_auto_map is None:
            del cfg.auto_map
        cfg.architectures = old_arch
    return out


#: config attributes funcnet adds to a pruned model's config (left out of a native folder)
_FUNCNET_CONFIG_KEYS = ("funcnet_pruned", "intermediate_sizes", "num_attention_heads_per_layer",
                        "num_key_value_heads_per_layer", "mlp_bias_per_layer", "o_bias_per_layer",
                        "funcnet_base_model_type", "auto_map")


def native_config(lm) -> tuple[PretrainedConfig | None, str | None]:
    """(the base-architecture config of a native folder, None) for a pruned model whose layers all
    have the same shapes, else (None, the reason why not)."""
    model = lm.model
    cfg = model.config
    if not hasattr(cfg, "funcnet_pruned"):
        update_config(lm)
    mt = cfg.model_type
    if mt == PRUNED_MODEL_TYPE:
        mt = cfg.funcnet_base_model_type
    widths = list(cfg.intermediate_sizes)
    nq, nkv = list(cfg.num_attention_heads_per_layer), list(cfg.num_key_value_heads_per_layer)
    if len(set(widths)) != 1:
        return None, f"MLP widths differ between layers ({min(widths)}..{max(widths)})"
    if len(set(nq)) != 1 or len(set(nkv)) != 1:
        return None, "head counts differ between layers"
    d = cfg.to_dict()
    for k in _FUNCNET_CONFIG_KEYS:
        d.pop(k, None)
    d["model_type"] = mt
    d[_WIDTH_KEYS.get(mt, "intermediate_size")] = widths[0]
    base_hc = lm.adapter.head_config(cfg)
    if (nq[0], nkv[0]) != (base_hc.n_heads, base_hc.n_kv_heads):
        if "head_dim" not in d:
            return None, f"the {mt} config cannot express pruned heads (no head_dim)"
        d.update(num_attention_heads=nq[0], num_key_value_heads=nkv[0], head_dim=base_hc.head_dim)
    layers = lm.layers
    for path, keys, what in ((lm.adapter.down, _MLP_BIAS_KEYS, "down-projection"),
                             (lm.adapter.o_proj, _ATTN_BIAS_KEYS, "attention-output")):
        has = [not shrink.bias_missing(l, path) for l in layers]
        if any(has):
            key = keys.get(mt)
            if key is None and not _base_has_bias(mt, d, path, layers[0]):
                return None, f"compensation added a {what} bias and the {mt} config has no option for it"
            if key is not None:
                d[key] = True
    try:
        new = _base_classes(mt)[0].from_dict(d)
    except (ValueError, TypeError, KeyError) as e:
        return None, f"the {mt} config rejects the pruned shapes ({str(e).splitlines()[0][:120]})"
    return new, None


def _base_has_bias(mt, d, path, layer) -> bool:
    """Whether the dense base architecture (config ``d``) already has a bias on ``path``."""
    cfg = _base_classes(mt)[0].from_dict({**d, "num_hidden_layers": 1})
    with torch.device("meta"):
        ref = _base_classes(mt)[1](cfg)
    ref_layer = get_adapter(ref).get_layers(ref)[0]
    return not shrink.bias_missing(ref_layer, path)


def native_reason(lm) -> str | None:
    """None when :func:`save_pruned` can write a native folder of this (pruned) model, else why not."""
    lm = wrap_model(lm)
    new, why = native_config(lm)
    if why is not None:
        return why
    return _native_state(lm, new)[1]


def _native_state(lm, new_cfg) -> tuple[dict | None, str | None]:
    """The state dict of a native folder (zero biases where the base architecture now has them and
    funcnet added none), checked name by name and shape by shape against the base class built on the
    meta device from ``new_cfg``; (None, reason) when they disagree."""
    with torch.device("meta"):
        ref = _base_classes(new_cfg.model_type)[1](new_cfg)
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    sd = dict(lm.model.state_dict())
    for k, shape in want.items():
        if k not in sd and k.endswith(".bias") and k[:-5] + ".weight" in sd:
            w = sd[k[:-5] + ".weight"]
            sd[k] = torch.zeros(shape, dtype=w.dtype, device=w.device)
    bad = sorted(k for k in set(want) | set(sd) if k not in want or k not in sd or tuple(sd[k].shape) != want[k])
    if bad:
        return None, f"the base architecture does not fit the pruned weights ({bad[0]})"
    return sd, None


def _save_native(lm, out: Path, rep: dict) -> None:
    new_cfg, why = native_config(lm)
    sd, why = (None, why) if why else _native_state(lm, new_cfg)
    if why:
        raise FuncnetError(f"cannot save a native folder: {why}")
    new_cfg.architectures = [_base_classes(new_cfg.model_type)[1].__name__]
    with atomic_path(out, is_dir=True) as tmp:
        lm.model.save_pretrained(tmp, state_dict=sd)
        new_cfg.to_json_file(str(tmp / "config.json"))
        if lm.tokenizer is not None:
            lm.tokenizer.save_pretrained(tmp)
        (tmp / REPORT_NAME).write_text(json.dumps(rep, indent=2, default=_json_default))
        mark_output(tmp, "pruned-model", [e.name for e in tmp.iterdir()])


def _mark_config(path: Path) -> None:
    """Turn the saved base config.json into a ``funcnet_pruned`` one (base model type kept)."""
    d = json.loads(path.read_text())
    d["funcnet_base_model_type"] = d.get("funcnet_base_model_type") or d["model_type"]
    d["model_type"] = PRUNED_MODEL_TYPE
    path.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


def _save_weights(model, folder) -> None:
    """save_pretrained with the in-memory parameter names (no legacy renaming: the custom modeling
    class of the folder loads without transformers' per-family conversion mappings)."""
    kw = {}
    if "save_original_format" in inspect.signature(model.save_pretrained).parameters:
        kw["save_original_format"] = False
    model.save_pretrained(folder, **kw)


def _check_weight_shapes(p: Path, d: dict) -> None:
    """Compare the per-layer shapes of config.json with the tensors in the weight files (their headers
    only), so that a folder whose config and weights disagree is one clear error, not a load report."""
    spec = d.get("funcnet_pruned") or {}
    want = {}
    try:
        for i, ls in enumerate(spec.get("layers", [])):
            for path, (out_f, in_f, _bias, conv1d, *_) in ls.get("modules", {}).items():
                want[f"{spec['layers_path']}.{i}.{path}.weight"] = [in_f, out_f] if conv1d else [out_f, in_f]
    except (KeyError, TypeError, ValueError, AttributeError):
        return  # an unexpected spec: leave it to the loader
    for f in sorted(p.glob("*.safetensors")):
        with safe_open(str(f), framework="numpy") as st:
            for k in st.keys():
                if k in want and list(st.get_slice(k).get_shape()) != want[k]:
                    raise FuncnetError(f"cannot load pruned model '{p}': config.json gives {k} the shape {want[k]} "
                                       f"but {f.name} holds {list(st.get_slice(k).get_shape())}")


def pruned_config(path, *, check_weights: bool = True) -> PretrainedConfig:
    """The base architecture's config of a pruned folder, with its per-layer shapes
    (``funcnet_pruned``); with ``check_weights``, the weight files' shapes are checked against it."""
    p = Path(path)
    d = json.loads((p / "config.json").read_text())
    if check_weights:
        _check_weight_shapes(p, d)
    if d.get("model_type") == PRUNED_MODEL_TYPE:
        return FuncnetPrunedConfig.from_pretrained(str(p)).base_config()
    # funcnet 0.1: the base model type, per-layer shapes and an auto_map to its own modeling file
    return _base_classes(d["model_type"])[0].from_pretrained(str(p))


def load_pruned(path, *, dtype=None, device=None, device_map=None, **kwargs) -> LoadedModel:
    """Load a folder written by :func:`save_pruned` as a LoadedModel, with funcnet's own classes
    (never the folder's Python file).

    ``dtype``: None or ``"auto"`` = the dtype the folder was saved in (its config's), else a torch dtype
    or name (``"bfloat16"``). ``device_map`` (``"auto"``, ``"cpu"``, a dict of module -> device) spreads
    it over devices as in ``from_pretrained``; further keyword arguments (``max_memory``,
    ``offload_folder``) go to ``from_pretrained`` too."""
    p = Path(path)
    if not is_pruned_folder(p):
        raise FuncnetError(f"'{p}' is not a funcnet pruned-model folder (its config.json has no funcnet_pruned shapes)")
    if device is not None and device_map is not None:
        raise FuncnetError("give a device or a device_map, not both")
    try:
        cfg = pruned_config(p)
        model = pruned_model_class(cfg.model_type).from_pretrained(str(p), config=cfg, dtype=_resolve_dtype(dtype),
                                                                   device_map=device_map, **kwargs)
    except FuncnetError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        raise FuncnetError(f"cannot load pruned model '{p}': {(str(e).splitlines() or [''])[0][:200]}") from e
    if device is not None and device_map is None:
        model = model.to(device)
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(p))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    info = {}
    if (p / REPORT_NAME).exists():
        info["pruning_report"] = json.loads((p / REPORT_NAME).read_text())
    return LoadedModel(model=model, tokenizer=tok, adapter=get_adapter(model), spec=str(p), source=str(p), info=info)
