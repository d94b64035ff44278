"""The ``funcnet`` command line. Each module that offers commands exposes ``register_cli(subparsers)``;
this file only collects them and turns :class:`FuncnetError` into one clear line and exit code 2."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .errors import FuncnetError

#: Modules that add subcommands (each has ``register_cli(subparsers)``).
COMMAND_MODULES = [
    "funcnet.models_cli",
    "funcnet.record",
    "funcnet.networks",
    "funcnet.explore",
    "funcnet.evaluate",
    "funcnet.prune",
    "funcnet.fingerprint",
    "funcnet.report",
    "funcnet.demo",
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="funcnet",
        description="Functional networks of neurons in LLMs: record, decompose (group ICA), intervene, prune, fingerprint.",
    )
    parser.add_argument("--version", action="version", version=f"funcnet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # module not written yet
                continue
            raise
        mod.register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except FuncnetError as e:
        if args.verbose:
            raise
        print(f"funcnet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("funcnet: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
