"""The ``funcnet`` command line: thin commands over the library. Each module of this package adds
its subcommands with ``register(subparsers)``; this one collects them and turns
:class:`FuncnetError` into one clear line and exit code 2."""
from __future__ import annotations

import argparse
import logging
import sys

from funcnet._version import __version__
from funcnet.cli import demo, evaluate, explore, fingerprint, info, networks, prune, record, report
from funcnet.errors import FuncnetError

#: command modules, in the order of ``funcnet --help``
COMMAND_MODULES = [info, record, networks, explore, evaluate, prune, fingerprint, report, demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="funcnet",
        description="Functional networks of neurons in LLMs: record, decompose (group ICA), intervene, prune, fingerprint.",
    )
    parser.add_argument("--version", action="version", version=f"funcnet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
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
