"""`daeda`, the command line: flags in, one request to the engine, a summary out."""

from daedalus.cli.main import main

__all__ = ["main"]
