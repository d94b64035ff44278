"""Errors funcnet raises for bad input: one clear line, shown by the CLI without a traceback."""


class FuncnetError(ValueError):
    """A user-facing error: its message is one line that names the problem. A ``ValueError``, so bad
    parameters behave as in scikit-learn and nilearn."""


class UnsupportedArchitectureError(FuncnetError):
    pass
