"""The ``funcnet`` command line: thin commands over the library, one module per command group.

Start-up is fast: this module imports nothing heavy. ``funcnet --help`` and ``--version`` list the
commands from :data:`COMMANDS` without importing any of them; running a command imports only the
module that defines it (by name, with :func:`importlib.import_module`, the one place funcnet loads
its own code at run time). Each command module adds its subcommands with ``register_cli(sub)``.
A :class:`FuncnetError` ends as one line ``funcnet: error: ...`` and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from funcnet._version import __version__
from funcnet.errors import FuncnetError

#: command -> (module that defines it, one-line help), in the order of ``funcnet --help``
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("funcnet.cli.info", "summarise a model (family, layers, neurons, parameters) or an activation store"),
    "record": ("funcnet.cli.record", "record neuron activations over a corpus into an on-disk store"),
    "networks": ("funcnet.cli.networks", "find functional networks (group ICA) from a store or a model"),
    "lesion": ("funcnet.cli.explore", "inhibit networks vs random neuron sets of the same size"),
    "preserve": ("funcnet.cli.explore", "keep only the networks' neurons, for several k"),
    "amplify": ("funcnet.cli.explore", "scale or shift network neurons over a grid of values"),
    "recurrence": ("funcnet.cli.explore", "template vs individual networks: IoU recurrence table"),
    "explore": ("funcnet.cli.explore", "the whole exploration (networks, anatomy, lesion, preserve, amplify, "
                                       "recurrence) + HTML report"),
    "eval": ("funcnet.cli.evaluate", "perplexity and next-token accuracy per domain (and lm-eval tasks)"),
    "prune": ("funcnet.cli.prune", "prune MLP neurons (and heads) to an exact size and save a smaller model"),
    "export": ("funcnet.cli.export", "write a pruned model as GGUF (llama.cpp), a native folder or a DeciLM folder"),
    "fingerprint": ("funcnet.cli.fingerprint", "functional-network fingerprints: is a suspect model derived "
                                               "from a victim?"),
    "report": ("funcnet.cli.report", "write the HTML report of a results folder"),
    "browse": ("funcnet.cli.browse", "write a static site with a page per functional network, searchable "
                                     "(opens from disk; --serve PORT)"),
    "demo": ("funcnet.cli.demo", "run the exploration on the default model and built-in corpus, write the report"),
}


def _command_of(argv: list[str]) -> str | None:
    """The command named in ``argv`` (the first word that is not a top-level option), if known."""
    for a in argv:
        if a in ("--", "-h", "--help", "--version"):
            return None
        if a.startswith("-"):
            continue
        return a if a in COMMANDS else None
    return None


class _Parser(argparse.ArgumentParser):
    """argparse with funcnet's error form: one line ``funcnet: error: <command>: <message>``, exit 2
    (``funcnet COMMAND --help`` still prints the usage)."""

    def error(self, message: str):  # type: ignore[override]
        where = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(2, f"funcnet: error: {where}{message} (see {self.prog} --help)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the module of the command named in ``argv`` is imported (all of them when
    ``argv`` is None, e.g. for documentation tools)."""
    parser = _Parser(
        prog="funcnet",
        description="Functional networks of neurons in LLMs: record, decompose (group ICA), intervene, prune, fingerprint.",
    )
    parser.add_argument("--version", action="version", version=f"funcnet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = list(COMMANDS) if argv is None else [c for c in [_command_of(argv)] if c]
    for name in wanted:
        if name not in sub.choices:
            importlib.import_module(COMMANDS[name][0]).register_cli(sub)
    for name, (_, help_) in COMMANDS.items():  # listed in --help, imported only when run
        if name not in sub.choices:
            sub.add_parser(name, help=help_)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
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
