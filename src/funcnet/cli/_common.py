"""Arguments every command names the same way."""
from __future__ import annotations

import argparse

from funcnet.core.models import DEFAULT_MODEL

MODEL_HELP = "model spec: HF id, folder, .gguf or alias"


def add_model_argument(p: argparse.ArgumentParser, *, default: str | None = DEFAULT_MODEL, required: bool = False,
                       help: str = MODEL_HELP) -> None:
    """``--model SPEC``: how every command names the model it works on."""
    if required:
        p.add_argument("--model", required=True, help=help)
    else:
        p.add_argument("--model", default=default, help=f"{help} (default {default or DEFAULT_MODEL})")
