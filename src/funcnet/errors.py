"""Errors funcnet raises for bad input: one clear line, shown by the CLI without a traceback."""


class FuncnetError(Exception):
    """A user-facing error: its message is one line that names the problem."""


class UnsupportedArchitectureError(FuncnetError):
    pass
