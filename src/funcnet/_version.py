"""The installed funcnet's version (one place; imported by every module that records it)."""
__version__ = "0.1.0"
