"""The pruned-model folder format: save (weights, tokenizer, config with per-layer shapes, a
self-contained modeling file, the pruning report) and load."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from funcnet._version import __version__
from funcnet.core import shrink
from funcnet.core._io import atomic_path, json_default as _json_default
from funcnet.core.adapters import get_adapter
from funcnet.core.loaded import LoadedModel, _resolve_dtype, wrap_model
from funcnet.core.shrink import update_config
from funcnet.errors import FuncnetError


REPORT_NAME = "pruning_report.json"


MODELING_NAME = "modeling_funcnet_pruned.py"


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


def save_pruned(model, tokenizer, out_dir, report: dict | None = None, *, overwrite: bool = False) -> Path:
    """Write a Hugging Face folder that loads with ``AutoModelForCausalLM.from_pretrained(dir,
    trust_remote_code=True)`` without funcnet; atomic (temp folder + rename)."""
    lm = wrap_model(model, tokenizer)
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FuncnetError(f"output folder '{out}' exists; pass overwrite=True (--overwrite) to replace it")
    if out.exists() and not out.is_dir():
        raise FuncnetError(f"output path '{out}' is a file")
    if not hasattr(lm.model.config, "funcnet_pruned"):
        update_config(lm)
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
            if lm.tokenizer is not None:
                lm.tokenizer.save_pretrained(tmp)
            (tmp / MODELING_NAME).write_text(src)
            rep = dict(report or lm.info.get("pruning_report") or {})
            (tmp / REPORT_NAME).write_text(json.dumps(rep, indent=2, default=_json_default))
    finally:
        cfg.auto_map = old_auto_map
        if old_auto_map is None:
            del cfg.auto_map
        cfg.architectures = old_arch
    return out


def _save_weights(model, folder) -> None:
    """save_pretrained with the in-memory parameter names (no legacy renaming: the custom modeling
    class of the folder loads without transformers' per-family conversion mappings)."""
    kw = {}
    if "save_original_format" in inspect.signature(model.save_pretrained).parameters:
        kw["save_original_format"] = False
    model.save_pretrained(folder, **kw)


def load_pruned(path, *, dtype=None, device=None) -> LoadedModel:
    """Load a folder written by :func:`save_pruned` as a LoadedModel."""

    p = Path(path)
    if not (p / "config.json").exists() or not (p / MODELING_NAME).exists():
        raise FuncnetError(f"'{p}' is not a funcnet pruned-model folder (no config.json / {MODELING_NAME})")
    model = AutoModelForCausalLM.from_pretrained(str(p), trust_remote_code=True, dtype=_resolve_dtype(dtype))
    if device is not None:
        model = model.to(device)
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(p))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    info = {}
    if (p / REPORT_NAME).exists():
        info["pruning_report"] = json.loads((p / REPORT_NAME).read_text())
    return LoadedModel(model=model, tokenizer=tok, adapter=get_adapter(model), spec=str(p), source=str(p), info=info)
